"""One replica's connections to the shared PostgreSQL database (psycopg 3).

- writes: a small pool (psycopg_pool) used from trio worker threads, one transaction each;
- reads: one autocommit connection used from the event-loop thread only (the MetadataStore
  protocol's reads are synchronous; on loopback or a LAN a read is a fraction of a
  millisecond, and a dedicated connection never waits behind a queued writer);
- a listener thread: LISTEN on the change and control channels, so long-polls and caches on
  every replica follow a change made at any replica within milliseconds. It also re-reads the
  two counters every second, so a lost notification (the listener's connection dropped and
  reconnected) delays a wake-up by a second at most, never forever.

Every replica applies the schema migrations (storage/migrations/) when it starts.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import psycopg
import trio
from psycopg_pool import ConnectionPool

from connreg.storage import migrations
from connreg.storage.backends import EngineUnreachable

log = logging.getLogger("connreg.postgres")

CHANGES_CHANNEL = "connreg_changes"
CONTROL_CHANNEL = "connreg_control"
# pg_advisory_xact_lock key every metadata write transaction takes first ("connregw"): writers
# are serialized cluster-wide exactly as SQLite's BEGIN IMMEDIATE serializes them in one file,
# which keeps conditional tag updates, GC re-checks and the change log's order as strict.
WRITE_LOCK = 0x636F6E6E72656777
# pg_try_advisory_lock key of the replica running garbage collection ("connregg").
GC_LOCK = 0x636F6E6E72656767


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://…"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())


# Every connection: give up connecting after 5 s, and notice a server that vanished (no RST:
# a dead host, a cut network) within ~15 s instead of the kernel's minutes, so neither the
# event loop's reads nor a pooled writer hang on it; a read never runs longer than 15 s.
CONNECT_OPTIONS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5,
                   "keepalives_interval": 2, "keepalives_count": 3, "tcp_user_timeout": 15000}
READER_OPTIONS = {**CONNECT_OPTIONS, "options": "-c statement_timeout=15000"}


class PostgresEngine:
    def __init__(self, url: str, pool_size: int = 4, connect_timeout: float = 10.0):
        self.url = url
        try:
            self.applied = migrations.apply(url)
        except psycopg.OperationalError as exc:
            raise EngineUnreachable(f"cannot reach the metadata database {redact(url)}: "
                                    f"{str(exc).strip().splitlines()[-1]}") from None
        except migrations.SchemaTooNew as exc:
            raise EngineUnreachable(str(exc)) from None
        if self.applied:
            log.info("applied schema migration(s) %s to %s", self.applied, redact(url))
        self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True,
                                   kwargs={"autocommit": True, **CONNECT_OPTIONS},
                                   timeout=connect_timeout,
                                   check=ConnectionPool.check_connection,
                                   name="connreg-metadata")
        self._reader: psycopg.Connection | None = None
        self._reader_lock = threading.Lock()
        # What the listener last saw; read by the event loop (plain int assignment is atomic).
        self.change_head = 0
        self.control_generation = 0
        self.credentials_generation = 0  # the part of it that can change a credential's check
        self.wake_changes: Callable[[], None] | None = None
        self._trio_token = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        # The listener re-reads the counters this often even without a notification.
        self.recheck_seconds = 1.0

    # --- reads on the event loop --------------------------------------------------------
    def read(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        """Run one read statement on the reader connection; one reconnect on a broken one."""
        return self.execute(sql, args)

    def execute(self, sql: str, args: tuple | list | dict = ()) -> list[tuple]:
        """Run one statement (a write too, autocommit) on the reader connection; its rows,
        if it returns any. For small, rare writes on the event loop (login throttling)."""
        with self._reader_lock:
            for attempt in (1, 2):
                try:
                    if self._reader is None or self._reader.closed:
                        self._reader = psycopg.connect(self.url, autocommit=True,
                                                       **READER_OPTIONS)
                    cur = self._reader.execute(sql, args)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError:
                    if self._reader is not None:
                        self._reader.close()
                    self._reader = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def ping(self) -> None:
        """Raises unless the database answers (readiness)."""
        self.read("SELECT 1")

    # --- change notifications -------------------------------------------------------------
    def start_listening(self) -> None:
        """Follow both counters; call `wake_changes` (set by the metadata store) on the trio
        thread whenever the change head moves at any replica. Call from inside trio;
        idempotent."""
        if self._listener is not None:
            return
        self._trio_token = trio.lowlevel.current_trio_token()
        self._listener = threading.Thread(target=self._listen, name="connreg-pg-listen",
                                          daemon=True)
        self._listener.start()

    def _counters(self, conn: psycopg.Connection) -> tuple[int, int, int]:
        row = conn.execute("SELECT (SELECT seq FROM change_head WHERE id = 1), generation,"
                           " credentials FROM control_generation WHERE id = 1").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def _listen(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **CONNECT_OPTIONS) as conn:
                    conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    conn.execute(f"LISTEN {CONTROL_CHANNEL}")
                    backoff = 0.5
                    while not self._stop.is_set():
                        self._observe(*self._counters(conn))
                        for _ in conn.notifies(timeout=self.recheck_seconds, stop_after=1):
                            pass  # whatever it said, the counters above are re-read now
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                log.warning("listening for changes on PostgreSQL failed (%s); retrying in %.1fs",
                            type(exc).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _observe(self, head: int, generation: int, credentials: int) -> None:
        if credentials > self.credentials_generation:
            self.credentials_generation = credentials
        if generation > self.control_generation:
            self.control_generation = generation
        if head > self.change_head:
            self.change_head = head
            if self.wake_changes is not None:
                try:
                    trio.from_thread.run_sync(self.wake_changes, trio_token=self._trio_token)
                except trio.RunFinishedError:
                    self._stop.set()

    @asynccontextmanager
    async def gc_lock(self) -> AsyncIterator[None]:
        """Hold the cluster-wide GC lock (a session advisory lock on a connection of its own,
        waited for in a worker thread). A replica killed mid-collection drops its connection,
        and with it the lock."""
        conn = await trio.to_thread.run_sync(
            lambda: psycopg.connect(self.url, autocommit=True, **CONNECT_OPTIONS))
        try:
            while True:  # poll, so cancelling the wait never leaves a thread blocked in it
                got = await trio.to_thread.run_sync(
                    lambda: conn.execute("SELECT pg_try_advisory_lock(%s)",
                                         (GC_LOCK,)).fetchone()[0])
                if got:
                    break
                await trio.sleep(0.5)
            yield
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.close)  # releases the lock with the session

    def close(self) -> None:
        self._stop.set()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self.pool.close()
