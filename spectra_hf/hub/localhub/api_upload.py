"""Handlers for uploads: preupload (regular or LFS?), the LFS batch API and its PUT target, and the NDJSON commit.

With `HF_HUB_DISABLE_XET=1` huggingface_hub uploads like this: preupload tells it, per file, "regular" (content
goes base64 inside the commit) or "lfs" (content goes first to the LFS batch API, the commit only names its sha256),
plus the oid of the file already at that path so unchanged files are skipped.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hmac
import json
import re

from .context import HubContext
from .errors import HubError, bad_request
from .names import check_path
from .protocol import Request, Response, json_response
from .store import AddFile, Commit, DeletePath, FileEntry

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _lfs_patterns(ctx: HubContext, commit: Commit) -> list[str]:
    entry = commit.tree.get(".gitattributes")
    if entry is None:
        return []
    lines = ctx.store.blobs.path(entry.sha256).read_text(encoding="utf-8", errors="replace").splitlines()
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
    if not isinstance(files, list):
        raise bad_request('preupload needs {"files": [{"path", "sample", "size"}, ...]}.')
    assert req.repo is not None
    commit = ctx.store.resolve(req.repo, req.params["rev"])
    patterns = _lfs_patterns(ctx, commit)
    answers = []
    for item in files:
        try:
            path, size = check_path(item["path"]), int(item["size"])
            sample = base64.b64decode(item.get("sample") or "")
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise bad_request(f"Bad preupload entry {item!r}: {error}") from error
        answer = {"path": path, "shouldIgnore": False}
        answer["uploadMode"] = "lfs" if _is_lfs(path, size, sample, patterns, ctx.lfs_threshold) else "regular"
        existing = commit.tree.get(path)
        if existing is not None:
            # The client compares this with its own oid (sha256 for LFS, git sha1 otherwise) to skip unchanged files.
            answer["oid"] = existing.sha256 if existing.lfs else existing.oid
        answers.append(answer)
    return json_response({"files": answers, "commitOid": commit.oid})


def lfs_batch(ctx: HubContext, req: Request) -> Response:
    """LFS batch API (upload only): an upload URL per object we do not hold yet, nothing for those we do."""
    payload = req.json()
    if payload.get("operation") != "upload":
        raise bad_request("The local Hub's LFS batch API only uploads; download files through /resolve/.")
    objects = []
    for obj in payload.get("objects") or []:
        oid, size = obj.get("oid"), obj.get("size")
        if not (isinstance(oid, str) and _SHA256.fullmatch(oid) and isinstance(size, int) and size >= 0):
            raise bad_request(f"Bad LFS object {obj!r}: need a sha256 hex oid and an integer size.")
        answer: dict = {"oid": oid, "size": size}
        if not ctx.store.blobs.has(oid):
            href = f"{req.base_url}/api/_local/lfs/{oid}?size={size}&sig={ctx.sign_upload(oid, size)}"
            answer["authenticated"] = True
            answer["actions"] = {"upload": {"href": href, "expires_in": 86400}}
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
    signature = req.arg("sig", "") or ""
    if not hmac.compare_digest(signature, ctx.sign_upload(oid, size)):
        raise HubError(403, "LFS upload URL signature is invalid: ask the LFS batch API for a new URL.")
    ctx.store.blobs.put(req.body.chunks(), expected_sha256=oid, expected_size=size)
    return json_response({})


def _parse_commit(ctx: HubContext, lines: list[bytes]) -> tuple[dict, list[AddFile | DeletePath]]:
    """Header value and operations of an NDJSON commit payload; regular file contents are stored on the way."""
    header: dict | None = None
    operations: list[AddFile | DeletePath] = []
    for number, line in enumerate(lines, start=1):
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise ValueError(f"unsupported encoding {value.get('encoding')!r}")
                data = base64.b64decode(value["content"])
                entry = FileEntry.regular(ctx.store.blobs.put([data]), data)
                operations.append(AddFile(check_path(value["path"]), entry))
            elif key == "lfsFile":
                oid = value["oid"]
                if value.get("algo", "sha256") != "sha256" or not _SHA256.fullmatch(oid):
                    raise ValueError("lfsFile needs algo sha256 and a sha256 hex oid")
                if not ctx.store.blobs.has(oid):
                    raise ValueError(f"LFS object {oid} was never uploaded (use the LFS batch API first)")
                size = ctx.store.blobs.size(oid)
                if value.get("size") not in (None, size):
                    raise ValueError(f"LFS object {oid} has {size} bytes, not {value['size']}")
                operations.append(AddFile(check_path(value["path"]), FileEntry.large(oid, size)))
            elif key in ("deletedFile", "deletedFolder"):
                path = value["path"].rstrip("/") if key == "deletedFolder" else value["path"]
                operations.append(DeletePath(check_path(path), folder=key == "deletedFolder"))
            else:
                raise ValueError(f"unknown key {key!r}")
        except HubError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as error:
            raise bad_request(f"Bad commit payload line {number}: {error}") from error
    if not isinstance(header, dict) or not isinstance(header.get("summary"), str) or not header["summary"]:
        raise bad_request('A commit payload needs a header line {"key": "header", "value": {"summary": ...}}.')
    return header, operations


def commit(ctx: HubContext, req: Request) -> Response:
    _no_pull_requests(req)
    assert req.repo is not None
    header, operations = _parse_commit(ctx, [line for line in req.body.read().splitlines() if line.strip()])
    parent = header.get("parentCommit")
    if parent is not None and not re.fullmatch(r"[0-9a-fA-F]{5,40}", str(parent)):
        raise bad_request(f"parentCommit {parent!r} is not a commit id.")
    created = ctx.store.create_commit(
        req.repo, req.params["rev"], operations, header["summary"], header.get("description") or "", parent
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
    raise HubError(
        501,
        "The local Hub does not speak the xet protocol: set HF_HUB_DISABLE_XET=1 in the client's environment "
        "before huggingface_hub is imported, so uploads use the LFS batch API.",
    )
