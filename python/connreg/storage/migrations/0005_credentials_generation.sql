-- Bumped, along with `generation`, only by control writes of something besides connected-
-- registry documents (control/postgres_store.py): the status every child reports every few
-- seconds must not drop every replica's verified-credential cache (auth/identity.py), as the
-- SQLite store's `credentials_generation` does not.
ALTER TABLE control_generation ADD COLUMN credentials BIGINT NOT NULL DEFAULT 0;
