"""Requests and responses as the local Hub's handlers see them, independent of http.server's plumbing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO

from .errors import bad_request
from .names import RepoRef

_CHUNK = 1 << 20


class Body:
    """A request body read lazily from the socket: Content-Length or chunked transfer encoding."""

    def __init__(self, stream: BinaryIO, headers: Message):
        self._stream = stream
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._left = 0 if self._chunked else int(headers.get("Content-Length") or 0)
        self._done = not self._chunked and self._left == 0

    def chunks(self) -> Iterator[bytes]:
        """Yield the body piece by piece (each piece at most 1 MiB for Content-Length bodies)."""
        while not self._done:
            if self._chunked:
                size = int(self._stream.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self._stream.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailer headers
                    self._done = True
                    return
                data = self._stream.read(size)
                self._stream.readline()
            else:
                data = self._stream.read(min(self._left, _CHUNK))
                self._left -= len(data)
                self._done = self._left == 0 or not data
            yield data

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def drain(self) -> None:
        """Consume what the handler did not read, so the connection can serve the next request."""
        for _ in self.chunks():
            pass


@dataclass
class Request:
    method: str
    path: str  # raw (still URL-quoted) path, without the query string
    query: dict[str, list[str]]
    headers: Message
    body: Body
    base_url: str  # scheme://host:port the client used, for URLs we hand back
    params: dict[str, str] = field(default_factory=dict)  # unquoted route captures
    repo: RepoRef | None = None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("1", "true")

    def json(self) -> Any:
        try:
            return json.loads(self.body.read() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise bad_request(f"Request body is not valid JSON: {error}") from error


@dataclass
class FileSlice:
    """Bytes `start .. start+length` of a file on disk, sent as a response body."""

    path: Path
    start: int
    length: int


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: FileSlice | None = None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # default=str: card metadata may hold YAML dates, which JSON has no type for.
    body = json.dumps(data, default=str).encode()
    return Response(status, body, {"Content-Type": "application/json", **(headers or {})})
