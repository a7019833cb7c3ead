"""FloatLM configuration: the Spectra suite's fp16 LLaMA-style models (arXiv 2407.12327)."""

from transformers import LlamaConfig

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
