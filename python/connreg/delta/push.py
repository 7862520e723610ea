"""Child side of upward delta transfer: push a large blob to the parent by chunks.

The parent says which of the blob's chunks it can copy from its own blobs (`chunks/known`);
the blob is then built in an ordinary upload session at the parent, strictly in order, by plan
requests (`plan.py`) that say "copy chunk X" or carry the chunk's bytes (zstd where it
shrinks), and finished with the ordinary `PUT ?digest=` (the parent verifies the SHA-256).
The session URL is kept durably under the same key as the whole-blob resumable push, so after a
cut link or a restart of either node the push continues at the parent's size: chunk-wise on a
chunk boundary, with the rest of that chunk as literal bytes when the copy ends inside one.

Refinement (the mirror of the way down, `fetch.py`): a run of chunks the parent lacks is
usually an edited stretch of a version the parent holds, between its copies of the run's
neighbours. The child cuts the run into ~4 KiB sub-chunks (`REFINE_PARAMS`), asks the parent
where its old stretch holds them (`chunks/near`), and names those bytes with `ref` entries
(anchor chunk + offset, verified by BLAKE3 at the parent) instead of sending them; only the
sub-chunks the parent lacks travel as literal bytes.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field

import trio

from connreg import _core
from connreg.delta import plan
from connreg.delta.fetch import REFINE_MAX_RUN, REFINE_PARAMS, DeltaUnavailable
from connreg.delta.index import params_key
from connreg.sync.remote import ParentClient, ParentRefused, ParentUnavailable, UploadOutOfStep
from connreg.sync.state import SyncState, push_session_key

log = logging.getLogger("connreg.delta")
# Literal bytes per plan request: about what a cut link loses, and the meter's step.
PLAN_LITERAL_BYTES = 2 * 1024 * 1024
PLAN_ENTRIES = 1024
KNOWN_PER_REQUEST = 20_000
# Times in a row the parent's session may turn out elsewhere before we back off.
RESYNC_ATTEMPTS = 3
# Bytes the parent reads to verify ref entries, per request (its limit is plan.MAX_LITERAL,
# literal bytes included).
PLAN_REF_BYTES = 32 * 1024 * 1024
# Adjacent sub-chunks are merged into one entry up to these sizes: fewer entries, and a ref
# needs no chunk boundary at either end.
MAX_REF_PIECE = 8 * 1024 * 1024
MAX_LITERAL_PIECE = 256 * 1024
COPY, REF, LITERAL = "copy", "ref", "literal"
# (offset in the blob, length, kind, chunk id / anchor id / None, delta from the anchor)
Piece = tuple[int, int, str, "str | None", int]


@dataclass
class _Push:
    repo: str
    digest: str
    chunks: list
    starts: list[int]
    known: set[str]
    run_bounds: dict[int, tuple[int, int]] = field(default_factory=dict)  # i -> (first, end)
    refined: dict[int, list[Piece]] = field(default_factory=dict)  # run's first chunk -> pieces
    refine: bool = True
    refined_runs: int = 0

    def find_runs(self) -> None:
        """Bounds of every maximal run of chunks the parent lacks, by chunk index."""
        self.run_bounds.clear()
        self.refined.clear()
        i = 0
        while i < len(self.chunks):
            if self.chunks[i][2] in self.known:
                i += 1
                continue
            j = i
            while j < len(self.chunks) and self.chunks[j][2] not in self.known:
                j += 1
            for k in range(i, j):
                self.run_bounds[k] = (i, j)
            i = j


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
        job = _Push(repo, digest, chunks, [o for o, _, _ in chunks],
                    await self._known(repo, chunks))
        job.find_runs()
        key = push_session_key(repo, digest)
        location, offset = await self._session(repo, digest, size, key)
        copied = referenced = sent = misses = 0
        while offset < size:
            entries, end = await self._plan(job, offset)
            body = plan.encode(entries)
            try:
                new_size = await self.parent.append_chunks(repo, location, offset, body)
            except UploadOutOfStep as exc:
                # Usually our previous request was applied but its answer was lost.
                offset = await self._resync(location, digest, size, key, exc.size, misses)
                misses += 1
                continue
            except ParentRefused as exc:
                if job.refine and exc.code in ("CHUNK_UNKNOWN", "DIGEST_INVALID") and any(
                        isinstance(e, plan.Ref) for e in entries):
                    # The parent's old version is not what it said (changed meanwhile): go on
                    # with whole chunks, from wherever its session is.
                    log.warning("parent refused refined entries for %s (%s); sending whole "
                                "chunks", digest[:19], exc)
                    job.refine = False
                    job.refined.clear()
                    if exc.code == "CHUNK_UNKNOWN":
                        job.known = await self._known(repo, chunks)
                        job.find_runs()
                    offset = await self._resync(location, digest, size, key, None, misses)
                    misses += 1
                    continue
                if exc.code == "CHUNK_UNKNOWN":
                    # Gone at the parent since it said it had it (garbage collection): ask again.
                    log.info("parent lost chunks of %s since it listed them; asking again",
                             digest[:19])
                    job.known = await self._known(repo, chunks)
                    job.find_runs()
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
            referenced += sum(e.length for e in entries if isinstance(e, plan.Ref))
            sent += len(body)
            offset = new_size
            if offset != end:
                log.info("parent's upload of %s is at byte %d after a plan ending at %d",
                         digest[:19], offset, end)
        await self._finish(location, digest, key)
        log.info("pushed %s by chunks: %d bytes copied at the parent, %d referenced in its "
                 "old version (%d runs refined), %d bytes sent", digest[:19], copied,
                 referenced, job.refined_runs, sent)

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

    async def _plan(self, job: _Push, offset: int) -> tuple[list, int]:
        """The entries of the next request from `offset` on, and where they end."""
        entries: list = []
        literals: list[tuple[str, int, int]] = []  # literal ranges, in entry order
        refs: list[tuple[str, int, int, int]] = []  # (anchor, delta, length, our offset)
        literal = ref_bytes = 0
        end = offset
        i = bisect.bisect_right(job.starts, offset) - 1
        while (i < len(job.chunks) and len(entries) < PLAN_ENTRIES
               and literal < PLAN_LITERAL_BYTES and ref_bytes < PLAN_REF_BYTES):
            start, length, chunk_id = job.chunks[i]
            if chunk_id in job.known:
                pieces, i = [(start, length, COPY, chunk_id, 0)], i + 1
            else:
                first, i = job.run_bounds[i]
                pieces = await self._run_pieces(job, first, i)
            for start, length, kind, name, delta in pieces:
                if start + length <= end:
                    continue  # before the parent's size (a resumed run)
                if (len(entries) >= PLAN_ENTRIES or literal >= PLAN_LITERAL_BYTES
                        or ref_bytes >= PLAN_REF_BYTES):
                    break
                skip = end - start  # > 0 only for the first piece: the session ends inside it
                if kind == REF:
                    refs.append((name, delta + skip, length - skip, end))
                    entries.append(REF)
                    ref_bytes += length - skip
                elif kind == COPY and not skip:
                    entries.append(plan.Copy(name, length))
                else:
                    if skip:
                        log.info("upload of %s ends inside a chunk; sending its last %d bytes",
                                 job.digest[:19], length - skip)
                    literals.append((job.digest, end, length - skip))
                    entries.append(LITERAL)
                    literal += length - skip
                end = start + length
            else:
                continue
            break
        if literals or refs:
            entries = await trio.to_thread.run_sync(self._fill, job, entries, literals, refs)
        return entries, end

    def _fill(self, job: _Push, entries: list, literals: list, refs: list) -> list:
        """Replace the LITERAL and REF placeholders by their entries (worker thread): literal
        bytes framed (zstd where it shrinks), refs with the BLAKE3 of our own bytes."""
        frame = _core.encode_chunks(self.reg.blobs.unbudgeted, literals,
                                    self.reg.settings.zstd_level) \
            if literals else b""
        data = iter(plan.split_batch(frame))
        ref_iter = iter(refs)
        out = []
        for e in entries:
            if e is LITERAL:
                e = next(data)
            elif e is REF:
                anchor, delta, length, position = next(ref_iter)
                own = self.reg.blobs.read(job.digest, position, length)
                e = plan.Ref(anchor, delta, length,
                             _core.digest_bytes(own, "blake3").split(":", 1)[1])
            out.append(e)
        return out

    async def _run_pieces(self, job: _Push, first: int, end: int) -> list[Piece]:
        """The pieces of the run chunks[first:end] the parent lacks: refined into refs and
        literal stretches when the parent holds an old version of it, else whole chunks."""
        if first in job.refined:
            return job.refined[first]
        run = job.chunks[first:end]
        pieces: list[Piece] = [(o, n, LITERAL, None, 0) for o, n, _ in run]
        start = run[0][0]
        run_bytes = sum(n for _, n, _ in run)
        if (job.refine and run_bytes <= REFINE_MAX_RUN
                and (first > 0 or end < len(job.chunks))):
            pieces = await self._refine(job, first, end, start, run_bytes) or pieces
        job.refined = {first: pieces}  # only the current run: a walk never goes back
        return pieces

    async def _refine(self, job: _Push, first: int, end: int, start: int, run_bytes: int
                      ) -> list[Piece] | None:
        def cut() -> list[tuple[int, int, str]]:
            data = self.reg.blobs.read(job.digest, start, run_bytes)
            return [(start + o, n, c) for o, n, c in _core.chunk_bytes(data, REFINE_PARAMS)]

        subs = await trio.to_thread.run_sync(cut)
        ids = list(dict.fromkeys(c for _, _, c in subs))
        before = job.chunks[first - 1][2] if first > 0 else None
        after = job.chunks[end][2] if end < len(job.chunks) else None
        answer = await self.parent.near_chunks(job.repo, params_key(REFINE_PARAMS), before,
                                               after, run_bytes, ids)
        if answer is None:
            log.info("parent does not refine runs of chunks; sending whole chunks of %s",
                     job.digest[:19])
            job.refine = False
            return None
        anchor, at = answer
        where = dict(zip(ids, at))
        if not anchor or all(d is None for d in at):
            return None
        job.refined_runs += 1
        pieces: list[Piece] = []
        for o, n, c in subs:
            delta = where[c]
            last = pieces[-1] if pieces else None
            if delta is not None:
                if (last and last[2] == REF and last[4] + last[1] == delta
                        and last[1] + n <= MAX_REF_PIECE):
                    pieces[-1] = (last[0], last[1] + n, REF, anchor, last[4])
                else:
                    pieces.append((o, n, REF, anchor, delta))
            elif last and last[2] == LITERAL and last[1] + n <= MAX_LITERAL_PIECE:
                pieces[-1] = (last[0], last[1] + n, LITERAL, None, 0)
            else:
                pieces.append((o, n, LITERAL, None, 0))
        return pieces

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
