"""TriLM: the Spectra suite's ternary language models (arXiv 2407.12327).

The architecture is FloatLM's (transformers' Llama, reused unchanged) with the seven linear layers of every decoder
block replaced by `TernaryLinear`; the embedding, LM head and norms stay in floating point and activations are not
quantized. Scale shards follow the original Megatron layout (see `ternary.py`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
)

from .checkpoint_checks import CheckedLoadingMixin
from .configuration_trilm import TriLMConfig
from .ternary import TernaryLinear, share_scales

# Column-parallel layers are sharded by output rows, row-parallel layers by input columns.
TERNARY_SHARD_DIM = {
    "self_attn.q_proj": 0,
    "self_attn.k_proj": 0,
    "self_attn.v_proj": 0,
    "self_attn.o_proj": 1,
    "mlp.gate_proj": 0,
    "mlp.up_proj": 0,
    "mlp.down_proj": 1,
}


def make_layer_ternary(layer: LlamaDecoderLayer, config: TriLMConfig) -> None:
    """Replace the decoder layer's seven `nn.Linear` with `TernaryLinear`, keeping their parameters."""
    for path, shard_dim in TERNARY_SHARD_DIM.items():
        parent_name, child_name = path.split(".")
        parent = getattr(layer, parent_name)
        ternary = TernaryLinear.from_linear(
            getattr(parent, child_name),
            shards=config.pretraining_model_parallel,
            shard_dim=shard_dim,
            eps=config.ternary_eps,
        )
        setattr(parent, child_name, ternary)
    if config.ternary_fused_qkv_scale:
        attn = layer.self_attn
        share_scales(attn.q_proj, attn.k_proj, attn.v_proj)


class TriLMPreTrainedModel(CheckedLoadingMixin, LlamaPreTrainedModel):
    config_class = TriLMConfig
    config: TriLMConfig

    @torch.no_grad()
    def ternary_stats(self) -> dict[str, dict[str, float | list[float]]]:
        """Per ternary layer: `zero_fraction` (share of T == 0), `plus_fraction`, `minus_fraction` and `scales`."""
        stats = {}
        for name, module in self.named_modules():
            if isinstance(module, TernaryLinear):
                digits, scales = module.ternary_weight()
                numel = digits.numel()
                stats[name] = {
                    "zero_fraction": (digits == 0).sum().item() / numel,
                    "plus_fraction": (digits == 1).sum().item() / numel,
                    "minus_fraction": (digits == -1).sum().item() / numel,
                    "scales": scales.tolist(),
                }
        return stats


class TriLMModel(TriLMPreTrainedModel, LlamaModel):
    """The TriLM decoder stack: `input_ids` [batch, seq] -> `last_hidden_state` [batch, seq, hidden]."""

    def __init__(self, config: TriLMConfig) -> None:
        LlamaModel.__init__(self, config)
        for layer in self.layers:
            make_layer_ternary(layer, config)


class TriLMForCausalLM(TriLMPreTrainedModel, LlamaForCausalLM):
    """TriLM with its (untied, floating-point) LM head: `input_ids` [batch, seq] -> `logits` [batch, seq, vocab]."""

    def __init__(self, config: TriLMConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.model = TriLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


TriLMConfig.register_for_auto_class()
TriLMModel.register_for_auto_class("AutoModel")
TriLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
