"""Stage records: when a demo stage counts as finished, checked against what is on disk.

When a stage ends without error, `WORKDIR/stages/<stage>.json` records the sha256 of every file it wrote (its
outputs, `stage_outputs`) and the digest of what it started from (`upstream`: the previous stage's record digest;
for `prepare`, the digest of the requested settings). A later run reuses the stage only when

- its record exists and parses,
- its `upstream` equals the current one (the stages before it were reused, or re-ran and wrote the same bytes), and
- every recorded file still exists with its recorded sha256, and the outputs hold no other file.

Anything else re-runs the stage, saying why. The mere existence of a folder proves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from spectra_hf.workdir_lock import LOCK_FILE

from .config import DemoConfig, DemoPaths

# Written inside the outputs by the tools themselves, not part of what a stage produced.
_IGNORED_NAMES = frozenset({LOCK_FILE})


def stage_outputs(stage: str, paths: DemoPaths, config: DemoConfig) -> list[Path]:
    """The files and folders `stage` writes (and later stages read)."""
    trained = [paths.suite / config.name(family) for family in ("trilm", "floatlm")]
    outputs = {
        "prepare": [paths.config, paths.data, paths.tokenizer, paths.workdir / "init"],
        "train": trained,
        "quantize": [paths.suite / name for name in config.quantlm_names],
        "evaluate": [paths.evals],
        "publish": [paths.hub],
        "loadback": [paths.loadback],
    }
    return outputs[stage]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(outputs: list[Path], *, root: Path) -> dict[str, str]:
    """sha256 of every file under `outputs`, keyed by its path relative to `root` (missing outputs give none)."""
    files: dict[str, str] = {}
    for output in outputs:
        found = [output] if output.is_file() else sorted(p for p in output.rglob("*") if p.is_file())
        for path in found:
            if path.name not in _IGNORED_NAMES:
                files[path.relative_to(root).as_posix()] = _sha256(path)
    return dict(sorted(files.items()))


def digest_of(value: object) -> str:
    """sha256 of `value` as canonical JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StageRecord:
    """What a finished stage wrote (see the module docstring).

    Attributes:
        stage: the stage's name.
        upstream: digest of what it started from.
        files: sha256 of every output file, by path relative to the work directory.
    """

    stage: str
    upstream: str
    files: dict[str, str]

    @property
    def digest(self) -> str:
        """What the next stage records as its `upstream`."""
        return digest_of(asdict(self))


def record_path(paths: DemoPaths, stage: str) -> Path:
    return paths.records / f"{stage}.json"


def write_record(paths: DemoPaths, config: DemoConfig, stage: str, *, upstream: str) -> StageRecord:
    """Record `stage` as finished from `upstream` with the outputs now on disk (temp file, then rename)."""
    record = StageRecord(
        stage=stage, upstream=upstream, files=fingerprint(stage_outputs(stage, paths, config), root=paths.workdir)
    )
    paths.records.mkdir(parents=True, exist_ok=True)
    path = record_path(paths, stage)
    with tempfile.NamedTemporaryFile("w", dir=paths.records, prefix=f".{path.name}.tmp-", delete=False) as handle:
        handle.write(json.dumps(asdict(record), indent=2) + "\n")
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile makes it 0600; the record is as readable as the outputs
    os.replace(handle.name, path)
    return record


def discard_record(paths: DemoPaths, stage: str) -> None:
    """Forget that `stage` finished (done before it runs, so an interrupted run is never taken as finished)."""
    record_path(paths, stage).unlink(missing_ok=True)


def check_record(
    paths: DemoPaths, config: DemoConfig, stage: str, *, upstream: str | None
) -> tuple[StageRecord | None, str]:
    """(the record, "") when `stage` may be reused from `upstream`; else (None, why it must run)."""
    path = record_path(paths, stage)
    if not path.is_file():
        return None, "not finished before"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        record = StageRecord(stage=values["stage"], upstream=values["upstream"], files=dict(values["files"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"its record {path} is unreadable ({error.__class__.__name__})"
    if record.stage != stage or upstream is None or record.upstream != upstream:
        return None, "what it was made from changed (an earlier stage re-ran with a different result, or new settings)"
    current = fingerprint(stage_outputs(stage, paths, config), root=paths.workdir)
    changed = sorted(
        name for name in record.files.keys() | current.keys() if record.files.get(name) != current.get(name)
    )
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return None, f"its outputs changed since it finished ({', '.join(changed[:3])}{more})"
    return record, ""
