"""The down direction's bulk path (issue 13, `sync/batch.py` DownPrefetch): a feed page's small
blobs stored in one call per object batch and linked in one transaction, its manifests' bytes
stored together. On its unhappy paths nothing of a page becomes visible before what it
references: a blob batch whose bytes do not match their digests is refused whole and its blobs
fetched again one by one; a full disk midway leaves no manifest whose blobs are missing and
nothing staged; a child killed -9 midway catches up after its restart with nothing corrupt."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import trio

from connreg import _core
from connreg.config import Settings
from connreg.registry import Registry
from connreg.storage.budget import StorageFull, find_out_of_space
from connreg.sync.batch import apply_feed
from connreg.sync.puller import Puller
from connreg.sync.remote import ParentClient
from connreg.sync.state import DOWN_CURSOR, SyncState
from connreg.testing import start_node
from connreg.testing.hierarchy import Hierarchy, wait_for
from connreg.testing.oci import make_image, sha256
from helpers import push_image

REPOS = ["bk/a", "bk/b", "bk/c"]


def _backlog(node_url: str, auth, count: int, seed: int) -> list[tuple[str, str, object]]:
    """`count` small images pushed to the node: (repo, tag, image)."""
    out = []
    with httpx.Client(base_url=node_url, auth=auth, timeout=60) as c:
        for i in range(count):
            image = make_image([2000 + seed * 100 + i, 3000 + i])
            repo, tag = REPOS[i % len(REPOS)], f"t{i}"
            push_image(c, repo, image, tag)
            out.append((repo, tag, image))
    return out


def _consistent(reg: Registry) -> int:
    """Every visible manifest has every blob it references linked and intact; returns how
    many manifests are visible."""
    import json
    seen = 0
    for repo in REPOS:
        for digest in reg.meta.manifest_digests(repo):
            body = reg.blobs.read(digest)
            assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
            doc = json.loads(body)
            for desc in [doc["config"], *doc["layers"]]:
                assert reg.meta.linked_blob_size(repo, desc["digest"]) == desc["size"]
                data = reg.blobs.read(desc["digest"])
                assert "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"]
            seen += 1
    return seen


class DamagingParent(ParentClient):
    """Flips one byte of the first `blob_batches` object batches that hold only blobs, and
    records which blobs were then fetched one by one and what was visible at that moment."""

    def __init__(self, url: str, reg: Registry, blob_batches: int):
        super().__init__(url, auth=None)
        self.reg = reg
        self.left = blob_batches
        self.damaged: set[str] = set()
        self.refetched: list[str] = []
        self.on_blob_batch = None  # called before a blob batch is answered

    async def fetch_objects(self, objects, referrers, max_bytes):
        frame = await super().fetch_objects(objects, referrers, max_bytes)
        if not referrers and self.on_blob_batch is not None:
            self.on_blob_batch()
        if frame is None or referrers or not self.left:
            return frame
        self.left -= 1
        plain = bytearray(_core.zstd_decompress(frame, max_bytes + (1 << 20)))
        plain[-1] ^= 0xFF  # the batch's last blob no longer matches its digest
        self.damaged |= {d for _, d in objects}
        return _core.zstd_compress(bytes(plain), 3)

    async def stream_blob(self, repo, digest, offset=0):
        self.refetched.append(digest)
        # Nothing that references this blob may be visible before it is stored here.
        for r in REPOS:
            for m in self.reg.meta.manifest_digests(r):
                assert digest.encode() not in self.reg.blobs.read(m), (r, m, digest)
        async for chunk in super().stream_blob(repo, digest, offset):
            yield chunk


async def _feed(parent: ParentClient) -> list[dict]:
    feed = await parent.changes(0, 0.0)
    assert not feed["expired"]
    return feed["changes"]


async def test_a_damaged_blob_batch_is_refused_whole_and_its_blobs_fetched_again(tmp_path):
    root = start_node(tmp_path / "root", args=["--no-auth"])
    reg = Registry(Settings(data_dir=tmp_path / "child", sync_batch_max_objects=8))
    parent = DamagingParent(root.url, reg, blob_batches=1)
    try:
        images = _backlog(root.url, None, 12, seed=1)
        state = SyncState(reg.meta)
        puller = Puller(reg, parent, state)
        puller.parent = puller.ahead.parent = parent
        await apply_feed(puller, await _feed(parent), lambda repo: True, 8)
        assert parent.damaged and set(parent.damaged) <= set(parent.refetched)
        assert _consistent(reg) == 12
        for repo, tag, image in images:
            assert reg.meta.resolve_tag(repo, tag) == image.digest
        assert state.cursor(DOWN_CURSOR) == (await parent.changes(0, 0.0))["cursor"]
        assert not list((tmp_path / "child" / "store" / "tmp").iterdir())
    finally:
        await parent.aclose()
        reg.close()
        root.stop()


async def test_a_full_disk_midway_leaves_nothing_partial_and_sync_resumes(tmp_path):
    root = start_node(tmp_path / "root", args=["--no-auth"])
    reg = Registry(Settings(data_dir=tmp_path / "child", sync_batch_max_objects=8))
    parent = DamagingParent(root.url, reg, blob_batches=0)
    try:
        images = _backlog(root.url, None, 12, seed=2)
        state = SyncState(reg.meta)
        puller = Puller(reg, parent, state)
        puller.parent = puller.ahead.parent = parent
        batches = {"n": 0}

        def fill_disk() -> None:  # after two blob batches, the budget has no room left
            batches["n"] += 1
            if batches["n"] == 3:
                reg.budget.max_store = reg.budget.used_bytes + 1

        parent.on_blob_batch = fill_disk
        with pytest.raises(BaseException) as failure:
            await apply_feed(puller, await _feed(parent), lambda repo: True, 8)
        assert isinstance(find_out_of_space(failure.value), StorageFull), failure.value
        assert _consistent(reg) < 12  # what is visible is whole
        assert state.cursor(DOWN_CURSOR) is None  # and the cursor passed nothing
        assert not list((tmp_path / "child" / "store" / "tmp").iterdir())

        reg.budget.max_store = 0  # room again: the same page is applied in full
        parent.on_blob_batch = None
        await apply_feed(puller, await _feed(parent), lambda repo: True, 8)
        assert _consistent(reg) == 12
        for repo, tag, image in images:
            assert reg.meta.resolve_tag(repo, tag) == image.digest
    finally:
        await parent.aclose()
        reg.close()
        root.stop()


def test_a_child_killed_midway_through_a_backlog_catches_up_intact(tmp_path):
    h = Hierarchy(tmp_path)
    try:
        root = h.start_root()
        h.create("bulkro", "ReadOnly", ["bk/*"])
        child = h.start_child("bulkro", env={"CONNREG_SYNC_BATCH_MAX_OBJECTS": "8"})
        child.stop()
        images = _backlog(root.url, root.admin, 30, seed=3)
        child.start()
        blobs = child.data_dir / "store" / "blobs" / "sha256"
        # Killed once blobs of the backlog are arriving (one object batch or more stored).
        wait_for(lambda: sum(1 for d in blobs.iterdir() for _ in d.iterdir()) > 8, 60,
                 interval=0.005, message="the child storing the backlog")
        child.kill()
        child.start()
        with httpx.Client(base_url=child.url, auth=child.admin, timeout=60) as c:
            def arrived() -> bool:
                return all(c.head(f"/v2/{repo}/manifests/{tag}").status_code == 200
                           for repo, tag, _ in images)
            wait_for(arrived, 90, interval=0.5, message="the whole backlog at the child")
            for repo, tag, image in images:
                r = c.get(f"/v2/{repo}/manifests/{tag}",
                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
                assert r.content == image.manifest
                for blob in image.blobs():
                    assert c.get(f"/v2/{repo}/blobs/{sha256(blob)}").content == blob
    finally:
        h.stop_all()
