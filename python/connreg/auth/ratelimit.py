"""Failed-login limiting per source address: a sliding window of failure times."""

from __future__ import annotations

import time
from collections import deque


class FailureLimiter:
    """At most `limit` failures per `window` seconds per source; then refuse until one ages out."""

    MAX_SOURCES = 100_000  # bound memory under a spray of addresses

    def __init__(self, limit: int, window: float, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, source: str) -> deque[float] | None:
        q = self._failures.get(source)
        if q is None:
            return None
        horizon = self._clock() - self.window
        while q and q[0] <= horizon:
            q.popleft()
        if not q:
            del self._failures[source]
            return None
        return q

    def retry_after(self, source: str) -> float | None:
        """Seconds until `source` may try again, or None if it may try now."""
        q = self._recent(source)
        if q is None or len(q) < self.limit:
            return None
        return max(q[0] + self.window - self._clock(), 0.0)

    def record_failure(self, source: str) -> None:
        if len(self._failures) >= self.MAX_SOURCES and source not in self._failures:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(source, deque()).append(self._clock())
