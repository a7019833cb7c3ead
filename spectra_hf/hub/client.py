"""Client settings for talking to a Hub endpoint: which endpoints are on this machine, what a local Hub needs from
huggingface_hub (LFS uploads, requests allowed offline), and quiet per-file upload bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from huggingface_hub import constants
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from spectra_hf.hub.localhub.server import is_loopback_host


def is_local_endpoint(endpoint: str) -> bool:
    """True for a Hub on this machine (localhost or a loopback address), such as `spectra-hf hub serve`."""
    return is_loopback_host(urlparse(endpoint).hostname or "")


@contextmanager
def quiet_uploads(quiet: bool) -> Iterator[None]:
    """Silence huggingface_hub's per-file upload bars (our own bars show repos and branches)."""
    was_disabled = are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            enable_progress_bars()


@contextmanager
def local_hub_client(enabled: bool) -> Iterator[None]:
    """For a Hub on this machine: upload through the LFS batch API instead of xet (a local Hub speaks LFS only), and
    let requests through even when HF_HUB_OFFLINE=1 (offline means no network; loopback is not the network).

    This is what HF_HUB_DISABLE_XET=1 / HF_HUB_OFFLINE=0 do; huggingface_hub reads those variables once at import, so
    a process that already imported it is configured through the same constants.
    """
    previous = constants.HF_HUB_DISABLE_XET, constants.HF_HUB_OFFLINE
    if enabled:
        constants.HF_HUB_DISABLE_XET, constants.HF_HUB_OFFLINE = True, False
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET, constants.HF_HUB_OFFLINE = previous
