"""One process per work directory: an exclusive lock file naming the process that holds it.

`workdir_lock(directory, command=...)` takes `directory/.spectra-hf.lock` for the duration of a `with` block:

- the lock is an exclusive `fcntl.flock` on that file, which the kernel drops when the holder exits in any way
  (kill -9 included), so a lock is held exactly as long as its process lives;
- the file holds the holder's pid, host and command (JSON), so a refused process can name it;
- a second process is refused at once with `OutputExistsError` naming the first one's pid (the work directory's
  outputs belong to a running process: writing there would destroy or mix them);
- a lock file left by a process that no longer holds it (a killed run) is taken over with a warning naming it;
- the holder removes the file when it leaves the block.

Without `fcntl` (not POSIX) the file is created with O_EXCL instead, and one naming a pid that is not alive on this
host is taken over. The lock is advisory: it keeps spectra-hf commands apart, not other programs.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from spectra_hf.errors import OutputExistsError

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:
    fcntl = None

LOCK_FILE = ".spectra-hf.lock"


def _logger():
    """transformers' logger for this module, imported on use (the command line imports this module without
    transformers)."""
    from transformers.utils import logging

    return logging.get_logger(__name__)


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a work directory's lock.

    Attributes:
        pid: the process id.
        host: the host name it ran on.
        command: what it runs, e.g. "spectra-hf demo" (shown to a refused process).
    """

    pid: int
    host: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command})"


def read_lock_holder(directory: str | os.PathLike) -> LockHolder | None:
    """The holder recorded in `directory`'s lock file, or None when there is none or it is unreadable (a process
    killed while writing it)."""
    path = Path(directory) / LOCK_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(pid=int(values["pid"]), host=str(values["host"]), command=str(values["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _refuse(directory: Path, holder: LockHolder | None) -> OutputExistsError:
    who = holder.describe() if holder is not None else "another process (it has not written its pid yet)"
    return OutputExistsError(
        f"{directory} is in use by {who}: wait for it to finish or stop it, or use another directory"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open_locked(path: Path) -> int | None:
    """An fd of `path` holding its exclusive flock, or None when another process holds it."""
    assert fcntl is not None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # The holder unlinks the file before it lets go: a lock on an unlinked file guards nothing, so try again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _open_exclusive(path: Path, directory: Path) -> int:
    """Without fcntl: create `path` with O_EXCL, taking over a file naming a pid that is not alive on this host."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_lock_holder(directory)
            if holder is None or holder.host != socket.gethostname() or _pid_alive(holder.pid):
                raise _refuse(directory, holder) from None
            _logger().warning(
                "taking over the lock of %s left by %s, which is no longer running", directory, holder.describe()
            )
            path.unlink(missing_ok=True)


@contextmanager
def workdir_lock(directory: str | os.PathLike, *, command: str | None = None) -> Iterator[LockHolder]:
    """Hold `directory`'s lock for the block (see the module docstring); the directory is created if needed.

    Raises `OutputExistsError` naming the holder when another live process holds it. Yields this process's record.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    me = LockHolder(
        pid=os.getpid(), host=socket.gethostname(), command=command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    )
    if fcntl is not None:
        fd = _open_locked(path)
        if fd is None:
            raise _refuse(directory, read_lock_holder(directory))
        previous = read_lock_holder(directory)
        if previous is not None:
            _logger().warning(
                "%s was locked by %s, which no longer holds it (killed?): taking it over",
                directory,
                previous.describe(),
            )
    else:
        fd = _open_exclusive(path, directory)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(asdict(me)) + "\n").encode("utf-8"))
        yield me
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding the lock: nobody can take an unlinked lock for a live one
        os.close(fd)
