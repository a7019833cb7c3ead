"""Checking a checkpoint's recorded tensor digests: `spectra-hf verify`, `info`, `convert`, publish verification.

The digests themselves (what is recorded, where, and how it is checked) live in `modeling.checkpoint_digests`, the
one implementation that `from_pretrained` also runs; `Checkpoint` (io.py) runs it for `info` and `convert`.
"""

from __future__ import annotations

import os

from spectra_hf.checkpoints.io import Checkpoint
from spectra_hf.modeling.checkpoint_digests import DigestReport


def verify_checkpoint(path: str | os.PathLike) -> DigestReport:
    """Check the checkpoint directory `path` (complete and consistent, see `Checkpoint`) and every sha256 digest
    that its weight files record for their tensors.

    Returns the report (`report.complete`: every file carried digests and all matched; `report.unrecorded`: files
    without digests; `report.summary()`: one line). Raises CheckpointError naming the tensor whose bytes do not
    match their digest, or the problem that makes `path` unreadable."""
    report = Checkpoint(path).digests
    assert report is not None, "Checkpoint verifies digests by default"
    return report
