"""The state one node serves from: its stores and in-process caches.

Handlers receive a `Registry`; nothing in here speaks HTTP.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from contextlib import AbstractAsyncContextManager, nullcontext

import trio

from connreg import _core
from connreg.config import Settings
from connreg.delta.index import ChunkIndex
from connreg.storage import backends
from connreg.storage.budget import StorageBudget
from connreg.storage.budgeted import BudgetedBlobStore
from connreg.storage.sqlite_metadata import SqliteMetadataStore
from connreg.upload_sessions import UploadSessions


class ManifestCache:
    """Manifest bytes by digest, bounded by total size. Safe: content never changes per digest."""

    def __init__(self, max_bytes: int):
        self._max = max_bytes
        self._used = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def max_bytes(self) -> int:
        return self._max

    def get(self, digest: str) -> bytes | None:
        data = self._items.get(digest)
        if data is not None:
            self._items.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self._max or digest in self._items:
            return
        self._items[digest] = data
        self._used += len(data)
        while self._used > self._max:
            _, old = self._items.popitem(last=False)
            self._used -= len(old)


class Registry:
    def __init__(self, settings: Settings):
        self.settings = settings
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        # Engines from the settings (storage/backends.py): SQLite + <data_dir>/store by
        # default; PostgreSQL and a shared folder or S3 for the replicas of a scaled root.
        where = backends.blob_location(settings)
        store = backends.open_blob_store(settings)
        # Every write to a local folder is held to the disk budget (storage/budget.py);
        # deletes give bytes back. Object storage has no disk of ours to fill.
        self.budget = StorageBudget(data, where.path or data, settings.min_free_bytes,
                                    settings.max_store_bytes)
        self.blobs = BudgetedBlobStore(store, self.budget) if where.kind == "fs" else store
        self.engine = backends.open_engine(settings)  # PostgreSQL, shared by replicas, or None
        if self.engine is not None:
            from connreg.storage.postgres_metadata import PostgresMetadataStore
            self.meta = PostgresMetadataStore(self.engine, blob_present=self.blobs.exists)
        else:
            self.meta = SqliteMetadataStore(data / "metadata.sqlite",
                                            blob_present=self.blobs.exists)
        self.meta.release_headroom = self.budget.release_reserve
        self.manifest_cache = ManifestCache(settings.manifest_cache_bytes)
        self.chunk_index = ChunkIndex(self.blobs, self.meta, settings)
        # Upload sessions: handles, per-session locks, caps, idle descriptors, TTL purge.
        self.uploads = UploadSessions(self.blobs, self.meta, settings)
        self.uploads.shared = self.engine is not None  # replicas append to sessions too

    def close(self) -> None:
        self.meta.close()
        if self.engine is not None:
            self.engine.close()

    def gc_exclusion(self) -> AbstractAsyncContextManager[None]:
        """Held for a whole garbage collection: on PostgreSQL a session advisory lock, so one
        replica collects at a time (the others wait); on one node, nothing (the collector's
        own lock suffices)."""
        if self.engine is None:
            return nullcontext()
        return self.engine.gc_lock()

    @staticmethod
    def new_upload_id() -> str:
        return secrets.token_urlsafe(24)

    def upload_handle(self, upload_id: str) -> _core.Upload:
        return self.uploads.handle(upload_id)

    def upload_lock(self, upload_id: str) -> AbstractAsyncContextManager[None]:
        """Serializes the requests of one upload session (PATCHes, PUT, DELETE)."""
        return self.uploads.lock(upload_id)

    def forget_upload(self, upload_id: str) -> None:
        self.uploads.forget(upload_id)

    async def read_manifest(self, digest: str) -> bytes:
        data = self.manifest_cache.get(digest)
        if data is None:
            data = await trio.to_thread.run_sync(self.blobs.read, digest)
            self.manifest_cache.put(digest, data)
        return data
