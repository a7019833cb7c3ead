"""Sibling ternary layers that read the same input - q/k/v of an attention block, gate/up of an MLP - computed by one
2-bit operator call on CPU (`ternary_kernels.ternary_matmul_2bit_fused`), which returns every member's output at
once; and a whole decoder block whose projections are all on that path, computed by two operator calls around the
attention (`FusedDecoderLayer`: RMSNorm, q/k/v and the rotary embedding in one; o_proj, the residual, RMSNorm,
gate/up, SiLU, down and the residual in the other) instead of ~60 torch ops and a dozen module calls: in eager
decoding that Python and dispatch time was most of a small model's step. The same in eager mode and inside a
torch.compile graph, and nothing is held between two calls: concurrent forwards of one model from several threads
each get their own outputs.

`fuse_projections(model)` stacks each group's 2-bit rows once (the members' kernels become views of the stack: no
memory is added) and gives the attention, MLP and decoder blocks the forwards below; blocks whose projections are
not one 2-bit group (latent layers, other paths, LoRA-wrapped layers, gradients needed) call their layers one by
one, exactly as transformers' Llama blocks do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple, cast

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import SiLUActivation
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.models.llama.modeling_llama import (
    ALL_ATTENTION_FUNCTIONS,
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaRMSNorm,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from . import ternary_kernels
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
        TernaryLinear.note_state_change()

    @classmethod
    def fuse(cls, *modules: nn.Module) -> FusedProjections | None:
        """Fuse `modules` if all are ternary layers prepared on the CPU 2-bit path with per-row scales only and the
        same input width (q/k/v and gate/up of a packed TriLM are); None, changing nothing, otherwise (adapters such
        as LoRA wrap the layers: those compute per layer)."""
        layers = tuple(module for module in modules if isinstance(module, TernaryLinear))
        fusable = len(layers) == len(modules) and all(
            layer.runs_cpu_2bit
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
        TernaryLinear.note_state_change()


def project(x: torch.Tensor, layers: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    """Every layer of `layers` applied to x: one fused call where they are exactly one FusedProjections group and no
    gradient is needed, else one call per layer."""
    group = getattr(layers[0], "_fused", None)
    if (
        group is not None
        and len(group.layers) == len(layers)
        and all(a is b for a, b in zip(group.layers, layers, strict=True))
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not any(_runs_hooks(layer) for layer in layers)
    ):
        return group(x)
    return [layer(x) for layer in layers]


def attend(
    attention: LlamaAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache,
    kwargs: dict,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LlamaAttention's attention itself: rotated q, k and v [batch, seq, heads * head_dim] -> the attention output
    [batch, seq, heads * head_dim] (before o_proj) and the weights where the attention function returns them. The
    KV cache is updated as LlamaAttention updates it. A decode step under sdpa (one token per sequence, no mask or a
    boolean one: padding, a static cache's unwritten slots) is the C++ `decode_attention`, sdpa's result in one call
    (fp32 softmax and sums, one rounding; ~10 us instead of ~70 us of sdpa and its wrapper at 99M's shape)."""
    input_shape = query.shape[:-1]
    hidden_shape = (*input_shape, -1, attention.head_dim)
    key_states = key.view(hidden_shape).transpose(1, 2)  # [batch, kv heads, seq, head_dim]
    value_states = value.view(hidden_shape).transpose(1, 2)
    if cache is not None:
        key_states, value_states = cache.update(key_states, value_states, attention.layer_idx, kwargs=kwargs)
    kernel = ternary_kernels.forward_kernel
    if (
        kernel is not None
        and input_shape[-1] == 1
        and (attention_mask is None or _is_decode_mask(attention_mask, key_states.shape[0], key_states.shape[2]))
        and query.device.type == "cpu"
        and query.dtype == key_states.dtype == value_states.dtype
        and key_states.stride(-1) == value_states.stride(-1) == 1
        and not (torch.is_grad_enabled() and (query.requires_grad or key_states.requires_grad))
        and attention.config._attn_implementation == "sdpa"
    ):
        # a decode step: sdpa's result in one C++ call, fp32 softmax as sdpa's
        return kernel.decode_attention(
            query.contiguous(), key_states, value_states, attention_mask, attention.scaling
        ), None
    query_states = query.view(hidden_shape).transpose(1, 2)  # [batch, heads, seq, head_dim]
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        attention.config._attn_implementation, eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        attention,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=0.0 if not attention.training else attention.attention_dropout,
        scaling=attention.scaling,
        **kwargs,
    )
    return attn_output.reshape(*input_shape, -1).contiguous(), attn_weights  # [batch, seq, heads * head_dim]


def _is_decode_mask(mask: torch.Tensor, batch: int, tokens: int) -> bool:
    """Whether `mask` is transformers' boolean sdpa mask of one query token per sequence over `tokens` keys,
    [batch or 1, 1, 1, tokens] (what `decode_attention` takes)."""
    return (
        mask.dtype == torch.bool
        and mask.dim() == 4
        and mask.shape[1] == mask.shape[2] == 1
        and mask.shape[3] == tokens
        and mask.shape[0] in (1, batch)
    )


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
        query, key, value = project(hidden_states, (self.q_proj, self.k_proj, self.v_proj))
        assert position_embeddings is not None, "the decoder layer passes the rotary embeddings"
        cos, sin = position_embeddings
        # (rotated in the [batch, seq, heads, head_dim] layout: the head axis is where apply_rotary_pos_emb broadcasts)
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query, key = apply_rotary_pos_emb(query.view(hidden_shape), key.view(hidden_shape), cos, sin, unsqueeze_dim=2)
        attn_output, attn_weights = attend(
            self, query.flatten(-2), key.flatten(-2), value, attention_mask, cache, kwargs
        )
        return self.o_proj(attn_output), attn_weights


class FusedProjectionMLP(LlamaMLP):
    """transformers' LlamaMLP with gate/up computed by `project`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, (self.gate_proj, self.up_proj))
        return self.down_proj(self.act_fn(gate) * up)


try:  # transformers' record of what the running forward collects (output_attentions, ...), where it has one
    from transformers.utils import output_capturing
except ImportError:  # another transformers: every hook counts
    output_capturing = None  # type: ignore[assignment]
_active_collector = getattr(output_capturing, "_active_collector", None)


def _runs_hooks(module: nn.Module) -> bool:
    """Whether calling `module` would run hooks of its own (transformers' output-capturing hooks count only while
    a forward collects some output: they stay installed after an `output_attentions=True` call)."""
    if module._forward_pre_hooks:
        return True
    if not module._forward_hooks:
        return False
    # (an empty dict while a forward collects nothing)
    collecting = _active_collector is None or bool(_active_collector.get())
    return any(
        getattr(hook, "__name__", "") != "output_capturing_hook" or collecting
        for hook in module._forward_hooks.values()
    )


def _block_modules(layer: LlamaDecoderLayer) -> tuple[nn.Module, ...]:
    """The modules the two-call block stands in for: attention, MLP, the two norms, the MLP's activation, q, k, v, o,
    gate, up, down (read from the module dicts: nn.Module's attribute lookup costs a microsecond each, per layer and
    step)."""
    attention, mlp = layer._modules["self_attn"], layer._modules["mlp"]
    assert attention is not None and mlp is not None, "a decoder layer has both"
    projections, mlp_layers = attention._modules, mlp._modules
    modules = (
        attention, mlp, layer._modules["input_layernorm"], layer._modules["post_attention_layernorm"],
        mlp_layers.get("act_fn"),  # (None where the activation is not a module: not a two-call block)
        projections["q_proj"], projections["k_proj"], projections["v_proj"], projections["o_proj"],
        mlp_layers["gate_proj"], mlp_layers["up_proj"], mlp_layers["down_proj"],
    )  # fmt: skip
    return cast("tuple[nn.Module, ...]", modules)


def _two_call_parts(
    attention: nn.Module, mlp: nn.Module, input_norm: nn.Module, post_norm: nn.Module, act_fn: nn.Module | None
) -> bool:
    """Whether a decoder block's parts are the ones the two-call block computes in C++: the fused-projection
    attention and MLP, transformers' own RMSNorm and SiLU (a part replaced after fusing - another norm, activation
    or attention class - sends the block back to the per-module forward)."""
    return (
        type(attention) is FusedProjectionAttention
        and type(mlp) is FusedProjectionMLP
        and type(input_norm) is LlamaRMSNorm
        and type(post_norm) is LlamaRMSNorm
        and isinstance(act_fn, (nn.SiLU, SiLUActivation))
    )


class _BlockOperands(NamedTuple):
    """A two-call block's tensors in the order decode_layers takes them (its DECODE_BLOCK_TENSORS), read from the
    modules on every call (a parameter or buffer assigned anew is used at once) plus the norms' epsilons."""

    input_norm: torch.Tensor
    qkv: torch.Tensor  # the q/k/v group's stacked 2-bit rows
    qkv_row_scale: torch.Tensor
    o: torch.Tensor
    o_row_scale: torch.Tensor
    o_col_scale: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # the gate/up group's stacked 2-bit rows
    gate_up_row_scale: torch.Tensor
    down: torch.Tensor
    down_row_scale: torch.Tensor
    down_col_scale: torch.Tensor | None
    input_eps: float
    post_eps: float


def _block_operands(plan: _BlockPlan) -> _BlockOperands:
    """The operands of a block whose plan has groups (read from the module dicts: no module lookups per step)."""
    _, _, input_norm, post_norm, _, *_, o_proj, _, _, down_proj = plan.modules
    attention_group, mlp_group = cast("tuple[FusedProjections, FusedProjections]", plan.groups)
    o_buffers, down_buffers = o_proj._buffers, down_proj._buffers
    return _BlockOperands(
        cast(torch.Tensor, input_norm._parameters["weight"]), attention_group.kernel, attention_group.row_scale,
        cast(torch.Tensor, o_buffers["weight_kernel"]), cast(torch.Tensor, o_buffers["kernel_scale"]),
        o_buffers["input_scale"], cast(torch.Tensor, post_norm._parameters["weight"]), mlp_group.kernel,
        mlp_group.row_scale, cast(torch.Tensor, down_buffers["weight_kernel"]),
        cast(torch.Tensor, down_buffers["kernel_scale"]), down_buffers["input_scale"],
        cast(float, input_norm.variance_epsilon), cast(float, post_norm.variance_epsilon),
    )  # fmt: skip


class FusedDecoderLayer(LlamaDecoderLayer):
    """transformers' LlamaDecoderLayer whose forward, for a block whose q/k/v and gate/up are fused 2-bit groups and
    whose o_proj and down_proj are 2-bit CPU layers, runs the block in two C++ operator calls around the attention
    (`ternary_kernels`' `attention_inputs` and `attention_output_and_mlp`: the per-module forward's steps, rounded
    to the hidden states' dtype where it rounds; the RMSNorm's mean and SiLU's exp are evaluated in another order
    than torch's vectorized loops, so an element can differ in its last bit). The KV cache and the attention function
    stay transformers' (`attend`), except a one-token sdpa step, which is one C++ call. Anything else -
    gradients, hooks on the block's modules, a dissolved group, mixed dtypes - runs LlamaDecoderLayer's forward."""

    _plan: _BlockPlan | None = None  # (the class is assigned to transformers' layers: no __init__ of ours runs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        steps = self._block_steps(hidden_states, position_embeddings)
        if steps is None:
            return super().forward(
                hidden_states, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                use_cache=use_cache, position_embeddings=position_embeddings, **kwargs,
            )
        kernel, plan = steps
        attention = cast(LlamaAttention, plan.modules[0])
        attention_group, mlp_group = cast("tuple[FusedProjections, FusedProjections]", plan.groups)
        block = _block_operands(plan)
        bits = attention_group.layers[0].activation_bits
        assert position_embeddings is not None, "_block_steps checked them"
        cos, sin = position_embeddings
        query, key, value = kernel.attention_inputs(
            hidden_states, block.input_norm, block.input_eps, block.qkv, block.qkv_row_scale, attention_group.outs,
            cos, sin, attention.head_dim, bits,
        )
        attn_output, _ = attend(attention, query, key, value, attention_mask, cache, kwargs)
        return kernel.attention_output_and_mlp(
            attn_output, hidden_states, block.o, block.o_row_scale, block.o_col_scale, block.post_norm,
            block.post_eps, block.gate_up, block.gate_up_row_scale, mlp_group.outs, block.down, block.down_row_scale,
            block.down_col_scale, bits,
        )

    def _make_plan(self, modules: tuple[nn.Module, ...]) -> _BlockPlan:
        """What the block's structure allows, settled once per `TernaryLinear.state_epoch` and set of modules."""
        q, k, v, o, gate, up, down = modules[5:]
        attention_group, mlp_group = getattr(q, "_fused", None), getattr(gate, "_fused", None)
        layers = (q, k, v, o, gate, up, down)
        fits = (
            _two_call_parts(*modules[:5])
            and attention_group is not None
            and mlp_group is not None
            and attention_group.layers == (q, k, v)
            and mlp_group.layers == (gate, up)
            and all(type(layer) is TernaryLinear and layer.runs_cpu_2bit for layer in layers)
            and len({cast(TernaryLinear, layer).activation_bits for layer in layers}) == 1
        )
        groups = (attention_group, mlp_group) if fits else None
        return _BlockPlan(TernaryLinear.state_epoch, modules, cast("tuple[FusedProjections, FusedProjections]", groups))

    def _block_steps(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[ternary_kernels.CpuKernel, _BlockPlan] | None:
        """(kernel, the block's plan) where the two-call block applies to this call, else None. What
        depends on the modules' structure is checked once (`_make_plan`) and again only when a ternary layer's
        inference state or one of the block's modules changes; the rest is checked per call."""
        kernel = ternary_kernels.forward_kernel
        if kernel is None or position_embeddings is None:
            return None
        modules = _block_modules(self)
        plan = self._plan
        if plan is None or plan.epoch != TernaryLinear.state_epoch or plan.modules != modules:
            plan = self._plan = self._make_plan(modules)
        if plan.groups is None:
            return None
        attention, _, input_norm, post_norm = modules[:4]
        dtype = hidden_states.dtype
        applies = (
            hidden_states.device.type == "cpu"
            and hidden_states.dim() == 3
            and not (torch.is_grad_enabled() and hidden_states.requires_grad)
            and not attention.training
            and dtype in (torch.float32, torch.bfloat16, torch.float16)
            and position_embeddings[0].dtype == dtype
            and cast(torch.Tensor, input_norm._parameters["weight"]).dtype == dtype
            and cast(torch.Tensor, post_norm._parameters["weight"]).dtype == dtype
            and not any(_runs_hooks(module) for module in modules)
        )
        return (kernel, plan) if applies else None


def decode_all_layers(
    layers: Iterable[nn.Module],
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    cache: object,
) -> torch.Tensor | None:
    """A decode step (hidden_states [batch, 1, hidden]) through every layer in one C++ call (`decode_layers`), where
    each layer is a two-call block with no hook of its own or on its modules, the attention is sdpa, no global module
    hook is registered and `cache` is transformers' DynamicCache holding every layer's keys and values: the hidden
    states after the last layer, the cache updated as the layers' own forwards update it (each layer's keys and values
    grown by this token). None, with nothing computed or changed, where any of that does not hold. What depends on
    the layers' structure is settled once per `TernaryLinear.state_epoch` and set of modules (`_StackPlan`, kept on
    the first layer); the blocks' tensors are read from their modules on every step (`_block_operands`)."""
    if (
        type(cache) is not DynamicCache
        or cache.offloading
        or nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        or hidden_states.dim() != 3
        or hidden_states.shape[1] != 1
        or hidden_states.device.type != "cpu"
        or (torch.is_grad_enabled() and hidden_states.requires_grad)
    ):
        return None
    kernel = ternary_kernels.forward_kernel
    if kernel is None:
        return None
    layers = tuple(layers)
    plan = _stack_plan(layers)
    dtype = hidden_states.dtype
    if plan is None or position_embeddings[0].dtype != dtype or plan.config._attn_implementation != "sdpa":
        return None
    for module in plan.modules:
        if (module._forward_hooks or module._forward_pre_hooks) and _runs_hooks(module):
            return None
    blocks: list[torch.Tensor | None] = []
    eps: list[float] = []
    for block_plan in plan.block_plans:
        operands = _block_operands(block_plan)
        if operands.input_norm.dtype != dtype or operands.post_norm.dtype != dtype:
            return None  # (the blocks round to the hidden states' dtype, as the norms would)
        blocks += operands[:-2]  # (the tensors; the last two are the epsilons)
        eps += [operands.input_eps, operands.post_eps]
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    cache_layers: list[DynamicLayer] = []
    batch = hidden_states.shape[0]
    tokens = 0  # the keys after this step's
    cached = cache.layers
    for layer_idx, attention in zip(plan.layer_indices, plan.attentions, strict=True):
        cache_layer = cached[layer_idx] if layer_idx < len(cached) else None
        if attention.training or type(cache_layer) is not DynamicLayer or not cache_layer.is_initialized:
            return None
        layer_keys, layer_values = cache_layer.keys, cache_layer.values
        if not isinstance(layer_keys, torch.Tensor) or not isinstance(layer_values, torch.Tensor):
            return None
        shape = layer_keys.shape  # [batch, kv heads, tokens, head_dim]
        if (
            len(shape) != 4
            or shape[0] != batch
            or layer_keys.dtype != dtype
            or layer_values.dtype != dtype
            or (tokens and shape[2] + 1 != tokens)
        ):
            return None
        tokens = shape[2] + 1
        keys.append(layer_keys)
        values.append(layer_values)
        cache_layers.append(cache_layer)
    if attention_mask is not None and not _is_decode_mask(attention_mask, batch, tokens):
        return None
    cos, sin = position_embeddings
    grown_keys, grown_values = [with_token_slot(k) for k in keys], [with_token_slot(v) for v in values]
    hidden = kernel.decode_layers(
        hidden_states, blocks, grown_keys, grown_values, cos, sin, attention_mask, eps, plan.qkv_outs,
        plan.gate_up_outs, plan.head_dim, plan.scaling, plan.activation_bits,
    )  # fmt: skip
    for cache_layer, layer_keys, layer_values in zip(cache_layers, grown_keys, grown_values, strict=True):
        cache_layer.keys, cache_layer.values = layer_keys, layer_values
    return hidden


_token_slot_lock = threading.Lock()
BUFFER = "_spectra_token_buffer"  # (a cache view's attribute: the buffer it shows the first tokens of)
SHOWN = "_spectra_tokens_shown"  # (a buffer's attribute: how many tokens the last view handed out of it shows)


def with_token_slot(cached: torch.Tensor) -> torch.Tensor:
    """`cached` [batch, kv heads, tokens, head_dim] followed by one more token slot (its contents unset, for the decode
    step to write): a view of a buffer with room for tokens / 2 + 16 more, so that decode steps write their keys and
    values in place instead of copying the cache each step as transformers' DynamicLayer.update does by concatenation
    (a fresh [batch, kv heads, tokens + 1, head_dim] allocation and copy per layer per step: 0.7 ms of a 10 ms 390M
    step). The slot is taken in place only where `cached` is the last view this function handed out of its buffer
    (the buffer is found through the view's own attribute: inference mode keeps no `_base`): every other view of it
    ends at or before `cached`'s end, so no tensor shows the slot. Otherwise (a first step, a cropped, reordered or
    copied cache, a full buffer, a view handed out twice) the cache is copied into a new buffer."""
    buffer, tokens = cached.__dict__.get(BUFFER), cached.shape[2]
    if buffer is not None and tokens < buffer.shape[2]:
        with _token_slot_lock:  # (two threads stepping caches that share a buffer: one of them copies)
            if (
                buffer.__dict__.get(SHOWN) == tokens
                and cached.data_ptr() == buffer.data_ptr()
                and cached.stride() == buffer.stride()
                and cached.shape[:2] == buffer.shape[:2]
                and cached.shape[3] == buffer.shape[3]
            ):
                buffer.__dict__[SHOWN] = tokens + 1
                return _first_tokens(buffer, tokens + 1)
    batch, heads, _, head_dim = cached.shape
    buffer = cached.new_empty((batch, heads, tokens + tokens // 2 + 16, head_dim))
    buffer[:, :, :tokens] = cached
    buffer.__dict__[SHOWN] = tokens + 1
    return _first_tokens(buffer, tokens + 1)


def _first_tokens(buffer: torch.Tensor, tokens: int) -> torch.Tensor:
    view = buffer[:, :, :tokens]  # [batch, kv heads, tokens, head_dim]
    view.__dict__[BUFFER] = buffer
    return view


class _StackPlan(NamedTuple):
    epoch: int  # TernaryLinear.state_epoch when it was made
    layers: tuple[nn.Module, ...]
    block_modules: tuple[tuple[nn.Module, ...], ...]  # _block_modules(layer) per layer when it was made
    modules: tuple[nn.Module, ...]  # the layers and their block modules (whose hooks send the step to the layers)
    attentions: tuple[LlamaAttention, ...]
    layer_indices: tuple[int, ...]  # each attention's layer_idx: its slot in the cache
    config: PretrainedConfig  # the attentions' (one) config
    block_plans: tuple[_BlockPlan, ...]  # each layer's, with groups (its tensors are read per step from them)
    qkv_outs: list[int]
    gate_up_outs: list[int]
    head_dim: int
    scaling: float
    activation_bits: int


def _stack_plan(layers: tuple[nn.Module, ...]) -> _StackPlan | None:
    """The cached `_StackPlan` of `layers` while it is valid (same epoch, layers and block modules), else a new one
    (None where some layer is not a two-call block or the layers do not share one shape)."""
    holder = layers[0] if layers else None
    plan = cast("_StackPlan | None", getattr(holder, "_stack_plan", None))
    block_modules = tuple(_block_modules(cast(LlamaDecoderLayer, layer)) for layer in layers)
    if (
        plan is not None
        and plan.epoch == TernaryLinear.state_epoch
        and plan.layers == layers
        and plan.block_modules == block_modules
    ):
        return plan
    plan = _make_stack_plan(layers, block_modules)
    if holder is not None:
        holder.__dict__["_stack_plan"] = plan  # (on the first layer: a plain attribute, not a submodule)
    return plan


def _make_stack_plan(
    layers: tuple[nn.Module, ...], block_modules: tuple[tuple[nn.Module, ...], ...]
) -> _StackPlan | None:
    if not layers:
        return None
    block_plans = []
    shapes = set()
    for layer, modules in zip(layers, block_modules, strict=True):
        if type(layer) is not FusedDecoderLayer:
            return None
        block_plan = layer._make_plan(modules)
        if block_plan.groups is None:
            return None
        attention = cast(LlamaAttention, modules[0])
        attention_group, mlp_group = block_plan.groups
        shapes.add((
            attention.head_dim, attention.scaling, id(attention.config), tuple(attention_group.outs),
            tuple(mlp_group.outs), attention_group.layers[0].activation_bits,
        ))  # fmt: skip
        block_plans.append(block_plan)
    if len(shapes) != 1:
        return None
    head_dim, scaling, _, qkv_outs, gate_up_outs, bits = shapes.pop()
    attentions = tuple(cast(LlamaAttention, modules[0]) for modules in block_modules)
    return _StackPlan(
        epoch=TernaryLinear.state_epoch,
        layers=layers,
        block_modules=block_modules,
        modules=tuple(m for layer, modules in zip(layers, block_modules, strict=True) for m in (layer, *modules)),
        attentions=attentions,
        layer_indices=tuple(attention.layer_idx for attention in attentions),
        config=attentions[0].config,
        block_plans=tuple(block_plans),
        qkv_outs=list(qkv_outs),
        gate_up_outs=list(gate_up_outs),
        head_dim=head_dim,
        scaling=scaling,
        activation_bits=bits,
    )


class _BlockPlan(NamedTuple):
    epoch: int  # TernaryLinear.state_epoch when it was made
    modules: tuple[nn.Module, ...]  # _block_modules(layer) when it was made
    groups: tuple[FusedProjections, FusedProjections] | None  # q/k/v and gate/up groups; None: the block cannot


# Up to how many tokens the LM head takes the C++ GEMV (`dense_mm`) rather than torch's matmul, per dtype (measured
# with a 50304 x 1792 head, 2 threads, AVX2: bf16 1 token 9.0 vs 10.6 ms, 16 tokens 56 vs 145 ms - torch's bf16
# matmul has no blocked kernel without native bf16 instructions; fp32, where torch's GEMM is blocked, 1 token 13.6
# vs 20.1 ms).
DENSE_MM_MAX_TOKENS = {torch.bfloat16: 16, torch.float16: 16, torch.float32: 4}


class CpuDecodeHead(nn.Linear):
    """An LM head (`nn.Linear`, no bias) whose forward, for a few tokens on CPU without gradients, is the C++
    operator library's `dense_mm`: a GEMV that reads each row of the weight once for all tokens, fp32 accumulation,
    one rounding per logit as torch's matmul (the logits can differ from it in the last bit: another summation
    order). Anything else is `nn.Linear`'s forward. Same parameters and state dict (a tied head stays tied)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = ternary_kernels.forward_kernel
        weight = self.weight
        if (
            kernel is not None
            and self.bias is None
            and x.device.type == "cpu"
            and weight.device.type == "cpu"
            and x.dtype == weight.dtype
            and x.numel() <= DENSE_MM_MAX_TOKENS.get(x.dtype, 0) * x.shape[-1]
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        ):
            return kernel.dense_mm(x, weight)
        return super().forward(x)


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
    for module in model.modules():
        if type(module) is LlamaDecoderLayer and _two_call_parts(*_block_modules(module)[:5]):
            module.__class__ = FusedDecoderLayer
    head = getattr(model, "lm_head", None)
    if fused and type(head) is nn.Linear:
        head.__class__ = CpuDecodeHead
    return fused
