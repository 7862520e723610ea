"""Child side of delta transfer: assemble a blob from local chunks plus the missing ones.

The blob is built in the resumable upload `sync-<digest>`, strictly in order: a chunk this node
already holds in any blob is copied locally (`Upload.copy_from`); runs of missing chunks are
fetched in batches, each chunk verified against its BLAKE3 id before it is written.

A run of missing chunks is usually an edited stretch of an older version this node holds: the
bytes between the local chunks on either side of the run. When such an old stretch exists, the
run is refined: the parent cuts just that range into ~4 KiB sub-chunks, the child cuts its old
stretch the same way, and only the sub-chunks it lacks cross the link (a 26 KiB edit then costs
about 26 KiB plus two sub-chunks, not the two or three 64 KiB chunks around it).

Batches are read as a stream and each chunk is appended as soon as it has arrived and been
verified, so an interrupted fetch (a window's end, a cut link) leaves every chunk received in
the upload: a verified prefix (whole chunks, or part of one); the next attempt continues
exactly where it ends. The commit verifies the SHA-256 of the whole
before the blob becomes visible, and the chunk list is then recorded in the local index, so the
next version finds these chunks here.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator

import trio

from connreg import _core
from connreg.delta.index import ChunkIndex
from connreg.sync.remote import ParentClient, ParentUnavailable

log = logging.getLogger("connreg.delta")
BATCH_BYTES = 2 * 1024 * 1024
BATCH_CHUNKS = 128
# Under a bandwidth cap, batches shrink towards a quarter second of traffic, down to this.
MIN_CAPPED_BATCH_BYTES = 256 * 1024
# Frame entries: id (32) | codec (1) | payload length (u32 LE) | payload (docs/delta.md).
ENTRY_HEADER = 32 + 1 + 4
MAX_ENTRY_BYTES = 16 * 1024 * 1024
# Sub-chunks for refining a missing run (cut identically by parent and child).
REFINE_PARAMS = _core.ChunkParams(1024, 4096, 16384)
REFINE_MAX_RUN = 8 * 1024 * 1024  # the parent's limit for one range list
# An "old version" much larger than the run is probably not one; reading it would cost more
# than refining saves.
REFINE_MAX_OLD = 16 * 1024 * 1024
# Local chunks copied per call: big enough to keep the copy pipelined, small enough that a
# window's end (which waits for a running thread call) is not held up.
COPY_GROUP_BYTES = 16 * 1024 * 1024

Chunk = tuple[int, int, str]  # (offset, length, blake3)
Location = tuple[str, int, int]  # (digest, offset, length) of a local copy


class DeltaUnavailable(Exception):
    """The parent cannot move this blob by chunks, in either direction (old parent, delta
    off, other chunking parameters): the caller transfers it whole."""


def resume_point(chunks: list, upload_size: int) -> tuple[int, int] | None:
    """(index of the chunk the upload ends in, bytes of that chunk already there); the index
    is len(chunks) when everything is there, None if the upload is longer than the blob."""
    position = 0
    for i, (_, length, _) in enumerate(chunks):
        if upload_size < position + length:
            return i, upload_size - position
        position += length
    return (len(chunks), 0) if upload_size == position else None


def covers(chunks: list, offset: int, length: int) -> bool:
    """Whether `chunks` tile [offset, offset + length) exactly, in order."""
    position = offset
    for o, n, _ in chunks:
        if o != position or n <= 0:
            return False
        position += n
    return position == offset + length


@dataclass
class _Assembly:
    repo: str
    digest: str
    upload: object  # _core.Upload
    copied: int = 0
    fetched: int = 0
    refined_runs: int = 0


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
        await self.index.catch_up()  # blobs that arrived moments ago may hold chunks we need
        upload_id = "sync-" + digest.replace(":", "-")
        upload = self.blobs.upload(upload_id)
        point = resume_point(chunks, upload.size)
        if point is None:  # cannot be a prefix of this blob: start over
            log.warning("discarding %d bytes kept for %s: longer than the blob", upload.size,
                        digest[:19])
            upload.abort()
            upload = self.blobs.upload(upload_id)
            point = (0, 0)
        i, partial = point
        if upload.size:
            log.info("resuming %s at chunk %d of %d (%d bytes kept)", digest[:19], i,
                     len(chunks), upload.size)
        job = _Assembly(repo, digest, upload)
        if partial:  # the rest of the chunk a previous attempt stopped inside
            offset, length, chunk_id = chunks[i]
            local = self.index.locate(chunk_id)
            if local is not None:
                await self._copy(job, [(local[0], local[1] + partial, length - partial)])
            else:
                await self._fetch_missing(job, [(offset + partial, length - partial, None)])
            i += 1
        previous = self.index.locate(chunks[i - 1][2]) if i > 0 else None
        while i < len(chunks):
            local = self.index.locate(chunks[i][2])
            if local is not None:  # a run of chunks held here: one copy call
                held, size = [local], local[2]
                i += 1
                while i < len(chunks) and size < COPY_GROUP_BYTES:
                    local = self.index.locate(chunks[i][2])
                    if local is None:
                        break
                    held.append(local)
                    size += local[2]
                    i += 1
                await self._copy(job, held)
                previous = held[-1]
                continue
            j, run_bytes = i, 0
            while (j < len(chunks) and run_bytes + chunks[j][1] <= REFINE_MAX_RUN
                   and (j == i or self.index.locate(chunks[j][2]) is None)):
                run_bytes += chunks[j][1]
                j += 1
            following = self.index.locate(chunks[j][2]) if j < len(chunks) else None
            old = self._old_version(previous, following, i == 0, j == len(chunks), run_bytes)
            if old is not None:
                await self._fetch_refined(job, chunks[i:j], old)
            else:
                await self._fetch_missing(job, chunks[i:j])
            previous = None
            i = j
        try:
            await trio.to_thread.run_sync(upload.commit, digest)
        except _core.DigestMismatch:
            upload.abort()
            raise ParentUnavailable(f"blob {digest} assembled from chunks failed verification")
        await self.index.record(digest, [tuple(c) for c in chunks])
        if self.stats:
            self.stats.progress_blob()
            self.stats.transfer.delta_assembled(job.copied, job.fetched)  # what delta saved
        log.info("assembled %s: %d bytes from local chunks, %d fetched (%d runs refined)",
                 digest[:19], job.copied, job.fetched, job.refined_runs)

    def _old_version(self, previous: Location | None, following: Location | None,
                     at_start: bool, at_end: bool, run_bytes: int) -> Location | None:
        """The local stretch that a run of missing chunks most likely replaced: between the
        local copies of its neighbours when both sit in one blob (or from a blob's start or to
        its end, for a run at the start or end); None when there is no such stretch."""
        if previous is not None and following is not None and previous[0] == following[0]:
            blob, start, end = previous[0], previous[1] + previous[2], following[1]
        elif previous is None and following is not None and at_start:
            blob, start, end = following[0], 0, following[1]
        elif previous is not None and following is None and at_end:
            blob, start = previous[0], previous[1] + previous[2]
            end = self.blobs.size(blob) or 0
        else:
            return None
        length = end - start
        if length < REFINE_PARAMS.avg_size or length > min(REFINE_MAX_OLD, 4 * run_bytes + (1 << 20)):
            return None
        return blob, start, length

    async def _fetch_refined(self, job: _Assembly, run: list, old: Location) -> None:
        """Fetch a run of missing chunks as the sub-chunks that are not in `old`."""
        start = run[0][0]
        length = sum(c[1] for c in run)
        listing = await self.parent.range_chunk_list(job.repo, job.digest, start, length,
                                                     REFINE_PARAMS)
        subs = listing.get("chunks")
        if not isinstance(subs, list) or not covers(subs, start, length):
            raise ParentUnavailable(f"sub-chunk list for {job.digest} does not cover the range")

        def cut_old() -> dict[str, Location]:
            data = self.blobs.read(old[0], old[1], old[2])
            return {cid: (old[0], old[1] + o, n)
                    for o, n, cid in _core.chunk_bytes(data, REFINE_PARAMS)}

        have = await trio.to_thread.run_sync(cut_old)
        job.refined_runs += 1
        missing: list = []
        held: list[Location] = []
        for offset, n, cid in subs:  # appended in order: flush one list before the other grows
            local = have.get(cid)
            if local is None or local[2] != n:
                await self._copy(job, held)
                held = []
                missing.append((offset, n, cid))
            else:
                await self._fetch_missing(job, missing)
                missing = []
                held.append(local)
        await self._copy(job, held)
        await self._fetch_missing(job, missing)

    async def _copy(self, job: _Assembly, held: list[Location]) -> None:
        """Append local ranges in one call (the Rust side hashes on a second thread)."""
        if held:
            await trio.to_thread.run_sync(job.upload.copy_many, held)
            job.copied += sum(n for _, _, n in held)
            if self.stats:
                self.stats.transfer.advance(job.digest, sum(n for _, _, n in held))

    def _batch_bytes(self) -> int:
        """Bytes per chunk batch: 2 MiB, or about a quarter second of traffic under a
        bandwidth cap, so a window that closes mid-batch leaves little requested but unread."""
        rate = self.parent.meter.rate if self.parent.meter is not None else None
        if not rate:
            return BATCH_BYTES
        return max(MIN_CAPPED_BATCH_BYTES, min(BATCH_BYTES, int(rate) // 4))

    async def _fetch_missing(self, job: _Assembly, items: list) -> None:
        """Fetch and append `items` ((offset, length, id or None) of the parent's blob) in
        batches; an id is checked against what arrives, None takes the parent's word for it
        (the commit's SHA-256 check still covers those bytes)."""
        i = 0
        limit = self._batch_bytes()
        while i < len(items):
            batch, size = [], 0
            while i < len(items) and len(batch) < BATCH_CHUNKS and (
                    not batch or size + items[i][1] <= limit):
                batch.append(items[i])
                size += items[i][1]
                i += 1
            await self._fetch_batch(job, batch)

    async def _fetch_batch(self, job: _Assembly, batch: list) -> None:
        """Append the batch's chunks in order, each written as soon as it has arrived and
        matched its BLAKE3 id, so an interruption (a window's end, a cut link) keeps every
        chunk already received. What arrives corrupt is requested once more, from the first
        chunk not yet written."""
        for attempt in (1, 2):
            ranges = [[o, n] for o, n, _ in batch]
            try:
                pieces = self.parent.stream_chunks(job.repo, job.digest, ranges)
                async with aclosing(pieces), aclosing(frame_entries(pieces)) as entries:
                    async for chunk_id, data in entries:
                        want = batch[0][2]
                        if want is not None and chunk_id != want or len(data) != batch[0][1]:
                            raise _core.CorruptChunk(f"got chunk {chunk_id[:12]} of {len(data)}"
                                                     f" bytes where {want} was asked")
                        await trio.to_thread.run_sync(job.upload.write, data)
                        job.fetched += len(data)
                        if self.stats:
                            self.stats.progress_bytes(len(data))
                            self.stats.transfer.advance(job.digest, len(data))
                        batch = batch[1:]
                        if not batch:
                            break
            except _core.CorruptChunk as exc:
                log.warning("corrupt chunk batch for %s from parent (%s); fetching again",
                            job.digest[:19], exc)
                continue
            if not batch:
                return
            log.warning("chunk batch for %s ended %d chunk(s) early; fetching again",
                        job.digest[:19], len(batch))
        raise ParentUnavailable(f"chunks of {job.digest} arrived corrupt twice")


async def frame_entries(pieces) -> AsyncIterator[tuple[str, bytes]]:
    """(BLAKE3 hex, bytes) of each frame entry (`id | codec | length | payload`) as soon as
    it is complete in the stream of `pieces`, verified against its id."""
    buffer = bytearray()
    async for piece in pieces:
        buffer += piece
        while len(buffer) >= ENTRY_HEADER:
            end = ENTRY_HEADER + int.from_bytes(buffer[ENTRY_HEADER - 4:ENTRY_HEADER], "little")
            if end > ENTRY_HEADER + MAX_ENTRY_BYTES:
                raise _core.CorruptChunk(f"frame entry of {end} bytes")
            if len(buffer) < end:
                break
            entry = bytes(buffer[:end])
            del buffer[:end]
            for decoded in await trio.to_thread.run_sync(_core.decode_chunks, entry):
                yield decoded
    if buffer:
        raise _core.CorruptChunk(f"frame ends inside an entry ({len(buffer)} bytes left)")
