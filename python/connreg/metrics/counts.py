"""Counts that need a query of the node's metadata database, read off the event loop.

Each call opens its own read-only connection (a fraction of a millisecond), so the event loop's
reader and writer are never shared with a worker thread, and a scrape or status report never
waits behind a push's write transaction (WAL readers do not block).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import trio

from connreg.sync.puller import PARENT

METADATA_FILE = "metadata.sqlite"


@dataclass(frozen=True)
class OutboxCounts:
    pending: int  # own changes the parent has not acknowledged yet (ReadWrite only)
    parked: int   # outbox entries the parent refused, set aside (sync/parked.py)


def _read_outbox(db: Path, up_cursor: int | None, has_outbox: bool) -> OutboxCounts:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        pending = 0
        if has_outbox:
            pending = conn.execute("SELECT COUNT(*) FROM changes WHERE seq > ? AND origin != ?",
                                   (up_cursor or 0, PARENT)).fetchone()[0]
        parked = conn.execute("SELECT COUNT(*) FROM parked").fetchone()[0]
        return OutboxCounts(pending, parked)
    finally:
        conn.close()


async def outbox_counts(data_dir: Path, up_cursor: int | None, has_outbox: bool) -> OutboxCounts:
    return await trio.to_thread.run_sync(_read_outbox, Path(data_dir) / METADATA_FILE,
                                         up_cursor, has_outbox)


def _first_change_times(db: Path, cursors: dict[str, int]) -> dict[str, float | None]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        out = {}
        for name, cursor in cursors.items():
            row = conn.execute("SELECT time FROM changes WHERE seq > ? ORDER BY seq LIMIT 1",
                               (cursor,)).fetchone()
            out[name] = row[0] if row else None
        return out
    finally:
        conn.close()


async def oldest_unapplied(data_dir: Path, cursors: dict[str, int]) -> dict[str, float | None]:
    """For each child's feed cursor: when the first change it has not applied was written
    here (None when it has applied everything): its lag, in time."""
    if not cursors:
        return {}
    return await trio.to_thread.run_sync(_first_change_times, Path(data_dir) / METADATA_FILE,
                                         cursors)
