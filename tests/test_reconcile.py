"""Full reconciliation removes what the parent no longer has, and a sync window that closes
mid-transfer keeps the bytes already received.

Real processes throughout (`testing/hierarchy.py`). A child's cursor is expired the way an
operator would meet it: the child is away while the parent's clock moves past its message TTL
(the test-only clock offset, docs/sync.md), so the parent prunes its change log.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import trio

from connreg import _core
from connreg.delta.fetch import frame_entries
from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.oci import OCI_INDEX, OCI_MANIFEST, descriptor, make_image, make_index, sha256
from helpers import push_blob, push_image

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
THREE_DAYS = str(3 * 86400)


def status(node, repo: str, reference: str) -> int:
    r = httpx.head(f"{node.url}/v2/{repo}/manifests/{reference}", auth=node.admin,
                   headers=ACCEPT, timeout=30)
    return r.status_code


def tags(node, repo: str) -> list[str]:
    r = httpx.get(f"{node.url}/v2/{repo}/tags/list", auth=node.admin, timeout=30)
    return sorted(r.json().get("tags") or []) if r.status_code == 200 else []


def push_manifest(client: httpx.Client, repo: str, ref: str, body: bytes, media_type: str):
    r = client.put(f"/v2/{repo}/manifests/{ref}", content=body,
                   headers={"Content-Type": media_type})
    assert r.status_code == 201, r.text


def delete_manifest(node, repo: str, digest: str) -> None:
    r = httpx.delete(f"{node.url}/v2/{repo}/manifests/{digest}", auth=node.admin, timeout=30)
    assert r.status_code == 202, r.text


class Content:
    """What the root holds in `repo`: a withdrawn image (tag v1), a kept one (v2) with a
    signature (a referrer), a multi-platform index (tag multi) whose children are untagged, and
    an image pushed by digest only (pushed once the edges run: a first reconciliation copies
    what tags and referrers reach; untagged manifests come by the change feed)."""

    def __init__(self, root, repo: str):
        self.repo = repo
        self.withdrawn = make_image([3000])
        self.kept = make_image([3000])
        self.amd, self.arm = make_image([2000]), make_image([2000], arch="arm64")
        self.index = make_index([self.amd, self.arm], ["amd64", "arm64"])
        self.untagged = make_image([1000])
        self.signature = make_image([100], artifact_type="application/vnd.example.sig",
                                    subject=descriptor(OCI_MANIFEST, self.kept.manifest))
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
            push_image(c, repo, self.withdrawn, "v1")
            push_image(c, repo, self.kept, "v2")
            push_image(c, repo, self.amd, self.amd.digest)
            push_image(c, repo, self.arm, self.arm.digest)
            push_manifest(c, repo, "multi", self.index, OCI_INDEX)
            push_image(c, repo, self.untagged, self.untagged.digest)
            push_image(c, repo, self.signature, self.signature.digest)

    def staying(self) -> list[str]:
        return [self.kept.digest, self.amd.digest, self.arm.digest, sha256(self.index),
                self.untagged.digest, self.signature.digest]

    def wait_synced(self, node) -> None:
        for digest in [self.withdrawn.digest, *self.staying()]:
            wait_for(lambda: status(node, self.repo, digest) == 200, 60,
                     message=f"{self.repo}@{digest[:19]} at {node.data_dir.name}")

    def assert_withdrawn_only(self, node) -> None:
        """The withdrawn image is gone from `node`, everything else is still there."""
        wait_for(lambda: status(node, self.repo, self.withdrawn.digest) == 404, 60,
                 message=f"withdrawn image gone at {node.data_dir.name}")
        for digest in self.staying():
            assert status(node, self.repo, digest) == 200, digest


def both(first, second) -> tuple:
    """Run two node starts at once (each waits for its process to answer)."""
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        return a.result(), b.result()


def expire_cursors(root) -> None:
    """Restart the root three days later (its clock): its change log is pruned past every
    child's P2D message TTL, so a child that was away finds its cursor expired."""
    root.stop()
    root.env["CONNREG_TEST_CLOCK_OFFSET_SECONDS"] = THREE_DAYS
    root.start()


def test_image_withdrawn_while_edges_were_away_is_gone_after_they_return(hierarchy):
    """The withdrawn image answers 404 at a ReadOnly and a ReadWrite edge after their
    reconciliation, as at the root; an image pushed at the ReadWrite edge and still in its
    outbox survives the reconciliation and reaches the root afterwards."""
    root = hierarchy.root
    hierarchy.create("edgero1", "ReadOnly", ["vuln/*"])
    # The cap makes the edge's own push take ~7 s, so it is still in the outbox while the
    # edge reconciles after its restart (the edge applies the cap from its stored config).
    hierarchy.create("edgerw1", "ReadWrite", ["vuln/*"], extra=["--bandwidth-limit", "20000"])
    ro, rw = both(lambda: hierarchy.start_child("edgero1"),
                  lambda: hierarchy.start_child("edgerw1"))
    content = Content(root, "vuln/app")  # after the start: the untagged image comes by feed
    content.wait_synced(ro)
    content.wait_synced(rw)

    # The root goes away; a push at the ReadWrite edge waits in its outbox. Both edges stop.
    ro.stop()
    root.stop()
    local = make_image([150_000])
    with httpx.Client(base_url=rw.url, auth=rw.admin, timeout=30) as c:
        push_image(c, "vuln/app", local, "local")
    rw.stop()

    # Meanwhile the root withdraws v1 and, days later, has pruned that from its change log.
    root.start()
    delete_manifest(root, "vuln/app", content.withdrawn.digest)
    expire_cursors(root)
    assert status(root, "vuln/app", content.withdrawn.digest) == 404

    both(ro.start, rw.start)
    content.assert_withdrawn_only(ro)
    content.assert_withdrawn_only(rw)
    for edge in (ro, rw):
        assert "expired at the parent; reconciling fully" in edge.log()
        assert "reconciliation removed 1 manifest(s) of vuln/app" in edge.log()
    # The edge's own, not yet pushed image was kept and then went up (and down to edgero1).
    assert status(rw, "vuln/app", local.digest) == 200
    wait_for(lambda: status(root, "vuln/app", "local") == 200, 60, message="local push at root")
    wait_for(lambda: tags(ro, "vuln/app") == ["local", "multi", "v2"], 60,
             message="edgero1's tags")
    assert tags(rw, "vuln/app") == tags(root, "vuln/app") == ["local", "multi", "v2"]
    assert status(rw, "vuln/app", local.digest) == 200

    # With the manifest gone, garbage collection frees the withdrawn image's blobs there.
    ro.stop()
    gc = subprocess.run([sys.executable, "-m", "connreg", "maintenance", "gc", "--data-dir",
                         str(ro.data_dir)], capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    for blob in content.withdrawn.blobs():
        assert not blob_file(ro, blob).exists()
    for blob in content.kept.blobs():
        assert blob_file(ro, blob).exists()


def blob_file(node, data: bytes):
    hex_digest = sha256(data).removeprefix("sha256:")
    return node.data_dir / "store" / "blobs" / "sha256" / hex_digest[:2] / hex_digest


def test_resync_removes_manifests_the_parent_no_longer_has(hierarchy):
    """`connected-registry resync` runs the same full reconciliation."""
    root = hierarchy.root
    hierarchy.create("edgero2", "ReadOnly", ["vuln/*"])
    edge = hierarchy.start_child("edgero2")
    content = Content(root, "vuln/lib")
    content.wait_synced(edge)

    # The edge misses the deletion without its cursor expiring: while it is stopped, its
    # cursor is moved past the deletion (as if that feed entry had been lost).
    edge.stop()
    delete_manifest(root, "vuln/lib", content.withdrawn.digest)
    head = httpx.get(f"{root.url}/connreg/v1/sync/changes", params={"peek": 1},
                     auth=root.admin, timeout=30).json()["head"]
    with sqlite3.connect(edge.data_dir / "metadata.sqlite") as db:
        db.execute("UPDATE sync_state SET value = ? WHERE key = 'down_cursor'", (str(head),))
    edge.start()
    wait_for(lambda: cli(root, "connected-registry", "show", "--name", "edgero2")
             ["connectionState"] == "Online", 60, interval=0.5, message="ro2 online")
    assert status(edge, "vuln/lib", content.withdrawn.digest) == 200  # the feed cannot say

    cli(root, "connected-registry", "resync", "--name", "edgero2")
    content.assert_withdrawn_only(edge)
    assert tags(edge, "vuln/lib") == ["multi", "v2"]
    assert "reconciliation removed 1 manifest(s) of vuln/lib" in edge.log()


def test_chunk_batches_are_kept_entry_by_entry_as_they_stream_in(tmp_path):
    """The child's reader of a batch frame yields each chunk as soon as its bytes are in (what
    lets a window's end keep them), verified; a cut or corrupt frame is refused."""
    store = _core.BlobStore(str(tmp_path / "store"))
    data = os.urandom(300_000) + b"\0" * 200_000  # a raw and a zstd-compressed entry
    digest = store.put_bytes(data)
    ranges = [(digest, 0, 100_000), (digest, 100_000, 200_000), (digest, 300_000, 200_000)]
    frame = _core.encode_chunks(store, ranges)

    async def read(pieces: list[bytes], seen: list) -> None:
        async def stream():
            for piece in pieces:
                seen.append(("piece", len(piece)))
                yield piece
        async for chunk_id, chunk in frame_entries(stream()):
            seen.append(("chunk", chunk_id, chunk))

    seen: list = []
    trio.run(read, [frame[i:i + 4096] for i in range(0, len(frame), 4096)], seen)
    chunks = [e for e in seen if e[0] == "chunk"]
    assert b"".join(c[2] for c in chunks) == data[:500_000]
    assert all(c[1] == blake3_hex(c[2]) for c in chunks)
    # The first chunk came out before the stream had delivered the second one's bytes.
    first = seen.index(chunks[0])
    assert sum(e[1] for e in seen[:first] if e[0] == "piece") < len(frame) // 2

    for broken in (frame[:-1], frame[:50_000] + bytes([frame[50_000] ^ 1]) + frame[50_001:]):
        with pytest.raises(_core.CorruptChunk):
            trio.run(read, [broken], [])


def blake3_hex(data: bytes) -> str:
    return _core.digest_bytes(data, "blake3").removeprefix("blake3:")


WINDOW_SECONDS = 5
CAP = 1_000_000  # bytes/s


def child_bytes(root, name: str) -> int:
    r = httpx.get(f"{root.url}/connreg/v1/sync/traffic", auth=root.admin, timeout=10)
    return r.json()["bytes"].get(name, 0)


def clock_offset_for(second: float) -> float:
    """A clock offset that puts a node's clock at `second` of a minute now."""
    return (second - time.time() % 60) % 60


def test_window_closing_mid_transfer_keeps_the_bytes_received(tmp_path):
    """A window closes while a large blob is coming down (slowly: bandwidth cap): what
    arrived is kept, and the next window moves about the remainder, not the whole blob."""
    h = Hierarchy(tmp_path, env={"CONNREG_TEST_MIN_SYNC_WINDOW_SECONDS": "3"})
    try:
        root = h.start_root()
        h.create("edgeslow1", "ReadOnly", ["big/*"],
                 extra=["--sync-schedule", "*/1 * * * *", "--sync-window",
                        f"PT{WINDOW_SECONDS}S", "--bandwidth-limit", str(CAP)])
        data = os.urandom(9 * 1024 * 1024)
        digest = sha256(data)
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
            push_blob(c, "big/model", b"{}")
            push_blob(c, "big/model", data)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.example.data",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": sha256(b"{}"), "size": 2},
                "layers": [{"mediaType": "application/octet-stream", "digest": digest,
                            "size": len(data)}]}).encode()
            push_manifest(c, "big/model", "v1", manifest, OCI_MANIFEST)

        # The child starts about ten seconds before its window (its clock), so the whole window
        # goes to the transfer: about WINDOW_SECONDS × CAP bytes, well short of the blob.
        child = h.start_child("edgeslow1", env={
            "CONNREG_TEST_CLOCK_OFFSET_SECONDS": str(clock_offset_for(50))})
        wait_for(lambda: "sync window closed" in child.log(), 60, interval=0.2,
                 message="the first window to close")
        partial = child.data_dir / "store" / "uploads" / ("sync-" + digest.replace(":", "-"))
        first_window = child_bytes(root, "edgeslow1")
        kept = partial.stat().st_size
        child.stop()
        print(f"\nfirst window: {first_window} bytes sent by the parent, {kept} kept")
        assert 0 < kept < len(data)
        # Everything the parent sent is kept but the chunk batch in flight (a quarter second
        # under the cap) and the chunk list; before, the last 2 MiB batch was dropped.
        assert first_window - kept < 500_000

        # The next window (the child restarted with its clock three seconds before a window).
        closed_before = child.log().count("sync window closed")
        child.env["CONNREG_TEST_CLOCK_OFFSET_SECONDS"] = str(clock_offset_for(57))
        child.start()
        wait_for(lambda: status(child, "big/model", "v1") == 200, 120, interval=0.5,
                 message="the blob complete in a later window")
        rest = child_bytes(root, "edgeslow1") - first_window
        # On a slow machine that window may close before the end too (the next one finishes):
        # each window end may cost one batch in flight.
        window_ends = max(1, child.log().count("sync window closed") - closed_before)
        print(f"later window(s): {rest} bytes for the {len(data) - kept} missing")
        assert "resuming sha256:" in child.log()
        assert rest < (len(data) - kept) + 500_000 * window_ends
        r = httpx.get(f"{child.url}/v2/big/model/blobs/{digest}", auth=child.admin, timeout=60)
        assert r.status_code == 200 and sha256(r.content) == digest
    finally:
        h.stop_all()


def test_a_tag_moved_to_a_manifest_deleted_meanwhile_goes_at_the_child(hierarchy: Hierarchy):
    """The feed says t→A, t→B, delete B. A child that was away applies t→A, finds B gone at the
    parent, and must not keep t→A: the parent's delete of B took the tag with it (found by
    bench/soak.py)."""
    root = hierarchy.root
    hierarchy.create("stalero", "ReadOnly", ["moved/*"])
    child = hierarchy.start_child("stalero")
    a, b, marker = make_image([1500]), make_image([1600]), make_image([1700])
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        push_image(c, "moved/app", marker, "other")
        wait_for(lambda: status(child, "moved/app", "other") == 200, 60,
                 message="the child synced once")
        child.stop()
        push_image(c, "moved/app", a, "t")
        push_image(c, "moved/app", b, "t")
        delete_manifest(root, "moved/app", b.digest)
        push_image(c, "moved/app", marker, "after")  # the child has caught up once it has this
    assert status(root, "moved/app", "t") == 404
    child.start()
    wait_for(lambda: status(child, "moved/app", "after") == 200, 60,
             message="the child caught up with the feed")
    assert status(child, "moved/app", "t") == 404, "the child kept a tag the parent deleted"
    assert tags(child, "moved/app") == tags(root, "moved/app") == ["after", "other"]
