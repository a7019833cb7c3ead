"""QuantLM: the paper's post-training-quantized FloatLMs, made with GPTQ through optimum (gptqmodel underneath).

A QuantLM quantizes every linear layer inside the decoder blocks (q, k, v, o, gate, up, down) of a FloatLM to
`bits` bits, symmetric, without a zero point; embeddings, LM head and norms stay in floating point. Paper
settings (`spectra_hf.suite`): group size 128 at 3 and 4 bits, per-channel at 6 and 8, calibration on 512
samples x 2048 tokens. Everything is overridable.

Output formats, both plain Llama checkpoints (model_type `llama`, loadable without spectra-hf):

- "gptq": packed GPTQ (v1 layout) that `AutoModelForCausalLM.from_pretrained` loads at every width 2..8. At 2, 3,
  4 and 8 bits the config says `quant_method: "gptq"` and a stock transformers + optimum + gptqmodel install loads
  it. transformers' `GPTQConfig` refuses 5, 6 and 7 bits although gptqmodel packs and runs them: those checkpoints
  (the 6-bit QuantLMs) say `quant_method: "spectra_gptq"`, the method `import spectra_hf` registers with
  transformers (`spectra_hf.quantization.hf_quantizer`); they also carry that method's module as remote code
  (config.json's `auto_map`), so `from_pretrained(..., trust_remote_code=True)` loads them without spectra-hf.
  `load_quantlm` loads every width (any dtype, exact).
- "unpacked": the weights dequantized back to a fp16 `LlamaForCausalLM`, like the original release
  (`SpectraSuite/QuantLM_*_Unpacked`): same quality, no memory savings.

A group size must divide every quantized layer's input width (so a group never exceeds a row): GPTQ itself and
gptqmodel's torch kernel would make short groups, but the kernel gptqmodel picks for 4 bits on CPU (aten's int4
matmul) then fails at the first forward. Every width of the nine suite sizes is a multiple of 128. On narrower
(tiny) models the paper's default 128 is lowered to the largest supported size that fits (64 for width 64) and the
export records the group size it used; a group size the caller chose that does not fit is refused before any work.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from spectra_hf.checkpoints.exports import ExportInfo, atomic_directory, model_dir, read_export_info, write_export_info
from spectra_hf.checkpoints.info import suite_size
from spectra_hf.checkpoints.io import config_architecture, read_config
from spectra_hf.errors import CheckpointError, ConfigError, SpectraError
from spectra_hf.modeling.checkpoint_checks import linear_shapes
from spectra_hf.modeling.quantlm_gptq import SPECTRA_GPTQ_BITS, gptq_quantizer_class
from spectra_hf.quantization.calibration import CalibrationSource, calibration_samples, load_calibration_texts
from spectra_hf.quantization.hf_quantizer import SPECTRA_GPTQ_METHOD, ship_remote_code, spectra_gptq_config
from spectra_hf.suite import CONTEXT_LENGTH, FLOAT_BITS, QUANT_BITS, QUANT_GROUP_SIZE, size_bits

logger = logging.get_logger(__name__)

GPTQ_BITS: tuple[int, ...] = SPECTRA_GPTQ_BITS  # widths gptqmodel's torch kernel packs and runs
FROM_PRETRAINED_BITS: tuple[int, ...] = (2, 3, 4, 8)  # widths transformers' GPTQConfig accepts
FORMATS: tuple[str, ...] = ("gptq", "unpacked")
GROUP_SIZES: tuple[int, ...] = (-1, 16, 32, 64, 128, 256, 512, 1024)  # gptqmodel's TorchLinear.SUPPORTS_GROUP_SIZE
PACK_MULTIPLE = 32  # packed layers need in_features and out_features divisible by one 32-bit word
# The paper's calibration set: 512 samples of 2048 tokens (of SlimPajama).
CALIBRATION_SAMPLES = 512
CALIBRATION_LENGTH = CONTEXT_LENGTH
DAMP_PERCENT = 0.1  # GPTQ's Hessian dampening; not published for the suite, this is GPTQ's usual default
_GENERATION_FILES = ("generation_config.json",)
# gptqmodel's plain torch kernel: dequantizes to the activations' dtype and multiplies, at every width. The
# "auto" choice on CPU is TorchAtenLinear at 4 bits, which switches itself on its first no-grad call to an int4
# kernel with bfloat16 activations, so it is not comparable bit for bit; exports are verified with this one.
REFERENCE_BACKEND = "torch"


@dataclass(frozen=True)
class GPTQSettings:
    """How one QuantLM is quantized.

    Attributes:
        bits: bits per quantized weight (2..8).
        group_size: input columns sharing one scale; -1 means one scale per output row (per-channel).
        sym: symmetric quantization (no zero point), as in the paper.
        desc_act: GPTQ's act-order; off, as optimum's default (the paper does not say).
        damp_percent: Hessian dampening, as a fraction of its mean diagonal.
    """

    bits: int
    group_size: int
    sym: bool = True
    desc_act: bool = False
    damp_percent: float = DAMP_PERCENT

    @classmethod
    def paper(cls, bits: int, *, group_size: int | None = None, damp_percent: float = DAMP_PERCENT) -> GPTQSettings:
        """The paper's settings at `bits` (group 128 at 3/4 bits, per-channel at 6/8), with optional overrides.

        Widths the paper did not use get group size 128.
        """
        if bits not in GPTQ_BITS:
            raise ConfigError(
                f"bits={bits} is not supported: GPTQ here quantizes to {GPTQ_BITS[0]}..{GPTQ_BITS[-1]} bits"
            )
        if group_size is None:
            group_size = QUANT_GROUP_SIZE.get(bits, 128)
        if group_size not in GROUP_SIZES:
            raise ConfigError(f"group_size={group_size} is not supported: use one of {GROUP_SIZES} (-1 = per-channel)")
        if not 0 < damp_percent < 1:
            raise ConfigError(f"damp_percent={damp_percent} must lie strictly between 0 and 1")
        return cls(bits=bits, group_size=group_size, damp_percent=damp_percent)

    @property
    def effective_bits(self) -> float:
        """Bits per quantized weight as the paper counts them: a group's fp16 scale and zero add 32 / group_size.

        Per-channel parameters are not counted (as in the paper): 3.25 / 4.25 / 6 / 8 at the paper's settings.
        """
        return self.bits + (2 * FLOAT_BITS / self.group_size if self.group_size > 0 else 0.0)


def check_floatlm_config(config: dict[str, Any], *, where: str, packable: bool = True) -> None:
    """Refuse what cannot become a QuantLM: a TriLM, a non-Llama model, widths GPTQ kernels cannot pack.

    Args:
        config: the model's config.json as a dict.
        where: the directory it came from (for messages).
        packable: also require widths GPTQ's packed kernels support.
    """
    model_type = config.get("model_type")
    if model_type == "trilm" or "pretraining_model_parallel" in config:
        raise CheckpointError(
            f"{where} is a TriLM (ternary weights); QuantLMs are quantized from FloatLMs: pass a FloatLM directory"
        )
    if model_type not in ("floatlm", "llama"):
        raise CheckpointError(f"{where} has model_type {model_type!r}; pass a FloatLM (model_type floatlm or llama)")
    if not packable:
        return
    for name, (out_features, in_features) in linear_shapes(config).items():
        if in_features % PACK_MULTIPLE or out_features % PACK_MULTIPLE:
            raise ConfigError(
                f"{where}: {name} is {in_features} -> {out_features}; GPTQ kernels pack layers whose widths are "
                f"multiples of {PACK_MULTIPLE}: choose hidden/intermediate/head widths divisible by {PACK_MULTIPLE}"
            )


def plan_settings(
    config: dict[str, Any],
    bits: Sequence[int],
    *,
    group_size: int | Mapping[int, int] | None = None,
    damp_percent: float = DAMP_PERCENT,
    where: str = "the model",
) -> list[GPTQSettings]:
    """GPTQ settings for each width in `bits` on a model with this config.json, checked against its layer widths.

    A group size must divide every quantized layer's input width (see the module docstring). The paper's default
    that does not fit a narrow model is lowered to the largest supported size that does (per-channel if none);
    a group size the caller chose that does not fit is refused.

    Args:
        config: the FloatLM's config.json as a dict.
        bits: widths to quantize to.
        group_size: one override for every width, or a mapping from bits to group size (-1 = per-channel).
        damp_percent: GPTQ Hessian dampening.
        where: names the model in error messages.
    """
    in_widths = {in_features for _, in_features in linear_shapes(config).values()}
    chosen = group_size if isinstance(group_size, Mapping) else {b: group_size for b in bits}
    plans = []
    for b in bits:
        setting = GPTQSettings.paper(b, group_size=chosen.get(b), damp_percent=damp_percent)
        if setting.group_size > 0 and any(width % setting.group_size for width in in_widths):
            if chosen.get(b) is not None:
                raise ConfigError(
                    f"{where}: group_size={setting.group_size} at {b} bits does not divide every layer's input width "
                    f"({sorted(in_widths)}); gptqmodel's CPU int4 kernel needs whole groups: pass a group size "
                    "dividing them all, or -1 for per-channel"
                )
            fitting = [g for g in GROUP_SIZES if 0 < g < setting.group_size and not any(w % g for w in in_widths)]
            setting = replace(setting, group_size=max(fitting, default=-1))
        plans.append(setting)
    return plans


def load_floatlm_as_llama(directory: Path):
    """Load a FloatLM checkpoint as a plain `LlamaForCausalLM` in its stored dtype, on CPU, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**config_architecture(read_config(directory)))
    return LlamaForCausalLM.from_pretrained(directory, config=config, dtype="auto").eval()


def gptq_quant_method(bits: int) -> str:
    """The `quant_method` a packed QuantLM of this width records: "gptq" where transformers' GPTQConfig accepts the
    width (stock installs load it), "spectra_gptq" (registered by `import spectra_hf`) where it does not."""
    return "gptq" if bits in FROM_PRETRAINED_BITS else SPECTRA_GPTQ_METHOD


def quantize_model(
    model: Any, samples: list[dict[str, torch.Tensor]], settings: GPTQSettings, *, backend: str = REFERENCE_BACKEND
) -> tuple[Any, Any]:
    """GPTQ-quantize a Llama-architecture model in place.

    Args:
        model: a `LlamaForCausalLM` (a FloatLM loaded as Llama), on CPU or GPU.
        samples: calibration samples, dicts of `input_ids` / `attention_mask` LongTensors [1, length].
        settings: bits, group size and the other GPTQ knobs.
        backend: gptqmodel kernel of the in-memory result (the saved checkpoint is the same for every kernel).

    Returns:
        (model, quantizer): the model with packed quantized layers (gptqmodel's in-memory v2 layout), and the
        quantizer that `save_quantized` needs.
    """
    quantizer_class = gptq_quantizer_class()
    quantizer = quantizer_class(
        bits=settings.bits,
        dataset=samples,
        group_size=settings.group_size,
        damp_percent=settings.damp_percent,
        desc_act=settings.desc_act,
        # gptqmodel's group-aware act order needs groups; per-channel runs without it
        act_group_aware=settings.group_size > 0 and not settings.desc_act,
        sym=settings.sym,
        model_seqlen=samples[0]["input_ids"].shape[1],
        backend=backend,
    )
    return quantizer.quantize_model(model, None), quantizer


def gptq_quantizer(settings: GPTQSettings, *, backend: str = REFERENCE_BACKEND) -> Any:
    """optimum's GPTQQuantizer (widened to 2..8 bits) for packing codes and scales found elsewhere (no calibration):
    set up as `quantize_model` leaves it after GPTQ, in gptqmodel's in-memory v2 format."""
    quantizer = gptq_quantizer_class()(
        bits=settings.bits,
        group_size=settings.group_size,
        damp_percent=settings.damp_percent,
        desc_act=settings.desc_act,
        act_group_aware=settings.group_size > 0 and not settings.desc_act,
        sym=settings.sym,
        backend=backend,
    )
    quantizer.format = "gptq_v2"  # what quantize_model sets: gptqmodel packs v2 in memory, save() writes v1
    return quantizer


@dataclass(frozen=True)
class PackedQuantizationConfig:
    """What a packed QuantLM records: `loading` goes into config.json's `quantization_config` (its quant_method from
    `gptq_quant_method`), `gptqmodel` into quantize_config.json (quant_method "gptq", as gptqmodel reads it)."""

    loading: dict[str, Any]
    gptqmodel: dict[str, Any]


def packed_quantization_config(quantizer: Any) -> PackedQuantizationConfig:
    """The configs `save_quantized` writes for this quantizer's settings (GPTQ v1 on disk, no calibration data)."""
    saved = {**quantizer.to_dict(), "dataset": None, "format": "gptq"}
    return PackedQuantizationConfig(
        loading={**saved, "quant_method": gptq_quant_method(quantizer.bits)},
        gptqmodel={**saved, "quant_method": "gptq"},
    )


def save_quantized(model: Any, quantizer: Any, directory: str | Path) -> None:
    """Save a `quantize_model` result as a packed GPTQ (v1) checkpoint that reloads to the same model.

    config.json's `quant_method` is `gptq_quant_method(bits)`; quantize_config.json (gptqmodel's) keeps "gptq"; a
    spectra_gptq export also gets its remote code (`ship_remote_code`). Guards optimum 2.3's traps: the calibration
    tensors it keeps in `quantization_config["dataset"]` are dropped, and `format` is written as "gptq" (v1, what
    `save` writes) instead of "gptq_v2" (which makes reloads silently wrong). `save` converts
    `model` to the v1 layout in place: do not run `model` afterwards, reload it from `directory` (`load_quantlm`).
    """
    quantizer.dataset = None
    model.config.quantization_config["dataset"] = None
    model.config.quantization_config["format"] = "gptq"
    model.config.quantization_config["quant_method"] = gptq_quant_method(quantizer.bits)
    quantizer.save(model, str(directory))
    saved = read_config(Path(directory))["quantization_config"]
    if saved.get("format") != "gptq" or saved.get("dataset") is not None:
        raise CheckpointError(
            f"optimum wrote quantization_config {saved} to {directory}; expected format 'gptq' and no dataset"
        )
    ship_remote_code(Path(directory))


def load_quantlm(
    directory: str | Path, *, dtype: torch.dtype | str = "auto", device: str = "cpu", backend: str = "auto"
):
    """Load a packed QuantLM (any width 2..8) as a Llama model with gptqmodel's quantized layers.

    Every width goes through `AutoModelForCausalLM.from_pretrained` (5, 6 and 7 bits through the `spectra_gptq`
    method, see `spectra_hf.quantization.hf_quantizer`). Checkpoints written before that method existed (5..7 bits
    under `quant_method: "gptq"`) go through the same steps by hand: build the Llama model, swap its decoder linears
    for gptqmodel's packed layers (optimum's `convert_model`), load the safetensors, post-init.

    Args:
        directory: a QuantLM export in the "gptq" format.
        dtype: dtype of the unquantized tensors ("auto": as stored).
        device: where to load it.
        backend: gptqmodel kernel ("auto": gptqmodel picks the fastest for the device; "torch": the exact
            dequantize-and-multiply reference).
    """
    directory = Path(directory)
    config = read_config(directory)
    quant = config.get("quantization_config") or {}
    method = quant.get("quant_method")
    if method not in ("gptq", SPECTRA_GPTQ_METHOD):
        raise CheckpointError(
            f"{directory} is not a packed GPTQ checkpoint (no gptq quantization_config in config.json)"
        )
    if method == SPECTRA_GPTQ_METHOD or quant["bits"] in FROM_PRETRAINED_BITS:
        from transformers import AutoModelForCausalLM, GPTQConfig

        # spectra_gptq is registered (importing this module imported spectra_hf); only the loading attributes
        # (backend) of a passed config override the saved one
        config_class = spectra_gptq_config if method == SPECTRA_GPTQ_METHOD else GPTQConfig
        loading = config_class(bits=quant["bits"], backend=backend)
        return AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype, device_map=device, quantization_config=loading
        ).eval()
    return _load_wide_gptq(directory, config, dtype=dtype, device=device, backend=backend)


def _load_wide_gptq(directory: Path, config: dict[str, Any], *, dtype: torch.dtype | str, device: str, backend: str):
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    quant = dict(config["quantization_config"])
    llama_config = LlamaConfig(**{k: v for k, v in config_architecture(config).items() if k != "quantization_config"})
    torch_dtype = llama_config.dtype if dtype == "auto" else dtype
    # transformers wraps PreTrainedModel.to in @wraps(Module.to), whose stub hides the bound self
    model = LlamaForCausalLM(llama_config).to(dtype=torch_dtype)  # type: ignore[call-arg]
    quantizer = gptq_quantizer_class()(**{**quant, "backend": backend})
    quantizer.convert_model(model, device_map={"": device})
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        state.update(load_file(shard, device=device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # gptqmodel layers may register derived, non-persistent buffers; every stored tensor must be consumed
    if unexpected or any(not name.endswith(_DERIVED_BUFFERS) for name in missing):
        raise CheckpointError(
            f"{directory} does not match a {quant['bits']}-bit QuantLM of its config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); re-export it"
        )
    model = quantizer.post_init_model(model.to(device))
    model.is_quantized = True
    model.config.quantization_config = quant
    return model.eval()


_DERIVED_BUFFERS: tuple[str, ...] = ("wf_unsqueeze_zero", "wf_unsqueeze_neg_one")


def dequantize_to_llama(model: Any, *, dtype: torch.dtype = torch.float16):
    """The unpacked form of a loaded packed QuantLM: a plain `LlamaForCausalLM` with dequantized weights.

    Each quantized layer's weight [out_features, in_features] becomes `scale[g] * (q - zero[g])` (gptqmodel's own
    dequantization), cast to `dtype`; all other tensors are copied, cast to `dtype`.
    """
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import LlamaConfig, LlamaForCausalLM

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = str(dtype).removeprefix("torch.")
    # transformers wraps PreTrainedModel.to in @wraps(Module.to), whose stub hides the bound self
    plain = LlamaForCausalLM(LlamaConfig(**config_architecture(config))).to(dtype=dtype)  # type: ignore[call-arg]
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseQuantLinear):
            state[f"{name}.weight"] = module.dequantize_weight().T.to(dtype)
    for name, tensor in model.state_dict().items():
        if name in plain.state_dict() and name not in state:
            state[name] = tensor.to(dtype)
    plain.load_state_dict(state, strict=True)
    return plain.eval()


def quantlm_size_bits(config: Any, settings: GPTQSettings) -> int:
    """Model size in bits as the paper counts it (`spectra_hf.suite.size_bits`) at these settings' effective bits."""
    return size_bits(config, bits_per_linear_weight=settings.effective_bits)


def _size_label(floatlm: Path, config: dict[str, Any], size: str | None) -> tuple[str, str]:
    """(label in the QuantLM names, base model name) of a FloatLM directory.

    The suite size when it is known (`size`, a `FloatLM_<size>` export, or an architecture the registry has), so
    exports land in the suite layout; otherwise the FloatLM's directory name (a user's own FloatLM quantizes too).
    """
    if size is not None:
        return size, f"FloatLM_{size}"
    try:
        name = read_export_info(floatlm).name
    except SpectraError:
        name = None
    if name and name.startswith("FloatLM_"):
        return name.removeprefix("FloatLM_"), name
    matched = suite_size(config)
    if matched is not None:
        return matched, f"FloatLM_{matched}"
    label = floatlm.resolve().name
    logger.info(f"{floatlm} is not a suite size: naming its exports QuantLM_{label}_<bits>bit (--size to choose)")
    return label, label


def eager_mode():
    """A context with torch.compile off. gptqmodel's TorchLinear compiles its dequantization on first use: worth it
    for serving, not for the one probe forward that checks an export (the compile takes seconds to minutes on a
    CPU)."""
    import torch._dynamo

    return torch._dynamo.config.patch(disable=True)


def _reload_error(expected: torch.Tensor, reloaded: Any, probe: torch.Tensor) -> float:
    with torch.no_grad():
        actual = reloaded(probe.to(reloaded.device)).logits.float().cpu()
    return (actual - expected).abs().max().item()


def export_quantlms(
    floatlm: str | Path,
    suite_dir: str | Path,
    *,
    calibration: CalibrationSource,
    bits: Sequence[int] = QUANT_BITS,
    group_size: int | Mapping[int, int] | None = None,
    format: str = "gptq",
    samples: int = CALIBRATION_SAMPLES,
    length: int = CALIBRATION_LENGTH,
    seed: int = 0,
    size: str | None = None,
    text_column: str = "text",
    split: str | None = None,
    damp_percent: float = DAMP_PERCENT,
) -> list[Path]:
    """Quantize a FloatLM at each width in `bits` and write `suite_dir/QuantLM_<size>_<b>bit` for each.

    Everything that can be wrong with the input (bits, format, group size, a TriLM, unpackable widths, missing
    tokenizer, too little calibration text) is checked before any quantization. Each export is written through
    `atomic_directory` and checked before it is moved into place: the saved checkpoint is reloaded from disk
    and its logits on a calibration probe must equal the in-memory quantized model's.

    Args:
        floatlm: FloatLM directory (model_type floatlm, or a plain llama FloatLM) with its tokenizer files.
        suite_dir: the suite directory (see `spectra_hf.checkpoints.exports`).
        calibration: calibration text (see `load_calibration_texts`).
        bits: widths to export; the paper's are 3, 4, 6, 8.
        group_size: overrides the paper's group size (-1 = per-channel): one value for every width, or a
            mapping from bits to group size (widths it leaves out keep the paper's); see `plan_settings`.
        format: "gptq" (packed) or "unpacked" (dequantized fp16 Llama, like the original release).
        samples, length: calibration samples x tokens per sample (paper: 512 x 2048).
        seed: draws the calibration windows.
        size: label in the names (default: the suite size from the FloatLM's export info or its architecture, else
            the FloatLM's directory name).
        text_column, split: for calibration datasets.
        damp_percent: GPTQ Hessian dampening.

    Returns:
        The written export directories, in the order of `bits`.
    """
    from transformers import AutoTokenizer

    if format not in FORMATS:
        raise ConfigError(f"format {format!r} is not one of {FORMATS}")
    if not bits:
        raise ConfigError("no bit widths given: pass at least one of 2..8 (the paper's are 3 4 6 8)")
    floatlm = Path(floatlm)
    config = read_config(floatlm)
    check_floatlm_config(config, where=str(floatlm))
    settings = plan_settings(config, bits, group_size=group_size, damp_percent=damp_percent, where=str(floatlm))
    size_label, base_model = _size_label(floatlm, config, size)
    try:
        tokenizer = AutoTokenizer.from_pretrained(floatlm)
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"{floatlm} has no loadable tokenizer ({error}); save the FloatLM's tokenizer next to it"
        ) from error
    context = config.get("max_position_embeddings")
    if isinstance(context, int) and 0 < context < length:
        logger.warning(
            f"calibration length {length} exceeds {floatlm}'s context of {context} tokens: using samples of {context} "
            "(--calibration-length to choose)"
        )
        length = context
    texts = load_calibration_texts(calibration, text_column=text_column, split=split)
    samples_ = calibration_samples(tokenizer, texts.documents, samples=samples, length=length, seed=seed)
    probe = samples_[0]["input_ids"][:, :128]

    from tqdm.auto import tqdm

    written = []
    for setting in tqdm(settings, desc="QuantLM widths"):
        name = f"QuantLM_{size_label}_{setting.bits}bit"
        with atomic_directory(model_dir(suite_dir, name)) as staging:
            model, quantizer = quantize_model(load_floatlm_as_llama(floatlm), samples_, setting)
            with torch.no_grad(), eager_mode():
                expected = model(probe.to(model.device)).logits.float().cpu()
            with tempfile.TemporaryDirectory(dir=staging.parent, prefix=f".{name}.packed-") as packed:
                packed_dir = staging if format == "gptq" else Path(packed)
                save_quantized(model, quantizer, packed_dir)
                del model  # converted in place by save(): only the reloaded copy is trustworthy
                reloaded = load_quantlm(packed_dir, backend=REFERENCE_BACKEND)
                with eager_mode():
                    logit_error = _reload_error(expected, reloaded, probe)
                if logit_error > 1e-3 * max(1.0, expected.abs().max().item()):
                    raise CheckpointError(
                        f"{name}: the saved checkpoint reloads to a different model "
                        f"(max logit difference {logit_error:.3g}); "
                        "this is a bug in spectra-hf or its optimum/gptqmodel versions, please report it"
                    )
                if format == "unpacked":
                    dequantize_to_llama(reloaded).save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            for filename in _GENERATION_FILES:
                if (floatlm / filename).is_file() and not (staging / filename).exists():
                    shutil.copy2(floatlm / filename, staging / filename)
            info = _export_info(name, base_model, setting, format, config, texts.source, len(samples_), length, seed)
            write_export_info(staging, info)
        written.append(model_dir(suite_dir, name))
    return written


def _export_info(
    name: str,
    base_model: str,
    setting: GPTQSettings,
    format: str,
    config: dict[str, Any],
    source: str,
    samples: int,
    length: int,
    seed: int,
) -> ExportInfo:
    import gptqmodel
    import optimum.version

    packed_loader = (
        "transformers.AutoModelForCausalLM.from_pretrained"
        if setting.bits in FROM_PRETRAINED_BITS
        else "transformers.AutoModelForCausalLM.from_pretrained after `import spectra_hf`, or with "
        "trust_remote_code=True (quant_method spectra_gptq)"
    )
    return ExportInfo(
        name=name,
        family="quantlm",
        format=format,
        extra={
            "base_model": base_model,
            "bits": setting.bits,
            "suite_width": setting.bits in QUANT_BITS,  # False: a width no Spectra release has (--non-suite-bits)
            "group_size": setting.group_size,
            "sym": setting.sym,
            "desc_act": setting.desc_act,
            "damp_percent": setting.damp_percent,
            "effective_bits_per_weight": setting.effective_bits,
            "size_bits": quantlm_size_bits(config, setting),
            "calibration": {"source": source, "samples": samples, "length": length, "seed": seed},
            "loader": "transformers.LlamaForCausalLM.from_pretrained" if format == "unpacked" else packed_loader,
            "quantizer": f"optimum {optimum.version.__version__}, gptqmodel {gptqmodel.__version__}",
        },
    )
