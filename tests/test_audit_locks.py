"""Issue 12, items 2 and 4 (and the CLI fixes of item 5), with real processes: a root and three
connected registries. Locks set at the root are enforced at the root, at an edge that was
running, at one that was offline when they were set (and whose own push onto the locked tag,
made while offline, is parked), at one started afterwards, and at an edge cut off from its
parent. Audit events of an edge (with the actor) and failed logins reach the root's trail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.node import free_port, start_node
from connreg.testing.oci import OCI_MANIFEST, make_image
from tests.helpers import push_image

REPO = "team/app"


def _client(node, auth=None) -> httpx.Client:
    return httpx.Client(base_url=node.url, auth=auth or node.admin, timeout=30)


def _digest_at(node, tag: str) -> str | None:
    with _client(node) as c:
        r = c.head(f"/v2/{REPO}/manifests/{tag}")
        return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


def _put(c: httpx.Client, image, tag: str) -> httpx.Response:
    for blob in image.blobs():  # blobs are never locked: only the manifest write is
        from connreg.testing.oci import sha256
        r = c.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
        assert r.status_code == 201, r.text
    return c.put(f"/v2/{REPO}/manifests/{tag}", content=image.manifest,
                 headers={"Content-Type": OCI_MANIFEST})


def _locked(r: httpx.Response, what: str) -> None:
    assert r.status_code == 405, r.text
    [error] = r.json()["errors"]
    assert error["code"] == "UNSUPPORTED"
    assert f"tag {REPO}:v1 is locked" in error["message"] and what in error["message"]


def _lock_known(node) -> bool:
    with _client(node) as c:
        r = c.get("/connreg/v1/locks", params={"repository": REPO, "tag": "v1"})
        return r.status_code == 200 and r.json()["changeableAttributes"] == {
            "writeEnabled": False, "deleteEnabled": False, "readEnabled": True}


def _refuses_overwrite_and_delete(node, image_a, image_b) -> None:
    with _client(node) as c:
        _locked(_put(c, image_b, "v1"), "writeEnabled=false")
        _locked(c.delete(f"/v2/{REPO}/manifests/v1"), "deleteEnabled=false")
        # deleting the manifest would take the locked tag with it
        _locked(c.delete(f"/v2/{REPO}/manifests/{image_a.digest}"), "deleteEnabled=false")
        r = c.head(f"/v2/{REPO}/manifests/v1")  # reads stay open; nothing changed
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == image_a.digest


def _patch_lock(node, **body) -> dict:
    with _client(node) as c:
        r = c.patch("/connreg/v1/locks", json={"repository": REPO, **body})
        assert r.status_code == 200, r.text
        return r.json()


def _audit(node, **params) -> list[dict]:
    with _client(node) as c:
        r = c.get("/connreg/v1/audit", params=params)
        assert r.status_code == 200, r.text
        return r.json()["events"]


def _run_cli(node, *args: str, user=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    name, password = user or node.admin
    env.update(CONNREG_REGISTRY=node.url, CONNREG_USERNAME=name, CONNREG_PASSWORD=password)
    return subprocess.run([sys.executable, "-m", "connreg", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    h = Hierarchy(tmp_path_factory.mktemp("fleet"))
    try:
        h.start_root()
        # Resources through the management API directly (CLI runs cost seconds each on a busy
        # machine); the CLI itself is exercised in the tests.
        with _client(h.root) as c:
            r = c.post("/connreg/v1/tokens", json={
                "name": "cibot", "expiry": "P30D", "actions": [
                    f"repositories/team/*/{verb}" for verb in (
                        "content/read", "content/write", "content/delete", "metadata/read",
                        "metadata/write")]})
            assert r.status_code == 201, r.text
            h.ci = ("cibot", r.json()["passwords"][0]["value"])
            for name, tokens in (("edge1", ["cibot"]), ("edge2", [])):
                r = c.post("/connreg/v1/connected-registries", json={
                    "name": name, "mode": "ReadWrite", "repositories": ["team/*"],
                    "clientTokens": tokens})
                assert r.status_code == 201, r.text
        h.start_child("edge1")
        h.start_child("edge2")
        yield h
    finally:
        h.stop_all()


def test_a_locks_hold_at_every_tier(fleet):
    h = fleet
    root, e1, e2 = h.root, h.nodes["edge1"], h.nodes["edge2"]
    image_a, image_b, image_c = make_image([1500]), make_image([1500]), make_image([1500])
    with _client(root) as c:
        push_image(c, REPO, image_a, "v1")
    for edge in (e1, e2):
        wait_for(lambda: _digest_at(edge, "v1") == image_a.digest, 60,
                 message=f"v1 synced to {edge.host}")

    # e2 goes offline (its parent unreachable) and, not knowing of any lock, moves v1 there.
    e2.env["CONNREG_PARENT_ENDPOINT"] = f"127.0.0.1:{free_port()}"
    e2.restart()
    with _client(e2) as c:
        assert _put(c, image_c, "v1").status_code == 201

    shown = cli(root, "repository", "update", "--repository", REPO, "--tag", "v1",
                "--write-enabled", "false", "--delete-enabled", "false")
    assert shown["changeableAttributes"]["writeEnabled"] is False
    _refuses_overwrite_and_delete(root, image_a, image_b)
    h.locked_images = (image_a, image_b)
    shown = cli(root, "repository", "show", "--repository", REPO)
    assert shown["changeableAttributes"] == {"writeEnabled": True, "deleteEnabled": True,
                                             "readEnabled": True}  # only the tag is locked
    assert [(l["tag"], l["writeEnabled"]) for l in shown["locks"]] == [("v1", False)]
    # other tags of the repository stay writable
    with _client(root) as c:
        assert _put(c, image_b, "v2").status_code == 201

    wait_for(lambda: _lock_known(e1), 60, message="the lock at the running edge")
    _refuses_overwrite_and_delete(e1, image_a, image_b)

    h.create("edge3", "ReadWrite", ["team/*"])  # a new edge, started after the lock
    e3 = h.start_child("edge3")
    wait_for(lambda: _lock_known(e3) and _digest_at(e3, "v1") == image_a.digest, 60,
             message="the lock at the edge started after it")
    _refuses_overwrite_and_delete(e3, image_a, image_b)

    # e2 comes back: its offline move of v1 is refused by the root's lock and parked, and
    # from now on it enforces the lock itself.
    e2.env.pop("CONNREG_PARENT_ENDPOINT")
    e2.restart()

    def parked_v1():
        with _client(e2) as c:
            entries = c.get("/connreg/v1/sync/parked").json()["parked"]
        return [p for p in entries if p["repository"] == REPO and p["tag"] == "v1"]
    [entry] = wait_for(parked_v1, 60, message="the offline move of v1 parked at e2")
    assert entry["status"] == 405 and "locked" in entry["message"], entry
    wait_for(lambda: _lock_known(e2), 60, message="the lock at the edge that was offline")
    with _client(e2) as c:
        _locked(_put(c, image_b, "v1"), "writeEnabled=false")
        _locked(c.delete(f"/v2/{REPO}/manifests/v1"), "deleteEnabled=false")
    assert _digest_at(root, "v1") == image_a.digest  # the root's tag never moved

    # A lock cannot be set at an edge (the root's copy would replace it).
    r = _run_cli(e1, "repository", "update", "--repository", REPO, "--tag", "v1",
                 "--write-enabled", "false")
    assert r.returncode != 0 and "connected registry" in r.stderr, r.stderr


def test_b_read_lock_refuses_pulls_but_not_sync(fleet):
    h = fleet
    root, e1 = h.root, h.nodes["edge1"]
    image = make_image([1200])
    with _client(root) as c:
        push_image(c, REPO, image, "secret")
        _patch_lock(root, tag="secret", readEnabled=False)
        for request in (c.get, c.head):
            r = request(f"/v2/{REPO}/manifests/secret")
            assert r.status_code == 403, r.text
            assert "readEnabled=false" in r.headers["Connreg-Error"]  # a HEAD names why too
        assert c.get(f"/v2/{REPO}/manifests/{image.digest}").status_code == 200
    # the edge still mirrors it (sync is exempt), and refuses clients the same way
    with _client(e1) as c:
        wait_for(lambda: c.head(f"/v2/{REPO}/manifests/secret").status_code == 403, 60,
                 message="the read lock at e1")
        # lifted at the root: the edge follows, and already holds the content
        _patch_lock(root, tag="secret", readEnabled=True)
        wait_for(lambda: c.get(f"/v2/{REPO}/manifests/secret").status_code == 200, 60,
                 message="the unlock at e1")
        assert c.get("/connreg/v1/locks", params={"repository": REPO,
                                                   "tag": "secret"}).json()["changeableAttributes"
                                                                            ]["readEnabled"]


def test_c_edge_events_reach_the_root_audit_trail(fleet):
    h = fleet
    root, e1 = h.root, h.nodes["edge1"]
    image = make_image([1000])
    with _client(e1, auth=h.ci) as c:  # a client token listed in e1's --client-tokens
        push_image(c, REPO, image, "from-e1")
        assert c.get(f"/v2/{REPO}/manifests/from-e1").status_code == 200
    with httpx.Client(base_url=root.url, auth=("mallory", "wrong"), timeout=30) as c:
        assert c.get("/v2/").status_code == 401

    wait_for(lambda: [e for e in _audit(root, registry="edge1", actor="cibot")
                      if e["event"] == "push" and e.get("tag") == "from-e1"], 60,
             message="e1's push in the root's audit trail")
    pushes = [e for e in cli(root, "audit", "list", "--registry", "edge1", "--actor", "cibot",
                             "--since", "1h")["events"]
              if e["event"] == "push" and e.get("tag") == "from-e1"]
    assert pushes[0]["repository"] == REPO and pushes[0]["digest"] == image.digest
    assert pushes[0]["size"] == len(image.manifest)
    assert pushes[0]["imageSize"] == len(image.manifest) + sum(map(len, image.blobs()))
    assert pushes[0]["outcome"] == "success" and pushes[0]["source"]
    pulls = [e for e in _audit(root, registry="edge1", repository=REPO, actor="cibot")
             if e["event"] == "pull"]
    assert pulls and pulls[0]["tag"] == "from-e1"
    failed = _audit(root, actor="mallory")
    assert [e["event"] for e in failed] == ["login_failed"]
    assert "wrong" not in json.dumps(failed)  # never the password
    # control-plane changes, and the refused overwrites of test_a, with their actors
    control = [e for e in _audit(root, registry="-") if e["event"] == "control"]
    assert any(e["action"] == "PATCH locks" and e["target"] == f"tag {REPO}:v1"
               and e["actor"] == "admin" for e in control), control
    refused = [e for e in _audit(root, registry="edge1", repository=REPO)
               if e["event"] == "push" and e["outcome"] == "denied"]
    assert refused and refused[0]["status"] == 405
    # paging: one event a page, the token continues
    with _client(root) as c:
        page1 = c.get("/connreg/v1/audit", params={"limit": 1}).json()
        page2 = c.get("/connreg/v1/audit", params={"limit": 1, "page": page1["next"]}).json()
    assert page1["events"] != page2["events"] and len(page2["events"]) == 1
    # kill -9 right after a burst of events: every line on disk is whole, nothing recorded
    # before the kill is lost, and the edge's own trail answers after the restart
    with _client(e1, auth=h.ci) as c:
        for i in range(20):
            assert c.get(f"/v2/{REPO}/manifests/from-e1").status_code == 200
    e1.kill()
    for path in (e1.data_dir / "audit").glob("audit-*.jsonl"):
        for line in path.read_bytes().splitlines():
            json.loads(line)
    e1.start()
    r = _run_cli(e1, "audit", "list", "--actor", "cibot", "--limit", "1000")
    assert r.returncode == 0 and r.stdout.count("from-e1") >= 22, r.stderr  # table output


def test_d_cli_fixes(fleet):
    h = fleet
    root = h.root
    # `update --client-tokens` replaces the set, like `create`
    cli(root, "token", "create", "--name", "opsbot", "--repository", "team/*", "content/read",
        "--expiration", "P7D")  # the old flag name still works
    with _client(root) as c:
        r = c.patch("/connreg/v1/connected-registries/edge2", json={"clientTokens": ["cibot"]})
        assert r.json()["clientTokens"] == ["cibot"]
    doc = cli(root, "connected-registry", "update", "--name", "edge2", "--client-tokens", "opsbot")
    assert doc["clientTokens"] == ["opsbot"]  # replaced, not added to
    # the API takes `expiration` as well as `expiry`
    with _client(root) as c:
        r = c.post("/connreg/v1/tokens", json={"name": "tmpbot", "scopeMap": "opsbot-scope-map",
                                               "expiration": "P1D"})
        assert r.status_code == 201, r.text
        assert r.json()["passwords"][0]["expiry"]
        # a refused HEAD says why in a header (its answer has no body)
    with httpx.Client(base_url=root.url, auth=h.ci, timeout=30) as c:
        r = c.head("/v2/other/repo/manifests/v1")
        assert r.status_code == 403 and "DENIED" in r.headers["Connreg-Error"]

    # Cut off from the root, an edge still enforces the locks it knows (last: the root stays
    # down for the rest of the module).
    root.stop()
    _refuses_overwrite_and_delete(h.nodes["edge1"], *h.locked_images)


def test_e_a_lockout_is_one_audit_event(tmp_path):
    """Failed logins up to the limit lock the name out for that source: each failure is a
    `login_failed` event, the lockout itself exactly one `lockout` event (not one per refused
    attempt after it), and no event holds the password."""
    node = start_node(tmp_path / "lockout", admin_password="lockout-admin-pw",
                      env={"CONNREG_AUTH_FAILURE_LIMIT": "3"})
    try:
        with httpx.Client(base_url=node.url, auth=("eve", "guess-1234"), timeout=30) as c:
            statuses = [c.get("/v2/").status_code for _ in range(5)]
        assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429], statuses
        events = _audit(node, actor="eve")
        assert sorted(e["event"] for e in events) == ["lockout"] + ["login_failed"] * 3, events
        lockout = next(e for e in events if e["event"] == "lockout")
        assert lockout["outcome"] == "denied" and lockout["seconds"] > 0 and lockout["source"]
        assert "guess-1234" not in json.dumps(events)
    finally:
        node.stop()
