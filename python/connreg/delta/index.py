"""The chunk index: which stored blob holds which content-defined chunk.

Every blob a node stores is cut into chunks (FastCDC in the Rust core, BLAKE3 ids) once, in the
background after ingest, whatever brought it (client push, sync, mount). Lists are also served
to children (cached here after the first computation), and a child looks its wanted chunk ids
up here to copy them from local blobs instead of fetching them. `reindex` rebuilds it all.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from connreg import _core
from connreg.config import Settings
from connreg.storage import MetadataStore
from connreg.storage.budget import StorageFull

log = logging.getLogger("connreg.delta")
# Chunk ids per metadata query (SQLite bounds the number of bound parameters).
HOLDERS_PER_QUERY = 500
# Fresh blobs are indexed once ingest has been quiet this long: chunking is CPU work that would
# otherwise compete with the rest of a push still in progress (measured on this 2-core VM: a
# skopeo push of the Debian image took ~7% longer with indexing right away). A sync that needs
# the index first catches up (`catch_up`), so waiting never costs a transfer anything.
QUIET_SECONDS = 1.0


def params_key(p: "_core.ChunkParams") -> str:
    return f"fastcdc-blake3:{p.min_size}:{p.avg_size}:{p.max_size}"


class ChunkIndex:
    def __init__(self, blobs, meta: MetadataStore, settings: Settings):
        self.blobs = blobs
        self.meta = meta
        self.params = _core.ChunkParams(settings.chunk_min_size, settings.chunk_avg_size,
                                        settings.chunk_max_size)
        self.key = params_key(self.params)
        # blobs waiting to be indexed, in arrival order (a dict as an ordered set); a digest
        # leaves only once indexed, so `catch_up` also waits for the one in progress
        self._pending: dict[str, None] = {}
        self._wake = trio.Event()
        self._last_ingest = float("-inf")
        self._slots = trio.CapacityLimiter(1)  # one blob at a time: indexing is background work
        # gzip layers: plaintext chunk lists and reconstruction data (delta/gzip_layers.py)
        from connreg.delta.gzip_layers import GzipLayers  # it uses params_key from here
        self.gzip = GzipLayers(blobs, settings.data_dir, settings)

    def chunks_of(self, digest: str) -> list[tuple[int, int, str]] | None:
        return self.meta.chunk_list(digest, self.key)

    async def ensure(self, digest: str) -> list[tuple[int, int, str]]:
        """The blob's chunk list, computed (streaming, GIL released) and stored if missing."""
        cached = self.chunks_of(digest)
        if cached is not None:
            return cached
        async with self._slots:
            cached = self.chunks_of(digest)
            if cached is not None:
                return cached
            chunks = await trio.to_thread.run_sync(self.blobs.chunks, digest, self.params)
            await self.meta.put_chunk_list(digest, self.key, chunks)
            return chunks

    async def record(self, digest: str, chunks: list[tuple[int, int, str]]) -> None:
        """Store a list we already know (a blob assembled from a parent's verified list)."""
        await self.meta.put_chunk_list(digest, self.key, chunks)

    def locate(self, chunk_id: str) -> tuple[str, int, int] | None:
        """(digest, offset, length) of a local copy of the chunk, if any blob here holds it."""
        found = self.meta.find_chunk(chunk_id, self.key)
        if found is not None and self.blobs.exists(found[0]):
            return found
        return None

    async def locate_readable(self, chunk_ids: list[str], may_read: Callable[[str], bool] | None
                              ) -> dict[str, tuple[str, int, int]]:
        """`locate` for many chunks on behalf of a child, using only blobs linked into a
        repository `may_read` accepts (None: any), so an answer never reveals content the
        child could not pull. Chunks not found are absent from the result."""
        await self.catch_up()
        found: dict[str, tuple[str, int, int]] = {}
        readable: dict[str, bool] = {}
        present: dict[str, bool] = {}
        ids = list(dict.fromkeys(chunk_ids))
        for start in range(0, len(ids), HOLDERS_PER_QUERY):
            for chunk_id, repo, digest, offset, length in self.meta.chunk_holders(
                    ids[start:start + HOLDERS_PER_QUERY], self.key):
                if chunk_id in found:
                    continue
                if may_read is not None:
                    if repo not in readable:
                        readable[repo] = may_read(repo)
                    if not readable[repo]:
                        continue
                if digest not in present:  # a worker thread: on S3 this is a request
                    present[digest] = await trio.to_thread.run_sync(self.blobs.exists, digest)
                if present[digest]:
                    found[chunk_id] = (digest, offset, length)
            await trio.sleep(0)  # thousands of ids: let other requests in between queries
        return found

    def schedule(self, digest: str) -> None:
        """Index a freshly stored blob in the background, once ingest has been quiet."""
        self._pending[digest] = None
        self._last_ingest = trio.current_time()
        self._wake.set()
        self.gzip.schedule(digest)

    async def catch_up(self) -> None:
        """Index every blob still waiting: the caller is about to look chunks up."""
        for digest in list(self._pending):
            await self._index(digest)

    async def _index(self, digest: str) -> None:
        try:
            if await trio.to_thread.run_sync(self.blobs.exists, digest):
                await self.ensure(digest)
        except StorageFull as exc:  # expected while the disk is full: no traceback
            log.warning("not indexing chunks of %s: %s", digest[:19], exc)
        except Exception:  # a blob deleted meanwhile, a read error: log and go on
            log.exception("indexing chunks of %s failed", digest)
        self._pending.pop(digest, None)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Background indexer (and the gzip layers' one), owned by the app's nursery."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.gzip.run)
            task_status.started()
            await self._run()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while (quiet := trio.current_time() - self._last_ingest) < QUIET_SECONDS:
                await trio.sleep(QUIET_SECONDS - quiet)
            while self._pending:
                await self._index(next(iter(self._pending)))

    async def reindex(self) -> int:
        """Recompute every blob's list (maintenance); returns how many blobs were indexed."""
        count = 0
        for digest in self.blobs.list_digests():
            chunks = await trio.to_thread.run_sync(self.blobs.chunks, digest, self.params)
            await self.meta.put_chunk_list(digest, self.key, chunks)
            count += 1
        return count
