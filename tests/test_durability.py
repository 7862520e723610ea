"""Restarts and crashes: upload sessions survive a restart; a kill -9 never exposes a partial blob."""

from __future__ import annotations

import os
import threading
import time

import httpx

from connreg.testing.oci import sha256


def test_upload_session_survives_restart(node):
    data = os.urandom(2_000_000)
    with httpx.Client(base_url=node.url, timeout=30) as c:
        r = c.post("/v2/keep/me/blobs/uploads/")
        location = r.headers["Location"]
        r = c.patch(location, content=data[:1_200_000],
                    headers={"Content-Range": "0-1199999"})
        assert r.status_code == 202
    node.restart()
    with httpx.Client(base_url=node.url, timeout=30) as c:
        status = c.get(location)
        assert status.status_code == 204 and status.headers["Range"] == "0-1199999"
        r = c.patch(location, content=data[1_200_000:],
                    headers={"Content-Range": f"1200000-{len(data) - 1}"})
        assert r.status_code == 202
        r = c.put(location, params={"digest": sha256(data)})
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/keep/me/blobs/{sha256(data)}").content == data


def test_kill_during_upload_leaves_no_partial_blob(node):
    data = os.urandom(32 * 1024 * 1024)
    digest = sha256(data)
    sent = threading.Event()

    def slow_body():
        step = 1024 * 1024
        for i in range(0, len(data), step):
            yield data[i:i + step]
            if i >= 8 * step:
                sent.set()
                time.sleep(0.2)

    def push():
        try:
            httpx.post(f"{node.url}/v2/crash/test/blobs/uploads/", params={"digest": digest},
                       content=slow_body(), timeout=60)
        except httpx.HTTPError:
            pass  # the server dies under us: expected

    pusher = threading.Thread(target=push)
    pusher.start()
    assert sent.wait(30)
    node.kill()
    pusher.join(60)

    node.start()
    with httpx.Client(base_url=node.url, timeout=60) as c:
        assert c.head(f"/v2/crash/test/blobs/{digest}").status_code == 404
        blob_path = node.data_dir / "store" / "blobs" / "sha256" / digest[7:9] / digest[7:]
        assert not blob_path.exists()
        # The push can simply be done again.
        r = c.post("/v2/crash/test/blobs/uploads/", params={"digest": digest}, content=data)
        assert r.status_code == 201, r.text
        assert c.get(f"/v2/crash/test/blobs/{digest}").content == data
