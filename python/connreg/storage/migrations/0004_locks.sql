-- Image locks (connreg/locks, docs/locks.md), as in the SQLite store: a repository (ref ''), a
-- tag or a manifest digest with an operation switched off. A row exists only while something
-- is disabled. Written only under the metadata write lock, like every other table.
CREATE TABLE locks (
    repo TEXT NOT NULL,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    write_enabled BOOLEAN NOT NULL,
    delete_enabled BOOLEAN NOT NULL,
    read_enabled BOOLEAN NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (repo, kind, ref)
);
-- read_locked() reloads the set of read-locked repositories after changes: keep that small.
CREATE INDEX locks_read_disabled ON locks (repo) WHERE NOT read_enabled;
