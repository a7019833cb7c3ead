"""Ternary digits packed 5 per byte (1.6 bits per weight; the limit is log2(3) = 1.585).

Layout of a packed tensor `P.weight_packed` (uint8, shape [ceil(out * in / 5)]):
  - take T (int8, values in {-1, 0, +1}, shape [out, in]) flattened in row-major order: t_0, t_1, ..., t_{n-1};
  - map each digit to d = t + 1 in {0, 1, 2};
  - byte k holds the five digits d_{5k}, ..., d_{5k+4} little-endian in base 3:
        byte_k = d_{5k} + 3 * d_{5k+1} + 9 * d_{5k+2} + 27 * d_{5k+3} + 81 * d_{5k+4}     (0 <= byte_k <= 242)
  - a last, incomplete group is padded with d = 1 (t = 0).
The matrix shape is not stored in the packed tensor: it is the layer's [out_features, in_features] from config.json.
"""

from __future__ import annotations

import torch

TRITS_PER_BYTE = 5
_POWERS = (1, 3, 9, 27, 81)


def packed_size(numel: int) -> int:
    """Bytes needed for `numel` ternary digits."""
    return -(-numel // TRITS_PER_BYTE)


def pack_ternary(digits: torch.Tensor) -> torch.Tensor:
    """Pack T (any shape, values in {-1, 0, +1}) into uint8 [ceil(numel / 5)] (layout: module docstring)."""
    flat = digits.reshape(-1).to(torch.int16) + 1
    pad = packed_size(flat.numel()) * TRITS_PER_BYTE - flat.numel()
    if pad:
        flat = torch.cat([flat, flat.new_ones(pad)])
    groups = flat.reshape(-1, TRITS_PER_BYTE)
    powers = torch.tensor(_POWERS, dtype=torch.int16, device=digits.device)
    return (groups * powers).sum(dim=1, dtype=torch.int16).to(torch.uint8)


def _unpack_table(device: torch.device) -> torch.Tensor:
    """[243, 5] int8: the five digits t in {-1, 0, +1} of every byte value."""
    values = torch.arange(243, dtype=torch.int16, device=device)
    powers = torch.tensor(_POWERS, dtype=torch.int16, device=device)
    return ((values[:, None] // powers) % 3 - 1).to(torch.int8)


def unpack_ternary(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_ternary`: uint8 [ceil(numel / 5)] -> T as int8 of `shape`."""
    numel = 1
    for size in shape:
        numel *= size
    if packed.dtype != torch.uint8 or packed.numel() != packed_size(numel):
        raise ValueError(
            f"a packed ternary tensor for shape {tuple(shape)} must be uint8 with {packed_size(numel)} bytes, got "
            f"{packed.dtype} with {packed.numel()}: the checkpoint does not match its config.json"
        )
    if packed.numel() and int(packed.max()) > 242:
        raise ValueError("packed ternary bytes must be <= 242 (5 base-3 digits); the checkpoint is corrupt")
    digits = _unpack_table(packed.device)[packed.reshape(-1).long()]
    return digits.reshape(-1)[:numel].reshape(shape)
