"""The journal of a release run: one JSON line per finished step of a revision, appended and fsynced.

A kill at any moment leaves the journal a prefix of what happened (a torn last line is ignored). A revision whose
last entry is `published` (or `imported`) is done and is never processed again; any other revision is redone from
its download, whose partial files huggingface_hub resumes. Publishing itself is idempotent (a branch is committed
only when its remote tree differs), so a revision killed between its commit and its journal entry costs no second
commit on the re-run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

JOURNAL_FILE = "journal.jsonl"
DONE_STATES = ("published", "imported")


class Journal:
    """Append-only record of revision states, keyed by `repo@revision` of the release."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a kill cut short
                self.entries[entry["key"]] = entry

    def state(self, key: str) -> str | None:
        entry = self.entries.get(key)
        return entry["state"] if entry else None

    def done(self, key: str) -> bool:
        return self.state(key) in DONE_STATES

    def record(self, key: str, state: str, **details: Any) -> dict[str, Any]:
        """Append `state` for `key` (with details such as sha256s and checks) and make it durable."""
        entry = {"key": key, "state": state, **details}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries[key] = entry
        return entry
