"""The paper's learning-rate and weight-decay schedules (arXiv 2407.12327, section 3 and appendix).

TriLM: linear warmup to the first-half peak, then linear decay; at `lr_drop_fraction` of training the peak drops to
the size's second-half peak (the decay line keeps its shape, only its height changes), and weight decay is set to 0
from `weight_decay_off_fraction` of training on.
FloatLM: linear warmup, then cosine decay; constant weight decay.

Published: the peak LRs per size (the suite registry), the two TriLM interventions and their approximate positions
(half and two thirds). NOT published, so these are assumptions of spectra-hf (documented, every one overridable):
the warmup length (`DEFAULT_WARMUP_FRACTION`), the final LR (`DEFAULT_FINAL_LR_RATIO` of the peak in force), the
weight decay value (`DEFAULT_WEIGHT_DECAY`), Adam's epsilon (`DEFAULT_ADAM_EPSILON`) and gradient clipping
(`DEFAULT_MAX_GRAD_NORM`); the defaults follow GPT-NeoX's Pythia configs, the framework the paper trained with.

Steps are counted as optimizer steps done: `lr_at(0)` is the learning rate of the first optimizer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

DEFAULT_WARMUP_FRACTION = 0.01  # assumption (Pythia: 1% warmup)
DEFAULT_FINAL_LR_RATIO = 0.1  # assumption (Pythia: min_lr = 0.1 x peak)
DEFAULT_WEIGHT_DECAY = 0.1  # assumption
DEFAULT_ADAM_EPSILON = 1e-8  # assumption
DEFAULT_MAX_GRAD_NORM = 1.0  # assumption
DEFAULT_LR_DROP_FRACTION = 0.5  # the paper: "at about the halfway point"
DEFAULT_WEIGHT_DECAY_OFF_FRACTION = 2 / 3  # the paper: "at about two thirds of training"
ADAM_BETAS = (0.9, 0.95)  # published


@dataclass(frozen=True)
class SpectraSchedule:
    """Learning rate and weight decay as functions of the number of optimizer steps done.

    Attributes:
        decay: "linear" (TriLM) or "cosine" (FloatLM).
        total_steps: optimizer steps of the whole run.
        warmup_steps: steps of linear warmup from 0 to the peak.
        peak_lr: peak learning rate before `lr_drop_step`.
        lr_after_drop: peak learning rate from `lr_drop_step` on (None: no drop).
        lr_drop_step: first step that uses `lr_after_drop`.
        final_lr_ratio: the decay ends at this fraction of the peak in force.
        weight_decay: weight decay of the decayed parameters before `weight_decay_off_step`.
        weight_decay_off_step: first step with weight decay 0 (None: never switched off).
    """

    decay: Literal["linear", "cosine"]
    total_steps: int
    warmup_steps: int
    peak_lr: float
    lr_after_drop: float | None = None
    lr_drop_step: int | None = None
    final_lr_ratio: float = DEFAULT_FINAL_LR_RATIO
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    weight_decay_off_step: int | None = None

    def peak_at(self, step: int) -> float:
        """The peak learning rate in force at `step` (the TriLM drop switches it)."""
        if self.lr_after_drop is not None and self.lr_drop_step is not None and step >= self.lr_drop_step:
            return self.lr_after_drop
        return self.peak_lr

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        peak = self.peak_at(step)
        if step < self.warmup_steps:
            return peak * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        remaining = 1.0 - progress if self.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return peak * (self.final_lr_ratio + (1.0 - self.final_lr_ratio) * remaining)

    def weight_decay_at(self, step: int) -> float:
        """Weight decay of the decayed parameter group at optimizer step `step` (0-based)."""
        if self.weight_decay_off_step is not None and step >= self.weight_decay_off_step:
            return 0.0
        return self.weight_decay


def paper_schedule(
    family: str,
    *,
    total_steps: int,
    peak_lr: float,
    lr_after_drop: float | None,
    warmup_steps: int,
    weight_decay: float,
    final_lr_ratio: float = DEFAULT_FINAL_LR_RATIO,
    lr_drop_fraction: float = DEFAULT_LR_DROP_FRACTION,
    weight_decay_off_fraction: float = DEFAULT_WEIGHT_DECAY_OFF_FRACTION,
) -> SpectraSchedule:
    """The schedule of a TriLM ("trilm": linear, LR drop, WD off) or FloatLM ("floatlm": cosine, constant WD) run.

    A TriLM with `lr_after_drop=None` keeps one peak; fractions >= 1 switch an intervention off.
    """
    if family == "trilm":
        return SpectraSchedule(
            decay="linear",
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            peak_lr=peak_lr,
            lr_after_drop=lr_after_drop,
            lr_drop_step=round(lr_drop_fraction * total_steps),
            final_lr_ratio=final_lr_ratio,
            weight_decay=weight_decay,
            weight_decay_off_step=round(weight_decay_off_fraction * total_steps),
        )
    return SpectraSchedule(
        decay="cosine",
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        peak_lr=peak_lr,
        final_lr_ratio=final_lr_ratio,
        weight_decay=weight_decay,
    )


class SpectraLRScheduler(LambdaLR):
    """Sets every group's LR to `schedule.lr_at(step)` (groups are created with lr = `schedule.peak_lr`).

    Its saved state is the step counter alone (the schedule is rebuilt from the arguments), so a resumed run
    continues the exact curve. `schedule` is public so callbacks can follow the weight decay too.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: SpectraSchedule) -> None:
        self.schedule = schedule
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        return self.schedule.lr_at(step) / self.schedule.peak_lr

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("schedule", None)
        return state


def apply_weight_decay(optimizer: torch.optim.Optimizer, schedule: SpectraSchedule, step: int) -> float:
    """Set the weight decay of the decayed parameter groups for optimizer step `step`.

    Returns the value set. Decayed groups carry `"spectra_decay": True` (set by `SpectraTrainer.create_optimizer`;
    optimizer state dicts keep it, so resumed runs know their groups).
    """
    value = schedule.weight_decay_at(step)
    for group in optimizer.param_groups:
        if group.get("spectra_decay", False):
            group["weight_decay"] = value
    return value
