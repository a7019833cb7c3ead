"""Content digests of checkpoint tensors, recorded in each safetensors file's `__metadata__` and checked on read.

Header checks (`checkpoint_checks`) catch truncation and wrong shapes, but not flipped bytes: a packed ternary byte
that still lies in 0..242 decodes to five other digits, and the model loads as a different one. So every file that
Spectra writes for a packed TriLM (`save_pretrained(weight_format="packed")`, `spectra-hf convert`) carries, under
the metadata key `DIGEST_KEY`, a JSON object mapping each of its tensors to the sha256 of that tensor's bytes.

Per tensor rather than per file: a mismatch names the tensor, and the digests stay valid whatever the header
around the bytes looks like (a tensor's bytes are hashed alone, not the file). A file without the key has "no
digests recorded" and still loads; a file with the key must list exactly its tensors.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint_checks import StoredTensor, read_safetensors_file_header, weight_files

DIGEST_KEY = "spectra_sha256"  # __metadata__ key: JSON {tensor name: sha256 hex of its bytes}
_CHUNK = 8 << 20
_FIX = "the file changed after it was written: re-download it, or re-save / re-convert it from its source"


def _hash_range(path: Path, start: int, end: int) -> str:
    """sha256 of bytes [start, end) of `path`, read into one anonymous memory map per call (threads share nothing;
    hashlib releases the GIL). Not into `bytes` from os.pread: on the worker threads, glibc served those 8 MiB buffers
    from per-thread malloc arenas and kept ~31 MiB of them for the life of the process (measured after loading and
    deleting a 99M TriLM: 34.5 MiB of anonymous memory left, 3.1 with this reader)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file, mmap.mmap(-1, min(_CHUNK, max(1, end - start))) as buffer:
        view = memoryview(buffer)
        try:
            file.seek(start)
            offset = start
            while offset < end:
                count = file.readinto(view[: min(len(view), end - offset)])
                if not count:
                    raise OSError(f"corrupt checkpoint file {path}: truncated tensor data; {_FIX}")
                digest.update(view[:count])
                offset += count
        finally:
            view.release()
    return digest.hexdigest()


def tensor_digests(path: str | os.PathLike, entries: dict[str, StoredTensor]) -> dict[str, str]:
    """{name: sha256 hex} of the tensors `entries` (from the file's header) of safetensors file `path`, hashed on up
    to 8 threads."""
    path = Path(path)
    workers = max(1, min(8, os.cpu_count() or 1, len(entries)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = pool.map(lambda entry: _hash_range(path, entry.start, entry.end), entries.values())
        return dict(zip(entries, hashes, strict=True))


@dataclass
class DigestReport:
    """What checking one checkpoint directory's digests found.

    `checked`: tensors whose recorded digest matched; `unrecorded`: weight files that carry no digests;
    `problems`: one line per tensor (or file) that failed, naming it."""

    directory: Path
    files: int = 0
    checked: int = 0
    unrecorded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No recorded digest failed (a checkpoint without digests is ok: nothing recorded, nothing contradicted)."""
        return not self.problems

    @property
    def complete(self) -> bool:
        """Every weight file carried digests and every one matched."""
        return self.ok and self.files > 0 and not self.unrecorded

    def summary(self) -> str:
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return f"{self.directory}: {self.problems[0]}{more}"
        if self.files and len(self.unrecorded) == self.files:
            return f"{self.directory}: no digests recorded ({self.files} weight files): nothing to check"
        partial = f"; {len(self.unrecorded)} of {self.files} files carry no digests" if self.unrecorded else ""
        return f"{self.directory}: {self.checked} tensors checked, every sha256 digest matches{partial}"


def check_file_digests(path: str | os.PathLike, report: DigestReport) -> None:
    """Check one safetensors file's recorded digests into `report`."""
    path = Path(path)
    entries, metadata = read_safetensors_file_header(path)
    report.files += 1
    if DIGEST_KEY not in metadata:
        report.unrecorded.append(path.name)
        return
    try:
        recorded = json.loads(metadata[DIGEST_KEY])
        if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
            raise ValueError("not a JSON object of strings")
    except ValueError as error:
        report.problems.append(f"{path.name}: its digest record ({DIGEST_KEY}) is unreadable ({error}); {_FIX}")
        return
    for name in entries.keys() - recorded.keys():
        report.problems.append(f"tensor {name} in {path.name} has no recorded digest; {_FIX}")
    for name in recorded.keys() - entries.keys():
        report.problems.append(f"tensor {name} has a recorded digest but is not in {path.name}; {_FIX}")
    actual = tensor_digests(path, {name: entries[name] for name in entries if name in recorded})
    for name, digest in actual.items():
        if digest != recorded[name]:
            report.problems.append(
                f"tensor {name} in {path.name} does not match its recorded sha256 digest "
                f"({digest[:12]}... != {recorded[name][:12]}...); {_FIX}"
            )
            continue
        report.checked += 1


def check_digests(directory: str | os.PathLike, *, files: list[Path] | None = None) -> DigestReport:
    """Check the recorded digests of every weight file of checkpoint `directory` (or of `files`)."""
    report = DigestReport(Path(directory))
    for file in weight_files(directory) if files is None else files:
        check_file_digests(file, report)
    return report


def require_digests_match(directory: str | os.PathLike, *, files: list[Path] | None = None) -> DigestReport:
    """`check_digests`, raising OSError naming the first tensor whose bytes do not match their digest."""
    report = check_digests(directory, files=files)
    if not report.ok:
        raise OSError(f"corrupt checkpoint {report.summary()}")
    return report


def record_digests(path: str | os.PathLike) -> None:
    """Rewrite safetensors file `path` with its tensors' digests in `__metadata__` (in one pass: the header's
    length is known before hashing since every digest is 64 hex digits; written to a temporary name, then renamed)."""
    path = Path(path)
    entries, metadata = read_safetensors_file_header(path)
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    data_start = 8 + length

    def encoded(digests: dict[str, str]) -> bytes:
        record = {**metadata, DIGEST_KEY: json.dumps(digests, separators=(",", ":"))}
        text = json.dumps({**header, "__metadata__": record}, separators=(",", ":")).encode()
        return text + b" " * (-len(text) % 8)

    placeholder = encoded(dict.fromkeys(entries, "0" * 64))
    temporary = path.with_name(f".{path.name}.digests.tmp")
    digests: dict[str, str] = {}
    try:
        with open(path, "rb") as source, open(temporary, "wb") as out:
            out.write(struct.pack("<Q", len(placeholder)))
            out.write(placeholder)
            source.seek(data_start)
            for name, entry in sorted(entries.items(), key=lambda item: item[1].start):
                digest, remaining = hashlib.sha256(), entry.end - entry.start
                while remaining:
                    chunk = source.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise OSError(f"corrupt checkpoint file {path}: truncated tensor data; {_FIX}")
                    digest.update(chunk)
                    out.write(chunk)
                    remaining -= len(chunk)
                digests[name] = digest.hexdigest()
            final = encoded({name: digests[name] for name in entries})
            assert len(final) == len(placeholder), "a digest is always 64 hex digits"
            out.seek(8)
            out.write(final)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def record_checkpoint_digests(directory: str | os.PathLike, *, missing_only: bool = False) -> None:
    """`record_digests` on every weight file of checkpoint `directory` (with `missing_only`, on those without)."""
    for file in weight_files(directory):
        if not (missing_only and DIGEST_KEY in read_safetensors_file_header(file)[1]):
            record_digests(file)
