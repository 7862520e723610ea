"""Failed-login limiting per (account, source address), with the attempt reserved up front.

Why per pair: a limit per address alone lets anyone lock out everyone behind the same address
(a NAT, a proxy, a parent serving many children) with ten bad logins. Keyed by account too, a
guesser only ever locks the account it is guessing, and only from its own address; the admin,
other tokens and the sync tokens of children behind that address keep signing in.

Why reserve: a check takes two scrypt hashes (~100 ms). Counting a failure only after the hash
lets a burst of concurrent guesses all start before the first one is counted. Here each attempt
takes a slot first (`reserve`); in-flight attempts count like failures, so at most `limit`
guesses per pair are ever checked at once or within the window, and the rest are refused at
once without hashing. The slot is then confirmed as a failure or given back (`succeeded`).

Lockout: `limit` failures within `window` seconds lock the pair for `window` seconds; each
further lockout of the same pair doubles that, up to `max_lockout`. A pair that stays clean for
`max_lockout` after its lockout ended starts again from the first step; a correct password
(possible only while not locked) forgets its history at once.

Memory is bounded: at most `max_pairs` pairs are tracked, least recently touched evicted first,
except that a pair still locked is kept over older unlocked ones (so a flood of random account
names cannot push a lockout out early).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger("connreg.auth")

# Account names beyond this length cannot exist; longer keys would only cost memory.
MAX_ACCOUNT_KEY = 128
# Eviction looks at most this many locked pairs before evicting one anyway.
EVICTION_SCAN = 32


@dataclass(frozen=True)
class Refusal:
    """The pair may not try now: answer 429 with `Retry-After: retry_after`."""
    retry_after: float


class _Pair:
    __slots__ = ("failures", "in_flight", "locked_until", "lockouts", "touched")

    def __init__(self) -> None:
        self.failures: list[float] = []   # failure times inside the window, oldest first
        self.in_flight = 0                # reserved attempts not yet confirmed or released
        self.locked_until = 0.0
        self.lockouts = 0                 # consecutive lockouts (the back-off step)
        self.touched = 0.0


class FailureLimiter:
    def __init__(self, limit: int, window: float, max_lockout: float,
                 max_pairs: int = 100_000, clock=time.monotonic):
        self.limit = max(1, limit)
        self.window = window
        self.max_lockout = max(max_lockout, window)
        self.max_pairs = max_pairs
        self._clock = clock
        # Since start, for /metrics (connreg_auth_failed_logins_total, …_lockouts_total).
        self.failures_total = 0
        self.lockouts_total = 0
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()

    @staticmethod
    def key(account: str, source: str) -> tuple[str, str]:
        # Names are unique case-insensitively, so `Admin` and `admin` are the same account.
        return account[:MAX_ACCOUNT_KEY].lower(), source

    def __len__(self) -> int:
        return len(self._pairs)

    def _get(self, key: tuple[str, str], now: float) -> _Pair | None:
        pair = self._pairs.get(key)
        if pair is None:
            return None
        horizon = now - self.window
        while pair.failures and pair.failures[0] <= horizon:
            pair.failures.pop(0)
        if pair.lockouts and now > pair.locked_until + self.max_lockout:
            pair.lockouts = 0  # clean for long enough: back to the first step
        if not pair.failures and not pair.in_flight and not pair.lockouts:
            del self._pairs[key]
            return None
        return pair

    def _new(self, key: tuple[str, str]) -> _Pair:
        self._evict()
        pair = self._pairs[key] = _Pair()
        return pair

    def _evict(self) -> None:
        now = self._clock()
        skipped = 0
        while len(self._pairs) >= self.max_pairs:
            key, pair = next(iter(self._pairs.items()))
            if pair.locked_until > now and skipped < EVICTION_SCAN:
                self._pairs.move_to_end(key)  # keep a live lockout over older clean pairs
                skipped += 1
                continue
            del self._pairs[key]

    def reserve(self, account: str, source: str) -> Refusal | None:
        """Take an attempt slot for the pair before checking its password; a Refusal if the
        pair is locked or its slots are taken. Every None must be followed by exactly one
        `failed` or `succeeded` call."""
        now = self._clock()
        key = self.key(account, source)
        pair = self._get(key, now)
        if pair is not None:
            if pair.locked_until > now:
                return Refusal(pair.locked_until - now)
            if len(pair.failures) + pair.in_flight >= self.limit:
                # Only in-flight attempts fill the slots (failures alone would have locked):
                # they finish within a second or so.
                return Refusal(1.0)
        else:
            pair = self._new(key)
        pair.in_flight += 1
        pair.touched = now
        self._pairs.move_to_end(key)
        return None

    def _release(self, key: tuple[str, str]) -> _Pair | None:
        pair = self._pairs.get(key)
        if pair is not None and pair.in_flight:
            pair.in_flight -= 1
        return pair

    def succeeded(self, account: str, source: str) -> None:
        """The reserved attempt had the right password: the pair's history is forgotten."""
        key = self.key(account, source)
        pair = self._release(key)
        if pair is not None:
            pair.failures.clear()
            pair.lockouts = 0
            if not pair.in_flight:
                del self._pairs[key]

    def failed(self, account: str, source: str) -> float | None:
        """The reserved attempt failed. Returns the lockout's length when this failure locked
        the pair (the caller logs it once), else None."""
        now = self._clock()
        key = self.key(account, source)
        pair = self._release(key)
        if pair is None:  # evicted meanwhile: track it again
            pair = self._new(key)
        self.failures_total += 1
        pair.failures.append(now)
        pair.touched = now
        self._pairs.move_to_end(key)
        horizon = now - self.window
        while pair.failures and pair.failures[0] <= horizon:
            pair.failures.pop(0)
        if len(pair.failures) < self.limit:
            return None
        pair.lockouts += 1
        self.lockouts_total += 1
        length = min(self.window * 2 ** (pair.lockouts - 1), self.max_lockout)
        pair.locked_until = now + length
        pair.failures.clear()
        return length

    def retry_after(self, account: str, source: str) -> float | None:
        """Seconds until the pair may try again if it is locked now, else None (no slot
        is taken)."""
        now = self._clock()
        pair = self._get(self.key(account, source), now)
        if pair is not None and pair.locked_until > now:
            return pair.locked_until - now
        return None
