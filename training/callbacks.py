"""Trainer callbacks: the weight-decay schedule and Pythia's log-spaced checkpoints."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .schedules import apply_weight_decay

# Pythia saved at steps 1, 2, 4, ..., 512 and then every 1000 steps; spectra-hf adds the former to `save_steps`.
LOG_SPACED_STEPS = frozenset(2**k for k in range(10))


class WeightDecaySchedule(TrainerCallback):
    """Before each optimizer step, set the decayed groups' weight decay from the schedule and the steps done."""

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        scheduler, optimizer = kwargs.get("lr_scheduler"), kwargs.get("optimizer")
        schedule = getattr(scheduler, "schedule", None)
        if schedule is not None and optimizer is not None:
            apply_weight_decay(optimizer, schedule, state.global_step)


class LogSpacedCheckpoints(TrainerCallback):
    """Also save a checkpoint at steps 1, 2, 4, ..., 512 (Pythia's early log spacing)."""

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.global_step in LOG_SPACED_STEPS:
            control.should_save = True
        return control
