"""Statistics of the ternary layers during training: zeros, scales and how many digits flip between logs."""

from __future__ import annotations

import torch
from torch import nn

from spectra_hf.modeling import TernaryLinear
from spectra_hf.modeling.ternary_stats import TernaryCounts

FLIP_SAMPLE = 1 << 16  # flips are tracked on this many fixed weights per layer (all of them in smaller layers)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank: DTensors (FSDP2- or TP-sharded weights outside forward) are gathered."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class TernaryStatsTracker:
    """Computes `ternary/*` log entries from a model's `TernaryLinear` layers.

    Logged: `ternary/zero_fraction` (share of digits equal to 0 over all ternary weights), `ternary/scale_mean`
    (mean of all shard scales), `ternary/flip_fraction` (share of tracked digits that changed since the previous
    log; tracked on up to `FLIP_SAMPLE` fixed weights per layer to keep memory small), and per layer
    `ternary/scale/<layer>` (the mean of its shard scales).
    Every rank must call `stats` (gathering sharded weights is a collective).
    """

    def __init__(self) -> None:
        self._previous: dict[str, torch.Tensor] = {}
        self._sample_index: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def stats(self, model: nn.Module) -> dict[str, float]:
        logs: dict[str, float] = {}
        counts = TernaryCounts()
        flips = tracked = 0
        for name, module in model.named_modules():
            if not isinstance(module, TernaryLinear):
                continue
            digits, scales = (_full(t) for t in module.ternary_weight())
            counts.add(digits, scales)
            logs[f"ternary/scale/{name}"] = scales.mean().item()
            sample = digits.flatten()[self._indices(name, digits.numel())].cpu()
            if name in self._previous:
                flips += int((sample != self._previous[name]).sum())
                tracked += sample.numel()
            self._previous[name] = sample
        if counts.total:
            logs["ternary/zero_fraction"] = counts.fractions()["zero_fraction"]
            logs["ternary/scale_mean"] = counts.scale_mean
        if tracked:
            logs["ternary/flip_fraction"] = flips / tracked
        return logs

    def _indices(self, name: str, numel: int) -> torch.Tensor:
        if name not in self._sample_index:
            if numel <= FLIP_SAMPLE:
                self._sample_index[name] = torch.arange(numel)
            else:
                generator = torch.Generator().manual_seed(numel)
                self._sample_index[name] = torch.randperm(numel, generator=generator)[:FLIP_SAMPLE].sort().values
        return self._sample_index[name]
