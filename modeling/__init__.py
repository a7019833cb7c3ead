"""Spectra models for transformers: TriLM (ternary) and FloatLM (LLaMA-style).

This package imports only torch, transformers and its own modules: its files are also the remote code that every
published checkpoint carries (`trust_remote_code=True` works without spectra-hf installed).
"""

from .configuration_floatlm import FloatLMConfig
from .configuration_trilm import TriLMConfig
from .modeling_floatlm import FloatLMForCausalLM, FloatLMModel, FloatLMPreTrainedModel
from .modeling_trilm import TriLMForCausalLM, TriLMModel, TriLMPreTrainedModel
from .ternary import TernaryLinear, share_scales

__all__ = [
    "FloatLMConfig",
    "FloatLMForCausalLM",
    "FloatLMModel",
    "FloatLMPreTrainedModel",
    "TernaryLinear",
    "TriLMConfig",
    "TriLMForCausalLM",
    "TriLMModel",
    "TriLMPreTrainedModel",
    "share_scales",
]
