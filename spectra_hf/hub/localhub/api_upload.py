"""Handlers for uploads: preupload (regular or LFS?), the LFS batch API and its PUT target, and the NDJSON commit.

With `HF_HUB_DISABLE_XET=1` huggingface_hub uploads like this: preupload tells it, per file, "regular" (content
goes base64 inside the commit) or "lfs" (content goes first to the LFS batch API, the commit only names its sha256),
plus the oid of the file already at that path so unchanged files are skipped.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import re
from urllib.parse import urlencode

from huggingface_hub.utils.sha import git_hash

from .context import HubContext
from .errors import ErrorResponse, bad_request, repo_not_found
from .names import RepoRef, check_path, parse_url_path
from .protocol import Request, Response, json_response, loads_json
from .store import AddFile, Commit, DeletePath, FileEntry

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _lfs_patterns(ctx: HubContext, commit: Commit) -> list[str]:
    entry = commit.tree.get(".gitattributes")
    if entry is None:
        return []
    lines = ctx.store.blobs.read_text(entry.sha256, ".gitattributes").splitlines()
    return [line.split()[0] for line in lines if "filter=lfs" in line.split()[1:]]


def _is_lfs(path: str, size: int, sample: bytes, patterns: list[str], threshold: int) -> bool:
    """LFS for large or binary files and for paths .gitattributes routes through LFS (as the Hub decides)."""
    name = path.rsplit("/", 1)[-1]
    matches = any(fnmatch.fnmatchcase(path if "/" in pattern else name, pattern) for pattern in patterns)
    return size > 0 and (size >= threshold or b"\0" in sample or matches)


def _no_pull_requests(req: Request) -> None:
    if req.flag("create_pr"):
        raise bad_request("The local Hub has no pull requests: commit to a branch instead (create_pr=False).")


def preupload(ctx: HubContext, req: Request) -> Response:
    _no_pull_requests(req)
    files = req.json().get("files")
    if not isinstance(files, list) or not all(isinstance(item, dict) for item in files):
        raise bad_request('preupload needs {"files": [{"path", "sample", "size"}, ...]}.')
    assert req.repo is not None
    commit = ctx.store.resolve(req.repo, req.params["rev"])
    patterns = _lfs_patterns(ctx, commit)
    answers = []
    for item in files:
        try:
            path, size = check_path(item["path"]), item["size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"size {size!r} is not a non-negative integer")
            sample = base64.b64decode(item.get("sample") or "", validate=True)
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as error:
            raise bad_request(f"Bad preupload entry {str(item)[:200]}: {error}") from error
        answer = {"path": path, "shouldIgnore": False}
        answer["uploadMode"] = "lfs" if _is_lfs(path, size, sample, patterns, ctx.lfs_threshold) else "regular"
        existing = commit.tree.get(path)
        if existing is not None and ctx.store.blobs.has(existing.sha256):
            # The client compares this with its own oid (sha256 for LFS, git sha1 otherwise) to skip unchanged
            # files; a stored copy that no longer verifies is not offered, so the client uploads the file again.
            answer["oid"] = existing.sha256 if existing.lfs else existing.oid
        answers.append(answer)
    return json_response({"files": answers, "commitOid": commit.oid})


def lfs_batch(ctx: HubContext, req: Request) -> Response:
    """LFS batch API (upload only): an upload URL per object this repo does not hold a good copy of yet.

    An object counts as held when its blob verifies and it was uploaded to (or committed in) this repo; a blob
    stored for another repo is uploaded again, which proves the client has the bytes.
    """
    assert req.repo is not None
    payload = req.json()
    if payload.get("operation") != "upload":
        raise bad_request("The local Hub's LFS batch API only uploads; download files through /resolve/.")
    requested = payload.get("objects") or []
    if not isinstance(requested, list):
        raise bad_request('LFS batch needs {"objects": [{"oid", "size"}, ...]}.')
    objects = []
    for obj in requested:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        if not (isinstance(oid, str) and _SHA256.fullmatch(oid) and type(size) is int and size >= 0):
            raise bad_request(f"Bad LFS object {str(obj)[:200]}: need a sha256 hex oid and an integer size.")
        if size > ctx.max_file_bytes:
            raise ErrorResponse(
                413, f"LFS object {oid} of {size} bytes is over the limit of {ctx.max_file_bytes} bytes per file."
            )
        answer: dict = {"oid": oid, "size": size}
        held = ctx.store.has_lfs_object(req.repo, oid) and ctx.store.blobs.has(oid)
        if not held or ctx.store.blobs.size(oid) != size:
            repo = req.repo.url_path
            query = urlencode({"size": size, "repo": repo, "sig": ctx.sign_upload(oid, size, repo)})
            answer["authenticated"] = True
            answer["actions"] = {
                "upload": {"href": f"{req.base_url}/api/_local/lfs/{oid}?{query}", "expires_in": 86400}
            }
        objects.append(answer)
    body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
    return Response(200, json.dumps(body).encode(), {"Content-Type": "application/vnd.git-lfs+json"})


def lfs_upload(ctx: HubContext, req: Request) -> Response:
    """The PUT target of an LFS upload URL; the signature in the URL stands in for the token the client omits."""
    oid = req.params["oid"]
    try:
        size = int(req.arg("size", "") or "")
    except ValueError:
        raise bad_request("LFS upload URL without a valid size: ask the LFS batch API for a new one.") from None
    repo_path = req.arg("repo", "") or ""
    signature = req.arg("sig", "") or ""
    if not hmac.compare_digest(signature, ctx.sign_upload(oid, size, repo_path)):
        raise ErrorResponse(403, "LFS upload URL signature is invalid: ask the LFS batch API for a new URL.")
    repo = parse_url_path(repo_path)
    if not ctx.store.exists(repo):
        raise repo_not_found(repo.id)
    req.body.limit = size  # this body is the file itself, bounded by the signed size rather than the API limit
    ctx.store.blobs.put(req.body.chunks(), expected_sha256=oid, expected_size=size)
    ctx.store.link_lfs_object(repo, oid)
    return json_response({})


def _parse_commit(
    ctx: HubContext, repo: RepoRef, lines: list[bytes]
) -> tuple[dict, list[AddFile | DeletePath], dict[str, bytes]]:
    """Header value, operations and inline file contents (sha256 -> bytes) of an NDJSON commit payload.

    Nothing is stored here: inline files are written by the store once the whole commit is known to apply.
    """
    header: dict | None = None
    operations: list[AddFile | DeletePath] = []
    inline: dict[str, bytes] = {}
    for number, line in enumerate(lines, start=1):
        try:
            item = loads_json(line)
            key, value = item["key"], item["value"]
            if not isinstance(value, dict):
                raise ValueError(f"the value of a {key!r} line must be an object")
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise ValueError(f"unsupported encoding {value.get('encoding')!r}")
                data = base64.b64decode(value["content"], validate=True)
                path = check_path(value["path"])
                if len(data) >= ctx.lfs_threshold:
                    raise ErrorResponse(
                        413,
                        f"{path!r} is {len(data)} bytes: files of {ctx.lfs_threshold} bytes and more must be uploaded "
                        "through LFS, not inline in a commit (the Hub's 10 MB rule; huggingface_hub does this itself "
                        "when it asks /preupload first).",
                    )
                sha256 = hashlib.sha256(data).hexdigest()
                inline[sha256] = data
                operations.append(AddFile(path, FileEntry(sha256, len(data), git_hash(data), False)))
            elif key == "lfsFile":
                oid = value["oid"]
                if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not _SHA256.fullmatch(oid):
                    raise ValueError("lfsFile needs algo sha256 and a sha256 hex oid")
                path = check_path(value["path"])
                if not ctx.store.has_lfs_object(repo, oid):
                    raise ValueError(
                        f"LFS object {oid} for {path!r} was never uploaded to {repo.id} (use the LFS batch API first)"
                    )
                if not ctx.store.blobs.has(oid):
                    raise ValueError(
                        f"the stored copy of LFS object {oid} for {path!r} is missing or corrupt: upload it again"
                    )
                size = ctx.store.blobs.size(oid)
                if value.get("size") not in (None, size):
                    raise ValueError(f"LFS object {oid} has {size} bytes, not {value['size']}")
                operations.append(AddFile(path, FileEntry.large(oid, size)))
            elif key in ("deletedFile", "deletedFolder"):
                path = value["path"]
                if key == "deletedFolder" and isinstance(path, str):
                    path = path.rstrip("/")
                operations.append(DeletePath(check_path(path), folder=key == "deletedFolder"))
            else:
                raise ValueError(f"unknown key {key!r}")
        except ErrorResponse:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as error:
            raise bad_request(f"Bad commit payload line {number}: {error}") from error
    if not isinstance(header, dict) or not isinstance(header.get("summary"), str) or not header["summary"]:
        raise bad_request('A commit payload needs a header line {"key": "header", "value": {"summary": ...}}.')
    description = header.get("description")
    if description is not None and not isinstance(description, str):
        raise bad_request("The commit header's description must be a string.")
    return header, operations, inline


def commit(ctx: HubContext, req: Request) -> Response:
    _no_pull_requests(req)
    assert req.repo is not None
    lines = [line for line in req.body.read().splitlines() if line.strip()]
    header, operations, inline = _parse_commit(ctx, req.repo, lines)
    parent = header.get("parentCommit")
    if parent is not None and not re.fullmatch(r"[0-9a-fA-F]{5,40}", str(parent)):
        raise bad_request(f"parentCommit {parent!r} is not a commit id.")
    created = ctx.store.create_commit(
        req.repo, req.params["rev"], operations, header["summary"], header.get("description") or "", parent,
        new_blobs=inline,
    )
    ctx.stats.commit(req.repo.url_path)
    return json_response({
        "commitOid": created.oid,
        "commitUrl": f"{req.base_url}/{req.repo.url_path}/commit/{created.oid}",
        "pullRequestUrl": None,
        "success": True,
    })


def xet_token(ctx: HubContext, req: Request) -> Response:
    """What a client with hf_xet active asks for before uploading an LFS file: refused with the fix."""
    raise ErrorResponse(
        501,
        "The local Hub does not speak the xet protocol: set HF_HUB_DISABLE_XET=1 in the client's environment "
        "before huggingface_hub is imported, so uploads use the LFS batch API.",
    )
