"""The batched upload (`POST /connreg/v1/sync/upload`, issue 13): bad input is refused with OCI
errors and nothing of it stored, refusals about one object are answered per object, a full disk
is a 507; a ReadWrite edge sends its outbox through it (no ordinary blob upload at all), and
after a kill -9 of the parent mid-batch or of the edge mid-push everything arrives, whole, each
tag where its last push put it."""

from __future__ import annotations

import json
import signal

import httpx

from connreg import _core
from connreg.sync import upload_batch_format as fmt
from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.oci import OCI_INDEX, OCI_MANIFEST, make_image, make_index, sha256
from helpers import error_codes, push_image

UPLOAD = "/connreg/v1/sync/upload"
MISSING = "/connreg/v1/sync/blobs/missing"
KiB = 1024


def _frame(records: list[tuple[str, str, bytes, str | None]], size_of=None) -> bytes:
    """(repo, digest, bytes, media type) → the request body."""
    return fmt.encode([(fmt.header(repo, digest, len(data) if size_of is None else size_of,
                                   media_type), data)
                       for repo, digest, data, media_type in records], 3)


def _post(c: httpx.Client, body: bytes) -> httpx.Response:
    return c.post(UPLOAD, content=body, headers={"Content-Type": fmt.MEDIA_TYPE})


def _image_records(repo: str, image) -> list:
    return [(repo, sha256(b), b, None) for b in image.blobs()] + \
        [(repo, image.digest, image.manifest, OCI_MANIFEST)]


def _stored_anywhere(admin: httpx.Client, digest: str) -> bool:
    """Whether the root's blob store holds `digest` at all (linked in any repository or not):
    the bulk presence check says "missing" only when it does not."""
    r = admin.post(MISSING, json={"blobs": [["probe/none", digest]], "manifests": []})
    assert r.status_code == 200, r.text
    return r.json()["blobs"] != ["missing"]


def _sync_token(root, name: str) -> tuple[str, str]:
    doc = cli(root, "connected-registry", "get-settings", "--name", name,
              "--parent-protocol", "http", "--yes")
    parts = dict(p.split("=", 1) for p in doc["connectionString"].split(";") if "=" in p)
    return parts["SyncTokenName"], parts["SyncTokenPassword"]


def test_upload_batch_refuses_bad_input_stores_nothing_and_answers_per_object(tmp_path):
    h = Hierarchy(tmp_path, env={"CONNREG_SYNC_BATCH_MAX_OBJECTS": "8",
                                 "CONNREG_SYNC_BATCH_MAX_BYTES": str(96 * KiB)})
    try:
        root = h.start_root()
        h.create("upbatch", "ReadWrite", ["ub/*"])
        token = _sync_token(root, "upbatch")
        admin = httpx.Client(base_url=root.url, auth=root.admin, timeout=60)
        c = httpx.Client(base_url=root.url, auth=token, timeout=60)
        with admin, c:
            # Accepted: blobs, then the manifest referencing them, stored with the child's origin.
            image = make_image([20 * KiB, 10 * KiB])
            r = _post(c, _frame(_image_records("ub/app", image)))
            assert r.status_code == 200, r.text
            assert r.json() == {"objects": [{"status": 201}] * 4}
            got = admin.get(f"/v2/ub/app/manifests/{image.digest}",
                            headers={"Accept": OCI_MANIFEST})
            assert got.status_code == 200 and got.content == image.manifest
            for blob in image.blobs():
                assert admin.get(f"/v2/ub/app/blobs/{sha256(blob)}").content == blob
            feed = admin.get("/connreg/v1/sync/changes", params={"cursor": 0}).json()["changes"]
            assert [(ch["repo"], ch["digest"]) for ch in feed] == [("ub/app", image.digest)]
            assert feed[0]["origin"] == "child:upbatch"  # it climbs further up from here

            # Tag moves, each conditional like the pusher's PUT by tag: where the tag is now
            # (null: no such tag), else 412 naming where it is; a manifest not here: 404.
            def move(tag, digest, if_tag_is):
                return ("ub/app", digest, fmt.tag_header("ub/app", tag, digest, if_tag_is))

            def moves(*records):
                body = fmt.encode([(hdr, b"") for _, _, hdr in records], 3)
                r = _post(c, body)
                assert r.status_code == 200, r.text
                return r.json()["objects"]

            assert moves(move("v1", image.digest, None)) == [{"status": 201}]
            assert admin.head("/v2/ub/app/manifests/v1").headers["Docker-Content-Digest"] \
                == image.digest
            unknown = "sha256:" + "1" * 64
            got = moves(move("v1", image.digest, unknown), move("v2", image.digest, None),
                        move("v3", unknown, None))
            assert [a["status"] for a in got] == [412, 201, 404]
            assert got[0]["errors"][0]["code"] == "PRECONDITION_FAILED"
            assert got[0]["errors"][0]["detail"]["current"] == image.digest
            assert got[2]["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            assert admin.head("/v2/ub/app/manifests/v3").status_code == 404
            r = _post(c, fmt.encode([(fmt.tag_header("ub/app", "-bad", image.digest, None), b"")],
                                    3))
            assert r.status_code == 400 and error_codes(r) == ["TAG_INVALID"], r.text

            # Per object: a repository outside the token's scope, a manifest whose blob is
            # absent; the object between them is stored.
            fresh, other = make_image([8 * KiB]), make_image([9 * KiB])
            r = _post(c, _frame([("elsewhere/x", sha256(fresh.layers[0]), fresh.layers[0], None),
                                 ("ub/app", sha256(other.layers[0]), other.layers[0], None),
                                 ("ub/app", other.digest, other.manifest, OCI_MANIFEST)]))
            assert r.status_code == 200, r.text
            answers = r.json()["objects"]
            assert [a["status"] for a in answers] == [403, 201, 400]
            assert answers[0]["errors"][0]["code"] == "DENIED"
            assert answers[2]["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
            assert sha256(other.config) in json.dumps(answers[2]["errors"][0]["detail"])
            assert not _stored_anywhere(admin, sha256(fresh.layers[0]))
            assert admin.head(f"/v2/ub/app/manifests/{other.digest}").status_code == 404

            # A repository locked against writes: none of its objects stored.
            push_image(admin, "ub/locked", make_image([KiB]), "old")
            r = admin.patch("/connreg/v1/locks", json={"repository": "ub/locked",
                                                       "writeEnabled": False})
            assert r.status_code == 200, r.text
            locked = make_image([7 * KiB])
            r = _post(c, _frame(_image_records("ub/locked", locked)))
            assert r.status_code == 200, r.text
            assert {a["status"] for a in r.json()["objects"]} == {405}
            assert "writeEnabled=false" in r.json()["objects"][-1]["errors"][0]["message"]
            for blob in locked.blobs():
                assert not _stored_anywhere(admin, sha256(blob))
            assert admin.head(f"/v2/ub/locked/manifests/{locked.digest}").status_code == 404

            # Refused whole, nothing of the batch stored (`victim` rides along in each).
            before = admin.get("/connreg/v1/sync/changes", params={"cursor": 0}).json()["changes"]
            victim = make_image([11 * KiB])
            v = ("ub/app", sha256(victim.layers[0]), victim.layers[0], None)
            wrong = ("ub/app", sha256(b"other bytes"), b"these bytes", None)
            cases = [
                (_frame([v, wrong]), 400, "DIGEST_INVALID"),  # bytes not matching the digest
                (_frame([v, ("ub/app", "sha256:xyz", b"x", None)]), 400, "DIGEST_INVALID"),
                (_frame([v, ("ub/app", "md5:" + "0" * 32, b"x", None)]), 400, "DIGEST_INVALID"),
                (_frame([v, ("UB/../x", sha256(b"x"), b"x", None)]), 400, "NAME_INVALID"),
                (_frame([v] + [("ub/app", sha256(b"%d" % i), b"%d" % i, None)
                               for i in range(8)]), 400, "INVALID"),  # 9 objects, at most 8
                (_frame([v, ("ub/app", sha256(b"a" * 90 * KiB), b"a" * 90 * KiB, None)]),
                 413, "SIZE_INVALID"),  # 101 KiB of objects, at most 96 KiB
                # The header claims more bytes than follow.
                (_frame([v], size_of=len(v[2]) + 100), 400, "BLOB_UPLOAD_INVALID"),
                # A frame of 4 MiB of zeros decompresses beyond any valid batch (zip bomb).
                (_core.zstd_compress(
                    json.dumps(fmt.header("ub/app", sha256(bytes(4 << 20)), 4 << 20, None))
                    .encode() + b"\n" + bytes(4 << 20), 3), 400, "BLOB_UPLOAD_INVALID"),
                (b"not a zstd frame", 400, "BLOB_UPLOAD_INVALID"),
                (_core.zstd_compress(b"{not json}\n", 3), 400, "BLOB_UPLOAD_INVALID"),
                (_core.zstd_compress(b"", 3), 400, "BLOB_UPLOAD_INVALID"),
                (bytes(200 * KiB), 413, "SIZE_INVALID"),  # the body itself too large
            ]
            for body, status, code in cases:
                r = _post(c, body)
                assert r.status_code == status and error_codes(r) == [code], (status, code, r.text)
                assert not _stored_anywhere(admin, v[1]), (status, code)
            assert "nothing of it stored" in _post(c, _frame([v, wrong])).json()["errors"][0][
                "message"]
            assert httpx.post(f"{root.url}{UPLOAD}", content=_frame([v])).status_code == 401
            feed = admin.get("/connreg/v1/sync/changes", params={"cursor": 0}).json()["changes"]
            assert feed == before  # no change at all

        # A full disk: 507 for the batch, nothing of it stored.
        root.env["CONNREG_MAX_STORE_BYTES"] = "1"
        root.restart()
        with httpx.Client(base_url=root.url, auth=token, timeout=60) as c, \
                httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as admin:
            full = make_image([12 * KiB])
            r = _post(c, _frame(_image_records("ub/app", full)))
            assert r.status_code == 507 and error_codes(r) == ["DENIED"], r.text
            assert "storage budget exhausted" in r.json()["errors"][0]["message"]
            for blob in full.blobs():
                assert not _stored_anywhere(admin, sha256(blob))
            assert admin.head(f"/v2/ub/app/manifests/{full.digest}").status_code == 404
    finally:
        h.stop_all()


def _requests(node, route: str, method: str) -> int:
    text = httpx.get(f"{node.url}/metrics", auth=node.admin, timeout=30).text
    total = 0
    for line in text.splitlines():
        if line.startswith("connreg_http_requests_total{") and f'route="{route}"' in line \
                and f'method="{method}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _digest(node, repo: str, ref: str) -> str | None:
    r = httpx.head(f"{node.url}/v2/{repo}/manifests/{ref}", auth=node.admin, timeout=30,
                   headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


def test_an_edge_sends_its_outbox_in_batches_and_one_refused_entry_is_parked_alone(tmp_path):
    # Small batches: the outbox goes up in several, blobs before the manifests needing them.
    h = Hierarchy(tmp_path, env={"CONNREG_SYNC_BATCH_MAX_OBJECTS": "8"})
    try:
        root = h.start_root()
        h.create("upedge", "ReadWrite", ["ub/*"])
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as admin:
            push_image(admin, "ub/locked", make_image([KiB]), "old")
        edge = h.start_child("upedge")
        # The parent is away while the edge takes its pushes: they wait in the outbox.
        root.stop()
        images = [make_image([16 * KiB + i, 4 * KiB]) for i in range(6)]
        arm, amd = make_image([3 * KiB], "arm64"), make_image([3 * KiB + 1])
        index = make_index([amd, arm], ["amd64", "arm64"])
        locked, last = make_image([5 * KiB]), make_image([2 * KiB])
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            for i, img in enumerate(images):
                push_image(c, "ub/app", img, "moving")  # one tag moved six times
                push_image(c, f"ub/side{i % 3}", img, f"s{i}")
            push_image(c, "ub/multi", amd, "amd")
            push_image(c, "ub/multi", arm, "arm")
            r = c.put("/v2/ub/multi/manifests/both", content=index,
                      headers={"Content-Type": OCI_INDEX})
            assert r.status_code == 201, r.text
            push_image(c, "ub/locked", locked, "x")
            push_image(c, "ub/after", last, "v1")  # after the refused entry in the outbox
        # Meanwhile the root locked one repository against writes.
        edge.stop()
        root.start()
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as admin:
            r = admin.patch("/connreg/v1/locks", json={"repository": "ub/locked",
                                                       "writeEnabled": False})
            assert r.status_code == 200, r.text
        edge.start()
        wait_for(lambda: _digest(root, "ub/after", "v1") == last.digest, 60,
                 message="ub/after:v1 at the root")
        assert _digest(root, "ub/app", "moving") == images[-1].digest
        for i, img in enumerate(images):
            assert _digest(root, f"ub/side{i % 3}", f"s{i}") == img.digest
        assert _digest(root, "ub/multi", "both") == sha256(index)
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as admin:
            for repo, imgs in (("ub/app", images), ("ub/multi", [amd, arm]), ("ub/after", [last])):
                for img in imgs:
                    for blob in img.blobs():
                        assert admin.get(f"/v2/{repo}/blobs/{sha256(blob)}").content == blob
            moves = [ch["digest"] for ch in admin.get(
                "/connreg/v1/sync/changes", params={"cursor": 0, "limit": 1000}).json()["changes"]
                if ch["repo"] == "ub/app" and ch["tag"] == "moving"]
        order = [img.digest for img in images]
        assert moves and [order.index(d) for d in moves] == sorted(order.index(d) for d in moves)
        # Every blob and manifest went up in batches: ordinary blob uploads only for the
        # refused entry, which went the one-by-one way to meet its refusal.
        assert _requests(root, UPLOAD, "POST") >= 1
        assert _requests(root, "v2:upload-start", "POST") == len(locked.blobs())
        # Tags moved in the batches too, but for the tag moved six times in this outbox batch
        # (its moves go one by one, in order) and the refused entry.
        assert _requests(root, "v2:manifest", "PUT") <= len(images) + 1
        # The locked repository's entry alone is parked, with the parent's reason.
        wait_for(lambda: _parked(edge), 30, message="a parked entry at the edge")
        assert [e["repository"] for e in _parked(edge)] == ["ub/locked"], _parked(edge)
        assert "writeEnabled=false" in json.dumps(_parked(edge))
        assert _digest(root, "ub/locked", "x") is None
    finally:
        h.stop_all()


def _parked(node) -> list[dict]:
    r = httpx.get(f"{node.url}/connreg/v1/sync/parked", auth=node.admin, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["parked"]


def _moves_in_order(root, repo: str, tag: str, order: list[str]) -> bool:
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as admin:
        moves = [ch["digest"] for ch in admin.get(
            "/connreg/v1/sync/changes", params={"cursor": 0, "limit": 1000}).json()["changes"]
            if ch["repo"] == repo and ch["tag"] == tag]
    return bool(moves) and [order.index(d) for d in moves] == sorted(order.index(d) for d in moves)


def _arrived_whole(root, repo: str, images, tags: list[str]) -> None:
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as admin:
        for img, tag in zip(images, tags):
            assert _digest(root, repo, tag) == img.digest, tag
            got = admin.get(f"/v2/{repo}/manifests/{img.digest}", headers={"Accept": OCI_MANIFEST})
            assert got.content == img.manifest
            for blob in img.blobs():
                assert admin.get(f"/v2/{repo}/blobs/{sha256(blob)}").content == blob


def test_kill_9_of_the_parent_mid_batch_and_of_the_edge_mid_push_loses_nothing(tmp_path):
    h = Hierarchy(tmp_path)
    try:
        root = h.start_root()
        h.create("upkill", "ReadWrite", ["uk/*"])
        edge = h.start_child("upkill")
        root.env["CONNREG_TEST_KILL_IN_UPLOAD_BATCH"] = "1"
        root.restart()
        # The parent dies in the first batch it takes, after storing its blobs.
        first = [make_image([6 * KiB + i, KiB]) for i in range(4)]
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            for i, img in enumerate(first):
                push_image(c, "uk/app", img, "moving")
                push_image(c, "uk/app", img, f"t{i}")
        wait_for(lambda: root.proc.poll() is not None, 60, message="the parent killed mid-batch")
        assert root.proc.returncode == -signal.SIGKILL
        del root.env["CONNREG_TEST_KILL_IN_UPLOAD_BATCH"]
        root.start()
        wait_for(lambda: _digest(root, "uk/app", "t3") == first[-1].digest, 60,
                 message="uk/app:t3 at the root after its restart")
        wait_for(lambda: _digest(root, "uk/app", "moving") == first[-1].digest, 30,
                 message="uk/app:moving at the root")
        _arrived_whole(root, "uk/app", first, [f"t{i}" for i in range(4)])
        assert _moves_in_order(root, "uk/app", "moving", [img.digest for img in first])

        # The edge dies right after the parent took its first batch, before any tag moved (the
        # parent is away while the edge takes the pushes, so none is cut by the kill).
        root.stop()
        second = [make_image([5 * KiB + i, KiB]) for i in range(3)]
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            for i, img in enumerate(second):
                push_image(c, "uk/app", img, "moving")
                push_image(c, "uk/app", img, f"u{i}")
        edge.stop()
        # Started while the parent is still away (from its recorded activation), so it cannot
        # push, and die, before it is ready; the parent's start then lets its retry through.
        edge.env["CONNREG_TEST_KILL_IN_UPLOAD_BATCH"] = "1"
        edge.start()
        root.start()
        wait_for(lambda: edge.proc.poll() is not None, 60, message="the edge killed mid-push")
        assert edge.proc.returncode == -signal.SIGKILL
        del edge.env["CONNREG_TEST_KILL_IN_UPLOAD_BATCH"]
        edge.start()
        wait_for(lambda: _digest(root, "uk/app", "u2") == second[-1].digest, 60,
                 message="uk/app:u2 at the root after the edge's restart")
        wait_for(lambda: _digest(root, "uk/app", "moving") == second[-1].digest, 30,
                 message="uk/app:moving at the root")
        _arrived_whole(root, "uk/app", second, [f"u{i}" for i in range(3)])
        assert _moves_in_order(root, "uk/app", "moving", [img.digest for img in first + second])
    finally:
        h.stop_all()


async def test_a_tag_the_parent_moved_too_is_a_conflict_through_the_batch(node, tmp_path):
    """§5 through the batch: a tag move conditional on the agreed digest meets the parent's own
    move (412 in the batch answer); the pusher looks, the parent wins, ours stays by digest and
    SYNC_CONFLICT is reported. Without a move at the parent, the batch moves the tag and no
    manifest PUT is sent at all."""
    from connreg.config import Settings
    from connreg.content import store_manifest
    from connreg.registry import Registry
    from connreg.sync.puller import Puller
    from connreg.sync.pusher import Pusher
    from connreg.sync.remote import ParentClient
    from connreg.sync.state import SyncState, last_known_key

    repo = "race/batch"
    v0, ours, theirs, later = (make_image([3000 + i, 500]) for i in range(4))
    with httpx.Client(base_url=node.url, timeout=30) as http:
        push_image(http, repo, v0, "latest")
        push_image(http, repo, v0, "calm")
    reg = Registry(Settings(data_dir=tmp_path / "child"))
    parent = ParentClient(node.url, auth=None)
    try:
        state = SyncState(reg.meta)
        puller = Puller(reg, parent, state)
        pusher = Pusher(reg, parent, state, puller)
        await puller.set_tag(repo, "latest", v0.digest)  # agreed with the parent
        await puller.set_tag(repo, "calm", v0.digest)
        with httpx.Client(base_url=node.url, timeout=30) as http:  # the parent moves latest
            push_image(http, repo, theirs, "latest")
        for img in (ours, later):  # a client pushes here: latest → ours, calm → later
            for blob in img.blobs():
                reg.blobs.put_bytes(blob, sha256(blob))
                await reg.meta.link_blob(repo, sha256(blob), len(blob))
        await store_manifest(reg, repo, "latest", ours.manifest, OCI_MANIFEST)
        await store_manifest(reg, repo, "calm", later.manifest, OCI_MANIFEST)
        puts_before = _requests_open(node, "v2:manifest", "PUT")

        assert await pusher.push_all() == 2
        assert await parent.head_manifest(repo, "latest") == theirs.digest  # the parent won
        assert reg.meta.resolve_tag(repo, "latest") == theirs.digest  # and the child follows
        assert await parent.head_manifest(repo, ours.digest) == ours.digest  # ours by digest
        assert state.get(last_known_key(repo, "latest")) == theirs.digest
        [conflict] = [d for d in state.details if d.code == "SYNC_CONFLICT"]
        assert ours.digest in conflict.description and theirs.digest in conflict.description
        assert await parent.head_manifest(repo, "calm") == later.digest  # moved in the batch
        assert state.get(last_known_key(repo, "calm")) == later.digest
        assert _requests_open(node, "v2:manifest", "PUT") == puts_before
    finally:
        await parent.aclose()
        reg.close()


def _requests_open(node, route: str, method: str) -> int:
    text = httpx.get(f"{node.url}/metrics", timeout=30).text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("connreg_http_requests_total{") and f'route="{route}"' in line
               and f'method="{method}"' in line)
