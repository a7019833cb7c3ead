"""Handlers for collections: create, get, list, add an item, delete an item, delete a collection."""

from __future__ import annotations

from .context import HubContext
from .errors import ErrorResponse, bad_request, repo_not_found
from .names import split_repo_id
from .protocol import Request, Response, json_response

_REPO_ITEM_TYPES = {"model", "dataset"}
_ITEM_TYPES = _REPO_ITEM_TYPES | {"space", "paper", "collection", "bucket"}


def _slug(req: Request) -> str:
    return f"{req.params['ns']}/{req.params['slug']}"


def create_collection(ctx: HubContext, req: Request) -> Response:
    payload = req.json()
    title = payload.get("title")
    if not isinstance(title, str):
        raise bad_request('Creating a collection needs {"title": ..., "namespace": ...}.')
    namespace = payload.get("namespace") or req.user or ctx.user
    collection = ctx.collections.create(namespace, title, payload.get("description"), bool(payload.get("private")))
    return json_response(collection)


def get_collection(ctx: HubContext, req: Request) -> Response:
    collection = ctx.collections.get(_slug(req))
    if req.user is None and collection.get("private"):
        raise ErrorResponse(404, f"Collection {_slug(req)!r} not found.")
    return json_response(collection)


def delete_collection(ctx: HubContext, req: Request) -> Response:
    ctx.collections.delete(_slug(req))
    return json_response({})


def list_collections(ctx: HubContext, req: Request) -> Response:
    found = ctx.collections.list(owner=req.arg("owner"), item=req.arg("item"))
    if req.user is None:
        found = [c for c in found if not c.get("private")]
    # huggingface_hub passes each listed collection's position itself, so the field must not be in the body.
    return json_response([{key: value for key, value in c.items() if key != "position"} for c in found])


def add_item(ctx: HubContext, req: Request) -> Response:
    """Add a repo (it must exist) or another item to a collection; 409 if it is already there."""
    payload = req.json()
    item = payload.get("item") or {}
    item_id, item_type = (item.get("id"), item.get("type")) if isinstance(item, dict) else (None, None)
    if not isinstance(item_id, str) or item_type not in _ITEM_TYPES:
        raise bad_request(f'An item needs {{"id": ..., "type": one of {sorted(_ITEM_TYPES)}}}, got {item!r}.')
    if item_type in _REPO_ITEM_TYPES:
        repo = split_repo_id(item_id, item_type)
        if not ctx.store.exists(repo):
            raise repo_not_found(repo.id)
        item_id = ctx.store.canonical(repo).id  # one item per repo, whatever the case it is named in
    return json_response(ctx.collections.add_item(_slug(req), item_id, item_type, payload.get("note")))


def delete_item(ctx: HubContext, req: Request) -> Response:
    ctx.collections.delete_item(_slug(req), req.params["item"])
    return json_response({})
