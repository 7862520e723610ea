"""Group commit for the metadata store's one writer connection.

Every write is its own transaction with `synchronous=FULL`, so each costs an fsync (a few ms
on a VM disk, far more on a busy one). Under a burst (sync applying 8 entries at once, 20
clients pushing) those fsyncs, one after the other, were the ceiling of a node's throughput.
Writes that queue up while one is being committed now share the next transaction: each runs in
its own SAVEPOINT (so one that raises is rolled back alone, exactly as its own transaction
would be), then one COMMIT makes them all durable, and only then is any of them answered. The
order is the order of arrival, the same as one at a time. A failed COMMIT (disk full) fails
every write of the group; each caller then handles it as before (docs/architecture.md,
"Disk budget").

A caller cancelled while its write waits in the queue takes it out: the write never happens.
Once its write is taken into a group it completes (as a write in a worker thread always has),
and the cancellation reaches the caller at its next checkpoint.
"""

from __future__ import annotations

import copy
import sqlite3
from typing import Any, Callable

import trio

# Writes per transaction at most: bounds how long one group holds the writer.
MAX_GROUP = 64


class _Write:
    __slots__ = ("fn", "taken", "done", "ok", "value")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]):
        self.fn = fn
        self.taken = False
        self.done = trio.Event()
        self.ok = False
        self.value: Any = None


class GroupCommitter:
    def __init__(self, conn: Callable[[], sqlite3.Connection], limiter: trio.CapacityLimiter):
        self._conn = conn
        self._limiter = limiter  # shared with the store's other uses of the writer
        self._queue: list[_Write] = []
        self._busy = False
        self._idle = trio.Event()

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn` in a transaction shared with the writes queued beside it; its result, or
        its exception (also the COMMIT's)."""
        await trio.lowlevel.checkpoint_if_cancelled()  # as a worker-thread call would
        write = _Write(fn)
        self._queue.append(write)
        try:
            while not write.done.is_set():
                if self._busy:
                    await self._idle.wait()
                    continue
                await self._lead()
        except trio.Cancelled:
            if not write.taken:
                self._queue.remove(write)
                raise
            with trio.CancelScope(shield=True):
                await write.done.wait()
        if write.ok:
            return write.value
        raise write.value

    async def _lead(self) -> None:
        group, self._queue[:MAX_GROUP] = self._queue[:MAX_GROUP], []
        for write in group:
            write.taken = True
        self._busy = True
        try:
            # Taken writes are run whatever happens to the leader meanwhile (see above).
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._commit, group, limiter=self._limiter)
        finally:
            self._busy = False
            for write in group:
                write.done.set()
            idle, self._idle = self._idle, trio.Event()
            idle.set()

    def _commit(self, group: list[_Write]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for write in group:
                conn.execute("SAVEPOINT write")
                try:
                    write.value, write.ok = write.fn(conn), True
                    conn.execute("RELEASE write")
                except BaseException as exc:  # this write alone is undone
                    write.value, write.ok = exc, False
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
            conn.execute("COMMIT")
        except BaseException as exc:
            # A failed COMMIT (disk full) may leave the transaction open, or SQLite may have
            # rolled it back already: either way the next write must start clean.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            for write in group:  # each caller raises its own copy
                write.value, write.ok = copy.copy(exc), False
