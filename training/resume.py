"""Which `checkpoint-<step>` directories a run can resume from, and putting back what an interrupted export moved.

A Trainer checkpoint is **complete** when its `trainer_state.json` parses as JSON and records the `global_step` its
folder is named after. transformers writes that file last (after the weights, config, optimizer, scheduler, scaler
and RNG states, each written by a call that returned before it starts), so a save interrupted at any moment leaves
either no such file or one that does not parse. Stock Trainer checkpoints follow the same rule, so they qualify too.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from spectra_hf.checkpoints.exports import CHECKPOINTS_DIR
from spectra_hf.checkpoints.staging import abandoned_staging

logger = logging.get_logger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a `checkpoint-N` directory name, else None."""
    text = Path(path).name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
    return int(text) if text != Path(path).name and text.isdigit() else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a complete Trainer checkpoint (module docstring)."""
    path = Path(path)
    step = checkpoint_step(path)
    if step is None or not path.is_dir():
        return False
    try:
        state = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and state.get("global_step") == step


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete `checkpoint-<step>` directories of `output_dir`, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if checkpoint_step(p) is not None and is_complete_checkpoint(p)]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `resume_from_checkpoint=True` resumes from: the newest complete one, or None (train from
    scratch). Incomplete checkpoints newer than it (a save that was interrupted) are removed, as they would otherwise
    be mixed with the files of the save that replaces them; the log says which checkpoint was chosen and why."""
    output_dir = Path(output_dir)
    complete = complete_checkpoints(output_dir)
    newest = complete[-1] if complete else None
    newest_step = checkpoint_step(newest) if newest is not None else -1
    assert newest_step is not None
    incomplete = (
        []
        if not output_dir.is_dir()
        else sorted(
            (p for p in output_dir.iterdir() if p.is_dir() and (checkpoint_step(p) or -1) > newest_step),
            key=lambda p: checkpoint_step(p) or 0,
        )
    )
    for path in incomplete:
        logger.warning(
            "SpectraTrainer: %s is incomplete (no %s naming its step: its save was interrupted); removing it",
            path,
            TRAINER_STATE_FILE,
        )
        shutil.rmtree(path)
    if newest is None:
        logger.warning("SpectraTrainer: no complete checkpoint in %s: training from scratch", output_dir)
    else:
        logger.warning("SpectraTrainer: resuming from %s, the newest complete checkpoint", newest)
    return newest


def recover_moved_checkpoints(target: str | os.PathLike) -> list[Path]:
    """Put back the `checkpoints/` exports that an interrupted replacement of the release export `target` had moved
    into a staging folder (or a retired copy) of it: each `step<N>` folder that `target/checkpoints/` lacks is moved
    back. Run before the abandoned staging folders are removed. Returns the folders moved back."""
    target = Path(target)
    moved: list[Path] = []
    for staging in abandoned_staging(target):
        source = staging / CHECKPOINTS_DIR
        if not source.is_dir():
            continue
        destination = target / CHECKPOINTS_DIR
        destination.mkdir(parents=True, exist_ok=True)
        for entry in sorted(source.iterdir()):
            if not (destination / entry.name).exists():
                os.replace(entry, destination / entry.name)
                moved.append(destination / entry.name)
    if moved:
        logger.warning(
            "SpectraTrainer: moved %s back into %s from an export that was interrupted while replacing it",
            ", ".join(p.name for p in moved),
            target / CHECKPOINTS_DIR,
        )
    return moved
