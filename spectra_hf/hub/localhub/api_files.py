"""Handlers that read files: tree listing (paginated), paths-info, and HEAD/GET /resolve/ with Range support.

/resolve/ answers the file itself (no redirect), with the headers hf_hub_download relies on: X-Repo-Commit, ETag
(the git oid of a regular file) or X-Linked-Etag + X-Linked-Size (sha256 and size of an LFS file). It never sends
X-Xet-* headers, so clients download over plain HTTP.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote, urlencode

from .context import HubContext
from .errors import ErrorResponse, bad_request, entry_not_found
from .names import check_path
from .protocol import FileSlice, Request, Response, json_response
from .trees import list_tree
from .trees import paths_info as paths_info_entries


def tree(ctx: HubContext, req: Request) -> Response:
    assert req.repo is not None
    commit = ctx.store.resolve(req.repo, req.params["rev"])
    folder = check_path(req.params["path"]) if req.params.get("path") else ""
    entries = list_tree(commit, folder, recursive=req.flag("recursive"))
    try:
        start = int(req.arg("cursor", "0") or 0)
    except ValueError:
        raise bad_request("Tree listing cursor must be an integer: follow the Link header as given.") from None
    end = start + ctx.tree_page_size
    headers = {}
    if end < len(entries):
        query = {key: values[0] for key, values in req.query.items()} | {"cursor": str(end)}
        headers["Link"] = f'<{req.base_url}{req.path}?{urlencode(query)}>; rel="next"'
    return json_response(entries[start:end], headers=headers)


def paths_info(ctx: HubContext, req: Request) -> Response:
    """POST paths-info/{rev} with form fields `paths` (repeated): entries for the paths that exist."""
    assert req.repo is not None
    commit = ctx.store.resolve(req.repo, req.params["rev"])
    form = parse_qs(req.body.read().decode("utf-8", errors="replace"))
    return json_response(paths_info_entries(commit, [check_path(path) for path in form.get("paths", [])]))


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) of a single `bytes=` range; None to send the whole file (no or multi-range header)."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(size - int(last), 0), size - 1
    if start >= size or start > end:
        raise ErrorResponse(416, f"Range {header!r} is outside the file ({size} bytes).",
                       headers={"Content-Range": f"bytes */{size}"})
    return start, end - start + 1


def resolve(ctx: HubContext, req: Request) -> Response:
    assert req.repo is not None
    commit = ctx.store.resolve(req.repo, req.params["rev"])
    path = check_path(req.params["path"])
    entry = commit.tree.get(path)
    if entry is None:
        raise entry_not_found(path, commit.oid)
    headers = {
        "X-Repo-Commit": commit.oid,
        "ETag": f'"{entry.sha256 if entry.lfs else entry.oid}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
    }
    if entry.lfs:
        headers["X-Linked-Etag"] = headers["ETag"]
        headers["X-Linked-Size"] = str(entry.size)
    blob = ctx.store.blobs.good_path(entry.sha256, path)  # never serve bytes that no longer match their sha256
    byte_range = _byte_range(req.headers.get("Range"), entry.size)
    if byte_range is None:
        return Response(200, headers=headers, file=FileSlice(blob, 0, entry.size))
    start, length = byte_range
    headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{entry.size}"
    return Response(206, headers=headers, file=FileSlice(blob, start, length))
