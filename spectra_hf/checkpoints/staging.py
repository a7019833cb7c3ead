"""Output directories written under a staging name and renamed into place, safe against interrupted runs.

A staging folder `.<name>.tmp-<random>` next to the target carries `INCOMPLETE_MARKER` from its first moment until
after it has been renamed into place, and every loader refuses a directory carrying it (`modeling.checkpoint_checks`),
so a staging folder never passes for a checkpoint. While it works, the writer holds an exclusive `flock` on that
marker; the kernel drops the lock when the writer exits in any way (kill -9 included). A later run for the same
target removes the staging folders whose marker nobody holds: provably ours (the marker) and provably abandoned
(no live lock). Folders without the marker are never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from transformers.utils import logging

from spectra_hf.errors import OutputExistsError
from spectra_hf.modeling.checkpoint_checks import INCOMPLETE_MARKER

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # not POSIX: no locks, so no staging folder can be proven abandoned and none is removed
    fcntl = None

logger = logging.get_logger(__name__)


def staging_prefix(target: Path) -> str:
    """Name prefix of the staging folders (and retired copies) of `target`."""
    return f".{target.name}.tmp-"


def _lock(path: Path, *, blocking: bool) -> int | None:
    """An fd holding an exclusive flock on `path`, or None if another process holds it (never None if blocking)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def abandoned_staging(target: str | os.PathLike) -> list[Path]:
    """The staging folders (and retired copies) of `target` that carry the marker and whose writer is gone (no live
    lock on the marker): what `remove_stale_staging` removes. Empty without fcntl (nothing can be proven)."""
    target = Path(target)
    found: list[Path] = []
    if fcntl is None or not target.parent.is_dir():
        return found
    for candidate in sorted(target.parent.iterdir()):
        marker = candidate / INCOMPLETE_MARKER
        if not candidate.name.startswith(staging_prefix(target)) or candidate.is_symlink() or not marker.is_file():
            continue
        fd = _lock(marker, blocking=False)
        if fd is not None:  # None: a live writer holds it
            os.close(fd)
            found.append(candidate)
    return found


def remove_stale_staging(target: str | os.PathLike) -> list[Path]:
    """Remove the abandoned staging folders of `target` (see the module docstring); returns the removed paths."""
    removed: list[Path] = []
    for candidate in abandoned_staging(target):
        fd = _lock(candidate / INCOMPLETE_MARKER, blocking=False)
        if fd is None:
            continue  # a writer took it since (cannot happen to a staging name, which is never reused)
        try:
            shutil.rmtree(candidate)
        finally:
            os.close(fd)
        logger.warning("removed %s, left behind by an interrupted run", candidate)
        removed.append(candidate)
    return removed


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Serializes the final renames of writers in `directory` (a flock on the directory itself)."""
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def staged_directory(target: str | os.PathLike, *, replace: bool) -> Iterator[Path]:
    """Yield a fresh staging folder for `target`; when the block ends without error it becomes `target`.

    `replace`: `target` may exist and is replaced (the caller has checked it may be); without it, a `target` that is
    not an empty directory when the block ends raises OutputExistsError and nothing is moved. On error the staging
    folder is removed; after a kill it is removed by the next run (`remove_stale_staging`). Readers never see a
    half-written `target`, and a replaced one is removed only once the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = target.with_name(f"{staging_prefix(target)}{secrets.token_hex(6)}")
    staging.mkdir()  # the usual permissions (umask), unlike mkdtemp's 0700: it becomes the output as it is
    # Lock the marker under another name, then rename it in: a cleaner never sees it unlocked while we live.
    fd = _lock(staging / f"{INCOMPLETE_MARKER}.new", blocking=True)
    assert fd is not None, "a blocking lock always returns an fd"
    try:
        os.replace(staging / f"{INCOMPLETE_MARKER}.new", staging / INCOMPLETE_MARKER)
        yield staging
        retired = None
        with _directory_lock(target.parent):
            if replace and target.exists():
                # Marked first: if we are killed between the renames, the old copy is a removable staging folder.
                (target / INCOMPLETE_MARKER).touch()
                retired = target.with_name(f"{staging_prefix(target)}old-{secrets.token_hex(6)}")
                os.rename(target, retired)
            try:
                os.rename(staging, target)  # replaces an empty directory, refuses a non-empty one
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
                raise OutputExistsError(
                    f"{target} appeared while writing it and is not empty: nothing was replaced; remove it or "
                    "choose another output"
                ) from error
        (target / INCOMPLETE_MARKER).unlink()
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
