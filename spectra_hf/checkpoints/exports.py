"""The layout of a suite directory: what training and quantization write and what publishing reads.

    SUITE_DIR/
      <name>/                      final release export of suite model <name> (e.g. TriLM_99M, QuantLM_99M_4bit):
                                   a from_pretrained-loadable directory (config.json, *.safetensors, tokenizer files)
        spectra_export.json        what this export is (see `ExportInfo`)
        checkpoints/
          planned_steps.json       the steps the training run saves at (written by SpectraTrainer when it starts;
                                   see `read_planned_steps`): a step listed here without its step<N>/ is missing
          step<N>/                 intermediate release export at optimizer step N (published as branch `step<N>`)
            spectra_export.json

Every export directory is complete on its own; it is written under a temporary name and renamed into place,
so a directory that exists is never half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectra_hf.errors import CheckpointError

EXPORT_INFO_FILE = "spectra_export.json"
CHECKPOINTS_DIR = "checkpoints"
# ExportInfo.extra key of what a training run read: {"datasets": [Hub dataset ids], "files": [local file names]}.
TRAINING_DATA_KEY = "training_data"
PLANNED_STEPS_FILE = "planned_steps.json"
_STEP_RE = re.compile(r"^step(\d+)$")


@dataclass
class ExportInfo:
    """Metadata of one export directory.

    Attributes:
        name: suite model name (`TriLM_99M`, `QuantLM_1.1B_4bit`, ...), or a custom name for scaled-down runs.
        family: "trilm", "floatlm" or "quantlm".
        step: optimizer steps done (None for exports that did not come from training, e.g. QuantLMs).
        tokens_seen: training tokens consumed up to `step`.
        format: storage format, e.g. "packed", "latent", "float", "gptq", "unpacked".
        extra: anything else worth recording (recipe, bits, calibration, ...).
    """

    name: str
    family: str
    step: int | None = None
    tokens_seen: int | None = None
    format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        """The Hub branch of an intermediate checkpoint: `step<N>` (Pythia's naming)."""
        return None if self.step is None else f"step{self.step}"


def write_export_info(directory: str | Path, info: ExportInfo) -> None:
    path = Path(directory) / EXPORT_INFO_FILE
    path.write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_export_info(directory: str | Path) -> ExportInfo:
    path = Path(directory) / EXPORT_INFO_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a spectra-hf export: {EXPORT_INFO_FILE} is missing")
    try:
        return ExportInfo(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); re-export this model") from error


def model_dir(suite_dir: str | Path, name: str) -> Path:
    return Path(suite_dir) / name


def checkpoint_dir(suite_dir: str | Path, name: str, step: int) -> Path:
    return Path(suite_dir) / name / CHECKPOINTS_DIR / f"step{step}"


def checkpoint_steps(suite_dir: str | Path, name: str) -> list[int]:
    """Steps of the intermediate checkpoints present for `name`, ascending."""
    root = Path(suite_dir) / name / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    steps = [int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(steps)


@dataclass(frozen=True)
class PlannedSteps:
    """What a training run said it would export: every step with a `checkpoints/step<N>` and the run's length.

    Attributes:
        steps: the optimizer steps that get an intermediate export, ascending.
        max_steps: the optimizer steps of the whole run (its final export is `<name>/` itself).
    """

    steps: list[int]
    max_steps: int


def planned_steps_path(suite_dir: str | Path, name: str) -> Path:
    return Path(suite_dir) / name / CHECKPOINTS_DIR / PLANNED_STEPS_FILE


def write_planned_steps(suite_dir: str | Path, name: str, planned: PlannedSteps) -> Path:
    """Record the steps a run exports at (written to a temporary name, then renamed). Returns the file."""
    path = planned_steps_path(suite_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"steps": sorted(set(planned.steps)), "max_steps": planned.max_steps}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.tmp-", delete=False) as handle:
        handle.write(json.dumps(payload, indent=2) + "\n")
    os.replace(handle.name, path)
    return path


def read_planned_steps(suite_dir: str | Path, name: str) -> PlannedSteps | None:
    """The steps the training run of `name` planned to export at, or None when no run recorded them (an export
    from elsewhere, or one trained before spectra-hf recorded plans). Raises SpectraError if the file is corrupt."""
    path = planned_steps_path(suite_dir, name)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        steps = sorted(int(step) for step in payload["steps"])
        return PlannedSteps(steps=steps, max_steps=int(payload["max_steps"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path} is corrupt ({error}); delete it (resuming the training run rewrites it)"
        ) from error


def missing_checkpoint_steps(suite_dir: str | Path, name: str) -> list[int]:
    """Planned steps (see `read_planned_steps`) without a `checkpoints/step<N>` export; [] when nothing is planned."""
    planned = read_planned_steps(suite_dir, name)
    if planned is None:
        return []
    present = set(checkpoint_steps(suite_dir, name))
    return [step for step in planned.steps if step not in present]


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory to write into; on success it replaces `target`, on error it is removed.

    Readers never see a half-written `target`: either the old one or the complete new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
