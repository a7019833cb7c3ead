"""Checking a checkpoint's recorded tensor digests: `spectra-hf verify`, `info`, `convert`, publish verification.

The digests themselves (what is recorded, where, and how it is checked) live in `modeling.checkpoint_digests`, the
one implementation that `from_pretrained` also runs; `Checkpoint` (io.py) runs it for `info` and `convert`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from spectra_hf.checkpoints.io import Checkpoint
from spectra_hf.errors import CheckpointError
from spectra_hf.modeling.checkpoint_digests import DigestReport, check_digests


def verify_checkpoint(path: str | os.PathLike) -> DigestReport:
    """Check the checkpoint directory `path` (complete and consistent, see `Checkpoint`) and every sha256 digest
    that its weight files record for their tensors.

    Returns the report (`report.complete`: every file carried digests and all matched; `report.unrecorded`: files
    without digests; `report.summary()`: one line). Raises CheckpointError naming the tensor whose bytes do not
    match their digest, or the problem that makes `path` unreadable."""
    report = Checkpoint(path).digests
    assert report is not None, "Checkpoint verifies digests by default"
    return report


def verify_weight_files(files: Iterable[str | os.PathLike]) -> DigestReport:
    """Check the recorded sha256 digests of the given safetensors files, of any model (publish verification runs
    it on every branch's local weights). Mismatches are in `report.problems`; CheckpointError for an unreadable
    file."""
    paths = [Path(file) for file in files]
    try:
        return check_digests(paths[0].parent if paths else Path("."), files=paths)
    except OSError as error:
        raise CheckpointError(str(error)) from error
