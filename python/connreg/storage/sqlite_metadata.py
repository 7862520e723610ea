"""MetadataStore on SQLite in WAL mode: the embedded default.

Reads run on the event-loop thread through their own connection (they take microseconds and WAL
lets them proceed during a write). Writes go through one writer connection in a worker thread,
one at a time, with synchronous=FULL so a committed push survives power loss; the event loop
never waits on an fsync.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

import trio

from connreg.storage.group_commit import GroupCommitter
from connreg.storage.budget import StorageFull, is_sqlite_full
from connreg.locks import policy as lock_policy
from connreg.locks.model import RepositoryLock
from connreg.storage.interfaces import (Change, ManifestRecord, ParkedChange, Referrer,
                                         TagPrecondition, TagPreconditionFailed,
                                         UploadSessionLimit)
from connreg.storage.interfaces import BlobGone, GcSnapshot, ReferencesGone

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS repo_blobs (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (repo, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS repo_blobs_digest ON repo_blobs (digest);
CREATE TABLE IF NOT EXISTS manifests (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    subject TEXT,
    artifact_type TEXT,
    annotations TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (repo, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifests_subject ON manifests (repo, subject);
-- What a manifest points at (blobs and child manifests), for garbage collection.
CREATE TABLE IF NOT EXISTS manifest_refs (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    child TEXT NOT NULL,
    PRIMARY KEY (repo, digest, child)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags (
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (repo, tag)
) WITHOUT ROWID;
-- The change log: every manifest/tag change, written in the transaction that makes it.
-- Children read it as their change feed; a ReadWrite node's outbox is its entries whose origin
-- is not the parent. `prev` is what a tag pointed at before (conflict detection upstream).
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    repo TEXT NOT NULL,
    op TEXT NOT NULL,
    digest TEXT,
    tag TEXT,
    prev TEXT,
    origin TEXT NOT NULL
);
-- Content-defined chunks of stored blobs (delta transfer): which bytes of which blob hold a
-- chunk with a given BLAKE3 id. `chunked` records that a blob's list is complete, and with
-- which chunking parameters it was cut.
CREATE TABLE IF NOT EXISTS chunks (
    digest TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    PRIMARY KEY (digest, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_id ON chunks (chunk_id);
CREATE TABLE IF NOT EXISTS chunked (
    digest TEXT PRIMARY KEY,
    params TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Open upload sessions; `owner` is who started one (for the per-identity cap), `touched` its
-- last activity (for the TTL). Older databases get these two columns in _migrate_uploads.
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    created REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    touched REAL NOT NULL DEFAULT 0
);
-- Outbox entries the parent refused for good (sync/parked.py), kept apart so the outbox
-- moves on: what the change was, the refused request and the parent's answer.
CREATE TABLE IF NOT EXISTS parked (
    seq INTEGER PRIMARY KEY,
    repo TEXT NOT NULL,
    op TEXT NOT NULL,
    tag TEXT,
    digest TEXT,
    origin TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    status INTEGER NOT NULL,
    code TEXT,
    message TEXT NOT NULL,
    parked_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    retry INTEGER NOT NULL DEFAULT 0
);
-- Image locks (connreg/locks, docs/locks.md): a repository (ref ''), a tag or a manifest digest
-- with an operation switched off. A row exists only while something is disabled.
CREATE TABLE IF NOT EXISTS locks (
    repo TEXT NOT NULL,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    write_enabled INTEGER NOT NULL,
    delete_enabled INTEGER NOT NULL,
    read_enabled INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (repo, kind, ref)
) WITHOUT ROWID;
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database created by an older version up to this schema (idempotent)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(repo_blobs)")}
    if "linked" not in columns:
        # When a blob was last linked (garbage collection's grace period); NULL for links
        # made before this column existed, which count as old.
        try:
            conn.execute("ALTER TABLE repo_blobs ADD COLUMN linked REAL")
        except sqlite3.OperationalError as exc:  # another process added it a moment ago
            if "duplicate column" not in str(exc):
                raise
    # Garbage collection asks "does anything still reference this digest?" across repositories.
    conn.execute("CREATE INDEX IF NOT EXISTS manifest_refs_child ON manifest_refs (child, repo)")
    conn.execute("CREATE INDEX IF NOT EXISTS manifests_digest ON manifests (digest)")


def _migrate_uploads(conn: sqlite3.Connection) -> None:
    """Give an uploads table from before session caps its `owner` and `touched` columns (in
    one transaction, so no row is ever left with touched = 0, which would read as expired)."""
    conn.execute("BEGIN IMMEDIATE")  # also waits out another process migrating right now
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(uploads)")}
        if "owner" not in columns:
            conn.execute("ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        if "touched" not in columns:
            conn.execute("ALTER TABLE uploads ADD COLUMN touched REAL NOT NULL DEFAULT 0")
            conn.execute("UPDATE uploads SET touched = created")
        conn.execute("CREATE INDEX IF NOT EXISTS uploads_owner ON uploads (owner)")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteMetadataStore:
    def __init__(self, path: Path, blob_present: Callable[[str], bool] | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._writer = _connect(path)
        self._writer.executescript(SCHEMA)
        _migrate(self._writer)
        _migrate_uploads(self._writer)
        self._reader = _connect(path)
        # Whether a blob's file exists. Links and manifest rows are written only after checking
        # it inside their transaction, where garbage collection also deletes files, so a
        # deduplicated upload racing the sweep can never leave a row without its bytes.
        self._blob_present = blob_present
        self._write_limiter = trio.CapacityLimiter(1)
        self._group = GroupCommitter(lambda: self._writer, self._write_limiter)
        # Set by the Registry to the disk budget's `release_reserve`: frees headroom for deletes.
        self.release_headroom: Callable[[], bool] | None = None
        # Replaced after every committed change; long-polling feed readers wait on it.
        self._changed = trio.Event()
        # Repositories with a read lock, kept in memory: the fast manifest path asks per request.
        self._read_locked = self._load_read_locked()

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    async def _write(self, fn: Callable[[sqlite3.Connection], T], frees: bool = False) -> T:
        """Run `fn` in one transaction on the writer connection, off the event loop.

        A full disk (SQLITE_FULL) raises StorageFull with the transaction rolled back. A write
        that `frees` space (deletes, GC) first gets the disk's headroom: `release_headroom`
        (the budget's reserved file) is called and the write tried once more.
        """

        def run() -> T:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full) may leave the transaction open, or SQLite may have
                # rolled it back already: either way the next write must start clean.
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
            return result

        try:
            # Shares a transaction (one fsync) with the writes queued beside it.
            result = await self._group.run(fn)
        except sqlite3.Error as exc:
            if not is_sqlite_full(exc):
                raise
            if not (frees and self.release_headroom is not None and self.release_headroom()):
                raise StorageFull("storage full: the metadata database cannot grow (SQLite: "
                                  "database or disk is full)") from exc
            try:
                result = await trio.to_thread.run_sync(run, limiter=self._write_limiter)
            except sqlite3.Error as again:
                if is_sqlite_full(again):
                    raise StorageFull("storage full: the metadata database cannot grow, even "
                                      "after releasing the headroom file") from again
                raise
        self._changed.set()
        self._changed = trio.Event()
        return result

    def _one(self, sql: str, args: tuple) -> tuple | None:
        return self._reader.execute(sql, args).fetchone()

    # --- repositories -------------------------------------------------------------------
    def repository_exists(self, repo: str) -> bool:
        return self._one("SELECT 1 FROM repositories WHERE name = ?", (repo,)) is not None

    def list_repositories(self, n: int | None, last: str | None) -> list[str]:
        sql, args = "SELECT name FROM repositories WHERE name > ? ORDER BY name", [last or ""]
        if n is not None:
            sql += " LIMIT ?"
            args.append(n)
        return [r[0] for r in self._reader.execute(sql, args)]

    @staticmethod
    def _ensure_repo(conn: sqlite3.Connection, repo: str) -> None:
        conn.execute("INSERT OR IGNORE INTO repositories (name, created) VALUES (?, ?)",
                     (repo, time.time()))

    # --- blob links ---------------------------------------------------------------------
    def linked_blob_size(self, repo: str, digest: str) -> int | None:
        row = self._one("SELECT size FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, digest))
        return row[0] if row else None

    def any_blob_size(self, digest: str) -> int | None:
        row = self._one("SELECT size FROM repo_blobs WHERE digest = ? LIMIT 1", (digest,))
        return row[0] if row else None

    def blob_repositories(self, digest: str, limit: int) -> list[str]:
        """Up to `limit` repositories linking `digest` (mount sources for a bulk mount)."""
        return [r[0] for r in self._reader.execute(
            "SELECT repo FROM repo_blobs WHERE digest = ? LIMIT ?", (digest, limit))]

    async def link_blob(self, repo: str, digest: str, size: int) -> None:
        def fn(conn):
            if self._blob_present is not None and not self._blob_present(digest):
                raise BlobGone(digest)
            self._ensure_repo(conn, repo)
            conn.execute("INSERT OR REPLACE INTO repo_blobs (repo, digest, size, linked)"
                         " VALUES (?, ?, ?, ?)", (repo, digest, size, time.time()))
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
            conn.executemany("INSERT OR REPLACE INTO repo_blobs (repo, digest, size, linked)"
                             " VALUES (?, ?, ?, ?)", [(r, d, n, now) for r, d, n in links])
        if links:
            await self._write(fn)

    async def unlink_blob(self, repo: str, digest: str) -> bool:
        def fn(conn):
            return conn.execute("DELETE FROM repo_blobs WHERE repo = ? AND digest = ?",
                                (repo, digest)).rowcount > 0
        return await self._write(fn, frees=True)

    # --- manifests and tags -------------------------------------------------------------
    def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        row = self._one(
            "SELECT media_type, size, subject, artifact_type, annotations FROM manifests"
            " WHERE repo = ? AND digest = ?", (repo, digest))
        if row is None:
            return None
        return ManifestRecord(repo, digest, row[0], row[1], row[2], row[3], row[4])

    def resolve_tag(self, repo: str, tag: str) -> str | None:
        row = self._one("SELECT digest FROM tags WHERE repo = ? AND tag = ?", (repo, tag))
        return row[0] if row else None

    def list_tags(self, repo: str, n: int | None, last: str | None) -> list[str]:
        sql, args = "SELECT tag FROM tags WHERE repo = ? AND tag > ? ORDER BY tag", [repo, last or ""]
        if n is not None:
            sql += " LIMIT ?"
            args.append(n)
        return [r[0] for r in self._reader.execute(sql, args)]

    async def put_manifest(self, record: ManifestRecord, references: list[str],
                           tag: str | None, origin: str = "local",
                           precondition: TagPrecondition | None = None) -> None:
        now = time.time()

        def fn(conn):
            known = conn.execute("SELECT 1 FROM manifests WHERE repo = ? AND digest = ?",
                                 (record.repo, record.digest)).fetchone()
            prev = None
            if tag is not None:
                row = conn.execute("SELECT digest FROM tags WHERE repo = ? AND tag = ?",
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
                "INSERT OR REPLACE INTO manifests (repo, digest, media_type, size, subject,"
                " artifact_type, annotations, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.repo, record.digest, record.media_type, record.size, record.subject,
                 record.artifact_type, record.annotations_json, now))
            conn.executemany(
                "INSERT OR IGNORE INTO manifest_refs (repo, digest, child) VALUES (?, ?, ?)",
                [(record.repo, record.digest, child) for child in references])
            if tag is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO tags (repo, tag, digest, updated) VALUES (?, ?, ?, ?)",
                    (record.repo, tag, record.digest, now))
            self._log(conn, record.repo, "manifest", record.digest, tag, prev, origin, now)
        await self._write(fn)

    def _check_still_stored(self, conn, record: ManifestRecord, references: list[str]) -> None:
        """Inside the manifest's write transaction: its bytes and everything it references are
        still here. The caller validated them earlier; garbage collection may have removed
        them since (it deletes in its own transactions), and then nothing may be written."""
        if self._blob_present is not None and not self._blob_present(record.digest):
            raise BlobGone(record.digest)
        missing = [d for d in references if conn.execute(
            "SELECT 1 FROM repo_blobs WHERE repo = ? AND digest = ?"
            " UNION ALL SELECT 1 FROM manifests WHERE repo = ? AND digest = ? LIMIT 1",
            (record.repo, d, record.repo, d)).fetchone() is None]
        if missing:
            raise ReferencesGone(missing)

    async def delete_manifest(self, repo: str, digest: str, origin: str = "local") -> bool:
        def fn(conn):
            if origin != lock_policy.EXEMPT_ORIGIN:
                tags = [r[0] for r in conn.execute(
                    "SELECT tag FROM tags WHERE repo = ? AND digest = ?", (repo, digest))]
                refusal = lock_policy.refuse_manifest_delete(self._locks_in(conn, repo), repo,
                                                             digest, tags)
                if refusal is not None:
                    raise refusal
            deleted = conn.execute("DELETE FROM manifests WHERE repo = ? AND digest = ?",
                                   (repo, digest)).rowcount > 0
            if deleted:
                conn.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, digest))
                conn.execute("DELETE FROM manifest_refs WHERE repo = ? AND digest = ?",
                             (repo, digest))
                self._log(conn, repo, "delete_manifest", digest, None, None, origin, time.time())
            return deleted
        return await self._write(fn, frees=True)

    async def delete_tag(self, repo: str, tag: str, origin: str = "local",
                         precondition: TagPrecondition | None = None) -> bool:
        def fn(conn):
            row = conn.execute("SELECT digest FROM tags WHERE repo = ? AND tag = ?",
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
            conn.execute("DELETE FROM tags WHERE repo = ? AND tag = ?", (repo, tag))
            self._log(conn, repo, "delete_tag", None, tag, row[0], origin, time.time())
            return True
        return await self._write(fn, frees=True)

    def manifest_digests(self, repo: str) -> list[str]:
        return [r[0] for r in self._reader.execute(
            "SELECT digest FROM manifests WHERE repo = ? ORDER BY created", (repo,))]

    async def unlink_all_blobs(self, repo: str) -> int:
        """Forget a repository's blob links and the repository itself (bytes wait for GC)."""
        def fn(conn):
            n = conn.execute("DELETE FROM repo_blobs WHERE repo = ?", (repo,)).rowcount
            remaining = conn.execute("SELECT 1 FROM manifests WHERE repo = ? LIMIT 1",
                                     (repo,)).fetchone()
            if remaining is None:
                conn.execute("DELETE FROM repositories WHERE name = ?", (repo,))
            return n
        return await self._write(fn, frees=True)

    # --- change log -----------------------------------------------------------------------
    @staticmethod
    def _log(conn, repo, op, digest, tag, prev, origin, now) -> None:
        conn.execute(
            "INSERT INTO changes (time, repo, op, digest, tag, prev, origin)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (now, repo, op, digest, tag, prev, origin))

    def changes_since(self, cursor: int, limit: int,
                      exclude_origin: str | None = None) -> list[Change]:
        sql = ("SELECT seq, time, repo, op, digest, tag, prev, origin FROM changes"
               " WHERE seq > ?")
        args: list = [cursor]
        if exclude_origin is not None:
            sql += " AND origin != ?"
            args.append(exclude_origin)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [Change(*row) for row in self._reader.execute(sql, args)]

    def change_bounds(self) -> tuple[int, int]:
        """(oldest retained seq, newest seq); (0, 0) when the log is empty and never used."""
        first = self._one("SELECT MIN(seq) FROM changes", ())[0]
        head = self._one("SELECT seq FROM sqlite_sequence WHERE name = 'changes'", ())
        head_seq = head[0] if head else 0
        return (first if first is not None else head_seq + 1), head_seq

    async def prune_changes(self, older_than: float, keep_from: int | None = None) -> int:
        """Drop entries older than `older_than`, but none from `keep_from` on (a ReadWrite
        node's first unsent outbox entry). The log stays contiguous, so a child's cursor check
        (oldest retained seq) remains exact."""
        def fn(conn):
            if keep_from is None:
                return conn.execute("DELETE FROM changes WHERE time < ?",
                                    (older_than,)).rowcount
            return conn.execute("DELETE FROM changes WHERE time < ? AND seq < ?",
                                (older_than, keep_from)).rowcount
        return await self._write(fn, frees=True)

    async def wait_for_change(self, after: int, timeout: float) -> None:
        """Return when the log has an entry past `after`, or after `timeout` seconds."""
        with trio.move_on_after(timeout):
            while self.change_bounds()[1] <= after:
                await self._changed.wait()

    # --- chunk index (delta transfer) -----------------------------------------------------
    def chunk_list(self, digest: str, params: str) -> list[tuple[int, int, str]] | None:
        row = self._one("SELECT params FROM chunked WHERE digest = ?", (digest,))
        if row is None or row[0] != params:
            return None
        return [tuple(r) for r in self._reader.execute(
            "SELECT offset, length, chunk_id FROM chunks WHERE digest = ? ORDER BY offset",
            (digest,))]

    def find_chunk(self, chunk_id: str, params: str) -> tuple[str, int, int] | None:
        row = self._one(
            "SELECT c.digest, c.offset, c.length FROM chunks c JOIN chunked k ON k.digest = c.digest"
            " WHERE c.chunk_id = ? AND k.params = ? LIMIT 1", (chunk_id, params))
        return tuple(row) if row else None

    def chunk_holders(self, chunk_ids: list[str], params: str
                      ) -> list[tuple[str, str, str, int, int]]:
        """(chunk_id, repo, digest, offset, length): for each of `chunk_ids` (at most 500) and
        each repository linking a blob that holds it, one such blob. Callers filter by
        repository so they never use a chunk from content the requester may not read."""
        marks = ",".join("?" * len(chunk_ids))
        return [tuple(r) for r in self._reader.execute(
            "SELECT c.chunk_id, r.repo, c.digest, MIN(c.offset), c.length FROM chunks c"
            " JOIN chunked k ON k.digest = c.digest JOIN repo_blobs r ON r.digest = c.digest"
            f" WHERE k.params = ? AND c.chunk_id IN ({marks}) GROUP BY c.chunk_id, r.repo",
            (params, *chunk_ids))]

    async def put_chunk_list(self, digest: str, params: str,
                             chunks: list[tuple[int, int, str]]) -> None:
        def fn(conn):
            conn.execute("DELETE FROM chunks WHERE digest = ?", (digest,))
            conn.executemany(
                "INSERT INTO chunks (digest, offset, length, chunk_id) VALUES (?, ?, ?, ?)",
                [(digest, o, n, c) for o, n, c in chunks])
            conn.execute("INSERT OR REPLACE INTO chunked (digest, params) VALUES (?, ?)",
                         (digest, params))
        await self._write(fn)

    async def drop_chunk_list(self, digest: str) -> None:
        def fn(conn):
            conn.execute("DELETE FROM chunks WHERE digest = ?", (digest,))
            conn.execute("DELETE FROM chunked WHERE digest = ?", (digest,))
        await self._write(fn, frees=True)

    # --- sync state (cursors) ----------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self._one("SELECT value FROM sync_state WHERE key = ?", (key,))
        return row[0] if row else None

    async def set_state(self, key: str, value: str | None) -> None:
        """Set (or, with None, delete) a durable sync-state value."""
        def fn(conn):
            if value is None:
                conn.execute("DELETE FROM sync_state WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO sync_state (key, value) VALUES (?, ?)",
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
        return [self._lock_row(repo, r) for r in conn.execute(
            f"SELECT {self._LOCK_COLUMNS} FROM locks WHERE repo = ?", (repo,))]

    def locks(self, repo: str) -> list[RepositoryLock]:
        """The lock rows of `repo` (only those that disable something)."""
        return self._locks_in(self._reader, repo)

    def blobs_size(self, repo: str, digest: str) -> int:
        """Bytes of the blobs a manifest references directly (an image's config and layers),
        for the audit trail's `imageSize`."""
        return self._one("SELECT COALESCE(SUM(b.size), 0) FROM manifest_refs r JOIN repo_blobs b"
                         " ON b.repo = r.repo AND b.digest = r.child"
                         " WHERE r.repo = ? AND r.digest = ?", (repo, digest))[0]

    def locked_repositories(self) -> list[str]:
        return [r[0] for r in self._reader.execute("SELECT DISTINCT repo FROM locks ORDER BY repo")]

    def read_locked(self, repo: str) -> bool:
        """Whether any read lock exists in `repo` (in memory; the fast read path asks)."""
        return repo in self._read_locked

    def _load_read_locked(self) -> frozenset[str]:
        return frozenset(r[0] for r in self._reader.execute(
            "SELECT DISTINCT repo FROM locks WHERE read_enabled = 0"))

    @staticmethod
    def _put_lock(conn, lock: RepositoryLock) -> None:
        conn.execute("DELETE FROM locks WHERE repo = ? AND kind = ? AND ref = ?",
                     (lock.repo, lock.kind, lock.ref))
        if not lock.unlocked:
            conn.execute(f"INSERT INTO locks (repo, {SqliteMetadataStore._LOCK_COLUMNS})"
                         " VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (lock.repo, lock.kind, lock.ref, int(lock.write_enabled),
                          int(lock.delete_enabled), int(lock.read_enabled), lock.updated))

    async def set_lock(self, lock: RepositoryLock, origin: str = "local") -> None:
        """Store one lock (all attributes enabled removes it) and log a "lock" change, which
        carries it down to the children (they fetch the repository's locks)."""
        def fn(conn):
            self._put_lock(conn, lock)
            self._log(conn, lock.repo, "lock", lock.digest, lock.tag, None, origin, time.time())
        await self._write(fn)
        self._read_locked = self._load_read_locked()

    async def replace_locks(self, repo: str, locks: list[RepositoryLock],
                            origin: str = "parent") -> bool:
        """Make `repo`'s locks equal to `locks` (what the parent holds); log one "lock" change
        when anything differed, so our own children follow. Returns whether it did."""
        def fn(conn):
            key = lambda l: (l.kind, l.ref, l.write_enabled, l.delete_enabled, l.read_enabled)
            current = sorted(map(key, self._locks_in(conn, repo)))
            wanted = [l for l in locks if not l.unlocked]
            if current == sorted(map(key, wanted)):
                return False
            conn.execute("DELETE FROM locks WHERE repo = ?", (repo,))
            for lock in wanted:
                self._put_lock(conn, lock)
            self._log(conn, repo, "lock", None, None, None, origin, time.time())
            return True
        changed = await self._write(fn)
        if changed:
            self._read_locked = self._load_read_locked()
        return changed

    # --- parked outbox entries --------------------------------------------------------
    _PARKED_COLUMNS = ("seq, repo, op, tag, digest, origin, method, url, status, code, message,"
                       " parked_at, attempts, retry")

    async def park_change(self, entry: ParkedChange) -> None:
        def fn(conn):
            conn.execute(f"INSERT OR REPLACE INTO parked ({self._PARKED_COLUMNS})"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (entry.seq, entry.repo, entry.op, entry.tag, entry.digest, entry.origin,
                          entry.method, entry.url, entry.status, entry.code, entry.message,
                          entry.parked_at, entry.attempts, int(entry.retry)))
        await self._write(fn)

    def parked_changes(self, repo: str | None = None, retry_only: bool = False,
                       limit: int | None = None) -> list[ParkedChange]:
        sql = f"SELECT {self._PARKED_COLUMNS} FROM parked WHERE 1"
        args: list = []
        if repo is not None:
            sql += " AND repo = ?"
            args.append(repo)
        if retry_only:
            sql += " AND retry = 1"
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [ParkedChange(*row[:-1], retry=bool(row[-1]))
                for row in self._reader.execute(sql, args)]

    def parked_count(self) -> int:
        return self._one("SELECT COUNT(*) FROM parked", ())[0]

    async def requeue_parked(self, seqs: list[int] | None) -> int:
        return await self._parked_write("UPDATE parked SET retry = 1", seqs)

    async def drop_parked(self, seqs: list[int] | None) -> int:
        return await self._parked_write("DELETE FROM parked", seqs)

    async def _parked_write(self, statement: str, seqs: list[int] | None) -> int:
        def fn(conn):
            if seqs is None:
                return conn.execute(statement).rowcount
            return sum(conn.execute(statement + " WHERE seq = ?", (seq,)).rowcount
                       for seq in seqs)
        return await self._write(fn)

    def referrers(self, repo: str, subject: str, artifact_type: str | None) -> list[Referrer]:
        sql = ("SELECT digest, media_type, size, artifact_type, annotations FROM manifests"
               " WHERE repo = ? AND subject = ?")
        args: list = [repo, subject]
        if artifact_type is not None:
            sql += " AND artifact_type = ?"
            args.append(artifact_type)
        sql += " ORDER BY created, digest"
        return [Referrer(*row) for row in self._reader.execute(sql, args)]

    # --- upload sessions ----------------------------------------------------------------
    def upload_repo(self, upload_id: str) -> str | None:
        row = self._one("SELECT repo FROM uploads WHERE id = ?", (upload_id,))
        return row[0] if row else None

    async def create_upload(self, upload_id: str, repo: str, owner: str = "",
                            max_per_owner: int | None = None, max_total: int | None = None,
                            reclaim_idle_before: float | None = None,
                            keep: frozenset[str] = frozenset()) -> str | None:
        def fn(conn):
            # Counted in the inserting transaction, so concurrent starts cannot overshoot.
            if max_total is not None:
                (total,) = conn.execute("SELECT COUNT(*) FROM uploads").fetchone()
                if total >= max_total:
                    raise UploadSessionLimit("total", owner, max_total)
            reclaimed = None
            if max_per_owner is not None:
                (mine,) = conn.execute("SELECT COUNT(*) FROM uploads WHERE owner = ?",
                                       (owner,)).fetchone()
                if mine >= max_per_owner:
                    reclaimed = self._reclaimable(conn, owner, reclaim_idle_before, keep)
                    if reclaimed is None:
                        raise UploadSessionLimit("identity", owner, max_per_owner)
                    conn.execute("DELETE FROM uploads WHERE id = ?", (reclaimed,))
            now = time.time()
            conn.execute("INSERT INTO uploads (id, repo, created, owner, touched)"
                         " VALUES (?, ?, ?, ?, ?)", (upload_id, repo, now, owner, now))
            return reclaimed
        return await self._write(fn)

    @staticmethod
    def _reclaimable(conn, owner: str, idle_before: float | None,
                     keep: frozenset[str]) -> str | None:
        """`owner`'s least recently active session idle since `idle_before`, not in `keep`."""
        if idle_before is None:
            return None
        rows = conn.execute("SELECT id FROM uploads WHERE owner = ? AND touched < ?"
                            " ORDER BY touched", (owner, idle_before))
        return next((upload_id for (upload_id,) in rows if upload_id not in keep), None)

    async def delete_upload(self, upload_id: str) -> None:
        await self.delete_uploads([upload_id])

    async def delete_uploads(self, upload_ids: list[str]) -> None:
        def fn(conn):
            conn.executemany("DELETE FROM uploads WHERE id = ?", [(i,) for i in upload_ids])
        await self._write(fn, frees=True)

    def upload_ids(self) -> set[str]:
        return {row[0] for row in self._reader.execute("SELECT id FROM uploads")}

    async def touch_uploads(self, touched: dict[str, float]) -> None:
        """Record last activity, many sessions in one transaction."""
        def fn(conn):
            conn.executemany("UPDATE uploads SET touched = MAX(touched, ?) WHERE id = ?",
                             [(when, i) for i, when in touched.items()])
        await self._write(fn)

    def expired_uploads(self, untouched_since: float) -> list[str]:
        return [row[0] for row in self._reader.execute(
            "SELECT id FROM uploads WHERE touched < ?", (untouched_since,))]

    # --- garbage collection (gc/) --------------------------------------------------------
    # The collector decides on a snapshot; every deletion below re-checks its reason inside
    # its own write transaction (pushes commit in between), and none writes the change log:
    # collecting garbage is local housekeeping, never a change to send up or down.

    def gc_snapshot(self, outbox_cursor_key: str | None, parent_origin: str) -> GcSnapshot:
        """Everything the mark phase needs, read in one read transaction on a private
        connection (a consistent view that leaves the event loop's reader alone). Blocking:
        run it in a worker thread. With `outbox_cursor_key`, manifests in change-log entries
        past that cursor (and parked ones) that did not come from the parent are listed as
        the outbox."""
        conn = sqlite3.connect(self._path, timeout=30)
        try:
            conn.execute("BEGIN")
            manifests = conn.execute(
                "SELECT repo, digest, created, subject FROM manifests").fetchall()
            tags = conn.execute("SELECT DISTINCT repo, digest FROM tags").fetchall()
            refs = conn.execute("SELECT repo, digest, child FROM manifest_refs").fetchall()
            links = conn.execute(
                "SELECT repo, digest, size, COALESCE(linked, 0) FROM repo_blobs").fetchall()
            uploads = conn.execute("SELECT id, created FROM uploads").fetchall()
            chunked = conn.execute(
                "SELECT k.digest, (SELECT COUNT(*) FROM chunks c WHERE c.digest = k.digest)"
                " FROM chunked k").fetchall()
            outbox: list[tuple[str, str]] = []
            if outbox_cursor_key is not None:
                row = conn.execute("SELECT value FROM sync_state WHERE key = ?",
                                   (outbox_cursor_key,)).fetchone()
                outbox = conn.execute(
                    "SELECT repo, digest FROM changes WHERE seq > ? AND origin != ?"
                    " AND op = 'manifest' AND digest IS NOT NULL",
                    (int(row[0]) if row else 0, parent_origin)).fetchall()
                has_parked = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                                          " AND name = 'parked'").fetchone()
                if has_parked:
                    outbox += conn.execute(
                        "SELECT repo, digest FROM parked WHERE op = 'manifest'"
                        " AND digest IS NOT NULL").fetchall()
            repositories = [r[0] for r in conn.execute("SELECT name FROM repositories")]
            conn.execute("COMMIT")
        finally:
            conn.close()
        return GcSnapshot(manifests, tags, refs, links, uploads, chunked, outbox, repositories)

    async def gc_delete_manifests(self, repo: str, candidates: dict[str, float]) -> list[str]:
        """Delete those of `candidates` (digest → `created` as seen in the snapshot) that are
        still unneeded; return the digests deleted. A candidate is kept when it was replaced
        meanwhile, is tagged, or is needed by a manifest that stays: an index listing it, a
        referrer of it, or its own subject (referrers live and die with their subject)."""
        def fn(conn):
            batch = {d for d, created in candidates.items() if conn.execute(
                "SELECT 1 FROM manifests WHERE repo = ? AND digest = ? AND created = ?",
                (repo, d, created)).fetchone()}
            changed = True
            while changed:  # keeping one may keep others: settle to a fixed point
                changed = False
                for digest in sorted(batch):
                    if self._gc_needed(conn, repo, digest, batch):
                        batch.discard(digest)
                        changed = True
            for digest in batch:
                conn.execute("DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, digest))
                conn.execute("DELETE FROM manifest_refs WHERE repo = ? AND digest = ?",
                             (repo, digest))
            return sorted(batch)
        return await self._write(fn, frees=True)

    @staticmethod
    def _gc_needed(conn, repo: str, digest: str, batch: set[str]) -> bool:
        if conn.execute("SELECT 1 FROM tags WHERE repo = ? AND digest = ? LIMIT 1",
                        (repo, digest)).fetchone():
            return True
        if conn.execute("SELECT 1 FROM locks WHERE repo = ? AND delete_enabled = 0 AND"
                        " (kind = 'repository' OR (kind = 'digest' AND ref = ?)) LIMIT 1",
                        (repo, digest)).fetchone():
            return True  # a delete lock protects it from collection too (docs/locks.md)
        holders = conn.execute(
            "SELECT digest FROM manifest_refs WHERE repo = ? AND child = ?"
            " UNION SELECT digest FROM manifests WHERE repo = ? AND subject = ?",
            (repo, digest, repo, digest)).fetchall()
        if any(h[0] not in batch for h in holders):
            return True
        subject = conn.execute(
            "SELECT s.digest FROM manifests m JOIN manifests s"
            " ON s.repo = m.repo AND s.digest = m.subject WHERE m.repo = ? AND m.digest = ?",
            (repo, digest)).fetchone()
        return subject is not None and subject[0] not in batch

    async def gc_unlink_blobs(self, repo: str, digests: list[str], cut: float) -> list[str]:
        """Remove `repo`'s links to `digests` that are still referenced by no manifest of the
        repository and were last linked before `cut`; return the digests unlinked."""
        def fn(conn):
            return [d for d in digests if conn.execute(
                "DELETE FROM repo_blobs WHERE repo = ? AND digest = ?"
                " AND COALESCE(linked, 0) < ? AND NOT EXISTS"
                " (SELECT 1 FROM manifest_refs WHERE repo = ? AND child = ?)",
                (repo, d, cut, repo, d)).rowcount]
        return await self._write(fn, frees=True)

    async def gc_delete_blobs(self, digests: list[str], remove: Callable[[str], int | None]
                              ) -> list[tuple[str, int, int]]:
        """For each digest that no repository links and no manifest is or references any
        more, call `remove(digest)` (deletes the file and returns its size, or None to keep
        it) and drop its chunk-index rows. Runs in one write transaction, so a link or
        manifest committed meanwhile either came first (and keeps the blob) or checks the
        file after it is gone. Returns (digest, bytes freed, chunk rows dropped)."""
        def fn(conn):
            freed = []
            for d in digests:
                if conn.execute(
                        "SELECT 1 FROM repo_blobs WHERE digest = ?"
                        " UNION ALL SELECT 1 FROM manifest_refs WHERE child = ?"
                        " UNION ALL SELECT 1 FROM manifests WHERE digest = ? LIMIT 1",
                        (d, d, d)).fetchone():
                    continue
                size = remove(d)
                if size is None:
                    continue
                rows = conn.execute("DELETE FROM chunks WHERE digest = ?", (d,)).rowcount
                conn.execute("DELETE FROM chunked WHERE digest = ?", (d,))
                freed.append((d, size, rows))
            return freed
        return await self._write(fn, frees=True)

    async def gc_drop_chunk_lists(self, digests: list[str]) -> int:
        """Drop chunk-index rows of blobs whose file is gone; return the rows dropped."""
        def fn(conn):
            rows = 0
            for d in digests:
                if self._blob_present is not None and self._blob_present(d):
                    continue  # stored again since the snapshot
                rows += conn.execute("DELETE FROM chunks WHERE digest = ?", (d,)).rowcount
                conn.execute("DELETE FROM chunked WHERE digest = ?", (d,))
            return rows
        return await self._write(fn, frees=True)

    async def gc_delete_upload_rows(self, upload_ids: list[str]) -> int:
        def fn(conn):
            return sum(conn.execute("DELETE FROM uploads WHERE id = ?", (u,)).rowcount
                       for u in upload_ids)
        return await self._write(fn, frees=True)

    async def gc_drop_empty_repositories(self, names: list[str]) -> list[str]:
        """Forget those of `names` still left with no manifest, tag or blob link; return them.
        (A write that puts something in one re-creates it in its own transaction.)"""
        def fn(conn):
            return [n for n in names if conn.execute(
                "DELETE FROM repositories WHERE name = ?"
                " AND NOT EXISTS (SELECT 1 FROM manifests WHERE repo = ?)"
                " AND NOT EXISTS (SELECT 1 FROM repo_blobs WHERE repo = ?)"
                " AND NOT EXISTS (SELECT 1 FROM tags WHERE repo = ?)",
                (n, n, n, n)).rowcount]
        return await self._write(fn, frees=True)
