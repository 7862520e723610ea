"""Child side of the batched upload (docs/sync.md, "Throughput").

Before a batch of outbox entries is sent, `UpBatch.send` uploads what their manifests need at
the parent in a few `POST /connreg/v1/sync/upload` requests: the small blobs the parent lacks
(by the bulk presence answer, `sync/batch.py` UpPresence), the manifests by digest (an
index's children before it), and the tag moves: each conditional on the tag being where this
node last agreed with the parent, exactly the first attempt the pusher makes otherwise. What
the parent accepted is marked as held there (and a moved tag as agreed); each entry then goes
its ordinary way (`sync/pusher.py`), which finds its work done, or, for a tag the parent had
moved too (412), looks and settles the conflict as before. Anything the batch did not carry,
or the parent refused for one object (a lock, a repository it may not push), goes the
one-by-one way, which gets the parent's refusal for that entry and parks only it. A parent
without the endpoint, or a batch it refuses as a whole, leaves everything to the one-by-one
path: the batch is only a shortcut.

Left out of a batch: blobs from `delta_threshold_bytes` up (they go by chunks, docs/delta.md),
a manifest needing such a blob or a blob not linked here (the ordinary path sends it after its
blobs), and the manifests of entries whose digest a deletion in the same outbox batch names
(the deletion runs in order between them); a tag move when the batch holds another entry of
that tag or a manifest deletion in that repository (they must run in order), when the tag has
moved here since, or when the parent cannot answer presence in bulk (an older parent).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections import Counter

import trio

from connreg.content import INDEX_TYPES, is_foreign_layer
from connreg.sync import upload_batch_format as fmt
from connreg.sync.remote import ParentClient, ParentRefused
from connreg.sync.state import last_known_key

log = logging.getLogger("connreg.sync")
# Index levels followed (an index of indexes is rare; deeper ones go one by one).
MAX_DEPTH = 3


class UpBatch:
    def __init__(self, reg, parent: ParentClient, state):
        self.reg = reg
        self.parent = parent
        self.state = state
        settings = reg.settings
        self.max_objects = settings.sync_batch_max_objects
        self.max_bytes = settings.sync_batch_max_bytes
        self.small = min(settings.delta_threshold_bytes, self.max_bytes)
        self.available = settings.sync_upload_batch  # False once the parent said it cannot
        # (repo, tag, digest) → True: moved at the parent in this batch; False: the parent's
        # tag was elsewhere (412): the pusher looks and decides, as after its own 412.
        self.tag_moved: dict[tuple[str, str, str], bool] = {}

    def clear(self) -> None:
        self.tag_moved.clear()

    async def send(self, changes: list, presence) -> None:
        """Upload what the manifest entries of `changes` need; mark in `presence` what the
        parent now holds."""
        self.clear()
        if not self.available:
            return
        plan = _Plan(self, presence)
        deleted = {(c.repo, c.digest) for c in changes if c.op == "delete_manifest"}
        for key in dict.fromkeys((c.repo, c.digest) for c in changes
                                 if c.op == "manifest" and c.digest):
            if key not in deleted:
                await plan.manifest(*key, 0)
        # (repo, digest, size, body, media type, tag, the tag's agreed digest)
        items: list[tuple] = [(repo, digest, size, None, None, None, None)
                              for (repo, digest), size in plan.blobs.items()]
        items += [(*m, None, None) for m in plan.manifests]
        if presence.available:
            touched = Counter((c.repo, c.tag) for c in changes if c.tag)
            barriers = {c.repo for c in changes if c.op == "delete_manifest"}
            for c in changes:
                if c.op == "manifest" and c.tag and c.digest and touched[c.repo, c.tag] == 1 \
                        and c.repo not in barriers and plan.ready(c.repo, c.digest) \
                        and self.reg.meta.resolve_tag(c.repo, c.tag) == c.digest:
                    items.append((c.repo, c.digest, 0, None, None, c.tag,
                                  self.state.get(last_known_key(c.repo, c.tag))))
        if not items:
            return
        runs: list[list] = [[]]
        total = 0
        for item in items:
            if runs[-1] and (len(runs[-1]) >= self.max_objects or
                             total + item[2] > self.max_bytes):
                runs.append([])
                total = 0
            runs[-1].append(item)
            total += item[2]
        # One request at a time: sending two at once gained nothing measurable in the
        # catch-up bench and doubled the batches held in memory here.
        for run in runs:
            if not await self._send_run(run, presence):
                return

    async def _send_run(self, run: list, presence) -> bool:
        """Send one request's worth; False when batching should stop for this outbox batch."""
        def build() -> bytes:
            records = []
            for repo, digest, _, body, media_type, tag, agreed in run:
                if tag is not None:
                    records.append((fmt.tag_header(repo, tag, digest, agreed), b""))
                    continue
                data = body if body is not None else self.reg.blobs.read(digest)
                records.append((fmt.header(repo, digest, len(data), media_type), data))
            return fmt.encode(records, self.reg.settings.zstd_level)

        try:
            frame = await trio.to_thread.run_sync(build)
        except OSError as exc:  # a blob gone here meanwhile (GC): the ordinary path decides
            log.info("upload batch not sent: %s", exc)
            return False
        try:
            answers = await self.parent.upload_objects(frame, len(run))
        except ParentRefused as exc:
            # Refused as a whole (limits differ, a damaged blob here …): each entry goes the
            # one-by-one way and meets its own answer there.
            log.warning("upload batch of %d object(s) refused by the parent (%s); sending "
                        "them one by one", len(run), exc)
            return False
        if answers is None:
            self.available = False
            log.info("the parent cannot take upload batches; sending objects one by one")
            return False
        if self.reg.settings.test_kill_in_upload_batch:  # the crash test: answered, no tag moved
            os.kill(os.getpid(), signal.SIGKILL)
        self.state.progress_bytes(len(frame), "up")
        agreed: list[tuple[str, str]] = []
        for (repo, digest, _, body, _, tag, _), answer in zip(run, answers):
            status = answer["status"]
            if tag is not None and status in (201, 412):
                self.tag_moved[(repo, tag, digest)] = status == 201
                if status == 201:
                    agreed.append((last_known_key(repo, tag), digest))
            elif status != 201:
                log.info("%s@%s refused in an upload batch (HTTP %s); it goes the one-by-one "
                         "way", repo, digest[:19], status)
            elif body is None:
                presence.blob_at_parent[(repo, digest)] = True
                self.state.progress_blob()
            else:
                presence.manifest_at_parent[(repo, digest)] = True
        async with trio.open_nursery() as nursery:  # (concurrent: they share a commit)
            for key, digest in agreed:
                nursery.start_soon(self.state.set, key, digest)
        return True


class _Plan:
    """What one outbox batch uploads: blobs ((repo, digest) → size) and manifests in the order
    they can be stored."""

    def __init__(self, batch: UpBatch, presence):
        self.batch = batch
        self.reg = batch.reg
        self.presence = presence
        self.blobs: dict[tuple[str, str], int] = {}
        # (repo, digest, size, body, media type)
        self.manifests: list[tuple[str, str, int, bytes, str]] = []
        self._ready: dict[tuple[str, str], bool] = {}  # held at the parent after the batch

    def ready(self, repo: str, digest: str) -> bool:
        return self._ready.get((repo, digest), False)

    async def manifest(self, repo: str, digest: str, depth: int) -> bool:
        key = (repo, digest)
        if key in self._ready:
            return self._ready[key]
        self._ready[key] = False  # (a cycle ends here)
        if self.presence.manifest_at_parent.get(key):
            self._ready[key] = True
            return True
        record = self.reg.meta.get_manifest(repo, digest)
        if record is None or depth >= MAX_DEPTH or record.size > self.batch.max_bytes:
            return False
        try:
            body = await self.reg.read_manifest(digest)
            doc = json.loads(body)
        except (ValueError, OSError):
            return False
        if not isinstance(doc, dict):
            return False
        ready = True
        if record.media_type in INDEX_TYPES or "manifests" in doc:
            for child in doc.get("manifests") or []:
                if not (isinstance(child, dict) and isinstance(child.get("digest"), str)
                        and await self.manifest(repo, child["digest"], depth + 1)):
                    ready = False
        else:
            for desc in [doc.get("config"), *(doc.get("layers") or [])]:
                if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
                    ready = False
                    continue
                if is_foreign_layer(desc.get("mediaType")):
                    continue  # never stored by a registry
                blob = (repo, desc["digest"])
                if self.presence.blob_at_parent.get(blob) or blob in self.blobs:
                    continue
                size = self.reg.meta.linked_blob_size(repo, desc["digest"])
                if size is None or size >= self.batch.small:
                    ready = False  # not here, or large: the ordinary path (chunks, delta)
                    continue
                self.blobs[blob] = size
        if ready:
            self.manifests.append((repo, digest, len(body), body, record.media_type))
        self._ready[key] = ready
        return ready
