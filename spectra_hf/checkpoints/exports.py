"""The layout of a suite directory: what training and quantization write and what publishing reads.

    SUITE_DIR/
      <name>/                      final release export of suite model <name> (e.g. TriLM_99M, QuantLM_99M_4bit):
                                   a from_pretrained-loadable directory (config.json, *.safetensors, tokenizer files)
        spectra_export.json        what this export is (see `ExportInfo`)
        checkpoints/
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

from spectra_hf.errors import SpectraError

EXPORT_INFO_FILE = "spectra_export.json"
CHECKPOINTS_DIR = "checkpoints"
# ExportInfo.extra key of what a training run read: {"datasets": [Hub dataset ids], "files": [local file names]}.
TRAINING_DATA_KEY = "training_data"
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
        raise SpectraError(f"{directory} is not a spectra-hf export: {EXPORT_INFO_FILE} is missing")
    try:
        return ExportInfo(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as error:
        raise SpectraError(f"{path} is corrupt ({error}); re-export this model") from error


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
