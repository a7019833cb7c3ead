"""Download one release revision: exactly its tree at the discovered commit, checked, under the disk budget.

The folder belongs to the run: anything in it that is not a file of the revision's tree (stray files, leftovers of
another run) is removed first, so the conversion (and so the publication) sees the release tree and nothing else.
Each file is fetched at the discovered commit sha, never the branch name (a branch that moves during the run does
not change what is converted), streamed to `<name>.part` with the byte count checked against the tree listing,
resumed with a Range request after a kill, checked against the listing's LFS sha256 or git blob sha1, then renamed.
A file already in place is re-checked the same way before it is trusted. Before each file the disk budget admits
the bytes it still needs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from huggingface_hub import constants, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from spectra_hf.errors import HubError
from spectra_hf.release.discovery import ReleaseFile, ReleaseRevision
from spectra_hf.release.disk import DiskBudget

PART_SUFFIX = ".part"
_CHUNK = 1 << 20


def _matches(path: Path, file: ReleaseFile) -> bool:
    """True when `path` holds exactly the listed file (size, then LFS sha256 or git blob sha1)."""
    if path.stat().st_size != file.size:
        return False
    digest = hashlib.sha256() if file.sha256 else hashlib.sha1(b"blob %d\0" % file.size)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == (file.sha256 or file.blob_id)


def prune(folder: Path, keep: set[str]) -> None:
    """Remove every file and folder under `folder` whose path (relative, posix) is not in `keep`."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(root, name)
            if path.is_symlink() or path.relative_to(folder).as_posix() not in keep:
                path.unlink()
        for name in dirs:
            path = Path(root, name)
            if path.is_symlink():
                path.unlink()
            elif not any(path.iterdir()):
                path.rmdir()


def _fetch(url: str, part: Path, file: ReleaseFile, *, headers: dict[str, str], where: str) -> None:
    """Stream `url` into `part` (appending to what a killed run left when the server honours the Range)."""
    have = part.stat().st_size if part.exists() else 0
    if have > file.size:
        part.unlink()
        have = 0
    request = dict(headers)
    if have:
        request["Range"] = f"bytes={have}-"
    with get_session().stream(
        "GET", url, headers=request, follow_redirects=True, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
    ) as response:
        if response.status_code == 416 and have == file.size:
            return
        if response.status_code >= 400:
            response.read()  # the error's message is in the body
            hf_raise_for_status(response)
        written = have if response.status_code == 206 else 0
        with open(part, "ab" if written else "wb") as handle:
            for chunk in response.iter_bytes(_CHUNK):
                written += len(chunk)
                if written > file.size:
                    raise HubError(
                        f"{where} sends more than the {file.size} bytes its tree listing gives: not downloaded "
                        "(re-run; if it persists the Hub's listing and content disagree)"
                    )
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())


def download_revision(
    revision: ReleaseRevision, folder: Path, *, endpoint: str, token: str | bool | None, budget: DiskBudget
) -> None:
    """Make `folder` hold exactly the files of `revision` at its discovered commit, each checked.

    Raises:
        HubError: the Hub sent other bytes than its listing gives (size or hash).
        ConfigError: the disk budget would be passed (nothing of the file is written).
        HfHubHTTPError, httpx2.TransportError: the request failed (run_release explains them).
    """
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f.path for f in revision.files}
    prune(folder, wanted | {f.path + PART_SUFFIX for f in revision.files})
    headers = build_hf_headers(token=token)
    commit = revision.source_commit or revision.source_revision
    for file in revision.files:
        target = folder / file.path
        where = f"{revision.source_repo}@{commit[:12]}/{file.path}"
        if target.is_file():
            if _matches(target, file):
                continue
            target.unlink()
        part = target.with_name(target.name + PART_SUFFIX)
        have = part.stat().st_size if part.exists() else 0
        budget.admit(max(0, file.size - have), doing=f"downloading {where}")
        target.parent.mkdir(parents=True, exist_ok=True)
        url = hf_hub_url(revision.source_repo, file.path, revision=commit, endpoint=endpoint)
        _fetch(url, part, file, headers=headers, where=where)
        if not _matches(part, file):
            part.unlink()
            raise HubError(
                f"{where} does not match its tree listing ({file.size} bytes, "
                f"{'sha256 ' + file.sha256 if file.sha256 else 'blob ' + file.blob_id}): not used. Re-run to download "
                "it again"
            )
        os.replace(part, target)
    prune(folder, wanted)
