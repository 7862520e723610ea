"""Delta transfer upward, between real nodes: a ReadWrite connected registry pushes a large blob
to its parent by sending only the chunks the parent lacks; the push survives the parent's
kill -9; the parent's endpoints refuse bad plans without touching the session; a parent
without delta still receives the blob whole."""

from __future__ import annotations

import os
import random
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


def _blob_at_root(root) -> tuple[httpx.Client, bytes, dict]:
    """An admin client of the root, a random 2 MiB blob pushed to data/a, and its chunk list."""
    data = os.urandom(2 * MiB)
    c = httpx.Client(base_url=root.url, auth=root.admin, timeout=60)
    push_blob(c, "data/a", data)
    listing = c.get("/connreg/v1/sync/chunks",
                    params={"repo": "data/a", "digest": sha256(data)}).json()
    return c, data, listing


def test_bad_plans_are_refused_and_change_nothing(hierarchy):
    root = hierarchy.root
    c, data, listing = _blob_at_root(root)
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


def scattered_edits(v1: bytes, seed: int, edits: int = 60, edit: int = 2048) -> bytes:
    """One `edit`-byte random edit in each of `edits` equal strata: scattered, never
    overlapping."""
    rng = random.Random(seed)
    v2 = bytearray(v1)
    stratum = len(v1) // edits
    for k in range(edits):
        at = k * stratum + rng.randrange(0, stratum - edit)
        v2[at:at + edit] = os.urandom(edit)
    return bytes(v2)


def test_small_edits_go_up_at_about_their_size(hierarchy):
    """The upward twin of test_delta.test_small_edits_cost_about_their_size: a run of chunks
    the parent lacks is refined into ~4 KiB sub-chunks found in the parent's old version."""
    root = hierarchy.root
    v1 = os.urandom(12 * MiB)
    edge, before = child_with_v1(hierarchy, "store6", "up/fw", v1, mode="ReadWrite")
    edits, edit = 60, 2048
    v2 = scattered_edits(v1, seed=6, edits=edits, edit=edit)
    with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
        push_artifact(c, "up/fw", "v2", v2)
    wait_for(lambda: httpx.get(f"{root.url}/v2/up/fw/manifests/v2", auth=root.admin,
                               timeout=10).status_code == 200, 60, message="v2 at the root")
    assert blob_at(root, "up/fw", sha256(v2)) == v2
    sent = child_bytes(root, "store6") - before
    changed = edits * edit
    print(f"\nv2 up: {sent} bytes on the wire for {changed} bytes changed "
          f"({sent / changed:.2f}x; {100 * sent / len(v2):.2f}% of the blob)")
    # 64 KiB chunks alone would send >= 60 x 64 KiB = 3.75 MiB (31% of the blob)
    assert sent < 8 * changed
    refined = re.search(rf"pushed {sha256(v2)[:19]} by chunks: .*\((\d+) runs refined\)",
                        edge.log())
    assert refined and int(refined.group(1)) > 0, edge.log()[-3000:]


def _blake3(data: bytes) -> str:
    return _core.digest_bytes(data, "blake3").split(":")[1]


def test_refinement_requests_are_checked_and_change_nothing(hierarchy):
    """`chunks/near` answers where the parent's old stretch holds sub-chunks; `ref` plan
    entries are resolved, range-checked and BLAKE3-verified before anything is appended."""
    root = hierarchy.root
    c, data, listing = _blob_at_root(root)
    chunks = listing["chunks"]
    sub_key = "fastcdc-blake3:1024:4096:16384"
    sub = _core.ChunkParams(1024, 4096, 16384)
    stranger = "cd" * 32

    def near(doc: dict) -> httpx.Response:
        return c.post("/connreg/v1/sync/chunks/near", params={"repo": "data/b"}, json=doc)

    # Between two chunks: the old stretch is the chunk in between; deltas from `before`.
    (b_off, b_len, b_id), (s, n, _), (a_off, _, a_id) = chunks[3:6]
    old = _core.chunk_bytes(data[s:s + n], sub)
    ids = [cid for _, _, cid in old] + [stranger]
    r = near({"params": sub_key, "before": b_id, "after": a_id, "length": n, "ids": ids})
    assert r.status_code == 200, r.text
    assert r.json() == {"anchor": b_id, "at": [s + o - b_off for o, _, _ in old] + [None]}
    # A run at the start (no `before`): from the blob's start to `after`, deltas negative.
    first = _core.chunk_bytes(data[:chunks[1][0]], sub)
    r = near({"params": sub_key, "before": None, "after": chunks[1][2], "length": 100_000,
              "ids": [first[-1][2]]})
    assert r.json() == {"anchor": chunks[1][2], "at": [first[-1][0] - chunks[1][0]]}
    # A run at the end (no `after`): from `before` to the blob's end.
    last = _core.chunk_bytes(data[chunks[-1][0]:], sub)
    r = near({"params": sub_key, "before": chunks[-2][2], "after": None, "length": 100_000,
              "ids": [last[0][2]]})
    assert r.json() == {"anchor": chunks[-2][2], "at": [chunks[-1][0] - chunks[-2][0]]}
    # No old stretch: an unknown neighbour, or one much longer than the run.
    r = near({"params": sub_key, "before": stranger, "after": None, "length": n, "ids": ids})
    assert r.json() == {"anchor": None, "at": [None] * len(ids)}
    r = near({"params": sub_key, "before": chunks[0][2], "after": None, "length": 1000,
              "ids": ids})
    assert r.json() == {"anchor": None, "at": [None] * len(ids)}
    # Bad parameters and bodies: OCI errors.
    good = {"params": sub_key, "before": b_id, "after": a_id, "length": n, "ids": ids}
    for params in ["fastcdc-blake3:1024:3000:9000", "fastcdc-blake3:64:256:1024", "nonsense",
                   None]:
        r = near({**good, "params": params})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "CHUNK_PARAMS_MISMATCH"
    for bad in [{"before": None, "after": None}, {"ids": ["not hex"]}, {"length": 0},
                {"length": "1"}, {"before": "ab"}, {"ids": None}]:
        r = near({**good, **bad})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "INVALID", bad
    r = c.post("/connreg/v1/sync/chunks/near", params={"repo": "data/b"}, content=b"{")
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "INVALID"

    # Ref entries in a plan.
    r = c.post("/v2/data/b/blobs/uploads/")
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    url = f"/connreg/v1/sync/uploads/{upload_id}"

    def size() -> int:
        r = c.get(f"/v2/data/b/blobs/uploads/{upload_id}")
        return int(r.headers["Range"].split("-")[1]) + 1

    def send(entries: list, offset: int) -> httpx.Response:
        return c.post(url, params={"repo": "data/b", "offset": offset},
                      content=entries if isinstance(entries, bytes) else plan.encode(entries))

    def ref(anchor: str, anchor_off: int, delta: int, length: int) -> plan.Ref:
        at = anchor_off + delta
        return plan.Ref(anchor, delta, length, _blake3(data[at:at + length]))

    # Not on chunk boundaries, before and after the anchor.
    entries = [ref(b_id, b_off, b_len + 10, 5000), ref(a_id, a_off, -7000, 300)]
    r = send(entries, 0)
    assert r.status_code == 202, r.text
    assembled = data[b_off + b_len + 10:b_off + b_len + 5010] + data[a_off - 7000:a_off - 6700]
    assert size() == len(assembled)

    def refused(r: httpx.Response, code: str) -> None:
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["code"] == code
        assert size() == len(assembled)

    ok = _literal(b"fine")  # a good entry first: nothing at all is appended
    refused(send([ok, plan.Ref(stranger, 0, 10, _blake3(b"x" * 10))], len(assembled)),
            "CHUNK_UNKNOWN")
    # ranges past the end or before the start of the anchor's blob
    refused(send([ok, plan.Ref(b_id, len(data) - b_off - 10, 11, stranger)], len(assembled)),
            "CHUNK_UNKNOWN")
    refused(send([ok, plan.Ref(b_id, -b_off - 1, 10, _blake3(b"\0" + data[:9]))],
                 len(assembled)), "CHUNK_UNKNOWN")
    wrong = ref(b_id, b_off, 0, 1000)  # BLAKE3 mismatch: the id of other bytes
    refused(send([ok, plan.Ref(b_id, 1, 1000, wrong.chunk_id)], len(assembled)),
            "DIGEST_INVALID")
    body = plan.encode([ok, wrong])
    refused(send(body[:-1], len(assembled)), "INVALID")
    zero = plan.encode([plan.Ref(b_id, 0, 1, wrong.chunk_id)])
    refused(send(zero[:41] + struct.pack("<I", 0) + zero[45:], len(assembled)), "INVALID")
    r = send([ok, wrong], len(assembled))
    assert r.status_code == 202, r.text
    assembled += b"fine" + data[b_off:b_off + 1000]
    r = c.put(f"/v2/data/b/blobs/uploads/{upload_id}", params={"digest": sha256(assembled)})
    assert r.status_code == 201, r.text
    c.close()

    # A sync token that may not pull data/*: nothing is near, no ref resolves.
    hierarchy.create("store7", "ReadWrite", ["mine/*"])
    settings = cli(root, "connected-registry", "get-settings", "--name", "store7",
                   "--parent-protocol", "http", "--yes")
    auth = (settings["syncTokenName"], settings["syncTokenPassword"])
    with httpx.Client(base_url=root.url, auth=auth, timeout=60) as t:
        r = t.post("/connreg/v1/sync/chunks/near", params={"repo": "mine/x"}, json=good)
        assert r.status_code == 200 and r.json() == {"anchor": None, "at": [None] * len(ids)}
        r = t.post("/connreg/v1/sync/chunks/near", params={"repo": "data/b"}, json=good)
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
        upload_id = t.post("/v2/mine/x/blobs/uploads/").headers["Location"].rsplit("/", 1)[1]
        r = t.post(f"/connreg/v1/sync/uploads/{upload_id}",
                   params={"repo": "mine/x", "offset": 0},
                   content=plan.encode([ref(b_id, b_off, b_len, 100)]))
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "CHUNK_UNKNOWN"
