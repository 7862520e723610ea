"""Upward sync of a large blob survives the parent crashing mid-upload: the connected registry
continues the parent's upload session where the parent's copy ends. The parent runs without
delta here, so this is the whole-blob push; the push by chunks is in test_delta_upward.py."""

from __future__ import annotations

import os
import time

import httpx

from connreg.testing.hierarchy import Hierarchy, wait_for
from connreg.testing.oci import sha256
from test_delta import push_artifact


def test_parent_crash_mid_push_resumes_the_upload(tmp_path):
    h = Hierarchy(tmp_path)
    try:
        root = h.start_root()
        root.env["CONNREG_DELTA"] = "false"
        root.restart()
        h.create("store7", "ReadWrite", ["up/*"], extra=["--bandwidth-limit", "4000000"])
        edge = h.start_child("store7")
        data = os.urandom(24 * 1024 * 1024)
        with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=60) as c:
            push_artifact(c, "up/data", "v1", data)
        uploads = root.data_dir / "store" / "uploads"

        def parent_has_a_third() -> bool:
            return uploads.exists() and any(p.stat().st_size > len(data) // 3
                                            for p in uploads.iterdir())

        wait_for(parent_has_a_third, 30, interval=0.05, message="a third at the parent")
        root.kill()
        time.sleep(3)  # long enough for the edge's next chunk to fail
        root.start()
        wait_for(lambda: httpx.get(f"{root.url}/v2/up/data/blobs/{sha256(data)}",
                                   auth=root.admin, timeout=60).content == data, 60,
                 message="blob at the parent")
        assert "resuming upload of" in edge.log()
        r = httpx.get(f"{root.url}/v2/up/data/manifests/v1", auth=root.admin)
        assert r.status_code == 200
    finally:
        h.stop_all()
