"""Delta transfer between real nodes: chunks the child holds are not re-sent, corrupt chunks are
caught, interrupted transfers resume, and a parent without delta still serves whole blobs."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time

import httpx

from connreg import _core
from connreg.testing.hierarchy import Hierarchy, wait_for
from connreg.testing.oci import sha256
from helpers import push_blob

EMPTY_CONFIG = b"{}"
ARTIFACT_TYPE = "application/vnd.example.data"


def push_artifact(client: httpx.Client, repo: str, tag: str, data: bytes) -> str:
    push_blob(client, repo, EMPTY_CONFIG)
    push_blob(client, repo, data)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(EMPTY_CONFIG),
                   "size": len(EMPTY_CONFIG)},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256(data),
                    "size": len(data)}],
    }).encode()
    r = client.put(f"/v2/{repo}/manifests/{tag}", content=manifest,
                   headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 201, r.text
    return sha256(manifest)


def edited(data: bytes, seed: int, regions: int = 10, insert: int = 256 * 1024) -> bytes:
    """About 1% of the bytes changed in scattered places, plus an insertion near the start."""
    rng = random.Random(seed)
    out = bytearray(data)
    region = len(data) // 100 // regions
    for _ in range(regions):
        at = rng.randrange(0, len(out) - region)
        out[at:at + region] = os.urandom(region)
    return bytes(out[:4096]) + os.urandom(insert) + bytes(out[4096:])


def child_bytes(root, name: str) -> int:
    r = httpx.get(f"{root.url}/connreg/v1/sync/traffic", auth=root.admin, timeout=10)
    return r.json()["bytes"].get(name, 0)


def blob_at(node, repo: str, digest: str) -> bytes | None:
    r = httpx.get(f"{node.url}/v2/{repo}/blobs/{digest}", auth=node.admin, timeout=60)
    return r.content if r.status_code == 200 else None


def child_with_v1(h: Hierarchy, name: str, repo: str, v1: bytes, mode: str = "ReadOnly"):
    """A connected registry of `h`'s root syncing `repo`'s namespace, started, that has v1 of
    an artifact pushed at the root; returns it and the bytes it has moved so far."""
    h.create(name, mode, [repo.split("/")[0] + "/*"])
    edge = h.start_child(name)
    with httpx.Client(base_url=h.root.url, auth=h.root.admin, timeout=60) as c:
        push_artifact(c, repo, "v1", v1)
    wait_for(lambda: blob_at(edge, repo, sha256(v1)) == v1, 60, message="v1 at the child")
    return edge, child_bytes(h.root, name)


def test_only_missing_chunks_cross_the_link(hierarchy):
    v1 = os.urandom(12 * 1024 * 1024)
    edge, after_v1 = child_with_v1(hierarchy, "edge1", "data/model", v1)
    assert after_v1 < len(v1) * 1.05  # random data does not compress: about its size

    v2 = edited(v1, seed=1)
    with httpx.Client(base_url=hierarchy.root.url, auth=hierarchy.root.admin, timeout=60) as c:
        push_artifact(c, "data/model", "v2", v2)
    wait_for(lambda: blob_at(edge, "data/model", sha256(v2)) == v2, 30, message="v2 at edge")
    v2_bytes = child_bytes(hierarchy.root, "edge1") - after_v1
    print(f"\nv2: {v2_bytes} bytes on the wire for a {len(v2)}-byte blob "
          f"({100 * v2_bytes / len(v2):.1f}%)")
    assert v2_bytes < 0.2 * len(v2)
    assert "bytes from local chunks" in edge.log()


def test_small_edits_cost_about_their_size(hierarchy):
    """Runs of missing chunks are refined into ~4 KiB sub-chunks against the old version, so
    60 scattered 2 KiB edits move about 60 x (2 KiB + a sub-chunk or two), not 60 x 64 KiB+."""
    v1 = os.urandom(12 * 1024 * 1024)
    edge, after_v1 = child_with_v1(hierarchy, "edge5", "data/fw", v1)

    rng = random.Random(5)
    v2 = bytearray(v1)
    edits, edit = 60, 2048
    for k in range(edits):  # one edit in each of 60 equal strata: scattered, never overlapping
        stratum = len(v1) // edits
        at = k * stratum + rng.randrange(0, stratum - edit)
        v2[at:at + edit] = os.urandom(edit)
    v2 = bytes(v2)
    with httpx.Client(base_url=hierarchy.root.url, auth=hierarchy.root.admin, timeout=60) as c:
        push_artifact(c, "data/fw", "v2", v2)
    wait_for(lambda: blob_at(edge, "data/fw", sha256(v2)) == v2, 30, message="v2 at edge")
    v2_bytes = child_bytes(hierarchy.root, "edge5") - after_v1
    changed = edits * edit
    print(f"\nv2: {v2_bytes} bytes on the wire for {changed} bytes changed "
          f"({v2_bytes / changed:.2f}x; {100 * v2_bytes / len(v2):.2f}% of the blob)")
    # 64 KiB chunks alone would move >= 60 x 64 KiB = 3.75 MiB (31% of the blob)
    assert v2_bytes < 8 * changed
    refined = [int(n) for n in re.findall(r"\((\d+) runs refined\)", edge.log())]
    assert refined and refined[-1] > 0, refined


def sync_one_artifact(tmp_path, root_env: dict[str, str], size: int) -> str:
    """A root started with `root_env` and one ReadOnly child; return the child's log once an
    artifact of `size` random bytes pushed at the root is at the child, byte for byte."""
    h = Hierarchy(tmp_path)
    try:
        root = h.start_root()
        root.env.update(root_env)
        root.restart()
        h.create("edge2", "ReadOnly", ["data/*"])
        edge = h.start_child("edge2")
        data = os.urandom(size)
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
            push_artifact(c, "data/x", "v1", data)
        wait_for(lambda: blob_at(edge, "data/x", sha256(data)) == data, 30, message="blob at edge")
        return edge.log()
    finally:
        h.stop_all()


def test_corrupt_chunk_is_detected_and_fetched_again(tmp_path):
    log = sync_one_artifact(tmp_path, {"CONNREG_TEST_CORRUPT_CHUNK_BATCHES": "1"}, 3 * 1024 * 1024)
    assert "corrupt chunk batch" in log


def test_kill_mid_transfer_resumes_without_starting_over(hierarchy):
    size = 32 * 1024 * 1024
    hierarchy.create("edge3", "ReadOnly", ["data/*"], extra=["--bandwidth-limit", str(4_000_000)])
    edge = hierarchy.start_child("edge3")
    data = os.urandom(size)
    with httpx.Client(base_url=hierarchy.root.url, auth=hierarchy.root.admin, timeout=60) as c:
        push_artifact(c, "data/big", "v1", data)
    upload = edge.data_dir / "store" / "uploads" / ("sync-" + sha256(data).replace(":", "-"))
    wait_for(lambda: upload.exists() and upload.stat().st_size > size // 3, 30, interval=0.05,
             message="a third of the blob at the edge")
    edge.kill()
    # A kill can stop a write in the middle of a chunk: cut what was kept to a point inside
    # one, so the next attempt must continue from a byte, not a chunk boundary.
    ends = {o + n for o, n, _ in _core.chunk_bytes(data)}
    kept = upload.stat().st_size - 1000
    while kept in ends:
        kept -= 1
    os.truncate(upload, kept)
    edge.start()
    started = time.monotonic()
    wait_for(lambda: blob_at(edge, "data/big", sha256(data)) == data, 60, message="blob at edge")
    total = child_bytes(hierarchy.root, "edge3")
    print(f"\nkept {kept} bytes across the kill; {total} bytes on the wire for {size} "
          f"({total / size:.3f}x)")
    assert f"({kept} bytes kept)" in edge.log()
    assert total < 1.1 * size
    # The cap held: the rest (size - kept) took at least ~(size - kept) / 4 MB/s.
    assert time.monotonic() - started > 0.8 * (size - kept) / 4_000_000


def test_parent_without_delta_serves_whole_blobs(tmp_path):
    log = sync_one_artifact(tmp_path, {"CONNREG_DELTA": "false"}, 2 * 1024 * 1024)
    assert "whole-blob transfer" in log


def test_chunk_index_for_plain_pushes_and_reindex_command(hierarchy):
    root = hierarchy.root
    data = os.urandom(2 * 1024 * 1024)
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
        push_artifact(c, "data/z", "v1", data)
        r = c.get("/connreg/v1/sync/chunks", params={"repo": "data/z", "digest": sha256(data)})
        assert r.status_code == 200
        chunks = r.json()["chunks"]
        assert sum(n for _, n, _ in chunks) == len(data) and len(chunks) > 8
        # bad requests get OCI errors and change nothing
        r = c.post("/connreg/v1/sync/chunks", params={"repo": "data/z", "digest": sha256(data)},
                   json={"ranges": [[len(data) - 1, 10]]})
        assert r.status_code == 416
        r = c.post("/connreg/v1/sync/chunks", params={"repo": "data/z", "digest": sha256(data)},
                   content=b"nonsense")
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "INVALID"

        # finer chunks of one range (what a child refines a missing run with)
        where = {"repo": "data/z", "digest": sha256(data)}
        fine = {"min": 1024, "avg": 4096, "max": 16384}
        r = c.get("/connreg/v1/sync/chunks",
                  params={**where, "offset": 100_000, "length": 300_000, **fine})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["params"] == "fastcdc-blake3:1024:4096:16384"
        subs = doc["chunks"]
        assert subs[0][0] == 100_000 and sum(n for _, n, _ in subs) == 300_000
        assert subs == [[100_000 + o, n, cid] for o, n, cid in
                        _core.chunk_bytes(data[100_000:400_000], _core.ChunkParams(1024, 4096, 16384))]
        for bad, status in [({"offset": len(data) - 10, "length": 11, **fine}, 416),
                            ({"offset": 0, "length": 0, **fine}, 416),
                            ({"offset": 0, "length": 9 * 1024 * 1024, **fine}, 416),
                            ({"offset": -1, "length": 10, **fine}, 400),
                            ({"offset": 0, "length": 10, "min": 1024, "avg": 3000, "max": 9000}, 400),
                            ({"offset": 0, "length": 10, "min": 64, "avg": 256, "max": 1024}, 400),
                            ({"offset": 0, "length": 10, "avg": 4096}, 400)]:
            r = c.get("/connreg/v1/sync/chunks", params={**where, **bad})
            assert r.status_code == status, (bad, r.text)
            assert r.json()["errors"][0]["code"] in ("INVALID", "BLOB_UPLOAD_INVALID"), r.text
    out = subprocess.run([sys.executable, "-m", "connreg", "maintenance", "reindex-chunks",
                          "--data-dir", str(root.data_dir)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "indexed the chunks of" in out.stdout
