"""Move a single-node root (SQLite + a local blob folder) onto the shared engines of a scaled
root (PostgreSQL + S3 or a shared folder): `connreg maintenance migrate` (docs/scaling.md).

Nothing is lost and the move can be re-run until it reports done:
1. blobs first, each copied through an upload of the destination store that verifies its
   digest before it becomes visible; blobs already there are skipped, so an interrupted run
   resumes where it stopped;
2. then every metadata row, in ONE PostgreSQL transaction (under the write lock), with
   INSERT … ON CONFLICT DO NOTHING: the destination either has all of it or none, and never a
   row whose blob is missing. Change-log sequence numbers are kept (the edges' cursors point
   into them) and the head moves past them;
3. the control plane (tokens, scope maps, connected registries, settings) and the token
   signing key, so issued tokens and `docker login` sessions stay valid.

Open upload sessions are not moved (their clients retry the blob). The source is only read.
A destination already holding another registry's data is refused.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from connreg.storage.postgres_engine import WRITE_LOCK, PostgresEngine

PIECE = 8 * 1024 * 1024
SOURCE_KEY = "migration.source"  # sync_state row naming the data dir a destination came from

# (table, columns) copied from metadata.sqlite, in an order that respects references.
_TABLES = [
    ("repositories", "name, created"),
    ("repo_blobs", "repo, digest, size, linked"),
    ("manifests", "repo, digest, media_type, size, subject, artifact_type, annotations, created"),
    ("manifest_refs", "repo, digest, child"),
    ("tags", "repo, tag, digest, updated"),
    ("changes", "seq, time, repo, op, digest, tag, prev, origin"),
    ("chunked", "digest, params"),
    ("chunks", "digest, offset, length, chunk_id"),
    ("sync_state", "key, value"),
    ("parked", "seq, repo, op, tag, digest, origin, method, url, status, code, message,"
               " parked_at, attempts, retry"),
    ("locks", "repo, kind, ref, write_enabled, delete_enabled, read_enabled, updated"),
]


class MigrationRefused(Exception):
    """The destination cannot take this source; nothing was written."""


@dataclass
class MigrationReport:
    blobs_copied: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # table: (source, inserted)

    def summary(self) -> str:
        rows = ", ".join(f"{t} {src}/{new} new" for t, (src, new) in self.rows.items())
        return (f"blobs: {self.blobs_copied} copied ({self.bytes_copied} bytes), "
                f"{self.blobs_present} already there; rows (source/new): {rows}")


def _readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def copy_blobs(source, dest, report: MigrationReport,
               progress: Callable[[str], None] = lambda _: None) -> None:
    for digest in source.list_digests():
        size = source.size(digest)
        if size is None:
            continue  # deleted while we listed
        if dest.size(digest) == size:
            report.blobs_present += 1
            continue
        upload_id = "migrate_" + digest.split(":", 1)[1][:64]
        if dest.upload_exists(upload_id):
            dest.abort_upload(upload_id)  # a previous run was interrupted mid-blob
        upload = dest.upload(upload_id)
        try:
            for offset in range(0, size, PIECE):
                upload.write(source.read(digest, offset, PIECE))
            upload.commit(digest)  # verified before it becomes visible
        except BaseException:
            upload.abort()
            raise
        report.blobs_copied += 1
        report.bytes_copied += size
        progress(digest)


def _source_key(data_dir: Path) -> str:
    return str(data_dir.resolve())


def copy_metadata(data_dir: Path, engine: PostgresEngine, report: MigrationReport) -> None:
    meta = _readonly(data_dir / "metadata.sqlite")
    control_path = data_dir / "control.sqlite"
    control = _readonly(control_path) if control_path.exists() else None
    key_path = data_dir / "auth" / "token-signing-key.pem"
    try:
        with engine.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            origin = conn.execute("SELECT value FROM sync_state WHERE key = %s",
                                  (SOURCE_KEY,)).fetchone()
            used = conn.execute("SELECT EXISTS (SELECT 1 FROM manifests)"
                                " OR EXISTS (SELECT 1 FROM repo_blobs)"
                                " OR (SELECT seq FROM change_head) > 0").fetchone()[0]
            if used and (origin is None or origin[0] != _source_key(data_dir)):
                raise MigrationRefused("the destination database already holds another "
                                       "registry's data; migrate into an empty one")
            for table, columns in _TABLES:
                rows = meta.execute(f"SELECT {columns} FROM {table}").fetchall()
                dest_columns = columns.replace("offset", "chunk_offset")
                if table == "parked":
                    rows = [(*r[:-1], bool(r[-1])) for r in rows]
                elif table == "locks":  # SQLite's 0/1 flags are BOOLEANs there
                    rows = [(*r[:3], *map(bool, r[3:6]), r[6]) for r in rows]
                marks = ", ".join(["%s"] * len(columns.split(",")))
                inserted = 0
                with conn.cursor() as cur:
                    for i in range(0, len(rows), 5000):
                        cur.executemany(f"INSERT INTO {table} ({dest_columns}) VALUES ({marks})"
                                        " ON CONFLICT DO NOTHING", rows[i:i + 5000])
                        inserted += max(cur.rowcount, 0)
                report.rows[table] = (len(rows), inserted)
            head = meta.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'"
                                ).fetchone()
            conn.execute("UPDATE change_head SET seq = GREATEST(seq, %s) WHERE id = 1",
                         (head[0] if head else 0,))
            conn.execute("INSERT INTO sync_state (key, value) VALUES (%s, %s)"
                         " ON CONFLICT (key) DO NOTHING", (SOURCE_KEY, _source_key(data_dir)))
            if control is not None:
                rows = control.execute("SELECT kind, name, doc FROM resources").fetchall()
                inserted = 0
                for kind, name, doc in rows:
                    inserted += conn.execute(
                        "INSERT INTO control_resources (kind, key, name, doc)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (kind, name.lower(), name, doc)).rowcount
                report.rows["control"] = (len(rows), inserted)
                if inserted:
                    conn.execute("UPDATE control_generation SET generation = generation + 1,"
                                 " credentials = credentials + 1")
            if key_path.exists():
                conn.execute("INSERT INTO shared_secrets (name, value) VALUES (%s, %s)"
                             " ON CONFLICT (name) DO NOTHING",
                             ("token-signing-key", key_path.read_bytes()))
    finally:
        meta.close()
        if control is not None:
            control.close()


def verify(data_dir: Path, engine: PostgresEngine, dest) -> list[str]:
    """What of the source is missing at the destination (empty: nothing)."""
    missing = []
    meta = _readonly(data_dir / "metadata.sqlite")
    try:
        with engine.pool.connection() as conn:
            for repo, digest in meta.execute("SELECT repo, digest FROM manifests"):
                if not conn.execute("SELECT 1 FROM manifests WHERE repo = %s AND digest = %s",
                                    (repo, digest)).fetchone():
                    missing.append(f"manifest {repo}@{digest}")
            for repo, tag, digest in meta.execute("SELECT repo, tag, digest FROM tags"):
                row = conn.execute("SELECT digest FROM tags WHERE repo = %s AND tag = %s",
                                   (repo, tag)).fetchone()
                if row is None or row[0] != digest:
                    missing.append(f"tag {repo}:{tag}")
            for (digest,) in meta.execute("SELECT DISTINCT digest FROM repo_blobs"
                                          " UNION SELECT DISTINCT digest FROM manifests"):
                if not dest.exists(digest):
                    missing.append(f"blob {digest}")
    finally:
        meta.close()
    return missing
