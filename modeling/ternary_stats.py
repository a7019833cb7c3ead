"""Statistics of ternary weights: how many digits of T are -1, 0 and +1, and the range of their scales.

The one counting routine behind `TriLMForCausalLM.ternary_stats()`, the trainer's `ternary/*` logs and
`spectra-hf info`: each adds the (T, scales) of its ternary matrices to a `TernaryCounts` and reads the fractions.
"""

import math
from dataclasses import dataclass

import torch


@dataclass
class TernaryCounts:
    """Digits of T counted over one or more ternary matrices, and the mean and range of their per-shard scales."""

    minus: int = 0
    zero: int = 0
    plus: int = 0
    scale_sum: float = 0.0
    scale_count: int = 0
    scale_min: float = math.inf
    scale_max: float = -math.inf

    @torch.no_grad()
    def add(self, digits: torch.Tensor, scales: torch.Tensor) -> None:
        """Count T (any shape, values in {-1, 0, +1}) and its scales ([shards])."""
        self.minus += int((digits == -1).sum())
        self.zero += int((digits == 0).sum())
        self.plus += int((digits == 1).sum())
        scales = scales.detach().double()
        self.scale_sum += float(scales.sum())
        self.scale_count += scales.numel()
        self.scale_min = min(self.scale_min, float(scales.min()))
        self.scale_max = max(self.scale_max, float(scales.max()))

    @property
    def total(self) -> int:
        return self.minus + self.zero + self.plus

    @property
    def scale_mean(self) -> float:
        return self.scale_sum / self.scale_count if self.scale_count else math.nan

    def fractions(self) -> dict[str, float]:
        """`zero_fraction`, `plus_fraction` and `minus_fraction`: shares of the counted digits (NaN when none)."""
        total = self.total
        share = (lambda count: count / total) if total else (lambda count: math.nan)
        return {
            "zero_fraction": share(self.zero),
            "plus_fraction": share(self.plus),
            "minus_fraction": share(self.minus),
        }
