"""Down: make the local store hold what the parent holds, for this node's repositories.

Everything written here goes through `content.store_manifest` with origin "parent", so it lands
in the local change log (this node's children see it) but never in the outbox (it is not sent
back up). Blobs are fetched before the manifests that reference them, child manifests before
their index, so a manifest is visible only once everything it points at is.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import trio

from connreg import _core
from connreg.content import INDEX_TYPES, delete_reference, is_foreign_layer, store_manifest
from connreg.delta.fetch import DeltaFetcher, DeltaUnavailable
from connreg.delta.gzip_fetch import GzipDeltaFetcher
from connreg.errors import RegistryError
from connreg.locks import sync as locks_sync
from connreg.registry import Registry
from connreg.storage import TagPrecondition
from connreg.sync.parked import exception_leaves
from connreg.sync.batch import DownPrefetch, PrefetchedManifests
from connreg.sync.remote import Manifest, ParentClient, ParentRefused, ParentUnavailable
from connreg.sync.state import SyncState, last_known_key

log = logging.getLogger("connreg.sync")
PARENT = "parent"
# HEADs at the parent in flight at once while reconciliation looks for withdrawn manifests.
RECONCILE_PARALLEL_CHECKS = 8


class ContentMissingAtParent(Exception):
    """The parent no longer has something a change refers to (deleted since): skip it."""


class Puller:
    def __init__(self, reg: Registry, parent: ParentClient, state: SyncState,
                 parallel_blobs: int = 4):
        self.reg = reg
        self.parent = parent
        self.state = state
        self.delta = DeltaFetcher(reg.blobs, reg.chunk_index, parent, state)
        # gzip layers by their uncompressed change (docs/delta.md "Gzip layers")
        self.gzip_delta = (GzipDeltaFetcher(reg.blobs, reg.chunk_index.gzip, parent, state)
                           if reg.settings.gzip_delta else None)
        self.delta_threshold = reg.settings.delta_threshold_bytes
        self._blob_slots = trio.CapacityLimiter(parallel_blobs)
        self._blob_locks: dict[str, trio.Lock] = {}
        # Feed entries are applied several at once (sync/batch.py): one store per manifest.
        self._manifest_locks: dict[tuple[str, str], trio.Lock] = {}
        # Manifests fetched ahead in batches (sync/batch.py), taken when stored.
        self.prefetched = PrefetchedManifests(reg.settings.sync_prefetch_max_bytes)
        self.ahead = DownPrefetch(reg, parent, state, self.prefetched)

    # --- blobs ------------------------------------------------------------------------------
    async def ensure_blob(self, repo: str, digest: str, size: int = 0) -> None:
        if self.reg.meta.linked_blob_size(repo, digest) is not None and self.reg.blobs.exists(digest):
            return
        # One fetch per digest at a time (they would share the upload `sync-<digest>`); the
        # lock is dropped once nobody holds or awaits it.
        lock = self._blob_locks.setdefault(digest, trio.Lock())
        try:
            async with lock, self._blob_slots:
                if not self.reg.blobs.exists(digest):
                    await self._fetch(repo, digest, size)
                    self.reg.chunk_index.schedule(digest)
                await self.reg.meta.link_blob(repo, digest, self.reg.blobs.size(digest))
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._blob_locks.pop(digest, None)

    async def _fetch(self, repo: str, digest: str, size: int) -> None:
        """Large blobs by chunks (only what this node lacks), small ones whole; a parent that
        cannot serve chunks gets the whole-blob request."""
        # A blob that cannot fit the disk budget is not fetched at all (on a metered link the
        # bytes would only be thrown away); what a resumable fetch holds already counts.
        held = self.reg.blobs.upload_size("sync-" + digest.replace(":", "-")) or 0
        self.reg.budget.check(max(size - held, 0), f"blob {digest[:19]} ({repo})", holding=held)
        self.state.transfer.begin(digest, size, held)  # bytes left and ETA while it runs
        try:
            if size >= self.delta_threshold and not held and self.gzip_delta is not None:
                try:  # a chunk transfer already under way (held bytes) is continued instead
                    await self.gzip_delta.fetch(repo, digest)
                    return
                except DeltaUnavailable as exc:
                    log.info("gzip layer delta not used for %s: %s", digest[:19], exc)
            if size >= self.delta_threshold:
                try:
                    await self.delta.fetch(repo, digest)
                    return
                except DeltaUnavailable as exc:
                    log.info("whole-blob transfer for %s: %s", digest[:19], exc)
            await self._fetch_blob(repo, digest)
        finally:
            self.state.transfer.end(digest)

    async def _fetch_blob(self, repo: str, digest: str) -> None:
        """Stream the blob into a resumable upload named after its digest, then verify+commit.

        An interrupted fetch keeps its verified-by-length prefix on disk and resumes with HTTP
        Range; content that fails the digest check is discarded and fetched again once.
        """
        upload_id = "sync-" + digest.replace(":", "-")
        for attempt in (1, 2):
            upload = self.reg.blobs.upload(upload_id)
            offset = upload.size
            try:
                async for chunk in self.parent.stream_blob(repo, digest, offset):
                    await trio.to_thread.run_sync(upload.write, chunk)
                    self.state.progress_bytes(len(chunk))
                    self.state.transfer.advance(digest, len(chunk))
            except ParentRefused as exc:
                if exc.status == 416 or (exc.status == 200 and offset):
                    upload.abort()  # our prefix does not fit the parent's blob: start over
                    continue
                if exc.status == 404:
                    raise ContentMissingAtParent(f"{repo}@{digest}") from None
                raise
            try:
                await trio.to_thread.run_sync(upload.commit, digest)
                self.state.progress_blob()
                return
            except _core.DigestMismatch:
                log.warning("blob %s from parent failed verification; fetching again", digest)
                upload.abort()
        raise ParentUnavailable(f"blob {digest} failed verification twice")

    # --- manifests ----------------------------------------------------------------------------
    async def ensure_manifest(self, repo: str, digest: str, with_referrers: bool = True) -> bytes:
        """Fetch a manifest and everything it references (and its referrers), if missing."""
        ahead = self.prefetched.get(repo, digest)
        if self.reg.meta.get_manifest(repo, digest) is None:
            lock = self._manifest_locks.setdefault((repo, digest), trio.Lock())
            try:
                async with lock:
                    if self.reg.meta.get_manifest(repo, digest) is None:
                        await self._fetch_manifest(repo, digest)
            finally:
                if not lock.locked() and lock.statistics().tasks_waiting == 0:
                    self._manifest_locks.pop((repo, digest), None)
        self.prefetched.take(repo, digest)
        if with_referrers:
            if ahead is not None and ahead.referrers is not None:
                refs = ahead.referrers  # listed by the parent in the same batch
            else:
                refs = [r["digest"] for r in await self.parent.referrers(repo, digest)]
            for ref in refs:
                try:
                    await self.ensure_manifest(repo, ref, with_referrers=True)
                except ContentMissingAtParent:
                    pass
        return await self.reg.read_manifest(digest)

    async def _fetch_manifest(self, repo: str, digest: str, tag: str | None = None,
                              precondition: TagPrecondition | None = None) -> None:
        """Fetch (or take from the batch fetched ahead) and store one manifest, after what it
        references; with `tag` (a manifest fetched ahead, so verified), under that tag in the
        same write, if `precondition` holds."""
        ahead = self.prefetched.get(repo, digest)
        manifest = Manifest(ahead.data, ahead.media_type or "", digest) if ahead else \
            await self.parent.get_manifest(repo, digest)
        if manifest is None:
            raise ContentMissingAtParent(f"{repo}@{digest}")
        doc = json.loads(manifest.body)
        media_type = doc.get("mediaType") or manifest.media_type
        if media_type in INDEX_TYPES or "manifests" in doc:
            for child in doc.get("manifests", []):
                await self.ensure_manifest(repo, child["digest"], with_referrers=False)
        else:
            layers = [l for l in doc.get("layers", [])
                      if not is_foreign_layer(l.get("mediaType"))]
            async with trio.open_nursery() as nursery:
                for desc in [doc["config"], *layers]:
                    nursery.start_soon(self.ensure_blob, repo, desc["digest"],
                                       desc.get("size") or 0)
        await store_manifest(self.reg, repo, tag or digest, manifest.body, manifest.media_type,
                             origin=PARENT, precondition=precondition,
                             bytes_stored=digest in self.prefetched.bytes_stored)
        log.info("synced %s@%s (progress: %d blobs, %d bytes received)", repo, digest[:19],
                 self.state.blobs_transferred, self.state.bytes_transferred)

    async def set_tag(self, repo: str, tag: str, digest: str, report_conflict: bool = True) -> None:
        """Point `tag` where the parent has it. If we moved it too since we last agreed, that is
        a conflict: the parent's tag wins; ours stays reachable by digest (and is still pushed
        up by digest from the outbox). `report_conflict=False`: the caller reported it."""
        if await self._store_tagged(repo, tag, digest, report_conflict):
            await self.state.set(last_known_key(repo, tag), digest)
            return
        body = await self.ensure_manifest(repo, digest)
        record = self.reg.meta.get_manifest(repo, digest)
        local = self.reg.meta.resolve_tag(repo, tag)
        agreed = self.state.get(last_known_key(repo, tag))
        if report_conflict and local is not None and local not in (digest, agreed):
            self.state.conflict(repo, tag, local, digest)  # reported and logged once
        if local != digest:  # (its bytes were stored with it just now, or before)
            await store_manifest(self.reg, repo, tag, body, record.media_type, origin=PARENT,
                                 bytes_stored=True)
        await self.state.set(last_known_key(repo, tag), digest)

    async def _store_tagged(self, repo: str, tag: str, digest: str, report_conflict: bool
                            ) -> bool:
        """The common case of a feed page, in one write instead of two: a manifest new here,
        fetched ahead (so verified against its digest) and without referrers, stored under its
        tag at once (one change-log entry, so also one entry less for our children). The write
        is conditional on the tag still pointing where it did when the conflict check looked.
        False (nothing written): not that case, or the tag moved meanwhile, or the store
        refused (a lock, say); `set_tag`'s two steps then decide and report as before."""
        ahead = self.prefetched.get(repo, digest)
        if ahead is None or ahead.referrers != [] or not digest.startswith("sha256:") or \
                self.reg.meta.get_manifest(repo, digest) is not None:
            return False
        local = self.reg.meta.resolve_tag(repo, tag)
        agreed = self.state.get(last_known_key(repo, tag))
        precondition = TagPrecondition(if_none_match=frozenset({"*"})) if local is None else \
            TagPrecondition(if_match=frozenset({local}))
        lock = self._manifest_locks.setdefault((repo, digest), trio.Lock())
        try:
            async with lock:
                if self.reg.meta.get_manifest(repo, digest) is not None:
                    return False  # stored by digest meanwhile (another entry naming it)
                try:
                    await self._fetch_manifest(repo, digest, tag, precondition)
                except RegistryError:
                    return False
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._manifest_locks.pop((repo, digest), None)
        self.prefetched.take(repo, digest)
        if report_conflict and local is not None and local not in (digest, agreed):
            self.state.conflict(repo, tag, local, digest)  # reported and logged once
        return True

    # --- changes ------------------------------------------------------------------------------
    async def apply(self, change: dict) -> None:
        repo, op, digest, tag = change["repo"], change["op"], change.get("digest"), change.get("tag")
        self.state.current_repo = repo
        try:
            if op == "manifest":
                if tag:
                    await self.set_tag(repo, tag, digest)
                else:
                    await self.ensure_manifest(repo, digest)
            elif op == "delete_tag":
                await delete_reference(self.reg, repo, tag, origin=PARENT)
                await self.state.delete(last_known_key(repo, tag))
            elif op == "delete_manifest":
                for t in self._tags_pointing_at(repo, digest):
                    await self.state.delete(last_known_key(repo, t))
                await delete_reference(self.reg, repo, digest, origin=PARENT)
            elif op == "lock":  # the repository's locks changed at the parent
                await locks_sync.follow_parent(self.reg, self.parent, repo)
        except ContentMissingAtParent as exc:
            # Deleted at the parent after this change was written; a later change says so —
            # except for this tag: deleting the manifest at the parent took the tag with it, and
            # the later delete names only the manifest, which the tag never reached here.
            log.info("skipping change %s: %s is gone at the parent", change.get("seq"), exc)
            if op == "manifest" and tag:
                await self._follow_parent_tag(repo, tag)
        except RegistryError as exc:
            log.warning("change %s for %s not applicable: %s", change.get("seq"), repo, exc.message)

    async def _follow_parent_tag(self, repo: str, tag: str) -> None:
        """Set `tag` to where the parent's is now, or delete it when the parent has none (a
        move whose manifest is gone must not leave the tag where it pointed before)."""
        current = await self.parent.head_manifest(repo, tag)
        if current is None:
            if self.reg.meta.resolve_tag(repo, tag) is not None:
                log.info("%s:%s is gone at the parent; deleting it here", repo, tag)
                await delete_reference(self.reg, repo, tag, origin=PARENT)
            await self.state.delete(last_known_key(repo, tag))
            return
        try:
            await self.set_tag(repo, tag, current)
        except ContentMissingAtParent:
            pass  # moved again meanwhile: the feed's later entries bring it

    def _tags_pointing_at(self, repo: str, digest: str) -> list[str]:
        return [t for t in self.reg.meta.list_tags(repo, None, None)
                if self.reg.meta.resolve_tag(repo, t) == digest]

    # --- full reconciliation ---------------------------------------------------------------
    async def reconcile(self, repos: list[str],
                        outbox: Callable[[], tuple[set[tuple[str, str]], set[tuple[str, str]]]],
                        unlisted: list[str] = ()) -> None:
        """Make `repos` (those the parent lists) and `unlisted` (local ones of our set it does
        not list) equal to the parent's: their tags, then their manifests.

        `outbox()` says what is still to be pushed up (ReadWrite): (repo, tag) pairs with a
        local move or delete, (repo, digest) pairs of manifests. Local tags the parent lacks
        are removed unless the outbox names them; so are local manifests the parent positively
        no longer has. Each time the local state is read *before* the outbox, so something
        pushed here meanwhile is either in the outbox or already acknowledged by the parent.
        """
        for repo in repos:
            await self._reconcile_repository(repo, outbox)
        for repo in unlisted:
            try:
                await self._reconcile_repository(repo, outbox)
            except Exception as exc:  # the HEADs run in a nursery: maybe a group
                denied = next((e for e in exception_leaves(exc)
                               if isinstance(e, ParentRefused) and e.status == 403), None)
                if denied is None:
                    raise
                # The parent denies us this repository (its own set may lack it): nothing of
                # it is removed on that answer, and the others still reconcile.
                log.warning("reconciliation of %s skipped: %s", repo, denied)

    async def _reconcile_repository(
            self, repo: str,
            outbox: Callable[[], tuple[set[tuple[str, str]], set[tuple[str, str]]]]) -> None:
        self.state.current_repo = repo
        await locks_sync.follow_parent(self.reg, self.parent, repo)  # locks travel with it
        pending_tags = outbox()[0]
        parent_tags = await self.parent.list_tags(repo) or []
        tagged: set[str] = set()  # what the parent's tags point at
        for tag in parent_tags:
            digest = await self.parent.head_manifest(repo, tag)
            if digest is None:
                continue
            tagged.add(digest)
            if (repo, tag) in pending_tags and self.reg.meta.resolve_tag(repo, tag) != digest:
                continue  # our own move of this tag is still to be pushed; pusher decides
            try:
                await self.set_tag(repo, tag, digest)
            except ContentMissingAtParent:
                continue
        wanted = set(parent_tags)
        extra = [t for t in self.reg.meta.list_tags(repo, None, None) if t not in wanted]
        if extra:
            pending_tags = outbox()[0]
        for tag in extra:
            if (repo, tag) not in pending_tags:
                await delete_reference(self.reg, repo, tag, origin=PARENT)
                await self.state.delete(last_known_key(repo, tag))
        await self._remove_withdrawn(repo, tagged, lambda: outbox()[1])

    async def _remove_withdrawn(self, repo: str, tagged: set[str],
                                unpushed: Callable[[], set[tuple[str, str]]]) -> None:
        """Remove the local manifests of `repo` that the parent no longer has (deleted there
        while our cursor expired, say an image withdrawn for a vulnerability).

        Only manifests not reachable from the parent's tags (directly or as an index's child)
        are asked about, one HEAD each; only a positive "unknown" (404 MANIFEST_UNKNOWN or
        NAME_UNKNOWN) removes one, never a transient failure (that aborts the reconciliation,
        which is retried). Manifests still in the outbox are kept: the local list is read
        before the outbox, so anything listed was either still unpushed then or already
        acknowledged by the parent, and so present there unless deleted since.
        """
        local = self.reg.meta.manifest_digests(repo)
        keep = {d for r, d in unpushed() if r == repo}
        keep |= await self._with_children(repo, tagged)
        candidates = [d for d in local if d not in keep]
        if not candidates:
            return
        absent: set[str] = set()
        slots = trio.CapacityLimiter(RECONCILE_PARALLEL_CHECKS)

        async def check(digest: str) -> None:
            async with slots:
                if await self.parent.manifest_absent(repo, digest):
                    absent.add(digest)

        async with trio.open_nursery() as nursery:
            for digest in candidates:
                nursery.start_soon(check, digest)
        # A child of an index we keep stays, even if the parent has it only through that index.
        kept = await self._with_children(repo, set(local) - absent)
        doomed = [d for d in reversed(local) if d in absent and d not in kept]
        for digest in doomed:
            for tag in self._tags_pointing_at(repo, digest):
                await self.state.delete(last_known_key(repo, tag))
            await delete_reference(self.reg, repo, digest, origin=PARENT)
        if doomed:
            log.info("reconciliation removed %d manifest(s) of %s that the parent no longer "
                     "has: %s", len(doomed), repo, ", ".join(d[:19] for d in doomed))

    async def _with_children(self, repo: str, digests: set[str]) -> set[str]:
        """`digests` plus every manifest they reach as index children (local copies)."""
        seen: set[str] = set()
        todo = list(digests)
        while todo:
            digest = todo.pop()
            if digest in seen:
                continue
            seen.add(digest)
            record = self.reg.meta.get_manifest(repo, digest)
            if record is None or record.media_type not in INDEX_TYPES:
                continue
            try:
                doc = json.loads(await self.reg.read_manifest(digest))
            except (ValueError, OSError, _core.CoreError):
                continue
            todo.extend(m["digest"] for m in doc.get("manifests") or []
                        if isinstance(m, dict) and isinstance(m.get("digest"), str))
        return seen

    async def purge_repository(self, repo: str) -> None:
        """Drop a repository this (ReadOnly) node no longer syncs: tags, manifests, blob links."""
        for tag in self.reg.meta.list_tags(repo, None, None):
            await delete_reference(self.reg, repo, tag, origin=PARENT)
        for digest in self.reg.meta.manifest_digests(repo):
            await delete_reference(self.reg, repo, digest, origin=PARENT)
        await self.reg.meta.unlink_all_blobs(repo)
