"""What a release run holds on disk, measured, and the --max-disk budget enforced while it runs.

Usage is measured, never estimated: every file and folder under the work dir (downloads with their partial files,
conversions, the hash cache, the journal), counted at the larger of its size and its allocated blocks, so the figure
is at least what `du` reports. The run downloads with its own client into the work dir (no cache elsewhere), so
the work dir is all it holds. Before each step that writes (a file's download, a conversion) the budget is checked
against the measured usage plus what the step may add; a sampler thread keeps the measured peak.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from spectra_hf.errors import ConfigError
from spectra_hf.hub.repo_files import human_size


def _held(path: str) -> int:
    try:
        stat = os.lstat(path)
    except FileNotFoundError:  # removed while we looked
        return 0
    return max(stat.st_size, stat.st_blocks * 512)


def directory_bytes(path: Path) -> int:
    """Bytes `path` holds on disk: its files and folders, each at the larger of its size and its blocks."""
    if not path.exists():
        return 0
    total = _held(str(path))
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            total += _held(os.path.join(root, name))
    return total


class DiskBudget:
    """The measured usage of `root` and its peak; `admit` refuses a step that would pass `limit` bytes."""

    def __init__(self, root: Path, *, limit: int | None, interval_s: float = 0.05) -> None:
        self.root, self.limit, self.interval_s = root, limit, interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def measure(self) -> int:
        used = directory_bytes(self.root)
        self.peak = max(self.peak, used)
        return used

    def admit(self, adding: int, *, doing: str) -> None:
        """Refuse (before it starts) a step that may add `adding` bytes when that would pass the budget.

        Raises:
            ConfigError: --max-disk would be passed; what is done stays done and a re-run resumes.
        """
        if self.limit is None:
            return
        used = self.measure()
        if used + adding > self.limit:
            raise ConfigError(
                f"--max-disk {human_size(self.limit)} would be passed: {doing} may add {human_size(adding)} to the "
                f"{human_size(used)} the work dir holds. Stopped before it; everything finished is kept in the "
                "journal: raise --max-disk and re-run with the same --work-dir to resume"
            )

    def __enter__(self) -> DiskBudget:
        self.measure()

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self.measure()

        self._thread = threading.Thread(target=sample, name="disk-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.measure()
