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

import torch
import torch.nn.functional as F
from torch import nn


def _shard_view(weight: torch.Tensor, shards: int, shard_dim: int) -> torch.Tensor:
    """View `weight` [out, in] as [shards, n] blocks (rows: contiguous; columns: gathered per block)."""
    out_features, in_features = weight.shape
    if shard_dim == 0:
        return weight.reshape(shards, (out_features // shards) * in_features)
    return weight.reshape(out_features, shards, in_features // shards).transpose(0, 1).reshape(shards, -1)


def shard_abs_sums(weight: torch.Tensor, shards: int, shard_dim: int) -> tuple[torch.Tensor, int]:
    """Per-shard sum of |W| (float32, shape [shards]) and the number of weights in each shard."""
    blocks = _shard_view(weight.detach(), shards, shard_dim)
    return blocks.abs().sum(dim=1, dtype=torch.float32), blocks.shape[1]


def expand_scales(scales: torch.Tensor, shape: torch.Size, shard_dim: int) -> torch.Tensor:
    """Broadcastable per-weight scales: [out, 1] for row shards, [1, in] for column shards."""
    repeats = shape[shard_dim] // scales.numel()
    per_index = scales.repeat_interleave(repeats)
    return per_index[:, None] if shard_dim == 0 else per_index[None, :]


def ternary_digits(weight: torch.Tensor, scales: torch.Tensor, shard_dim: int) -> torch.Tensor:
    """T = round(clamp(W / g, -1, 1)) as int8, for the given per-shard scales."""
    scaled = weight.detach().float() / expand_scales(scales, weight.shape, shard_dim)
    return scaled.clamp_(-1, 1).round_().to(torch.int8)


def effective_weight(
    weight: torch.Tensor, scales: torch.Tensor, shard_dim: int, dtype: torch.dtype
) -> torch.Tensor:
    """g * T in `dtype`: what the layer multiplies with."""
    per_weight = expand_scales(scales, weight.shape, shard_dim)
    return (weight.detach().float() / per_weight).clamp_(-1, 1).round_().mul_(per_weight).to(dtype)


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


class TernaryLinear(nn.Linear):
    """A linear layer whose weight is ternarized on the fly: `Y = X (g * T)^T` (see the module docstring).

    A subclass of `nn.Linear`, so peft, tensor-parallel plans and weight-init code see a Linear. `weight` holds the
    latent float weight that the optimizer updates; `ternary_weight()` returns (T, scales).

    Args:
        shards: number of scale shards (the original run's model-parallel degree, `pretraining_model_parallel`).
        shard_dim: 0 to shard output rows (column-parallel layers), 1 to shard input columns (row-parallel).
        eps: added to each absmean scale (1e-5 in the paper).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        shards: int = 1,
        shard_dim: int = 0,
        eps: float = 1e-5,
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
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.shards = shards
        self.shard_dim = shard_dim
        self.eps = eps
        self._scale_group: tuple[TernaryLinear, ...] = (self,)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, shards: int, shard_dim: int, eps: float) -> "TernaryLinear":
        """Wrap an existing `nn.Linear`, reusing its parameters (no copy, no re-initialization)."""
        layer = cls(
            linear.in_features, linear.out_features, bias=False, shards=shards, shard_dim=shard_dim, eps=eps,
            device="meta",
        )
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def scales(self) -> torch.Tensor:
        """Per-shard scales g (float32, shape [shards]); shared across the layer's scale group."""
        total, count = None, 0
        for member in self._scale_group:
            sums, n = shard_abs_sums(member.weight, member.shards, member.shard_dim)
            total = sums if total is None else total + sums
            count += n
        return total / count + self.eps

    def ternary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(T as int8 [out, in], scales as float32 [shards])."""
        scales = self.scales()
        return ternary_digits(self.weight, scales, self.shard_dim), scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        with torch.autocast(x.device.type, enabled=False):
            y = _TernaryMatmul.apply(x, self.weight, self.scales(), self.shard_dim)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        shared = f", shared_scale_with={len(self._scale_group) - 1}" if len(self._scale_group) > 1 else ""
        return f"{super().extra_repr()}, shards={self.shards}, shard_dim={self.shard_dim}, eps={self.eps}{shared}"


def share_scales(*layers: TernaryLinear) -> None:
    """Make `layers` (same shard count and shard_dim) use one scale per shard, computed over all of them."""
    if len({(layer.shards, layer.shard_dim) for layer in layers}) != 1:
        raise ValueError("layers sharing scales must have the same shard count and shard dimension")
    for layer in layers:
        # A plain attribute (a tuple is not registered as a submodule), so state dicts and module trees stay as-is.
        layer._scale_group = tuple(layers)
