"""Sync schedules and windows: outside its window a connected registry leaves its parent alone;
inside, it catches up. Uses the test-only clock offset and minimum window (docs/sync.md)."""

from __future__ import annotations

import time

import httpx

from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.oci import make_image
from helpers import push_image

WINDOW_SECONDS = 15  # windows open at every minute's second 0 and last 15 s (child's clock)


def traffic(root, name: str) -> int:
    r = httpx.get(f"{root.url}/connreg/v1/sync/traffic", auth=root.admin, timeout=10)
    r.raise_for_status()
    return r.json()["requests"].get(name, 0)


def child_second(offset: float) -> float:
    return (time.time() + offset) % 60


def test_no_traffic_outside_the_window_and_catch_up_inside(tmp_path):
    h = Hierarchy(tmp_path, env={"CONNREG_TEST_MIN_SYNC_WINDOW_SECONDS": "10"})
    try:
        root = h.start_root()
        h.create("depot1", "ReadOnly", ["win/*"],
                 extra=["--sync-schedule", "*/1 * * * *", "--sync-window", f"PT{WINDOW_SECONDS}S"])
        # Put the child's clock at second 45 of a minute: 15 s before its next window.
        offset = (45 - time.time() % 60) % 60
        child = h.start_child("depot1", env={"CONNREG_TEST_CLOCK_OFFSET_SECONDS": f"{offset}"})
        image = make_image([20_000])
        with httpx.Client(base_url=root.url, auth=root.admin) as c:
            push_image(c, "win/app", image, "v1")

        # Closed window: nothing reaches the parent, nothing arrives.
        assert child_second(offset) < 57, "test setup too slow to observe a closed window"
        while child_second(offset) < 57:
            time.sleep(0.5)
        assert traffic(root, "depot1") == 0
        with httpx.Client(base_url=child.url, auth=child.admin) as c:
            assert c.get("/v2/win/app/manifests/v1").status_code == 404
        assert "outside the sync window" in child.log()

        # The window opens at second 0: the child catches up within it.
        with httpx.Client(base_url=child.url, auth=child.admin) as c:
            wait_for(lambda: c.get("/v2/win/app/manifests/v1").status_code == 200, 20,
                     message="content inside the window")
        assert traffic(root, "depot1") > 0
        doc = cli(root, "connected-registry", "show", "--name", "depot1")
        assert doc["lastActivityTime"]

        # After the window closes, the child falls silent again.
        while child_second(offset) < WINDOW_SECONDS + 1 or child_second(offset) > 50:
            time.sleep(0.5)
        wait_for(lambda: "sync window closed" in child.log(), 10, message="window closed")
        before = traffic(root, "depot1")
        time.sleep(3)
        assert traffic(root, "depot1") == before
    finally:
        h.stop_all()
