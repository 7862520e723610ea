"""Parked outbox entries: changes the parent refused for good, set aside so the outbox moves on.

The pusher sends the outbox in order. The parent's answers fall in two kinds:
- transient: connection errors, timeouts, 5xx, 429 (`ParentUnavailable`), refused
  credentials (401, usually a password rotation the parent has not seen yet) and an upload
  session the parent forgot (404 `BLOB_UPLOAD_UNKNOWN`). They are about the link or a transfer,
  not the entry: the up loop backs off and sends the same entry again;
- permanent: 403, 400, 404 (`NAME_UNKNOWN`, `MANIFEST_BLOB_UNKNOWN` …), 413 and the other 4xx.
  Sending the entry again would get the same answer, so it is *parked*: stored durably with the
  refused request and the parent's answer (the metadata store's `parked` table), reported up the
  tree as a `SYNC_REFUSED` status detail (`SyncState`), and `up_cursor` advances past it.

Order per tag: a later change of the same tag is sent as usual. Once the parent acknowledges
it, the parked entries of that tag it follows are dropped: the parent now holds the newer state,
and replaying the older one would move the tag back. Entries without a tag (a manifest by
digest, a manifest deletion) are keyed by their digest the same way. While the later change is
parked too, both stay parked, and a retry sends them in their original order.

Settling: `retry` re-queues entries (the pusher sends them again, in order, before the
outbox; refused again, they are parked again with one more attempt); `drop` forgets them (the
local content stays, by digest). Entries refused with 403 (the parent's set lacks the
repository) are re-queued automatically when this node's repository set grows, and at start and
then hourly when the set covers their repository.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

import trio

from connreg.storage import Change, MetadataStore, ParkedChange

if TYPE_CHECKING:  # sync.remote loads httpx, which a root never needs
    from connreg.sync.remote import ParentRefused

log = logging.getLogger("connreg.sync")
# Statuses about the link or the credentials rather than one entry (401: a rotation the parent
# has not seen yet; 408: a request timeout): retried like 5xx.
NOT_ABOUT_THE_ENTRY = (401, 408, 429)
# How often entries refused with 403 are sent again when our set covers their repository: the
# parent's set may grow without ours changing (a pattern re-added above us).
RECHECK_REFUSED_SECONDS = 3600.0
# Error codes about a transfer in flight rather than the entry: an upload session the parent
# forgot (restart, TTL purge) is started afresh on the next attempt.
TRANSFER_CODES = ("BLOB_UPLOAD_UNKNOWN",)


def exception_leaves(exc: BaseException):
    """The individual exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from exception_leaves(inner)
    else:
        yield exc


def is_permanent(refusal: ParentRefused) -> bool:
    return (400 <= refusal.status < 500 and refusal.status not in NOT_ABOUT_THE_ENTRY
            and refusal.code not in TRANSFER_CODES)


def permanent_refusal(exc: BaseException) -> ParentRefused | None:
    """The refusal to park an entry for, when every failure inside `exc` (blobs go up in
    parallel, so it may be a group) is a permanent refusal; None when anything is transient
    or unexpected, which the up loop retries."""
    from connreg.sync.remote import ParentRefused  # loaded by the edge's sync already

    leaves = list(exception_leaves(exc))
    if leaves and all(isinstance(e, ParentRefused) and is_permanent(e) for e in leaves):
        return leaves[0]
    return None


def supersede_key(repo: str, tag: str | None, digest: str | None) -> tuple:
    """What a later change must touch to supersede a parked one: its tag, else its digest."""
    return (repo, "tag", tag) if tag else (repo, "digest", digest)


def describe(entry: ParkedChange) -> str:
    """What the parked change would have done, naming repository, tag and digest."""
    if entry.op == "manifest":
        return (f"push of {entry.repo}:{entry.tag} ({entry.digest})" if entry.tag
                else f"push of {entry.repo}@{entry.digest}")
    if entry.op == "delete_tag":
        return f"deletion of tag {entry.repo}:{entry.tag} (was {entry.digest or 'unknown'})"
    return f"deletion of {entry.repo}@{entry.digest}"


class ParkedOutbox:
    """The parked entries of one node, and what settles them."""

    def __init__(self, meta: MetadataStore, explain=None):
        self.meta = meta
        # `explain(url)`: the parent's (code, message) for a URL whose HEAD it refused
        self.explain = explain
        self._requeued = trio.Event()  # set when entries were re-queued here: wake the pusher
        self._rechecked_at: float | None = None

    def due(self) -> list[ParkedChange]:
        """Re-queued entries, in their original order."""
        return self.meta.parked_changes(retry_only=True)

    async def park(self, change: Change, refusal: ParentRefused,
                   previous: ParkedChange | None = None) -> ParkedChange:
        if previous is not None and all(
                p.seq != change.seq for p in self.meta.parked_changes(repo=change.repo)):
            log.info("outbox entry %d, %s: refused again, but dropped meanwhile; not parked",
                     change.seq, describe(previous))
            return previous
        code, message = refusal.code, refusal.message
        if refusal.method == "HEAD" and code is None and self.explain is not None:
            # A HEAD answer has no body: ask once more with GET for the parent's reason.
            said_code, said = await self.explain(refusal.url)
            if said:
                code, message = said_code, f"{message}; GET says: {said}"
        entry = ParkedChange(
            seq=change.seq, repo=change.repo, op=change.op, tag=change.tag,
            digest=change.prev if change.op == "delete_tag" else change.digest,
            origin=change.origin, method=refusal.method or "?", url=refusal.url or "?",
            status=refusal.status, code=code, message=message,
            parked_at=time.time(), attempts=previous.attempts + 1 if previous else 1)
        await self.meta.park_change(entry)
        log.warning("parked outbox entry %d, %s: the parent refused it (%s); later changes go "
                    "on (`connreg sync parked` lists, retries or drops it)",
                    entry.seq, describe(entry), entry.reason)
        return entry

    async def settled(self, change: Change) -> None:
        """The parent acknowledged `change`: forget it if it was parked, and the parked entries
        of the same tag (or digest) it supersedes."""
        if not self.meta.parked_count():
            return
        key = supersede_key(change.repo, change.tag, change.digest)
        done = [p for p in self.meta.parked_changes(repo=change.repo)
                if p.seq == change.seq or
                (p.seq < change.seq and supersede_key(p.repo, p.tag, p.digest) == key)]
        if done:
            await self.meta.drop_parked([p.seq for p in done])
        for p in done:
            if p.seq == change.seq:
                log.info("parked outbox entry %d, %s: accepted by the parent on retry",
                         p.seq, describe(p))
            else:
                log.info("parked outbox entry %d, %s: superseded by entry %d, which the parent "
                         "accepted; dropped", p.seq, describe(p), change.seq)

    async def requeue(self, seqs: list[int] | None = None) -> int:
        """Send these entries (None: all) again; how many were parked."""
        count = await self.meta.requeue_parked(seqs)
        if count:
            self._requeued.set()
            self._requeued = trio.Event()
        return count

    async def requeue_refused(self, wanted: Callable[[str], bool]) -> int:
        """Re-queue entries the parent refused with 403 whose repository `wanted` covers now
        (the repository set grew, or this node restarted with a wider set)."""
        seqs = [p.seq for p in self.meta.parked_changes()
                if p.status == 403 and not p.retry and wanted(p.repo)]
        if not seqs:
            return 0
        log.info("re-queueing %d parked outbox entr%s refused with 403: the repository set "
                 "now covers them", len(seqs), "y" if len(seqs) == 1 else "ies")
        return await self.requeue(seqs)

    async def recheck_refused(self, wanted: Callable[[str], bool]) -> int:
        """`requeue_refused` at the first call, then at most every RECHECK_REFUSED_SECONDS."""
        now = trio.current_time()
        if self._rechecked_at is not None and now - self._rechecked_at < RECHECK_REFUSED_SECONDS:
            return 0
        self._rechecked_at = now
        return await self.requeue_refused(wanted)

    async def drop(self, seqs: list[int] | None = None) -> int:
        count = await self.meta.drop_parked(seqs)
        if count:
            log.info("dropped %d parked outbox entr%s", count, "y" if count == 1 else "ies")
        return count

    async def wait_requeued(self) -> None:
        await self._requeued.wait()
