"""Recover GPTQ integer codes and scales from a QuantLM that was dequantized back to fp16 (the public release).

`SpectraSuite/QuantLM_*_Unpacked` holds every quantized weight as the fp16 value gptqmodel's dequantization gives:
`W = fl16(s * (q - z))` with `s` the group's fp16 scale, `q` in [0, 2^b - 1] the stored code and, for symmetric
GPTQ, the zero point `z = 2^(b-1)` that gptqmodel stores even when sym (so `k = q - z` lies in
[-2^(b-1), 2^(b-1) - 1]). A group is 128 input columns of one output row at 3 and 4 bits, the whole row at 6 and 8
bits (the registry's QUANT_GROUP_SIZE).

Per group: the element of largest magnitude has code +-k for some k in 1..2^(b-1); for each k (largest first, so the
original lattice wins over a coarser one that also fits) the fp16 scales within two ulps of max|W| / k are tried,
and a scale is accepted when every value of the group is `fl16(s * round(W / s))` with the code in range. A group
that no scale reproduces exactly is accepted only if some scale reproduces it within `max_ulps` units in the last
place (reported), else the tensor is refused by name: a weight on no b-bit lattice is not approximated.

The recovered model is written in the packed GPTQ (v1) layout `spectra-hf quantize` writes (through optimum's own
packing), reloaded from disk and dequantized again; the report counts values that differ from the release and by
how many ulps (0 and 0 when bit for bit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from spectra_hf.checkpoints.exports import ExportInfo, atomic_directory, write_export_info
from spectra_hf.checkpoints.io import read_config
from spectra_hf.errors import CheckpointError
from spectra_hf.quantization.gptq import (
    REFERENCE_BACKEND,
    GPTQSettings,
    check_floatlm_config,
    eager_mode,
    gptq_quantizer_class,
    load_floatlm_as_llama,
    load_quantlm,
    plan_settings,
    quantlm_size_bits,
    save_quantized,
)
from spectra_hf.suite import TERNARY_LINEARS

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
    """What `recover_quantlm` did: settings, the fit over every quantized weight, and the reload check."""

    bits: int
    group_size: int
    tensors: int
    fit: LatticeFit = field(default_factory=LatticeFit)
    reloaded: LatticeFit = field(default_factory=LatticeFit)  # the written checkpoint, dequantized again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def recover_codes(weight: torch.Tensor, *, bits: int, group_size: int, name: str, max_ulps: int = 1) -> RecoveredLinear:
    """Recover the symmetric GPTQ codes and fp16 scales of one dequantized fp16 weight [out, in].

    Args:
        weight: the release's fp16 weight, [out_features, in_features].
        bits: GPTQ width (codes in [-2^(b-1), 2^(b-1) - 1]).
        group_size: input columns per scale (-1: one scale per output row).
        name: the tensor's name, for the error message.
        max_ulps: largest difference tolerated for a group no scale reproduces bit for bit (reported).

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
    absmax = values.double().abs().amax(dim=1)
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
                f"scale (closest fit off by {'more than 2^30' if worst >= 1 << 30 else worst} ulps). Pass the "
                "QuantLM's real bit width, or re-download the release file"
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


def quantized_linear_names(model: Any) -> list[str]:
    """Module names of the decoder linears GPTQ quantized (q, k, v, o, gate, up, down of every layer)."""
    return [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in TERNARY_LINEARS]


def recover_quantlm(
    release: str | Path,
    out: str | Path,
    *,
    bits: int,
    group_size: int | None = None,
    max_ulps: int = 1,
    name: str | None = None,
    base_model: str | None = None,
    extra: dict[str, Any] | None = None,
) -> RecoveryReport:
    """Turn a dequantized fp16 QuantLM (`QuantLM_*_Unpacked`) into the packed GPTQ QuantLM `spectra-hf quantize` writes.

    Args:
        release: the release checkpoint directory (plain fp16 Llama).
        out: the export directory to write (atomically; loads with `load_quantlm`).
        bits: the QuantLM's width.
        group_size: input columns per scale; default the paper's (128 at 3/4 bits, per-channel at 6/8), lowered
            as `plan_settings` does for models narrower than a group.
        max_ulps: see `recover_codes`.
        name, base_model: recorded in spectra_export.json (default: the directory name, and none).
        extra: more entries for spectra_export.json's `extra` (e.g. the release repo and revision).

    Returns:
        The report: fit of the codes, and the fit of the written checkpoint reloaded and dequantized again.

    Raises:
        CheckpointError: a weight on no lattice (named), a config that is not a FloatLM-shaped Llama, or a written
            checkpoint that does not reproduce the release within `max_ulps`.
    """
    release, out = Path(release), Path(out)
    config = read_config(release)
    check_floatlm_config(config, where=str(release))
    (setting,) = plan_settings(config, [bits], group_size=group_size, where=str(release))
    model = load_floatlm_as_llama(release)
    names = quantized_linear_names(model)
    report = RecoveryReport(bits=bits, group_size=setting.group_size, tensors=len(names))
    quantizers = {}
    for module_name in names:
        weight = model.get_submodule(module_name).weight.detach()
        recovered = recover_codes(
            weight, bits=bits, group_size=setting.group_size, name=f"{release}: {module_name}.weight", max_ulps=max_ulps
        )
        report.fit.add(recovered.fit)
        groups = recovered.scales.shape[1]
        zero = torch.full((weight.shape[0], groups), float(1 << (bits - 1)))  # gptqmodel's symmetric zero point
        g_idx = torch.arange(weight.shape[1], dtype=torch.int32) // recovered.group_size
        quantizers[module_name] = (None, recovered.scales.float(), zero, g_idx)
    with atomic_directory(out) as staging:
        model, quantizer = _pack(model, quantizers, setting)
        save_quantized(model, quantizer, staging)
        del model  # converted in place by save(): only the reloaded copy is trustworthy
        report.reloaded = _compare_reloaded(staging, release, names)
        if report.reloaded.max_ulps > max_ulps:
            raise CheckpointError(
                f"{release}: the packed checkpoint reproduces the release only within {report.reloaded.max_ulps} ulps "
                f"(tolerated: {max_ulps}); this is a bug in spectra-hf or its optimum/gptqmodel versions, "
                "please report it"
            )
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
    return report


def _pack(model: Any, quantizers: dict[str, tuple], setting: GPTQSettings) -> tuple[Any, Any]:
    """Replace the model's linears by gptqmodel's packed layers holding the given scales and zeros, as optimum's
    `quantize_model` does after GPTQ (same packing, same config).

    Returns (model, the quantizer `save_quantized` needs)."""
    from optimum.gptq.utils import get_block_name_with_pattern

    quantizer = gptq_quantizer_class()(
        bits=setting.bits,
        group_size=setting.group_size,
        damp_percent=setting.damp_percent,
        desc_act=False,
        act_group_aware=setting.group_size > 0,
        sym=True,
        backend=REFERENCE_BACKEND,
    )
    quantizer.format = "gptq_v2"  # what quantize_model sets: gptqmodel packs v2 in memory, save() writes v1
    quantizer.block_name_to_quantize = get_block_name_with_pattern(model)
    with torch.no_grad():
        quantizer.pack_model(model=model, quantizers=quantizers)
    model.is_quantized = True
    model.config.quantization_config = quantizer.to_dict()
    return quantizer.post_init_model(model), quantizer


def _compare_reloaded(directory: Path, release: Path, names: list[str]) -> LatticeFit:
    """Load the written checkpoint, dequantize each packed layer and count differences from the release weights."""
    from spectra_hf.checkpoints.io import Checkpoint

    source = Checkpoint(release)
    reloaded = load_quantlm(directory, backend=REFERENCE_BACKEND)
    fit = LatticeFit()
    with torch.no_grad(), eager_mode():
        for module_name in names:
            again = reloaded.get_submodule(module_name).dequantize_weight().T.to(torch.float16).contiguous()
            expected = source.tensor(f"{module_name}.weight")
            if torch.equal(again.view(torch.int16), expected.view(torch.int16)):
                fit.add(LatticeFit(values=expected.numel()))
                continue
            distance = ulp_distance(again, expected)
            fit.add(
                LatticeFit(values=distance.numel(), differing=int((distance > 0).sum()), max_ulps=int(distance.max()))
            )
    return fit


def _copy_release_side_files(release: Path, directory: Path) -> None:
    """Tokenizer and generation files of the release travel with the recovered weights."""
    from spectra_hf.checkpoints.convert import copy_side_files

    copy_side_files(release, directory)


__all__ = ["LatticeFit", "RecoveredLinear", "RecoveryReport", "recover_codes", "recover_quantlm", "ulp_distance"]
