"""`connreg maintenance migrate`: a single-node root (SQLite + folder) moved onto PostgreSQL and S3
(`rclone serve s3`) loses nothing, can be re-run, and the replicas then serve what it served —
tokens issued before the move included (the signing key moves too)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys

import httpx
import psycopg

from connreg.testing.hierarchy import ADMIN_PASSWORD
from connreg.testing.node import start_node
from connreg.testing.oci import OCI_MANIFEST, make_image, sha256
from connreg.testing.replicas import start_scaled_root
from helpers import push_image


def migrate(data_dir, url, store, s3_env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    env.update(s3_env)
    return subprocess.run([sys.executable, "-m", "connreg", "maintenance", "migrate",
                           "--data-dir", str(data_dir), "--metadata-url", url,
                           "--blob-store", str(store)],
                          env=env, capture_output=True, text=True, timeout=300)


def bearer(url: str, auth, scope: str) -> str:
    r = httpx.get(f"{url}/oauth2/token", params={"service": "connreg", "scope": scope},
                  auth=auth, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def test_migrate_a_single_node_onto_postgres_and_s3(tmp_path, postgres_server, s3_store_server):
    node = start_node(tmp_path / "single", admin_password=ADMIN_PASSWORD)
    images = {f"v{i}": make_image([20_000 * (i + 1), 5_000]) for i in range(3)}
    with httpx.Client(base_url=node.url, auth=node.admin, timeout=30) as c:
        for tag, image in images.items():
            push_image(c, "team/app", image, tag)
        assert c.delete(f"/v2/team/app/manifests/{images['v2'].digest}").status_code == 202
        r = c.post("/connreg/v1/tokens", json={"name": "citoken", "actions": [
            "repositories/team/*/content/read", "repositories/team/*/metadata/read"]})
        assert r.status_code == 201, r.text
        token_password = r.json()["passwords"][0]["value"]
        r = c.patch("/connreg/v1/locks", json={"repository": "team/app", "tag": "v1",
                                               "writeEnabled": False})
        assert r.status_code == 200, r.text
        feed_before = c.get("/v2/_catalog").json()
    old_bearer = bearer(node.url, node.admin, "repository:team/app:pull")
    node.stop()
    with sqlite3.connect(node.data_dir / "metadata.sqlite") as db:
        log_before = db.execute("SELECT seq, repo, op, digest, tag FROM changes ORDER BY seq"
                                ).fetchall()
    assert len(log_before) == 5  # three pushes, a deletion, a lock

    url = postgres_server.create_database("migrated")
    store, s3_env = s3_store_server.url("migrated"), s3_store_server.env()
    first = migrate(node.data_dir, url, store, s3_env)
    assert first.returncode == 0, first.stderr
    assert "everything is at the destination" in first.stdout
    again = migrate(node.data_dir, url, store, s3_env)  # idempotent: nothing new the second time
    assert again.returncode == 0, again.stderr
    assert "blobs: 0 copied" in again.stdout
    assert all(part.endswith("/0 new") for part in again.stdout.split("rows (source/new): ")[1]
               .strip().splitlines()[0].split(", ")), again.stdout
    # resumable: a blob lost at the destination (an interrupted run) is copied again
    assert s3_store_server.blob_store("migrated").delete(sha256(images["v0"].layers[0]))
    resumed = migrate(node.data_dir, url, store, s3_env)
    assert resumed.returncode == 0 and "blobs: 1 copied" in resumed.stdout, resumed.stdout

    # one replica suffices here: serving through two is what the other scaled tests show
    root = start_scaled_root(tmp_path / "replicas", url, blob_store=store, replicas=1,
                             env={"CONNREG_ADMIN_PASSWORD": ADMIN_PASSWORD, **s3_env})
    try:
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
            assert c.get("/v2/_catalog").json() == feed_before
            assert c.get("/v2/team/app/tags/list").json()["tags"] == ["v0", "v1"]
            for tag in ("v0", "v1"):
                r = c.get(f"/v2/team/app/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
                assert r.status_code == 200 and r.content == images[tag].manifest
                for blob in images[tag].blobs():
                    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
                    assert c.get(f"/v2/team/app/blobs/{digest}").content == blob
            assert c.get(f"/v2/team/app/manifests/{images['v2'].digest}").status_code == 404
            # the lock moved too: v1 still refuses an overwrite
            r = c.put("/v2/team/app/manifests/v1", content=images["v0"].manifest,
                      headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 405, r.text
        # the change log moved with its numbers (edges' cursors point into it)
        with psycopg.connect(url) as conn:
            moved = conn.execute("SELECT seq, repo, op, digest, tag FROM changes ORDER BY seq"
                                 ).fetchall()
            head = conn.execute("SELECT seq FROM change_head").fetchone()[0]
        assert moved == log_before and head == log_before[-1][0]
        # the token made before the move, and a bearer token signed before it
        assert bearer(root.url, ("citoken", token_password), "repository:team/app:pull")
        r = httpx.get(f"{root.url}/v2/team/app/tags/list",
                      headers={"Authorization": f"Bearer {old_bearer}"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        root.stop()
