"""Content-addressed blob storage: every file's bytes live once, under their sha256, whatever repo holds them.

Also the LFS pointer file that stands in git for an LFS file: its git blob sha1 (huggingface_hub's `git_hash`, as
for a regular file) is the file's tree `oid`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import bad_request


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class BlobStore:
    """Blobs under `root/sha256/ab/cdef...`; writes go through `root/tmp` and an atomic rename."""

    def __init__(self, root: Path):
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def put(self, chunks: Iterable[bytes], expected_sha256: str | None = None, expected_size: int | None = None) -> str:
        """Store the bytes of `chunks` and return their sha256; refuse (400) bytes that do not match what was announced."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise bad_request(f"Uploaded content has sha256 {sha256}, not the announced {expected_sha256}.")
            if expected_size is not None and size != expected_size:
                raise bad_request(f"Uploaded content has {size} bytes, not the announced {expected_size}.")
            target = self.path(sha256)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            return sha256
        finally:
            Path(tmp).unlink(missing_ok=True)
