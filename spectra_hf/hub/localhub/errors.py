"""HTTP errors of the local Hub, shaped the way huggingface_hub turns them into its exception types.

The client reads `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) to pick the exception class and
shows `X-Error-Message` and the JSON body's `error` field to the user.
"""

from __future__ import annotations


class ErrorResponse(Exception):
    """An answer other than 2xx: status, a one-line message naming the problem, and optional extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})  # more JSON fields beside "error" (e.g. the existing repo's url on 409)


def bad_request(message: str) -> ErrorResponse:
    """400: the request names something the Hub would refuse (bad repo id, path, revision, payload)."""
    return ErrorResponse(400, message)


def repo_not_found(repo_id: str) -> ErrorResponse:
    """404 that huggingface_hub raises as RepositoryNotFoundError."""
    return ErrorResponse(404, f"Repository {repo_id!r} not found on this local Hub.", code="RepoNotFound")


def revision_not_found(revision: str) -> ErrorResponse:
    """404 that huggingface_hub raises as RevisionNotFoundError."""
    return ErrorResponse(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def entry_not_found(path: str, commit: str | None = None, message: str | None = None) -> ErrorResponse:
    """404 that huggingface_hub raises as (Remote)EntryNotFoundError; `commit` lets it cache the absence."""
    headers = {"X-Repo-Commit": commit} if commit else None
    return ErrorResponse(404, message or f"Entry not found: {path}", code="EntryNotFound", headers=headers)
