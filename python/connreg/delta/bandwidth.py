"""Bandwidth cap for sync traffic: a token bucket shared by every transfer of a node.

`account(n)` is awaited after (downloads) or before (uploads) moving n bytes; it sleeps as long
as needed to keep the rate at or under `rate` bytes/s. The bucket holds at most one second of
traffic, so a 10 s average never exceeds the cap by more than one second's worth (≤ 10 %).
"""

from __future__ import annotations

import trio


class BandwidthMeter:
    def __init__(self, rate: float | None):
        self.rate = rate  # bytes per second; None or 0 means unlimited
        self.total = 0
        self._tokens = float(rate or 0)
        self._last = trio.current_time()
        self._lock = trio.Lock()

    def set_rate(self, rate: float | None) -> None:
        if rate != self.rate:
            self.rate = rate
            self._tokens = min(self._tokens, float(rate or 0))

    async def account(self, n: int) -> None:
        self.total += n
        if not self.rate:
            return
        async with self._lock:  # one waiter at a time keeps the order fair
            now = trio.current_time()
            self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            if self._tokens < 0:
                await trio.sleep(-self._tokens / self.rate)
                self._last = trio.current_time()
                self._tokens = 0.0
