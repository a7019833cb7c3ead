"""`SpectraTrainer`: a `transformers.Trainer` that trains TriLM and FloatLM the way the paper did.

- Schedules (`schedules.py`): TriLM linear decay with the peak-LR drop and weight decay switched off; FloatLM cosine.
  The LR is a `LambdaLR` (state: the step counter), the weight decay is set on the decayed parameter groups before
  every optimizer step from the number of steps done, so a resumed run continues both curves exactly.
- Parameter groups: transformers' default split. Norm weights and biases get no weight decay; the ternary scales are
  not parameters (each forward computes them from the latent weights), so they get none either. The latent ternary
  weights, the embedding and the LM head are decayed, as in GPT-NeoX, the framework the paper trained with.
- Logs: `learning_rate` and `weight_decay` of the optimizer step just taken, at every logging step (so
  `trainer_state.json` holds both curves), plus `ternary/*` statistics (`ternary_stats.py`).
- Suite exports: with `suite_dir` set, every saved checkpoint also writes a release export (packed TriLM, float
  FloatLM) to `checkpoint_dir(suite_dir, name, step)`, atomically, with tokenizer and `spectra_export.json`.
- Stock arguments: a plain `transformers.TrainingArguments` is accepted (as TRL's trainers accept it) and completed
  with the schedule of the model's family; see `spectra_arguments`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import (
    SaveStrategy,
    TrainOutput,
    _is_peft_model,
)
from transformers.utils import logging

from spectra_hf.checkpoints.exports import (
    CHECKPOINTS_DIR,
    ExportInfo,
    PlannedSteps,
    checkpoint_dir,
    write_export_info,
    write_planned_steps,
)
from spectra_hf.checkpoints.info import suite_size
from spectra_hf.checkpoints.io import read_config
from spectra_hf.checkpoints.staging import staged_directory
from spectra_hf.errors import CheckpointError, ConfigError
from spectra_hf.suite import ARCHITECTURE_KEYS, FAMILY_PREFIX, SIZES, get_model

from .arguments import SpectraTrainingArguments
from .callbacks import LOG_SPACED_STEPS, LogSpacedCheckpoints, WeightDecaySchedule
from .export_defaults import generation_ready
from .resume import (
    TRAINER_STATE_FILE,
    checkpoint_step,
    complete_checkpoints,
    newest_complete_checkpoint,
    recover_moved_checkpoints,
)
from .schedules import SpectraLRScheduler, SpectraSchedule, paper_schedule
from .ternary_stats import TernaryStatsTracker

logger = logging.get_logger(__name__)

# Files of a Trainer checkpoint that are training state, not part of a release export.
_TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")

# config.json keys that must match between a checkpoint and the model that resumes from it.
_RESUME_KEYS = ("model_type", *ARCHITECTURE_KEYS)


class SpectraTrainer(Trainer):
    """`Trainer` with the paper's schedules, ternary statistics and suite exports (see the module docstring).

    Takes `SpectraTrainingArguments`, or a stock `TrainingArguments` completed by `spectra_arguments`; every other
    argument is `Trainer`'s.
    """

    args: SpectraTrainingArguments

    def __init__(
        self,
        model: PreTrainedModel | torch.nn.Module | None = None,
        args: TrainingArguments | None = None,
        *trainer_args: Any,
        callbacks: Sequence[TrainerCallback] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, SpectraTrainingArguments):
            args = spectra_arguments(args, model=model)
        callbacks = [WeightDecaySchedule(), _RecordPlannedSteps(self), *(callbacks or [])]
        # mypy lets *trainer_args reach `callbacks`; they are the positional parameters before it (more would be a
        # TypeError in any case)
        super().__init__(model, args, *trainer_args, callbacks=callbacks, **kwargs)  # type: ignore[misc]
        if self.args.checkpoint_spacing == "log":
            self.add_callback(LogSpacedCheckpoints())
        self._ternary_tracker = TernaryStatsTracker() if self.args.ternary_stats else None

    @property
    def _model(self) -> PreTrainedModel:
        """`self.model`, which `Trainer` types as `Module | None`: after `__init__` it is the model being trained."""
        return cast(PreTrainedModel, self.model)

    @property
    def family(self) -> str:
        """'trilm' or 'floatlm': the schedule family (from `args.schedule`, else the model type)."""
        if self.args.schedule is not None:
            return self.args.schedule
        return "trilm" if getattr(self._model.config, "model_type", None) == "trilm" else "floatlm"

    def schedule(self, num_training_steps: int) -> SpectraSchedule:
        """The LR / WD schedule of a run of `num_training_steps` optimizer steps under these arguments."""
        args = self.args
        return paper_schedule(
            self.family,
            total_steps=num_training_steps,
            peak_lr=args.learning_rate,
            lr_after_drop=args.lr_after_drop,
            warmup_steps=args.get_warmup_steps(num_training_steps),
            weight_decay=args.weight_decay,
            final_lr_ratio=args.final_lr_ratio,
            lr_drop_fraction=args.lr_drop_fraction,
            weight_decay_off_fraction=args.weight_decay_off_fraction,
        )

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        for group in optimizer.param_groups:
            group["spectra_decay"] = group["weight_decay"] > 0
        return optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_scheduler is None:
            schedule = self.schedule(num_training_steps)
            logger.info("SpectraTrainer: %s", describe_schedule(schedule))
            optimizer = optimizer or self.optimizer
            assert optimizer is not None, "Trainer creates the optimizer before the scheduler"
            self.lr_scheduler = SpectraLRScheduler(optimizer, schedule)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def weight_decay_in_force(self) -> float:
        """Weight decay of the decayed parameter groups right now (0 when none decays)."""
        if self.optimizer is None:
            raise ConfigError("weight_decay_in_force: the optimizer is not created yet (it is when training starts)")
        values = [g["weight_decay"] for g in self.optimizer.param_groups if g.get("spectra_decay", False)]
        return max(values, default=0.0)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "learning_rate" in logs and self.optimizer is not None:
            logs["weight_decay"] = self.weight_decay_in_force()
            if self._ternary_tracker is not None:
                logs.update(self._ternary_tracker.stats(self._model))
        super().log(logs, start_time)

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> TrainOutput:
        """`Trainer.train`, after checking that the checkpoint to resume from is complete and fits the model.

        `resume_from_checkpoint` may be a path, True (the newest complete `checkpoint-<step>` in `output_dir`, or
        from scratch when there is none; see `training.resume`) or the strings "true" / "false" a command line gives
        (as in transformers' example scripts). A checkpoint already at `max_steps` trains nothing: its weights and
        state are loaded, so the run ends exactly as the uninterrupted one did (no step past `max_steps`).
        """
        resume_from_checkpoint = resume_flag(resume_from_checkpoint)
        if resume_from_checkpoint is True:
            assert self.args.output_dir is not None, "TrainingArguments.__post_init__ sets a default output_dir"
            newest = newest_complete_checkpoint(self.args.output_dir)
            resume_from_checkpoint = str(newest) if newest is not None else None
        if resume_from_checkpoint:
            check_resumable(resume_from_checkpoint, self._model.config.to_dict())
            self.reexport_missing_checkpoints()
            finished = self._load_finished_run(Path(resume_from_checkpoint))
            if finished is not None:
                return finished
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )

    def _load_finished_run(self, checkpoint: Path) -> TrainOutput | None:
        """When `checkpoint` is already at this run's `max_steps`: load its weights and trainer state and return
        what `train` returns (no training loss: no step was taken); else None (train from it)."""
        state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_FILE))
        max_steps = self.args.max_steps if self.args.max_steps > 0 else state.max_steps
        if state.global_step < max_steps:
            return None
        if state.global_step > max_steps:
            raise ConfigError(
                f"checkpoint {checkpoint} is at step {state.global_step}, past this run's max_steps={max_steps}: "
                "resume with the max_steps that wrote it (or more), or train in another output_dir"
            )
        logger.warning(
            "SpectraTrainer: %s is at max_steps=%d: the run is finished, nothing to train (its weights are loaded)",
            checkpoint,
            max_steps,
        )
        self._load_from_checkpoint(str(checkpoint))
        self.state = state
        return TrainOutput(state.global_step, float("nan"), {})

    def planned_steps(self, max_steps: int) -> list[int]:
        """The optimizer steps at which a run of `max_steps` saves a checkpoint (and so a suite export)."""
        steps: set[int] = set()
        if self.args.save_strategy == SaveStrategy.STEPS:
            every = self.args.save_steps if self.args.save_steps >= 1 else math.ceil(max_steps * self.args.save_steps)
            steps.update(range(int(every), max_steps + 1, int(every)))
            steps.add(max_steps)  # the Trainer saves at the end under the "steps" strategy
        if self.args.checkpoint_spacing == "log":
            steps.update(step for step in LOG_SPACED_STEPS if step <= max_steps)
        return sorted(steps)

    def reexport_missing_checkpoints(self) -> list[int]:
        """Write the suite export of every complete `checkpoint-<step>` in `output_dir` that has none (a run killed
        between its checkpoint and its export), from that checkpoint's weights. Returns the steps written."""
        if not self.args.suite_dir:
            return []
        written: list[int] = []
        if self.args.should_save:
            assert self.args.output_dir is not None, "TrainingArguments.__post_init__ sets a default output_dir"
            for checkpoint in complete_checkpoints(self.args.output_dir):  # an interrupted save has no export
                step = checkpoint_step(checkpoint)
                assert step is not None, "complete_checkpoints lists checkpoint-<step> directories"
                target = checkpoint_dir(self.args.suite_dir, self.export_name, step)
                if not target.is_dir():
                    self._export_from_checkpoint(checkpoint, target, step=step)
                    written.append(step)
        self.accelerator.wait_for_everyone()
        if written:
            logger.warning(
                "SpectraTrainer: wrote the missing suite exports of steps %s from their checkpoints in %s (the run "
                "was stopped between a checkpoint and its export)",
                ", ".join(map(str, written)),
                self.args.output_dir,
            )
        return written

    def _export_from_checkpoint(self, checkpoint: Path, target: Path, *, step: int) -> None:
        """The release export `export_release` writes at `step`, made from the checkpoint directory of that step."""
        state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        fmt = self._export_format()
        info = ExportInfo(
            name=self.export_name,
            family=self.family,
            step=step,
            tokens_seen=state.get("num_input_tokens_seen") or None,
            format=fmt,
        )
        with staged_directory(target, replace=True) as staging:
            for source in checkpoint.iterdir():
                if (
                    source.is_file()
                    and source.name not in _TRAINING_STATE_FILES
                    and not source.name.startswith("rng_state")
                ):
                    shutil.copy2(source, staging / source.name)
            if fmt == "packed":
                for weights in [*staging.glob("*.safetensors"), *staging.glob("*.safetensors.index.json")]:
                    weights.unlink()
                AutoModelForCausalLM.from_pretrained(checkpoint).save_pretrained(staging, weight_format="packed")
            write_export_info(staging, info)

    def _export_format(self) -> str:
        if _is_peft_model(self.model):
            return "adapter"
        return "packed" if self.family == "trilm" else "float"

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.suite_dir:
            target = checkpoint_dir(self.args.suite_dir, self.export_name, self.state.global_step)
            self.export_release(target)

    #: Recorded in the `extra` of every export this trainer writes (`train()` puts the training data here).
    export_extra: dict[str, Any] | None = None

    @property
    def export_name(self) -> str:
        return self.args.export_name or getattr(self._model.config, "name_or_path", None) or self.family

    def export_release(self, target: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
        """Write a release export of the model (with tokenizer and `spectra_export.json`) to `target` atomically.

        TriLM: packed (`save_pretrained(weight_format="packed")`), FloatLM: float weights, PEFT models: the adapters.
        A `checkpoints/` folder of a replaced export is kept (and put back from an export interrupted while it was
        being moved; see `training.resume.recover_moved_checkpoints`); staging folders of interrupted exports are
        removed. Every rank must call this (gathering sharded weights
        is a collective); the main process writes. Returns `target`.
        """
        target = Path(target)
        fmt = self._export_format()
        info = ExportInfo(
            name=self.export_name,
            family=self.family,
            step=self.state.global_step,
            tokens_seen=self.state.num_input_tokens_seen or None,
            format=fmt,
            extra={**(self.export_extra or {}), **(extra or {})},
        )
        with ExitStack() as stack:
            stack.enter_context(generation_ready(self.model, self.processing_class))
            staging = None
            if self.args.should_save:
                recover_moved_checkpoints(target)
                staging = stack.enter_context(staged_directory(target, replace=True))
            staging = _broadcast_path(staging)
            # save_model gathers the full latent weights under every strategy (DDP, FSDP2, DeepSpeed).
            latent = staging / ".latent" if fmt == "packed" else staging
            self.save_model(str(latent), _internal_call=True)
            if self.args.should_save:
                if fmt == "packed":
                    AutoModelForCausalLM.from_pretrained(latent).save_pretrained(staging, weight_format="packed")
                    shutil.rmtree(latent)
                    if self.processing_class is not None:
                        self.processing_class.save_pretrained(staging)
                (staging / "training_args.bin").unlink(missing_ok=True)
                write_export_info(staging, info)
                if (target / CHECKPOINTS_DIR).is_dir():
                    os.replace(target / CHECKPOINTS_DIR, staging / CHECKPOINTS_DIR)
        self.accelerator.wait_for_everyone()
        return target


class _RecordPlannedSteps(TrainerCallback):
    """At the start of training, record in the suite directory the steps this run exports at (`planned_steps.json`),
    so publishing can tell a missing checkpoint from one that was never planned."""

    def __init__(self, trainer: SpectraTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        trainer = self.trainer
        if trainer.args.suite_dir and trainer.args.should_save and state.max_steps > 0:
            planned = PlannedSteps(steps=trainer.planned_steps(state.max_steps), max_steps=state.max_steps)
            write_planned_steps(trainer.args.suite_dir, trainer.export_name, planned)


def resume_flag(value: str | bool | None) -> str | bool | None:
    """The strings "true" / "false" (any case) as booleans, unless such a directory exists; anything else as is."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false") and not Path(value).is_dir():
        return value.strip().lower() == "true"
    return value


def spectra_arguments(args: TrainingArguments | None, *, model: Any) -> SpectraTrainingArguments:
    """`SpectraTrainingArguments` from a stock `TrainingArguments` (None: transformers' defaults), for `model`.

    Every `TrainingArguments` value is kept as given (the learning rate is the peak). The schedule comes from the
    model: a TriLM gets the paper's linear decay, weight decay off at two thirds and the peak-LR drop at half, to
    `learning_rate` times the second-half / first-half peak ratio of its suite size (found from the architecture),
    or of the suite size nearest in hidden size when it is not one; a FloatLM gets the cosine decay.
    """
    fields = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    values = {} if args is None else {name: getattr(args, name) for name in fields}
    values.setdefault("output_dir", "trainer_output")
    config = getattr(model, "config", None)
    family = "trilm" if getattr(config, "model_type", None) == "trilm" else "floatlm"
    values["schedule"] = family
    if family == "trilm":
        values["lr_after_drop"] = values.get("learning_rate", 5e-5) * trilm_lr_drop_ratio(config)
    converted = SpectraTrainingArguments(**values)
    size = suite_size(config.to_dict()) if config is not None else None
    logger.warning(
        "SpectraTrainer: stock TrainingArguments completed for a %s (%s): the paper's %s schedule, peak LR %g%s "
        "(lr_scheduler_type is not used; pass SpectraTrainingArguments to set the schedule yourself)",
        family,
        f"suite size {size}" if size else "not a suite size",
        "TriLM (linear decay, peak-LR drop, weight decay off)" if family == "trilm" else "FloatLM (cosine)",
        converted.learning_rate,
        f" dropping to {converted.lr_after_drop:g}" if converted.lr_after_drop is not None else "",
    )
    if size is not None and converted.learning_rate != get_model(f"{FAMILY_PREFIX[family]}_{size}").peak_lr:
        logger.info(
            "SpectraTrainer: the paper trained %s_%s at peak LR %g (set learning_rate to follow it)",
            FAMILY_PREFIX[family],
            size,
            get_model(f"{FAMILY_PREFIX[family]}_{size}").peak_lr,
        )
    return converted


def trilm_lr_drop_ratio(config: Any) -> float:
    """The paper's TriLM second-half / first-half peak LR for `config`'s suite size (its architecture), or for the
    suite size nearest in hidden size when the architecture is not a suite size (1.5e-3 / 2.4e-3 below 99M)."""
    size = suite_size(config.to_dict()) if config is not None else None
    if size is None:
        hidden = getattr(config, "hidden_size", 0) or 0
        size = min(SIZES, key=lambda name: abs(SIZES[name].hidden_size - hidden))
    spec = SIZES[size]
    return spec.trilm_lr_after_drop / spec.trilm_lr


def describe_schedule(schedule: SpectraSchedule) -> str:
    """One line: the schedule in force (logged when training starts)."""
    parts = [
        f"{schedule.decay} decay over {schedule.total_steps} steps after {schedule.warmup_steps} warmup steps",
        f"peak LR {schedule.peak_lr:g}",
    ]
    if schedule.lr_after_drop is not None and schedule.lr_drop_step is not None:
        parts.append(f"dropping to {schedule.lr_after_drop:g} at step {schedule.lr_drop_step}")
    elif schedule.decay == "linear":
        parts.append("no peak-LR drop (lr_after_drop unset)")
    parts.append(f"final LR {schedule.final_lr_ratio:g} x the peak in force")
    parts.append(f"weight decay {schedule.weight_decay:g}")
    if schedule.weight_decay_off_step is not None:
        parts.append(f"set to 0 from step {schedule.weight_decay_off_step}")
    return ", ".join(parts)


def _broadcast_path(path: Path | None) -> Path:
    """Rank 0's `path` on every rank (the staging directory of an export)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        holder = [str(path) if path is not None else None]
        torch.distributed.broadcast_object_list(holder, src=0)
        received = holder[0]
        assert received is not None, "rank 0 always saves, so it always has a staging directory"
        return Path(received)
    assert path is not None, "a single process always saves, so it always has a staging directory"
    return path


def check_resumable(checkpoint: str | Path, model_config: dict[str, Any]) -> None:
    """Raise `CheckpointError` unless `checkpoint` is a complete Trainer checkpoint of the same architecture."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist: give a checkpoint-<step> directory to resume")
    missing = [name for name in ("trainer_state.json", "config.json") if not (checkpoint / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {checkpoint} is incomplete (no {', '.join(missing)}; an interrupted save?): "
            "resume with --resume_from_checkpoint true, which takes the newest complete checkpoint-<step>"
        )
    saved = read_config(checkpoint)
    different = {
        key: (saved.get(key), model_config.get(key))
        for key in _RESUME_KEYS
        if saved.get(key) != model_config.get(key)
    }
    if different:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in different.items())
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit this model ({detail}): resume with the recipe that wrote it"
        )
