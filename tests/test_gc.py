"""Garbage collection against real `connreg serve` processes (docs/gc.md).

What is deleted is checked on disk (`store/blobs`), what stays is checked by pulling it, and the
change feed is checked for GC deletions (there must be none). The race test pushes images that
share blobs with deleted ones while GC runs over and over with no grace period, then pulls
every manifest and every blob it references.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from connreg.testing import start_node
from connreg.testing.hierarchy import cli, wait_for
from connreg.testing.oci import (OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, descriptor, make_image,
                                 random_layer, sha256)
from helpers import push_blob, push_image

PASSWORD = "gc-test-admin-password-0123456789"
RACE_SECONDS = 3.0


def blob_file(node, digest: str) -> Path:
    algorithm, hex_ = digest.split(":", 1)
    return node.data_dir / "store" / "blobs" / algorithm / hex_[:2] / hex_


def manifest_of(config: bytes, layers: list[bytes], subject: dict | None = None) -> bytes:
    doc: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": descriptor(OCI_CONFIG, config),
                 "layers": [descriptor(OCI_LAYER_GZIP, layer) for layer in layers]}
    if subject is not None:
        doc["subject"] = subject
    return json.dumps(doc).encode()


def put_manifest(client: httpx.Client, repo: str, ref: str, body: bytes,
                 media_type: str = OCI_MANIFEST) -> httpx.Response:
    return client.put(f"/v2/{repo}/manifests/{ref}", content=body,
                      headers={"Content-Type": media_type})


def gc(client: httpx.Client, **options) -> dict:
    r = client.post("/connreg/v1/gc", json=options)
    assert r.status_code == 200, r.text
    return r.json()


def change_feed(client: httpx.Client) -> list[dict]:
    r = client.get("/connreg/v1/sync/changes", params={"cursor": 0, "limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["changes"]


def assert_pullable(client: httpx.Client, repo: str, reference: str) -> None:
    """The manifest and every blob it references can be read, and hash to their digests."""
    r = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, f"{repo}:{reference}: {r.status_code} {r.text}"
    doc = r.json()
    for desc in [doc["config"], *doc["layers"]]:
        blob = client.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert blob.status_code == 200, f"{repo}@{reference} lost {desc['digest']}"
        assert sha256(blob.content) == desc["digest"]


@pytest.fixture
def node(tmp_path):
    n = start_node(tmp_path / "node", admin_password=PASSWORD)
    yield n
    n.stop()


@pytest.fixture
def client(node):
    with httpx.Client(base_url=node.url, auth=node.admin, timeout=60) as c:
        yield c


def test_gc_frees_a_deleted_images_blobs_and_keeps_shared_ones(node, client):
    shared, only_a, only_b = random_layer(3000), random_layer(4000), random_layer(5000)
    config_a, config_b = b'{"a":1}', b'{"b":1}'
    for blob in (shared, only_a, config_a):
        push_blob(client, "team/a", blob)
    for blob in (shared, only_b, config_b):
        push_blob(client, "team/b", blob)
    manifest_a = manifest_of(config_a, [shared, only_a])
    manifest_b = manifest_of(config_b, [shared, only_b])
    assert put_manifest(client, "team/a", "v1", manifest_a).status_code == 201
    assert put_manifest(client, "team/b", "v1", manifest_b).status_code == 201
    lone_bytes = random_layer(2000)
    lone = push_blob(client, "team/c", lone_bytes)  # uploaded, never referenced

    # nothing is garbage yet, and the grace period protects the fresh unreferenced blob
    report = gc(client)
    assert (report["blobs"], report["manifests"]) == (0, 0), report
    assert blob_file(node, lone).exists()

    assert client.delete(f"/v2/team/a/manifests/{sha256(manifest_a)}").status_code == 202
    feed_before = change_feed(client)
    gone = [sha256(only_a), sha256(config_a), sha256(manifest_a), lone]

    preview = gc(client, gracePeriodSeconds=0, dryRun=True)
    assert preview["dryRun"] and preview["blobs"] == 4, preview
    assert all(blob_file(node, d).exists() for d in gone), "a dry run deleted something"

    report = gc(client, gracePeriodSeconds=0)
    assert report["blobs"] == 4 and report["blobLinks"] == 4, report
    assert report["bytes"] == sum(len(b) for b in (only_a, config_a, manifest_a, lone_bytes))
    for digest in gone:
        assert not blob_file(node, digest).exists(), f"{digest} still on disk"
    assert blob_file(node, sha256(shared)).exists()
    assert_pullable(client, "team/b", "v1")
    assert client.get(f"/v2/team/a/blobs/{sha256(only_a)}").status_code == 404
    assert report["repositories"] == ["team/a", "team/c"]  # nothing left in them
    assert client.get("/v2/_catalog").json()["repositories"] == ["team/b"]

    # local housekeeping: GC wrote nothing to the change feed (children, outbox)
    assert change_feed(client) == feed_before
    assert gc(client, gracePeriodSeconds=0)["blobs"] == 0  # nothing left to take


def test_untagged_manifests_go_after_the_retention_with_their_referrers(node, client):
    tagged = make_image([2000])
    untagged = make_image([2100])
    push_image(client, "team/app", tagged, "v1")
    push_image(client, "team/app", untagged, untagged.digest)
    # a signature of each: the tagged image's stays with it, the other's goes with its subject
    sig_kept = make_image([100], subject=descriptor(OCI_MANIFEST, tagged.manifest))
    sig_gone = make_image([110], subject=descriptor(OCI_MANIFEST, untagged.manifest))
    push_image(client, "team/app", sig_kept, sig_kept.digest)
    push_image(client, "team/app", sig_gone, sig_gone.digest)
    # an untagged platform image listed by a tagged index stays
    platform = make_image([2200])
    push_image(client, "team/app", platform, platform.digest)
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [descriptor(OCI_MANIFEST, platform.manifest,
                                                 platform={"architecture": "amd64",
                                                           "os": "linux"})]}).encode()
    assert put_manifest(client, "team/app", "multi", index,
                        "application/vnd.oci.image.index.v1+json").status_code == 201

    time.sleep(1.5)  # every manifest is now older than the 1 s retention used below
    report = gc(client, gracePeriodSeconds=0, untaggedRetentionSeconds=0)
    assert report["manifests"] == 0, "retention 0 must keep every manifest"
    assert client.get(f"/v2/team/app/manifests/{untagged.digest}").status_code == 200

    report = gc(client, gracePeriodSeconds=0, untaggedRetentionSeconds=1)
    deleted = {m["digest"]: m["reason"] for m in report["deletedManifests"]}
    assert set(deleted) == {untagged.digest, sig_gone.digest}, report
    assert "untagged" in deleted[untagged.digest]
    assert untagged.digest in deleted[sig_gone.digest]
    for image in (untagged, sig_gone):
        assert client.get(f"/v2/team/app/manifests/{image.digest}").status_code == 404
        assert not blob_file(node, sha256(image.layers[0])).exists()
        assert not blob_file(node, image.digest).exists()
    assert_pullable(client, "team/app", "v1")
    assert_pullable(client, "team/app", sig_kept.digest)
    assert_pullable(client, "team/app", platform.digest)
    assert client.get("/v2/team/app/manifests/multi").status_code == 200
    # GC deletions are not changes: the feed has the pushes and nothing else
    assert {c["op"] for c in change_feed(client)} == {"manifest"}


def test_gc_racing_pushes_leaves_no_dangling_manifest(tmp_path):
    node = start_node(tmp_path / "node", args=["--no-auth"])
    try:
        with httpx.Client(base_url=node.url, timeout=60) as c:
            # deleted images whose blobs the pushes below share: garbage the moment GC runs
            pool = [random_layer(4000 + i) for i in range(12)]
            for i in range(0, len(pool), 2):
                config = json.dumps({"old": i}).encode()
                for blob in (config, *pool[i:i + 2]):
                    push_blob(c, "race/old", blob)
                old = manifest_of(config, pool[i:i + 2])
                assert put_manifest(c, "race/old", f"x{i}", old).status_code == 201
                assert c.delete(f"/v2/race/old/manifests/{sha256(old)}").status_code == 202
        pushed = _race(node, pool)
        with httpx.Client(base_url=node.url, timeout=60) as c:
            assert pushed, "no push succeeded"
            for repo, tag in pushed:
                assert_pullable(c, repo, tag)
            gc(c, gracePeriodSeconds=0)  # once more, quietly: still nothing referenced goes
            for repo, tag in pushed:
                assert_pullable(c, repo, tag)
        assert "Traceback" not in node.log()
    finally:
        node.stop()


def _race(node, pool: list[bytes], pushers: int = 3, images: int = 8
          ) -> list[tuple[str, str]]:
    """`pushers` threads push `images` images each (shared layers from `pool` plus one of
    their own), retrying those GC got in the way of, while GC runs with no grace period."""
    done = threading.Event()
    pushed: list[tuple[str, str]] = []
    failures: list[str] = []
    gc_runs = [0]
    attempts = [0]

    def collect():
        with httpx.Client(base_url=node.url, timeout=60) as c:
            while not done.is_set():
                r = c.post("/connreg/v1/gc", json={"gracePeriodSeconds": 0})
                if r.status_code != 200:
                    failures.append(f"gc: {r.status_code} {r.text}")
                    return
                gc_runs[0] += 1
                # short random pauses, so pushes also complete between runs, not only lose
                time.sleep(random.uniform(0, 0.25))

    def push(worker: int):
        # at least `images` images, and for at least RACE_SECONDS, so GC runs many times
        # during the pushes however fast this machine is
        until = time.monotonic() + RACE_SECONDS
        with httpx.Client(base_url=node.url, timeout=60) as c:
            for i in range(images * 5):
                if i >= images and time.monotonic() >= until:
                    break
                repo, tag = f"race/w{worker}", f"v{i}"
                layers = [pool[(worker + i) % len(pool)], pool[(worker * 3 + i) % len(pool)],
                          random_layer(1000 + i)]
                config = json.dumps({"worker": worker, "image": i}).encode()
                body = manifest_of(config, layers)
                for _attempt in range(30):
                    attempts[0] += 1
                    ok = True
                    for blob in (config, *layers):
                        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)},
                                   content=blob)
                        if r.status_code != 201:
                            ok = _expected_loss(r, failures)
                            break
                    if ok:
                        r = put_manifest(c, repo, tag, body)
                        if r.status_code == 201:
                            pushed.append((repo, tag))
                            break
                        _expected_loss(r, failures)
                if failures:
                    return

    collector = threading.Thread(target=collect)
    workers = [threading.Thread(target=push, args=(w,)) for w in range(pushers)]
    collector.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    done.set()
    collector.join(60)
    assert not failures, failures[:5]
    assert gc_runs[0] >= 3, f"GC ran only {gc_runs[0]} time(s) during the pushes"
    print(f"{len(pushed)} image(s) pushed in {attempts[0]} attempts, {gc_runs[0]} GC runs")
    return pushed


def _expected_loss(r: httpx.Response, failures: list[str]) -> bool:
    """A push that lost a blob to GC (possible only with no grace period) is refused with a
    4xx naming it; anything else is a failure."""
    codes = [e["code"] for e in r.json().get("errors", [])] if r.content else []
    if r.status_code == 400 and codes and codes[0] in ("MANIFEST_BLOB_UNKNOWN",
                                                       "BLOB_UPLOAD_INVALID"):
        return False
    failures.append(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}")
    return False


def _maintenance_gc(node, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    return subprocess.run([sys.executable, "-m", "connreg", "maintenance", "gc", "--data-dir",
                           str(node.data_dir), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_offline_gc_on_a_stopped_node(node, client):
    image, other = make_image([3000]), make_image([3100])
    push_image(client, "team/a", image, "v1")
    push_image(client, "team/b", other, "v1")
    assert client.delete(f"/v2/team/a/manifests/{image.digest}").status_code == 202
    session = client.post("/v2/team/b/blobs/uploads/")  # a live session stays
    assert session.status_code == 202
    live_id = session.headers["Docker-Upload-UUID"]

    refused = _maintenance_gc(node)
    assert refused.returncode == 1 and "a node is serving" in refused.stderr, refused.stderr

    node.stop()
    stray = node.data_dir / "store" / "uploads" / "abandoned-upload"
    stray.write_bytes(b"x" * 1000)
    staging = node.data_dir / "store" / "tmp" / "leftover.tmp"
    staging.write_bytes(b"y" * 500)
    gone = [image.digest, sha256(image.layers[0]), sha256(image.config)]

    dry = _maintenance_gc(node, "--dry-run", "--output", "json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dryRun"] and report["blobs"] == 3 and report["uploadFiles"] == 1, report
    assert all(blob_file(node, d).exists() for d in gone) and stray.exists() and staging.exists()

    real = _maintenance_gc(node)
    assert real.returncode == 0, real.stderr
    assert "freed 3 blob(s)" in real.stdout, real.stdout
    assert not any(blob_file(node, d).exists() for d in gone)
    assert not stray.exists() and not staging.exists()
    assert (node.data_dir / "store" / "uploads" / live_id).exists()

    node.start()
    assert_pullable(client, "team/b", "v1")
    assert client.get(f"/v2/team/b/blobs/uploads/{live_id}").status_code == 204


def test_gc_api_needs_the_admin(node):
    anonymous = httpx.post(f"{node.url}/connreg/v1/gc", json={"dryRun": True})
    assert anonymous.status_code == 401
    bad = httpx.post(f"{node.url}/connreg/v1/gc", json={"gracePeriodSeconds": -1},
                     auth=node.admin)
    assert bad.status_code == 400 and "gracePeriodSeconds" in bad.text

    # `connreg gc run|status` call the same API as the node's admin
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    env.update(CONNREG_REGISTRY=node.url, CONNREG_USERNAME="admin", CONNREG_PASSWORD=PASSWORD)
    run = subprocess.run([sys.executable, "-m", "connreg", "gc", "run", "--dry-run", "-o", "json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and json.loads(run.stdout)["dryRun"] is True, run.stderr
    status = subprocess.run([sys.executable, "-m", "connreg", "gc", "status"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "0 0 * * *" in status.stdout, status.stderr
    assert "Last run" in status.stdout


# --- the two races, step by step (in process, deterministic) ------------------------------------

def _collect_file(reg, digest: str):
    """What the sweep does to an unreferenced blob in its checked transaction: drop the file."""
    def remove(d: str) -> int | None:
        size = reg.blobs.size(d)
        return size if reg.blobs.delete(d) else None
    return remove


async def test_manifest_validated_before_gc_took_its_blob_is_not_recorded(tmp_path):
    from connreg.config import Settings
    from connreg.registry import Registry
    from connreg.storage import ManifestRecord
    from connreg.storage.interfaces import ReferencesGone

    reg = Registry(Settings(data_dir=tmp_path / "node"))
    try:
        layer = reg.blobs.put_bytes(b"layer bytes")
        await reg.meta.link_blob("r", layer, 11)
        body = manifest_of(b"{}", [b"layer bytes"])
        manifest = reg.blobs.put_bytes(body)
        # the PUT has validated that the layer is linked; now GC unlinks and deletes it ...
        assert await reg.meta.gc_unlink_blobs("r", [layer], time.time() + 1) == [layer]
        assert [f[0] for f in await reg.meta.gc_delete_blobs([layer], _collect_file(reg, layer))
                ] == [layer]
        # ... so the manifest's transaction refuses it instead of recording a dangling manifest
        with pytest.raises(ReferencesGone):
            await reg.meta.put_manifest(ManifestRecord("r", manifest, OCI_MANIFEST, len(body)),
                                        [layer], "v1")
        assert reg.meta.get_manifest("r", manifest) is None
    finally:
        reg.close()


async def test_deduplicated_upload_racing_the_sweep_never_links_a_missing_file(tmp_path):
    from connreg.config import Settings
    from connreg.content import store_manifest
    from connreg.registry import Registry
    from connreg.storage.interfaces import BlobGone

    reg = Registry(Settings(data_dir=tmp_path / "node"))
    try:
        # an old unreferenced copy exists, so an upload of the same bytes is deduplicated ...
        old = reg.blobs.put_bytes(b"same bytes")
        # ... GC deletes that copy before the upload's link is written ...
        await reg.meta.gc_delete_blobs([old], _collect_file(reg, old))
        # ... and the link refuses (the client is told to upload again), never dangles
        with pytest.raises(BlobGone):
            await reg.meta.link_blob("r", old, 10)
        assert reg.meta.linked_blob_size("r", old) is None

        # a manifest's own bytes lost the same way are simply stored again
        config = reg.blobs.put_bytes(b"{}")
        await reg.meta.link_blob("r", config, 2)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": descriptor(OCI_CONFIG, b"{}"), "layers": []}).encode()
        real_put = reg.meta.put_manifest
        raced = []

        async def put_after_gc(record, *args, **kwargs):
            if not raced:  # GC removes the (unreferenced) bytes just before the transaction
                raced.append(await reg.meta.gc_delete_blobs([record.digest],
                                                            _collect_file(reg, record.digest)))
            return await real_put(record, *args, **kwargs)

        reg.meta.put_manifest = put_after_gc
        digest, _ = await store_manifest(reg, "r", "v1", body, OCI_MANIFEST)
        assert raced and raced[0], "the race was not staged"
        assert reg.blobs.exists(digest) and reg.meta.resolve_tag("r", "v1") == digest
    finally:
        reg.close()


# --- connected registries -------------------------------------------------------------------------

def test_edge_gc_follows_its_resource_and_keeps_its_unpushed_outbox(hierarchy):
    root = hierarchy.root
    hierarchy.create("gcedge", "ReadWrite", ["team/*"])
    edge = hierarchy.start_child("gcedge")
    with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
        status = c.get("/connreg/v1/gc")
        assert status.status_code == 200, status.text  # answers on a connected registry
        assert status.json()["schedule"] == "0 0 * * *"  # the resource's default
        cli(root, "connected-registry", "update", "--name", "gcedge",
            "--gc-schedule", "30 3 * * *")
        wait_for(lambda: c.get("/connreg/v1/gc").json()["schedule"] == "30 3 * * *", 60,
                 message="the edge to take the resource's new gcSchedule")
        cli(root, "connected-registry", "update", "--name", "gcedge", "--gc-enabled", "false")
        wait_for(lambda: c.get("/connreg/v1/gc").json()["schedule"] is None, 60,
                 message="the edge to turn its automatic GC off")

        root.stop()  # what the edge stores now waits in its outbox
        image = make_image([1500])
        push_image(c, "team/app", image, image.digest)
        time.sleep(1.5)  # older than the 1 s retention below
        report = gc(c, gracePeriodSeconds=0, untaggedRetentionSeconds=1)
        assert report["manifests"] == 0, report
        assert_pullable(c, "team/app", image.digest)


def test_root_collects_on_its_gc_schedule(tmp_path):
    # Every minute, with the node's clock placed a few seconds before a minute starts (the
    # test-only clock offset), so the first scheduled run comes soon after the delete below.
    now = time.time()
    offset = 60 - (now % 60) - 10
    node = start_node(tmp_path / "node", args=["--no-auth"], env={
        "CONNREG_GC_SCHEDULE": "* * * * *", "CONNREG_GC_GRACE_SECONDS": "0",
        "CONNREG_TEST_CLOCK_OFFSET_SECONDS": str(offset)})
    try:
        with httpx.Client(base_url=node.url, timeout=60) as c:
            image = make_image([2500])
            push_image(c, "team/app", image, "v1")
            assert c.delete(f"/v2/team/app/manifests/{image.digest}").status_code == 202
            layer = blob_file(node, sha256(image.layers[0]))
            assert layer.exists()
            wait_for(lambda: not layer.exists(), 150, interval=0.5,
                     message="a scheduled run to collect the deleted image's layer")
            last = c.get("/connreg/v1/gc").json()
            assert last["schedule"] == "* * * * *" and last["lastRun"]["blobs"] >= 1, last
    finally:
        node.stop()


async def test_links_from_before_the_linked_column_count_as_old(tmp_path):
    import sqlite3

    from connreg.storage.sqlite_metadata import SqliteMetadataStore

    path = tmp_path / "metadata.sqlite"
    old = sqlite3.connect(path)  # the repo_blobs table as earlier versions created it
    old.executescript("""
        CREATE TABLE repo_blobs (repo TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
                                 PRIMARY KEY (repo, digest)) WITHOUT ROWID;
        INSERT INTO repo_blobs VALUES ('r', 'sha256:' || hex(randomblob(32)), 5);""")
    old.commit()
    old.close()
    meta = SqliteMetadataStore(path)
    try:
        snap = meta.gc_snapshot(None, "parent")
        assert [(repo, size, linked) for repo, _, size, linked in snap.links] == [("r", 5, 0)]
        digest = snap.links[0][1]
        assert await meta.gc_unlink_blobs("r", [digest], time.time() - 3600) == [digest]
    finally:
        meta.close()
    SqliteMetadataStore(path).close()  # opening it again is a no-op


def test_space_freed_by_gc_is_given_back_to_the_disk_budget(tmp_path):
    node = start_node(tmp_path / "node", args=["--no-auth"],
                      env={"CONNREG_MAX_STORE_BYTES": str(400_000)})
    try:
        with httpx.Client(base_url=node.url, timeout=60) as c:
            old, new = make_image([250_000]), make_image([250_000])
            push_image(c, "team/app", old, "v1")
            assert c.delete(f"/v2/team/app/manifests/{old.digest}").status_code == 202
            full = c.post("/v2/team/app/blobs/uploads/", params={"digest": sha256(new.layers[0])},
                          content=new.layers[0])
            assert full.status_code == 507, full.text  # the deleted image still holds the space
            assert gc(c, gracePeriodSeconds=0)["bytes"] >= 250_000
            push_image(c, "team/app", new, "v2")  # accepted again, no restart
            assert_pullable(c, "team/app", "v2")
    finally:
        node.stop()


async def test_manifests_spread_over_many_transactions_all_go_in_one_run(tmp_path, monkeypatch):
    """Indexes go before what they list and referrers with their subject, however the
    deletions are split into transactions."""
    import trio

    from connreg.config import Settings
    from connreg.content import store_manifest
    from connreg.gc import collector
    from connreg.registry import Registry

    monkeypatch.setattr(collector, "MANIFESTS_PER_TRANSACTION", 2)
    reg = Registry(Settings(data_dir=tmp_path / "node"))
    try:
        config = reg.blobs.put_bytes(b"{}")
        await reg.meta.link_blob("r", config, 2)

        async def put(doc: dict, media_type: str = OCI_MANIFEST) -> str:
            body = json.dumps({"schemaVersion": 2, "mediaType": media_type, **doc}).encode()
            return (await store_manifest(reg, "r", sha256(body), body, media_type))[0]

        images = [await put({"config": descriptor(OCI_CONFIG, b"{}"), "layers": [],
                             "annotations": {"n": str(i)}}) for i in range(4)]
        index_type = "application/vnd.oci.image.index.v1+json"
        size = {d: reg.meta.get_manifest("r", d).size for d in images}  # descriptors must match
        index = await put({"manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "size": size[d]}
                                         for d in images[:3]]}, index_type)
        subject = {"mediaType": OCI_MANIFEST, "digest": images[3], "size": size[images[3]]}
        referrers = [await put({"config": descriptor(OCI_CONFIG, b"{}"), "layers": [],
                                "subject": subject, "annotations": {"r": str(i)}})
                     for i in range(3)]
        await trio.sleep(0.05)
        report = await collector.GarbageCollector(reg).collect(0.0, 0.01)
        assert report.manifest_count == 8, report.to_json()
        assert all(reg.meta.get_manifest("r", d) is None for d in [*images, index, *referrers])
    finally:
        reg.close()
