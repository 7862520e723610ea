"""Up: send this node's outbox to the parent (ReadWrite nodes only).

The outbox is the change log minus what came from the parent: local client pushes and what
ReadWrite children pushed here, so a change climbs hop by hop until the root has it. Each change
is acknowledged (`up_cursor`) only after the parent accepted it; a crash re-sends at most the
change in flight, and re-sending is harmless (content addressed, tag set idempotent).

Conflicts (§5): before moving or deleting a tag at the parent we compare the parent's current
digest with the one we last agreed on. If the parent moved it too, the parent wins: our manifest
is still pushed by digest (nothing is lost), our tag follows the parent's, and SYNC_CONFLICT is
reported. The write is conditional (If-Match on the digest we saw, If-None-Match: * for "no
tag"), so a move at the parent between our look and our write makes the parent answer 412 and
we look again instead of overwriting it.

Refusals: an entry the parent refuses for good (403, 400, 404 …) is parked and the outbox moves
on; transient trouble stops here and the up loop retries the same entry (`sync/parked.py`).
"""

from __future__ import annotations

import json
import logging

import trio

from connreg.delta.fetch import DeltaUnavailable
from connreg.delta.gzip_push import GzipDeltaPusher
from connreg.delta.push import DeltaPusher
from connreg.registry import Registry
from connreg.storage import Change, ParkedChange
from connreg.sync.parked import ParkedOutbox, permanent_refusal
from connreg.sync.batch import UpPresence, run_in_order
from connreg.sync.puller import PARENT, Puller
from connreg.sync.remote import ParentClient, ParentUnavailable, TagMoved
from connreg.sync.state import UP_CURSOR, SyncState, last_known_key, push_session_key
from connreg.sync.upload_batch import UpBatch

log = logging.getLogger("connreg.sync")
READ_CHUNK = 1 << 20
# Blobs from this size up are pushed as a resumable chunked upload, PUSH_CHUNK per request.
RESUMABLE_FROM = 4 << 20
PUSH_CHUNK = 4 << 20
# Conditional tag updates that lose a race are retried this often before backing off.
TAG_UPDATE_ATTEMPTS = 3


class Pusher:
    def __init__(self, reg: Registry, parent: ParentClient, state: SyncState, puller: Puller,
                 parallel_blobs: int = 4):
        self.reg = reg
        self.parent = parent
        self.state = state
        self.puller = puller  # fetches the parent's side of a conflict
        # Large blobs go by chunks the parent lacks, when delta transfer is on here.
        self.delta = DeltaPusher(reg, parent, state) if reg.settings.delta else None
        # gzip layers by their uncompressed change (docs/delta.md "Gzip layers, upward")
        self.gzip_delta = (GzipDeltaPusher(reg, parent, state)
                           if reg.settings.delta and reg.settings.gzip_delta else None)
        self._blob_slots = trio.CapacityLimiter(parallel_blobs)
        self.parked = ParkedOutbox(reg.meta, explain=parent.explain_refusal)
        # What the parent holds of the batch in flight, asked in bulk (sync/batch.py).
        self.presence = UpPresence(reg, parent)
        # Their small blobs and manifests, uploaded in a few requests (sync/upload_batch.py).
        self.upload = UpBatch(reg, parent, state)

    def pending(self, limit: int = 500) -> list[Change]:
        cursor = self.state.cursor(UP_CURSOR) or 0
        return self.reg.meta.changes_since(cursor, limit, exclude_origin=PARENT)

    def has_work(self) -> bool:
        return bool(self.pending(1) or self.parked.due())

    async def wait_for_work(self, head: int, timeout: float) -> None:
        """Return on a change past `head` in the log, re-queued parked entries, or `timeout`."""
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                async def first(wait, *args) -> None:
                    await wait(*args)
                    nursery.cancel_scope.cancel()
                nursery.start_soon(first, self.reg.meta.wait_for_change, head, timeout)
                nursery.start_soon(first, self.parked.wait_requeued)

    async def push_all(self, stop_at: float | None = None) -> int:
        """Send re-queued parked entries, then the outbox, in order; return how many the
        parent acknowledged. Entries it refuses for good are parked, the others go on."""
        sent = 0
        for entry in self.parked.due():
            if stop_at is not None and trio.current_time() >= stop_at:
                return sent
            sent += await self._send(entry.change(), entry)
        def stop() -> bool:
            return stop_at is not None and trio.current_time() >= stop_at

        while True:
            batch = self.pending()
            if not batch or stop():
                return sent
            sent += await self._send_batch(batch, stop)

    async def _send_batch(self, batch: list[Change], stop) -> int:
        """Send outbox entries several at once (`sync_push_parallel`; one tag's in order),
        after one bulk question about what the parent already holds. `up_cursor` follows the
        entries below which all are acknowledged or parked."""
        await self.presence.ask(batch)
        acknowledged = 0

        async def send(change: Change) -> None:
            nonlocal acknowledged
            sent = await self._send(change)  # (not `+= await`: it would read the count first)
            acknowledged += sent

        async def done(seq: int) -> None:
            await self.state.set(UP_CURSOR, str(seq))

        try:
            await self.upload.send(batch, self.presence)
            await run_in_order(batch, send, self.reg.settings.sync_push_parallel, done, stop)
        finally:
            self.presence.clear()
            self.upload.clear()
        return acknowledged

    async def _send(self, change: Change, parked: ParkedChange | None = None) -> int:
        """1 when the parent acknowledged `change`, 0 when it refused it for good (parked);
        anything transient propagates (the up loop backs off and sends it again)."""
        try:
            await self.push_change(change)
        except Exception as exc:  # groups included: blobs go up in parallel
            refusal = permanent_refusal(exc)
            if refusal is None:
                raise
            await self.parked.park(change, refusal, parked)
            return 0
        await self.parked.settled(change)
        return 1

    async def push_change(self, change: Change) -> None:
        self.state.current_repo = change.repo
        if change.op == "manifest":
            if self.reg.meta.get_manifest(change.repo, change.digest) is None:
                # Deleted locally since; the delete follows in the outbox, but it names only
                # the manifest, which the parent never got: a tag this move would have taken
                # along must go at the parent now, or it stays where it pointed before.
                if change.tag and self.reg.meta.resolve_tag(change.repo, change.tag) is None:
                    await self._delete_tag(change.repo, change.tag)
                return
            await self._push_manifest_tree(change.repo, change.digest)
            if change.tag and self.reg.meta.resolve_tag(change.repo, change.tag) == change.digest:
                await self._move_tag(change.repo, change.tag, change.digest)
        elif change.op == "delete_tag":
            await self._delete_tag(change.repo, change.tag)
        elif change.op == "delete_manifest":
            await self.parent.delete(change.repo, change.digest)
            # What the batch's presence answer said of it is stale now: a later entry of the
            # batch pushing the same manifest again must send it, not skip it as "held".
            self.presence.forget_manifest(change.repo, change.digest)

    async def _push_manifest_tree(self, repo: str, digest: str) -> None:
        record = self.reg.meta.get_manifest(repo, digest)
        body = await self.reg.read_manifest(digest)
        held = self.presence.manifest_at_parent.get((repo, digest))
        if held or held is None and await self.parent.head_manifest(repo, digest) == digest:
            return
        doc = json.loads(body)
        if "manifests" in doc:
            for child in doc["manifests"]:
                if self.reg.meta.get_manifest(repo, child["digest"]) is not None:
                    await self._push_manifest_tree(repo, child["digest"])
        else:
            async with trio.open_nursery() as nursery:
                for desc in [doc.get("config"), *doc.get("layers", [])]:
                    if desc and self.reg.meta.linked_blob_size(repo, desc["digest"]) is not None:
                        nursery.start_soon(self._push_blob, repo, desc["digest"])
        await self.parent.put_manifest(repo, digest, body, record.media_type)

    async def _push_blob(self, repo: str, digest: str) -> None:
        async with self._blob_slots:
            key = push_session_key(repo, digest)
            # Asked in bulk for the batch (present, or mounted just now), else one by one.
            held = self.presence.blob_at_parent.get((repo, digest))
            if held or held is None and (await self.parent.has_blob(repo, digest)
                                         or await self.parent.mount_blob(repo, digest)):
                await self.state.delete(key)  # finished, but its answer was lost
                return
            size = self.reg.blobs.size(digest)
            self.state.transfer.begin("up|" + digest, size)  # counted in bytes left meanwhile
            try:
                if await self._push_by_chunks(repo, digest, size):
                    pass
                elif size < RESUMABLE_FROM and self.state.get(key) is None:
                    await self.parent.push_blob(repo, digest, size,
                                                self._read_blob(digest, size))
                else:  # also continues a session a push by chunks began
                    await self._push_resumable(repo, digest, size)
            finally:
                self.state.transfer.end("up|" + digest)
            self.state.progress_blob()
            self.state.progress_bytes(size, "up")

    async def _push_by_chunks(self, repo: str, digest: str, size: int) -> bool:
        """Send only the chunks the parent lacks (docs/delta.md); False when the blob must go
        whole (small, delta off here, or a parent that cannot take chunks)."""
        if self.delta is None or size < self.reg.settings.delta_threshold_bytes:
            return False
        if self.gzip_delta is not None and self.state.get(push_session_key(repo, digest)) is None:
            try:  # a chunk push already under way (a session) is continued instead
                await self.gzip_delta.push(repo, digest)
                return True
            except DeltaUnavailable as exc:
                log.info("gzip layer delta not used for push of %s: %s", digest[:19], exc)
        try:
            await self.delta.push(repo, digest, size)
            return True
        except DeltaUnavailable as exc:
            log.info("whole-blob push of %s: %s", digest[:19], exc)
            return False

    async def _push_resumable(self, repo: str, digest: str, size: int) -> None:
        """A chunked upload whose session is remembered (durably), so a cut link or a restart
        of either node continues where the parent's copy ends instead of starting over."""
        key = push_session_key(repo, digest)
        location = self.state.get(key)
        offset = await self.parent.upload_offset(location) if location else None
        if offset is None:
            location, offset = await self.parent.start_upload(repo), 0
            await self.state.set(key, location)
        elif offset:
            log.info("resuming upload of %s at byte %d of %d", digest[:19], offset, size)
        while offset < size:
            data = await trio.to_thread.run_sync(self.reg.blobs.read, digest, offset, PUSH_CHUNK)
            next_location = await self.parent.upload_chunk(location, data, offset)
            if next_location is None:  # the parent's session ends elsewhere: start it afresh
                await self.state.delete(key)
                raise ParentUnavailable(f"upload of {digest} out of step with the parent")
            location = next_location
            offset += len(data)
        await self.parent.finish_upload(location, digest)
        await self.state.delete(key)

    async def _read_blob(self, digest: str, size: int):
        offset = 0
        while offset < size:
            chunk = await trio.to_thread.run_sync(self.reg.blobs.read, digest, offset, READ_CHUNK)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    async def _move_tag(self, repo: str, tag: str, digest: str) -> None:
        body = await self.reg.read_manifest(digest)
        record = self.reg.meta.get_manifest(repo, digest)

        async def put(at_parent: str | None) -> None:
            await self.parent.put_manifest(repo, tag, body, record.media_type,
                                           if_tag_is=at_parent)
        if await self._update_parent_tag(repo, tag, digest, put):
            await self.state.set(last_known_key(repo, tag), digest)

    async def _delete_tag(self, repo: str, tag: str) -> None:
        async def delete(at_parent: str | None) -> None:
            await self.parent.delete(repo, tag, if_tag_is=at_parent)
        if await self._update_parent_tag(repo, tag, None, delete):
            await self.state.delete(last_known_key(repo, tag))

    async def _update_parent_tag(self, repo: str, tag: str, ours: str | None, update) -> bool:
        """Apply our move of `tag` at the parent unless the parent moved it too (a conflict,
        settled in the parent's favour). The update is conditional on the tag being where we
        saw it, so a move at the parent between our look and our write is caught as well."""
        for attempt in range(TAG_UPDATE_ATTEMPTS):
            agreed = self.state.get(last_known_key(repo, tag))
            if self.reg.meta.resolve_tag(repo, tag) != ours:
                # Moved here since (the puller applied the parent's move, or a later local
                # change follows in the outbox): this update is stale.
                return False
            if attempt == 0 and self.presence.available:
                # Usually the parent's tag is where we last agreed: update it on that
                # condition without looking first (one round trip less). A 412 means it is
                # elsewhere: look, as below, and decide. The outbox batch's upload may have
                # made this very update already (sync/upload_batch.py).
                done = self.upload.tag_moved.get((repo, tag, ours)) if ours else None
                if done:
                    return True
                if done is None:
                    try:
                        await update(agreed)
                        return True
                    except TagMoved:
                        pass
            at_parent = await self.parent.head_manifest(repo, tag)
            if at_parent is not None and at_parent not in (agreed, ours):
                await self._yield_to_parent(repo, tag, ours, at_parent)
                return False
            try:
                await update(at_parent)
                return True
            except TagMoved:
                log.info("%s:%s moved at the parent while we updated it; looking again", repo, tag)
        raise ParentUnavailable(f"{repo}:{tag} keeps moving at the parent; retrying later")

    async def _yield_to_parent(self, repo: str, tag: str, ours: str | None, theirs: str) -> None:
        self.state.conflict(repo, tag, ours, theirs)
        await self.puller.set_tag(repo, tag, theirs, report_conflict=False)
