"""TriLM's ternary linear layer (arXiv 2407.12327, section 2).

For a latent float weight W, split into `shards` scale shards:
    g_s = eps + mean(|W_s|)                        one absmean scale per shard s
    T   = round(clamp(W / g, -1, 1))               ternary digits in {-1, 0, +1}
    Y   = X (g * T)^T                              the effective weight is g * T
Backward is the straight-through estimator: dL/dW = dL/d(g * T).

Shards reproduce the original Megatron tensor-parallel layout: a column-parallel layer (q, k, v, gate, up) is split
into `shards` contiguous blocks of output rows (`shard_dim=0`), a row-parallel layer (o, down) into contiguous
blocks of input columns (`shard_dim=1`). Layers built from one fused matrix (q, k, v) can share their scales:
`share_scales(q, k, v)` makes each shard's scale the absmean over the three matrices' rows of that shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

from .packing import pack_ternary, packed_size, unpack_ternary
from .ternary_kernels import (
    cpu_kernel,
    pack_2bit,
    release_pages,
    ternary_matmul_2bit,
    triton_available,
    unpack_2bit,
)

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

    from .ternary_fusion import FusedProjections

logger = logging.get_logger(__name__)

# Ways a packed layer multiplies (see `TernaryLinear.prepare_inference`); "auto" picks one per device.
INFERENCE_PATHS = ("dense", "int8", "int4", "2bit")
# Buffers whose dtype is the kernel's own: dtype casts of the model (.half(), .to(torch.float32)) leave them as they
# are and only move them between devices (see `TernaryLinear._apply`).
_KERNEL_BUFFERS = ("weight_scale", "kernel_scale", "input_scale")
MERGE_REFUSAL = (
    "{name} is a packed ternary layer: it holds no float weight that an adapter could be merged into (a merged "
    "weight g*T + s*B*A is not ternary, and the 1.6-bit checkpoint could not store it). Use "
    "spectra_hf.training.lora.merge_lora_to_float(peft_model) for an exact dense FloatLM, or keep the adapter "
    "unmerged (peft_model.save_pretrained saves the adapter alone)."
)
# The weight-only kernels run in bfloat16 (their fast CPU path); results are cast back to the input's dtype.
KERNEL_DTYPE = torch.bfloat16


def _shard_view(weight: torch.Tensor, shards: int, shard_dim: int) -> torch.Tensor:
    """View `weight` [out, in] as [shards, n] blocks (rows: contiguous; columns: gathered per block)."""
    out_features, in_features = weight.shape
    if shard_dim == 0:
        return weight.reshape(shards, (out_features // shards) * in_features)
    return weight.reshape(out_features, shards, in_features // shards).transpose(0, 1).reshape(shards, -1)


def _math_dtype(weight: torch.Tensor) -> torch.dtype:
    """Scales and ternarization run in float32, or float64 for a float64 weight."""
    return torch.promote_types(weight.dtype, torch.float32)


def shard_abs_sums(weight: torch.Tensor, shards: int, shard_dim: int) -> tuple[torch.Tensor, int]:
    """Per-shard sum of |W| (float32 or float64, shape [shards]) and the number of weights in each shard.

    Sums each row (shard_dim 0) or column (shard_dim 1) first, then the contiguous blocks of those sums. A weight
    sharded by tensor parallelism (a DTensor) then only replicates that [out] / [in] vector of partial sums across
    its ranks, whatever the TP degree, so every rank's scale is the absmean over the whole scale block.
    """
    per_index = weight.detach().abs().sum(dim=1 - shard_dim, dtype=_math_dtype(weight))
    if hasattr(per_index, "redistribute"):  # a DTensor
        mesh = cast("DTensor", per_index).device_mesh
        per_index = cast("DTensor", per_index).redistribute(mesh, [torch.distributed.tensor.Replicate()] * mesh.ndim)
    return per_index.reshape(shards, -1).sum(dim=1), weight.numel() // shards


def expand_scales(scales: torch.Tensor, shape: torch.Size, shard_dim: int) -> torch.Tensor:
    """Broadcastable per-weight scales: [out, 1] for row shards, [1, in] for column shards."""
    repeats = shape[shard_dim] // scales.numel()
    per_index = scales.repeat_interleave(repeats)
    return per_index[:, None] if shard_dim == 0 else per_index[None, :]


def ternary_digits(weight: torch.Tensor, scales: torch.Tensor, shard_dim: int) -> torch.Tensor:
    """T = round(clamp(W / g, -1, 1)) as int8, for the given per-shard scales."""
    scaled = weight.detach().to(_math_dtype(weight)) / expand_scales(scales, weight.shape, shard_dim)
    return scaled.clamp_(-1, 1).round_().to(torch.int8)


def effective_weight(
    weight: torch.Tensor, scales: torch.Tensor, shard_dim: int, dtype: torch.dtype
) -> torch.Tensor:
    """g * T in `dtype`: what the layer multiplies with."""
    per_weight = expand_scales(scales, weight.shape, shard_dim)
    return (weight.detach().to(_math_dtype(weight)) / per_weight).clamp_(-1, 1).round_().mul_(per_weight).to(dtype)


def recover_ternary(weight: torch.Tensor, shards: int, shard_dim: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a released weight `g_s * T` [out, in] into T (int8 [out, in]) and the scales (float32 [shards]).

    Each shard's scale is its largest |W| (not the absmean, which would be g times the nonzero fraction). Raises
    ValueError naming `name` if a shard holds more than one nonzero magnitude.
    """
    blocks = _shard_view(weight.detach(), shards, shard_dim).float()
    scales = blocks.abs().amax(dim=1)
    nonzero = blocks != 0
    off_scale = nonzero & (blocks.abs() != scales[:, None])
    if bool(off_scale.any()):
        shard = int(off_scale.any(dim=1).nonzero()[0])
        values = blocks[shard][nonzero[shard]].abs().unique()
        raise ValueError(
            f"{name} is not a ternary weight with {shards} scale shard(s) along dim {shard_dim}: shard {shard} holds "
            f"{values.numel()} distinct nonzero magnitudes (e.g. {values[:3].tolist()}), expected one. The checkpoint "
            "is not a TriLM release, or its pretraining_model_parallel does not match how it was trained."
        )
    return digits_of_dense(weight, scales, shard_dim), scales


def dense_of_digits(digits: torch.Tensor, scales: torch.Tensor, shard_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """g * T in `dtype` [out, in] from T (int8 [out, in]) and its per-shard scales."""
    return (digits.float() * expand_scales(scales.float(), digits.shape, shard_dim)).to(dtype)


def digits_of_dense(weight: torch.Tensor, scales: torch.Tensor, shard_dim: int) -> torch.Tensor:
    """T (int8) read back from a weight g * T and its per-shard scales (an all-zero shard's scale 0 divides by 1)."""
    scales = scales.float()
    safe = torch.where(scales == 0, torch.ones_like(scales), scales)
    return (weight.detach().float() / expand_scales(safe, weight.shape, shard_dim)).round_().to(torch.int8)


class _TernaryMatmul(torch.autograd.Function):
    """Y = X (g * T)^T with the straight-through gradient.

    Backward recomputes g * T from the latent weight instead of saving it, so training keeps no second
    full-size weight alive per layer: the saved tensors are the input and the (already resident) latent weight.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, shard_dim: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight, scales)
        ctx.shard_dim = shard_dim
        return F.linear(x, effective_weight(weight, scales, shard_dim, x.dtype))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, scales = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ effective_weight(weight, scales, ctx.shard_dim, grad_out.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
            grad_w = grad_w.to(weight.dtype)
        return grad_x, grad_w, None, None


class _WeightOnlyMatmul(torch.autograd.Function):
    """The int8 / int4 kernels with a gradient for the input (the kernels have none), so adapters such as LoRA
    train on top of a packed model. Backward rebuilds g * T in the gradient's dtype for the one product."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: TernaryLinear) -> torch.Tensor:
        ctx.layer = layer
        return layer._weight_only_matmul(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        layer: TernaryLinear = ctx.layer
        digits, scales = layer.ternary_weight()
        return grad_out @ dense_of_digits(digits, scales, layer.shard_dim, grad_out.dtype), None


class _TwoBitMatmul(torch.autograd.Function):
    """The 2-bit operator with a gradient for the input (LoRA on a packed model, or a forward in grad mode): only
    tensors cross it, so torch.compile traces it whole (fullgraph, grad mode on or off). Backward reads T back from
    the 2-bit rows for the one product: dX = ((dY * row_scale) T) * col_scale (exact, whatever the forward's
    activation_bits)."""

    @staticmethod
    def forward(ctx, x, packed, row_scale, col_scale, activation_bits):
        ctx.save_for_backward(packed, row_scale, col_scale)
        ctx.in_features = x.shape[-1]
        return ternary_matmul_2bit(x, packed, row_scale, col_scale, activation_bits)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        packed, row_scale, col_scale = ctx.saved_tensors
        digits = unpack_2bit(packed, ctx.in_features)  # int8 [out, in]
        grad_x = (grad_out.float() * row_scale) @ digits.float()
        if col_scale is not None:
            grad_x = grad_x * col_scale
        return grad_x.to(grad_out.dtype), None, None, None, None


class _PackedWeight(nn.Parameter):
    """What a prepared packed layer shows as `weight`: shape [out, in] in the compute dtype with one element of
    storage (a zero-stride view), so parameter counts (`num_parameters()`, peft's totals) count each ternary weight
    once and adapters take the layer's device and dtype, while the weights themselves live in `weight_kernel`.
    Its `.data` refuses with the way out: peft merges adapters by writing `weight.data`, which cannot hold g*T + s*B*A.
    """

    _is_hf_initialized: bool  # set by `_packed_weight`

    @property
    def data(self):
        raise RuntimeError(MERGE_REFUSAL.format(name=f"this {tuple(self.shape)} ternary weight"))

    @data.setter
    def data(self, value):
        raise RuntimeError(MERGE_REFUSAL.format(name=f"this {tuple(self.shape)} ternary weight"))

    def __deepcopy__(self, memo):
        return _packed_weight(self.shape, self.dtype, self.device)

    def __reduce_ex__(self, protocol):
        return _packed_weight, (self.shape, self.dtype, self.device)


def _packed_weight(shape: torch.Size | tuple[int, int], dtype: torch.dtype, device: torch.device) -> _PackedWeight:
    weight = _PackedWeight(torch.zeros((), dtype=dtype, device=device).expand(*shape), requires_grad=False)
    weight._is_hf_initialized = True  # transformers' weight init must not write into it
    return weight


class TernaryLinear(nn.Linear):
    """A linear layer whose weight is ternarized on the fly: `Y = X (g * T)^T` (see the module docstring).

    A subclass of `nn.Linear`, so peft, tensor-parallel plans and weight-init code see a Linear. `ternary_weight()`
    returns (T, scales) in both storage modes:

    - latent (default, training): `weight` is the latent float weight [out, in] that the optimizer updates.
    - packed (`packed=True`, inference): the layer never holds latent weights (`weight` is None; reading it
      raises an AttributeError that points to `merge_lora_to_float`, so peft's merge stops before changing anything).
      Its state dict is `weight_packed` (uint8, 5 digits per byte, see `packing.py`) and `weight_scale` (float32
      [shards]). `prepare_inference(path)` (run by `from_pretrained`, or by the first forward) replaces the packed
      bytes with one resident form in the buffer `weight_kernel`, and the state dict is packed again from it on save:
        "dense": g * T in the compute dtype [out, in]; plain `F.linear` (fastest on GPUs).
        "int8":  T as int8 [out, in]; `torch._weight_int8pack_mm` in bfloat16 with the per-row scales as its
                 scales and per-column scales (o, down) folded into the input.
        "int4":  T in torch's int4 weight-only layout (4 bits per weight; CPU); `torch._weight_int4pack_mm_for_cpu`
                 in bfloat16, scales folded the same way.
        "2bit":  T at 2 bits per weight (`ternary_kernels.pack_2bit`), read directly by a C++ torch operator on CPU or a
                 Triton kernel on CUDA, fp32 accumulation, float32 row scales, column scales folded into the input.
      Dtype casts (`.half()`, `.float()`, `.to(dtype)`) keep the kernel buffers in their own dtype; device moves
      re-plan the path on the new device at the next forward.

    Args:
        shards: number of scale shards (the original run's model-parallel degree, `pretraining_model_parallel`).
        shard_dim: 0 to shard output rows (column-parallel layers), 1 to shard input columns (row-parallel).
        eps: added to each absmean scale (1e-5 in the paper).
        packed: hold packed ternary digits and scales instead of a latent weight (no bias).
    """

    # Buffers of a packed layer (registered in __init__; None where the current form does not use them).
    weight_packed: torch.Tensor | None
    weight_scale: torch.Tensor
    weight_kernel: torch.Tensor | None
    kernel_scale: torch.Tensor | None
    input_scale: torch.Tensor | None
    # Counts changes of any layer's inference state (path, device, activation bits, fused group): code that settles
    # facts about prepared layers once (ternary_fusion.FusedDecoderLayer's block plan) re-checks them when it moves.
    state_epoch: ClassVar[int] = 0

    @staticmethod
    def note_state_change() -> None:
        TernaryLinear.state_epoch += 1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        shards: int = 1,
        shard_dim: int = 0,
        eps: float = 1e-5,
        packed: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if shard_dim not in (0, 1):
            raise ValueError(f"shard_dim must be 0 (output rows) or 1 (input columns), got {shard_dim}")
        sharded = (out_features, in_features)[shard_dim]
        if shards < 1 or sharded % shards:
            raise ValueError(
                f"{shards} scale shards do not divide the sharded dimension ({sharded}) of a "
                f"{out_features}x{in_features} ternary layer: pretraining_model_parallel must divide it"
            )
        if packed and bias:
            raise ValueError("a packed ternary layer has no bias (TriLM uses none)")
        # A packed layer's latent weight is never materialized: build it on the meta device, then drop it.
        super().__init__(in_features, out_features, bias=bias, device="meta" if packed else device, dtype=dtype)
        self.shards = shards
        self.shard_dim = shard_dim
        self.eps = eps
        self.packed = packed
        self.inference_path: str | None = None
        # 8: the 2bit CPU operator's opt-in int8 activations (`set_int8_activations`); 16: its exact route
        self.activation_bits = 16
        self._scale_group: tuple[TernaryLinear, ...] = (self,)
        self._fused: FusedProjections | None = None  # the group of ternary_fusion.py this layer belongs to, if any
        if packed:
            self.register_parameter("weight", None)  # what `self.weight = None` does; nn.Linear types weight as Tensor
            numel = in_features * out_features
            self.register_buffer("weight_packed", torch.empty(packed_size(numel), dtype=torch.uint8, device=device))
            self.register_buffer("weight_scale", torch.empty(shards, dtype=torch.float32, device=device))
            self.register_buffer("weight_kernel", None, persistent=False)
            self.register_buffer("kernel_scale", None, persistent=False)
            self.register_buffer("input_scale", None, persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, shards: int, shard_dim: int, eps: float) -> TernaryLinear:
        """Wrap an existing `nn.Linear`, reusing its parameters (no copy, no re-initialization)."""
        layer = cls(
            linear.in_features, linear.out_features, bias=False, shards=shards, shard_dim=shard_dim, eps=eps,
            device="meta",
        )
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    @classmethod
    def from_ternary(cls, digits: torch.Tensor, scales: torch.Tensor, *, shard_dim: int, eps: float) -> TernaryLinear:
        """A packed layer from T (int8 [out, in]) and its per-shard scales ([shards])."""
        out_features, in_features = digits.shape
        layer = cls(
            in_features, out_features, shards=scales.numel(), shard_dim=shard_dim, eps=eps, packed=True,
            device=digits.device,
        )
        layer.weight_packed = pack_ternary(digits)
        layer.weight_scale = scales.detach().to(torch.float32)
        return layer

    def scales(self) -> torch.Tensor:
        """Per-shard scales g (float32, or float64 for float64 weights; shape [shards]), shared by the scale group."""
        total: torch.Tensor | None = None
        count = 0
        for member in self._scale_group:
            sums, n = shard_abs_sums(member.weight, member.shards, member.shard_dim)
            total = sums if total is None else total + sums
            count += n
        assert total is not None, "a scale group holds at least the layer itself"
        return total / count + self.eps

    def ternary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(T as int8 [out, in], scales [shards])."""
        if self.packed:
            return self._packed_digits(), self.weight_scale
        scales = self.scales()
        return ternary_digits(self.weight, scales, self.shard_dim), scales

    def _packed_digits(self) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        kernel = self.weight_kernel
        if self.inference_path is None:
            assert self.weight_packed is not None, "an unprepared packed layer holds its packed bytes"
            return unpack_ternary(self.weight_packed, shape)
        assert kernel is not None, "a prepared layer holds its kernel's weights"
        if self.inference_path == "int8":
            return kernel.detach().clone()
        if self.inference_path == "dense":
            return digits_of_dense(kernel, self.weight_scale, self.shard_dim)
        if self.inference_path == "2bit":
            return unpack_2bit(kernel, self.in_features)
        # int4: the packed layout is the kernel's own; multiplying the identity by unit scales reads T back exactly.
        assert self.kernel_scale is not None, "the int4 path keeps its kernel scales"
        unit = torch.zeros_like(self.kernel_scale)
        unit[..., 0] = 1
        eye = torch.eye(self.in_features, dtype=unit.dtype, device=unit.device)
        group = self.in_features // unit.shape[0]
        return torch._weight_int4pack_mm_for_cpu(eye, kernel, group, unit).t().to(torch.int8)

    @torch.no_grad()
    def prepare_inference(self, path: str, dtype: torch.dtype) -> None:
        """Make `path` (one of INFERENCE_PATHS, see the class docstring) resident; `dtype` is the "dense" dtype."""
        if not self.packed:
            raise ValueError(
                "prepare_inference needs a packed ternary layer: load a packed checkpoint or pack it first"
            )
        if self._fused is not None:
            self._fused.dissolve()
        if path not in INFERENCE_PATHS:
            raise ValueError(f"unknown ternary inference path {path!r}: choose one of {INFERENCE_PATHS} or 'auto'")
        digits, scales = self.ternary_weight()
        shape = digits.shape
        if path == "dense":
            weight = dense_of_digits(digits, scales, self.shard_dim, dtype)
            kernel_scale = input_scale = None
        else:
            row = expand_scales(scales.float(), shape, 0).reshape(-1) if self.shard_dim == 0 else None
            input_scale = expand_scales(scales.float(), shape, 1).reshape(-1) if self.shard_dim == 1 else None
            row = torch.ones(shape[0], device=digits.device) if row is None else row
            if path == "2bit":
                unavailable = _2bit_unavailable(digits.device)
                if unavailable:
                    raise ValueError(f"the 2bit path cannot run here: {unavailable}; use ternary_inference='auto'")
                weight, kernel_scale = pack_2bit(digits), row.float().contiguous()
                input_scale = None if input_scale is None else input_scale.contiguous()
            elif path == "int8":
                # (T read back from the int4 layout is a transposed view; the kernel needs it contiguous)
                weight, kernel_scale = digits.contiguous(), row.to(KERNEL_DTYPE)
            else:
                group = next((g for g in (256, 128, 64, 32) if shape[1] % g == 0), None)
                if group is None or digits.device.type != "cpu":
                    raise ValueError(
                        f"the int4 path needs a CPU layer whose in_features is a multiple of 32, got {shape[1]} on "
                        f"{digits.device.type}: use ternary_inference='int8' or 'dense'"
                    )
                weight = torch._convert_weight_to_int4pack_for_cpu(digits.to(torch.int32) + 8, 1)
                kernel_scale = torch.zeros(shape[1] // group, shape[0], 2, dtype=KERNEL_DTYPE, device=digits.device)
                kernel_scale[..., 0] = row
        if self.weight_packed is not None:
            release_pages(self.weight_packed)  # (read once for the resident form; see release_pages)
        self.weight_packed = None
        self.weight_kernel = weight
        self.kernel_scale, self.input_scale = kernel_scale, input_scale
        self.inference_path = path
        TernaryLinear.note_state_change()
        self.weight = _packed_weight(shape, dtype if dtype.is_floating_point else torch.float32, digits.device)

    @property
    def runs_cpu_2bit(self) -> bool:
        """Whether the layer is prepared on the 2bit path on CPU (the C++ operators' path)."""
        return self.inference_path == "2bit" and self.weight_scale.device.type == "cpu"

    def set_int8_activations(self, enabled: bool) -> None:
        """Switch this layer's products to int8 activations (llama.cpp's route, an opt-in deviation with the error
        bound of `ternary_kernels`' docstring) or back to the exact route. Needs the 2bit path on CPU."""
        if enabled and not self.runs_cpu_2bit:
            raise ValueError(
                f"int8 activations are an option of the CPU 2bit path; this layer runs {self.inference_path!r} on "
                f"{self.weight_scale.device.type}: load it on CPU with ternary_inference='2bit' (or 'auto')"
            )
        self.activation_bits = 8 if enabled else 16
        TernaryLinear.note_state_change()

    def _apply(self, fn, recurse: bool = True):
        """Module casts and moves: kernel scales keep their dtype (a model-wide `.half()` must not round them, nor
        turn the int8 / int4 kernels' bfloat16 scales into another dtype); a device move returns a prepared layer to
        its 1.6-bit packed form first, so that the next forward re-plans the path on the new device."""
        if not self.packed:
            return super()._apply(fn, recurse)
        current = self.weight_scale.device
        target = fn(torch.empty(0, device=current)).device
        if target != current and self.inference_path is not None:
            logger.info(f"ternary layer moved from {current} to {target}: its inference path is re-planned there")
            if self._fused is not None:
                self._fused.dissolve()
            self.weight_packed = pack_ternary(self._packed_digits())
            self.weight_kernel = self.kernel_scale = self.input_scale = None
            self.register_parameter("weight", None)  # what `self.weight = None` does; nn.Linear types weight as Tensor
            self.inference_path = None
            TernaryLinear.note_state_change()
        kept: dict[str, torch.Tensor] = {}
        for name in _KERNEL_BUFFERS:
            if (buffer := self._buffers.get(name)) is not None:
                kept[name] = buffer
                del self._buffers[name]
        if self.inference_path is not None:
            kernel = self._buffers.pop("weight_kernel")
            assert kernel is not None, "a prepared layer holds its kernel's weights"
            kept["weight_kernel"] = kernel
        placeholder = self._parameters.pop("weight", None)
        super()._apply(fn, recurse)
        for name, tensor in kept.items():
            moved = fn(tensor)
            self._buffers[name] = moved if moved.dtype == tensor.dtype else tensor.to(moved.device)
        if self.inference_path == "dense" and kept["weight_kernel"].dtype != (dtype := fn(kept["weight_kernel"]).dtype):
            # g * T rebuilt from T and the float32 scales: a half() -> float() round trip stays exact
            self.weight_kernel = dense_of_digits(self._packed_digits(), self.weight_scale, self.shard_dim, dtype)
        if placeholder is None:
            self._parameters["weight"] = None
        else:
            probe = fn(torch.zeros(0, dtype=placeholder.dtype, device=placeholder.device))
            self._parameters["weight"] = _packed_weight(placeholder.shape, probe.dtype, probe.device)
        return self

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inference_path is None:
            self.prepare_inference(default_inference_path(x.device, self.in_features), x.dtype)
        elif not isinstance(self._parameters["weight"], _PackedWeight):  # something assigned a float weight
            raise RuntimeError(MERGE_REFUSAL.format(name=f"this {self.out_features}x{self.in_features} layer"))
        buffers = cast(dict[str, torch.Tensor], self._buffers)  # (read directly: a decode step makes 7 such calls
        if self.inference_path == "2bit":  # per decoder layer, and each attribute lookup costs a microsecond)
            operands = (x, buffers["weight_kernel"], buffers["kernel_scale"], buffers["input_scale"])
            if torch.is_grad_enabled() and x.requires_grad:
                return _TwoBitMatmul.apply(*operands, self.activation_bits)
            return ternary_matmul_2bit(*operands, self.activation_bits)
        if torch.is_grad_enabled() and x.requires_grad and self.inference_path != "dense":
            return _WeightOnlyMatmul.apply(x, self)
        if self.inference_path == "dense":
            return F.linear(x, buffers["weight_kernel"].to(x.dtype))
        return self._weight_only_matmul(x)

    def _weight_only_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """Y = X (g * T)^T through the int8 / int4 / 2bit kernel: x [..., in] -> [..., out] in x's dtype."""
        assert self.weight_kernel is not None and self.kernel_scale is not None, "the layer is prepared"
        if self.inference_path == "2bit":
            return ternary_matmul_2bit(x, self.weight_kernel, self.kernel_scale, self.input_scale, self.activation_bits)
        flat = x.reshape(-1, self.in_features)
        if self.input_scale is not None:
            flat = flat * self.input_scale
        flat = flat.to(KERNEL_DTYPE)
        if self.inference_path == "int8":
            y = torch._weight_int8pack_mm(flat, self.weight_kernel, self.kernel_scale)
        else:
            group = self.in_features // self.kernel_scale.shape[0]
            y = torch._weight_int4pack_mm_for_cpu(flat, self.weight_kernel, group, self.kernel_scale)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if not self.packed:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        # A prepared layer holds its kernel's form, not the packed bytes: pack again. Scales stay float32 on disk.
        packed = self.weight_packed if self.inference_path is None else pack_ternary(self._packed_digits())
        destination[prefix + "weight_packed"] = packed
        destination[prefix + "weight_scale"] = self.weight_scale.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return self._packed_forward(x)
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        with torch.autocast(x.device.type, enabled=False):
            y = _TernaryMatmul.apply(x, self.weight, self.scales(), self.shard_dim)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        shared = f", shared_scale_with={len(self._scale_group) - 1}" if len(self._scale_group) > 1 else ""
        packed = f", packed, inference_path={self.inference_path}" if self.packed else ""
        return (
            f"{super().extra_repr()}, shards={self.shards}, shard_dim={self.shard_dim}, eps={self.eps}{shared}{packed}"
        )


def _2bit_unavailable(device: torch.device) -> str | None:
    """Why the 2bit path cannot run on `device`, or None."""
    if device.type == "cpu":
        return None if cpu_kernel() is not None else "the C++ CPU kernel could not be built (see the log)"
    if device.type == "cuda":
        return None if triton_available() else "the CUDA kernel needs triton (pip install triton)"
    return f"there is no 2-bit kernel for {device.type}"


def default_inference_path(device: torch.device, in_features: int) -> str:
    """The "auto" path of one layer. CPU: "2bit" where its C++ kernel builds (2 bits per weight; fastest in
    bench/bench_inference.py), else "int4", or "int8" where the int4 kernel cannot take the width (in_features not a
    multiple of 32). Other devices: "dense" (plain GEMMs; the CUDA int4 / Triton 2-bit figures are pending, see
    bench/gpu_check.sh)."""
    if device.type != "cpu":
        return "dense"
    if _2bit_unavailable(device) is None:
        return "2bit"
    return "int4" if in_features % 32 == 0 else "int8"


def share_scales(*layers: TernaryLinear) -> None:
    """Make `layers` (same shard count and shard_dim) use one scale per shard, computed over all of them."""
    if len({(layer.shards, layer.shard_dim) for layer in layers}) != 1:
        raise ValueError("layers sharing scales must have the same shard count and shard dimension")
    for layer in layers:
        # A plain attribute (a tuple is not registered as a submodule), so state dicts and module trees stay as-is.
        layer._scale_group = tuple(layers)
