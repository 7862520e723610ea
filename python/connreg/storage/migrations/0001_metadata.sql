-- The metadata store (storage/postgres_metadata.py): the same tables as the SQLite schema in
-- storage/sqlite_metadata.py, with PostgreSQL types. Times are UNIX seconds (double).
CREATE TABLE repositories (
    name TEXT PRIMARY KEY,
    created DOUBLE PRECISION NOT NULL
);
CREATE TABLE repo_blobs (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    size BIGINT NOT NULL,
    linked DOUBLE PRECISION,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX repo_blobs_digest ON repo_blobs (digest);
CREATE TABLE manifests (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    subject TEXT,
    artifact_type TEXT,
    annotations TEXT,
    created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX manifests_subject ON manifests (repo, subject);
CREATE INDEX manifests_digest ON manifests (digest);
CREATE TABLE manifest_refs (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    child TEXT NOT NULL,
    PRIMARY KEY (repo, digest, child)
);
CREATE INDEX manifest_refs_child ON manifest_refs (child, repo);
CREATE TABLE tags (
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (repo, tag)
);
-- The change log. `seq` is assigned from change_head inside the writing transaction, under the
-- store's write lock: gapless and committed in order, so a reader at cursor N never later sees
-- an entry below N appear (a sequence object would hand out numbers outside the transaction).
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    repo TEXT NOT NULL,
    op TEXT NOT NULL,
    digest TEXT,
    tag TEXT,
    prev TEXT,
    origin TEXT NOT NULL
);
CREATE INDEX changes_time ON changes (time);
CREATE TABLE change_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO change_head (id, seq) VALUES (1, 0);
CREATE TABLE chunks (
    digest TEXT NOT NULL,
    chunk_offset BIGINT NOT NULL,
    length BIGINT NOT NULL,
    chunk_id TEXT NOT NULL,
    PRIMARY KEY (digest, chunk_offset)
);
CREATE INDEX chunks_by_id ON chunks (chunk_id);
CREATE TABLE chunked (
    digest TEXT PRIMARY KEY,
    params TEXT NOT NULL
);
CREATE TABLE sync_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    touched DOUBLE PRECISION NOT NULL
);
CREATE INDEX uploads_owner ON uploads (owner);
CREATE TABLE parked (
    seq BIGINT PRIMARY KEY,
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
    parked_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL,
    retry BOOLEAN NOT NULL DEFAULT FALSE
);
