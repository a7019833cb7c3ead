"""The URL table of the local Hub: which handler serves a request, and the route kind it counts under.

Route kinds are what stats count and what faults target: a route kind names a family of Hub calls
("commit", "preupload", "lfs", "branch", ...), whatever the repo.
Patterns match the raw path, so a `%2F` inside a revision stays inside its segment; captures are unquoted after.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from . import api_collections, api_files, api_repos, api_upload
from .context import HubContext
from .errors import ErrorResponse
from .protocol import Request, Response

Handler = Callable[[HubContext, Request], Response]

_SEG = r"[^/]+"
_REPO_API = rf"/api/(?P<rtype>models|datasets)/(?P<ns>{_SEG})/(?P<name>{_SEG})"
_REPO_WEB = rf"(?:/(?P<rtype>datasets))?/(?P<ns>{_SEG})/(?P<name>{_SEG})"
_COLLECTION = rf"/api/collections/(?P<ns>{_SEG})/(?P<slug>{_SEG})"


# POST routes that only read: anonymous clients may call them on public repos when the server has tokens.
_READ_ONLY_POSTS = {"paths_info", "validate_yaml"}


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    kind: str
    handler: Handler

    @property
    def writes(self) -> bool:
        """Changes the store (needs a token when the server has tokens)."""
        return self.method not in ("GET", "HEAD") and self.kind not in _READ_ONLY_POSTS


def _route(method: str, pattern: str, kind: str, handler: Handler) -> Route:
    return Route(method, re.compile(pattern), kind, handler)


ROUTES: tuple[Route, ...] = (
    _route("POST", r"/api/repos/create", "create_repo", api_repos.create_repo),
    _route("DELETE", r"/api/repos/delete", "delete_repo", api_repos.delete_repo),
    _route("POST", r"/api/repos/move", "move_repo", api_repos.move_repo),
    _route("GET", r"/api/(?P<rtype_list>models|datasets)", "list_repos", api_repos.list_repos),
    _route("GET", r"/api/settings/repositories", "list_repos", api_repos.list_storage),
    _route("GET", rf"/api/organizations/(?P<org>{_SEG})/settings/repositories", "list_repos", api_repos.list_storage),
    _route("GET", r"/api/whoami-v2", "whoami", api_repos.whoami),
    _route("POST", r"/api/validate-yaml", "validate_yaml", api_repos.validate_yaml),
    _route("GET", _REPO_API + rf"(?:/revision/(?P<rev>{_SEG}))?", "repo_info", api_repos.repo_info),
    _route("GET", _REPO_API + r"/refs", "refs", api_repos.refs),
    _route("PUT", _REPO_API + r"/settings", "settings", api_repos.update_settings),
    _route("POST", _REPO_API + rf"/super-squash/(?P<rev>{_SEG})", "commit", api_repos.super_squash),
    _route("GET", _REPO_API + rf"/commits/(?P<rev>{_SEG})", "commits", api_repos.commits),
    _route("POST", _REPO_API + rf"/branch/(?P<rev>{_SEG})", "branch", api_repos.create_branch),
    _route("DELETE", _REPO_API + rf"/branch/(?P<rev>{_SEG})", "branch", api_repos.delete_branch),
    _route("POST", _REPO_API + rf"/tag/(?P<rev>{_SEG})", "tag", api_repos.create_tag),
    _route("DELETE", _REPO_API + rf"/tag/(?P<rev>{_SEG})", "tag", api_repos.delete_tag),
    _route("GET", _REPO_API + rf"/tree/(?P<rev>{_SEG})(?:/(?P<path>.+))?", "tree", api_files.tree),
    _route("POST", _REPO_API + rf"/paths-info/(?P<rev>{_SEG})", "paths_info", api_files.paths_info),
    _route("POST", _REPO_API + rf"/preupload/(?P<rev>{_SEG})", "preupload", api_upload.preupload),
    _route("POST", _REPO_API + rf"/commit/(?P<rev>{_SEG})", "commit", api_upload.commit),
    _route("GET", _REPO_API + rf"/xet-(?:read|write)-token/(?P<rev>{_SEG})", "xet", api_upload.xet_token),
    _route("POST", _REPO_WEB + r"\.git/info/lfs/objects/batch", "lfs", api_upload.lfs_batch),
    _route("PUT", r"/api/_local/lfs/(?P<oid>[0-9a-f]{64})", "lfs_upload", api_upload.lfs_upload),
    _route("GET", _REPO_WEB + rf"/resolve/(?P<rev>{_SEG})/(?P<path>.+)", "resolve", api_files.resolve),
    _route("HEAD", _REPO_WEB + rf"/resolve/(?P<rev>{_SEG})/(?P<path>.+)", "resolve", api_files.resolve),
    _route("POST", r"/api/collections", "collection", api_collections.create_collection),
    _route("GET", r"/api/collections", "collection", api_collections.list_collections),
    _route("GET", _COLLECTION, "collection", api_collections.get_collection),
    _route("DELETE", _COLLECTION, "collection", api_collections.delete_collection),
    _route("POST", _COLLECTION + r"/items", "collection", api_collections.add_item),
    _route("DELETE", _COLLECTION + rf"/items/(?P<item>{_SEG})", "collection", api_collections.delete_item),
)

ROUTE_KINDS: tuple[str, ...] = tuple(sorted({route.kind for route in ROUTES}))


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route serving `method path` and its unquoted captures; 404 for unknown paths, 405 for wrong methods."""
    path_known = False
    for route in ROUTES:
        found = route.pattern.fullmatch(path)
        if found is None:
            continue
        if route.method == method:
            return route, {key: unquote(value) for key, value in found.groupdict().items() if value is not None}
        path_known = True
    if path_known:
        raise ErrorResponse(405, f"{method} is not allowed on {path}.")
    raise ErrorResponse(404, f"No local Hub route for {method} {path}.")
