"""The OCI blob endpoints of a node whose blobs live on S3 (rclone serve s3 on loopback):
uploads flushed between requests, GETs streamed through the store with ranges, and
`blob_redirect` answering 307 to a presigned URL. Replicas behind a balancer are
tests/test_scale*.py; the store itself is tests/test_blob_store_suite.py."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from connreg.testing import start_node
from connreg.testing.s3 import start_s3_server


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "root")
    yield server
    server.stop()


def s3_node(tmp_path, s3, prefix: str, *extra: str, env: dict | None = None):
    return start_node(tmp_path / prefix, args=["--no-auth", "--blob-store", s3.url(prefix),
                                               *extra],
                      env={**s3.env(), **(env or {})})


def test_chunked_upload_and_ranged_get(tmp_path, s3):
    node = s3_node(tmp_path, s3, "api")
    try:
        data = hashlib.shake_256(b"layer").digest(12 * 1024 * 1024 + 17)  # > 1 part of 8 MiB
        with httpx.Client(base_url=node.url, timeout=60) as c:
            start = c.post("/v2/demo/blobs/uploads/")
            assert start.status_code == 202
            location = start.headers["Location"]
            cut = 9 * 1024 * 1024 + 5
            first = c.patch(location, content=data[:cut],
                            headers={"Content-Range": f"0-{cut - 1}",
                                     "Content-Type": "application/octet-stream"})
            assert first.status_code == 202 and first.headers["Range"] == f"0-{cut - 1}"
            # the session's state is in the bucket, not only in the node's memory
            upload_id = location.rstrip("/").split("/")[-1].split("?")[0]
            assert s3.blob_store("api").upload_size(upload_id) == cut
            status = c.get(location)
            assert status.status_code == 204 and status.headers["Range"] == f"0-{cut - 1}"
            done = c.put(location, params={"digest": sha256(data)}, content=data[cut:],
                         headers={"Content-Range": f"{cut}-{len(data) - 1}"})
            assert done.status_code == 201, done.text
            blob = f"/v2/demo/blobs/{sha256(data)}"
            got = c.get(blob)
            assert got.status_code == 200 and got.content == data
            part = c.get(blob, headers={"Range": "bytes=8388600-8388700"})
            assert part.status_code == 206 and part.content == data[8388600:8388701]
            head = c.head(blob)
            assert head.headers["Content-Length"] == str(len(data))
            wrong = c.post("/v2/demo/blobs/uploads/", params={"digest": sha256(b"other")},
                           content=b"not other")
            assert wrong.status_code == 400
            assert not s3.blob_store("api").exists(sha256(b"other"))
    finally:
        node.stop()


def test_blob_redirect_to_presigned_url(tmp_path, s3):
    node = s3_node(tmp_path, s3, "redirect", env={"CONNREG_BLOB_REDIRECT": "true",
                                                   "CONNREG_BLOB_REDIRECT_SECONDS": "120"})
    try:
        data = b"redirected bytes" * 1000
        with httpx.Client(base_url=node.url, timeout=60) as c:
            pushed = c.post("/v2/demo/blobs/uploads/", params={"digest": sha256(data)},
                            content=data)
            assert pushed.status_code == 201
            blob = f"/v2/demo/blobs/{sha256(data)}"
            got = c.get(blob)
            assert got.status_code == 307
            location = got.headers["Location"]
            assert location.startswith(s3.endpoint + "/") and "X-Amz-Signature=" in location
            assert "X-Amz-Expires=120" in location
            assert httpx.get(location).content == data
            followed = c.get(blob, follow_redirects=True, headers={"Range": "bytes=5-9"})
            assert followed.content == data[5:10]
            assert c.head(blob).status_code == 200  # HEAD answers itself
            assert c.get("/v2/demo/blobs/" + sha256(b"absent")).status_code == 404
    finally:
        node.stop()
