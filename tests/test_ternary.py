"""TernaryLinear against the paper's formula, computed here independently in float64 with explicit shard slicing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spectra_hf.modeling import TernaryLinear, share_scales

EPS = 1e-5


def reference_ternary_weight(weights: list[torch.Tensor], shards: int, shard_dim: int) -> list[torch.Tensor]:
    """g * T per the paper, in float64: one absmean per shard, over all `weights` that share scales."""
    weights = [w.detach().double() for w in weights]
    size = weights[0].shape[shard_dim] // shards
    outs = [torch.empty_like(w) for w in weights]
    for s in range(shards):
        index = [slice(None), slice(None)]
        index[shard_dim] = slice(s * size, (s + 1) * size)
        blocks = [w[tuple(index)] for w in weights]
        g = EPS + torch.cat([b.abs().flatten() for b in blocks]).mean()
        for out, block in zip(outs, blocks, strict=True):
            out[tuple(index)] = g * torch.round(torch.clamp(block / g, -1, 1))
    return outs


@pytest.mark.parametrize("shards", [1, 2, 3, 6])
@pytest.mark.parametrize("shard_dim", [0, 1])
def test_forward_matches_float64_formula(shards: int, shard_dim: int) -> None:
    layer = TernaryLinear(48, 36, shards=shards, shard_dim=shard_dim).double()
    # Unequal magnitudes per shard make a wrong shard layout visible.
    with torch.no_grad():
        sharded = layer.weight.shape[shard_dim]
        ramp = torch.linspace(0.5, 3.0, sharded, dtype=torch.float64)
        layer.weight.mul_(ramp[:, None] if shard_dim == 0 else ramp[None, :])
    x = torch.randn(4, 7, 48, dtype=torch.float64)
    (expected_weight,) = reference_ternary_weight([layer.weight], shards, shard_dim)
    torch.testing.assert_close(layer(x), F.linear(x, expected_weight), rtol=1e-12, atol=1e-12)

    digits, scales = layer.ternary_weight()
    assert digits.dtype == torch.int8 and set(digits.unique().tolist()) <= {-1, 0, 1}
    assert scales.shape == (shards,)
    assert len(set(expected_weight.abs().unique().tolist()) - {0.0}) == shards  # one magnitude per shard


@pytest.mark.parametrize("shards", [1, 2, 3, 6])
def test_fused_qkv_scales_are_shared_per_shard(shards: int) -> None:
    q, k, v = (TernaryLinear(24, 24, shards=shards).double() for _ in range(3))
    with torch.no_grad():
        k.weight.mul_(4.0)  # k alone would get a 4x larger scale
    share_scales(q, k, v)
    x = torch.randn(5, 24, dtype=torch.float64)
    expected = reference_ternary_weight([q.weight, k.weight, v.weight], shards, 0)
    for layer, weight in zip((q, k, v), expected, strict=True):
        torch.testing.assert_close(layer(x), F.linear(x, weight), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.scales(), k.scales())


@pytest.mark.parametrize("shards,shard_dim", [(1, 0), (3, 0), (2, 1), (6, 1)])
def test_gradient_is_straight_through(shards: int, shard_dim: int) -> None:
    layer = TernaryLinear(36, 24, shards=shards, shard_dim=shard_dim).double()
    x = torch.randn(3, 5, 36, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 5, 24, dtype=torch.float64)
    (layer(x) * upstream).sum().backward()

    (effective,) = reference_ternary_weight([layer.weight], shards, shard_dim)
    # STE: dL/dW = dL/dW~ = upstream^T x, and dL/dx = upstream W~.
    torch.testing.assert_close(layer.weight.grad, upstream.reshape(-1, 24).T @ x.detach().reshape(-1, 36))
    torch.testing.assert_close(x.grad, upstream @ effective)


def test_backward_saves_no_full_size_weight_copy() -> None:
    layer = TernaryLinear(256, 256)
    x = torch.randn(8, 256, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    weight_sized = [t for t in saved if t.numel() == layer.weight.numel()]
    assert all(t.data_ptr() == layer.weight.data_ptr() for t in weight_sized), "a g*T copy was kept for backward"


def test_autocast_bfloat16_runs_in_bfloat16() -> None:
    layer = TernaryLinear(64, 32, shards=2)
    x = torch.randn(4, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    (reference,) = reference_ternary_weight([layer.weight], 2, 0)
    torch.testing.assert_close(y.float(), F.linear(x.double(), reference).float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_invalid_shards_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="pretraining_model_parallel must divide"):
        TernaryLinear(64, 30, shards=4, shard_dim=0)  # 30 output rows cannot split into 4 row shards
    with pytest.raises(ValueError, match="pretraining_model_parallel must divide"):
        TernaryLinear(30, 64, shards=4, shard_dim=1)  # 30 input columns cannot split into 4 column shards
    with pytest.raises(ValueError, match="shard_dim must be 0"):
        TernaryLinear(64, 64, shard_dim=2)
