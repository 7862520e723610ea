-- The control plane (control/postgres_store.py): named JSON documents by kind. `key` is the
-- lower-cased name (names are unique per kind case-insensitively, as SQLite's NOCASE).
CREATE TABLE control_resources (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
-- Bumped by every control transaction that wrote: replicas key their caches on it.
CREATE TABLE control_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO control_generation (id, generation) VALUES (1, 0);
-- Secrets every replica must share (the token signing key), created once by whoever is first.
CREATE TABLE shared_secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
