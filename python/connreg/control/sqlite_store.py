"""ControlStore on SQLite: `<data_dir>/control.sqlite`, beside the registry's metadata.

A sibling file rather than tables in metadata.sqlite: the control plane's writes (rare, small)
never queue behind a push's metadata writes, and the file can be backed up on its own. Same
discipline as storage.sqlite_metadata: WAL, synchronous=FULL, one writer in a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Callable, TypeVar

import trio

from connreg.control.interfaces import CONNECTED_REGISTRY
from connreg.storage.budget import StorageFull, is_sqlite_full
from connreg.storage.sqlite_metadata import _connect

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    name TEXT NOT NULL COLLATE NOCASE,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
"""


class _Txn:
    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self.kinds: set[str] = set()  # written in this transaction

    def get(self, kind: str, name: str) -> dict | None:
        row = self._conn.execute("SELECT doc FROM resources WHERE kind = ? AND name = ?",
                                 (kind, name)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, kind: str) -> list[dict]:
        return [json.loads(r[0]) for r in self._conn.execute(
            "SELECT doc FROM resources WHERE kind = ? ORDER BY name", (kind,))]

    def count(self, kind: str) -> int:
        return self._conn.execute("SELECT count(*) FROM resources WHERE kind = ?",
                                  (kind,)).fetchone()[0]

    def put(self, kind: str, doc: dict) -> None:
        self.kinds.add(kind)
        self._conn.execute("INSERT OR REPLACE INTO resources (kind, name, doc) VALUES (?, ?, ?)",
                           (kind, doc["name"], json.dumps(doc, sort_keys=True)))

    def delete(self, kind: str, name: str) -> bool:
        self.kinds.add(kind)
        return self._conn.execute("DELETE FROM resources WHERE kind = ? AND name = ?",
                                  (kind, name)).rowcount > 0


class SqliteControlStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(path)
        self._writer.executescript(SCHEMA)
        self._reader = _connect(path)
        self._read = _Txn(self._reader)
        self._limiter = trio.CapacityLimiter(1)
        self.generation = 0
        # Moves only when something besides connected-registry documents was written: the
        # status every child reports every 5 s must not make every node re-hash every
        # child's sync token (scrypt, 16 MiB) for its next request (auth/identity.py).
        self.credentials_generation = 0

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    def get(self, kind: str, name: str) -> dict | None:
        return self._read.get(kind, name)

    def list(self, kind: str) -> list[dict]:
        return self._read.list(kind)

    def count(self, kind: str) -> int:
        return self._read.count(kind)

    def transact_sync(self, fn: Callable[[_Txn], T]) -> T:
        conn = self._writer
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            txn = _Txn(conn)
            result = fn(txn)
            conn.execute("COMMIT")
        except BaseException as exc:
            # A failed COMMIT (disk full) may leave the transaction open: roll back so the
            # next write starts clean, and answer a full disk as such (507, not 500).
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if is_sqlite_full(exc):
                raise StorageFull("storage full: the control-plane database cannot grow "
                                  "(SQLite: database or disk is full)") from exc
            raise
        if conn.total_changes != before:  # a transaction that wrote nothing changes no cache
            self.generation += 1
            if txn.kinds - {CONNECTED_REGISTRY}:
                self.credentials_generation += 1
        return result

    async def transact(self, fn: Callable[[_Txn], T]) -> T:
        return await trio.to_thread.run_sync(self.transact_sync, fn, limiter=self._limiter)
