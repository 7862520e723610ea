"""Batched, pipelined sync in both directions (docs/sync.md, "Throughput").

- `run_in_order`: applies or sends a list of change-log entries several at a time while the
  entries of one tag (one manifest, for entries without a tag) keep their order, and a manifest
  deletion waits for everything before it in its repository (it takes tags along) and holds
  back everything after it there. `done(seq)` is told the highest seq below which every entry
  has finished, so a cursor never passes an entry that has not.
- `DownPrefetch`: before a feed batch is applied, fetches the manifests it names and the small
  blobs they reference in a few `POST /connreg/v1/sync/objects` requests (each object verified
  against its digest before anything of the batch is stored). Each batch's blobs are written
  in one call and linked in one transaction, the manifests' bytes written together; the
  puller then finds the blobs linked and the manifests in memory, and only writes metadata. A parent without batches, or a batch it
  refuses, leaves everything to the one-by-one path: prefetching is only a shortcut.
- `UpPresence`: before outbox entries are sent, asks the parent once which of their blobs it
  lacks (mounting what it holds elsewhere) and which manifests it holds.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Awaitable, Callable, Iterable

import trio

from connreg.content import INDEX_TYPES, is_foreign_layer
from connreg.storage.budget import StorageFull
from connreg.storage.interfaces import BlobGone
from connreg.sync import batch_format
from connreg.sync.remote import ParentClient, ParentRefused
from connreg.sync.state import DOWN_CURSOR

log = logging.getLogger("connreg.sync")


def _key(change) -> tuple[str, str]:
    get = change.get if isinstance(change, dict) else lambda k: getattr(change, k)
    tag = get("tag")
    return (get("repo"), f":{tag}" if tag else f"@{get('digest')}")


def _field(change, name: str):
    return change.get(name) if isinstance(change, dict) else getattr(change, name)


async def run_in_order(changes: list, work: Callable[[object], Awaitable[None]], parallel: int,
                       done: Callable[[int], Awaitable[None]],
                       stop: Callable[[], bool] = lambda: False) -> None:
    """Run `work` for each change, at most `parallel` at once, keeping the order per tag (see
    the module doc). `done(seq)` after each finished entry with the highest seq up to which all
    have finished. `stop()` true: start nothing more (entries already running finish). The
    first failure cancels the rest and propagates; `done` has been told what finished."""
    slots = trio.CapacityLimiter(max(1, parallel))
    last: dict[tuple[str, str], trio.Event] = {}
    by_repo: dict[str, list[trio.Event]] = {}
    barrier: dict[str, trio.Event] = {}
    seqs = [_field(c, "seq") for c in changes]
    finished: set[int] = set()
    state = {"prefix": 0, "told": None}

    async def report() -> None:
        i = state["prefix"]
        while i < len(seqs) and seqs[i] in finished:
            i += 1
        state["prefix"] = i
        if i and state["told"] != seqs[i - 1]:
            state["told"] = seqs[i - 1]
            await done(seqs[i - 1])

    async def one(change, waits: list[trio.Event], mine: trio.Event) -> None:
        for event in waits:
            await event.wait()
        if not stop():
            async with slots:
                await work(change)
            finished.add(_field(change, "seq"))
            await report()
        mine.set()  # (a stopped entry releases its followers, which stop too)

    async with trio.open_nursery() as nursery:
        for change in changes:
            repo, key = _key(change)
            mine = trio.Event()
            if _field(change, "op") == "delete_manifest":
                waits = list(by_repo.get(repo, []))
                barrier[repo] = mine
                by_repo[repo] = []
            else:
                waits = [e for e in (last.get((repo, key)), barrier.get(repo)) if e is not None]
            last[(repo, key)] = mine
            by_repo.setdefault(repo, []).append(mine)
            nursery.start_soon(one, change, waits, mine)


# A cursor is written at most this often while a batch is applied (and always at its end):
# an entry applied again after a crash is harmless, an fsync per entry is not free.
CURSOR_EVERY = 0.25


async def apply_feed(puller, changes: list[dict], covers: Callable[[str], bool],
                     parallel: int) -> None:
    """Apply a feed batch: fetch ahead what it needs, then apply its entries (those of
    repositories this node covers) `parallel` at once in order per tag, moving the down
    cursor behind them."""
    await puller.ahead.run(changes, covers)
    last = {"at": trio.current_time(), "seq": None, "written": None}

    async def done(seq: int) -> None:
        last["seq"] = seq
        if trio.current_time() - last["at"] >= CURSOR_EVERY:
            last["at"], last["written"] = trio.current_time(), seq
            await puller.state.set(DOWN_CURSOR, str(seq))

    async def apply(change: dict) -> None:
        if covers(change["repo"]):
            await puller.apply(change)

    try:
        await run_in_order(changes, apply, parallel, done)
    finally:
        puller.prefetched.clear()
        if last["seq"] is not None and last["seq"] != last["written"]:
            # Also when cancelled (a window closing): resume right after what was applied.
            with trio.CancelScope(shield=True):
                await puller.state.set(DOWN_CURSOR, str(last["seq"]))


class PrefetchedManifests:
    """Manifest bodies fetched ahead of their store, bounded in bytes (oldest dropped first:
    a dropped one is simply fetched again one by one)."""

    def __init__(self, max_bytes: int):
        self._max = max_bytes
        self._used = 0
        self._items: OrderedDict[tuple[str, str], batch_format.BatchObject] = OrderedDict()
        # Digests whose bytes are in the blob store already (stored together as fetched):
        # storing the manifest is then only its metadata.
        self.bytes_stored: set[str] = set()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, repo: str, obj: batch_format.BatchObject) -> None:
        if len(obj.data) > self._max or (repo, obj.digest) in self._items:
            return
        self._items[(repo, obj.digest)] = obj
        self._used += len(obj.data)
        while self._used > self._max:
            _, old = self._items.popitem(last=False)
            self._used -= len(old.data)

    def get(self, repo: str, digest: str) -> batch_format.BatchObject | None:
        return self._items.get((repo, digest))

    def take(self, repo: str, digest: str) -> batch_format.BatchObject | None:
        obj = self._items.pop((repo, digest), None)
        if obj is not None:
            self._used -= len(obj.data)
        return obj

    def clear(self) -> None:
        self._items.clear()
        self.bytes_stored.clear()
        self._used = 0


def _chunks(items: list, limit: int, size_of: Callable[[object], int], max_bytes: int
            ) -> Iterable[list]:
    """`items` in runs of at most `limit` entries and `max_bytes` bytes."""
    run: list = []
    total = 0
    for item in items:
        size = size_of(item)
        if run and (len(run) >= limit or total + size > max_bytes):
            yield run
            run, total = [], 0
        run.append(item)
        total += size
    if run:
        yield run


class DownPrefetch:
    """Fetches ahead, in batches, what a feed batch needs (see the module doc)."""

    # Index levels followed ahead (an index of indexes is rare; deeper ones go one by one).
    MAX_DEPTH = 3

    def __init__(self, reg, parent: ParentClient, state, manifests: PrefetchedManifests):
        self.reg = reg
        self.parent = parent
        self.state = state
        self.manifests = manifests
        settings = reg.settings
        self.max_objects = settings.sync_batch_max_objects
        self.max_bytes = settings.sync_batch_max_bytes
        self.small = min(settings.delta_threshold_bytes, self.max_bytes)
        self.available = True  # False once the parent said it cannot batch

    async def run(self, changes: list[dict], wanted: Callable[[str], bool]) -> None:
        if not self.available:
            return
        todo = list(dict.fromkeys(
            (c["repo"], c["digest"]) for c in changes
            if c.get("op") == "manifest" and c.get("digest") and wanted(c["repo"])
            and self.reg.meta.get_manifest(c["repo"], c["digest"]) is None))
        for _ in range(self.MAX_DEPTH):
            todo = [t for t in todo if self.manifests.get(*t) is None]
            if not todo:
                return
            fetched = await self._fetch(todo, referrers=True, sized=False)
            if fetched is None:
                return
            # Their bytes now, in one call (invisible until their metadata is written, after
            # everything they reference); a full disk stops the batch (StorageFull).
            await trio.to_thread.run_sync(self.reg.blobs.put_many,
                                          [(obj.data, obj.digest) for _, obj in fetched])
            self.manifests.bytes_stored.update(obj.digest for _, obj in fetched)
            children: list[tuple[str, str]] = []
            blobs: dict[tuple[str, str], int] = {}
            for repo, obj in fetched:
                self.manifests.put(repo, obj)
                try:
                    doc = json.loads(obj.data)
                except ValueError:
                    continue  # the one-by-one path refuses it with its reason
                if not isinstance(doc, dict):
                    continue
                if obj.media_type in INDEX_TYPES or "manifests" in doc:
                    children += [(repo, m["digest"]) for m in doc.get("manifests") or []
                                 if isinstance(m, dict) and isinstance(m.get("digest"), str)
                                 and self.reg.meta.get_manifest(repo, m["digest"]) is None]
                    continue
                for desc in [doc.get("config"), *(doc.get("layers") or [])]:
                    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
                        continue
                    size = desc.get("size")
                    if is_foreign_layer(desc.get("mediaType")) or \
                            not isinstance(size, int) or not 0 <= size < self.small:
                        continue
                    if self.reg.meta.linked_blob_size(repo, desc["digest"]) is None:
                        blobs[(repo, desc["digest"])] = size
            await self._store_blobs(blobs)
            todo = list(dict.fromkeys(children))

    async def _fetch(self, objects: list[tuple[str, str]], referrers: bool, sized: bool,
                     sizes: dict | None = None,
                     each: Callable[[list], Awaitable[None]] | None = None,
                     ) -> list[tuple[str, batch_format.BatchObject]] | None:
        """Fetch `objects` in as many batches as the limits ask; None when the parent cannot
        batch. A refused batch (an object deleted at the parent meanwhile, say) is skipped:
        the one-by-one path fetches its objects and reports what is really wrong. With
        `each`, every verified batch is handed to it as it arrives (and not kept), so at most
        one batch of bytes is held at a time."""
        out: list[tuple[str, batch_format.BatchObject]] = []
        # Manifests: sizes unknown before they arrive; the parent caps them at 4 MiB each.
        size_of = (lambda o: sizes[o]) if sized else (lambda o: 0)
        for run in _chunks(objects, self.max_objects, size_of, self.max_bytes):
            try:
                frame = await self.parent.fetch_objects(run, referrers, self.max_bytes)
            except ParentRefused as exc:
                log.info("batch of %d object(s) refused (%s); fetching them one by one",
                         len(run), exc)
                continue
            if frame is None:
                self.available = False
                log.info("the parent cannot batch objects; fetching one by one")
                return None
            try:
                objs = await trio.to_thread.run_sync(batch_format.decode, frame,
                                                     [d for _, d in run], self.max_bytes)
            except batch_format.BatchCorrupt as exc:
                log.warning("batch of %d object(s) from the parent refused, nothing of it "
                            "stored: %s; fetching them one by one", len(run), exc)
                continue
            self.state.progress_bytes(len(frame))
            got = [(repo, obj) for (repo, _), obj in zip(run, objs)]
            if each is None:
                out += got
            else:
                await each(got)
        return out

    async def _store_blobs(self, blobs: dict[tuple[str, str], int]) -> None:
        """Store and link the small blobs of a feed batch: per object batch fetched, one
        worker-thread call writes all its blobs (their fsyncs together) and one transaction
        links them, instead of a thread hop, two fsyncs and a transaction per blob."""
        sizes = await trio.to_thread.run_sync(  # off the event loop: on S3 each is a request
            lambda: {k: self.reg.blobs.size(k[1]) for k in blobs})
        need = [k for k in blobs if sizes[k] is None]
        await self._link([(repo, d, sizes[(repo, d)]) for repo, d in blobs
                          if sizes[(repo, d)] is not None])
        if need:
            try:  # what cannot fit is not fetched at all (docs/sync.md, "A full disk")
                self.reg.budget.check(sum(blobs[k] for k in need), "blobs fetched ahead")
            except StorageFull:
                return  # the one-by-one path refuses each, naming it and its size
            await self._fetch(need, referrers=False, sized=True, sizes=blobs,
                              each=self._store_fetched)

    async def _store_fetched(self, fetched: list[tuple[str, batch_format.BatchObject]]) -> None:
        # Verified in decode; the store hashes once more as it writes (held to the budget).
        # A full disk raises StorageFull with nothing of this batch linked.
        await trio.to_thread.run_sync(self.reg.blobs.put_many,
                                      [(obj.data, obj.digest) for _, obj in fetched])
        for _, obj in fetched:
            self.reg.chunk_index.schedule(obj.digest)
            self.state.progress_blob()
        await self._link([(repo, obj.digest, len(obj.data)) for repo, obj in fetched])

    async def _link(self, links: list[tuple[str, str, int]]) -> None:
        try:
            await self.reg.meta.link_blobs(links)
        except BlobGone as exc:  # collected meanwhile: the one-by-one path fetches it again
            log.info("blobs fetched ahead not linked (%s is gone); fetching them one by one",
                     exc)


class UpPresence:
    """What the parent holds of the blobs and manifests of some outbox entries."""

    def __init__(self, reg, parent: ParentClient):
        self.reg = reg
        self.parent = parent
        self.max_objects = reg.settings.sync_batch_max_objects
        self.available = True
        self.blob_at_parent: dict[tuple[str, str], bool] = {}
        self.manifest_at_parent: dict[tuple[str, str], bool] = {}

    def clear(self) -> None:
        self.blob_at_parent.clear()
        self.manifest_at_parent.clear()

    def forget_manifest(self, repo: str, digest: str) -> None:
        """The parent no longer holds this manifest (we just deleted it there); asked again
        one by one if needed."""
        self.manifest_at_parent.pop((repo, digest), None)

    async def ask(self, changes: list) -> None:
        """Fill the answers for the manifests of `changes` and their blobs (and index
        children's, one level down)."""
        self.clear()
        if not self.available:
            return
        manifests: list[tuple[str, str]] = []
        blobs: list[tuple[str, str]] = []
        todo = [(c.repo, c.digest) for c in changes if c.op == "manifest" and c.digest]
        for _ in range(2):
            nxt = []
            for repo, digest in dict.fromkeys(todo):
                record = self.reg.meta.get_manifest(repo, digest)
                if record is None:
                    continue
                manifests.append((repo, digest))
                try:
                    doc = json.loads(await self.reg.read_manifest(digest))
                except (ValueError, OSError):
                    continue
                if not isinstance(doc, dict):
                    continue
                if "manifests" in doc:
                    nxt += [(repo, m["digest"]) for m in doc.get("manifests") or []
                            if isinstance(m, dict) and isinstance(m.get("digest"), str)]
                    continue
                for desc in [doc.get("config"), *(doc.get("layers") or [])]:
                    if isinstance(desc, dict) and isinstance(desc.get("digest"), str) and \
                            self.reg.meta.linked_blob_size(repo, desc["digest"]) is not None:
                        blobs.append((repo, desc["digest"]))
            todo = nxt
        blobs = list(dict.fromkeys(blobs))
        manifests = list(dict.fromkeys(manifests))
        step = self.max_objects
        for i in range(0, max(len(blobs), len(manifests)), step):
            b, m = blobs[i:i + step], manifests[i:i + step]
            try:
                answer = await self.parent.missing_blobs(b, m)
            except ParentRefused as exc:
                # Not about one entry: each is sent the ordinary way and refused (and parked)
                # on its own.
                log.info("bulk presence question refused (%s); asking blob by blob", exc)
                self.clear()
                return
            if answer is None:
                self.available = False
                log.info("the parent cannot answer presence in bulk; asking blob by blob")
                self.clear()
                return
            states, held = answer
            for key, st in zip(b, states):
                if st in ("present", "mounted", "missing"):
                    self.blob_at_parent[key] = st != "missing"
            for key, h in zip(m, held):
                if isinstance(h, bool):  # null: refused; the ordinary request says why
                    self.manifest_at_parent[key] = h
