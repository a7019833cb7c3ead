"""Deterministic fault injection: make chosen requests fail the way a busy Hub does (429 + Retry-After, or 5xx).

A `Fault` matches requests of one route kind (see `ROUTE_KINDS` in routes.py), optionally of one repo, and counts
them; it fails either the first `first` of them, or the 1st, (1+every)th, (1+2*every)th, ... so with `every=2` each
operation that retries once fails exactly once. Counting is per fault and thread-safe, so runs are reproducible.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .errors import ErrorResponse
from .routes import ROUTE_KINDS


@dataclass
class Fault:
    """Fail requests of route `kind` with `status` (429 answers carry `Retry-After: retry_after`)."""

    kind: str
    status: int = 429
    first: int = 0
    every: int = 0
    retry_after: int = 1
    repo: str | None = None  # repo url path ("org/name" or "datasets/org/name"); None matches all repos
    seen: int = field(default=0, init=False)
    injected: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in ROUTE_KINDS:
            raise ValueError(f"Unknown route kind {self.kind!r} for a fault: use one of {', '.join(ROUTE_KINDS)}.")
        if self.status != 429 and not 500 <= self.status <= 599:
            raise ValueError(f"Fault status {self.status} is neither 429 nor 5xx.")
        if (self.first > 0) == (self.every > 0) or min(self.first, self.every) < 0:
            raise ValueError("A fault needs exactly one of first=N (fail the first N) or every=K (fail 1 in K).")
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0 seconds.")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Read `KIND:STATUS:first=N` or `KIND:STATUS:every=K`, optionally followed by `:retry_after=S` and
        `:repo=org/name`; e.g. `commit:429:first=2:retry_after=1`."""
        kind, _, rest = spec.partition(":")
        status, _, options = rest.partition(":")
        values: dict = {}
        try:
            for option in filter(None, options.split(":")):
                key, equals, value = option.partition("=")
                if not equals or key not in ("first", "every", "retry_after", "repo"):
                    raise ValueError(f"unknown option {option!r}")
                values[key] = value if key == "repo" else int(value)
            return cls(kind, int(status), **values)
        except ValueError as error:
            raise ValueError(
                f"Bad fault spec {spec!r} ({error}): write KIND:STATUS:first=N or KIND:STATUS:every=K, "
                "e.g. commit:429:first=2:retry_after=1"
            ) from error

    def hit(self) -> bool:
        """Count one matching request; True when this one must fail."""
        self.seen += 1
        fails = self.seen <= self.first if self.first else (self.seen - 1) % self.every == 0
        self.injected += int(fails)
        return fails

    def error(self) -> ErrorResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.status in (429, 503) else None
        return ErrorResponse(
            self.status,
            f"Injected fault: {self.status} on a {self.kind!r} request (local Hub fault injection).",
            headers=headers,
        )


class FaultPlan:
    """The active faults of a server; `check` is called once per request."""

    def __init__(self, faults: list[Fault] | None = None):
        self._lock = threading.Lock()
        self._faults = list(faults or [])

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def check(self, kind: str, repo: str | None) -> Fault | None:
        """The fault that fails this request, if any (every matching fault counts the request)."""
        with self._lock:
            failing = [
                fault for fault in self._faults
                if fault.kind == kind and fault.repo in (None, repo) and fault.hit()
            ]
        return failing[0] if failing else None
