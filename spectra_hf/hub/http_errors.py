"""Hub failures (unreachable endpoint, missing or refused token, any other HTTP error) as one HubError line."""

from __future__ import annotations

import httpx2
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from spectra_hf.errors import HubError


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def explain_hub_error(error: BaseException, *, doing: str, endpoint: str, token: str | None) -> HubError:
    """`error` from huggingface_hub or its HTTP client, raised while `doing` something with the Hub at `endpoint`, as
    one line naming what failed and the fix. `token` is replaced by *** wherever it would appear."""
    if isinstance(error, httpx2.TransportError):
        message = (
            f"cannot reach the Hub at {endpoint} ({type(error).__name__}) while {doing}: check --endpoint / "
            "HF_ENDPOINT, or start a local Hub with `spectra-hf hub serve --root DIR` and pass its URL as --endpoint"
        )
    elif isinstance(error, LocalTokenNotFoundError):
        message = f"no Hub token found while {doing}: set HF_TOKEN, run `hf auth login`, or pass --token"
    elif isinstance(error, HfHubHTTPError) and error.response is not None and error.response.status_code in (401, 403):
        message = (
            f"the Hub at {endpoint} refused the token (HTTP {error.response.status_code}) while {doing}: use a token "
            "with write access to the org (HF_TOKEN, `hf auth login`, or --token)"
        )
    else:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"{doing} failed: {first_line}"
    return HubError(_scrub(message, token))
