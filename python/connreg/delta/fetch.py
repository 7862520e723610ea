"""Child side of delta transfer: assemble a blob from local chunks plus the missing ones.

The blob is built in the resumable upload `sync-<digest>`, strictly in order: a chunk this node
already holds in any blob is copied locally (`Upload.copy_from`); runs of missing chunks are
fetched in batches, each chunk verified against its BLAKE3 id before it is written. An
interrupted fetch leaves a prefix of whole, verified chunks; the next attempt continues after
it. The commit verifies the SHA-256 of the whole before the blob becomes visible, and the chunk
list is then recorded in the local index, so the next version finds these chunks here.
"""

from __future__ import annotations

import logging

import trio

from connreg import _core
from connreg.delta.index import ChunkIndex
from connreg.sync.remote import ParentClient, ParentUnavailable

log = logging.getLogger("connreg.delta")
BATCH_BYTES = 2 * 1024 * 1024
BATCH_CHUNKS = 128


class DeltaUnavailable(Exception):
    """The parent cannot move this blob by chunks, in either direction (old parent, delta
    off, other chunking parameters): the caller transfers it whole."""


def _resume_point(chunks: list[list], upload_size: int) -> int | None:
    """Index of the first chunk not yet in the upload, or None if the upload does not end on a
    chunk boundary (then it cannot be continued chunk-wise)."""
    position = 0
    for i, (offset, length, _) in enumerate(chunks):
        if position == upload_size:
            return i
        position += length
    return len(chunks) if position == upload_size else None


class DeltaFetcher:
    def __init__(self, blobs, index: ChunkIndex, parent: ParentClient, stats=None):
        self.blobs = blobs
        self.index = index
        self.parent = parent
        self.stats = stats  # SyncState: progress counters

    async def fetch(self, repo: str, digest: str) -> None:
        listing = await self.parent.chunk_list(repo, digest)
        if listing is None or listing.get("params") != self.index.key:
            raise DeltaUnavailable(f"no compatible chunk list for {digest}")
        chunks = listing["chunks"]
        upload_id = "sync-" + digest.replace(":", "-")
        upload = self.blobs.upload(upload_id)
        start = _resume_point(chunks, upload.size)
        if start is None:
            # A byte prefix that ends inside a chunk (a whole-blob attempt, or a kill in the
            # middle of a write). Every byte of it is right, so keep it: the whole-blob path
            # continues after it with a Range request instead of sending it again.
            raise DeltaUnavailable(f"{upload.size} bytes kept mid-chunk; continuing whole")
        if start:
            log.info("resuming %s at chunk %d of %d (%d bytes kept)", digest[:19], start,
                     len(chunks), upload.size)
        copied = fetched = 0
        i = start
        while i < len(chunks):
            offset, length, chunk_id = chunks[i]
            local = self.index.locate(chunk_id)
            if local is not None:
                await trio.to_thread.run_sync(upload.copy_from, local[0], local[1], length)
                copied += length
                i += 1
                continue
            batch = []
            size = 0
            while (i < len(chunks) and len(batch) < BATCH_CHUNKS and size < BATCH_BYTES
                   and (not batch or self.index.locate(chunks[i][2]) is None)):
                batch.append(chunks[i])
                size += chunks[i][1]
                i += 1
            for data in await self._fetch_batch(repo, digest, batch):
                await trio.to_thread.run_sync(upload.write, data)
            fetched += size
            if self.stats:
                self.stats.progress_bytes(size)
        try:
            await trio.to_thread.run_sync(upload.commit, digest)
        except _core.DigestMismatch:
            upload.abort()
            raise ParentUnavailable(f"blob {digest} assembled from chunks failed verification")
        await self.index.record(digest, [tuple(c) for c in chunks])
        if self.stats:
            self.stats.progress_blob()
        log.info("assembled %s: %d bytes from local chunks, %d fetched", digest[:19], copied,
                 fetched)

    async def _fetch_batch(self, repo: str, digest: str, batch: list[list]) -> list[bytes]:
        """The batch's chunk bytes in order, each verified by BLAKE3; refetched once if corrupt."""
        for attempt in (1, 2):
            frame = await self.parent.fetch_chunks(repo, digest, [[o, n] for o, n, _ in batch])
            try:
                decoded = await trio.to_thread.run_sync(_core.decode_chunks, frame)
            except _core.CorruptChunk as exc:
                log.warning("corrupt chunk batch for %s from parent (%s); fetching again",
                            digest[:19], exc)
                continue
            if [cid for cid, _ in decoded] != [cid for _, _, cid in batch]:
                log.warning("chunk batch for %s does not match the list; fetching again",
                            digest[:19])
                continue
            return [data for _, data in decoded]
        raise ParentUnavailable(f"chunks of {digest} arrived corrupt twice")
