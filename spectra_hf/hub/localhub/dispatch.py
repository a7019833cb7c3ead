"""One request through the local Hub: route, count, inject faults, check the token, check the repo, run the handler.

Every failure becomes the JSON + headers answer huggingface_hub expects ({"error": ...}, X-Error-Code,
X-Error-Message), never a traceback.
"""

from __future__ import annotations

import hmac
import traceback
from collections.abc import Callable

from .context import HubContext
from .errors import HubError
from .faults import FaultPlan
from .names import API_SEGMENTS, URL_PREFIXES, repo_ref
from .protocol import Request, Response, json_response
from .routes import match

STATS_PATH = "/api/_local/stats"


def error_response(error: HubError) -> Response:
    headers = dict(error.headers)
    if error.code:
        headers["X-Error-Code"] = error.code
    # Header values must be one latin-1 line.
    headers["X-Error-Message"] = " ".join(error.message.split())[:500].encode("latin-1", "replace").decode("latin-1")
    return json_response({"error": error.message, **error.extra}, status=error.status, headers=headers)


class Dispatcher:
    """Turns a Request into a Response; `log` (if given) receives tracebacks of handler bugs."""

    def __init__(self, ctx: HubContext, faults: FaultPlan, token: str | None, log: Callable[[str], None] | None):
        self.ctx = ctx
        self.faults = faults
        self._token = token
        self._log = log

    def _authorize(self, req: Request) -> None:
        if self._token is None:
            return
        scheme, _, credentials = (req.headers.get("Authorization") or "").partition(" ")
        if not credentials:
            raise HubError(
                401,
                "Authorization required: this local Hub was started with a token; pass token=... to huggingface_hub "
                "or set HF_TOKEN.",
            )
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self._token.encode()):
            # The exact message huggingface_hub recognizes as a bad token (rather than a missing repo).
            raise HubError(401, "Invalid credentials in Authorization header")

    def handle(self, req: Request) -> tuple[Response, str]:
        """The response and the route kind it was counted under ("-" when no route matched)."""
        kind = "-"
        try:
            if req.path == STATS_PATH and req.method == "GET":
                self._authorize(req)
                return json_response(self.ctx.stats.snapshot()), kind
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
                self._authorize(req)
            if "name" in req.params:
                req.repo = repo_ref(repo_type, req.params["ns"], req.params["name"])
                self.ctx.store.require(req.repo)
            return route.handler(self.ctx, req), kind
        except HubError as error:
            return error_response(error), kind
        except Exception as error:  # a bug in a handler: answer 500, keep serving
            if self._log is not None:
                self._log(traceback.format_exc())
            return error_response(HubError(500, f"Internal error in the local Hub: {error!r}")), kind
