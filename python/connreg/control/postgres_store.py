"""ControlStore on PostgreSQL, for replicas that share one control plane.

Documents live in `control_resources` (storage/migrations/0002_control.sql). `generation` is
the cluster-wide `control_generation` counter: a transaction that wrote bumps it (and NOTIFYs),
this replica sees its own bump at once, the others through the engine's listener, so caches
keyed on it (verified passwords, a child's resource) follow a change made at any replica.
`credentials_generation` (the `credentials` column, migration 0005) moves only when something
besides connected-registry documents was written, as in the SQLite store: children's status
reports do not drop the verified-credential cache (auth/identity.py).
"""

from __future__ import annotations

import json
from typing import Callable, TypeVar

import psycopg
import trio

from connreg.control.interfaces import CONNECTED_REGISTRY
from connreg.storage.budget import StorageFull
from connreg.storage.postgres_engine import CONTROL_CHANNEL, PostgresEngine

T = TypeVar("T")
# pg_advisory_xact_lock key of control-plane writes ("connregc"): serialized like SQLite's.
CONTROL_LOCK = 0x636F6E6E72656763


class _Txn:
    def __init__(self, conn: psycopg.Connection):
        self._conn = conn
        self.wrote = False
        self.kinds: set[str] = set()  # written in this transaction

    def get(self, kind: str, name: str) -> dict | None:
        row = self._conn.execute("SELECT doc FROM control_resources WHERE kind = %s"
                                 " AND key = %s", (kind, name.lower())).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, kind: str) -> list[dict]:
        return [json.loads(r[0]) for r in self._conn.execute(
            "SELECT doc FROM control_resources WHERE kind = %s ORDER BY key", (kind,))]

    def count(self, kind: str) -> int:
        return self._conn.execute("SELECT count(*) FROM control_resources WHERE kind = %s",
                                  (kind,)).fetchone()[0]

    def put(self, kind: str, doc: dict) -> None:
        self._conn.execute(
            "INSERT INTO control_resources (kind, key, name, doc) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (kind, key) DO UPDATE SET name = EXCLUDED.name, doc = EXCLUDED.doc",
            (kind, doc["name"].lower(), doc["name"], json.dumps(doc, sort_keys=True)))
        self.wrote = True
        self.kinds.add(kind)

    def delete(self, kind: str, name: str) -> bool:
        deleted = self._conn.execute("DELETE FROM control_resources WHERE kind = %s"
                                     " AND key = %s", (kind, name.lower())).rowcount > 0
        self.wrote = self.wrote or deleted
        if deleted:
            self.kinds.add(kind)
        return deleted


class _Reads:
    """The store's reads, through the engine's event-loop reader connection."""

    def __init__(self, engine: PostgresEngine):
        self._engine = engine

    def get(self, kind: str, name: str) -> dict | None:
        rows = self._engine.read("SELECT doc FROM control_resources WHERE kind = %s"
                                 " AND key = %s", (kind, name.lower()))
        return json.loads(rows[0][0]) if rows else None

    def list(self, kind: str) -> list[dict]:
        return [json.loads(r[0]) for r in self._engine.read(
            "SELECT doc FROM control_resources WHERE kind = %s ORDER BY key", (kind,))]

    def count(self, kind: str) -> int:
        return self._engine.read("SELECT count(*) FROM control_resources WHERE kind = %s",
                                 (kind,))[0][0]


class PostgresControlStore:
    def __init__(self, engine: PostgresEngine):
        self.engine = engine
        self._read = _Reads(engine)
        self._limiter = trio.CapacityLimiter(1)
        self._own_generation = 0
        self._own_credentials = 0

    @property
    def generation(self) -> int:
        return max(self._own_generation, self.engine.control_generation)

    @property
    def credentials_generation(self) -> int:
        return max(self._own_credentials, self.engine.credentials_generation)

    def close(self) -> None:
        pass  # the engine is closed by the Registry that opened it

    def get(self, kind: str, name: str) -> dict | None:
        return self._read.get(kind, name)

    def list(self, kind: str) -> list[dict]:
        return self._read.list(kind)

    def count(self, kind: str) -> int:
        return self._read.count(kind)

    def transact_sync(self, fn: Callable[[_Txn], T]) -> T:
        try:
            with self.engine.pool.connection() as conn:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CONTROL_LOCK,))
                    txn = _Txn(conn)
                    result = fn(txn)
                    generation = None
                    if txn.wrote:  # a transaction that wrote nothing changes no cache
                        credentials = bool(txn.kinds - {CONNECTED_REGISTRY})
                        generation, credentials = conn.execute(
                            "UPDATE control_generation SET generation = generation + 1,"
                            " credentials = credentials + %s WHERE id = 1"
                            " RETURNING generation, credentials",
                            (int(credentials),)).fetchone()
                        conn.execute("SELECT pg_notify(%s, %s)",
                                     (CONTROL_CHANNEL, str(generation)))
        except psycopg.errors.DiskFull as exc:
            raise StorageFull("storage full: the control-plane database cannot grow "
                              "(PostgreSQL: disk full)") from exc
        if generation is not None:
            self._own_generation = max(self._own_generation, generation)
            self._own_credentials = max(self._own_credentials, credentials)
        return result

    async def transact(self, fn: Callable[[_Txn], T]) -> T:
        self.engine.start_listening()  # normally started when the node starts serving
        return await trio.to_thread.run_sync(self.transact_sync, fn, limiter=self._limiter)

    # --- secrets every replica shares -----------------------------------------------------
    def shared_secret(self, name: str, create: Callable[[], bytes]) -> bytes:
        """The secret `name`, created with `create()` by the first replica that asks."""
        with self.engine.pool.connection() as conn:
            conn.execute("INSERT INTO shared_secrets (name, value) VALUES (%s, %s)"
                         " ON CONFLICT (name) DO NOTHING", (name, create()))
            return bytes(conn.execute("SELECT value FROM shared_secrets WHERE name = %s",
                                      (name,)).fetchone()[0])
