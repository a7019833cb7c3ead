"""Request and commit counters of a running local Hub, for tests and benchmarks (`LocalHub.stats`)."""

from __future__ import annotations

import threading
from collections import Counter


class Stats:
    """Thread-safe counts: requests and injected faults per route kind, commits per repo (commit endpoint only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._commits: Counter[str] = Counter()

    def request(self, kind: str) -> None:
        with self._lock:
            self._requests[kind] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def commit(self, repo: str) -> None:
        with self._lock:
            self._commits[repo] += 1

    def snapshot(self) -> dict:
        """{"requests": {kind: n}, "faults": {kind: n}, "commits": {repo: n}, "total_requests": n}."""
        with self._lock:
            return {
                "requests": dict(self._requests),
                "faults": dict(self._faults),
                "commits": dict(self._commits),
                "total_requests": sum(self._requests.values()),
            }

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._commits.clear()
