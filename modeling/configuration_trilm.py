"""TriLM configuration: FloatLM's architecture with ternary linear layers in every decoder block."""

from typing import Any

from .configuration_floatlm import FloatLMConfig
from .ternary import INFERENCE_PATHS

WEIGHT_FORMATS = ("latent", "packed")
# The config keys a TriLMConfig adds to FloatLM's (Llama's): what a FloatLM or Llama config made from a TriLM's leaves
# out. The first three describe the network; TERNARY_STORAGE_KEYS say how its ternary weights are stored and run.
TERNARY_STORAGE_KEYS: tuple[str, ...] = ("weight_format", "ternary_inference")
# The config.json keys save_pretrained writes about which class loads the file and which transformers wrote it: a
# config converted to another model class (TriLM <-> FloatLM <-> Llama) drops them and gets its own.
LOADING_KEYS: tuple[str, ...] = ("model_type", "architectures", "auto_map", "transformers_version")
TRILM_ONLY_KEYS: tuple[str, ...] = (
    "pretraining_model_parallel", "ternary_eps", "ternary_fused_qkv_scale", *TERNARY_STORAGE_KEYS
)


def without_trilm_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dict `config` without TRILM_ONLY_KEYS: the keyword arguments of a FloatLM or Llama config
    with the same architecture."""
    return {key: value for key, value in config.items() if key not in TRILM_ONLY_KEYS}


class TriLMConfig(FloatLMConfig):
    r"""
    Configuration of a TriLM (arXiv 2407.12327): a FloatLM whose q, k, v, o, gate, up and down projections are
    ternary, `W = g * T` with `T` in {-1, 0, +1} and one absmean scale `g` per scale shard.

    Args (in addition to `LlamaConfig`'s):
        pretraining_model_parallel (`int`, defaults to 1):
            Number of scale shards per ternary matrix: the model-parallel degree of the original training run
            (1, 2, 3 or 6 in the suite). Column-parallel layers (q, k, v, gate, up) are split into this many
            contiguous blocks of output rows, row-parallel layers (o, down) into blocks of input columns.
            The key name is the one the released checkpoints use.
        ternary_eps (`float`, defaults to 1e-5):
            Added to each absmean scale.
        ternary_fused_qkv_scale (`bool`, defaults to True):
            q, k and v share one scale per shard, computed over the three matrices together, because the original
            run stored them as one fused matrix. Set False for independent per-matrix scales.
        weight_format (`str`, defaults to "latent"):
            What the checkpoint stores for ternary layers. "latent": the float latent weights that training
            updates (ternarized on the fly; resume training from these). "packed": the release format, T packed
            5 digits per byte (`P.weight_packed`, uint8) and one float32 scale per shard (`P.weight_scale`);
            inference only, no latent weights are ever materialized.
        ternary_inference (`str`, defaults to "auto"):
            How a packed model multiplies: "dense" (g * T materialized once in the compute dtype), "int8" (int8
            weight-only kernel), "int4" (int4 weight-only kernel, CPU: smallest and fastest there) or "auto" ("int4" on
            CPU, "int8" for CPU layers whose in_features is not a multiple of 32, "dense" elsewhere). Also accepted
            as a `from_pretrained` keyword argument.
    """

    model_type = "trilm"

    def __init__(
        self,
        pretraining_model_parallel: int = 1,
        ternary_eps: float = 1e-5,
        ternary_fused_qkv_scale: bool = True,
        weight_format: str = "latent",
        ternary_inference: str = "auto",
        **kwargs,
    ):
        kwargs.setdefault(
            "auto_map",
            {
                "AutoConfig": "configuration_trilm.TriLMConfig",
                "AutoModel": "modeling_trilm.TriLMModel",
                "AutoModelForCausalLM": "modeling_trilm.TriLMForCausalLM",
            },
        )
        self.pretraining_model_parallel = pretraining_model_parallel
        self.ternary_eps = ternary_eps
        self.ternary_fused_qkv_scale = ternary_fused_qkv_scale
        self.weight_format = weight_format
        self.ternary_inference = ternary_inference
        super().__init__(**kwargs)
        self._validate_ternary()

    def _validate_ternary(self) -> None:
        mp = self.pretraining_model_parallel
        if not isinstance(mp, int) or mp < 1:
            raise ValueError(f"pretraining_model_parallel must be a positive integer, got {mp!r}")
        sharded = {
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
        }
        for key, value in sharded.items():
            assert value is not None, f"LlamaConfig fills {key} in"
            if value % mp:
                raise ValueError(
                    f"pretraining_model_parallel={mp} does not divide {key}={value}: each scale shard must hold "
                    f"whole heads and equal slices; choose a shard count that divides {key}"
                )
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}, got {self.weight_format!r}")
        if self.ternary_inference not in ("auto", *INFERENCE_PATHS):
            raise ValueError(
                f"ternary_inference must be 'auto' or one of {INFERENCE_PATHS}, got {self.ternary_inference!r}"
            )
