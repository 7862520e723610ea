"""Failed-login limiting shared by the replicas of a scaled root (docs/scaling.md).

The per-replica `FailureLimiter` still reserves attempt slots (its in-flight accounting is
about checks running in this process); on top of it, failures and lockouts live in PostgreSQL,
so a guesser spreading attempts over replicas through the balancer gets `limit` tries per
window in total, not per replica, and a lockout holds at every replica. Logins are rare next
to pulls and each already costs a ~100 ms hash, so one short statement on the replica's
reader connection per step is cheap.

Bounded: a pair's failures older than the window are deleted with each new one, and lockouts
that ended more than `max_lockout` ago (back-off forgotten) are swept with each lockout.
"""

from __future__ import annotations

import time

from connreg.auth.ratelimit import FailureLimiter, Refusal
from connreg.storage.postgres_engine import PostgresEngine


class SharedFailureLimiter(FailureLimiter):
    def __init__(self, engine: PostgresEngine, limit: int, window: float, max_lockout: float,
                 wall_clock=time.time, **kw):
        super().__init__(limit, window, max_lockout, **kw)
        self._engine = engine
        self._wall = wall_clock

    def _shared_lock(self, account: str, source: str) -> float | None:
        rows = self._engine.execute(
            "SELECT locked_until FROM login_lockouts WHERE account = %s AND source = %s",
            (account, source))
        now = self._wall()
        if rows and rows[0][0] > now:
            return rows[0][0] - now
        return None

    def reserve(self, account: str, source: str) -> Refusal | None:
        refusal = super().reserve(account, source)
        if refusal is not None:
            return refusal
        account_key, source_key = self.key(account, source)
        locked = self._shared_lock(account_key, source_key)
        if locked is not None:
            self._release(self.key(account, source))  # give the slot back: no check runs
            return Refusal(locked)
        return None

    def retry_after(self, account: str, source: str) -> float | None:
        local = super().retry_after(account, source)
        shared = self._shared_lock(*self.key(account, source))
        waits = [w for w in (local, shared) if w is not None]
        return max(waits) if waits else None

    def succeeded(self, account: str, source: str) -> None:
        super().succeeded(account, source)
        account_key, source_key = self.key(account, source)
        self._engine.execute("DELETE FROM login_failures WHERE account = %s AND source = %s",
                             (account_key, source_key))
        self._engine.execute("DELETE FROM login_lockouts WHERE account = %s AND source = %s",
                             (account_key, source_key))

    def failed(self, account: str, source: str) -> float | None:
        super().failed(account, source)  # local bookkeeping; the shared count decides
        account_key, source_key = self.key(account, source)
        now = self._wall()
        rows = self._engine.execute(
            "WITH pruned AS (DELETE FROM login_failures WHERE account = %(a)s"
            " AND source = %(s)s AND at <= %(horizon)s),"
            " added AS (INSERT INTO login_failures (account, source, at)"
            " VALUES (%(a)s, %(s)s, %(now)s))"
            " SELECT count(*) + 1 FROM login_failures WHERE account = %(a)s AND source = %(s)s"
            " AND at > %(horizon)s",
            {"a": account_key, "s": source_key, "now": now, "horizon": now - self.window})
        if rows[0][0] < self.limit:
            return None
        rows = self._engine.execute(
            "INSERT INTO login_lockouts AS l (account, source, locked_until, lockouts)"
            " VALUES (%(a)s, %(s)s, %(now)s, 1) ON CONFLICT (account, source) DO UPDATE SET"
            " lockouts = CASE WHEN %(now)s > l.locked_until + %(max)s THEN 1"
            " ELSE l.lockouts + 1 END RETURNING lockouts",
            {"a": account_key, "s": source_key, "now": now, "max": self.max_lockout})
        length = min(self.window * 2 ** (rows[0][0] - 1), self.max_lockout)
        self._engine.execute(
            "UPDATE login_lockouts SET locked_until = %s WHERE account = %s AND source = %s",
            (now + length, account_key, source_key))
        self._engine.execute(
            "DELETE FROM login_failures WHERE account = %s AND source = %s",
            (account_key, source_key))
        self._engine.execute("DELETE FROM login_lockouts WHERE locked_until < %s",
                             (now - self.max_lockout,))
        return length
