"""Handlers for repos and refs: create/delete a repo, repo info, refs, branches, tags, commit history, whoami,
README metadata validation."""

from __future__ import annotations

from urllib.parse import urlencode

from .cardmeta import front_matter
from .context import HubContext
from .errors import HubError, bad_request
from .names import RepoRef, check_repo_type, repo_ref
from .protocol import Request, Response, json_response
from .store import DEFAULT_BRANCH
from .trees import sibling_json

COMMITS_PAGE_SIZE = 50


def _repo(req: Request) -> RepoRef:
    assert req.repo is not None, "route without a repo in its URL"
    return req.repo


def create_repo(ctx: HubContext, req: Request) -> Response:
    payload = req.json()
    repo = repo_ref(check_repo_type(payload.get("type")), payload.get("organization"), payload.get("name"))
    private = bool(payload.get("private")) or payload.get("visibility") == "private"
    url = f"{req.base_url}/{repo.url_path}"
    if not ctx.store.create_repo(repo, private):
        # huggingface_hub reads `url` from this 409 body when create_repo(exist_ok=True).
        raise HubError(409, f"You already created this {repo.type} repo: {repo.id}", extra={"url": url})
    return json_response({"url": url, "name": repo.id, "id": ctx.store.metadata(repo)["_id"]})


def delete_repo(ctx: HubContext, req: Request) -> Response:
    payload = req.json()
    repo = repo_ref(check_repo_type(payload.get("type")), payload.get("organization"), payload.get("name"))
    ctx.store.delete_repo(repo)
    return json_response({})


def repo_info(ctx: HubContext, req: Request) -> Response:
    """Model or dataset info at a revision: id, sha, siblings, dates, and the card's metadata as cardData."""
    repo = _repo(req)
    commit = ctx.store.resolve(repo, req.params.get("rev") or DEFAULT_BRANCH)
    meta = ctx.store.metadata(repo)
    info: dict = {
        "_id": meta["_id"], "id": repo.id, "author": repo.namespace, "sha": commit.oid,
        "lastModified": commit.date, "createdAt": meta["createdAt"], "private": meta["private"],
        "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
        "siblings": [sibling_json(path, entry) for path, entry in sorted(commit.tree.items())],
    }
    if repo.type == "model":
        info["modelId"] = repo.id
    readme = commit.tree.get("README.md")
    if readme is not None:
        try:
            card_data = front_matter(ctx.store.blobs.path(readme.sha256).read_text(encoding="utf-8", errors="replace"))
        except ValueError:
            card_data = None  # the Hub serves repos with broken cards too, just without cardData
        if card_data is not None:
            info["cardData"] = card_data
    return json_response(info)


def refs(ctx: HubContext, req: Request) -> Response:
    repo = _repo(req)
    refs = ctx.store.refs(repo)

    def listing(kind: str, prefix: str) -> list[dict]:
        return [{"name": name, "ref": f"refs/{prefix}/{name}", "targetCommit": oid} for name, oid in sorted(refs[kind].items())]

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
    return json_response({
        "type": "user", "name": ctx.user, "fullname": ctx.user, "email": None, "emailVerified": False,
        "isPro": False, "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": "local-hub", "role": "write"}},
    })


def validate_yaml(ctx: HubContext, req: Request) -> Response:
    content = req.json().get("content")
    if not isinstance(content, str):
        raise bad_request('validate-yaml needs {"content": "<README.md text>"}.')
    try:
        front_matter(content)
    except ValueError as error:
        return json_response({"errors": [{"message": str(error)}], "warnings": []}, status=400)
    return json_response({"errors": [], "warnings": []})
