"""One request through the local Hub: route, count, inject faults, check the token, check the repo, run the handler.

Every failure becomes the JSON + headers answer huggingface_hub expects ({"error": ...}, X-Error-Code,
X-Error-Message), never a traceback.
"""

from __future__ import annotations

import hmac
import os
import sys
import traceback
from collections.abc import Callable

from .context import HubContext
from .errors import ErrorResponse, repo_not_found
from .faults import FaultPlan
from .names import API_SEGMENTS, URL_PREFIXES, repo_ref
from .protocol import Request, Response, json_response
from .routes import match

STATS_PATH = "/api/_local/stats"


_HEAVY_MODULES = ("torch", "transformers", "numpy")


def _process_info() -> dict:
    """The serving process: pid, resident memory and which heavy libraries it has imported (a Hub server needs
    none of them; `spectra-hf hub serve` is checked against this)."""
    rss = None
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            rss = next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")), None)
    except OSError:
        pass
    return {"pid": os.getpid(), "rss_bytes": rss, "heavy_modules": [m for m in _HEAVY_MODULES if m in sys.modules]}


def error_response(error: ErrorResponse) -> Response:
    headers = dict(error.headers)
    if error.code:
        headers["X-Error-Code"] = error.code
    # Header values must be one latin-1 line.
    headers["X-Error-Message"] = " ".join(error.message.split())[:500].encode("latin-1", "replace").decode("latin-1")
    return json_response({"error": error.message, **error.extra}, status=error.status, headers=headers)


class Dispatcher:
    """Turns a Request into a Response; `log` (if given) receives tracebacks of handler bugs.

    Access (see the package docstring): `tokens` maps each accepted token to its user name. Without tokens the
    server is single-user: every request acts as `ctx.user`. With tokens, a request without one is anonymous: it may
    read public repos and nothing else; any valid token reads and writes everything.
    """

    def __init__(
        self,
        ctx: HubContext,
        faults: FaultPlan,
        tokens: dict[str, str] | None,
        log: Callable[[str], None] | None,
    ):
        self.ctx = ctx
        self.faults = faults
        self._tokens = dict(tokens or {})
        self._log = log
        ctx.single_user = not self._tokens

    def _user(self, req: Request) -> str | None:
        """Who sends the request: a user name, or None for anonymous; 401 for a wrong token."""
        if not self._tokens:
            return self.ctx.user
        scheme, _, credentials = (req.headers.get("Authorization") or "").partition(" ")
        if not credentials:
            return None
        secret = credentials.strip().encode()
        for token, user in self._tokens.items():
            if scheme.lower() == "bearer" and hmac.compare_digest(secret, token.encode()):
                return user
        # The exact message huggingface_hub recognizes as a bad token (rather than a missing repo).
        raise ErrorResponse(401, "Invalid credentials in Authorization header")

    @staticmethod
    def _login_required() -> ErrorResponse:
        return ErrorResponse(
            401,
            "Authorization required: this local Hub was started with a token; pass token=... to huggingface_hub "
            "or set HF_TOKEN.",
        )

    def handle(self, req: Request) -> tuple[Response, str]:
        """The response and the route kind it was counted under ("-" when no route matched)."""
        kind = "-"
        try:
            if req.body.framing_error is not None:
                raise ErrorResponse(400, req.body.framing_error)
            if req.path == STATS_PATH and req.method == "GET":
                if self._user(req) is None:
                    raise self._login_required()
                return json_response({**self.ctx.stats.snapshot(), "process": _process_info()}), kind
            route, req.params = match(req.method, req.path)
            kind = route.kind
            self.ctx.stats.request(kind)
            repo_type = API_SEGMENTS.get(req.params.get("rtype", "models"), "model")
            url_path = f"{URL_PREFIXES[repo_type]}{req.params.get('ns')}/{req.params.get('name')}"
            fault = self.faults.check(kind, url_path if "name" in req.params else None)
            if fault is not None:
                self.ctx.stats.fault(kind)
                raise fault.error()
            if kind != "lfs_upload":  # the client PUTs LFS content without its token; the URL is signed instead
                req.user = self._user(req)
                if req.user is None and (route.writes or kind == "whoami"):
                    raise self._login_required()
            if "name" in req.params:
                req.repo = repo_ref(repo_type, req.params["ns"], req.params["name"])
                req.repo = self.ctx.store.canonical(req.repo)  # any case reads the repo, answered with its stored id
                self.ctx.store.require(req.repo)
                if req.user is None and kind != "lfs_upload" and self.ctx.store.metadata(req.repo)["private"]:
                    raise repo_not_found(req.repo.id)  # as the Hub: a private repo does not exist for outsiders
            return route.handler(self.ctx, req), kind
        except ErrorResponse as error:
            return error_response(error), kind
        except Exception as error:  # a bug in a handler: answer 500, keep serving
            if self._log is not None:
                self._log(traceback.format_exc())
            return error_response(ErrorResponse(500, f"Internal error in the local Hub: {error!r}")), kind
