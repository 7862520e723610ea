"""Counts that need a query of the node's metadata database, read off the event loop.

Each call opens its own read-only connection (a fraction of a millisecond), so the event loop's
reader and writer are never shared with a worker thread, and a scrape or status report never
waits behind a push's write transaction (WAL readers do not block).

On a PostgreSQL root (`metadata_url`, docs/scaling.md) there is no metadata.sqlite: the same
queries run on a pooled connection of the replica's engine (`engine` below), in the worker
thread too, so they count the whole cluster's change log, not a file that does not exist.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import trio


METADATA_FILE = "metadata.sqlite"
T = TypeVar("T")
Query = Callable[..., list[tuple]]  # query(sql with ? placeholders, args) -> rows


def _with_query(data_dir: Path, engine, fn: Callable[[Query], T]) -> T:
    """Run `fn` with a read-only query function on the node's metadata database: the
    PostgreSQL engine's pool when there is one, else a private read-only SQLite connection."""
    if engine is not None:
        with engine.pool.connection() as pg:
            return fn(lambda sql, args=(): pg.execute(sql.replace("?", "%s"), args).fetchall())
    conn = sqlite3.connect(f"file:{Path(data_dir) / METADATA_FILE}?mode=ro", uri=True, timeout=5)
    try:
        return fn(lambda sql, args=(): conn.execute(sql, args).fetchall())
    finally:
        conn.close()


@dataclass(frozen=True)
class OutboxCounts:
    pending: int  # own changes the parent has not acknowledged yet (ReadWrite only)
    parked: int   # outbox entries the parent refused, set aside (sync/parked.py)


def _read_outbox(q: Query, up_cursor: int | None, has_outbox: bool) -> OutboxCounts:
    pending = 0
    if has_outbox:
        from connreg.sync.puller import PARENT  # loaded by the edge's sync already

        pending = q("SELECT COUNT(*) FROM changes WHERE seq > ? AND origin != ?",
                    (up_cursor or 0, PARENT))[0][0]
    parked = q("SELECT COUNT(*) FROM parked")[0][0]
    return OutboxCounts(pending, parked)


async def outbox_counts(data_dir: Path, up_cursor: int | None, has_outbox: bool,
                        engine=None) -> OutboxCounts:
    return await trio.to_thread.run_sync(
        _with_query, data_dir, engine, lambda q: _read_outbox(q, up_cursor, has_outbox))


def _first_change_times(q: Query, cursors: dict[str, int]) -> dict[str, float | None]:
    out = {}
    for name, cursor in cursors.items():
        rows = q("SELECT time FROM changes WHERE seq > ? ORDER BY seq LIMIT 1", (cursor,))
        out[name] = rows[0][0] if rows else None
    return out


async def oldest_unapplied(data_dir: Path, cursors: dict[str, int],
                           engine=None) -> dict[str, float | None]:
    """For each child's feed cursor: when the first change it has not applied was written
    here (None when it has applied everything): its lag, in time."""
    if not cursors:
        return {}
    return await trio.to_thread.run_sync(
        _with_query, data_dir, engine, lambda q: _first_change_times(q, cursors))
