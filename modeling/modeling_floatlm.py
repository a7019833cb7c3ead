"""FloatLM: the Spectra suite's fp16 LLaMA-style models, which are exactly transformers' Llama.

The classes reuse `transformers.models.llama` unchanged (SDPA / flash attention, the KV cache, generation, gradient
checkpointing and the tensor-parallel plan come with it); they only bind the `floatlm` config class, so FloatLM
checkpoints load through the Auto classes and as remote code. Weights are interchangeable with LlamaForCausalLM.
"""

from torch import nn
from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel

from .checkpoint_checks import CheckedLoadingMixin
from .configuration_floatlm import FloatLMConfig


class FloatLMPreTrainedModel(CheckedLoadingMixin, LlamaPreTrainedModel):
    config_class = FloatLMConfig
    config: FloatLMConfig


class FloatLMModel(FloatLMPreTrainedModel, LlamaModel):
    """The FloatLM decoder stack: `input_ids` [batch, seq] -> `last_hidden_state` [batch, seq, hidden]."""


class FloatLMForCausalLM(FloatLMPreTrainedModel, LlamaForCausalLM):
    """FloatLM with its (untied) LM head: `input_ids` [batch, seq] -> `logits` [batch, seq, vocab]."""

    def __init__(self, config: FloatLMConfig) -> None:
        FloatLMPreTrainedModel.__init__(self, config)
        self.model = FloatLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


FloatLMConfig.register_for_auto_class()
FloatLMModel.register_for_auto_class("AutoModel")
FloatLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
