"""Live transfer figures of a node's sync: bytes by direction, the recent rate, what is left.

`connreg connected-registry show --watch` and the dashboard turn these into a progress line
(bytes, rate, ETA); `/metrics` exports the totals. Everything here is in memory and O(1) per
update: the puller and pusher call it for every piece they move.
"""

from __future__ import annotations

import time
from collections import deque

# The rate is the bytes moved over the last RATE_WINDOW seconds, kept in one-second buckets.
RATE_WINDOW = 10
# Transfers tracked for "bytes remaining"; beyond, the oldest are forgotten (bounded memory).
MAX_TRANSFERS = 256


class Transfer:
    """One blob on its way: its size and how much of it has arrived or left."""

    __slots__ = ("size", "done")

    def __init__(self, size: int, done: int = 0):
        self.size = max(size, 0)
        self.done = min(max(done, 0), self.size)

    def advance(self, n: int) -> None:
        self.done = min(self.done + n, self.size)


class TransferProgress:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self.bytes = {"down": 0, "up": 0}
        # Bytes of large blobs assembled from chunks held locally vs fetched from the parent:
        # what delta transfer saved.
        self.delta_local_bytes = 0
        self.delta_fetched_bytes = 0
        self._buckets: deque[list[int]] = deque(maxlen=RATE_WINDOW + 1)  # [second, bytes]
        self._transfers: dict[str, Transfer] = {}

    def moved(self, n: int, direction: str = "down") -> None:
        self.bytes[direction] = self.bytes.get(direction, 0) + n
        second = int(self._clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])

    def rate(self) -> float:
        """Bytes per second over the last RATE_WINDOW seconds (both directions)."""
        now = int(self._clock())
        recent = sum(n for second, n in self._buckets if now - second < RATE_WINDOW)
        return recent / RATE_WINDOW

    def delta_assembled(self, local: int, fetched: int) -> None:
        self.delta_local_bytes += local
        self.delta_fetched_bytes += fetched

    # --- transfers in flight --------------------------------------------------------------------
    def begin(self, key: str, size: int, done: int = 0) -> Transfer:
        transfer = self._transfers.get(key)
        if transfer is None:
            if len(self._transfers) >= MAX_TRANSFERS:
                self._transfers.pop(next(iter(self._transfers)))
            transfer = self._transfers[key] = Transfer(size, done)
        return transfer

    def advance(self, key: str, n: int) -> None:
        transfer = self._transfers.get(key)
        if transfer is not None:
            transfer.advance(n)

    def end(self, key: str) -> None:
        self._transfers.pop(key, None)

    def remaining(self) -> int | None:
        """Bytes still to move for the blobs in flight; None when nothing is in flight."""
        if not self._transfers:
            return None
        return sum(t.size - t.done for t in self._transfers.values())

    def to_json(self) -> dict:
        rate = self.rate()
        remaining = self.remaining()
        eta = None
        if remaining is not None and rate > 0:
            eta = round(remaining / rate, 1)
        return {"bytesDown": self.bytes.get("down", 0), "bytesUp": self.bytes.get("up", 0),
                "bytesPerSecond": round(rate, 1), "bytesRemaining": remaining,
                "etaSeconds": eta, "deltaLocalBytes": self.delta_local_bytes,
                "deltaFetchedBytes": self.delta_fetched_bytes}
