"""Child side of upward delta transfer: push a large blob to the parent by chunks.

The parent says which of the blob's chunks it can copy from its own blobs (`chunks/known`);
the blob is then built in an ordinary upload session at the parent, strictly in order, by plan
requests (`plan.py`) that say "copy chunk X" or carry the chunk's bytes (zstd where it
shrinks), and finished with the ordinary `PUT ?digest=` (the parent verifies the SHA-256).
The session URL is kept durably under the same key as the whole-blob resumable push, so after a
cut link or a restart of either node the push continues at the parent's size: chunk-wise on a
chunk boundary, with the rest of that chunk as literal bytes when the copy ends inside one.
"""

from __future__ import annotations

import bisect
import logging

import trio

from connreg import _core
from connreg.delta import plan
from connreg.delta.fetch import DeltaUnavailable
from connreg.sync.remote import ParentClient, ParentRefused, ParentUnavailable, UploadOutOfStep
from connreg.sync.state import SyncState, push_session_key

log = logging.getLogger("connreg.delta")
# Literal bytes per plan request: about what a cut link loses, and the meter's step.
PLAN_LITERAL_BYTES = 2 * 1024 * 1024
PLAN_ENTRIES = 1024
KNOWN_PER_REQUEST = 20_000
# Times in a row the parent's session may turn out elsewhere before we back off.
RESYNC_ATTEMPTS = 3


class DeltaPusher:
    def __init__(self, reg, parent: ParentClient, state: SyncState):
        self.reg = reg
        self.parent = parent
        self.state = state

    async def push(self, repo: str, digest: str, size: int) -> None:
        """Send `digest` to the parent's `repo`; DeltaUnavailable when the parent cannot take
        chunks (the caller pushes the blob whole, continuing the same session)."""
        chunks = await self.reg.chunk_index.ensure(digest)
        if sum(n for _, n, _ in chunks) != size:
            raise DeltaUnavailable(f"chunk list of {digest} does not cover its {size} bytes")
        known = await self._known(repo, chunks)
        key = push_session_key(repo, digest)
        location, offset = await self._session(repo, digest, size, key)
        starts = [o for o, _, _ in chunks]
        copied = sent = misses = 0
        while offset < size:
            entries, end = await self._plan(digest, chunks, starts, offset, known)
            body = plan.encode(entries)
            try:
                new_size = await self.parent.append_chunks(repo, location, offset, body)
            except UploadOutOfStep as exc:
                # Usually our previous request was applied but its answer was lost.
                offset = await self._resync(location, digest, size, key, exc.size, misses)
                misses += 1
                continue
            except ParentRefused as exc:
                if exc.code == "CHUNK_UNKNOWN":
                    # Gone at the parent since it said it had it (garbage collection): ask again.
                    log.info("parent lost chunks of %s since it listed them; asking again",
                             digest[:19])
                    known = await self._known(repo, chunks)
                    offset = await self._resync(location, digest, size, key, None, misses)
                    misses += 1
                    continue
                if exc.status == 404 and exc.code == "NOT_FOUND":
                    raise DeltaUnavailable("the parent stopped taking chunks") from None
                if exc.code == "BLOB_UPLOAD_UNKNOWN":
                    await self.state.delete(key)
                    raise ParentUnavailable(f"the parent's upload of {digest} is gone; "
                                            "starting a new one") from None
                raise
            misses = 0
            copied += sum(e.length for e in entries if isinstance(e, plan.Copy))
            sent += len(body)
            offset = new_size
            if offset != end:
                log.info("parent's upload of %s is at byte %d after a plan ending at %d",
                         digest[:19], offset, end)
        await self._finish(location, digest, key)
        log.info("pushed %s by chunks: %d bytes copied at the parent, %d bytes sent",
                 digest[:19], copied, sent)

    async def _known(self, repo: str, chunks: list) -> set[str]:
        ids = list(dict.fromkeys(c for _, _, c in chunks))
        known: set[str] = set()
        for start in range(0, len(ids), KNOWN_PER_REQUEST):
            part = ids[start:start + KNOWN_PER_REQUEST]
            answer = await self.parent.known_chunks(repo, self.reg.chunk_index.key, part)
            if answer is None:
                raise DeltaUnavailable("the parent does not take chunks (older version, delta "
                                       "off, or other chunking parameters)")
            known.update(i for i, k in zip(part, answer) if k)
        return known

    async def _session(self, repo: str, digest: str, size: int, key: str) -> tuple[str, int]:
        """The remembered session and the parent's size of it, or a new session."""
        location = self.state.get(key)
        offset = await self.parent.upload_offset(location) if location else None
        if offset is not None and offset > size:  # not a prefix of this blob: start afresh
            await self.parent.cancel_upload(location)
            offset = None
        if offset is None:
            location, offset = await self.parent.start_upload(repo), 0
            await self.state.set(key, location)
        elif offset:
            log.info("resuming upward delta of %s at byte %d of %d", digest[:19], offset, size)
        return location, offset

    async def _resync(self, location: str, digest: str, size: int, key: str,
                      reported: int | None, misses: int) -> int:
        if misses >= RESYNC_ATTEMPTS:
            raise ParentUnavailable(f"upload of {digest} keeps moving at the parent")
        offset = reported if reported is not None else await self.parent.upload_offset(location)
        if offset is None or offset > size:
            await self.state.delete(key)
            raise ParentUnavailable(f"upload of {digest} out of step with the parent")
        log.info("continuing upward delta of %s at the parent's byte %d", digest[:19], offset)
        return offset

    async def _plan(self, digest: str, chunks: list, starts: list[int], offset: int,
                    known: set[str]) -> tuple[list, int]:
        """The entries of the next request from `offset` on, and where they end."""
        i = bisect.bisect_right(starts, offset) - 1
        entries: list = []
        items: list[tuple[str, int, int]] = []  # literal ranges, in entry order
        literal = 0
        start, length, _ = chunks[i]
        end = start + length
        if offset > start:
            # The parent's copy ends inside this chunk: its rest goes as bytes (their own id).
            log.info("upload of %s ends inside a chunk; sending its last %d bytes",
                     digest[:19], end - offset)
            items.append((digest, offset, end - offset))
            entries.append(None)
            literal += end - offset
            i += 1
        while i < len(chunks) and len(entries) < PLAN_ENTRIES and literal < PLAN_LITERAL_BYTES:
            start, length, chunk_id = chunks[i]
            if chunk_id in known:
                entries.append(plan.Copy(chunk_id, length))
            else:
                items.append((digest, start, length))
                entries.append(None)
                literal += length
            end = start + length
            i += 1
        if items:
            level = self.reg.settings.zstd_level
            frame = await trio.to_thread.run_sync(_core.encode_chunks, self.reg.blobs, items,
                                                  level)
            data = iter(plan.split_batch(frame))
            entries = [e if e is not None else next(data) for e in entries]
        return entries, end

    async def _finish(self, location: str, digest: str, key: str) -> None:
        try:
            await self.parent.finish_upload(location, digest)
        except ParentRefused as exc:
            if exc.code == "DIGEST_INVALID":
                # Assembled from a chunk the parent holds wrongly (a stale index): drop the
                # session; the caller sends the blob whole instead.
                log.warning("blob %s assembled by chunks failed verification at the parent",
                            digest[:19])
                await self.parent.cancel_upload(location)
                await self.state.delete(key)
                raise DeltaUnavailable("assembled blob failed verification") from None
            if exc.code == "BLOB_UPLOAD_UNKNOWN":
                await self.state.delete(key)
                raise ParentUnavailable(f"the parent's upload of {digest} is gone") from None
            raise
        await self.state.delete(key)
