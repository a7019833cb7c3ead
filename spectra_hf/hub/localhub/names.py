"""Validation of every name a client sends: repo ids, branch and tag names, revisions, file paths in a repo.

Everything is checked here before it reaches storage, so a bad name is a clean 400 with a message, never a path on
disk. Repo ids follow the Hub's rules (as mirrored by huggingface_hub's `validate_repo_id`); branch and tag names
follow `git check-ref-format`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import bad_request

# URL segment after /api/ -> repo type, and the reverse prefix used in download and LFS URLs.
API_SEGMENTS = {"models": "model", "datasets": "dataset"}
URL_PREFIXES = {"model": "", "dataset": "datasets/"}

# Namespaces that would collide with the Hub's own URL space (e.g. /datasets/org/name/resolve/...).
_RESERVED_NAMESPACES = {"api", "datasets", "models", "spaces", "kernels", "collections"}
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
_COMMIT_OID = re.compile(r"[0-9a-f]{40}")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
MAX_NAME_LENGTH = 96


@dataclass(frozen=True)
class RepoRef:
    """A validated repo: its type ("model" or "dataset") and `namespace/name` id."""

    type: str
    namespace: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def url_path(self) -> str:
        """The id as it appears in web, download and LFS URLs: `org/name` or `datasets/org/name`."""
        return URL_PREFIXES[self.type] + self.id


def _require_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{what} must be a string, got {type(value).__name__} {str(value)[:40]!r}.")
    return value


def check_repo_type(repo_type: str | None) -> str:
    """The repo type of a create/delete payload: model (default) or dataset."""
    repo_type = repo_type or "model"
    if not isinstance(repo_type, str) or repo_type not in URL_PREFIXES:
        raise bad_request(f"Repo type {repo_type!r} is not served by the local Hub: use 'model' or 'dataset'.")
    return repo_type


def _check_name_part(part: str, what: str) -> None:
    _require_text(part, f"Repo {what}")
    problem = None
    if not part or len(part) > MAX_NAME_LENGTH:
        problem = f"must be 1 to {MAX_NAME_LENGTH} characters long"
    elif not _NAME_CHARS.fullmatch(part):
        problem = "may only contain letters, digits, '-', '_' and '.'"
    elif "--" in part or ".." in part:
        problem = "cannot contain '--' or '..'"
    elif part[0] in "-." or part[-1] in "-.":
        problem = "cannot start or end with '-' or '.'"
    elif part.endswith(".git"):
        problem = "cannot end with '.git'"
    if problem:
        raise bad_request(f"Invalid repo {what} {part!r}: it {problem}.")


def check_namespace(namespace: str) -> str:
    """A user or organization name (repo namespaces, collection owners)."""
    _check_name_part(namespace, "namespace")
    if namespace.lower() in _RESERVED_NAMESPACES:
        raise bad_request(f"Namespace {namespace!r} is reserved by the Hub's URL scheme: pick another one.")
    return namespace


def repo_ref(repo_type: str, namespace: str | None, name: str | None) -> RepoRef:
    """Validate a repo id given as namespace and name; the local Hub requires the namespace."""
    if not namespace:
        raise bad_request(f"Repo id {name!r} has no namespace: use the full id 'namespace/name'.")
    check_namespace(namespace)
    _check_name_part(name or "", "name")
    return RepoRef(check_repo_type(repo_type), namespace, name or "")


def split_repo_id(repo_id: object, repo_type: str) -> RepoRef:
    """Validate a full `namespace/name` id (as found in collection items)."""
    text = _require_text(repo_id, "A repo id")
    namespace, slash, name = text.partition("/")
    if not slash:
        return repo_ref(repo_type, None, text)
    return repo_ref(repo_type, namespace, name)


def is_commit_oid(revision: str) -> bool:
    return isinstance(revision, str) and bool(_COMMIT_OID.fullmatch(revision))


def parse_url_path(url_path: str) -> RepoRef:
    """The repo of a URL path as `RepoRef.url_path` writes it (`org/name` or `datasets/org/name`)."""
    repo_type = "dataset" if url_path.startswith(URL_PREFIXES["dataset"]) else "model"
    return split_repo_id(url_path.removeprefix(URL_PREFIXES[repo_type]), repo_type)


def check_ref_name(name: str, what: str = "branch") -> str:
    """A branch or tag name as git accepts it; 40-hex names are refused since they read as commit ids."""
    _require_text(name, f"A {what} name")
    problem = None
    if not name or len(name) > 255:
        problem = "must be 1 to 255 characters long"
    elif _REF_FORBIDDEN.search(name):
        problem = "cannot contain spaces, control characters or any of ~^:?*[\\"
    elif ".." in name or "@{" in name or name == "@" or "//" in name:
        problem = "cannot contain '..', '@{' or '//', nor be '@'"
    elif name.startswith(("/", "-", "refs/")) or name.endswith(("/", ".", ".lock")):
        problem = "cannot start with '/', '-' or 'refs/', nor end with '/', '.' or '.lock'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        problem = "cannot have a component that starts with '.' or ends with '.lock'"
    elif is_commit_oid(name):
        problem = "cannot be 40 hex digits (that reads as a commit id)"
    if problem:
        raise bad_request(f"Invalid {what} name {name!r}: it {problem}.")
    return name


def check_revision(revision: str) -> str:
    """A revision to read from: a branch, a tag or a full commit id."""
    _require_text(revision, "A revision")
    return revision if is_commit_oid(revision) else check_ref_name(revision, "revision")


def check_path(path: str) -> str:
    """A file or folder path inside a repo: relative, '/'-separated, no '.', '..' or empty components."""
    _require_text(path, "A path in a repo")
    problem = None
    if not path or len(path) > 1024:
        problem = "must be 1 to 1024 characters long"
    elif path.startswith("/") or re.match(r"[A-Za-z]:", path):
        problem = "must be relative to the repo root"
    elif "\\" in path or re.search(r"[\x00-\x1f\x7f]", path):
        problem = "cannot contain backslashes or control characters"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        problem = "cannot contain '.', '..' or empty components"
    elif path.split("/")[0] == ".git":
        problem = "cannot be inside .git"
    if problem:
        raise bad_request(f"Invalid path in repo {path!r}: it {problem}.")
    return path
