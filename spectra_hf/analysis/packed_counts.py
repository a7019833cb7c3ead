"""Digit counts and flips of ternary matrices read straight from their packed 1.6-bit bytes (numpy only).

A packed byte holds five base-3 digits (layout: `spectra_hf.modeling.packing`). Everything here works on byte values
and never unpacks a matrix:

- digit counts of one matrix: `np.bincount(bytes, minlength=243)` [243] times a [243, 3] table of how many -1 / 0 / +1
  digits each byte value holds;
- flips between two versions of a matrix: the pair (byte_a, byte_b) indexes one of 243 * 243 cells, `np.bincount` of
  `byte_a * 243 + byte_b` [59049] counts them (over the bytes that differ only: equal bytes flip nothing), and a
  [59049, 2] table of how many of the five digit pairs change
  between 0 and +-1, or between +1 and -1, turns those counts into flips with one small matmul.

The padding digits of a last, incomplete byte are t = 0 in every version: they never flip, and are subtracted from
the zero count. Bytes are processed in chunks so that the temporary index array stays small whatever the matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectra_hf.errors import CheckpointError

TRITS_PER_BYTE = 5
BYTE_VALUES = 243  # 3 ** 5: valid packed bytes are 0..242
CHUNK_BYTES = 1 << 22  # bytes per step: bounds the temporaries (a mask, the changed pairs' index) whatever the matrix


def _byte_digits() -> np.ndarray:
    """[243, 5] int8: the digits t in {-1, 0, +1} of every byte value, least significant first."""
    values = np.arange(BYTE_VALUES, dtype=np.int16)[:, None]  # [243, 1]
    powers = 3 ** np.arange(TRITS_PER_BYTE, dtype=np.int16)[None, :]  # [1, 5]
    return ((values // powers) % 3 - 1).astype(np.int8)


_DIGITS = _byte_digits()  # [243, 5]
# [243, 3] int64: how many -1, 0, +1 digits each byte value holds.
DIGIT_COUNT_TABLE = np.stack([np.equal(_DIGITS, value).sum(axis=1) for value in (-1, 0, 1)], axis=1).astype(np.int64)
# [65536, 3] int64: the same for two bytes read as one little-endian uint16 (rows holding a byte > 242 are unused).
_LOW, _HIGH = np.arange(1 << 16) % 256, np.arange(1 << 16) // 256
PAIR_DIGIT_COUNT_TABLE = np.where(
    ((_LOW < BYTE_VALUES) & (_HIGH < BYTE_VALUES))[:, None],
    DIGIT_COUNT_TABLE[np.minimum(_LOW, BYTE_VALUES - 1)] + DIGIT_COUNT_TABLE[np.minimum(_HIGH, BYTE_VALUES - 1)],
    0,
)
del _LOW, _HIGH
# [59049, 2] int64, row byte_a * 243 + byte_b: digit pairs changing 0 <-> +-1, and +1 <-> -1.
_A = _DIGITS[:, None, :].astype(np.int16)  # [243, 1, 5]
_B = _DIGITS[None, :, :].astype(np.int16)  # [1, 243, 5]
FLIP_TABLE = np.stack(
    [((_A == 0) != (_B == 0)).sum(axis=2).reshape(-1), (_A * _B == -1).sum(axis=2).reshape(-1)], axis=1
).astype(np.int64)
del _A, _B


@dataclass(frozen=True)
class DigitCounts:
    """How many digits of one ternary matrix are -1, 0 and +1 (padding excluded)."""

    minus: int
    zero: int
    plus: int

    @property
    def total(self) -> int:
        return self.minus + self.zero + self.plus


@dataclass(frozen=True)
class FlipCounts:
    """Digits of one matrix that changed between two versions: `zero_sign` between 0 and +-1 (either way), `sign`
    between +1 and -1; `total` is the number of digits compared."""

    zero_sign: int
    sign: int
    total: int

    @property
    def flipped(self) -> int:
        return self.zero_sign + self.sign


def _check(packed: np.ndarray, numel: int, what: str) -> np.ndarray:
    expected = -(-numel // TRITS_PER_BYTE)
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != expected:
        raise CheckpointError(
            f"{what}: a packed matrix of {numel} weights must be uint8 [{expected}], got {packed.dtype} "
            f"{list(packed.shape)}: the checkpoint does not match its config.json"
        )
    return packed


def _padding(numel: int) -> int:
    return -numel % TRITS_PER_BYTE


def digit_counts(packed: np.ndarray, *, numel: int, what: str = "packed matrix") -> DigitCounts:
    """-1 / 0 / +1 counts of the `numel` digits held by `packed` (uint8 [ceil(numel / 5)])."""
    _check(packed, numel, what)
    if packed.size and int(packed.max()) >= BYTE_VALUES:
        _corrupt(what)
    # bincount converts its input to intp element by element: counting two bytes per element (a uint16 view) halves
    # that work; the odd last byte is counted on its own
    even = packed.size - packed.size % 2
    pairs = np.bincount(packed[:even].view(np.uint16), minlength=1 << 16)  # [65536]
    single = np.bincount(packed[even:], minlength=BYTE_VALUES)[:BYTE_VALUES]  # [243]
    minus, zero, plus = (pairs @ PAIR_DIGIT_COUNT_TABLE + single @ DIGIT_COUNT_TABLE).tolist()
    return DigitCounts(minus=minus, zero=zero - _padding(numel), plus=plus)


def flip_counts(
    before: np.ndarray, after: np.ndarray, *, numel: int, what: str = "packed matrix", chunk_bytes: int = CHUNK_BYTES
) -> FlipCounts:
    """Digits that changed between two packed versions (uint8 [ceil(numel / 5)] each) of one matrix, counted
    `chunk_bytes` bytes at a time."""
    _check(before, numel, what)
    _check(after, numel, what)
    pairs = np.zeros(BYTE_VALUES * BYTE_VALUES, dtype=np.int64)  # [59049]
    for start in range(0, before.size, chunk_bytes):
        a, b = before[start : start + chunk_bytes], after[start : start + chunk_bytes]
        if max(int(a.max()), int(b.max())) >= BYTE_VALUES:  # a chunk is never empty
            _corrupt(what)
        # An unchanged byte flips nothing (FLIP_TABLE's diagonal is 0): find the 8-byte words that differ, cheaply,
        # and count only their bytes.
        whole = a.size - a.size % 8
        words = np.flatnonzero(np.not_equal(a[:whole].view(np.uint64), b[:whole].view(np.uint64)))  # [changed words]
        a_bytes = np.concatenate([a[:whole].view(np.uint64)[words].view(np.uint8), a[whole:]])
        b_bytes = np.concatenate([b[:whole].view(np.uint64)[words].view(np.uint8), b[whole:]])
        index = a_bytes.astype(np.uint16)  # byte_a * 243 + byte_b <= 59048 fits uint16
        index *= BYTE_VALUES
        index += b_bytes
        pairs += np.bincount(index, minlength=pairs.size)
    zero_sign, sign = (pairs @ FLIP_TABLE).tolist()
    return FlipCounts(zero_sign=zero_sign, sign=sign, total=numel)


def _corrupt(what: str) -> None:
    raise CheckpointError(f"{what}: packed ternary bytes must be <= 242 (5 base-3 digits); the checkpoint is corrupt")
