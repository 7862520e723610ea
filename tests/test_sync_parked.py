"""An edge accepts only what it can sync, and one refused outbox entry never blocks the others.

Real processes: a root and one ReadWrite edge (set `team/*`, `lab/*`). The tests run in order
and share the pair: a stray push refused at the edge; entries the parent refuses for good
(their repository left the edge's set while they waited in its outbox) parked while later
pushes climb within seconds; parked entries surviving kill -9, retried, and delivered once the
repository is back in the set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.oci import OCI_MANIFEST, make_image, sha256
from helpers import push_image

EDGE = "edgepark"


class Pair:
    def __init__(self, h: Hierarchy):
        self.h = h

    @property
    def root(self):
        return self.h.root

    @property
    def edge(self):
        return self.h.nodes[EDGE]

    def client(self, node) -> httpx.Client:
        return httpx.Client(base_url=node.url, auth=node.admin, timeout=30)

    def digest(self, node, repo: str, ref: str) -> str | None:
        with self.client(node) as c:
            r = c.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
            return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None

    def wait_digest(self, node, repo: str, ref: str, digest: str, timeout: float = 30.0):
        wait_for(lambda: self.digest(node, repo, ref) == digest, timeout,
                 message=f"{repo}:{ref}={digest[:19]} at {node.host}")

    def edge_cli(self, *args: str, data_dir: bool = False) -> dict:
        """`connreg sync parked …` on the edge: its data dir directly, or its API as admin."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
        if data_dir:
            args = (*args, "--data-dir", str(self.edge.data_dir))
        else:
            env.update(CONNREG_REGISTRY=self.edge.url, CONNREG_USERNAME="admin",
                       CONNREG_PASSWORD=self.edge.admin_password)
        proc = subprocess.run([sys.executable, "-m", "connreg", "sync", "parked", *args,
                               "--output", "json"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def refused_at_root(self) -> list[dict]:
        doc = cli(self.root, "connected-registry", "show", "--name", EDGE)
        return [d for d in doc.get("statusDetails") or [] if d["code"] == "SYNC_REFUSED"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    h = Hierarchy(tmp_path_factory.mktemp("parked"))
    try:
        h.start_root()
        h.create(EDGE, "ReadWrite", ["team/*", "lab/*"])
        h.start_child(EDGE)
        yield Pair(h)
    finally:
        h.stop_all()


def _denied(r: httpx.Response, repo: str) -> None:
    assert r.status_code == 403, r.text
    [error] = r.json()["errors"]
    assert error["code"] == "DENIED"
    assert repo in error["message"] and EDGE in error["message"]
    assert "team/*" in error["message"]


def _stray_writes_refused(c: httpx.Client, image) -> None:
    repo, config = "other/edgeonly", sha256(image.config)
    _denied(c.post(f"/v2/{repo}/blobs/uploads/"), repo)
    _denied(c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": config},
                   content=image.config), repo)
    _denied(c.put(f"/v2/{repo}/manifests/v1", content=image.manifest,
                  headers={"Content-Type": OCI_MANIFEST}), repo)
    _denied(c.delete(f"/v2/{repo}/manifests/v1"), repo)
    _denied(c.delete(f"/v2/{repo}/manifests/{image.digest}"), repo)
    _denied(c.delete(f"/v2/{repo}/blobs/{config}"), repo)
    # Reads answer as for any repository this node does not hold.
    assert c.get(f"/v2/{repo}/manifests/v1").status_code == 404
    assert c.get(f"/v2/{repo}/tags/list").status_code == 404
    assert c.head(f"/v2/{repo}/blobs/{config}").status_code == 404


def test_a_stray_push_is_refused_at_the_edge(pair):
    image = make_image([2000])
    with pair.client(pair.edge) as c:  # the edge's own admin
        _stray_writes_refused(c, image)
        push_image(c, "team/app", image, "v1")  # inside the set: accepted and synced up
    pair.wait_digest(pair.root, "team/app", "v1", image.digest)

    # Open mode (--no-auth) refuses the same way: the rule is about the set, not the caller.
    pair.edge.env["CONNREG_AUTH"] = "false"
    pair.edge.restart()
    try:
        with httpx.Client(base_url=pair.edge.url, timeout=30) as c:
            _stray_writes_refused(c, image)
    finally:
        pair.edge.env.pop("CONNREG_AUTH")
        pair.edge.restart()

    # The refusal follows the set as the root changes it, without a restart.
    cli(pair.root, "connected-registry", "repo", "--name", EDGE, "--add", "other/*")
    with pair.client(pair.edge) as c:
        wait_for(lambda: c.post("/v2/other/edgeonly/blobs/uploads/").status_code == 202, 30,
                 message="other/* writable at the edge")
    # Recorded for a start while the root is unreachable, which serves the recorded state.
    assert "other/*" in _recorded_set(pair.edge)
    cli(pair.root, "connected-registry", "repo", "--name", EDGE, "--remove", "other/*")
    with pair.client(pair.edge) as c:
        wait_for(lambda: c.post("/v2/other/edgeonly/blobs/uploads/").status_code == 403, 30,
                 message="other/* refused again at the edge")
    assert _recorded_set(pair.edge) == ["lab/*", "team/*"]


def _recorded_set(node) -> list[str]:
    return sorted(json.loads((node.data_dir / "connected-registry.json").read_text())
                  ["repositories"])


def test_b_refused_entries_are_parked_and_later_pushes_go_on(pair):
    root, edge = pair.root, pair.edge
    kept, gone = make_image([3000]), make_image([3000])
    # Changes to lab/x wait in the edge's outbox while the root is down ...
    root.stop()
    with pair.client(edge) as c:
        push_image(c, "lab/x", kept, "v1")
        push_image(c, "lab/x", gone, "v2")
        assert c.delete("/v2/lab/x/manifests/v2").status_code == 202
    edge.stop()
    # ... and lab/* leaves the edge's set meanwhile: the root now refuses them (403).
    root.start()
    cli(root, "connected-registry", "repo", "--name", EDGE, "--remove", "lab/*")
    edge.start()

    later = make_image([3000])
    started = time.monotonic()
    with pair.client(edge) as c:
        push_image(c, "team/app", later, "v2")
    pair.wait_digest(root, "team/app", "v2", later.digest)
    assert time.monotonic() - started < 25  # seconds, not a wedged queue

    parked = wait_for(lambda: len(pair.edge_cli("list")["parked"]) == 3 and
                      pair.edge_cli("list")["parked"], 30, message="three parked entries")
    v1, v2, deleted = parked
    assert (v1["repository"], v1["op"], v1["tag"], v1["digest"]) == \
        ("lab/x", "manifest", "v1", kept.digest)
    assert (v2["tag"], v2["digest"]) == ("v2", gone.digest)
    assert (deleted["op"], deleted["tag"], deleted["digest"]) == ("delete_tag", "v2", gone.digest)
    assert all(p["status"] == 403 and "/v2/lab/x/" in p["url"] for p in parked)
    # The refused request was a HEAD: no body, so the parent's reason was asked with GET.
    assert v1["method"] == "HEAD" and v1["code"] == "DENIED"
    assert "(HEAD: no body)" in v1["message"] and "may not pull lab/x" in v1["message"]
    log = edge.log()
    assert f"HEAD {root.url}/v2/lab/x/manifests/{kept.digest} answered 403" in log

    # The root sees each parked entry, naming repository, tag, digest and reason.
    def reported(count: int):
        details = pair.refused_at_root()
        return details if len(details) == count else None

    details = wait_for(lambda: reported(3), 30, interval=0.5, message="3 SYNC_REFUSED at root")
    assert any("lab/x:v1" in d["description"] and kept.digest in d["description"]
               and "403" in d["description"] for d in details)

    dropped = pair.edge_cli("drop", "--seq", str(v2["seq"]), str(deleted["seq"]))
    assert dropped == {"dropped": 2}
    assert [p["seq"] for p in pair.edge_cli("list")["parked"]] == [v1["seq"]]
    [detail] = wait_for(lambda: reported(1), 30, interval=0.5, message="1 SYNC_REFUSED at root")
    assert "lab/x:v1" in detail["description"] and kept.digest in detail["description"]


def test_c_a_parked_entry_survives_kill_9_and_is_delivered_when_the_set_grows(pair):
    root, edge = pair.root, pair.edge
    edge.kill()
    [entry] = pair.edge_cli("list", data_dir=True)["parked"]  # read while the node is down
    assert (entry["repository"], entry["tag"], entry["attempts"]) == ("lab/x", "v1", 1)
    # A retry queued while stopped is sent at start; still outside the set, parked again.
    assert pair.edge_cli("retry", "--seq", str(entry["seq"]), data_dir=True) == {"requeued": 1}
    edge.start()
    again = wait_for(lambda: [p for p in pair.edge_cli("list")["parked"]
                              if p["attempts"] == 2 and not p["retry"]], 30,
                     message="the entry sent again and parked again")
    assert again[0]["seq"] == entry["seq"]
    wait_for(lambda: any("lab/x:v1" in d["description"] for d in pair.refused_at_root()), 30,
             interval=0.5, message="SYNC_REFUSED at root after the restart")
    kept_digest = entry["digest"]
    assert pair.digest(root, "lab/x", "v1") is None

    # Back in the set: the entry is re-queued by itself and reaches the root.
    cli(root, "connected-registry", "repo", "--name", EDGE, "--add", "lab/*")
    pair.wait_digest(root, "lab/x", "v1", kept_digest)
    wait_for(lambda: pair.edge_cli("list")["parked"] == [], 30, message="nothing parked")
    wait_for(lambda: pair.refused_at_root() == [], 30, interval=0.5,
             message="no SYNC_REFUSED at root")
    assert pair.digest(root, "lab/x", "v2") is None  # the dropped entries stayed dropped
