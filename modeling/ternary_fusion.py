"""Sibling ternary layers that read the same input - q/k/v of an attention block, gate/up of an MLP - computed by one
2-bit operator call on CPU (`ternary_kernels.ternary_matmul_2bit_fused`), which returns every member's output at
once. A decode step of a decoder block thus makes 4 kernel calls instead of 7, in eager mode and inside a
torch.compile graph alike, and nothing is held between two layers' calls: concurrent forwards of one model from
several threads each get their own outputs.

`fuse_projections(model)` stacks each group's 2-bit rows once (the members' kernels become views of the stack: no
memory is added) and gives the attention and MLP blocks the forwards below, which call the group; blocks whose
projections are not one 2-bit group (latent layers, other paths, LoRA-wrapped layers, gradients needed) call their
layers one by one, exactly as transformers' Llama blocks do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from transformers.models.llama.modeling_llama import (
    ALL_ATTENTION_FUNCTIONS,
    LlamaAttention,
    LlamaMLP,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .ternary import TernaryLinear
from .ternary_kernels import ternary_matmul_2bit_fused


class FusedProjections:
    """A group of prepared 2-bit ternary layers with the same input: their 2-bit rows and row scales stored once,
    stacked ([sum of outs, padded_in / 4] uint8 and [sum of outs] float32), each layer's `weight_kernel` /
    `kernel_scale` a row slice (view) of them. Calling the group computes every member's output in one operator
    call: x [..., in] -> one tensor [..., out_i] per member, in x's dtype."""

    def __init__(self, layers: tuple[TernaryLinear, ...]):
        kernels = [layer.weight_kernel for layer in layers]
        row_scales = [layer.kernel_scale for layer in layers]
        assert all(k is not None for k in kernels) and all(r is not None for r in row_scales), "layers are prepared"
        self.kernel = torch.cat(cast(list[torch.Tensor], kernels))  # uint8 [sum of outs, padded_in / 4]
        self.row_scale = torch.cat(cast(list[torch.Tensor], row_scales))  # float32 [sum of outs]
        self.layers = layers
        self.outs = [layer.out_features for layer in layers]
        start = 0
        for layer in layers:
            stop = start + layer.out_features
            layer.weight_kernel = self.kernel[start:stop]  # views: the stacked tensors are the only copy
            layer.kernel_scale = self.row_scale[start:stop]
            layer._fused = self
            start = stop

    @classmethod
    def fuse(cls, *modules: nn.Module) -> FusedProjections | None:
        """Fuse `modules` if all are ternary layers prepared on the CPU 2-bit path with per-row scales only and the
        same input width (q/k/v and gate/up of a packed TriLM are); None, changing nothing, otherwise (adapters such
        as LoRA wrap the layers: those compute per layer)."""
        layers = tuple(module for module in modules if isinstance(module, TernaryLinear))
        fusable = len(layers) == len(modules) and all(
            layer.inference_path == "2bit"
            and layer.weight_kernel is not None
            and layer.weight_kernel.device.type == "cpu"
            and layer.input_scale is None
            and layer.in_features == layers[0].in_features
            and layer._fused is None
            and layer.activation_bits == layers[0].activation_bits
            for layer in layers
        )
        return cls(layers) if fusable and len(layers) > 1 else None

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        # (the members switch together: TriLMPreTrainedModel.set_int8_activations sets every layer)
        return ternary_matmul_2bit_fused(x, self.kernel, self.row_scale, self.outs, self.layers[0].activation_bits)

    def dissolve(self) -> None:
        """Back to independent layers (their kernels stay views of the stacked tensors)."""
        for layer in self.layers:
            layer._fused = None


def project(x: torch.Tensor, layers: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    """Every layer of `layers` applied to x: one fused call where they are exactly one FusedProjections group and no
    gradient is needed, else one call per layer."""
    group = getattr(layers[0], "_fused", None)
    if (
        group is not None
        and len(group.layers) == len(layers)
        and all(a is b for a, b in zip(group.layers, layers, strict=True))
        and not (torch.is_grad_enabled() and x.requires_grad)
    ):
        return group(x)
    return [layer(x) for layer in layers]


class FusedProjectionAttention(LlamaAttention):
    """transformers' LlamaAttention with q/k/v computed by `project` (one operator call on the 2-bit path); the rest
    of the forward is LlamaAttention's."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query, key, value = project(hidden_states, (self.q_proj, self.k_proj, self.v_proj))
        query_states = query.view(hidden_shape).transpose(1, 2)  # [batch, heads, seq, head_dim]
        key_states = key.view(hidden_shape).transpose(1, 2)  # [batch, kv heads, seq, head_dim]
        value_states = value.view(hidden_shape).transpose(1, 2)
        assert position_embeddings is not None, "the decoder layer passes the rotary embeddings"
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # [batch, seq, heads * head_dim]
        return self.o_proj(attn_output), attn_weights


class FusedProjectionMLP(LlamaMLP):
    """transformers' LlamaMLP with gate/up computed by `project`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, (self.gate_proj, self.up_proj))
        return self.down_proj(self.act_fn(gate) * up)


def fuse_projections(model: nn.Module) -> int:
    """Fuse q/k/v and gate/up of every attention / MLP block of `model` whose layers are prepared on the CPU 2-bit
    path (see FusedProjections.fuse); returns how many groups were fused. The blocks' classes become the fused
    forwards' (same modules, parameters and state dict), which fall back to per-layer calls when not fused."""
    fused = 0
    for module in model.modules():
        if isinstance(module, LlamaAttention):
            group = FusedProjections.fuse(module.q_proj, module.k_proj, module.v_proj)
            if group is not None and type(module) is LlamaAttention:
                module.__class__ = FusedProjectionAttention
        elif isinstance(module, LlamaMLP):
            group = FusedProjections.fuse(module.gate_proj, module.up_proj)
            if group is not None and type(module) is LlamaMLP:
                module.__class__ = FusedProjectionMLP
        else:
            continue
        fused += group is not None
    return fused
