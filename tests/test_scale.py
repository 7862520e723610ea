"""A scaled root: replicas on PostgreSQL and S3 (`rclone serve s3`) behind nginx
(docs/scaling.md).

A replica is killed (SIGKILL) in the middle of a push and of a pull: the client's retry
through the balancer succeeds on the other replica, and nothing is visible before it is whole.
An edge syncs both ways through the balancer. (The conformance and skopeo suites run through
the balancer too: tests/test_scale_conformance.py, tests/test_scale_skopeo.py.)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import time

import httpx
import psycopg
import pytest

from connreg.testing.hierarchy import ADMIN_PASSWORD, Hierarchy, cli, wait_for
from connreg.testing.node import Node
from connreg.testing.oci import OCI_MANIFEST, make_image
from connreg.storage.postgres_engine import GC_LOCK
from connreg.testing.replicas import ScaledRoot, start_scaled_root
from helpers import push_blob, push_image

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def scaled(tmp_path_factory, postgres_server, s3_store_server) -> ScaledRoot:
    root = start_scaled_root(tmp_path_factory.mktemp("scaled"),
                             postgres_server.create_database("scaled"),
                             blob_store=s3_store_server.url("scaled"),
                             env={"CONNREG_ADMIN_PASSWORD": ADMIN_PASSWORD,
                                  "CONNREG_AUTH_FAILURE_LIMIT": "1000",
                                  **s3_store_server.env()})
    yield root
    root.stop()


def client(root: ScaledRoot) -> httpx.Client:
    return httpx.Client(base_url=root.url, auth=root.admin, timeout=60)


def sending_to_balancer(node: Node) -> bool:
    """Whether the replica has bytes queued on a connection from its listening port (it is in
    the middle of an answer the reader has stopped consuming)."""
    port = f"{node.port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if local.endswith(":" + port) and state == "01" and int(queues.split(":")[0], 16):
                return True
    return False


def restart(root: ScaledRoot, node: Node) -> None:
    node.start(timeout=60)
    root.wait_ready(node)


def test_readyz_names_both_engines(scaled):
    for node in scaled.nodes:
        r = httpx.get(f"{node.url}/readyz", timeout=10)
        assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_replica_killed_during_a_push_the_retry_finishes_elsewhere(scaled):
    """A chunk streams into one replica, which is killed mid-body. The client asks the
    session's status through the balancer (answered by the other replica, from PostgreSQL and
    S3), resumes from there and commits: the blob is exact, and it was never visible
    before the commit. (The chunk is sent to replica 0 directly, as if the balancer had
    chosen it, so the test knows which replica to kill.)"""
    data = os.urandom(24 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    piece = MiB
    streaming, killed = threading.Event(), threading.Event()
    with client(scaled) as c:
        r = c.post("/v2/scale/push/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        upload_id = location.rstrip("/").rsplit("/", 1)[1]

        def body():
            for i in range(0, len(data), piece):
                if i == 4 * piece:
                    streaming.set()
                    killed.wait(60)
                yield data[i:i + piece]

        outcome: dict = {}

        victim = scaled.nodes[0]

        def send():
            try:
                outcome["response"] = httpx.patch(
                    victim.url + location, content=body(), auth=scaled.admin, timeout=60,
                    headers={"Content-Type": "application/octet-stream"})
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        assert streaming.wait(60)  # 4 MiB sent, the rest held back: the request is in flight
        victim.kill()
        killed.set()
        sender.join(60)
        failed = "error" in outcome or outcome["response"].status_code >= 500
        assert failed, "the replica streaming the chunk was killed; its request cannot succeed"
        assert c.head(f"/v2/scale/push/blobs/{digest}").status_code == 404  # nothing visible

        # The client's retry: where does the session stand (what the killed replica stored
        # of the cut chunk — on S3, what it had flushed)? Then the rest, then commit.
        status = c.get(location)
        assert status.status_code == 204, status.text
        end = int(status.headers["Range"].split("-")[1])
        have = end + 1 if end else 0  # "0-0": nothing yet (a 1-byte landing is not a case here)
        assert have < len(data)
        r = c.patch(location, content=data[have:], headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{have}-{len(data) - 1}"})
        assert r.status_code == 202, r.text
        r = c.put(location, params={"digest": digest})
        assert r.status_code == 201, r.text
        got = c.get(f"/v2/scale/push/blobs/{digest}")
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest[7:]
    restart(scaled, victim)


def test_replica_killed_during_a_pull_the_retry_resumes_elsewhere(scaled):
    """A blob download stalls half-way (the reader stops reading); the replica sending it is
    killed. The client resumes with a Range request through the balancer and gets the rest
    from the other replica: the assembled blob matches its digest."""
    data = os.urandom(64 * MiB)  # far more than the socket and proxy buffers on the way hold
    with client(scaled) as c:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = c.post("/v2/scale/pull/blobs/uploads/", params={"digest": digest}, content=data)
        assert r.status_code == 201, r.text
        received = bytearray()
        with c.stream("GET", f"/v2/scale/pull/blobs/{digest}") as r:
            assert r.status_code == 200
            stream = r.iter_bytes(256 * 1024)
            for chunk in stream:
                received += chunk
                if len(received) >= 4 * MiB:
                    break
            senders: list[Node] = []
            wait_for(lambda: senders.extend(n for n in scaled.nodes if sending_to_balancer(n))
                     or senders, 30, message="a replica blocked sending the blob")
            victim = senders[0]
            victim.kill()
            with pytest.raises(httpx.HTTPError):
                for chunk in stream:
                    received += chunk
        assert len(received) < len(data)
        # the retry: the rest, from wherever the balancer sends it
        rest = c.get(f"/v2/scale/pull/blobs/{digest}",
                     headers={"Range": f"bytes={len(received)}-"})
        assert rest.status_code == 206, rest.text
        received += rest.content
        assert hashlib.sha256(received).hexdigest() == digest[7:]
    restart(scaled, victim)


def test_an_edge_syncs_through_the_balancer(scaled, tmp_path):
    """A ReadWrite edge whose parent is the balancer: the root's changes reach it (its
    long-poll is woken wherever the push landed) and its pushes reach the root."""
    h = Hierarchy(tmp_path)
    h.nodes["root"] = scaled.as_node()
    try:
        h.create("edgeone", "ReadWrite", ["shop/*"])
        edge = h.start_child("edgeone")
        down = make_image([40_000, 300_000])
        with client(scaled) as c:
            push_image(c, "shop/app", down, "v1")
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=30) as e:
            def at_edge(tag: str) -> str | None:
                r = e.head(f"/v2/shop/app/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
                return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None

            wait_for(lambda: at_edge("v1") == down.digest, 60, message="v1 at the edge")
            up = make_image([25_000])
            push_image(e, "shop/app", up, "v2")
        with client(scaled) as c:
            def at_root() -> str | None:
                r = c.head("/v2/shop/app/manifests/v2", headers={"Accept": OCI_MANIFEST})
                return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None

            wait_for(lambda: at_root() == up.digest, 60, message="v2 at the root")
        status = cli(h.root, "connected-registry", "show", "--name", "edgeone")
        assert status["name"] == "edgeone"
    finally:
        h.nodes["edgeone"].stop() if "edgeone" in h.nodes else None


def test_garbage_collection_runs_on_one_replica_at_a_time(scaled):
    """Both replicas are asked to collect at once while a third party holds the cluster-wide
    GC lock: neither starts until it is released (with its session), then they take turns,
    so the garbage goes exactly once and what is tagged stays."""
    doomed, kept = make_image([70_000, 8_000]), make_image([30_000])
    with client(scaled) as c:
        push_image(c, "scale/gc", kept, "kept")
        push_image(c, "scale/gc", doomed, "old")
        assert c.delete(f"/v2/scale/gc/manifests/{doomed.digest}").status_code == 202
    reports: list[dict] = []

    def collect(node: Node) -> None:
        r = httpx.post(f"{node.url}/connreg/v1/gc", auth=scaled.admin, timeout=120,
                       json={"gracePeriodSeconds": 0, "untaggedRetentionSeconds": 0})
        assert r.status_code == 200, r.text
        reports.append(r.json())

    # Another replica's collection in progress: the lock held from here.
    holder = psycopg.connect(scaled.metadata_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (GC_LOCK,))
    threads = [threading.Thread(target=collect, args=(n,)) for n in scaled.nodes]
    for t in threads:
        t.start()
    time.sleep(2)  # long enough for a collection this small to finish, were it not waiting
    assert reports == [] and all(t.is_alive() for t in threads)
    holder.close()  # its session ends: the lock goes with it (as when a replica is killed)
    for t in threads:
        t.join(180)
    assert len(reports) == 2
    assert sorted(bool(r["blobs"]) for r in reports) == [False, True], reports
    with client(scaled) as c:
        layer = "sha256:" + hashlib.sha256(doomed.layers[0]).hexdigest()
        assert c.head(f"/v2/scale/gc/blobs/{layer}").status_code == 404
        r = c.get("/v2/scale/gc/manifests/kept", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.content == kept.manifest
        for blob in kept.blobs():
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            assert c.get(f"/v2/scale/gc/blobs/{digest}").content == blob


def test_a_lock_set_through_one_replica_holds_on_every_replica(scaled):
    """A tag write lock and a repository read lock set through replica 0 (PATCH
    /connreg/v1/locks): an overwrite of the tag is refused (405 UNSUPPORTED) through the
    balancer and at each replica, reads are refused (403) at each replica once its read-lock set
    has followed (LISTEN/NOTIFY); unlocking restores both. /metrics answers on every replica
    (its counts go through PostgreSQL: there is no metadata.sqlite on a scaled root)."""
    first, second = make_image([3_000]), make_image([4_000])
    with client(scaled) as c:
        push_image(c, "locked/app", first, "v1")
        push_image(c, "locked/app", second, "other")
        r = httpx.patch(f"{scaled.nodes[0].url}/connreg/v1/locks", auth=scaled.admin, timeout=30,
                        json={"repository": "locked/app", "tag": "v1", "writeEnabled": False})
        assert r.status_code == 200, r.text
        for base in [scaled.url] + [n.url for n in scaled.nodes]:
            r = httpx.put(f"{base}/v2/locked/app/manifests/v1", content=second.manifest,
                          auth=scaled.admin, timeout=30, headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 405 and r.json()["errors"][0]["code"] == "UNSUPPORTED", r.text
        assert c.head("/v2/locked/app/manifests/v1", headers={"Accept": OCI_MANIFEST}
                      ).headers["Docker-Content-Digest"] == first.digest

        r = httpx.patch(f"{scaled.nodes[0].url}/connreg/v1/locks", auth=scaled.admin, timeout=30,
                        json={"repository": "locked/app", "readEnabled": False})
        assert r.status_code == 200, r.text

        def read_status(node) -> int:
            return httpx.get(f"{node.url}/v2/locked/app/manifests/v1", auth=scaled.admin,
                             timeout=30, headers={"Accept": OCI_MANIFEST}).status_code

        for node in scaled.nodes:
            wait_for(lambda: read_status(node) == 403, 30, message="read lock at every replica")
        for body in ({"repository": "locked/app", "readEnabled": True},
                     {"repository": "locked/app", "tag": "v1", "writeEnabled": True}):
            r = httpx.patch(f"{scaled.nodes[1].url}/connreg/v1/locks", auth=scaled.admin,
                            timeout=30, json=body)
            assert r.status_code == 200, r.text
        for node in scaled.nodes:
            wait_for(lambda: read_status(node) == 200, 30, message="read lock lifted everywhere")
        r = c.put("/v2/locked/app/manifests/v1", content=second.manifest,
                  headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201, r.text
    for node in scaled.nodes:
        r = httpx.get(f"{node.url}/metrics", auth=scaled.admin, timeout=30)
        assert r.status_code == 200 and b"connreg" in r.content, r.text[:500]


def test_gzip_layer_delta_is_off_on_a_scaled_root(scaled):
    """Gzip-layer state is per node and the Rust inflate reads files, so a scaled root (S3)
    does not index gzip layers: the parent endpoints answer "not analysed" (404) and the
    upward ones 405, which make a child send the layer by its chunks; nothing fails."""
    layer = gzip.compress(os.urandom(1536 * 1024), 1)
    with client(scaled) as c:
        digest = push_blob(c, "gz/app", layer)
        for node in scaled.nodes:
            r = httpx.get(f"{node.url}/connreg/v1/sync/gzip", auth=scaled.admin, timeout=30,
                          params={"repo": "gz/app", "digest": digest})
            assert r.status_code == 404 and "not analysed" in r.text, r.text
            r = httpx.post(f"{node.url}/connreg/v1/sync/gzip/base", auth=scaled.admin,
                           timeout=30, params={"repo": "gz/app"},
                           json={"params": "x", "ids": []})
            assert r.status_code == 405 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
            assert "gzip-layer delta is off on this node" in node.log()
        assert c.get(f"/v2/gz/app/blobs/{digest}").content == layer


def test_a_replica_without_its_database_is_not_ready_and_answers_503(tmp_path):
    """PostgreSQL goes away under a running replica: /readyz turns 503 naming the metadata
    store (a balancer stops sending it traffic), requests get 503 UNAVAILABLE with
    Retry-After, never a 500; when the database is back, so is the replica."""
    from connreg.testing.postgres import start_postgres

    pg = start_postgres()
    try:
        url = pg.create_database("fragile")
        root = start_scaled_root(tmp_path, url, replicas=1, args=["--no-auth"])
        try:
            node = root.nodes[0]
            assert httpx.get(f"{node.url}/readyz", timeout=10).status_code == 200
            pg.pause()
            r = httpx.get(f"{node.url}/readyz", timeout=30)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert list(r.json()["errors"][0]["detail"]) == ["metadata"]
            r = httpx.get(f"{node.url}/v2/team/app/tags/list", timeout=30)
            assert r.status_code == 503, r.text
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
            pg.resume()
            root.wait_ready(node)
            assert httpx.get(f"{node.url}/v2/team/app/tags/list",
                             timeout=30).status_code == 404  # NAME_UNKNOWN: answering again
        finally:
            root.stop()
    finally:
        pg.stop()
