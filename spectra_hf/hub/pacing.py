"""Pacing and retries for the Hub calls huggingface_hub does not retry (create_repo, create_branch, commits, ...).

The Hub throttles with 429 answers (`Retry-After: S`, or `RateLimit: "api";r=0;t=S`); its published quotas are
about 128 commits per hour per repo and 1000 API requests per 5 minutes. `Pacer` keeps a run under both quotas
(sliding windows), and retries an operation on 429, 5xx and transport errors with the server's delay or an
exponential backoff. Operations passed to it must be safe to repeat (the publisher re-reads the remote state before
every commit, so a retried commit never commits twice).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypedDict, TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import parse_ratelimit_headers

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class LimitOverrides(TypedDict, total=False):
    """Fields of `HubLimits` a caller may override in `HubLimits.unlimited`."""

    commits_per_hour: int
    requests_per_window: int
    window_s: float
    max_retries: int
    backoff_s: float
    max_backoff_s: float


@dataclass(frozen=True)
class HubLimits:
    """Quotas and retry policy of a publish run; the defaults are the Hub's published quotas.

    Attributes:
        commits_per_hour: commits per repo per hour.
        requests_per_window: API requests per `window_s` seconds, all repos together.
        window_s: length of the request window in seconds.
        max_retries: retries of one operation before giving up.
        backoff_s: first backoff when the server gives no delay; doubles per retry (with jitter).
        max_backoff_s: cap of the computed backoff (a server's Retry-After is honoured as given).
    """

    commits_per_hour: int = 128
    requests_per_window: int = 1000
    window_s: float = 300.0
    max_retries: int = 8
    backoff_s: float = 2.0
    max_backoff_s: float = 300.0

    @classmethod
    def unlimited(cls, **overrides: Unpack[LimitOverrides]) -> HubLimits:
        """Quotas high enough never to wait (local Hub, tests), short backoffs."""
        limits = cls(commits_per_hour=10**9, requests_per_window=10**9, backoff_s=0.05, max_backoff_s=1.0)
        return replace(limits, **overrides)


def server_delay(error: BaseException) -> float | None:
    """Seconds the server asked to wait (Retry-After or RateLimit headers of a 429/503), if any."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    info = parse_ratelimit_headers(response.headers)
    if info is not None and info.remaining == 0:
        return float(info.reset_in_seconds)
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def is_retryable(error: BaseException) -> bool:
    """429 and 5xx answers, and transport errors (connection reset, timeout) are worth another try."""
    if isinstance(error, HfHubHTTPError):
        return error.response is not None and error.response.status_code in RETRY_STATUS
    return isinstance(error, httpx2.TransportError)


class Pacer:
    """Runs Hub operations under the quotas of `limits`, retrying throttled or failed ones.

    `sleep` and `clock` are injectable so the quota arithmetic can be checked without waiting.
    """

    def __init__(
        self,
        limits: HubLimits,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._sleep = sleep
        self._clock = clock
        self._requests: deque[float] = deque()
        self._commits: dict[str, deque[float]] = {}
        self.retries = 0
        self.waited_s = 0.0

    def _wait_for(self, window: deque[float], limit: int, span: float, cost: int) -> None:
        while True:
            now = self._clock()
            while window and window[0] <= now - span:
                window.popleft()
            if len(window) + cost <= limit or not window:
                break
            delay = window[0] + span - now
            self.waited_s += delay
            self._sleep(delay)
        window.extend([self._clock()] * cost)

    def admit(self, *, requests: int = 1, repo: str | None = None, commits: int = 0) -> None:
        """Wait until `requests` more API requests (and `commits` commits to `repo`) fit the quotas; count them."""
        limits = self.limits
        if commits and repo is not None:
            window = self._commits.setdefault(repo, deque())
            self._wait_for(window, limits.commits_per_hour, 3600.0, commits)
        self._wait_for(self._requests, limits.requests_per_window, limits.window_s, requests)

    def call(
        self,
        operation: Callable[[], T],
        *,
        requests: int = 1,
        repo: str | None = None,
        commits: int = 0,
        retry_transport: bool = True,
    ) -> T:
        """Run `operation` once it fits the quotas; retry it on 429 / 5xx / transport errors.

        Args:
            operation: a repeatable zero-argument callable doing the Hub calls.
            requests: API requests one attempt costs (counted against the request window).
            repo: the repo it commits to (for the per-repo commit quota).
            commits: commits one attempt may create.
            retry_transport: also retry transport errors (False for a first contact, where an unreachable
                endpoint should fail at once rather than after every backoff).

        Raises:
            The operation's last error when it is not retryable or `max_retries` retries failed.
        """
        attempt = 0
        while True:
            self.admit(requests=requests, repo=repo, commits=commits)
            try:
                return operation()
            except (HfHubHTTPError, httpx2.TransportError) as error:
                transport = isinstance(error, httpx2.TransportError)
                if not is_retryable(error) or (transport and not retry_transport) or attempt >= self.limits.max_retries:
                    raise
                delay = server_delay(error)
                if delay is None:
                    backoff = self.limits.backoff_s * 2**attempt
                    delay = min(self.limits.max_backoff_s, backoff) * random.uniform(0.5, 1.0)
                attempt += 1
                self.retries += 1
                self.waited_s += delay
                self._sleep(delay)
