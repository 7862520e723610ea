"""Hierarchical sync across real processes: root → A (ReadWrite) → B (ReadWrite) → C (ReadOnly).

Each node is its own `connreg serve` with its own data dir, configured through the CLI and
connection strings. The tests run in order and share the hierarchy, like an operator's day:
propagation, pushes at the edge, a ReadOnly refusal, an outage, a crash, a conflict, an expired
cursor, a repository removed from a node's set.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest

from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.oci import OCI_MANIFEST, make_image
from helpers import push_image

WRITER = "shopwriter"
READER = "shopreader"
PROPAGATION_FILE = "propagation-seconds.txt"


class Tree:
    """The shared hierarchy plus client credentials per node."""

    def __init__(self, h: Hierarchy, writer: tuple[str, str], reader: tuple[str, str]):
        self.h = h
        self.writer = writer
        self.reader = reader

    def node(self, name):
        return self.h.nodes[name]

    def client(self, name: str, auth=None) -> httpx.Client:
        node = self.node(name)
        return httpx.Client(base_url=node.url, auth=auth or node.admin, timeout=30)

    def digest(self, name: str, repo: str, tag: str, auth=None) -> str | None:
        with self.client(name, auth) as c:
            r = c.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
            return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None

    def wait_digest(self, name: str, repo: str, tag: str, digest: str, timeout=30.0, auth=None):
        wait_for(lambda: self.digest(name, repo, tag, auth) == digest, timeout,
                 message=f"{repo}:{tag}={digest[:19]} at {name}")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    h = Hierarchy(tmp_path_factory.mktemp("sync"))
    try:
        h.start_root()
        root = h.root
        cli(root, "token", "create", "--name", WRITER,
            "--repository", "shop/*", "content/read", "content/write", "content/delete",
            "metadata/read", "metadata/write",
            "--repository", "base/*", "content/read", "metadata/read")
        cli(root, "token", "create", "--name", READER,
            "--repository", "shop/*", "content/read", "metadata/read",
            "--repository", "base/*", "content/read", "metadata/read")
        writer_pw = cli(root, "token", "credential", "generate", "--name", WRITER, "--password1")
        reader_pw = cli(root, "token", "credential", "generate", "--name", READER, "--password1")
        h.create("shopA", "ReadWrite", ["shop/*", "base/*"])
        h.create("shopB", "ReadWrite", ["shop/*", "base/*"], parent="shopA",
                 extra=["--client-tokens", WRITER, READER])
        h.create("shopC", "ReadOnly", ["shop/app", "base/os"], parent="shopB",
                 extra=["--client-tokens", READER])
        h.start_child("shopA")
        h.start_child("shopB", parent="shopA")
        h.start_child("shopC", parent="shopB")
        yield Tree(h, (WRITER, _password(writer_pw)), (READER, _password(reader_pw)))
    finally:
        h.stop_all()


def _password(doc) -> str:
    return next(p["value"] for p in doc["passwords"] if p["name"] == "password1")


def test_push_at_root_reaches_the_third_level_in_seconds(tree, tmp_path):
    image = make_image([200_000, 30_000])
    with tree.client("root") as c:
        # Wait until C is synced up and idle, so the timing is propagation alone.
        wait_for(lambda: tree.node("shopC").log().count("reconciling") >= 1, 30)
        started = time.monotonic()
        push_image(c, "base/os", image, "v1")
    tree.wait_digest("shopC", "base/os", "v1", image.digest, auth=tree.reader)
    elapsed = time.monotonic() - started
    (tree.h.base / PROPAGATION_FILE).write_text(f"{elapsed:.2f}\n")
    print(f"\npropagation root -> shopC (3 hops): {elapsed:.2f} s")
    assert elapsed < 10
    # Digests identical at every hop, and a real client pulls it from the edge.
    for name in ("shopA", "shopB"):
        assert tree.digest(name, "base/os", "v1") == image.digest
    if shutil.which("skopeo"):
        user, pw = tree.reader
        out = subprocess.run(
            ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", "--src-creds",
             f"{user}:{pw}", f"docker://{tree.node('shopC').host}/base/os:v1",
             f"oci:{tmp_path / 'out'}:v1"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        index = json.loads((tmp_path / "out" / "index.json").read_text())
        assert index["manifests"][0]["digest"] == image.digest


def test_push_at_b_climbs_to_root_and_descends_to_c(tree):
    image = make_image([50_000])
    with tree.client("shopB", tree.writer) as c:
        push_image(c, "shop/app", image, "v2")
    for name in ("shopA", "root"):
        tree.wait_digest(name, "shop/app", "v2", image.digest)
    tree.wait_digest("shopC", "shop/app", "v2", image.digest, auth=tree.reader)


def test_content_outside_a_set_never_reaches_it(tree):
    image = make_image([10_000])
    with tree.client("root") as c:
        push_image(c, "shop/other", image, "v1")
    tree.wait_digest("shopB", "shop/other", "v1", image.digest)
    time.sleep(2)
    assert tree.digest("shopC", "shop/other", "v1") is None
    # The parent refuses, not just the child skipping: C's sync token cannot read it at B.
    settings = tree.node("shopC").data_dir / "connected-registry.json"
    assert settings.exists()
    with tree.client("shopC") as c:
        assert "shop/other" not in c.get("/v2/_catalog").json()["repositories"]


def test_push_at_read_only_c_is_denied(tree):
    image = make_image([1000])
    with tree.client("shopC") as c:  # even the node's admin: the mode forbids writes
        r = c.post("/v2/shop/app/blobs/uploads/", params={"digest": image.digest}, content=b"x")
        assert r.status_code == 403
        assert r.json()["errors"][0]["code"] == "DENIED"
        assert "ReadOnly" in r.json()["errors"][0]["message"]


def test_outage_of_a_then_everything_converges(tree):
    a = tree.node("shopA")
    a.stop()
    at_b = make_image([40_000])
    at_root = make_image([40_000])
    with tree.client("shopB", tree.writer) as c:
        push_image(c, "shop/app", at_b, "v3")  # B keeps accepting pushes while cut off
        assert c.get("/v2/base/os/manifests/v1").status_code == 200  # and keeps serving
    with tree.client("root") as c:
        push_image(c, "base/os", at_root, "v2")
    time.sleep(1)
    a.start()
    tree.wait_digest("root", "shop/app", "v3", at_b.digest)
    tree.wait_digest("shopC", "base/os", "v2", at_root.digest, auth=tree.reader)
    tree.wait_digest("shopC", "shop/app", "v3", at_b.digest, auth=tree.reader)


def test_edge_restarts_while_its_grandparent_is_down(tree):
    """B restarting while A is up but the root is not: A can only answer 503 to the
    activation it must relay upward. B comes up from its recorded state and serves; all
    converges once the root is back."""
    root, b = tree.node("root"), tree.node("shopB")
    at_b = make_image([30_000])
    root.stop()
    try:
        b.stop()
        b.start()
        assert "cannot confirm the activation now (HTTP 503" in b.log()
        with tree.client("shopB", tree.writer) as c:
            push_image(c, "shop/app", at_b, "reboot")  # accepts pushes while cut off
            assert c.get("/v2/base/os/manifests/v1").status_code == 200  # and serves
    finally:
        root.start()
    tree.wait_digest("root", "shop/app", "reboot", at_b.digest, timeout=90)


def test_kill_b_mid_sync_converges_after_restart(tree):
    big = make_image([6_000_000, 6_000_000, 6_000_000])
    with tree.client("root") as c:
        push_image(c, "base/os", big, "big")
    b = tree.node("shopB")
    blob_dir = b.data_dir / "store"
    wait_for(lambda: any(p.name.startswith("sync-") for p in (blob_dir / "uploads").iterdir())
             if (blob_dir / "uploads").exists() else False, 30, interval=0.01,
             message="B fetching")
    b.kill()
    b.start()
    tree.wait_digest("shopB", "base/os", "big", big.digest, timeout=60)
    tree.wait_digest("shopC", "base/os", "big", big.digest, timeout=60, auth=tree.reader)
    with tree.client("shopC", tree.reader) as c:
        for layer in big.layers:
            from connreg.testing.oci import sha256
            assert c.get(f"/v2/base/os/blobs/{sha256(layer)}").content == layer


def test_conflict_parent_wins_and_is_reported(tree):
    a, b = tree.node("shopA"), tree.node("shopB")
    x, y, z = make_image([3000]), make_image([3000]), make_image([3000])
    with tree.client("root") as c:
        push_image(c, "shop/app", x, "conf")
    tree.wait_digest("shopB", "shop/app", "conf", x.digest)
    a.stop()
    with tree.client("shopB", tree.writer) as c:
        push_image(c, "shop/app", y, "conf")  # B moves the tag while A is away
    b.stop()
    a.start()
    with tree.client("shopA") as c:
        push_image(c, "shop/app", z, "conf")  # ...and A moves it too
    tree.wait_digest("root", "shop/app", "conf", z.digest)
    b.start()
    tree.wait_digest("shopB", "shop/app", "conf", z.digest, timeout=30)
    # B's manifest is not lost: reachable by digest at B, A and the root.
    for name in ("shopB", "shopA", "root"):
        wait_for(lambda n=name: tree.digest(n, "shop/app", y.digest) == y.digest, 30,
                 message=f"{y.digest[:19]} by digest at {name}")
    assert tree.digest("shopA", "shop/app", "conf") == z.digest

    def conflict_at_root():
        doc = cli(tree.h.root, "connected-registry", "show", "--name", "shopB")
        return [d for d in doc["statusDetails"] if d["code"] == "SYNC_CONFLICT"]

    details = wait_for(conflict_at_root, 30, interval=0.5, message="SYNC_CONFLICT at root")
    text = details[-1]["description"]
    assert "shop/app:conf" in text and y.digest in text and z.digest in text


def test_expired_cursor_leads_to_full_reconciliation(tree):
    a = tree.node("shopA")
    a.stop()
    late = make_image([5000])
    with tree.client("root") as c:
        push_image(c, "shop/app", late, "ttl")
    # Three days later (test clock) the root prunes entries past A's P2D message TTL.
    root = tree.h.root
    root.env["CONNREG_TEST_CLOCK_OFFSET_SECONDS"] = str(3 * 86400)
    root.restart()
    a.start()
    tree.wait_digest("shopA", "shop/app", "ttl", late.digest, timeout=30)
    tree.wait_digest("shopC", "shop/app", "ttl", late.digest, timeout=30, auth=tree.reader)
    assert "expired at the parent; reconciling fully" in a.log()
    root.env.pop("CONNREG_TEST_CLOCK_OFFSET_SECONDS")
    root.restart()


def test_status_of_the_whole_tree_is_visible_at_root(tree):
    def all_online():
        docs = cli(tree.h.root, "connected-registry", "list")["connectedRegistries"]
        states = {d["name"]: d["connectionState"] for d in docs}
        return states if set(states.values()) <= {"Online", "Syncing"} and len(states) == 3 else None

    states = wait_for(all_online, 30, interval=0.5, message="all Online at root")
    assert set(states) == {"shopA", "shopB", "shopC"}
    doc = cli(tree.h.root, "connected-registry", "show", "--name", "shopC")
    assert doc["lastSuccessfulSyncTime"] and doc["version"]
    assert doc["activationStatus"] == "Active"


def test_repository_removed_from_read_only_c_is_purged(tree):
    assert tree.digest("shopC", "base/os", "v1", tree.reader)
    cli(tree.h.root, "connected-registry", "repo", "--name", "shopC", "--remove", "base/os")
    wait_for(lambda: tree.digest("shopC", "base/os", "v1") is None, 30,
             message="base/os purged at C")
    with tree.client("shopC") as c:
        assert "base/os" not in c.get("/v2/_catalog").json()["repositories"]
    # B (ReadWrite) keeps its copy of everything it holds.
    assert tree.digest("shopB", "base/os", "v1")


def test_disabled_client_token_stops_working_at_the_edge(tree):
    with tree.client("shopC", tree.reader) as c:
        assert c.get("/v2/shop/app/tags/list").status_code == 200
    cli(tree.h.root, "token", "update", "--name", READER, "--status", "disabled")
    with tree.client("shopC", tree.reader) as c:
        wait_for(lambda: c.get("/v2/shop/app/tags/list").status_code == 401, 30,
                 message="reader refused at C")


def test_resync_runs_a_full_reconciliation_now(tree):
    b = tree.node("shopB")
    before = b.log().count("reconciling")
    cli(tree.h.root, "connected-registry", "resync", "--name", "shopB")
    wait_for(lambda: b.log().count("reconciling") > before, 30, message="resync at B")


def test_disabled_sync_token_stops_the_registry_with_a_clear_status(tree):
    c = tree.node("shopC")
    refusals = c.log().count("refused by parent")
    cli(tree.h.root, "token", "update", "--name", "shopC-sync-token", "--status", "disabled")
    doc = cli(tree.h.root, "connected-registry", "show", "--name", "shopC")
    assert doc["connectionState"] == "Offline"
    assert any(d["code"] == "SYNC_TOKEN_DISABLED" for d in doc["statusDetails"])
    # The node keeps serving what it has, and says why it stopped syncing.
    wait_for(lambda: c.log().count("refused by parent") > refusals, 30, message="C refused")
    with tree.client("shopC") as client:
        repo = client.get("/v2/_catalog").json()["repositories"][0]
        tag = client.get(f"/v2/{repo}/tags/list").json()["tags"][0]
        assert client.get(f"/v2/{repo}/manifests/{tag}").status_code == 200


def test_no_secret_reaches_any_log_or_database(tree):
    secrets = [tree.writer[1], tree.reader[1], tree.h.root.admin_password]
    for name, node in tree.h.nodes.items():
        conn = node.env.get("CONNREG_CONNECTION_STRING", "")
        secrets += [part.split("=", 1)[1] for part in conn.split(";")
                    if part.startswith("SyncTokenPassword=")]
    assert len(secrets) >= 6
    for node in tree.h.nodes.values():
        files = [node.log_path, *node.data_dir.glob("*.sqlite*")]
        for path in files:
            blob = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in blob, f"a secret leaked into {path.name}"


def test_log_level_set_at_the_root_applies_at_the_node(tree):
    b = tree.node("shopB")
    cli(tree.h.root, "connected-registry", "update", "--name", "shopB", "--log-level", "Warning")
    wait_for(lambda: cli(tree.h.root, "connected-registry", "show", "--name", "shopB")
             ["logLevel"] == "Warning", 10)
    time.sleep(3)  # the feed tells B its configuration changed; B applies it
    quiet = make_image([2000])
    mark = len(b.log())
    with tree.client("root") as c:
        push_image(c, "shop/app", quiet, "quiet")
    tree.wait_digest("shopB", "shop/app", "quiet", quiet.digest)
    assert "synced shop/app" not in b.log()[mark:]
    cli(tree.h.root, "connected-registry", "update", "--name", "shopB", "--log-level",
        "Information")
    time.sleep(3)
    loud = make_image([2000])
    mark = len(b.log())
    with tree.client("root") as c:
        push_image(c, "shop/app", loud, "loud")
    tree.wait_digest("shopB", "shop/app", "loud", loud.digest)
    wait_for(lambda: "synced shop/app" in b.log()[mark:], 10, message="INFO logs back at B")


def test_a_pull_at_the_third_level_reaches_the_root_audit_trail(tree):
    """C's events climb with the status reports: C → B → A → the root (each hop relays its
    children's events), and the root's trail names the node where the pull happened."""
    # C's sync token was disabled by an earlier test: enabled again, C syncs again.
    cli(tree.h.root, "token", "update", "--name", "shopC-sync-token", "--status", "enabled")
    image = make_image([3000])
    with tree.client("root") as c:
        push_image(c, "shop/app", image, "audited")
    tree.wait_digest("shopC", "shop/app", "audited", image.digest, timeout=90)
    with tree.client("shopC") as c:  # C's own admin
        assert c.get("/v2/shop/app/manifests/audited",
                     headers={"Accept": OCI_MANIFEST}).status_code == 200

    def at_root() -> list[dict]:
        with tree.client("root") as c:
            r = c.get("/connreg/v1/audit", params={"registry": "shopC",
                                                   "repository": "shop/app"})
            r.raise_for_status()
            return [e for e in r.json()["events"]
                    if e["event"] == "pull" and e.get("tag") == "audited"]
    pulls = wait_for(at_root, 90, interval=1, message="C's pull in the root's audit trail")
    assert pulls[0]["outcome"] == "success" and pulls[0]["digest"] == image.digest
