"""Delta transfer upward, between real nodes: a ReadWrite connected registry pushes a large blob
to its parent by sending only the chunks the parent lacks; the push survives the parent's
kill -9; the parent's endpoints refuse bad plans without touching the session; a parent
without delta still receives the blob whole."""

from __future__ import annotations

import os
import re
import struct
import time

import httpx

from connreg import _core
from connreg.delta import plan
from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.oci import sha256
from helpers import push_blob
from test_delta import blob_at, child_bytes, child_with_v1, edited, push_artifact

MiB = 1024 * 1024


def test_edge_push_sends_only_changed_chunks(hierarchy):
    root = hierarchy.root
    v1 = os.urandom(24 * MiB)
    edge, before = child_with_v1(hierarchy, "store1", "up/model", v1, mode="ReadWrite")

    v2 = edited(v1, seed=2)
    with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
        push_artifact(c, "up/model", "v2", v2)
    wait_for(lambda: httpx.get(f"{root.url}/v2/up/model/manifests/v2", auth=root.admin,
                               timeout=10).status_code == 200, 60, message="v2 at the root")
    assert blob_at(root, "up/model", sha256(v2)) == v2
    sent = child_bytes(root, "store1") - before
    print(f"\nv2 up: {sent} bytes on the wire for a {len(v2)}-byte blob "
          f"({100 * sent / len(v2):.1f}%)")
    assert sent < 0.15 * len(v2)
    assert re.search(rf"pushed {sha256(v2)[:19]} by chunks", edge.log())


def test_parent_killed_mid_push_resumes_where_its_copy_ends(hierarchy):
    root = hierarchy.root
    hierarchy.create("store2", "ReadWrite", ["up/*"], extra=["--bandwidth-limit", "4000000"])
    edge = hierarchy.start_child("store2")
    v1 = os.urandom(16 * MiB)
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
        push_artifact(c, "up/big", "v1", v1)
    wait_for(lambda: blob_at(edge, "up/big", sha256(v1)) == v1, 60, message="v1 at the edge")
    # 24 MiB of new bytes between two runs of known chunks: about 6 s at the 4 MB/s cap.
    fresh = 24 * MiB
    v2 = v1[:8 * MiB] + os.urandom(fresh) + v1[8 * MiB:]
    with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
        push_artifact(c, "up/big", "v2", v2)
    uploads = root.data_dir / "store" / "uploads"

    def parent_holds(n: int) -> bool:
        return uploads.exists() and any(p.stat().st_size > n for p in uploads.iterdir())

    wait_for(lambda: parent_holds(16 * MiB), 60, interval=0.05,
             message="a third of the new bytes at the parent")
    root.kill()
    kept = max(p.stat().st_size for p in uploads.iterdir())
    time.sleep(3)  # long enough for the edge's next request to fail
    root.start()
    wait_for(lambda: blob_at(root, "up/big", sha256(v2)) == v2, 90, message="v2 at the root")
    after_restart = child_bytes(root, "store2")  # counters restarted with the root
    print(f"\nkilled at {kept} of {len(v2)} bytes; {after_restart} bytes sent after the "
          f"restart for the {len(v2) - kept} left")
    log = edge.log()
    resumed = re.search(r"resuming upward delta of \S+ at byte (\d+)", log)
    assert resumed and int(resumed.group(1)) >= 16 * MiB, log[-3000:]
    # Not from zero: well under the 24 MiB of new bytes.
    assert after_restart < 0.85 * fresh
    wait_for(lambda: httpx.get(f"{root.url}/v2/up/big/manifests/v2", auth=root.admin,
                               timeout=10).status_code == 200, 30, message="v2 tag at the root")


def test_whole_push_cut_inside_a_chunk_continues_by_chunks(tmp_path):
    """The parent dies during a whole-blob push (delta off there) and comes back with delta
    on: the edge continues the same session by chunks, starting with the rest of the chunk
    the parent's copy ends in."""
    h = Hierarchy(tmp_path)
    try:
        root = h.start_root()
        root.env["CONNREG_DELTA"] = "false"
        root.restart()
        h.create("store5", "ReadWrite", ["up/*"], extra=["--bandwidth-limit", "4000000"])
        edge = h.start_child("store5")
        data = os.urandom(20 * MiB)
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            push_artifact(c, "up/mixed", "v1", data)
        uploads = root.data_dir / "store" / "uploads"
        wait_for(lambda: uploads.exists() and any(p.stat().st_size > 6 * MiB
                                                  for p in uploads.iterdir()),
                 60, interval=0.05, message="6 MiB at the parent")
        root.kill()
        kept = max(p.stat().st_size for p in uploads.iterdir())
        time.sleep(3)  # long enough for the edge's next PATCH to fail
        del root.env["CONNREG_DELTA"]
        root.start()
        wait_for(lambda: blob_at(root, "up/mixed", sha256(data)) == data, 90,
                 message="blob at the root")
        log = edge.log()
        resumed = re.search(r"resuming upward delta of \S+ at byte (\d+)", log)
        assert resumed and int(resumed.group(1)) >= kept, log[-3000:]
        assert "ends inside a chunk; sending its last" in log
        assert re.search(rf"pushed {sha256(data)[:19]} by chunks", log)
        assert child_bytes(root, "store5") < 1.05 * (len(data) - kept)
    finally:
        h.stop_all()


def _literal(data: bytes) -> plan.Data:
    """A data entry: BLAKE3 id, raw codec, length, the bytes."""
    entry = bytes.fromhex(_core.digest_bytes(data, "blake3").split(":")[1]) + b"\0" \
        + struct.pack("<I", len(data)) + data
    return plan.Data(entry[:32].hex(), entry)


def test_bad_plans_are_refused_and_change_nothing(hierarchy):
    root = hierarchy.root
    data = os.urandom(2 * MiB)
    c = httpx.Client(base_url=root.url, auth=root.admin, timeout=60)
    push_blob(c, "data/a", data)
    listing = c.get("/connreg/v1/sync/chunks",
                    params={"repo": "data/a", "digest": sha256(data)}).json()
    key = listing["params"]
    first_off, first_len, first_id = listing["chunks"][0]
    stranger = "ab" * 32

    r = c.post("/connreg/v1/sync/chunks/known", params={"repo": "data/b"},
               json={"params": key, "ids": [first_id, stranger]})
    assert r.status_code == 200 and r.json() == {"known": [True, False]}
    r = c.post("/connreg/v1/sync/chunks/known", params={"repo": "data/b"},
               json={"params": "fastcdc-blake3:1024:4096:8192", "ids": [first_id]})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "CHUNK_PARAMS_MISMATCH"
    r = c.post("/connreg/v1/sync/chunks/known", params={"repo": "data/b"},
               json={"params": key, "ids": ["not hex"]})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "INVALID"

    r = c.post("/v2/data/b/blobs/uploads/")
    assert r.status_code == 202
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    url = f"/connreg/v1/sync/uploads/{upload_id}"

    def size() -> int:
        r = c.get(f"/v2/data/b/blobs/uploads/{upload_id}")
        assert r.status_code == 204
        return int(r.headers["Range"].split("-")[1]) + 1

    def send(body: bytes, offset: int, upload: str = url) -> httpx.Response:
        return c.post(upload, params={"repo": "data/b", "offset": offset}, content=body)

    extra = os.urandom(1000)
    r = send(plan.encode([plan.Copy(first_id, first_len), _literal(extra)]), 0)
    assert r.status_code == 202, r.text
    good = first_len + 1000
    assert r.json() == {"size": good} and size() == good

    def refused(r: httpx.Response, status: int, code: str) -> dict:
        assert r.status_code == status, r.text
        error = r.json()["errors"][0]
        assert error["code"] == code and error["message"]
        assert size() == good  # the session is exactly as before
        return error

    more = plan.encode([_literal(b"x" * 100)])
    err = refused(send(more, 0), 416, "BLOB_UPLOAD_INVALID")
    assert err["detail"]["uploadSize"] == good
    refused(send(more, good + 5), 416, "BLOB_UPLOAD_INVALID")
    refused(send(more, good, "/connreg/v1/sync/uploads/no-such-upload"), 404,
            "BLOB_UPLOAD_UNKNOWN")
    refused(c.post(url, params={"repo": "data/b"}, content=more), 400, "BLOB_UPLOAD_INVALID")
    # literal bytes that do not match their id (one good entry first: nothing is appended)
    forged = _literal(b"y" * 100)
    forged = plan.Data(forged.chunk_id, forged.entry[:-1] + b"z")
    refused(send(plan.encode([_literal(b"ok"), forged]), good), 400, "DIGEST_INVALID")
    # copies of a chunk the parent lacks, or with the wrong length
    refused(send(plan.encode([plan.Copy(first_id, first_len), plan.Copy(stranger, 100)]), good),
            400, "CHUNK_UNKNOWN")
    refused(send(plan.encode([plan.Copy(first_id, first_len + 1)]), good), 400, "CHUNK_UNKNOWN")
    # malformed frames
    for body in [b"", b"Q" + bytes(36), more[:-1], b"C" + bytes(10),
                 b"D" + bytes(32) + b"\x07" + struct.pack("<I", 1) + b"a",
                 b"C" + bytes.fromhex(first_id) + struct.pack("<I", 0)]:
        refused(send(body, good), 400, "INVALID")
    # delta endpoints of another repository than the session's
    refused(c.post(url, params={"repo": "data/c", "offset": good}, content=more), 404,
            "BLOB_UPLOAD_UNKNOWN")

    # The session still finishes normally with its SHA-256.
    assembled = data[first_off:first_off + first_len] + extra
    r = c.put(f"/v2/data/b/blobs/uploads/{upload_id}", params={"digest": sha256(assembled)})
    assert r.status_code == 201, r.text
    assert c.get(f"/v2/data/b/blobs/{sha256(assembled)}").content == assembled
    c.close()


def test_chunks_of_unreadable_repositories_stay_hidden(hierarchy):
    """A sync token learns nothing about chunks outside the repositories it may pull."""
    root = hierarchy.root
    data = os.urandom(2 * MiB)
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
        push_blob(c, "secret/a", data)
        listing = c.get("/connreg/v1/sync/chunks",
                        params={"repo": "secret/a", "digest": sha256(data)}).json()
    _, length, chunk_id = listing["chunks"][0]
    hierarchy.create("store3", "ReadWrite", ["mine/*"])
    settings = cli(root, "connected-registry", "get-settings", "--name", "store3",
                   "--parent-protocol", "http", "--yes")
    auth = (settings["syncTokenName"], settings["syncTokenPassword"])
    with httpx.Client(base_url=root.url, auth=auth, timeout=60) as c:
        r = c.post("/connreg/v1/sync/chunks/known", params={"repo": "mine/x"},
                   json={"params": listing["params"], "ids": [chunk_id]})
        assert r.status_code == 200 and r.json() == {"known": [False]}
        r = c.post("/connreg/v1/sync/chunks/known", params={"repo": "secret/a"},
                   json={"params": listing["params"], "ids": [chunk_id]})
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
        r = c.post("/v2/mine/x/blobs/uploads/")
        assert r.status_code == 202, r.text
        upload_id = r.headers["Location"].rsplit("/", 1)[1]
        r = c.post(f"/connreg/v1/sync/uploads/{upload_id}",
                   params={"repo": "mine/x", "offset": 0},
                   content=plan.encode([plan.Copy(chunk_id, length)]))
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "CHUNK_UNKNOWN"


def test_parent_without_delta_receives_whole_blobs(tmp_path):
    h = Hierarchy(tmp_path)
    try:
        root = h.start_root()
        root.env["CONNREG_DELTA"] = "false"
        root.restart()
        h.create("store4", "ReadWrite", ["up/*"])
        edge = h.start_child("store4")
        data = os.urandom(6 * MiB)
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            push_artifact(c, "up/whole", "v1", data)
        wait_for(lambda: blob_at(root, "up/whole", sha256(data)) == data, 60,
                 message="blob at the root")
        log = edge.log()
        assert f"whole-blob push of {sha256(data)[:19]}" in log
        assert "by chunks" not in log
        r = httpx.post(f"{root.url}/connreg/v1/sync/chunks/known", params={"repo": "up/whole"},
                       json={"params": "x", "ids": []}, auth=root.admin)
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NOT_FOUND"
    finally:
        h.stop_all()
