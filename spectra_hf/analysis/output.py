"""Writing the analysis outputs: tables as CSV and Parquet, figures as PNG, each to a temporary name then renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from spectra_hf.errors import OutputExistsError


def prepare_output_dir(directory: str | Path, names: Iterable[str], *, overwrite: bool) -> Path:
    """Create `directory`; refuse (OutputExistsError) if any of `names` is already there, unless `overwrite`."""
    directory = Path(directory).expanduser()
    existing = [name for name in names if (directory / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{directory} already holds {', '.join(existing)}: pass --overwrite to replace them, or another --out"
        )
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def write_atomic(path: Path, write: Callable[[str], Any]) -> Path:
    """Call `write(temporary_path)`, then rename the temporary file to `path` (removed if `write` fails)."""
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(staging)
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get a plain file's permissions
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def write_table(frame: Any, directory: Path, stem: str, *, parquet: bool = True) -> list[Path]:
    """`frame` as `<stem>.csv` (and `<stem>.parquet`) in `directory`."""
    written = [write_atomic(directory / f"{stem}.csv", lambda tmp: frame.to_csv(tmp, index=False))]
    if parquet:
        written.append(write_atomic(directory / f"{stem}.parquet", lambda tmp: frame.to_parquet(tmp, index=False)))
    return written


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
