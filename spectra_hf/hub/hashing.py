"""Content hashes of the files a branch is made of: sha256 (what LFS stores) and the git blob sha1 (what the Hub
lists for small files), computed in one read pass and remembered across runs in a cache file."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from spectra_hf.hub.repo_files import PlanFile

HASH_CACHE = "hashes.json"  # under SUITE_DIR/.publish-staging


class FileHashes:
    """sha256 and git blob sha1 of plan files (one read pass per file), remembered across runs.

    Re-running over a real suite (hundreds of GB) must not re-read every file: hashes of local files are kept in
    `cache_file` keyed by path and the file's (size, mtime_ns, ctime_ns, inode, device), and reused while all of
    those are unchanged. mtime alone is not enough: `cp -p`, `rsync -t` and `tar` rewrite a file and put its old
    mtime back, but none of them can restore its ctime. Verification after publishing checks content anyway.
    """

    def __init__(self, cache_file: Path | None = None) -> None:
        self._file = cache_file
        self._cache: dict[str, list] = {}
        if cache_file is not None and cache_file.is_file():
            try:
                self._cache = json.loads(cache_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                self._cache = {}  # a damaged cache only costs re-hashing
        self._dirty = False

    def of(self, file: PlanFile) -> tuple[str, str]:
        """(sha256, git blob sha1) of `file`'s content, from the cache while its local file is unchanged."""
        if file.content is not None:
            return _digest(file)
        local_path = _local_path(file)
        stat = local_path.stat()
        key = str(local_path.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]
        cached = self._cache.get(key)
        if cached is None or cached[: len(stamp)] != stamp:
            cached = [*stamp, *_digest(file)]
            self._cache[key] = cached
            self._dirty = True
        return cached[-2], cached[-1]

    def forget(self, file: PlanFile) -> None:
        """Drop a file's cached hashes (its content did not match them)."""
        if file.local_path is not None and self._cache.pop(str(file.local_path.resolve()), None) is not None:
            self._dirty = True

    def save(self) -> None:
        """Write the cache file (atomically), if anything was hashed since it was read."""
        if self._file is None or not self._dirty:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        staging = self._file.with_name(f".{self._file.name}.tmp-{os.getpid()}")
        staging.write_text(json.dumps(self._cache), encoding="utf-8")
        os.replace(staging, self._file)
        self._dirty = False


def _local_path(file: PlanFile) -> Path:
    """The file on disk behind a planned file without generated content."""
    # publish() refuses plans with estimated files (neither content nor a local path) before hashing anything.
    assert file.local_path is not None, f"{file.path_in_repo} is an estimated file: it has no local copy"
    return file.local_path


def _digest(file: PlanFile) -> tuple[str, str]:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    sha1.update(b"blob %d\0" % file.size)
    for chunk in _chunks(file):
        sha256.update(chunk)
        sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _chunks(file: PlanFile, size: int = 1 << 22) -> Iterator[bytes]:
    if file.content is not None:
        yield file.content
        return
    with open(_local_path(file), "rb") as handle:
        while chunk := handle.read(size):
            yield chunk
