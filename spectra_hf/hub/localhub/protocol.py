"""Requests and responses as the local Hub's handlers see them, independent of http.server's plumbing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from io import BufferedIOBase
from pathlib import Path
from typing import Any

from .errors import ErrorResponse, bad_request
from .names import RepoRef

_CHUNK = 1 << 20


class Body:
    """A request body read lazily from the socket: Content-Length or chunked transfer encoding.

    `limit`: the most bytes a handler may read (413 beyond it; the LFS PUT raises it to the announced size). A
    Content-Length that is not a non-negative integer, or broken chunk framing, is a 400 and the connection closes
    after the answer (the next request cannot be found in the stream).
    """

    def __init__(self, stream: BufferedIOBase, headers: Message, *, limit: int):
        self._stream = stream
        self.limit = limit
        self.read_bytes = 0
        self.framing_error: str | None = None
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = (headers.get("Content-Length") or "0").strip()
        self._left = 0
        if not self._chunked:
            if length.isdigit() and length.isascii():
                self._left = int(length)
            else:
                self.framing_error = f"Content-Length {length[:40]!r} is not a non-negative integer."
        self._done = self.framing_error is not None or (not self._chunked and self._left == 0)

    @property
    def declared_length(self) -> int | None:
        return None if self._chunked or self.framing_error else self.read_bytes + self._left

    @property
    def complete(self) -> bool:
        return self._done

    def _raw_chunks(self) -> Iterator[bytes]:
        while not self._done:
            if self._chunked and self._left == 0:
                line = self._stream.readline(1024)
                try:
                    self._left = int(line.split(b";")[0].strip() or b"0", 16)
                    if self._left < 0:
                        raise ValueError(self._left)
                except ValueError:
                    self.framing_error = f"Bad chunk size line {line[:40]!r} in a chunked body."
                    self._done = True
                    raise bad_request(self.framing_error) from None
                if self._left == 0:
                    while self._stream.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailer headers
                    self._done = True
                    return
            data = self._stream.read(min(self._left, _CHUNK))
            self._left -= len(data)
            if not data:
                self._done = True  # the client went away mid-body
            elif self._chunked:
                if self._left == 0:
                    self._stream.readline(1024)  # the CRLF after a chunk
            else:
                self._done = self._left == 0
            yield data

    def chunks(self) -> Iterator[bytes]:
        """Yield the body piece by piece (each piece at most 1 MiB for Content-Length bodies); 413 past `limit`."""
        if self.framing_error is not None:
            raise bad_request(self.framing_error)
        declared = self.declared_length
        if declared is not None and declared > self.limit:
            raise payload_too_large(declared, self.limit)
        for data in self._raw_chunks():
            self.read_bytes += len(data)
            if self.read_bytes > self.limit:
                raise payload_too_large(self.read_bytes, self.limit)
            yield data

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def drain(self, at_most: int) -> bool:
        """Consume what the handler did not read (up to `at_most` bytes), so the client sees the answer and the
        connection can serve the next request; False when the connection must close instead."""
        if self.framing_error is not None:
            return False
        drained = 0
        try:
            for data in self._raw_chunks():
                drained += len(data)
                if drained > at_most:
                    return False
        except ErrorResponse:
            return False
        return self._done


def payload_too_large(size: int, limit: int) -> ErrorResponse:
    return ErrorResponse(
        413,
        f"Request body of {size} bytes is over this local Hub's limit of {limit} bytes: upload large files through "
        "LFS (huggingface_hub does so for files of 10 MB and more), or start the server with a larger --max-body-mb.",
    )


def loads_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad_request(f"Request body is not valid JSON: {error}") from error
    except RecursionError:
        raise bad_request("Request body is not valid JSON: nested too deeply.") from None


@dataclass
class Request:
    method: str
    path: str  # raw (still URL-quoted) path, without the query string
    query: dict[str, list[str]]
    headers: Message
    body: Body
    base_url: str  # the server's own scheme://host:port, for URLs we hand back (never the Host header)
    params: dict[str, str] = field(default_factory=dict)  # unquoted route captures
    repo: RepoRef | None = None
    user: str | None = None  # who the token belongs to; None for an anonymous request

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("1", "true")

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (an empty body reads as {}); 400 for anything else."""
        data = loads_json(self.body.read() or b"{}")
        if not isinstance(data, dict):
            raise bad_request(f"Request body must be a JSON object, got a JSON {type(data).__name__}.")
        return data


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
