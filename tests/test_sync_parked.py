"""An edge accepts only what it can sync, and one refused outbox entry never blocks the others.

Real processes: a root and one ReadWrite edge (set `team/*`, `lab/*`). The tests run in order
and share the pair: a stray push refused at the edge; entries the parent refuses for good
(their repository left the edge's set while they waited in its outbox) parked while later
pushes climb within seconds; parked entries surviving kill -9, retried, and delivered once the
repository is back in the set. Then, without the hierarchy: which answers park an entry, and a
later change of a tag superseding its parked entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from connreg.config import Settings
from connreg.content import store_manifest
from connreg.registry import Registry
from connreg.sync.parked import permanent_refusal
from connreg.sync.puller import Puller
from connreg.sync.pusher import Pusher
from connreg.sync.remote import ParentClient, ParentRefused, ParentUnavailable
from connreg.sync.state import SyncState
from connreg.testing import start_node
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
    # The refused request was a HEAD: no body, but the parent named its reason in the
    # Connreg-Error header.
    assert v1["method"] == "HEAD" and v1["code"] == "DENIED"
    assert "may not pull lab/x" in v1["message"]
    log = edge.log()
    assert f"HEAD {root.url}/v2/lab/x/manifests/{kept.digest} answered 403" in log

    # The root sees each parked entry, naming repository, tag, digest and reason.
    def reported(count: int):
        details = pair.refused_at_root()
        return details if len(details) == count else None

    details = wait_for(lambda: reported(3), 30, interval=0.5, message="3 SYNC_REFUSED at root")
    assert any("lab/x:v1" in d["description"] and kept.digest in d["description"]
               and "403" in d["description"] for d in details)

    # The endpoints behind the CLI are the node admin's only.
    with httpx.Client(base_url=edge.url, timeout=30) as anonymous:
        assert anonymous.get("/connreg/v1/sync/parked").status_code == 401
        assert anonymous.post("/connreg/v1/sync/parked/drop", json={"all": True}).status_code \
            == 401
    dropped = pair.edge_cli("drop", "--seq", str(v2["seq"]), str(deleted["seq"]))
    assert dropped == {"dropped": 2}
    assert [p["seq"] for p in pair.edge_cli("list")["parked"]] == [v1["seq"]]
    [detail] = wait_for(lambda: reported(1), 30, interval=0.5, message="1 SYNC_REFUSED at root")
    assert "lab/x:v1" in detail["description"] and kept.digest in detail["description"]


def test_c_a_parked_entry_survives_kill_9_and_is_delivered_when_the_set_grows(pair):
    root, edge = pair.root, pair.edge
    [before] = pair.refused_at_root()
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
    # Reported from the durable table by the restarted node (parked again: a new id).
    wait_for(lambda: [d for d in pair.refused_at_root() if "lab/x:v1" in d["description"]
                      and d["correlationId"] != before["correlationId"]], 30,
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


def test_which_refusals_park_an_entry():
    def refused(status, code=None):
        return ParentRefused(status, "no", code, method="PUT", url="http://parent/v2/a/b")

    for status, code in ((403, "DENIED"), (400, "MANIFEST_INVALID"), (404, "NAME_UNKNOWN"),
                         (413, "SIZE_INVALID"), (400, "MANIFEST_BLOB_UNKNOWN")):
        assert permanent_refusal(refused(status, code)) is not None
    for status, code in ((401, "UNAUTHORIZED"), (429, "TOOMANYREQUESTS"), (408, None),
                         (404, "BLOB_UPLOAD_UNKNOWN")):
        assert permanent_refusal(refused(status, code)) is None
    assert permanent_refusal(ParentUnavailable("HTTP 503")) is None
    # Blobs go up in parallel: park only when every failure in the group is permanent.
    both = ExceptionGroup("blobs", [refused(403, "DENIED"), refused(400, "DIGEST_INVALID")])
    assert permanent_refusal(both).status == 403
    mixed = ExceptionGroup("blobs", [refused(403, "DENIED"), ParentUnavailable("reset")])
    assert permanent_refusal(mixed) is None
    assert permanent_refusal(ExceptionGroup("x", [refused(403), KeyError("bug")])) is None


async def test_a_later_change_of_the_tag_supersedes_the_parked_one(tmp_path):
    """Order per tag: while `big` is parked (the parent's manifest limit refuses it), a later
    move of the same tag goes through and drops it; a parked entry of another tag stays."""
    parent_node = start_node(tmp_path / "parent", args=["--no-auth"],
                             env={"CONNREG_MAX_MANIFEST_BYTES": "1000"})
    reg = Registry(Settings(data_dir=tmp_path / "child"))
    parent = ParentClient(parent_node.url, auth=None)
    try:
        state = SyncState(reg.meta)
        pusher = Pusher(reg, parent, state, Puller(reg, parent, state))
        big, other, small = make_image([100] * 8), make_image([101] * 8), make_image([100])
        for image, tag in ((big, "v1"), (other, "v9"), (small, "v1")):
            for blob in image.blobs():
                digest = reg.blobs.put_bytes(blob)
                await reg.meta.link_blob("lab/app", digest, len(blob))
            if image is not small:
                await store_manifest(reg, "lab/app", tag, image.manifest, OCI_MANIFEST)

        assert await pusher.push_all() == 0
        parked = reg.meta.parked_changes()
        assert [(p.tag, p.digest, p.status, p.code) for p in parked] == \
            [("v1", big.digest, 413, "SIZE_INVALID"), ("v9", other.digest, 413, "SIZE_INVALID")]
        assert parked[0].method == "PUT" and f"/v2/lab/app/manifests/{big.digest}" in \
            parked[0].url
        details = [d for d in state.to_json()["statusDetails"] if d["code"] == "SYNC_REFUSED"]
        assert len(details) == 2 and "lab/app:v1" in details[0]["description"]

        # Sent again on request: refused again, one more attempt.
        assert await pusher.parked.requeue([parked[1].seq]) == 1
        assert await pusher.push_all() == 0
        assert reg.meta.parked_changes()[1].attempts == 2

        await store_manifest(reg, "lab/app", "v1", small.manifest, OCI_MANIFEST)
        assert await pusher.push_all() == 1
        assert await parent.head_manifest("lab/app", "v1") == small.digest
        assert [p.tag for p in reg.meta.parked_changes()] == ["v9"]  # v1's was superseded
        assert await pusher.parked.drop() == 1
        assert reg.meta.parked_changes() == []
        assert state.to_json()["statusDetails"] == []
    finally:
        await parent.aclose()
        reg.close()
        parent_node.stop()
