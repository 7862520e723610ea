"""Batched sync (issue 13): the object batch and the bulk presence check refuse bad input with
OCI errors and store nothing; a child refuses a batch whose bytes do not match their digests and
still ends up right; entries applied several at once keep their order per tag."""

from __future__ import annotations

import json
import random

import httpx
import pytest
import trio

from connreg import _core
from connreg.sync import batch_format
from connreg.sync.batch import run_in_order
from connreg.testing.hierarchy import Hierarchy, wait_for
from connreg.testing.oci import OCI_MANIFEST, make_image, sha256
from helpers import error_codes, push_image

OBJECTS = "/connreg/v1/sync/objects"
MISSING = "/connreg/v1/sync/blobs/missing"


# --- order per tag, no nodes -----------------------------------------------------------------

def test_entries_of_one_tag_keep_their_order_when_applied_at_once():
    rng = random.Random(13)
    changes, seq = [], 0
    for _ in range(120):
        seq += 1
        repo = f"r{rng.randrange(3)}"
        if rng.random() < 0.05:
            changes.append({"seq": seq, "repo": repo, "op": "delete_manifest", "tag": None,
                            "digest": f"d{rng.randrange(5)}"})
        else:
            changes.append({"seq": seq, "repo": repo, "op": "manifest",
                            "tag": f"t{rng.randrange(4)}", "digest": f"d{seq}"})
    started: list[int] = []
    finished: list[int] = []
    told: list[int] = []
    running = {"now": 0, "max": 0}

    async def work(change) -> None:
        started.append(change["seq"])
        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        await trio.sleep(rng.random() / 200)
        running["now"] -= 1
        finished.append(change["seq"])

    async def done(seq: int) -> None:
        told.append(seq)

    trio.run(run_in_order, changes, work, 6, done)
    position = {s: i for i, s in enumerate(started)}
    end = {s: i for i, s in enumerate(finished)}
    for a in changes:
        for b in changes:
            if a["seq"] >= b["seq"] or a["repo"] != b["repo"]:
                continue
            same_tag = a["tag"] is not None and a["tag"] == b["tag"]
            barrier = "delete_manifest" in (a["op"], b["op"])
            if same_tag or barrier:  # b may start only after a finished
                assert end[a["seq"]] < position[b["seq"]], (a, b)
    assert 1 < running["max"] <= 6  # concurrent, within the bound
    assert told == sorted(told) and told[-1] == seq  # the cursor only moves forward, to the end


def test_a_failure_leaves_the_cursor_before_the_failed_entry():
    changes = [{"seq": i, "repo": "r", "op": "manifest", "tag": f"t{i}", "digest": "d"}
               for i in range(1, 21)]
    told: list[int] = []

    async def work(change) -> None:
        if change["seq"] == 7:
            await trio.sleep(0.05)  # those before it have finished by then
            raise RuntimeError("parent went away")
        await trio.sleep(0)

    async def done(seq: int) -> None:
        told.append(seq)

    with pytest.raises(BaseException):
        trio.run(run_in_order, changes, work, 4, done)
    assert told and max(told) == 6


# --- the batch format, fetching side --------------------------------------------------------

def test_a_batch_whose_bytes_do_not_match_their_digest_is_refused_whole():
    good, other = b"a" * 1000, b"b" * 1000
    frame = batch_format.encode([({"digest": sha256(good), "size": 1000}, good),
                                 ({"digest": sha256(other), "size": 1000}, other)], 3)
    objs = batch_format.decode(frame, [sha256(good), sha256(other)], 1 << 20)
    assert [o.data for o in objs] == [good, other]
    damaged = batch_format.encode([({"digest": sha256(good), "size": 1000}, good),
                                   ({"digest": sha256(other), "size": 1000}, other)], 3,
                                  corrupt=True)
    with pytest.raises(batch_format.BatchCorrupt, match="hashes to"):
        batch_format.decode(damaged, [sha256(good), sha256(other)], 1 << 20)
    with pytest.raises(batch_format.BatchCorrupt, match="describe"):  # not what was asked
        batch_format.decode(frame, [sha256(other), sha256(good)], 1 << 20)
    with pytest.raises(batch_format.BatchCorrupt, match="decompress"):  # cut short
        batch_format.decode(frame[:len(frame) // 2], [sha256(good), sha256(other)], 1 << 20)
    with pytest.raises(batch_format.BatchCorrupt, match="more than was asked"):
        batch_format.decode(frame, [sha256(good)], 1 << 20)
    with pytest.raises(batch_format.BatchCorrupt):
        batch_format.decode(b"not zstd", [sha256(good)], 1 << 20)


# --- the parent's endpoints, then a child --------------------------------------------------

def _post(c: httpx.Client, path: str, doc) -> httpx.Response:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return c.post(path, content=body, headers={"Content-Type": "application/json"})


def test_batch_endpoints_refuse_bad_input_and_a_child_refuses_a_damaged_batch(tmp_path):
    h = Hierarchy(tmp_path, env={"CONNREG_SYNC_BATCH_MAX_OBJECTS": "8",
                                 "CONNREG_SYNC_BATCH_MAX_BYTES": str(96 * 1024)})
    try:
        root = h.start_root()
        image = make_image([64 * 1024, 20 * 1024])
        config, big, small = image.blobs()
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
            push_image(c, "bt/app", image, "v1")
            ok = _post(c, OBJECTS, {"objects": [["bt/app", image.digest],
                                                ["bt/app", sha256(small)]],
                                    "referrers": True})
            assert ok.status_code == 200, ok.text
            assert ok.headers["Content-Type"] == batch_format.MEDIA_TYPE
            objs = batch_format.decode(ok.content, [image.digest, sha256(small)], 1 << 20)
            assert objs[0].data == image.manifest and objs[0].referrers == []
            assert objs[1].data == small and objs[1].media_type is None

            unknown = "sha256:" + "0" * 64
            r = _post(c, OBJECTS, {"objects": [["bt/app", sha256(small)], ["bt/app", unknown]]})
            assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
            assert r.json()["errors"][0]["detail"]["unknown"] == [f"bt/app@{unknown}"]
            r = _post(c, OBJECTS, {"objects": [["bt/other", sha256(small)]]})  # not linked there
            assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
            r = _post(c, OBJECTS, {"objects": [["bt/app", sha256(small)]] * 9})
            assert r.status_code == 400 and error_codes(r) == ["INVALID"]
            assert "at most 8" in r.json()["errors"][0]["message"]
            r = _post(c, OBJECTS, {"objects": [["bt/app", sha256(big)], ["bt/app", sha256(small)],
                                               ["bt/app", sha256(config)]]})
            assert r.status_code == 200  # 84 KiB and a bit: within 96 KiB
            r = _post(c, OBJECTS, {"objects": [["bt/app", sha256(big)]] * 2})
            assert r.status_code == 413 and error_codes(r) == ["SIZE_INVALID"]
            assert "sync_batch_max_bytes" in r.json()["errors"][0]["message"]
            for bad in ({"objects": [["bt/app"]]}, {"objects": "x"}, [], b"{", b"\xff"):
                r = _post(c, OBJECTS, bad)
                assert r.status_code == 400 and error_codes(r) == ["INVALID"], (bad, r.text)
            r = _post(c, OBJECTS, {"objects": [["bt/app", "sha256:xyz"]]})
            assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
            r = _post(c, OBJECTS, {"objects": [["BT/../x", sha256(small)]]})
            assert r.status_code == 400 and error_codes(r) == ["NAME_INVALID"]
            r = c.post(OBJECTS, content=b"[" * 300_000)
            assert r.status_code == 413 and error_codes(r) == ["SIZE_INVALID"]
            assert httpx.post(f"{root.url}{OBJECTS}", json={"objects": []}).status_code == 401

            # Presence in bulk: present, missing, and a mount from another repository.
            r = _post(c, MISSING, {"blobs": [["bt/app", sha256(small)], ["bt/app", unknown],
                                             ["bt/copy", sha256(big)]],
                                   "manifests": [["bt/app", image.digest],
                                                 ["bt/copy", image.digest]]})
            assert r.status_code == 200, r.text
            assert r.json() == {"blobs": ["present", "missing", "mounted"],
                                "manifests": [True, False]}
            assert c.head(f"/v2/bt/copy/blobs/{sha256(big)}").status_code == 200
            assert c.head(f"/v2/bt/app/blobs/{unknown}").status_code == 404  # nothing stored
            r = _post(c, MISSING, {"blobs": [["bt/app", sha256(small)]] * 9})
            assert r.status_code == 400 and error_codes(r) == ["INVALID"]
            r = _post(c, MISSING, {"blobs": [["bt/app", "md5:00"]]})
            assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]

        # A child whose first batch arrives damaged stores nothing of it, and still syncs.
        root.env["CONNREG_TEST_CORRUPT_OBJECT_BATCHES"] = "1"
        root.restart()
        h.create("batchro", "ReadOnly", ["bt/*"])
        child = h.start_child("batchro")
        wait_for(lambda: httpx.get(f"{child.url}/v2/bt/app/manifests/v1", auth=child.admin,
                                   timeout=30).status_code == 200, 60, message="v1 at the child")
        with httpx.Client(base_url=child.url, auth=child.admin, timeout=60) as c:
            for blob in image.blobs():
                assert c.get(f"/v2/bt/app/blobs/{sha256(blob)}").content == blob
            # Outside the child's set a blob is "denied": one answer, and never mounted there.
            r = _post(c, MISSING, {"blobs": [["out/side", sha256(small)],
                                             ["bt/app", sha256(small)]]})
            assert r.status_code == 200 and r.json()["blobs"] == ["denied", "present"], r.text
            assert c.head(f"/v2/out/side/blobs/{sha256(small)}").status_code == 404

            # Many moves of one tag, pushed fast among other tags: the child applies them several
            # at once but this tag's in order, so it ends where the root's is.
            with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as rc:
                images = [make_image([1024 + i]) for i in range(12)]
                for i, img in enumerate(images):
                    push_image(rc, "bt/app", img, "moving")
                    push_image(rc, f"bt/side{i % 4}", img, f"s{i}")
            wait_for(lambda: c.head("/v2/bt/side3/manifests/s11").status_code == 200, 60,
                     message="the last side tag at the child")
            wait_for(lambda: c.head("/v2/bt/app/manifests/moving").headers.get(
                "Docker-Content-Digest") == images[-1].digest, 60, message="moving at the child")
            moves = [ch["digest"] for ch in c.get("/connreg/v1/sync/changes",
                                                  params={"cursor": 0, "limit": 1000}).json()
                     ["changes"] if ch["tag"] == "moving" and ch["repo"] == "bt/app"]
            order = [img.digest for img in images]
            assert [order.index(d) for d in moves] == sorted(order.index(d) for d in moves)
            # The first batch the root served was damaged: refused whole, fetched one by one.
            assert "refused, nothing of it stored" in child.log()
            for img in images:
                for blob in img.blobs():
                    assert c.get(f"/v2/bt/app/blobs/{sha256(blob)}").content == blob
    finally:
        h.stop_all()


def test_a_manifest_deleted_and_pushed_again_in_one_outbox_batch_reaches_the_parent(tmp_path):
    """The outbox batch [delete X, push X again (by digest)] while the parent holds X: the
    presence answer taken before the batch ("X is held") is stale after the delete, so the
    second entry must send X again, not skip it."""
    h = Hierarchy(tmp_path)
    try:
        root = h.start_root()
        h.create("batch-edge", "ReadWrite", ["rp/*"])
        edge = h.start_child("batch-edge")
        image = make_image([5000])
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            push_image(c, "rp/app", image, "v1")
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as r:
            wait_for(lambda: r.head(f"/v2/rp/app/manifests/{image.digest}",
                                    headers={"Accept": OCI_MANIFEST}).status_code == 200, 60,
                     message="X at the root")
        root.stop()  # both entries wait in the edge's outbox
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            assert c.delete(f"/v2/rp/app/manifests/{image.digest}").status_code == 202
            r = c.put(f"/v2/rp/app/manifests/{image.digest}", content=image.manifest,
                      headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 201, r.text
        root.start()
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as r:
            wait_for(lambda: r.head(f"/v2/rp/app/manifests/v1",
                                    headers={"Accept": OCI_MANIFEST}).status_code == 404, 90,
                     message="the delete at the root")
            wait_for(lambda: r.head(f"/v2/rp/app/manifests/{image.digest}",
                                    headers={"Accept": OCI_MANIFEST}).status_code == 200, 60,
                     message="X pushed again at the root")
    finally:
        h.stop_all()


def test_a_manifest_with_a_foreign_layer_syncs_without_that_layer(tmp_path):
    """A non-distributable layer is never in a registry: the child takes the manifest (its
    other blobs fetched, in batches) and does not ask the parent for that layer."""
    h = Hierarchy(tmp_path)
    try:
        root = h.start_root()
        h.create("foreign-edge", "ReadOnly", ["fl/*"])
        edge = h.start_child("foreign-edge")
        config, layer = b'{"architecture":"amd64","os":"windows"}', random.randbytes(4000)
        foreign = sha256(b"a Windows base layer that lives elsewhere")
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar"
                                     "+gzip", "digest": foreign, "size": 123456,
                        "urls": ["https://example.invalid/base.tar.gz"]},
                       {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha256(layer), "size": len(layer)}]}).encode()
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
            for blob in (config, layer):
                assert c.post("/v2/fl/app/blobs/uploads/", params={"digest": sha256(blob)},
                              content=blob).status_code == 201
            r = c.put("/v2/fl/app/manifests/v1", content=manifest,
                      headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 201, r.text
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            wait_for(lambda: c.get("/v2/fl/app/manifests/v1",
                                   headers={"Accept": OCI_MANIFEST}).content == manifest, 60,
                     message="the manifest at the edge")
            assert c.get(f"/v2/fl/app/blobs/{sha256(layer)}").content == layer
            assert c.head(f"/v2/fl/app/blobs/{foreign}").status_code == 404
    finally:
        h.stop_all()
