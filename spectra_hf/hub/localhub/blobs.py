"""Content-addressed blob storage: every file's bytes live once, under their sha256, whatever repo holds them.

Blobs are checked against their name: when written (the bytes must hash to the announced sha256), and before they
are served or offered as already stored (`verified`). Re-hashing a multi-GB blob per download would be slow, so a
blob that hashed right is remembered with its (size, mtime_ns, ctime_ns, inode) stamp and re-hashed only when the
stamp changes; ctime cannot be set back by `touch -d`/`os.utime`, so rewriting a blob in place always shows. A blob
that does not hash to its name is moved to `root/corrupt/` (kept for inspection, never served), so the next upload
of the good bytes stores it again.

Also the LFS pointer file that stands in git for an LFS file: its git blob sha1 (huggingface_hub's `git_hash`, as
for a regular file) is the file's tree `oid`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from .errors import ErrorResponse, bad_request

_HASH_CHUNK = 1 << 22


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _stamp(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


def corrupt_blob(sha256: str, path_in_repo: str | None = None) -> ErrorResponse:
    """409 for a stored blob whose bytes no longer hash to its name (disk damage, someone edited the store).

    A server-side fault, but not a 5xx: huggingface_hub retries 5xx answers to HEAD /resolve/ for 23 s and then
    reports a cache miss; a 4xx reaches the user at once with this message.
    """
    what = f"{path_in_repo!r} (sha256 {sha256})" if path_in_repo else f"blob {sha256}"
    return ErrorResponse(
        409,
        f"The stored content of {what} is corrupt on this local Hub (its bytes no longer match their sha256) and "
        "was set aside: upload the file again (re-running `spectra-hf publish` repairs it).",
        code="CorruptContent",
    )


class BlobStore:
    """Blobs under `root/sha256/ab/cdef...`; writes go through `root/tmp` and an atomic rename."""

    def __init__(self, root: Path):
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._corrupt = root / "corrupt"
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[int, int, int, int]] = {}  # sha256 -> stamp of the copy that hashed right
        self.rehashed = 0  # blobs hashed in full since start (counters for tests and benchmarks)
        self.corrupt_found = 0

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        """A file of that name is stored (whether or not its bytes are right): for bookkeeping, not for serving."""
        return self.path(sha256).is_file()

    def has(self, sha256: str) -> bool:
        """A good copy is stored: the file exists and its bytes hash to `sha256` (see `verified`)."""
        return self.verified(sha256)

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def verified(self, sha256: str) -> bool:
        """True when the stored blob's bytes hash to `sha256`; a blob that does not is set aside (False)."""
        path = self.path(sha256)
        for _ in range(3):  # a blob replaced while we hash it (a concurrent upload) is judged again
            try:
                stamp = _stamp(path.stat())
            except FileNotFoundError:
                return False
            with self._lock:
                if self._verified.get(sha256) == stamp:
                    return True
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    while chunk := handle.read(_HASH_CHUNK):
                        digest.update(chunk)
                after = _stamp(path.stat())
            except FileNotFoundError:
                return False
            if after != stamp:
                continue
            with self._lock:
                self.rehashed += 1
                if digest.hexdigest() == sha256:
                    self._verified[sha256] = stamp
                    return True
                self._verified.pop(sha256, None)
                try:
                    if _stamp(path.stat()) != stamp:
                        continue  # a good copy was installed meanwhile
                    self._corrupt.mkdir(parents=True, exist_ok=True)
                    os.replace(path, self._corrupt / f"{sha256}.{time.time_ns()}")
                    self.corrupt_found += 1
                except FileNotFoundError:
                    pass
                return False
        return False

    def good_path(self, sha256: str, path_in_repo: str | None = None) -> Path:
        """The blob's file, after checking its bytes; 409 (CorruptContent) when they no longer match."""
        if not self.verified(sha256):
            raise corrupt_blob(sha256, path_in_repo)
        return self.path(sha256)

    def read_text(self, sha256: str, path_in_repo: str | None = None) -> str:
        return self.good_path(sha256, path_in_repo).read_text(encoding="utf-8", errors="replace")

    def put(self, chunks: Iterable[bytes], expected_sha256: str | None = None, expected_size: int | None = None) -> str:
        """Store the bytes of `chunks` and return their sha256; refuse (400) bytes that do not match what was
        announced."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    if expected_size is not None and size > expected_size:
                        raise bad_request(f"Uploaded content is longer than the announced {expected_size} bytes.")
                    handle.write(chunk)
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise bad_request(f"Uploaded content has sha256 {sha256}, not the announced {expected_sha256}.")
            if expected_size is not None and size != expected_size:
                raise bad_request(f"Uploaded content has {size} bytes, not the announced {expected_size}.")
            self._install(tmp, sha256)
            return sha256
        finally:
            Path(tmp).unlink(missing_ok=True)

    def put_bytes(self, data: bytes, sha256: str) -> None:
        """Store `data`, already hashed by the caller to `sha256` (inline commit files, written once the commit is
        valid)."""
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            self._install(tmp, sha256)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _install(self, tmp: str, sha256: str) -> None:
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:  # never interleaved with setting a corrupt copy aside
            os.replace(tmp, target)
            self._verified[sha256] = _stamp(target.stat())  # hashed on the way in
