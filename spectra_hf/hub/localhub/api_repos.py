"""Handlers for repos and refs: create/delete a repo, repo info, refs, branches, tags, commit history, whoami,
README metadata validation."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from .cardmeta import front_matter
from .context import HubContext
from .errors import ErrorResponse, bad_request
from .names import API_SEGMENTS, RepoRef, check_repo_type, repo_ref, split_repo_id
from .protocol import Request, Response, json_response
from .repo_metadata import card_data, model_metadata
from .store import DEFAULT_BRANCH, Commit
from .trees import sibling_json

COMMITS_PAGE_SIZE = 50


def _repo(req: Request) -> RepoRef:
    assert req.repo is not None, "route without a repo in its URL"
    return req.repo


def create_repo(ctx: HubContext, req: Request) -> Response:
    payload = req.json()
    repo = repo_ref(check_repo_type(payload.get("type")), payload.get("organization"), payload.get("name"))
    repo = ctx.store.canonical(repo)  # names are case-insensitive: the 409 below names the stored spelling
    private = bool(payload.get("private")) or payload.get("visibility") == "private"
    url = f"{req.base_url}/{repo.url_path}"
    if not ctx.store.create_repo(repo, private):
        # huggingface_hub reads `url` from this 409 body when create_repo(exist_ok=True).
        raise ErrorResponse(409, f"You already created this {repo.type} repo: {repo.id}", extra={"url": url})
    return json_response({"url": url, "name": repo.id, "id": ctx.store.metadata(repo)["_id"]})


def delete_repo(ctx: HubContext, req: Request) -> Response:
    payload = req.json()
    repo = repo_ref(check_repo_type(payload.get("type")), payload.get("organization"), payload.get("name"))
    ctx.store.delete_repo(repo)
    return json_response({})


def _info(ctx: HubContext, repo: RepoRef, commit: Commit, *, siblings: bool, card: bool = True) -> dict:
    """Repo info as the Hub shapes it: ids, dates, visibility, and what it derives from the card, config and weights."""
    meta = ctx.store.metadata(repo)
    info: dict = {
        "_id": meta["_id"], "id": repo.id, "author": repo.namespace, "sha": commit.oid,
        "lastModified": commit.date, "createdAt": meta["createdAt"], "private": meta["private"],
        "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
    }
    if siblings:
        info["siblings"] = [sibling_json(path, entry) for path, entry in sorted(commit.tree.items())]
    if repo.type == "model":
        info["modelId"] = repo.id
        info.update(model_metadata(ctx.store.blobs, commit))
    else:
        data = card_data(ctx.store.blobs, commit)
        if data is not None:
            info["cardData"] = data
            info["tags"] = [str(tag) for tag in data.get("tags") or [] if isinstance(data.get("tags"), list)]
    if not card:
        info.pop("cardData", None)
    return info


def repo_info(ctx: HubContext, req: Request) -> Response:
    """Model or dataset info at a revision: id, sha, siblings, dates, the card's metadata (cardData), pipeline_tag,
    library_name, tags, config and safetensors parameter counts."""
    repo = _repo(req)
    commit = ctx.store.resolve(repo, req.params.get("rev") or DEFAULT_BRANCH)
    return json_response(_info(ctx, repo, commit, siblings=True))


LIST_PAGE_SIZE = 1000


def list_repos(ctx: HubContext, req: Request) -> Response:
    """GET /api/models (or /api/datasets) with `author`, `search`, `filter` (repeatable: all must be among the
    tags), `pipeline_tag`, `limit`, `full`, `cardData`, `config`; private repos only for a token holder."""
    repo_type = API_SEGMENTS[req.params["rtype_list"]]
    author = (req.arg("author") or "").lower()
    search = (req.arg("search") or "").lower()
    wanted_tags = set(req.query.get("filter", []))
    pipeline_tag = req.arg("pipeline_tag")
    full = req.flag("full")
    try:
        start = int(req.arg("cursor", "0") or 0)
        limit = int(req.arg("limit", "0") or 0)
    except ValueError:
        raise bad_request("`limit` and `cursor` must be integers.") from None
    found = []
    for repo in ctx.store.repos():
        if repo.type != repo_type or (author and repo.namespace.lower() != author) or search not in repo.id.lower():
            continue
        if req.user is None and ctx.store.metadata(repo)["private"]:
            continue
        commit = ctx.store.resolve(repo, DEFAULT_BRANCH)
        info = _info(ctx, repo, commit, siblings=full, card=full or req.flag("cardData"))
        if not wanted_tags <= set(info["tags"]) or (pipeline_tag and info.get("pipeline_tag") != pipeline_tag):
            continue
        if not (full or req.flag("config")):
            info.pop("config", None)
        found.append(info)
    end = start + (min(limit, LIST_PAGE_SIZE) if limit > 0 else LIST_PAGE_SIZE)
    headers = {}
    if end < len(found):
        query = [(key, value) for key, values in req.query.items() if key != "cursor" for value in values]
        headers["Link"] = f'<{req.base_url}{req.path}?{urlencode([*query, ("cursor", str(end))])}>; rel="next"'
    return json_response(found[start:end], headers=headers)


def list_storage(ctx: HubContext, req: Request) -> Response:
    """GET /api/settings/repositories (the token's user; on a local Hub: every repo) or
    /api/organizations/{org}/settings/repositories: what `hf repos ls` shows, with storage in bytes."""
    org = req.params.get("org")
    items: list[dict[str, Any]] = []
    for repo in ctx.store.repos():
        if org is not None and repo.namespace.casefold() != org.casefold():
            continue
        meta = ctx.store.metadata(repo)
        if req.user is None and meta["private"]:
            continue
        head = ctx.store.resolve(repo, DEFAULT_BRANCH)
        items.append({
            "id": repo.id, "type": repo.type, "updatedAt": head.date,
            "visibility": "private" if meta["private"] else "public",
            "storage": sum(entry.size for entry in head.tree.values()),
        })
    total = sum(item["storage"] for item in items) or 1
    for item in items:
        item["storagePercent"] = 100.0 * item["storage"] / total
    return json_response(items)


def move_repo(ctx: HubContext, req: Request) -> Response:
    """POST /api/repos/move {"fromRepo", "toRepo", "type"}: rename a repo (huggingface_hub's move_repo)."""
    payload = req.json()
    repo_type = check_repo_type(payload.get("type"))
    source, target = (split_repo_id(payload.get(key), repo_type) for key in ("fromRepo", "toRepo"))
    ctx.store.move_repo(source, target)
    return json_response({"url": f"{req.base_url}/{target.url_path}"})


def update_settings(ctx: HubContext, req: Request) -> Response:
    """PUT settings {"private": bool} or {"visibility": "public"|"private"} (huggingface_hub's
    update_repo_settings); gating is not served."""
    payload = req.json()
    changes: dict = {}
    visibility = payload.get("visibility")
    if visibility is not None:
        if visibility not in ("public", "private"):
            raise bad_request(f"visibility must be 'public' or 'private', not {visibility!r}.")
        changes["private"] = visibility == "private"
    if "private" in payload:
        if not isinstance(payload["private"], bool):
            raise bad_request("private must be true or false.")
        changes["private"] = payload["private"]
    if payload.get("gated") not in (None, False):
        raise bad_request("The local Hub does not serve gated repos: leave gated unset or False.")
    ctx.store.update_metadata(_repo(req), **changes)
    return json_response({})


def super_squash(ctx: HubContext, req: Request) -> Response:
    """POST super-squash/{branch} {"message"}: the branch becomes one commit with its current files."""
    message = req.json().get("message") or f"Super-squash branch '{req.params['rev']}'"
    if not isinstance(message, str):
        raise bad_request("The squash commit message must be a string.")
    commit = ctx.store.squash(_repo(req), req.params["rev"], message)
    return json_response({"commitId": commit.oid})


def refs(ctx: HubContext, req: Request) -> Response:
    repo = _repo(req)
    refs = ctx.store.refs(repo)

    def listing(kind: str, prefix: str) -> list[dict]:
        return [
            {"name": name, "ref": f"refs/{prefix}/{name}", "targetCommit": oid}
            for name, oid in sorted(refs[kind].items())
        ]

    return json_response(
        {"branches": listing("branches", "heads"), "tags": listing("tags", "tags"), "converts": [], "pullRequests": []}
    )


def create_branch(ctx: HubContext, req: Request) -> Response:
    """POST branch/{name} {"startingPoint"?: revision}: a new branch at the revision (default: main)."""
    ctx.store.create_ref(_repo(req), "branch", req.params["rev"], req.json().get("startingPoint"))
    return json_response({})


def delete_branch(ctx: HubContext, req: Request) -> Response:
    ctx.store.delete_ref(_repo(req), "branch", req.params["rev"])
    return json_response({})


def create_tag(ctx: HubContext, req: Request) -> Response:
    """POST tag/{revision} {"tag": name}: a tag at the revision."""
    name = req.json().get("tag")
    if not isinstance(name, str):
        raise bad_request('Creating a tag needs {"tag": name} in the body.')
    ctx.store.create_ref(_repo(req), "tag", name, req.params["rev"])
    return json_response({})


def delete_tag(ctx: HubContext, req: Request) -> Response:
    ctx.store.delete_ref(_repo(req), "tag", req.params["rev"])
    return json_response({})


def commits(ctx: HubContext, req: Request) -> Response:
    """First-parent history of a revision, newest first, paginated like the Hub (Link header)."""
    repo = _repo(req)
    head = ctx.store.resolve(repo, req.params["rev"])
    try:
        page = int(req.arg("p", "0") or 0)
    except ValueError:
        raise bad_request("The page number `p` must be an integer.") from None
    history = list(ctx.store.history(repo, head))
    chunk = history[page * COMMITS_PAGE_SIZE : (page + 1) * COMMITS_PAGE_SIZE]
    items = [
        {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": ctx.user}]}
        for c in chunk
    ]
    headers = {}
    if (page + 1) * COMMITS_PAGE_SIZE < len(history):
        headers["Link"] = f'<{req.base_url}{req.path}?{urlencode({"p": page + 1})}>; rel="next"'
    return json_response(items, headers=headers)


def whoami(ctx: HubContext, req: Request) -> Response:
    return json_response(
        {
            "type": "user",
            "name": req.user or ctx.user,
            "fullname": req.user or ctx.user,
            "email": None,
            "emailVerified": False,
            "isPro": False,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local-hub", "role": "write"}},
        }
    )


def validate_yaml(ctx: HubContext, req: Request) -> Response:
    content = req.json().get("content")
    if not isinstance(content, str):
        raise bad_request('validate-yaml needs {"content": "<README.md text>"}.')
    try:
        front_matter(content)
    except ValueError as error:
        return json_response({"errors": [{"message": str(error)}], "warnings": []}, status=400)
    return json_response({"errors": [], "warnings": []})
