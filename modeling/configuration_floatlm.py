"""FloatLM configuration: the Spectra suite's fp16 LLaMA-style models (arXiv 2407.12327).

Every Spectra module imports this one first (TriLM's configuration builds on it), so the transformers version check
below runs before any code that an older transformers could not import or run: published repos carry these files as
remote code, and a user on transformers 4.x gets one message naming the version instead of an error deep inside.
"""

import re

import transformers

# The oldest transformers this code runs on (config `rope_parameters`, the v5 loading API); the package pins the same.
MIN_TRANSFORMERS_VERSION = "5.23"


def require_transformers_version(installed: str, *, required: str = MIN_TRANSFORMERS_VERSION) -> None:
    """Raise ImportError naming the required version when transformers `installed` is older than `required`."""
    def release(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])

    if release(installed) < release(required):
        raise ImportError(
            f"the Spectra model code (TriLM / FloatLM) needs transformers>={required}, but transformers {installed} is "
            f'installed: pip install -U "transformers>={required}"'
        )


require_transformers_version(transformers.__version__)

from transformers import LlamaConfig  # noqa: E402  (after the version check, which names what to install)

# Defaults describe the smallest suite member (99M); `spectra_hf.suite.config_for(name)` builds any other.
_SPECTRA_DEFAULTS = {
    "vocab_size": 50304,
    "hidden_size": 512,
    "intermediate_size": 1280,
    "num_hidden_layers": 16,
    "num_attention_heads": 8,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "tie_word_embeddings": False,
}


class FloatLMConfig(LlamaConfig):
    r"""
    Configuration of a FloatLM: a LLaMA-style decoder (pre-norm RMSNorm, SwiGLU, RoPE theta 10000, multi-head
    attention, no biases, untied embeddings) exactly as `LlamaConfig` describes it, with the suite's defaults.

    ```python
    >>> from spectra_hf import FloatLMConfig, FloatLMForCausalLM
    >>> model = FloatLMForCausalLM(FloatLMConfig(num_hidden_layers=2, vocab_size=1024))
    ```
    """

    model_type = "floatlm"

    def __init__(self, **kwargs):
        for key, value in _SPECTRA_DEFAULTS.items():
            kwargs.setdefault(key, value)
        kwargs.setdefault(
            "auto_map",
            {
                "AutoConfig": "configuration_floatlm.FloatLMConfig",
                "AutoModel": "modeling_floatlm.FloatLMModel",
                "AutoModelForCausalLM": "modeling_floatlm.FloatLMForCausalLM",
            },
        )
        super().__init__(**kwargs)
