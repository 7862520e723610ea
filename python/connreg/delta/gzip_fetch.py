"""Child side of gzip-layer delta: fetch a rebuilt gzip layer as the change of its plaintext.

1. The parent's plaintext chunk list of layer D (it analysed D once, in the background).
2. The local layer whose plaintext holds most of those chunks (the previous version) is
   inflated into a work file; D's plaintext is assembled in another work file, in order:
   chunks the old plaintext holds are copied from it, the others fetched in batches (each
   checked against its BLAKE3 id as it arrives).
3. The reconstruction file is fetched, and Rust `gzip_recreate` turns plaintext +
   reconstruction data into gzip bytes in the upload `sync-<D>`, streaming, on a worker thread;
   the commit verifies the SHA-256 before the blob becomes visible.

The plaintext work file survives an interruption: the next attempt continues where it ends.
Whatever cannot work (no analysis at the parent, no previous version, a reconstruction that
fails or does not hash to D) raises `DeltaUnavailable`; the caller then fetches D by chunks of
its compressed bytes, as for any blob.
"""

from __future__ import annotations

import logging
import os
from contextlib import aclosing
from pathlib import Path

import trio

from connreg import _core
from connreg.delta.fetch import (BATCH_CHUNKS, DeltaUnavailable, frame_entries, resume_point)
from connreg.delta.gzip_layers import GzipLayers
from connreg.sync.remote import ParentUnavailable

log = logging.getLogger("connreg.delta")
BATCH_BYTES = 2 * 1024 * 1024
MIN_CAPPED_BATCH_BYTES = 256 * 1024
# Below this share of the new plaintext found in the old version, the change is most of the
# layer: chunks of the compressed bytes cost about as much and need no recreation.
MIN_HELD_SHARE = 0.25
# Bytes copied from the old plaintext per worker-thread call.
COPY_GROUP_BYTES = 8 * 1024 * 1024
# How long to wait for the parent's analysis of a fresh layer (seconds of CPU per 100 MB):
# far cheaper on a slow link than moving the whole layer.
ANALYSIS_WAIT_SECONDS = 90.0
ANALYSIS_POLL_SECONDS = 1.0
RECON_LIMIT_SHARE = 0.25  # a reconstruction file larger than this share of the layer: refused


class GzipDeltaFetcher:
    def __init__(self, blobs, layers: GzipLayers, parent, stats=None):
        self.blobs = blobs
        self.layers = layers
        self.parent = parent
        self.stats = stats
        self.work = layers.dir / "work"
        self.work.mkdir(exist_ok=True)
        self._refused: set[str] = set()  # layers whose recreation failed: chunks from now on

    def _work_file(self, digest: str, suffix: str) -> Path:
        return self.work / (digest.split(":", 1)[1] + suffix)

    async def fetch(self, repo: str, digest: str) -> None:
        if digest in self._refused:
            raise DeltaUnavailable(f"gzip layer {digest[:19]} did not recreate exactly before")
        await self.layers.catch_up()
        if not self.layers.any_layer():
            raise DeltaUnavailable("no gzip layer here to start from")
        listing = await self.parent.gzip_layer(repo, digest)
        waited = 0.0
        while listing is not None and listing.get("pending") and waited < ANALYSIS_WAIT_SECONDS:
            await trio.sleep(ANALYSIS_POLL_SECONDS)  # the parent analyses it in the background
            waited += ANALYSIS_POLL_SECONDS
            listing = await self.parent.gzip_layer(repo, digest)
        if listing is None or listing.get("pending"):
            raise DeltaUnavailable(f"parent has not analysed gzip layer {digest[:19]}")
        if listing.get("params") != self.layers.key:
            raise DeltaUnavailable("parent chunks gzip plaintext with other parameters")
        chunks = [tuple(c) for c in listing["chunks"]]
        plain_size = listing["plainSize"]
        base = self.layers.best_base([c[2] for c in chunks], exclude=digest)
        if base is None or base[1] < MIN_HELD_SHARE * plain_size:
            raise DeltaUnavailable(f"no previous version of gzip layer {digest[:19]} here")
        base_digest = base[0]
        plain_file = self._work_file(digest, ".plain")
        old_file = self._work_file(base_digest, ".old")
        try:
            await self._assemble(repo, digest, chunks, base_digest, plain_file, old_file)
        finally:
            old_file.unlink(missing_ok=True)
        recon = await self.parent.gzip_recon(repo, digest)
        if len(recon) > RECON_LIMIT_SHARE * listing["size"] + (1 << 20):
            plain_file.unlink(missing_ok=True)
            self._refused.add(digest)
            raise DeltaUnavailable(f"reconstruction data of {digest[:19]} too large")
        recon_file = self._work_file(digest, ".recon")
        await trio.to_thread.run_sync(recon_file.write_bytes, recon)
        try:
            await self._recreate(digest, listing["size"], plain_file, recon_file)
        except DeltaUnavailable:
            self._refused.add(digest)
            recon_file.unlink(missing_ok=True)
            raise
        finally:
            plain_file.unlink(missing_ok=True)
        await self.layers.record_analysed(digest, plain_size, chunks, recon_file)
        if self.stats:
            self.stats.progress_blob()

    async def _assemble(self, repo: str, digest: str, chunks: list, base: str,
                        plain_file: Path, old_file: Path) -> None:
        """D's plaintext in `plain_file`: continued from what a previous attempt left."""
        kept = plain_file.stat().st_size if plain_file.exists() else 0
        point = resume_point(chunks, kept)
        if point is None:  # longer than the plaintext: not a prefix of it
            kept, point = 0, (0, 0)
        i = point[0]
        kept -= point[1]  # a chunk cut by a kill mid-write is fetched again whole
        with open(plain_file, "r+b" if plain_file.exists() else "wb") as out:
            out.truncate(kept)
            out.seek(kept)
            if kept:
                log.info("resuming gzip layer %s at chunk %d of %d (%d plaintext bytes kept)",
                         digest[:19], i, len(chunks), kept)
            held = {cid: (o, n) for o, n, cid in self.layers.plain_chunks(base)}
            if i < len(chunks):
                path = self.blobs.path_for(base)
                await trio.to_thread.run_sync(_core.gunzip_to_file, path, str(old_file))
            copied = fetched = 0
            with open(old_file, "rb") if i < len(chunks) else open(os.devnull, "rb") as old:
                while i < len(chunks):
                    j, group = i, []
                    while j < len(chunks) and chunks[j][2] in held and \
                            sum(n for _, n in group) < COPY_GROUP_BYTES:
                        group.append(held[chunks[j][2]])
                        j += 1
                    if group:
                        await trio.to_thread.run_sync(_copy_ranges, old, out, group)
                        copied += sum(n for _, n in group)
                        i = j
                        continue
                    while j < len(chunks) and chunks[j][2] not in held:
                        j += 1
                    fetched += await self._fetch_run(repo, digest, chunks[i:j], out)
                    i = j
        log.info("plaintext of gzip layer %s: %d bytes from %s, %d fetched", digest[:19],
                 copied, base[:19], fetched)

    def _batch_bytes(self) -> int:
        rate = self.parent.meter.rate if self.parent.meter is not None else None
        if not rate:
            return BATCH_BYTES
        return max(MIN_CAPPED_BATCH_BYTES, min(BATCH_BYTES, int(rate) // 4))

    async def _fetch_run(self, repo: str, digest: str, run: list, out) -> int:
        """Fetch a run of missing plaintext chunks in batches, appending each one as soon as it
        has arrived and matched its id (so an interruption keeps it)."""
        limit, i, total = self._batch_bytes(), 0, 0
        while i < len(run):
            batch, size = [], 0
            while i < len(run) and len(batch) < BATCH_CHUNKS and (
                    not batch or size + run[i][1] <= limit):
                batch.append(run[i])
                size += run[i][1]
                i += 1
            total += await self._fetch_batch(repo, digest, batch, out)
        return total

    async def _fetch_batch(self, repo: str, digest: str, batch: list, out) -> int:
        written = 0
        for attempt in (1, 2):
            try:
                pieces = self.parent.stream_chunks(repo, digest, [[o, n] for o, n, _ in batch],
                                                   path="/connreg/v1/sync/gzip")
                async with aclosing(pieces), aclosing(frame_entries(pieces)) as entries:
                    async for chunk_id, data in entries:
                        if chunk_id != batch[0][2] or len(data) != batch[0][1]:
                            raise _core.CorruptChunk(f"got chunk {chunk_id[:12]} where "
                                                     f"{batch[0][2][:12]} was asked")
                        await trio.to_thread.run_sync(_write_flushed, out, data)
                        written += len(data)
                        if self.stats:
                            self.stats.progress_bytes(len(data))
                        batch = batch[1:]
                        if not batch:
                            return written
            except _core.CorruptChunk as exc:
                log.warning("corrupt plaintext batch for %s (%s); fetching again", digest[:19],
                            exc)
                continue
            log.warning("plaintext batch for %s ended early; fetching again", digest[:19])
        raise ParentUnavailable(f"plaintext chunks of {digest} arrived corrupt twice")

    async def _recreate(self, digest: str, size: int, plain_file: Path, recon_file: Path) -> None:
        """Recreate the gzip bytes into `sync-<D>` and commit them (SHA-256 verified)."""
        upload = self.blobs.upload("sync-" + digest.replace(":", "-"))
        if upload.size:
            upload.abort()
            upload = self.blobs.upload("sync-" + digest.replace(":", "-"))
        start = trio.current_time()
        try:
            await trio.to_thread.run_sync(upload._append, size, lambda: _core.gzip_recreate(
                str(recon_file), str(plain_file), upload._inner))
            await trio.to_thread.run_sync(upload.commit, digest)
        except (_core.GzipError, _core.DigestMismatch) as exc:
            upload.abort()
            log.warning("gzip layer %s did not recreate exactly (%s): refused, fetching it by "
                        "chunks", digest[:19], exc)
            raise DeltaUnavailable(f"recreating {digest[:19]} failed") from None
        except BaseException:
            upload.abort()
            raise
        log.info("recreated gzip layer %s (%d bytes) in %.1f s", digest[:19], size,
                 trio.current_time() - start)


def _copy_ranges(old, out, ranges: list[tuple[int, int]]) -> None:
    for offset, length in ranges:
        old.seek(offset)
        data = old.read(length)
        if len(data) != length:
            raise ParentUnavailable("old plaintext is shorter than its chunk list")
        out.write(data)
    out.flush()


def _write_flushed(out, data: bytes) -> None:
    out.write(data)
    out.flush()
