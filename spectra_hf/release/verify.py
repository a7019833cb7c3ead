"""The final check of a release run: a `published` row is only reported when the target Hub really holds it.

For every revision the journal calls published, the target is asked: the repo and branch exist, the branch is at the
commit the journal recorded, and at that commit every file has the sha256 the journal recorded (the LFS sha256 from
the tree listing; small non-LFS files are fetched and hashed) and no other file is there. A row that fails is
re-processed by the run; a stale or forged journal line can so never become a `published` row.

`rebuild_entries` is the way out of a damaged journal: it takes the rows of the manifest published on the target
(ORG/spectra-release-manifest) that still pass this check and name a discovered revision at the same release
commit; every other revision is processed again (publishing is idempotent: nothing is committed twice).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from spectra_hf.release.discovery import Discovery
from spectra_hf.release.manifest import MANIFEST_FILE, MANIFEST_REPO

_KEEP_REMOTE = ".gitattributes"  # created by the Hub with the repo, not part of what a run publishes


def _content_sha256(api: HfApi, repo_id: str, path: str, commit: str) -> str:
    digest = hashlib.sha256()
    url = hf_hub_url(repo_id, path, revision=commit, endpoint=api.endpoint)
    headers = build_hf_headers(token=api.token)
    with get_session().stream(
        "GET", url, headers=headers, follow_redirects=True, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
    ) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        for chunk in response.iter_bytes(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def branch_problem(api: HfApi, *, repo_id: str, branch: str, commit: str | None, files: dict[str, str]) -> str | None:
    """Why `repo_id@branch` does not hold exactly `files` (path -> sha256) at `commit`; None when it does."""
    try:
        refs = api.list_repo_refs(repo_id)
    except RepositoryNotFoundError:
        return f"{repo_id} does not exist on {api.endpoint}"
    head = next((ref.target_commit for ref in refs.branches if ref.name == branch), None)
    if head is None:
        return f"{repo_id} has no branch {branch}"
    if not commit:
        return f"no commit recorded for {repo_id}@{branch}"
    if head != commit:
        return f"{repo_id}@{branch} is at {head[:12]}, not at the recorded {commit[:12]}"
    try:
        tree = {
            e.path: e for e in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(e, RepoFile)
        }
    except RevisionNotFoundError:
        return f"{repo_id} has no commit {commit[:12]}"
    for path, sha256 in sorted(files.items()):
        entry = tree.pop(path, None)
        if entry is None:
            return f"{repo_id}@{branch} has no {path}"
        try:
            actual = entry.lfs.sha256 if entry.lfs is not None else _content_sha256(api, repo_id, path, commit)
        except EntryNotFoundError:
            return f"{repo_id}@{branch} has no {path}"
        if actual != sha256:
            return f"{repo_id}@{branch}/{path} has sha256 {actual[:12]}, not the recorded {sha256[:12]}"
    extra = sorted(path for path in tree if path != _KEEP_REMOTE)
    if extra:
        return f"{repo_id}@{branch} also holds {', '.join(extra[:3])}, which the journal does not list"
    return None


def published_manifest(api: HfApi, *, target_org: str) -> dict[str, Any] | None:
    """The manifest a run published to the target (None when there is none or it is unreadable)."""
    repo_id = f"{target_org}/{MANIFEST_REPO}"
    if not api.repo_exists(repo_id):
        return None
    try:
        head = api.list_repo_refs(repo_id).branches
        commit = next(ref.target_commit for ref in head if ref.name == "main")
        url = hf_hub_url(repo_id, MANIFEST_FILE, revision=commit, endpoint=api.endpoint)
        response = get_session().get(url, headers=build_hf_headers(token=api.token), follow_redirects=True)
        hf_raise_for_status(response)
        manifest = json.loads(response.content.decode("utf-8"))
    except (StopIteration, EntryNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def rebuild_entries(api: HfApi, found: Discovery, *, target_org: str) -> list[dict[str, Any]]:
    """Journal records of the discovered revisions that the target's published manifest lists and that pass the
    final check (repo, branch, commit, every sha256); the others are left to be processed again."""
    manifest = published_manifest(api, target_org=target_org) or {}
    rows = manifest.get("revisions", [])
    by_key = {
        f"{row['release']['repo']}@{row['release']['revision']}": row
        for row in rows
        if isinstance(row, dict) and isinstance(row.get("release"), dict) and row.get("status") == "published"
    }
    entries = []
    for revision in found.revisions:
        row = by_key.get(revision.key)
        if row is None or row["release"].get("commit") != revision.source_commit:
            continue
        files, commit = row.get("files"), row.get("commit")
        if not isinstance(files, dict) or not isinstance(commit, str):
            continue
        repo_id = f"{target_org}/{revision.model.name}"
        if branch_problem(api, repo_id=repo_id, branch=revision.branch, commit=commit, files=files) is not None:
            continue
        entry: dict[str, Any] = {
            "key": revision.key,
            "state": "published",
            "repo": repo_id,
            "branch": revision.branch,
            "commit": commit,
            "source_commit": revision.source_commit,
            "files": files,
        }
        for name, kind in (("conversion", str), ("checks", list), ("warnings", list)):
            if isinstance(row.get(name), kind):
                entry[name] = row[name]
        entries.append(entry)
    return entries
