"""The HTTP side of the local Hub: a ThreadingHTTPServer speaking HTTP/1.1 with keep-alive, and `LocalHub`,
which runs it in a background thread (`with LocalHub(root) as hub: hub.url`) or in the foreground (the CLI)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .collection_store import CollectionStore
from .context import HubContext
from .dispatch import Dispatcher
from .faults import Fault, FaultPlan
from .protocol import Body, Request, Response
from .stats import Stats
from .store import RepoStore

DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses regular (non-LFS) files above 10 MB
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # API bodies (JSON, NDJSON commits with inline files); LFS PUTs excepted
DEFAULT_MAX_FILE_BYTES = 50 * 1000**3  # the Hub's limit per LFS file
_SEND_CHUNK = 1 << 20
_DRAIN_LIMIT = 1 << 30  # unread body bytes skipped to keep a connection; past this it is closed instead


def is_loopback_host(host: str) -> bool:
    """True for a host name or address on this machine only: localhost or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 120  # idle keep-alive connections close after this
    # Headers and body go out in separate writes; with Nagle on, the client's delayed ACK stalls each answer ~40 ms.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        super().finish()
        self.server.track(self.connection, False)

    def _serve(self) -> None:
        started = time.perf_counter()
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers=self.headers,
            body=Body(self.rfile, self.headers, limit=self.server.dispatcher.ctx.max_body_bytes),
            base_url=self.server.base_url,
        )
        response, kind = self.server.dispatcher.handle(request)
        if not request.body.drain(at_most=_DRAIN_LIMIT):
            # The rest of the body cannot be skipped (bad framing, or too much of it): answer, then hang up.
            self.close_connection = True
            response.headers["Connection"] = "close"
        self._send(response)
        if self.server.log is not None:
            elapsed = (time.perf_counter() - started) * 1000
            problem = f": {response.headers['X-Error-Message']}" if "X-Error-Message" in response.headers else ""
            self.server.log(f"{self.command} {parts.path} -> {response.status} [{kind}] {elapsed:.0f} ms{problem}")

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        length = response.file.length if response.file is not None else len(response.body)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.file is None:
            self.wfile.write(response.body)
            return
        with open(response.file.path, "rb") as handle:
            handle.seek(response.file.start)
            left = response.file.length
            while left > 0:
                data = handle.read(min(left, _SEND_CHUNK))
                if not data:
                    raise OSError(f"blob {response.file.path} is shorter than recorded")
                self.wfile.write(data)
                left -= len(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: `_serve` logs its own line per request."""

    def log_message(self, format: str, *args: object) -> None:
        # Only http.server's own complaints (malformed requests) arrive here; headers, hence tokens, never do.
        if self.server.log is not None:
            self.server.log(format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher, log: Callable[[str], None] | None):
        super().__init__(address, _Handler)
        self.dispatcher = dispatcher
        self.log = log
        self.base_url = ""  # set by LocalHub once the port is known
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def handle_error(self, request: object, client_address: tuple) -> None:
        # A client hanging up mid-response (e.g. Ctrl-C during a download) is not worth a traceback on stderr.
        if self.log is not None:
            self.log(f"connection from {client_address[0]} ended: {sys.exc_info()[1]!r}")

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        """Cut open keep-alive connections, so no handler thread keeps serving after the server stopped."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class LocalHub:
    """A local server speaking the Hugging Face Hub protocol, storing everything under `root`.

    `token`: the token of `user`; `tokens`: more accepted tokens, {token: user name}. Without any, the server is
    single-user (every client acts as `user`, private repos included); with them, writes need a token and private
    repos are visible only with one (see `access`). `faults`: initial fault injection (see `inject`).
    `lfs_threshold`: files this large or larger go through LFS (besides binary files and the .gitattributes LFS
    patterns); inline commit files must be smaller. `max_body_bytes`: the largest API request body (413 beyond;
    LFS uploads are bounded by `max_file_bytes` instead). `tree_page_size`: entries per tree listing page.
    `public_url`: the base URL put in Link headers and LFS upload URLs (default: `url`, the bound address; never
    the client's Host header). `log`: receives one line per request (method, path, status, route kind, duration),
    never headers or tokens.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tokens: dict[str, str] | None = None,
        user: str = "local",
        faults: list[Fault] | None = None,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        tree_page_size: int = 1000,
        public_url: str | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.root = Path(root)
        self._stats = Stats()
        self._faults = FaultPlan(faults)
        accepted = dict(tokens or {})
        if token:
            accepted[token] = user
        self.context = HubContext(
            store=RepoStore(self.root),
            collections=CollectionStore(self.root),
            stats=self._stats,
            user=user,
            lfs_threshold=lfs_threshold,
            tree_page_size=tree_page_size,
            upload_secret=os.urandom(32),
            max_body_bytes=max_body_bytes,
            max_file_bytes=max_file_bytes,
        )
        self._server = _Server((host, port), Dispatcher(self.context, self._faults, accepted, log), log)
        self._server.base_url = (public_url or self.url).rstrip("/")
        self._thread: threading.Thread | None = None

    @property
    def access(self) -> str:
        """One line saying who may read and write, for the start-up message."""
        if self.context.single_user:
            return (
                "Access: single-user, no token: anyone who can connect reads and writes every repo, private ones "
                "included (give --token-file or SPECTRA_HUB_TOKEN to require a token)."
            )
        return (
            "Access: writes and private repos need a token (Authorization: Bearer); requests without one read "
            "public repos only."
        )

    @property
    def url(self) -> str:
        """Base URL for clients: `HfApi(endpoint=hub.url)`, or HF_ENDPOINT before huggingface_hub is imported."""
        host, port = self._server.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(str(host), str(host))
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        """Serve in a daemon thread and return at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="localhub", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until `stop()` is called from another one (or KeyboardInterrupt)."""
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def stop(self) -> None:
        """Stop serving, close the port and every open connection; the data stays under `root`."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._server.close_connections()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- fault injection and counters ------------------------------------------------------------------------
    def inject(
        self,
        kind: str,
        status: int = 429,
        *,
        first: int = 0,
        every: int = 0,
        retry_after: int = 1,
        repo: str | None = None,
    ) -> Fault:
        """Fail requests of route `kind`: the first `first` of them, or one in `every` starting with the first.

        429 answers carry `Retry-After: retry_after`. `repo` ("org/name", "datasets/org/name") limits the fault to
        one repo. The returned Fault's `seen` and `injected` count what it matched and failed.
        """
        return self._faults.add(Fault(kind, status, first, every, retry_after, repo))

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def stats(self) -> dict:
        """{"requests": {kind: n}, "faults": {kind: n}, "commits": {repo: n}, "total_requests": n} since start/reset."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()
