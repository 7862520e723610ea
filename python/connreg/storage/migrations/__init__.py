"""Versioned schema migrations for the PostgreSQL backend, applied when a node starts.

Each `NNNN_name.sql` file beside this module is one version, applied once, in order, in its own
transaction together with its row in `schema_migrations`. Replicas starting at the same moment
take a transaction-level advisory lock first, so exactly one applies a version and the others
find it done. A database newer than this code (a version we do not know) is refused: an old
replica must not write to a schema it does not understand.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

# pg_advisory_xact_lock key for migrations (an arbitrary constant, "connreg1" in ASCII).
MIGRATION_LOCK = 0x636F6E6E72656731
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class SchemaTooNew(Exception):
    """The database has migrations this version of connreg does not know."""


def available() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration shipped with this code, in order."""
    found = []
    for path in sorted(Path(__file__).parent.iterdir()):
        m = _FILE.match(path.name)
        if m:
            found.append((int(m.group(1)), path.stem, path.read_text()))
    return found


def apply(conninfo: str) -> list[int]:
    """Bring the database at `conninfo` up to date; returns the versions applied now."""
    applied_now = []
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        known = {v for v, _, _ in available()}
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                         " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                         " applied DOUBLE PRECISION NOT NULL)")
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        unknown = sorted(done - known)
        if unknown:
            raise SchemaTooNew(f"the metadata database has schema version(s) {unknown} that "
                               "this connreg does not know: upgrade this replica")
        for version, name, sql in available():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s",
                                (version,)).fetchone():
                    continue  # another replica applied it while we waited
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version, name, applied)"
                             " VALUES (%s, %s, extract(epoch from now()))", (version, name))
                applied_now.append(version)
    return applied_now
