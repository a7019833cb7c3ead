"""The journal of a release run: one JSON line per finished step of a revision, appended and fsynced.

A kill at any moment leaves the journal a prefix of what happened. A kill mid-write leaves a torn last line (no
final newline): it is dropped with a warning and cut from the file, so the next record starts on a line of its own.
Any other line that is not a well-formed record (bad JSON, invalid UTF-8, a missing key, a value of the wrong type)
is refused with one error naming the file and the line, and the way out: `--rebuild-journal` rebuilds it from what
the target Hub really holds (release.verify).

A revision whose last entry is `published` (or `imported`) is done and is not processed again unless the final
check (release.verify) finds the target does not hold it; any other revision is redone from its download, whose
partial files are resumed. Publishing itself is idempotent (a branch is committed only when its remote tree
differs), so a revision killed between its commit and its journal entry costs no second commit on the re-run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers.utils import logging

from spectra_hf.errors import CheckpointError

logger = logging.get_logger(__name__)

JOURNAL_FILE = "journal.jsonl"
DONE_STATES = ("published", "imported")
STATES = ("downloaded", "converted", "refused", "unverified", *DONE_STATES)
# Types of the details a record may carry; `key` and `state` are required strings.
_DETAIL_TYPES: dict[str, type] = {
    "conversion": str,
    "reason": str,
    "path": str,
    "repo": str,
    "branch": str,
    "commit": str,
    "source_commit": str,
    "checks": list,
    "warnings": list,
    "files": dict,
}


def _record_problem(entry: Any) -> str | None:
    """Why `entry` (a parsed line) is not a journal record; None when it is one."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    for name in ("key", "state"):
        if not isinstance(entry.get(name), str):
            return f"no string {name!r}"
    if entry["state"] not in STATES:
        return f"unknown state {entry['state']!r}"
    for name, kind in _DETAIL_TYPES.items():
        if name in entry and not isinstance(entry[name], kind):
            return f"{name!r} is a {type(entry[name]).__name__}, not a {kind.__name__}"
    for name in ("checks", "warnings"):
        if not all(isinstance(item, str) for item in entry.get(name, [])):
            return f"{name!r} holds a value that is not a string"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in entry.get("files", {}).items()):
        return "'files' is not a map of path -> sha256"
    if entry["state"] in DONE_STATES and "files" not in entry:
        return f"a {entry['state']!r} record without 'files'"
    return None


class Journal:
    """Append-only record of revision states, keyed by `repo@revision` of the release.

    Raises (on reading):
        CheckpointError: a line other than a torn last one is not a journal record (names the file and line).
    """

    def __init__(self, path: str | os.PathLike, *, load: bool = True) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if load and self.path.is_file():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # after the last newline: empty, or what a kill cut short
        if torn:
            logger.warning(
                f"{self.path}: dropped a torn last line ({len(torn)} bytes, a record a kill cut short); "
                "its step is redone"
            )
            with open(self.path, "r+b") as handle:  # so the next record does not land glued onto it
                handle.truncate(len(data) - len(torn))
                os.fsync(handle.fileno())
        for number, raw in enumerate(lines, start=1):
            try:
                entry = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problem: str | None = "invalid UTF-8"
            except json.JSONDecodeError as error:
                problem = f"not JSON ({error.msg} at column {error.colno})"
            else:
                problem = _record_problem(entry)
            if problem is not None:
                raise CheckpointError(
                    f"{self.path} line {number} is not a journal record: {problem}. The journal says what this work "
                    "dir already published: re-run with --rebuild-journal to rebuild it from the target Hub (the "
                    "damaged file is kept beside it), or remove it to redo every revision"
                )
            self.entries[entry["key"]] = entry

    def state(self, key: str) -> str | None:
        entry = self.entries.get(key)
        return entry["state"] if entry else None

    def done(self, key: str) -> bool:
        return self.state(key) in DONE_STATES

    def record(self, key: str, state: str, **details: Any) -> dict[str, Any]:
        """Append `state` for `key` (with details such as sha256s and checks) and make it durable."""
        entry = {"key": key, "state": state, **details}
        assert _record_problem(entry) is None, f"malformed journal record {entry}: {_record_problem(entry)}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries[key] = entry
        return entry

    def replace(self, entries: list[dict[str, Any]]) -> Path | None:
        """Write a new journal holding `entries` (temporary name, then rename); the old file, if any, is kept as
        `<journal>.damaged` and its path returned."""
        staging = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries), encoding="utf-8")
        kept = None
        if self.path.is_file():
            kept = self.path.with_name(self.path.name + ".damaged")
            os.replace(self.path, kept)
        os.replace(staging, self.path)
        self.entries = {e["key"]: e for e in entries}
        return kept
