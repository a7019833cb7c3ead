"""Recover GPTQ integer codes and scales from a QuantLM that was dequantized back to fp16 (the public release).

`SpectraSuite/QuantLM_*_Unpacked` holds every quantized weight as the fp16 value gptqmodel's dequantization gives:
`W = fl16(s * (q - z))` with `s` the group's fp16 scale, `q` in [0, 2^b - 1] the stored code and, for symmetric
GPTQ, the zero point `z = 2^(b-1)` that gptqmodel stores even when sym (so `k = q - z` lies in
[-2^(b-1), 2^(b-1) - 1]). A group is 128 input columns of one output row at 3 and 4 bits, the whole row at 6 and 8
bits (the registry's QUANT_GROUP_SIZE).

Per group: the element of largest magnitude has code +-k for some k in 1..2^(b-1); for each k (largest first, so the
original lattice wins over a coarser one that also fits) the fp16 scales within two ulps of max|W| / k are tried,
and a scale is accepted when every value of the group is `fl16(s * round(W / s))` with the code in range. A group
that no scale reproduces exactly refuses its tensor by name: recovery is bit for bit or nothing. Only when the caller
passes `max_ulps` > 0 is such a group accepted within that many units in the last place; the tensor is then listed in
`RecoveryReport.inexact` and the report is not `exact` (the manifest and card say so).

The codes of the whole model are counted: when they use no more levels than a narrower width has (a 3-bit model
recovered at 4 bits lands on every other 4-bit code), the report's `code_bits` is below `bits`, and a warning says
that the name's width is not the data's.

Memory: the release is read tensor by tensor (`Checkpoint`, no memory map) and the packed checkpoint written tensor
by tensor (`ShardedWriter`); each quantized weight is packed alone through optimum's own packing, then the written
files are read back one layer at a time, dequantized by gptqmodel and compared with the release weight. Peak memory
is a few copies of the largest tensor, not the model (bench/bench_recover.py measures it at 3.9B).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from spectra_hf.checkpoints.exports import ExportInfo, atomic_directory, write_export_info
from spectra_hf.checkpoints.io import Checkpoint, ShardedWriter, config_architecture, read_config
from spectra_hf.checkpoints.safetensors_io import read_header, read_tensor
from spectra_hf.errors import CheckpointError, ConfigError
from spectra_hf.modeling.checkpoint_checks import linear_shapes
from spectra_hf.quantization.gptq import (
    check_floatlm_config,
    gptq_quantizer,
    packed_quantization_config,
    plan_settings,
    quantlm_size_bits,
)
from spectra_hf.quantization.hf_quantizer import ship_remote_code

logger = logging.get_logger(__name__)

_NEIGHBOUR_ULPS = (0, -1, 1, -2, 2)  # fp16 scales tried around max|W| / k, in this order


@dataclass
class LatticeFit:
    """How well recovered codes reproduce one tensor (or a whole model, summed)."""

    values: int = 0
    differing: int = 0  # values whose re-dequantization is not bit-identical to the input
    max_ulps: int = 0  # largest difference, in fp16 units in the last place

    def add(self, other: LatticeFit) -> None:
        self.values += other.values
        self.differing += other.differing
        self.max_ulps = max(self.max_ulps, other.max_ulps)

    @property
    def bit_exact(self) -> bool:
        return self.differing == 0


@dataclass
class RecoveredLinear:
    """Codes k (int8 [out, in], in [-2^(b-1), 2^(b-1)-1]) and fp16 scales ([out, groups]) of one weight."""

    codes: torch.Tensor
    scales: torch.Tensor
    group_size: int
    fit: LatticeFit


@dataclass
class RecoveryReport:
    """What `recover_quantlm` did: settings, the fit over every quantized weight, and the reload check.

    Attributes:
        bits, group_size: the width recovered at and input columns per scale (-1: per output row).
        tensors: quantized weights recovered.
        fit: the codes' fit to the release, summed over every quantized weight.
        reloaded: the written checkpoint read back and dequantized again, compared with the release.
        max_ulps: the tolerance the caller allowed (0: bit for bit only).
        inexact: tensors accepted only within that tolerance, with their fit (empty when `exact`).
        levels: distinct codes the whole model uses, of the 2^bits a `bits`-bit lattice has.
        code_bits: the narrowest width whose lattice holds that many levels; below `bits` when the data is a
            narrower QuantLM than its name says.
    """

    bits: int
    group_size: int
    tensors: int
    fit: LatticeFit = field(default_factory=LatticeFit)
    reloaded: LatticeFit = field(default_factory=LatticeFit)
    max_ulps: int = 0
    inexact: dict[str, LatticeFit] = field(default_factory=dict)
    levels: int = 0
    code_bits: int = 0

    @property
    def exact(self) -> bool:
        """Every recovered weight dequantizes to its release tensor bit for bit."""
        return self.fit.bit_exact and self.reloaded.bit_exact and not self.inexact

    @property
    def narrower_than_named(self) -> bool:
        return self.code_bits < self.bits

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exact": self.exact, "narrower_than_named": self.narrower_than_named}


def _ordered(bits16: torch.Tensor) -> torch.Tensor:
    """fp16 bit patterns (int16 view) as integers ordered like the values, so a difference counts ulps."""
    as_int = bits16.to(torch.int32)
    return torch.where(as_int < 0, -(as_int & 0x7FFF), as_int)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in fp16 units in the last place (int32, same shape), for fp16 tensors a and b."""
    return (_ordered(a.view(torch.int16)) - _ordered(b.view(torch.int16))).abs()


def _scale_candidates(absmax: torch.Tensor, k: int) -> torch.Tensor:
    """fp16 scales [groups, len(_NEIGHBOUR_ULPS)] near absmax / k (absmax float64 [groups], positive)."""
    centre = (absmax / k).to(torch.float16).view(torch.int16).to(torch.int32)
    steps = torch.tensor(_NEIGHBOUR_ULPS, dtype=torch.int32)
    bits = (centre[:, None] + steps[None, :]).clamp(1, 0x7BFF)  # positive finite fp16 only
    return bits.to(torch.int16).view(torch.float16)


def _exact(values: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Which groups of fp16 `values` [G, n] are exactly fl16(scale * k) with integer codes k in [low, high] for
    their fp16 `scale` [G, 1] (bool [G]): the fast test every group takes first."""
    codes = torch.round(values.float() / scale.float())
    in_range = ((codes >= low) & (codes <= high)).all(dim=1)
    again = (scale.float() * codes).to(torch.float16)
    return in_range & (again.view(torch.int16) == values.view(torch.int16)).all(dim=1)


def _fit(values: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, ulps) of fp16 `values` [G, n] on the lattice of fp16 `scale` [G, 1]; ulps [G] is the worst value
    per group, or a huge number where a code falls outside [low, high]."""
    codes = torch.round(values.float() / scale.float())
    in_range = ((codes >= low) & (codes <= high)).all(dim=1)
    again = (scale.float() * codes.clamp(low, high)).to(torch.float16)
    ulps = ulp_distance(again, values).amax(dim=1)
    return codes, torch.where(in_range, ulps, torch.full_like(ulps, 1 << 30))


def recover_codes(weight: torch.Tensor, *, bits: int, group_size: int, name: str, max_ulps: int = 0) -> RecoveredLinear:
    """Recover the symmetric GPTQ codes and fp16 scales of one dequantized fp16 weight [out, in].

    Args:
        weight: the release's fp16 weight, [out_features, in_features].
        bits: GPTQ width (codes in [-2^(b-1), 2^(b-1) - 1]).
        group_size: input columns per scale (-1: one scale per output row).
        name: the tensor's name, for the error message.
        max_ulps: largest difference tolerated for a group no scale reproduces bit for bit (0, the default: none;
            a tolerated difference is reported in the result's `fit`).

    Raises:
        CheckpointError: naming the tensor, when a group lies on no `bits`-bit lattice within `max_ulps`.
    """
    if weight.dtype != torch.float16:
        raise CheckpointError(f"{name} is {weight.dtype}, not float16: the QuantLM release stores fp16 weights")
    out_features, in_features = weight.shape
    size = in_features if group_size <= 0 else group_size
    if in_features % size:
        raise CheckpointError(f"{name}: group size {size} does not divide its {in_features} input columns")
    groups = in_features // size
    values = weight.reshape(out_features * groups, size)  # [G, n], one row per (output row, group)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    absmax = values.abs().amax(dim=1).double()  # [G]; |fp16| is exact, so no float64 copy of the weight
    best_scale = torch.ones(values.shape[0], dtype=torch.float16)  # an all-zero group fits any scale
    open_groups = torch.nonzero(absmax > 0).flatten()
    for k in range(-low, 0, -1):  # exact fits, finest lattice first
        candidates = _scale_candidates(absmax[open_groups], k)
        for column in range(candidates.shape[1]):
            if open_groups.numel() == 0:
                break
            hit = _exact(values[open_groups], candidates[:, column : column + 1], low, high)
            best_scale[open_groups[hit]] = candidates[hit, column]
            open_groups, candidates = open_groups[~hit], candidates[~hit]
    fit = LatticeFit(values=values.numel())
    if open_groups.numel():  # no exact fit: the closest within max_ulps, or a refusal
        best_ulps = torch.full((open_groups.numel(),), 1 << 30, dtype=torch.int32)
        for k in range(-low, 0, -1):
            candidates = _scale_candidates(absmax[open_groups], k)
            for column in range(candidates.shape[1]):
                _, ulps = _fit(values[open_groups], candidates[:, column : column + 1], low, high)
                better = ulps < best_ulps
                best_ulps[better] = ulps[better]
                best_scale[open_groups[better]] = candidates[better, column]
        worst = int(best_ulps.max())
        if worst > max_ulps:
            row, column = divmod(int(open_groups[best_ulps.argmax()]), groups)
            raise CheckpointError(
                f"{name} is not a {bits}-bit GPTQ weight: its values in row {row}, input columns "
                f"{column * size}..{(column + 1) * size - 1} lie on no symmetric {bits}-bit lattice with an fp16 "
                f"scale (closest fit off by {'more than 2^30' if worst >= 1 << 30 else worst} ulps"
                f"{'' if max_ulps == 0 else f', tolerated: {max_ulps}'}). Pass the QuantLM's real bit width, or "
                "re-download the release file; only if its weights were dequantized with rounding (e.g. fp32 scales) "
                "allow a bounded distance with max_ulps, and the result is recorded as inexact"
            )
        inexact = values[open_groups]
        scale = best_scale[open_groups, None].float()
        again = (scale * torch.round(inexact.float() / scale)).to(torch.float16)
        distance = ulp_distance(again, inexact)
        fit.differing, fit.max_ulps = int((distance > 0).sum()), int(distance.max())
    codes = torch.round(values.float() / best_scale[:, None].float())
    return RecoveredLinear(
        codes=codes.to(torch.int8).reshape(out_features, in_features),
        scales=best_scale.reshape(out_features, groups),
        group_size=size,
        fit=fit,
    )


def quantized_weight_names(config: dict[str, Any]) -> list[str]:
    """Names of the decoder weights GPTQ quantizes (q, k, v, o, gate, up, down of every layer), from config.json."""
    paths = linear_shapes(config)
    return [f"model.layers.{layer}.{path}.weight" for layer in range(config["num_hidden_layers"]) for path in paths]


def recover_quantlm(
    release: str | Path,
    out: str | Path,
    *,
    bits: int,
    group_size: int | None = None,
    max_ulps: int = 0,
    name: str | None = None,
    base_model: str | None = None,
    extra: dict[str, Any] | None = None,
) -> RecoveryReport:
    """Turn a dequantized fp16 QuantLM (`QuantLM_*_Unpacked`) into the packed GPTQ QuantLM `spectra-hf quantize` writes.

    Works tensor by tensor (see the module docstring): memory holds a few copies of the largest tensor.

    Args:
        release: the release checkpoint directory (plain fp16 Llama).
        out: the export directory to write (atomically; loads with `load_quantlm` and with
            `AutoModelForCausalLM.from_pretrained`: after `import spectra_hf`, or at 5/6/7 bits with
            `trust_remote_code=True` without it).
        bits: the QuantLM's width.
        group_size: input columns per scale; default the paper's (128 at 3/4 bits, per-channel at 6/8), lowered
            as `plan_settings` does for models narrower than a group.
        max_ulps: 0 (the default) accepts only weights every group of which some lattice reproduces bit for bit;
            a positive value also accepts groups within that many fp16 ulps, listed in the report's `inexact`.
        name, base_model: recorded in spectra_export.json (default: the directory name, and none).
        extra: more entries for spectra_export.json's `extra` (e.g. the release repo and revision).

    Returns:
        The report: fit of the codes, the written checkpoint's fit once reloaded, inexact tensors, levels used.

    Raises:
        CheckpointError: a weight on no lattice (named), a config that is not a FloatLM-shaped Llama, or a written
            checkpoint that does not reproduce the release as the codes do.
        ConfigError: a negative `max_ulps`.
    """
    if max_ulps < 0:
        raise ConfigError(f"max_ulps={max_ulps}: pass 0 (bit for bit) or a positive number of fp16 ulps")
    release, out = Path(release), Path(out)
    config = read_config(release)
    check_floatlm_config(config, where=str(release))
    (setting,) = plan_settings(config, [bits], group_size=group_size, where=str(release))
    source = Checkpoint(release)
    names = quantized_weight_names(config)
    missing = [weight for weight in names if weight not in source.tensor_names()]
    if missing:
        raise CheckpointError(f"{release} has no {missing[0]}: not a complete QuantLM release checkpoint")
    report = RecoveryReport(bits=bits, group_size=setting.group_size, tensors=len(names), max_ulps=max_ulps)
    quantizer = gptq_quantizer(setting)
    counts = torch.zeros(1 << bits, dtype=torch.int64)  # [2^b] how often each code k + 2^(b-1) occurs
    with atomic_directory(out) as staging:
        with ShardedWriter(staging) as writer:
            quantized = set(names)
            for tensor_name in source.tensor_names():
                tensor = source.tensor(tensor_name)
                if tensor_name not in quantized:
                    writer.add(tensor_name, tensor)
                    continue
                recovered = recover_codes(
                    tensor,
                    bits=bits,
                    group_size=setting.group_size,
                    name=f"{release}: {tensor_name}",
                    max_ulps=max_ulps,
                )
                report.fit.add(recovered.fit)
                if not recovered.fit.bit_exact:
                    report.inexact[tensor_name] = recovered.fit
                counts += torch.bincount(recovered.codes.flatten().long() + (1 << (bits - 1)), minlength=1 << bits)
                module = tensor_name.removesuffix(".weight")
                for suffix, packed in _pack_linear(tensor, recovered, quantizer, bits=bits).items():
                    writer.add(f"{module}.{suffix}", packed)
                del tensor, recovered
            writer.finish()
        report.levels = int((counts > 0).sum())
        report.code_bits = max(1, math.ceil(math.log2(max(report.levels, 2))))
        report.reloaded = _compare_written(staging, source, names, quantizer)
        if not report.reloaded.bit_exact and (report.fit.bit_exact or report.reloaded.max_ulps > report.fit.max_ulps):
            raise CheckpointError(
                f"{release}: the packed checkpoint reproduces the release only within {report.reloaded.max_ulps} ulps "
                f"(the recovered codes: {report.fit.max_ulps}); this is a bug in spectra-hf or its optimum/gptqmodel "
                "versions, please report it"
            )
        _write_packed_config(staging, config, quantizer)
        _copy_release_side_files(release, staging)
        info = ExportInfo(
            name=name or out.name,
            family="quantlm",
            format="gptq",
            extra={
                "base_model": base_model,
                "bits": bits,
                "group_size": setting.group_size,
                "sym": True,
                "desc_act": False,
                "effective_bits_per_weight": setting.effective_bits,
                "size_bits": quantlm_size_bits(config, setting),
                "recovered_from_dequantized": report.as_dict(),
                **(extra or {}),
            },
        )
        write_export_info(staging, info)
    label = name or out.name
    if report.narrower_than_named:
        logger.warning(
            f"{label}: the recovered codes use {report.levels} of the {1 << bits} levels of {bits} bits, as a "
            f"{report.code_bits}-bit QuantLM's do: the data is narrower than the {bits} bits its name says"
        )
    if report.inexact:
        logger.warning(
            f"{label}: {len(report.inexact)} weights recovered within {report.fit.max_ulps} ulps, not bit for bit "
            f"(max_ulps={max_ulps}), e.g. {next(iter(report.inexact))}; recorded as inexact"
        )
    return report


def _pack_linear(
    weight: torch.Tensor, recovered: RecoveredLinear, quantizer: Any, *, bits: int
) -> dict[str, torch.Tensor]:
    """The GPTQ v1 tensors (qweight, qzeros, scales, g_idx) of one weight [out, in], packed by optimum's
    `pack_model` on a module holding only that layer, then converted to v1 as optimum's `save` does."""
    from gptqmodel.utils.model import hf_convert_gptq_v2_to_v1_format

    out_features, in_features = weight.shape
    layer = torch.nn.Linear(in_features, out_features, bias=False, dtype=weight.dtype, device="meta")
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    holder = torch.nn.Module()
    holder.add_module("layer", layer)
    groups = recovered.scales.shape[1]
    zero = torch.full((out_features, groups), float(1 << (bits - 1)))  # [out, groups] gptqmodel's symmetric zero
    g_idx = torch.arange(in_features, dtype=torch.int32) // recovered.group_size  # [in]
    with torch.no_grad():
        quantizer.pack_model(model=holder, quantizers={"layer": (None, recovered.scales.float(), zero, g_idx)})
        holder, _ = hf_convert_gptq_v2_to_v1_format(
            holder, True, bits, quantizer.quant_linear, "gptq_v2", quantizer.meta
        )
    return {name.removeprefix("layer."): tensor for name, tensor in holder.state_dict().items()}


def _compare_written(directory: Path, source: Checkpoint, names: list[str], quantizer: Any) -> LatticeFit:
    """Read each packed layer back from the written files, dequantize it with gptqmodel (one layer at a time) and
    count differences from the release weight."""
    import copy

    headers = {path: read_header(path) for path in sorted(directory.glob("*.safetensors"))}
    file_of = {tensor: path for path, header in headers.items() for tensor in header}
    reader = copy.copy(quantizer)
    reader.format = "gptq"  # what was written: post_init converts it to gptqmodel's in-memory v2
    fit = LatticeFit()
    with torch.no_grad():
        for tensor_name in names:
            module = tensor_name.removesuffix(".weight")
            expected = source.tensor(tensor_name)
            out_features, in_features = expected.shape
            layer = quantizer.quant_linear(
                quantizer.bits, quantizer.group_size, False, True, in_features, out_features, False,
                weight_dtype=torch.float16,
            )  # fmt: skip
            holder = torch.nn.Module()
            holder.add_module("layer", layer)
            state = {}
            for key in layer.state_dict():
                stored = f"{module}.{key}"
                if stored not in file_of:
                    raise CheckpointError(f"{directory}: the packed checkpoint lacks {stored}; please report it")
                state[key] = read_tensor(file_of[stored], headers[file_of[stored]][stored])
            layer.load_state_dict(state)
            holder = reader.post_init_model(holder)
            again = holder.get_submodule("layer").dequantize_weight().T.to(torch.float16).contiguous()  # [out, in]
            if torch.equal(again.view(torch.int16), expected.view(torch.int16)):
                fit.add(LatticeFit(values=expected.numel()))
                continue
            distance = ulp_distance(again, expected)
            fit.add(
                LatticeFit(values=distance.numel(), differing=int((distance > 0).sum()), max_ulps=int(distance.max()))
            )
    return fit


def _write_packed_config(directory: Path, config: dict[str, Any], quantizer: Any) -> None:
    """config.json (the release's architecture as a Llama config with the packed `quantization_config`),
    quantize_config.json and, for spectra_gptq, the remote code, as `save_quantized` writes them."""
    import json

    from transformers import LlamaConfig

    llama = LlamaConfig(**config_architecture(config))
    llama.architectures = ["LlamaForCausalLM"]
    quant = packed_quantization_config(quantizer)
    llama.quantization_config = quant.loading
    llama.save_pretrained(directory)
    (directory / "quantize_config.json").write_text(json.dumps(quant.gptqmodel, indent=2), encoding="utf-8")
    ship_remote_code(directory)


def _copy_release_side_files(release: Path, directory: Path) -> None:
    """Tokenizer and generation files of the release travel with the recovered weights."""
    from spectra_hf.checkpoints.convert import copy_side_files

    copy_side_files(release, directory)


__all__ = [
    "LatticeFit",
    "RecoveredLinear",
    "RecoveryReport",
    "quantized_weight_names",
    "recover_codes",
    "recover_quantlm",
    "ulp_distance",
]
