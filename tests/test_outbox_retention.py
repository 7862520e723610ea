"""A ReadWrite edge away from its parent for longer than the message TTL loses nothing.

The change log is pruned to the message TTL so children that stay away too long reconcile; on a
ReadWrite edge the same log is its outbox, and an entry the parent has not acknowledged must
survive any number of prunes. Real processes: the edge restarts with its clock three days ahead
(past the default P2D TTL; pruning runs at start), then the root comes back.
"""

from __future__ import annotations

import re
import sqlite3

import httpx

from connreg.testing.hierarchy import Hierarchy, wait_for
from connreg.testing.oci import OCI_MANIFEST, make_image
from helpers import push_image

THREE_DAYS = str(3 * 24 * 3600)


def _outbox_rows(data_dir) -> int:
    with sqlite3.connect(data_dir / "metadata.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM changes WHERE origin != 'parent'").fetchone()[0]


def test_unpushed_outbox_survives_pruning_past_the_ttl(hierarchy: Hierarchy):
    root = hierarchy.root
    hierarchy.create("edgettl", "ReadWrite", ["keep/*"])
    edge = hierarchy.start_child("edgettl")
    # Something from the parent first: the prune pass has an old entry to remove (our signal).
    base = make_image([2000])
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        push_image(c, "keep/base", base, "v0")
    wait_for(lambda: _digest(edge, "keep/base", "v0") == base.digest, 60,
             message="keep/base:v0 synced down to the edge")
    root.stop()  # the edge cannot push from now on

    image = make_image([3000])
    with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=30) as c:
        push_image(c, "keep/app", image, "v1")
    assert _outbox_rows(edge.data_dir) == 1

    edge.env["CONNREG_TEST_CLOCK_OFFSET_SECONDS"] = THREE_DAYS
    edge.restart()  # prunes at start: everything it holds is "three days old" now
    wait_for(lambda: re.search(r"pruned \d+ change-log entries", edge.log()), 30,
             message="the edge's prune pass removing the parent's old entry")
    assert _outbox_rows(edge.data_dir) == 1, "the unsent outbox entry was pruned"

    root.start()
    wait_for(lambda: _digest(root, "keep/app", "v1") == image.digest, 60,
             message="keep/app:v1 pushed at the edge reaches the root")


def _digest(node, repo: str, ref: str) -> str | None:
    with httpx.Client(base_url=node.url, auth=node.admin, timeout=30) as c:
        r = c.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


def test_a_move_to_a_manifest_deleted_before_it_climbed_removes_the_tag_upstream(
        hierarchy: Hierarchy):
    """Outbox: t→B then delete B by digest (which takes t with it here) while the parent is
    away. The parent had t→A; it must end without t, not keep t→A (found by bench/soak.py)."""
    root = hierarchy.root
    hierarchy.create("edgemove", "ReadWrite", ["keep/*"])
    edge = hierarchy.start_child("edgemove")
    a, b = make_image([2100]), make_image([2200])
    with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=30) as c:
        push_image(c, "keep/app", a, "t")
        wait_for(lambda: _digest(root, "keep/app", "t") == a.digest, 60,
                 message="keep/app:t=A reaches the root")
        root.stop()
        push_image(c, "keep/app", b, "t")
        r = c.delete(f"/v2/keep/app/manifests/{b.digest}")
        assert r.status_code == 202, r.text
        push_image(c, "keep/app", a, "after")  # the outbox is drained once this arrives
    root.start()
    wait_for(lambda: _digest(root, "keep/app", "after") == a.digest, 60,
             message="the edge's outbox reached the root")
    assert _digest(root, "keep/app", "t") is None, "the root kept a tag the edge deleted"
