"""The Spectra suite registry: the only place that knows sizes, names, architectures and training recipes.

Values come from the paper (arXiv 2407.12327) and the public `SpectraSuite` release; see shared/SPECTRA.md.
Everything else in spectra-hf (configs, recipes, cards, publishing, the CLI) reads from here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from spectra_hf.errors import ConfigError

Family = Literal["trilm", "floatlm", "quantlm"]

FAMILIES: tuple[Family, ...] = ("trilm", "floatlm", "quantlm")
FAMILY_PREFIX: dict[str, str] = {"trilm": "TriLM", "floatlm": "FloatLM", "quantlm": "QuantLM"}
QUANT_BITS: tuple[int, ...] = (3, 4, 6, 8)
# Effective bits per quantized weight as the paper counts them (group size 128 at 3 and 4 bits adds the group's
# quantization parameters; 6 and 8 bits are per-channel, whose per-row scale the paper does not count).
QUANT_EFFECTIVE_BITS: dict[int, float] = {3: 3.25, 4: 4.25, 6: 6.0, 8: 8.0}
QUANT_GROUP_SIZE: dict[int, int] = {3: 128, 4: 128, 6: -1, 8: -1}
TERNARY_BITS = 1.58  # bits per ternary weight, as the paper counts (log2(3) = 1.585)
FLOAT_BITS = 16

VOCAB_SIZE = 50304  # GPT-NeoX-20B tokenizer, padded
CONTEXT_LENGTH = 2048
TOKENS = 300_000_000_000
# The paper's pre-training corpus (deduplicated SlimPajama), as the Hub names it: recipes and cards read it here.
DATASET_ID = "cerebras/SlimPajama-627B"
ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5
TERNARY_EPS = 1e-5
BOS_TOKEN_ID = EOS_TOKEN_ID = 0
BATCH_TOKENS: dict[str, int] = {"trilm": 1 << 20, "floatlm": 1 << 21}  # 1M and 2M tokens per optimizer step
# The 2.4B size is spelled "2.3B" in the original QuantLM and checkpoint repo names.
SIZE_ALIASES: dict[str, str] = {"2.3B": "2.4B"}
RELEASE_ORG = "SpectraSuite"
UNPACKED_SUFFIX = "_Unpacked"  # repos holding the original release format (fp16 Llama checkpoints)
TERNARY_LINEARS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The config.json keys that fix the shapes of a Spectra network's tensors (and a TriLM's scale shards): configs that
# differ in one of them describe different networks.
ARCHITECTURE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "pretraining_model_parallel",
)


@dataclass(frozen=True)
class SizeSpec:
    """One of the nine architectures, with its learning rates (the paper's Table of hyperparameters)."""

    size: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    model_parallel: int  # MP degree of the original run = number of ternary scale shards per matrix
    floatlm_lr: float
    trilm_lr: float  # TriLM peak LR for the first half of training
    trilm_lr_after_drop: float  # TriLM peak LR after the halfway drop

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def architecture(self) -> dict[str, Any]:
        """The config.json keys of this size's architecture (shared by TriLM and FloatLM; `config_kwargs` adds the
        rest)."""
        return {
            "vocab_size": VOCAB_SIZE,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "head_dim": self.head_dim,
            "tie_word_embeddings": False,
        }

    @property
    def linear_params(self) -> int:
        """Weights of the seven linear layers of all decoder blocks (the ternary / quantized ones)."""
        return linear_params(self.architecture)

    @property
    def float_params(self) -> int:
        """Parameters that stay in floating point: embedding, LM head (untied) and RMSNorm weights."""
        return float_params(self.architecture)

    @property
    def params(self) -> int:
        return self.linear_params + self.float_params


def _architecture_value(architecture: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    """`key` of a config.json dict or of a config object (`LlamaConfig`, `TriLMConfig`, ...)."""
    value = architecture.get(key) if isinstance(architecture, Mapping) else getattr(architecture, key, None)
    return default if value is None else value


def _projection_shapes(architecture: Mapping[str, Any] | Any) -> dict[str, tuple[int, int]]:
    """[out, in] of the seven projections of one decoder block, for counting parameters without torch.

    The shapes' home is `spectra_hf.modeling.checkpoint_checks.linear_shapes` (use it wherever torch is loaded);
    this torch-free twin exists because the registry and `spectra-hf suite` must not import spectra_hf.modeling,
    which imports torch. tests/test_suite.py checks the counts against that function and transformers' layers.
    """
    hidden = _architecture_value(architecture, "hidden_size")
    inter = _architecture_value(architecture, "intermediate_size")
    heads = _architecture_value(architecture, "num_attention_heads")
    head_dim = _architecture_value(architecture, "head_dim", hidden // heads)
    kv_heads = _architecture_value(architecture, "num_key_value_heads", heads)
    attn, kv = heads * head_dim, kv_heads * head_dim
    return {
        "self_attn.q_proj": (attn, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, attn),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }


def linear_params(architecture: Mapping[str, Any] | Any) -> int:
    """Weights of the seven projections of every decoder block: the ternary (TriLM) or quantized (QuantLM) ones."""
    per_block = sum(math.prod(shape) for shape in _projection_shapes(architecture).values())
    return _architecture_value(architecture, "num_hidden_layers") * per_block


def float_params(architecture: Mapping[str, Any] | Any) -> int:
    """Parameters that stay in floating point: the embedding, the LM head unless tied, and the RMSNorm weights."""
    hidden = _architecture_value(architecture, "hidden_size")
    layers = _architecture_value(architecture, "num_hidden_layers")
    tied = bool(_architecture_value(architecture, "tie_word_embeddings", False))
    return (1 if tied else 2) * _architecture_value(architecture, "vocab_size") * hidden + (2 * layers + 1) * hidden


def size_bits(architecture: Mapping[str, Any] | Any, *, bits_per_linear_weight: float) -> int:
    """A model's size in bits as the paper counts it: the decoder projections at `bits_per_linear_weight`
    (TERNARY_BITS, QUANT_EFFECTIVE_BITS[b] or FLOAT_BITS), every other parameter at FLOAT_BITS.

    Ternary scales (one per shard per matrix) and per-channel quantization scales are not counted, as in the paper;
    they add < 0.01%. `architecture` is a config.json dict or a config object.
    """
    return round(linear_params(architecture) * bits_per_linear_weight + float_params(architecture) * FLOAT_BITS)


SIZES: dict[str, SizeSpec] = {
    s.size: s
    for s in (
        SizeSpec("99M", 512, 1280, 8, 16, 1, 4.0e-4, 2.4e-3, 1.5e-3),
        SizeSpec("190M", 768, 2048, 12, 16, 1, 4.0e-4, 2.4e-3, 1.5e-3),
        SizeSpec("390M", 1024, 2560, 16, 24, 1, 3.0e-4, 1.8e-3, 1.2e-3),
        SizeSpec("560M", 1280, 3072, 20, 24, 1, 2.8e-4, 1.6e-3, 1.1e-3),
        SizeSpec("830M", 1536, 4096, 24, 24, 1, 2.5e-4, 1.5e-3, 1.0e-3),
        SizeSpec("1.1B", 1792, 5120, 28, 24, 2, 2.2e-4, 1.3e-3, 9e-4),
        SizeSpec("1.5B", 2048, 6144, 32, 24, 2, 2.0e-4, 1.2e-3, 8e-4),
        SizeSpec("2.4B", 2304, 7680, 36, 30, 3, 2.0e-4, 1.2e-3, 8e-4),
        SizeSpec("3.9B", 3072, 9216, 24, 30, 6, 1.5e-4, 1.2e-3, 8e-4),
    )
}


@dataclass(frozen=True)
class SuiteModel:
    """One of the 54 models: a family at a size (and, for QuantLM, a bit width)."""

    family: Family
    size: str
    bits: int | None = None

    @property
    def name(self) -> str:
        """Hub repo name without org, e.g. `TriLM_99M`, `QuantLM_1.1B_4bit`."""
        base = f"{FAMILY_PREFIX[self.family]}_{self.size}"
        return f"{base}_{self.bits}bit" if self.bits is not None else base

    @property
    def spec(self) -> SizeSpec:
        return SIZES[self.size]

    @property
    def params(self) -> int:
        return self.spec.params

    @property
    def bits_per_linear_weight(self) -> float:
        if self.family == "trilm":
            return TERNARY_BITS
        if self.family == "quantlm":
            assert self.bits is not None, "a QuantLM has a bit width"
            return QUANT_EFFECTIVE_BITS[self.bits]
        return FLOAT_BITS

    @property
    def size_bits(self) -> int:
        """Model size in bits as the paper counts it (see `size_bits`)."""
        return size_bits(self.spec.architecture, bits_per_linear_weight=self.bits_per_linear_weight)

    @property
    def base_model(self) -> str | None:
        """The FloatLM a QuantLM was quantized from; None for the trained families."""
        return f"FloatLM_{self.size}" if self.family == "quantlm" else None

    @property
    def unpacked_name(self) -> str:
        """Name of the repo holding this model in the release format, e.g. `TriLM_99M_Unpacked`."""
        return f"{self.name}{UNPACKED_SUFFIX}"

    @property
    def release_repo(self) -> str:
        """The repo of the original public release (fp16 Llama checkpoints), e.g. `SpectraSuite/TriLM_99M_Unpacked`."""
        size = "2.3B" if self.size == "2.4B" and self.family == "quantlm" else self.size
        if self.family == "floatlm":
            return f"{RELEASE_ORG}/FloatLM_{size}"
        bits = f"_{self.bits}bit" if self.bits is not None else ""
        return f"{RELEASE_ORG}/{FAMILY_PREFIX[self.family]}_{size}{bits}{UNPACKED_SUFFIX}"

    @property
    def peak_lr(self) -> float:
        return self.spec.trilm_lr if self.family == "trilm" else self.spec.floatlm_lr

    @property
    def batch_tokens(self) -> int:
        return BATCH_TOKENS["trilm" if self.family == "trilm" else "floatlm"]

    def as_row(self) -> dict[str, Any]:
        """The row `spectra-hf suite --json` prints."""
        spec = self.spec
        return {
            "name": self.name,
            "family": self.family,
            "size": self.size,
            "bits": self.bits,
            "params": self.params,
            "size_bits": self.size_bits,
            "linear_params": spec.linear_params,
            "bits_per_linear_weight": self.bits_per_linear_weight,
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_attention_heads": spec.num_attention_heads,
            "num_hidden_layers": spec.num_hidden_layers,
            "head_dim": spec.head_dim,
            "pretraining_model_parallel": spec.model_parallel,
            "base_model": self.base_model,
            "release_repo": self.release_repo,
        }


def all_models() -> list[SuiteModel]:
    """The 54 models, ordered by size, then TriLM, FloatLM, QuantLM 3/4/6/8 bits."""
    models: list[SuiteModel] = []
    for size in SIZES:
        models.append(SuiteModel("trilm", size))
        models.append(SuiteModel("floatlm", size))
        models.extend(SuiteModel("quantlm", size, bits) for bits in QUANT_BITS)
    return models


_NAME_RE = re.compile(r"^(TriLM|FloatLM|QuantLM)_([0-9.]+[MB])(?:_(\d+)bit)?(?:_Unpacked)?$", re.IGNORECASE)


def get_model(name: str) -> SuiteModel:
    """Look a model up by Hub name. Accepts an org prefix, the `_Unpacked` suffix and the "2.3B" spelling.

    >>> get_model("SpectraSuite/QuantLM_2.3B_4bit_Unpacked").name
    'QuantLM_2.4B_4bit'
    """
    match = _NAME_RE.match(name.split("/")[-1])
    if match is None:
        raise ConfigError(
            f"unknown suite model {name!r}: expected a name like TriLM_99M, FloatLM_1.1B or QuantLM_3.9B_4bit "
            "(run `spectra-hf suite` for the list)"
        )
    prefix, size, bits = match.groups()
    family = next(f for f in FAMILIES if FAMILY_PREFIX[f].lower() == prefix.lower())  # the pattern allows only these
    size = SIZE_ALIASES.get(size.upper(), size.upper())
    if size not in SIZES:
        raise ConfigError(f"unknown suite size {size!r} in {name!r}: sizes are {', '.join(SIZES)}")
    if family == "quantlm":
        if bits is None or int(bits) not in QUANT_BITS:
            raise ConfigError(
                f"QuantLM name {name!r} needs one of the bit widths {QUANT_BITS}, e.g. QuantLM_{size}_4bit"
            )
        return SuiteModel("quantlm", size, int(bits))
    if bits is not None:
        raise ConfigError(f"{name!r}: only QuantLM names carry a bit width")
    return SuiteModel(family, size)


def tiny_overrides(model_parallel: int, vocab_size: int = 512) -> dict[str, int]:
    """A scaled-down architecture that keeps the size's scale-shard count (for tests and demos).

    Widths are multiples of 32 (GPTQ kernels need that) and divisible by the shard count; head dim 16.
    """
    heads = 4 if model_parallel <= 2 else 6
    hidden = heads * 16
    return {
        "hidden_size": hidden,
        "intermediate_size": 3 * hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "num_hidden_layers": 2,
        "vocab_size": vocab_size,
        "max_position_embeddings": 256,
    }


def config_kwargs(name: str, *, tiny: bool = False, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of the `TriLMConfig` / `FloatLMConfig` of a suite model (QuantLM: its FloatLM)."""
    model = get_model(name)
    spec = model.spec
    kwargs: dict[str, Any] = {
        **spec.architecture,
        "max_position_embeddings": CONTEXT_LENGTH,
        "rms_norm_eps": RMS_NORM_EPS,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
    }
    if model.family == "trilm":
        kwargs["pretraining_model_parallel"] = spec.model_parallel
        kwargs["ternary_eps"] = TERNARY_EPS
    if tiny:
        kwargs.update(tiny_overrides(spec.model_parallel))
        kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_attention_heads"]
    kwargs.update(overrides)
    if "hidden_size" in overrides or "num_attention_heads" in overrides:
        kwargs["head_dim"] = overrides.get("head_dim", kwargs["hidden_size"] // kwargs["num_attention_heads"])
    return kwargs


def config_for(name: str, *, tiny: bool = False, **overrides: Any):
    """The config of a suite model: `config_for("TriLM_99M")` -> TriLMConfig. QuantLM names give their FloatLM's."""
    from spectra_hf.modeling import FloatLMConfig, TriLMConfig

    family = get_model(name).family
    config_class = TriLMConfig if family == "trilm" else FloatLMConfig
    return config_class(**config_kwargs(name, tiny=tiny, **overrides))

