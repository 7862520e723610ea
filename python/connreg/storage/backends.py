"""Which engines a node stores on, from its settings (docs/scaling.md).

- metadata: SQLite in the data dir (the embedded default), or PostgreSQL at `metadata_url`;
- blobs: the filesystem store in `<data_dir>/store` (default), in a folder every replica
  mounts (`blob_store = "/shared/blobs"`), or S3-compatible object storage
  (`blob_store = "s3://BUCKET[/PREFIX]"`, `s3_endpoint`, credentials from the AWS_* variables).

A replica of a scaled root needs both shared: PostgreSQL and either S3 or a shared folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from connreg import _core
from connreg.config import Settings


class BackendError(ValueError):
    """A storage setting names something this node cannot use; the message says what."""


class EngineUnreachable(Exception):
    """The database cannot be reached or migrated at start; the message names it (no
    password). Defined here, not beside psycopg, so the CLI catches it without loading
    psycopg on a node that has no database (docs/operations.md, Memory)."""


@dataclass(frozen=True)
class BlobLocation:
    kind: str  # "fs" | "s3"
    path: Path | None = None  # fs: the store's root
    bucket: str = ""
    prefix: str = ""


def blob_location(settings: Settings) -> BlobLocation:
    spec = settings.blob_store.strip()
    if not spec:
        return BlobLocation("fs", settings.data_dir / "store")
    if spec.startswith("s3://"):
        parts = urlsplit(spec)
        if not parts.netloc:
            raise BackendError(f"blob_store {spec!r}: no bucket (s3://BUCKET[/PREFIX])")
        return BlobLocation("s3", bucket=parts.netloc, prefix=parts.path.strip("/"))
    if spec.startswith("file://"):
        spec = urlsplit(spec).path
    if "://" in spec:
        raise BackendError(f"blob_store {spec!r}: not a folder path nor s3://BUCKET[/PREFIX]")
    return BlobLocation("fs", Path(spec))


def open_blob_store(settings: Settings):
    """The raw blob store (not yet held to the disk budget) the settings name."""
    where = blob_location(settings)
    if where.kind == "fs":
        return _core.BlobStore(str(where.path))
    s3_store = getattr(_core, "S3BlobStore", None)
    if s3_store is None:
        raise BackendError("blob_store s3://…: this build of connreg has no S3 blob store")
    url = f"s3://{where.bucket}/{where.prefix}".rstrip("/")
    return s3_store(url, endpoint=settings.s3_endpoint or None,
                    allow_http=settings.s3_allow_http)


def metadata_kind(settings: Settings) -> str:
    url = settings.metadata_url.strip()
    if not url:
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres"
    raise BackendError("metadata_url: only postgresql://… URLs are supported "
                       "(leave it empty for SQLite in the data dir)")


def open_engine(settings: Settings):
    """The PostgreSQL engine (migrations applied) when `metadata_url` names one, else None."""
    if metadata_kind(settings) != "postgres":
        return None
    from connreg.storage.postgres_engine import PostgresEngine
    return PostgresEngine(settings.metadata_url.strip(), pool_size=settings.metadata_pool_size)


def describe(settings: Settings) -> str:
    """Where this node stores, for its start-up log line (no password)."""
    where = blob_location(settings)
    blobs = (f"s3://{where.bucket}/{where.prefix}" + (f" at {settings.s3_endpoint}"
             if settings.s3_endpoint else "")) if where.kind == "s3" else str(where.path)
    if metadata_kind(settings) == "postgres":
        from connreg.storage.postgres_engine import redact
        meta = f"PostgreSQL ({redact(settings.metadata_url)})"
    else:
        meta = f"SQLite ({settings.data_dir / 'metadata.sqlite'})"
    return f"metadata: {meta}; blobs: {blobs}"
