"""MetadataStore on PostgreSQL: the scaled root's backend, shared by any number of replicas.

The same contract as storage/sqlite_metadata.py, statement for statement:
- every write is one transaction that first takes a cluster-wide advisory lock (WRITE_LOCK),
  so writers are serialized across replicas as SQLite serializes them within one file:
  conditional tag updates, GC's re-checks and "is the blob still there" checks hold exactly;
- the change log's `seq` comes from `change_head` in the same transaction (global, gapless,
  committed in order) and every entry NOTIFYs the other replicas, whose long-polls wake;
- reads are synchronous on the event-loop thread through the engine's reader connection.

Tables: storage/migrations/0001_metadata.sql; image locks: 0004_locks.sql.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import psycopg
import trio

from connreg.locks import policy as lock_policy
from connreg.locks.model import RepositoryLock
from connreg.storage.budget import StorageFull
from connreg.storage.interfaces import (BlobGone, Change, GcSnapshot, ManifestRecord,
                                         ParkedChange, Referrer, ReferencesGone,
                                         TagPrecondition, TagPreconditionFailed,
                                         UploadSessionLimit)
from connreg.storage.postgres_engine import CHANGES_CHANNEL, WRITE_LOCK, PostgresEngine

T = TypeVar("T")

_PARKED_COLUMNS = ("seq, repo, op, tag, digest, origin, method, url, status, code, message,"
                   " parked_at, attempts, retry")


class PostgresMetadataStore:
    def __init__(self, engine: PostgresEngine, blob_present: Callable[[str], bool] | None = None,
                 writers: int = 4):
        self.engine = engine
        # Checked inside write transactions, as in the SQLite store (see its comment).
        self._blob_present = blob_present
        self._write_limiter = trio.CapacityLimiter(writers)
        # The disk budget has no say over the database server's disk; kept for the protocol.
        self.release_headroom: Callable[[], bool] | None = None
        self._changed = trio.Event()
        engine.wake_changes = self._wake
        # wait_for_change re-reads the log this often even without a notification.
        self.recheck_seconds = 1.0
        # The manifest row read along with the last resolve_tag (see there); taken once.
        self._resolved: ManifestRecord | None = None
        # Repositories with a read lock, asked per manifest request. Dropped on every change
        # at any replica (_wake: our own writes, and the listener's LISTEN/NOTIFY on the change
        # head, re-read every second even if a notification is lost; every lock write logs a
        # "lock" change) and reloaded by the next read_locked(): a lock set on one replica holds
        # on all of them within the listener's delay.
        self._read_locked: frozenset[str] | None = None

    def close(self) -> None:
        pass  # the engine is closed by whoever opened it (it serves the control store too)

    def _wake(self) -> None:
        self._resolved = None  # a write or a change elsewhere: never hand out an older row
        self._read_locked = None
        self._changed.set()
        self._changed = trio.Event()

    async def _write(self, fn: Callable[[psycopg.Connection], T], frees: bool = False) -> T:
        """Run `fn` in one transaction holding the write lock, in a worker thread. The
        database's disk full (SQLSTATE 53100) is StorageFull, rolled back."""
        def run() -> T:
            with self.engine.pool.connection() as conn:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                    return fn(conn)

        try:
            result = await trio.to_thread.run_sync(run, limiter=self._write_limiter)
        except psycopg.errors.DiskFull as exc:
            raise StorageFull("storage full: the metadata database cannot grow (PostgreSQL: "
                              "disk full)") from exc
        self._wake()
        return result

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        rows = self.engine.read(sql, args)
        return rows[0] if rows else None

    def _all(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        return self.engine.read(sql, args)

    # --- repositories -------------------------------------------------------------------
    def repository_exists(self, repo: str) -> bool:
        return self._one("SELECT 1 FROM repositories WHERE name = %s", (repo,)) is not None

    def list_repositories(self, n: int | None, last: str | None) -> list[str]:
        sql, args = "SELECT name FROM repositories WHERE name > %s ORDER BY name", [last or ""]
        if n is not None:
            sql += " LIMIT %s"
            args.append(n)
        return [r[0] for r in self._all(sql, args)]

    @staticmethod
    def _ensure_repo(conn, repo: str) -> None:
        conn.execute("INSERT INTO repositories (name, created) VALUES (%s, %s)"
                     " ON CONFLICT DO NOTHING", (repo, time.time()))

    # --- blob links ---------------------------------------------------------------------
    def linked_blob_size(self, repo: str, digest: str) -> int | None:
        row = self._one("SELECT size FROM repo_blobs WHERE repo = %s AND digest = %s",
                        (repo, digest))
        return row[0] if row else None

    def any_blob_size(self, digest: str) -> int | None:
        row = self._one("SELECT size FROM repo_blobs WHERE digest = %s LIMIT 1", (digest,))
        return row[0] if row else None

    def blob_repositories(self, digest: str, limit: int) -> list[str]:
        """Up to `limit` repositories linking `digest` (mount sources for a bulk mount)."""
        return [r[0] for r in self._all(
            "SELECT repo FROM repo_blobs WHERE digest = %s LIMIT %s", (digest, limit))]

    async def link_blob(self, repo: str, digest: str, size: int) -> None:
        def fn(conn):
            if self._blob_present is not None and not self._blob_present(digest):
                raise BlobGone(digest)
            self._ensure_repo(conn, repo)
            conn.execute("INSERT INTO repo_blobs (repo, digest, size, linked)"
                         " VALUES (%s, %s, %s, %s) ON CONFLICT (repo, digest) DO UPDATE"
                         " SET size = EXCLUDED.size, linked = EXCLUDED.linked",
                         (repo, digest, size, time.time()))
        await self._write(fn)

    async def link_blobs(self, links: list[tuple[str, str, int]]) -> None:
        """`link_blob` for many (repo, digest, size) at once, in one transaction: all are
        linked, or (a file gone, BlobGone) none."""
        def fn(conn):
            if self._blob_present is not None:
                gone = next((d for _, d, _ in links if not self._blob_present(d)), None)
                if gone is not None:
                    raise BlobGone(gone)
            now = time.time()
            for repo in dict.fromkeys(r for r, _, _ in links):
                self._ensure_repo(conn, repo)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO repo_blobs (repo, digest, size, linked)"
                                " VALUES (%s, %s, %s, %s) ON CONFLICT (repo, digest) DO UPDATE"
                                " SET size = EXCLUDED.size, linked = EXCLUDED.linked",
                                [(r, d, n, now) for r, d, n in links])
        if links:
            await self._write(fn)

    async def unlink_blob(self, repo: str, digest: str) -> bool:
        def fn(conn):
            return conn.execute("DELETE FROM repo_blobs WHERE repo = %s AND digest = %s",
                                (repo, digest)).rowcount > 0
        return await self._write(fn, frees=True)

    # --- manifests and tags -------------------------------------------------------------
    def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        resolved, self._resolved = self._resolved, None
        if resolved is not None and resolved.repo == repo and resolved.digest == digest:
            return resolved
        row = self._one(
            "SELECT media_type, size, subject, artifact_type, annotations FROM manifests"
            " WHERE repo = %s AND digest = %s", (repo, digest))
        if row is None:
            return None
        return ManifestRecord(repo, digest, row[0], row[1], row[2], row[3], row[4])

    def resolve_tag(self, repo: str, tag: str) -> str | None:
        # One round trip for the usual pair "resolve the tag, then get its manifest": the row
        # comes along and the very next get_manifest of that digest takes it (a read as of
        # this moment, no older than two separate reads would be).
        row = self._one(
            "SELECT t.digest, m.media_type, m.size, m.subject, m.artifact_type, m.annotations"
            " FROM tags t LEFT JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest"
            " WHERE t.repo = %s AND t.tag = %s", (repo, tag))
        if row is None:
            return None
        if row[1] is not None:
            self._resolved = ManifestRecord(repo, row[0], row[1], row[2], row[3], row[4], row[5])
        return row[0]

    def list_tags(self, repo: str, n: int | None, last: str | None) -> list[str]:
        sql = "SELECT tag FROM tags WHERE repo = %s AND tag > %s ORDER BY tag"
        args: list = [repo, last or ""]
        if n is not None:
            sql += " LIMIT %s"
            args.append(n)
        return [r[0] for r in self._all(sql, args)]

    async def put_manifest(self, record: ManifestRecord, references: list[str],
                           tag: str | None, origin: str = "local",
                           precondition: TagPrecondition | None = None) -> None:
        now = time.time()

        def fn(conn):
            known = conn.execute("SELECT 1 FROM manifests WHERE repo = %s AND digest = %s",
                                 (record.repo, record.digest)).fetchone()
            prev = None
            if tag is not None:
                row = conn.execute("SELECT digest FROM tags WHERE repo = %s AND tag = %s",
                                   (record.repo, tag)).fetchone()
                prev = row[0] if row else None
                if precondition is not None and not precondition.holds(prev):
                    raise TagPreconditionFailed(tag, prev)
            if known and (tag is None or prev == record.digest):
                return  # nothing changed: no log entry, so re-pushes do not echo around
            if origin != lock_policy.EXEMPT_ORIGIN:  # locks hold inside the transaction
                refusal = lock_policy.refuse_write(self._locks_in(conn, record.repo), record.repo,
                                                   tag, record.digest, prev)
                if refusal is not None:
                    raise refusal
            self._check_still_stored(conn, record, references)
            self._ensure_repo(conn, record.repo)
            conn.execute(
                "INSERT INTO manifests (repo, digest, media_type, size, subject, artifact_type,"
                " annotations, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (repo, digest) DO UPDATE SET media_type = EXCLUDED.media_type,"
                " size = EXCLUDED.size, subject = EXCLUDED.subject,"
                " artifact_type = EXCLUDED.artifact_type, annotations = EXCLUDED.annotations,"
                " created = EXCLUDED.created",
                (record.repo, record.digest, record.media_type, record.size, record.subject,
                 record.artifact_type, record.annotations_json, now))
            if references:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO manifest_refs (repo, digest, child) VALUES (%s, %s, %s)"
                        " ON CONFLICT DO NOTHING",
                        [(record.repo, record.digest, child) for child in references])
            if tag is not None:
                conn.execute(
                    "INSERT INTO tags (repo, tag, digest, updated) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (repo, tag) DO UPDATE SET digest = EXCLUDED.digest,"
                    " updated = EXCLUDED.updated", (record.repo, tag, record.digest, now))
            self._log(conn, record.repo, "manifest", record.digest, tag, prev, origin, now)
        await self._write(fn)

    def _check_still_stored(self, conn, record: ManifestRecord, references: list[str]) -> None:
        """Inside the write transaction: the manifest's bytes and everything it references
        are still here (garbage collection may have removed them since validation)."""
        if self._blob_present is not None and not self._blob_present(record.digest):
            raise BlobGone(record.digest)
        missing = [d for d in references if conn.execute(
            "SELECT 1 FROM repo_blobs WHERE repo = %s AND digest = %s"
            " UNION ALL SELECT 1 FROM manifests WHERE repo = %s AND digest = %s LIMIT 1",
            (record.repo, d, record.repo, d)).fetchone() is None]
        if missing:
            raise ReferencesGone(missing)

    async def delete_manifest(self, repo: str, digest: str, origin: str = "local") -> bool:
        def fn(conn):
            if origin != lock_policy.EXEMPT_ORIGIN:
                tags = [r[0] for r in conn.execute(
                    "SELECT tag FROM tags WHERE repo = %s AND digest = %s", (repo, digest))]
                refusal = lock_policy.refuse_manifest_delete(self._locks_in(conn, repo), repo,
                                                             digest, tags)
                if refusal is not None:
                    raise refusal
            deleted = conn.execute("DELETE FROM manifests WHERE repo = %s AND digest = %s",
                                   (repo, digest)).rowcount > 0
            if deleted:
                conn.execute("DELETE FROM tags WHERE repo = %s AND digest = %s", (repo, digest))
                conn.execute("DELETE FROM manifest_refs WHERE repo = %s AND digest = %s",
                             (repo, digest))
                self._log(conn, repo, "delete_manifest", digest, None, None, origin, time.time())
            return deleted
        return await self._write(fn, frees=True)

    async def delete_tag(self, repo: str, tag: str, origin: str = "local",
                         precondition: TagPrecondition | None = None) -> bool:
        def fn(conn):
            row = conn.execute("SELECT digest FROM tags WHERE repo = %s AND tag = %s",
                               (repo, tag)).fetchone()
            if precondition is not None and not precondition.holds(row[0] if row else None):
                raise TagPreconditionFailed(tag, row[0] if row else None)
            if row is None:
                return False
            if origin != lock_policy.EXEMPT_ORIGIN:
                refusal = lock_policy.refuse_tag_delete(self._locks_in(conn, repo), repo, tag,
                                                        row[0])
                if refusal is not None:
                    raise refusal
            conn.execute("DELETE FROM tags WHERE repo = %s AND tag = %s", (repo, tag))
            self._log(conn, repo, "delete_tag", None, tag, row[0], origin, time.time())
            return True
        return await self._write(fn, frees=True)

    def manifest_digests(self, repo: str) -> list[str]:
        return [r[0] for r in self._all(
            "SELECT digest FROM manifests WHERE repo = %s ORDER BY created", (repo,))]

    async def unlink_all_blobs(self, repo: str) -> int:
        """Forget a repository's blob links and the repository itself (bytes wait for GC)."""
        def fn(conn):
            n = conn.execute("DELETE FROM repo_blobs WHERE repo = %s", (repo,)).rowcount
            remaining = conn.execute("SELECT 1 FROM manifests WHERE repo = %s LIMIT 1",
                                     (repo,)).fetchone()
            if remaining is None:
                conn.execute("DELETE FROM repositories WHERE name = %s", (repo,))
            return n
        return await self._write(fn, frees=True)

    def referrers(self, repo: str, subject: str, artifact_type: str | None) -> list[Referrer]:
        sql = ("SELECT digest, media_type, size, artifact_type, annotations FROM manifests"
               " WHERE repo = %s AND subject = %s")
        args: list = [repo, subject]
        if artifact_type is not None:
            sql += " AND artifact_type = %s"
            args.append(artifact_type)
        sql += " ORDER BY created, digest"
        return [Referrer(*row) for row in self._all(sql, args)]

    # --- change log -----------------------------------------------------------------------
    @staticmethod
    def _log(conn, repo, op, digest, tag, prev, origin, now) -> None:
        (seq,) = conn.execute("UPDATE change_head SET seq = seq + 1 WHERE id = 1"
                              " RETURNING seq").fetchone()
        conn.execute(
            "INSERT INTO changes (seq, time, repo, op, digest, tag, prev, origin)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (seq, now, repo, op, digest, tag, prev, origin))
        # Delivered at commit (and only then) to every replica's listener.
        conn.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, str(seq)))

    def changes_since(self, cursor: int, limit: int,
                      exclude_origin: str | None = None) -> list[Change]:
        sql = ("SELECT seq, time, repo, op, digest, tag, prev, origin FROM changes"
               " WHERE seq > %s")
        args: list = [cursor]
        if exclude_origin is not None:
            sql += " AND origin != %s"
            args.append(exclude_origin)
        sql += " ORDER BY seq LIMIT %s"
        args.append(limit)
        return [Change(*row) for row in self._all(sql, args)]

    def change_bounds(self) -> tuple[int, int]:
        """(oldest retained seq, newest seq); (0, 0) when the log is empty and never used."""
        first, head = self._one("SELECT (SELECT MIN(seq) FROM changes),"
                                " (SELECT seq FROM change_head WHERE id = 1)")
        return (first if first is not None else head + 1), head

    async def prune_changes(self, older_than: float, keep_from: int | None = None) -> int:
        """Drop entries older than `older_than`, but none from `keep_from` on; the log stays
        contiguous (see the SQLite store)."""
        def fn(conn):
            if keep_from is None:
                return conn.execute("DELETE FROM changes WHERE time < %s",
                                    (older_than,)).rowcount
            return conn.execute("DELETE FROM changes WHERE time < %s AND seq < %s",
                                (older_than, keep_from)).rowcount
        return await self._write(fn, frees=True)

    async def wait_for_change(self, after: int, timeout: float) -> None:
        """Return when the log has an entry past `after` (written at any replica), or after
        `timeout` seconds. Woken by this replica's writes and by the engine's listener; the
        log is re-read at least every second in case a notification was lost."""
        self.engine.start_listening()
        with trio.move_on_after(timeout):
            while self.change_bounds()[1] <= after:
                with trio.move_on_after(self.recheck_seconds):
                    await self._changed.wait()

    # --- chunk index (delta transfer) -----------------------------------------------------
    def chunk_list(self, digest: str, params: str) -> list[tuple[int, int, str]] | None:
        row = self._one("SELECT params FROM chunked WHERE digest = %s", (digest,))
        if row is None or row[0] != params:
            return None
        return [tuple(r) for r in self._all(
            "SELECT chunk_offset, length, chunk_id FROM chunks WHERE digest = %s"
            " ORDER BY chunk_offset", (digest,))]

    def find_chunk(self, chunk_id: str, params: str) -> tuple[str, int, int] | None:
        row = self._one(
            "SELECT c.digest, c.chunk_offset, c.length FROM chunks c"
            " JOIN chunked k ON k.digest = c.digest"
            " WHERE c.chunk_id = %s AND k.params = %s LIMIT 1", (chunk_id, params))
        return tuple(row) if row else None

    def chunk_holders(self, chunk_ids: list[str], params: str
                      ) -> list[tuple[str, str, str, int, int]]:
        """(chunk_id, repo, digest, offset, length): see the SQLite store."""
        return [tuple(r) for r in self._all(
            "SELECT DISTINCT ON (c.chunk_id, r.repo) c.chunk_id, r.repo, c.digest,"
            " c.chunk_offset, c.length FROM chunks c JOIN chunked k ON k.digest = c.digest"
            " JOIN repo_blobs r ON r.digest = c.digest"
            " WHERE k.params = %s AND c.chunk_id = ANY(%s)"
            " ORDER BY c.chunk_id, r.repo, c.chunk_offset",
            (params, list(chunk_ids)))]

    async def put_chunk_list(self, digest: str, params: str,
                             chunks: list[tuple[int, int, str]]) -> None:
        def fn(conn):
            conn.execute("DELETE FROM chunks WHERE digest = %s", (digest,))
            with conn.cursor() as cur:
                with cur.copy("COPY chunks (digest, chunk_offset, length, chunk_id)"
                              " FROM STDIN") as copy:
                    for o, n, c in chunks:
                        copy.write_row((digest, o, n, c))
            conn.execute("INSERT INTO chunked (digest, params) VALUES (%s, %s)"
                         " ON CONFLICT (digest) DO UPDATE SET params = EXCLUDED.params",
                         (digest, params))
        await self._write(fn)

    async def drop_chunk_list(self, digest: str) -> None:
        def fn(conn):
            conn.execute("DELETE FROM chunks WHERE digest = %s", (digest,))
            conn.execute("DELETE FROM chunked WHERE digest = %s", (digest,))
        await self._write(fn, frees=True)

    # --- sync state (cursors) ----------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self._one("SELECT value FROM sync_state WHERE key = %s", (key,))
        return row[0] if row else None

    async def set_state(self, key: str, value: str | None) -> None:
        def fn(conn):
            if value is None:
                conn.execute("DELETE FROM sync_state WHERE key = %s", (key,))
            else:
                conn.execute("INSERT INTO sync_state (key, value) VALUES (%s, %s)"
                             " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                             (key, value))
        await self._write(fn)

    # --- image locks (connreg/locks, docs/locks.md) -----------------------------------
    _LOCK_COLUMNS = "kind, ref, write_enabled, delete_enabled, read_enabled, updated"

    @staticmethod
    def _lock_row(repo: str, row: tuple) -> RepositoryLock:
        kind, ref, write, delete, read, updated = row
        return RepositoryLock(repo, ref if kind == "tag" else None,
                              ref if kind == "digest" else None,
                              bool(write), bool(delete), bool(read), updated)

    def _locks_in(self, conn, repo: str) -> list[RepositoryLock]:
        """`repo`'s locks as seen inside the write transaction `conn` (under the write lock,
        so no replica can change them before it commits)."""
        return [self._lock_row(repo, tuple(r)) for r in conn.execute(
            f"SELECT {self._LOCK_COLUMNS} FROM locks WHERE repo = %s", (repo,))]

    def locks(self, repo: str) -> list[RepositoryLock]:
        """The lock rows of `repo` (only those that disable something)."""
        return [self._lock_row(repo, r) for r in self._all(
            f"SELECT {self._LOCK_COLUMNS} FROM locks WHERE repo = %s", (repo,))]

    def blobs_size(self, repo: str, digest: str) -> int:
        """Bytes of the blobs a manifest references directly (an image's config and layers),
        for the audit trail's `imageSize`."""
        return int(self._one(
            "SELECT COALESCE(SUM(b.size), 0) FROM manifest_refs r JOIN repo_blobs b"
            " ON b.repo = r.repo AND b.digest = r.child"
            " WHERE r.repo = %s AND r.digest = %s", (repo, digest))[0])

    def locked_repositories(self) -> list[str]:
        return [r[0] for r in self._all("SELECT DISTINCT repo FROM locks ORDER BY repo")]

    def read_locked(self, repo: str) -> bool:
        """Whether any read lock exists in `repo`: from memory, reloaded after any change at
        any replica (see __init__), so one query per change, not per request."""
        if self._read_locked is None:
            self._read_locked = frozenset(r[0] for r in self._all(
                "SELECT DISTINCT repo FROM locks WHERE NOT read_enabled"))
        return repo in self._read_locked

    @staticmethod
    def _put_lock(conn, lock: RepositoryLock) -> None:
        conn.execute("DELETE FROM locks WHERE repo = %s AND kind = %s AND ref = %s",
                     (lock.repo, lock.kind, lock.ref))
        if not lock.unlocked:
            conn.execute(f"INSERT INTO locks (repo, {PostgresMetadataStore._LOCK_COLUMNS})"
                         " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         (lock.repo, lock.kind, lock.ref, lock.write_enabled,
                          lock.delete_enabled, lock.read_enabled, lock.updated))

    async def set_lock(self, lock: RepositoryLock, origin: str = "local") -> None:
        """Store one lock (all attributes enabled removes it) and log a "lock" change, which
        carries it down to the children and wakes every replica (their read-lock sets)."""
        def fn(conn):
            self._put_lock(conn, lock)
            self._log(conn, lock.repo, "lock", lock.digest, lock.tag, None, origin, time.time())
        await self._write(fn)

    async def replace_locks(self, repo: str, locks: list[RepositoryLock],
                            origin: str = "parent") -> bool:
        """Make `repo`'s locks equal to `locks` (what the parent holds); log one "lock" change
        when anything differed, so our own children follow. Returns whether it did."""
        def fn(conn):
            key = lambda l: (l.kind, l.ref, l.write_enabled, l.delete_enabled, l.read_enabled)  # noqa
            current = sorted(map(key, self._locks_in(conn, repo)))
            wanted = [l for l in locks if not l.unlocked]
            if current == sorted(map(key, wanted)):
                return False
            conn.execute("DELETE FROM locks WHERE repo = %s", (repo,))
            for lock in wanted:
                self._put_lock(conn, lock)
            self._log(conn, repo, "lock", None, None, None, origin, time.time())
            return True
        return await self._write(fn)

    # --- parked outbox entries --------------------------------------------------------
    async def park_change(self, entry: ParkedChange) -> None:
        values = (entry.seq, entry.repo, entry.op, entry.tag, entry.digest, entry.origin,
                  entry.method, entry.url, entry.status, entry.code, entry.message,
                  entry.parked_at, entry.attempts, bool(entry.retry))
        columns = [c.strip() for c in _PARKED_COLUMNS.split(",")]
        update = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != "seq")

        def fn(conn):
            conn.execute(f"INSERT INTO parked ({_PARKED_COLUMNS}) VALUES"
                         f" ({', '.join(['%s'] * len(values))})"
                         f" ON CONFLICT (seq) DO UPDATE SET {update}", values)
        await self._write(fn)

    def parked_changes(self, repo: str | None = None, retry_only: bool = False,
                       limit: int | None = None) -> list[ParkedChange]:
        sql = f"SELECT {_PARKED_COLUMNS} FROM parked WHERE TRUE"
        args: list = []
        if repo is not None:
            sql += " AND repo = %s"
            args.append(repo)
        if retry_only:
            sql += " AND retry"
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        return [ParkedChange(*row[:-1], retry=bool(row[-1])) for row in self._all(sql, args)]

    def parked_count(self) -> int:
        return self._one("SELECT COUNT(*) FROM parked")[0]

    async def requeue_parked(self, seqs: list[int] | None) -> int:
        return await self._parked_write("UPDATE parked SET retry = TRUE", seqs)

    async def drop_parked(self, seqs: list[int] | None) -> int:
        return await self._parked_write("DELETE FROM parked", seqs)

    async def _parked_write(self, statement: str, seqs: list[int] | None) -> int:
        def fn(conn):
            if seqs is None:
                return conn.execute(statement).rowcount
            return conn.execute(statement + " WHERE seq = ANY(%s)", (list(seqs),)).rowcount
        return await self._write(fn)

    # --- upload sessions ----------------------------------------------------------------
    def upload_repo(self, upload_id: str) -> str | None:
        row = self._one("SELECT repo FROM uploads WHERE id = %s", (upload_id,))
        return row[0] if row else None

    async def create_upload(self, upload_id: str, repo: str, owner: str = "",
                            max_per_owner: int | None = None, max_total: int | None = None,
                            reclaim_idle_before: float | None = None,
                            keep: frozenset[str] = frozenset()) -> str | None:
        def fn(conn):
            # Counted under the write lock, so concurrent starts on any replica cannot overshoot.
            if max_total is not None:
                (total,) = conn.execute("SELECT COUNT(*) FROM uploads").fetchone()
                if total >= max_total:
                    raise UploadSessionLimit("total", owner, max_total)
            reclaimed = None
            if max_per_owner is not None:
                (mine,) = conn.execute("SELECT COUNT(*) FROM uploads WHERE owner = %s",
                                       (owner,)).fetchone()
                if mine >= max_per_owner:
                    reclaimed = self._reclaimable(conn, owner, reclaim_idle_before, keep)
                    if reclaimed is None:
                        raise UploadSessionLimit("identity", owner, max_per_owner)
                    conn.execute("DELETE FROM uploads WHERE id = %s", (reclaimed,))
            now = time.time()
            conn.execute("INSERT INTO uploads (id, repo, created, owner, touched)"
                         " VALUES (%s, %s, %s, %s, %s)", (upload_id, repo, now, owner, now))
            return reclaimed
        return await self._write(fn)

    @staticmethod
    def _reclaimable(conn, owner: str, idle_before: float | None,
                     keep: frozenset[str]) -> str | None:
        if idle_before is None:
            return None
        rows = conn.execute("SELECT id FROM uploads WHERE owner = %s AND touched < %s"
                            " ORDER BY touched", (owner, idle_before)).fetchall()
        return next((upload_id for (upload_id,) in rows if upload_id not in keep), None)

    async def delete_upload(self, upload_id: str) -> None:
        await self.delete_uploads([upload_id])

    async def delete_uploads(self, upload_ids: list[str]) -> None:
        def fn(conn):
            conn.execute("DELETE FROM uploads WHERE id = ANY(%s)", (list(upload_ids),))
        await self._write(fn, frees=True)

    def upload_ids(self) -> set[str]:
        return {row[0] for row in self._all("SELECT id FROM uploads")}

    async def touch_uploads(self, touched: dict[str, float]) -> None:
        def fn(conn):
            with conn.cursor() as cur:
                cur.executemany("UPDATE uploads SET touched = GREATEST(touched, %s)"
                                " WHERE id = %s", [(when, i) for i, when in touched.items()])
        await self._write(fn)

    def expired_uploads(self, untouched_since: float) -> list[str]:
        return [row[0] for row in self._all(
            "SELECT id FROM uploads WHERE touched < %s", (untouched_since,))]

    # --- garbage collection (gc/) --------------------------------------------------------
    # As in the SQLite store: decide on a snapshot, re-check every deletion under the write
    # lock, never write the change log.

    def gc_snapshot(self, outbox_cursor_key: str | None, parent_origin: str) -> GcSnapshot:
        """Everything the mark phase needs in one REPEATABLE READ transaction (a consistent
        view). Blocking: run it in a worker thread."""
        with self.engine.pool.connection() as conn:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                q = lambda sql, args=(): [tuple(r) for r in conn.execute(sql, args)]  # noqa
                manifests = q("SELECT repo, digest, created, subject FROM manifests")
                tags = q("SELECT DISTINCT repo, digest FROM tags")
                refs = q("SELECT repo, digest, child FROM manifest_refs")
                links = q("SELECT repo, digest, size, COALESCE(linked, 0) FROM repo_blobs")
                uploads = q("SELECT id, created FROM uploads")
                chunked = q("SELECT k.digest, (SELECT COUNT(*) FROM chunks c"
                            " WHERE c.digest = k.digest) FROM chunked k")
                outbox: list[tuple[str, str]] = []
                if outbox_cursor_key is not None:
                    row = q("SELECT value FROM sync_state WHERE key = %s",
                            (outbox_cursor_key,))
                    outbox = q("SELECT repo, digest FROM changes WHERE seq > %s"
                               " AND origin != %s AND op = 'manifest'"
                               " AND digest IS NOT NULL",
                               (int(row[0][0]) if row else 0, parent_origin))
                    outbox += q("SELECT repo, digest FROM parked WHERE op = 'manifest'"
                                " AND digest IS NOT NULL")
                repositories = [r[0] for r in q("SELECT name FROM repositories")]
        return GcSnapshot(manifests, tags, refs, links, uploads, chunked, outbox, repositories)

    async def gc_delete_manifests(self, repo: str, candidates: dict[str, float]) -> list[str]:
        """Delete those of `candidates` still unneeded (see the SQLite store)."""
        def fn(conn):
            batch = {d for d, created in candidates.items() if conn.execute(
                "SELECT 1 FROM manifests WHERE repo = %s AND digest = %s AND created = %s",
                (repo, d, created)).fetchone()}
            changed = True
            while changed:  # keeping one may keep others: settle to a fixed point
                changed = False
                for digest in sorted(batch):
                    if self._gc_needed(conn, repo, digest, batch):
                        batch.discard(digest)
                        changed = True
            for digest in batch:
                conn.execute("DELETE FROM manifests WHERE repo = %s AND digest = %s",
                             (repo, digest))
                conn.execute("DELETE FROM manifest_refs WHERE repo = %s AND digest = %s",
                             (repo, digest))
            return sorted(batch)
        return await self._write(fn, frees=True)

    @staticmethod
    def _gc_needed(conn, repo: str, digest: str, batch: set[str]) -> bool:
        if conn.execute("SELECT 1 FROM tags WHERE repo = %s AND digest = %s LIMIT 1",
                        (repo, digest)).fetchone():
            return True
        if conn.execute("SELECT 1 FROM locks WHERE repo = %s AND NOT delete_enabled AND"
                        " (kind = 'repository' OR (kind = 'digest' AND ref = %s)) LIMIT 1",
                        (repo, digest)).fetchone():
            return True  # a delete lock protects it from collection too (docs/locks.md)
        holders = conn.execute(
            "SELECT digest FROM manifest_refs WHERE repo = %s AND child = %s"
            " UNION SELECT digest FROM manifests WHERE repo = %s AND subject = %s",
            (repo, digest, repo, digest)).fetchall()
        if any(h[0] not in batch for h in holders):
            return True
        subject = conn.execute(
            "SELECT s.digest FROM manifests m JOIN manifests s"
            " ON s.repo = m.repo AND s.digest = m.subject WHERE m.repo = %s AND m.digest = %s",
            (repo, digest)).fetchone()
        return subject is not None and subject[0] not in batch

    async def gc_unlink_blobs(self, repo: str, digests: list[str], cut: float) -> list[str]:
        def fn(conn):
            return [d for d in digests if conn.execute(
                "DELETE FROM repo_blobs WHERE repo = %s AND digest = %s"
                " AND COALESCE(linked, 0) < %s AND NOT EXISTS"
                " (SELECT 1 FROM manifest_refs WHERE repo = %s AND child = %s)",
                (repo, d, cut, repo, d)).rowcount]
        return await self._write(fn, frees=True)

    async def gc_delete_blobs(self, digests: list[str], remove: Callable[[str], int | None]
                              ) -> list[tuple[str, int, int]]:
        """See the SQLite store: `remove` runs under the write lock, so a link or manifest
        committed at any replica either came first (and keeps the blob) or checks the blob
        after it is gone."""
        def fn(conn):
            freed = []
            for d in digests:
                if conn.execute(
                        "SELECT 1 FROM repo_blobs WHERE digest = %s"
                        " UNION ALL SELECT 1 FROM manifest_refs WHERE child = %s"
                        " UNION ALL SELECT 1 FROM manifests WHERE digest = %s LIMIT 1",
                        (d, d, d)).fetchone():
                    continue
                size = remove(d)
                if size is None:
                    continue
                rows = conn.execute("DELETE FROM chunks WHERE digest = %s", (d,)).rowcount
                conn.execute("DELETE FROM chunked WHERE digest = %s", (d,))
                freed.append((d, size, rows))
            return freed
        return await self._write(fn, frees=True)

    async def gc_drop_chunk_lists(self, digests: list[str]) -> int:
        def fn(conn):
            rows = 0
            for d in digests:
                if self._blob_present is not None and self._blob_present(d):
                    continue  # stored again since the snapshot
                rows += conn.execute("DELETE FROM chunks WHERE digest = %s", (d,)).rowcount
                conn.execute("DELETE FROM chunked WHERE digest = %s", (d,))
            return rows
        return await self._write(fn, frees=True)

    async def gc_delete_upload_rows(self, upload_ids: list[str]) -> int:
        def fn(conn):
            return conn.execute("DELETE FROM uploads WHERE id = ANY(%s)",
                                (list(upload_ids),)).rowcount
        return await self._write(fn, frees=True)

    async def gc_drop_empty_repositories(self, names: list[str]) -> list[str]:
        def fn(conn):
            return [n for n in names if conn.execute(
                "DELETE FROM repositories WHERE name = %s"
                " AND NOT EXISTS (SELECT 1 FROM manifests WHERE repo = %s)"
                " AND NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo = %s)"
                " AND NOT EXISTS (SELECT 1 FROM tags WHERE repo = %s)",
                (n, n, n, n)).rowcount]
        return await self._write(fn, frees=True)
