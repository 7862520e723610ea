"""Upload sessions, bounded in descriptors, in number and in time.

A session is a row in the metadata store (repository, owner, last activity) plus an upload in
the BlobStore (its file and running hash), both under one id. An unattended node must survive
clients that start sessions and never finish them, so:

- descriptors: an idle session's file is closed after `upload_idle_close_seconds`, and at most
  `max_open_upload_files` stay open (least recently used closed first). The BlobStore keeps
  the hash state of a closed one, so its next request reopens the file without re-reading it.
  The same applies to the uploads sync fetches keep for resuming.
- number: `max_upload_sessions_per_identity` and `max_upload_sessions` open sessions; one more
  raises `UploadSessionLimit` (HTTP 429, api/uploads.py). An identity at its cap whose least
  recently used session has been idle for `upload_reclaim_idle_seconds` gets that one ended
  instead: sessions leaked by cut links must not lock a client (a child's pusher) out for a
  whole TTL.
- time: sessions without activity for `upload_ttl_seconds` are purged while running, row and
  file, with upload files that have no row (older than the TTL) and rows whose file is gone.

Activity is noted in memory on every request to a session and written to the metadata store
in one transaction per purge pass, not once per request or piece.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from connreg import _core
from connreg.config import Settings
from connreg.storage.interfaces import MetadataStore

log = logging.getLogger("connreg.uploads")

# A row without a file is dropped only once it is this old: a session being started right now
# has its row a moment before its file.
_ROW_WITHOUT_FILE_GRACE_SECONDS = 60.0


class UploadSessions:
    def __init__(self, blobs: _core.BlobStore, meta: MetadataStore, settings: Settings):
        self.blobs = blobs
        self.meta = meta
        self.settings = settings
        # One lock per session serializes its requests, [lock, holders and waiters]; present
        # only while someone holds or waits for it. Such a session is "in use": never purged.
        self._locks: dict[str, list] = {}
        # Last request per session since the last purge pass (written to the store there).
        self._activity: dict[str, float] = {}
        # Set by the Registry when other replicas share the blob store (sync_with_store).
        self.shared = False

    async def create(self, upload_id: str, repo: str, owner: str) -> None:
        """Record a new session of `owner`; raises UploadSessionLimit beyond a cap.

        At its own cap, `owner`'s least recently used session is ended to make room if it has
        been idle for `upload_reclaim_idle_seconds` (never one in use)."""
        s = self.settings
        age = s.upload_reclaim_idle_seconds
        idle_before = time.time() - age if age > 0 else None
        # In use, or active since the store last heard of it: never reclaimed.
        keep = frozenset(self._locks) | frozenset(
            i for i, when in self._activity.items() if idle_before and when >= idle_before)
        reclaimed = await self.meta.create_upload(
            upload_id, repo, owner, max_per_owner=s.max_upload_sessions_per_identity or None,
            max_total=s.max_upload_sessions or None, reclaim_idle_before=idle_before, keep=keep)
        if reclaimed is not None:
            await trio.to_thread.run_sync(self.blobs.abort_upload, reclaimed)
            self.forget(reclaimed)
            log.info("ended upload session %s of %s, idle for over %gs, to make room for a new "
                     "one (max_upload_sessions_per_identity)", reclaimed, owner, age)

    def handle(self, upload_id: str) -> _core.Upload:
        """The session's upload (creating its file if absent), noted as activity. Opening it may
        take a descriptor; the least recently used beyond the cap are closed at once."""
        self._activity[upload_id] = time.time()
        upload = self.blobs.upload(upload_id)
        self._close_idle_files()
        return upload

    async def open(self, upload_id: str) -> _core.Upload:
        """`handle`, with the store asked from a worker thread (on S3 opening a session is
        a request for its state): for request handlers."""
        self._activity[upload_id] = time.time()
        upload = await trio.to_thread.run_sync(self.blobs.upload, upload_id)
        self._close_idle_files()
        return upload

    async def sync_with_store(self, upload: _core.Upload) -> None:
        """On a scaled root another replica may have appended to the session since this one
        last saw it (clients are not sticky): an empty write makes the handle re-read what
        changed on the shared store, so range checks and Range headers use the real size.
        In a worker thread: re-hashing what the other replica wrote takes time."""
        if self.shared:
            await trio.to_thread.run_sync(upload.write, b"")

    @asynccontextmanager
    async def lock(self, upload_id: str) -> AsyncIterator[None]:
        """Hold the session's lock. Kept only while held or awaited, so requests naming
        sessions that do not exist leave nothing behind."""
        entry = self._locks.get(upload_id)
        if entry is None:
            entry = self._locks[upload_id] = [trio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[upload_id]

    def forget(self, upload_id: str) -> None:
        """The session ended (committed or discarded): drop what is kept in memory for it."""
        self._activity.pop(upload_id, None)

    def _in_use(self, upload_id: str) -> bool:
        return upload_id in self._locks

    def _close_idle_files(self) -> int:
        return self.blobs.release_idle_uploads(self.settings.upload_idle_close_seconds,
                                               self.settings.max_open_upload_files)

    async def purge(self, startup: bool = False) -> tuple[int, int]:
        """Remove expired sessions (row and file), upload files without a row that are older
        than the TTL, and rows whose file is gone. Returns (sessions, files without a row).

        At `startup` nothing is in flight, so every row without a file goes at once."""
        if self._activity:
            pending, self._activity = self._activity, {}
            try:
                await self.meta.touch_uploads(pending)
            except BaseException:
                for upload_id, when in pending.items():  # not lost: written next pass
                    self._activity.setdefault(upload_id, when)
                raise
        now = time.time()
        ttl = self.settings.upload_ttl_seconds
        on_disk = dict(await trio.to_thread.run_sync(self.blobs.list_uploads))
        rows = self.meta.upload_ids()
        # (Replicas sharing the store: another one may be starting a session right now.)
        settled = now if startup and not self.shared else now - _ROW_WITHOUT_FILE_GRACE_SECONDS
        ended = set(self.meta.expired_uploads(now - ttl))
        ended.update(i for i in self.meta.expired_uploads(settled) if i not in on_disk)
        # in use, or active while the activity above was being written: not expired
        ended = {i for i in ended if not self._in_use(i) and i not in self._activity}
        orphans = [i for i, age in on_disk.items()
                   if i not in rows and age >= ttl and not self._in_use(i)]
        for upload_id in [*ended, *orphans]:
            await trio.to_thread.run_sync(self.blobs.abort_upload, upload_id)
            self.forget(upload_id)
        if ended:
            await self.meta.delete_uploads(sorted(ended))
        if ended or orphans:
            log.info("purged %d upload sessions (idle longer than %gs or without a file) and "
                     "%d upload files without a session", len(ended), ttl, len(orphans))
        return len(ended), len(orphans)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Purge once before the node serves, then keep descriptors and sessions bounded for
        as long as it runs. A failed pass (a full disk, say) is logged and tried again next
        time; it never stops the node."""
        await self._purge_logged(startup=True)
        task_status.started()
        idle = self.settings.upload_idle_close_seconds
        # Descriptors are checked often (cheap: no I/O but close); sessions every interval.
        tick = min(1.0, max(0.05, idle / 2))
        interval = self.settings.upload_purge_interval_seconds
        next_purge = trio.current_time() + interval
        while True:
            await trio.sleep(tick)
            self._close_idle_files()
            if trio.current_time() >= next_purge:
                await self._purge_logged()
                next_purge = trio.current_time() + interval

    async def _purge_logged(self, startup: bool = False) -> None:
        try:
            await self.purge(startup)
        except Exception:
            log.exception("purging expired upload sessions failed; trying again later")
