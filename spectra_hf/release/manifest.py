"""The manifest of a release run: every release revision, what it became, and proof of it.

For each revision of the release: the release commit whose bytes were converted, the new repo, branch and the commit
it was checked at, the conversion and the checks it passed, warnings, and the sha256 of every published file (each
confirmed on the target by release.verify before the row says `published`; a row that did not confirm says
`unverified` with the reason); revisions that were refused or are missing carry the reason. The document is a
function of the release and the journal only (no times, no paths of this machine), so runs that end in the same
state write the same bytes, and publishing it again makes no commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spectra_hf.release.discovery import Discovery
from spectra_hf.release.journal import DONE_STATES, Journal

MANIFEST_FILE = "manifest.json"
MANIFEST_REPO = "spectra-release-manifest"
FORMAT_VERSION = 1


def build_manifest(discovery: Discovery, journal: Journal, *, target_org: str | None, mode: str) -> dict[str, Any]:
    """The manifest document for the revisions of `discovery`, their state taken from `journal`."""
    rows, refused, pending, unverified = [], [], [], []
    for revision in discovery.revisions:
        entry = journal.entries.get(revision.key, {})
        state = entry.get("state", "pending")
        if state in DONE_STATES and entry.get("source_commit") != revision.source_commit:
            state = "pending"  # done for another commit of the release branch: not this one
        row: dict[str, Any] = {
            "release": {
                "repo": revision.source_repo,
                "revision": revision.source_revision,
                "commit": revision.source_commit,
            },
            "model": revision.model.name,
            "step": revision.step,
            "tokens_seen": revision.tokens_seen,
            "release_bytes": revision.size,
            "status": state if state in (*DONE_STATES, "refused", "unverified") else "pending",
        }
        if target_org is not None:
            row["repo"] = f"{target_org}/{revision.model.name}"
            row["branch"] = revision.branch
        if row["status"] != "pending":
            for key in ("conversion", "checks", "warnings", "files", "path", "reason", "commit"):
                if key in entry:
                    row[key] = entry[key]
        rows.append(row)
        if row["status"] == "refused":
            refused.append({"revision": revision.key, "reason": entry.get("reason", "")})
        elif row["status"] == "unverified":
            unverified.append({"revision": revision.key, "reason": entry.get("reason", "")})
        elif row["status"] == "pending":
            pending.append(revision.key)
    return {
        "format": FORMAT_VERSION,
        "mode": mode,
        "source_org": discovery.source_org,
        "target_org": target_org,
        "revisions": rows,
        "refused": refused,
        "missing": discovery.missing,
        "pending": pending,
        "unverified": unverified,
        "warnings": sorted({w for row in rows for w in row.get("warnings", [])}),
        "complete": not (refused or discovery.missing or pending or unverified),
    }


def render(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the manifest atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(render(manifest), encoding="utf-8")
    os.replace(staging, path)
    return path


def manifest_card(manifest: dict[str, Any]) -> str:
    """README.md of the manifest repo: what it is and the totals."""
    rows = manifest["revisions"]
    done = sum(1 for row in rows if row["status"] in DONE_STATES)
    lines = [
        "---",
        "license: apache-2.0",
        "tags:",
        "- spectra-suite",
        "---",
        "",
        "# Spectra release re-publication manifest",
        "",
        f"Every revision of the public `{manifest['source_org']}` release and the branch of `{manifest['target_org']}` "
        f"it was converted and published to, with the checks each conversion passed and the sha256 of every "
        f"published file: `{MANIFEST_FILE}`.",
        "",
        f"- revisions published: {done} of {len(rows)}",
        f"- refused: {len(manifest['refused'])}",
        f"- missing from the release: {len(manifest['missing'])}",
        f"- complete: {'yes' if manifest['complete'] else 'no'}",
        "",
    ]
    return "\n".join(lines)
