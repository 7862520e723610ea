"""Every OCI endpoint over plain HTTP, including the bad inputs a registry must refuse cleanly."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest

from connreg.testing.oci import OCI_INDEX, OCI_MANIFEST, make_image, make_index, sha256
from helpers import error_codes, push_blob, push_image


@pytest.fixture
def client(node):
    with httpx.Client(base_url=node.url, timeout=30) as c:
        yield c


def test_base_endpoint_and_version_header(client):
    r = client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_blob_get_head_and_ranges(client):
    data = os.urandom(100_000)
    digest = push_blob(client, "r/blobs", data)
    r = client.head(f"/v2/r/blobs/blobs/{digest}")
    assert r.status_code == 200 and r.headers["Content-Length"] == "100000"
    assert r.headers["Docker-Content-Digest"] == digest
    r = client.get(f"/v2/r/blobs/blobs/{digest}")
    assert r.content == data
    r = client.get(f"/v2/r/blobs/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["Content-Range"] == "bytes 10-19/100000"
    r = client.get(f"/v2/r/blobs/blobs/{digest}", headers={"Range": "bytes=99990-"})
    assert r.status_code == 206 and r.content == data[99990:]
    r = client.get(f"/v2/r/blobs/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert r.content == data[-5:]
    for bad in ("bytes=200000-", "bytes=50-10", "items=1-2", "bytes=-0"):
        r = client.get(f"/v2/r/blobs/blobs/{digest}", headers={"Range": bad})
        assert r.status_code == 416, bad
        assert r.headers["Content-Range"] == "bytes */100000"
    # A blob is visible only in repositories it was pushed or mounted into.
    assert client.head(f"/v2/other/blobs/{digest}").status_code == 404


def test_clients_that_leave_mid_blob_leave_nothing_behind(client, node):
    """Blob bodies are read one piece ahead of the socket; a client that hangs up mid-download
    must stop that reading and close the file (no leaked descriptors), and others go on."""
    data = os.urandom(24 * 1024 * 1024 + 5)
    digest = sha256(data)
    push_blob(client, "leave/app", data)

    def open_blob_files() -> int:
        fds = os.listdir(f"/proc/{node.proc.pid}/fd")
        return sum("/store/blobs/" in os.readlink(f"/proc/{node.proc.pid}/fd/{fd}")
                   for fd in fds if os.path.exists(f"/proc/{node.proc.pid}/fd/{fd}"))

    for _ in range(5):
        with httpx.Client(base_url=node.url, timeout=30) as early:
            with early.stream("GET", f"/v2/leave/app/blobs/{digest}") as r:
                assert r.status_code == 200
                next(r.iter_bytes(1024 * 1024))
    for _ in range(50):  # the server notices the closed connections
        if open_blob_files() == 0:
            break
        time.sleep(0.1)
    assert open_blob_files() == 0
    r = client.get(f"/v2/leave/app/blobs/{digest}")
    assert r.status_code == 200 and r.content == data
    r = client.get(f"/v2/leave/app/blobs/{digest}", headers={"Range": "bytes=5000000-"})
    assert r.status_code == 206 and r.content == data[5000000:]


def test_chunked_upload_with_status_and_out_of_order_chunk(client):
    data = os.urandom(3 * 1024 * 1024 + 17)
    r = client.post("/v2/r/chunks/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["Location"]
    chunks = [data[:1_000_000], data[1_000_000:2_500_000], data[2_500_000:]]
    offset = 0
    for chunk in chunks:
        end = offset + len(chunk) - 1
        r = client.patch(location, content=chunk, headers={
            "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}"})
        assert r.status_code == 202, r.text
        assert r.headers["Range"] == f"0-{end}"
        location = r.headers["Location"]
        offset = end + 1
        status = client.get(location)
        assert status.status_code == 204 and status.headers["Range"] == f"0-{end}"
    # A chunk that does not start where the upload ends is refused and changes nothing.
    r = client.patch(location, content=b"xx", headers={"Content-Range": "5-6"})
    assert r.status_code == 416
    assert client.get(location).headers["Range"] == f"0-{len(data) - 1}"
    digest = sha256(data)
    r = client.put(location, params={"digest": digest})
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/r/chunks/blobs/{digest}"
    assert client.get(f"/v2/r/chunks/blobs/{digest}").content == data
    # The session is gone once closed.
    assert client.get(location).status_code == 404


def test_streamed_patch_without_content_range_and_put_with_final_chunk(client):
    data = os.urandom(500_000)
    location = client.post("/v2/r/stream/blobs/uploads/").headers["Location"]
    r = client.patch(location, content=iter([data[:200_000]]))
    assert r.status_code == 202
    r = client.put(r.headers["Location"], params={"digest": sha256(data)}, content=data[200_000:])
    assert r.status_code == 201
    assert client.get(f"/v2/r/stream/blobs/{sha256(data)}").content == data


def test_wrong_digest_stores_nothing(client, node):
    data = b"hello world"
    wrong = sha256(b"something else")
    r = client.post("/v2/r/bad/blobs/uploads/", params={"digest": wrong}, content=data)
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/r/bad/blobs/{wrong}").status_code == 404
    assert client.head(f"/v2/r/bad/blobs/{sha256(data)}").status_code == 404
    blob_files = [p for p in (node.data_dir / "store" / "blobs").rglob("*") if p.is_file()]
    assert blob_files == []
    # A malformed digest is refused before any byte is read.
    r = client.post("/v2/r/bad/blobs/uploads/", params={"digest": "sha256:xyz"}, content=data)
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


def test_cancel_upload(client):
    location = client.post("/v2/r/cancel/blobs/uploads/").headers["Location"]
    client.patch(location, content=b"abc")
    assert client.delete(location).status_code == 204
    r = client.get(location)
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]
    assert client.delete(location).status_code == 404


def test_upload_session_belongs_to_its_repository(client):
    location = client.post("/v2/r/one/blobs/uploads/").headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    r = client.patch(f"/v2/r/two/blobs/uploads/{upload_id}", content=b"x")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]


def test_cross_repository_mount_explicit_and_automatic(client):
    data = os.urandom(10_000)
    digest = push_blob(client, "src/repo", data)
    r = client.post("/v2/dst/one/blobs/uploads/", params={"mount": digest, "from": "src/repo"})
    assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == digest
    assert client.get(f"/v2/dst/one/blobs/{digest}").content == data
    r = client.post("/v2/dst/two/blobs/uploads/", params={"mount": digest})
    assert r.status_code == 201
    # Unknown blob: the registry falls back to an ordinary upload session.
    r = client.post("/v2/dst/three/blobs/uploads/",
                    params={"mount": sha256(b"nope"), "from": "src/repo"})
    assert r.status_code == 202 and "/blobs/uploads/" in r.headers["Location"]


def test_manifest_put_get_head_by_tag_and_digest(client):
    image = make_image([1000, 2000])
    r = push_image(client, "app/web", image, "v1")
    assert r.headers["Docker-Content-Digest"] == image.digest
    assert r.headers["Location"] == f"/v2/app/web/manifests/{image.digest}"
    for ref in ("v1", image.digest):
        r = client.get(f"/v2/app/web/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.content == image.manifest
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == image.digest
        h = client.head(f"/v2/app/web/manifests/{ref}")
        assert h.status_code == 200 and h.headers["Content-Length"] == str(len(image.manifest))


def test_conditional_tag_updates_and_not_modified(client):
    """If-Match / If-None-Match on manifests: compare-and-swap of a tag (what the sync pusher
    uses so it never overwrites a tag its parent moved), and 304 for a current cached copy."""
    v1, v2, v3 = (make_image([1000 + i]) for i in range(3))
    for image in (v1, v2, v3):
        for blob in image.blobs():
            push_blob(client, "cas/app", blob)

    def put(image, ref="latest", **headers):
        return client.put(f"/v2/cas/app/manifests/{ref}", content=image.manifest,
                          headers={"Content-Type": OCI_MANIFEST, **headers})

    def tag():
        return client.head("/v2/cas/app/manifests/latest").headers.get("Docker-Content-Digest")

    # create only if absent
    assert put(v1, **{"If-None-Match": "*"}).status_code == 201
    r = put(v2, **{"If-None-Match": "*"})
    assert r.status_code == 412 and error_codes(r) == ["PRECONDITION_FAILED"]
    assert r.json()["errors"][0]["detail"] == {"reference": "latest", "current": v1.digest}
    assert tag() == v1.digest
    # move only from where we saw it
    r = put(v3, **{"If-Match": f'"{v2.digest}"'})
    assert r.status_code == 412 and tag() == v1.digest
    assert client.get(f"/v2/cas/app/manifests/{v3.digest}").status_code == 404  # nothing stored
    assert put(v2, **{"If-Match": f'"{v3.digest}", "{v1.digest}"'}).status_code == 201
    assert tag() == v2.digest
    assert put(v2, **{"If-Match": f'W/"{v2.digest}"'}).status_code == 412  # weak never matches
    assert put(v3, **{"If-Match": "*"}).status_code == 201 and tag() == v3.digest
    assert put(v1, "absent", **{"If-Match": "*"}).status_code == 412
    assert client.get("/v2/cas/app/manifests/absent").status_code == 404

    # conditional deletes of a tag
    r = client.delete("/v2/cas/app/manifests/latest", headers={"If-Match": f'"{v1.digest}"'})
    assert r.status_code == 412 and tag() == v3.digest
    r = client.delete("/v2/cas/app/manifests/latest", headers={"If-Match": f'"{v3.digest}"'})
    assert r.status_code == 202 and tag() is None
    assert client.get(f"/v2/cas/app/manifests/{v3.digest}").status_code == 200  # only the tag

    # GET/HEAD: 304 when the cached copy is current, 200 otherwise
    etag = client.get(f"/v2/cas/app/manifests/{v2.digest}").headers["ETag"]
    assert etag == f'"{v2.digest}"'
    for method in ("GET", "HEAD"):
        r = client.request(method, f"/v2/cas/app/manifests/{v2.digest}",
                           headers={"If-None-Match": etag})
        assert r.status_code == 304 and r.content == b""
        assert r.headers["Docker-Content-Digest"] == v2.digest
    r = client.get(f"/v2/cas/app/manifests/{v2.digest}", headers={"If-None-Match": '"other"'})
    assert r.status_code == 200 and r.content == v2.manifest
    # that request went through the app; a plain one is answered by api/fast_reads.py: the same
    plain = client.get(f"/v2/cas/app/manifests/{v2.digest}")
    assert plain.content == r.content
    assert ({k: v for k, v in plain.headers.items() if k != "date"}
            == {k: v for k, v in r.headers.items() if k != "date"})
    r = client.get(f"/v2/cas/app/manifests/{v2.digest}", headers={"If-Match": '"other"'})
    assert r.status_code == 412


def test_docker_schema2_manifest_and_list(client):
    image = make_image([1000])
    for blob in image.blobs():
        push_blob(client, "app/docker", blob)
    doc = json.loads(image.manifest)
    doc["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    doc["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    for layer in doc["layers"]:
        layer["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    body = json.dumps(doc).encode()
    r = client.put("/v2/app/docker/manifests/v2", content=body,
                   headers={"Content-Type": doc["mediaType"]})
    assert r.status_code == 201
    lst = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{"mediaType": doc["mediaType"], "digest": sha256(body), "size": len(body),
                       "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    r = client.put("/v2/app/docker/manifests/list", content=lst,
                   headers={"Content-Type": "application/vnd.docker.distribution.manifest.list.v2+json"})
    assert r.status_code == 201
    r = client.get("/v2/app/docker/manifests/list")
    assert r.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.list.v2+json"


def test_index_requires_its_child_manifests(client):
    images = [make_image([100]), make_image([200])]
    push_image(client, "app/idx", images[0], images[0].digest)
    index = make_index(images, ["amd64", "arm64"])
    r = client.put("/v2/app/idx/manifests/multi", content=index, headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]
    push_image(client, "app/idx", images[1], images[1].digest)
    r = client.put("/v2/app/idx/manifests/multi", content=index, headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 201


@pytest.mark.parametrize("body,code", [
    (b"{not json", "MANIFEST_INVALID"),
    (b"[]", "MANIFEST_INVALID"),
    (json.dumps({"schemaVersion": 1}).encode(), "MANIFEST_INVALID"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"mediaType": "x", "digest": "sha256:bad", "size": 1},
                 "layers": []}).encode(), "MANIFEST_INVALID"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"mediaType": "x", "digest": sha256(b"missing"), "size": 7},
                 "layers": []}).encode(), "MANIFEST_BLOB_UNKNOWN"),
])
def test_bad_manifests_are_refused_and_store_nothing(client, body, code):
    r = client.put("/v2/app/bad/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and error_codes(r) == [code], r.text
    assert client.get("/v2/app/bad/manifests/v1").status_code == 404
    assert client.get(f"/v2/app/bad/manifests/{sha256(body)}").status_code == 404


def test_manifest_digest_mismatch_and_oversize(client):
    image = make_image([100])
    for blob in image.blobs():
        push_blob(client, "app/mm", blob)
    wrong = sha256(b"other")
    r = client.put(f"/v2/app/mm/manifests/{wrong}", content=image.manifest,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    big = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "annotations": {"pad": "x" * (4 * 1024 * 1024)}}).encode()
    r = client.put("/v2/app/mm/manifests/big", content=big, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 413 and error_codes(r) == ["SIZE_INVALID"]
    assert client.get("/v2/app/mm/tags/list").json()["tags"] == []


@pytest.mark.parametrize("path", [
    "/v2/UPPER/case/manifests/latest",
    "/v2/-leading/manifests/latest",
    "/v2/a..b/manifests/latest",
    "/v2/" + "a" * 256 + "/manifests/latest",
])
def test_invalid_repository_names(client, path):
    r = client.get(path)
    assert r.status_code == 400 and error_codes(r) == ["NAME_INVALID"]


def test_invalid_tag_and_unknown_manifest(client):
    r = client.put("/v2/app/t/manifests/.bad", content=b"{}")
    assert r.status_code == 400 and error_codes(r) == ["TAG_INVALID"]
    r = client.get("/v2/app/t/manifests/.bad")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    r = client.get("/v2/app/t/manifests/nope")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]


def test_tags_list_pagination(client):
    image = make_image([100])
    push_image(client, "app/tags", image, "a")
    for tag in ["e", "c", "b", "d"]:
        r = client.put(f"/v2/app/tags/manifests/{tag}", content=image.manifest,
                       headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201
    assert client.get("/v2/app/tags/tags/list").json() == {"name": "app/tags",
                                                           "tags": ["a", "b", "c", "d", "e"]}
    r = client.get("/v2/app/tags/tags/list", params={"n": 2})
    assert r.json()["tags"] == ["a", "b"]
    assert r.headers["Link"] == '</v2/app/tags/tags/list?n=2&last=b>; rel="next"'
    r = client.get("/v2/app/tags/tags/list", params={"n": 2, "last": "d"})
    assert r.json()["tags"] == ["e"] and "Link" not in r.headers
    r = client.get("/v2/app/tags/tags/list", params={"n": "x"})
    assert r.status_code == 400 and error_codes(r) == ["PAGINATION_NUMBER_INVALID"]
    r = client.get("/v2/app/unknown/tags/list")
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]


def test_catalog_pagination(client):
    for name in ["c/x", "a/x", "b/x"]:
        push_blob(client, name, name.encode())
    assert client.get("/v2/_catalog").json() == {"repositories": ["a/x", "b/x", "c/x"]}
    r = client.get("/v2/_catalog", params={"n": 1, "last": "a/x"})
    assert r.json() == {"repositories": ["b/x"]}
    assert r.headers["Link"] == '</v2/_catalog?n=1&last=b%2Fx>; rel="next"'


def test_referrers_with_artifact_type_filter(client):
    subject = make_image([100])
    push_image(client, "app/ref", subject, "v1")
    subject_desc = {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.manifest)}
    sig = make_image([10], subject=subject_desc, artifact_type="application/example.sig")
    sbom = make_image([20], subject=subject_desc, artifact_type="application/example.sbom")
    for art in (sig, sbom):
        r = push_image(client, "app/ref", art, art.digest)
        assert r.headers["OCI-Subject"] == subject.digest
    r = client.get(f"/v2/app/ref/referrers/{subject.digest}")
    assert r.status_code == 200 and r.headers["Content-Type"] == OCI_INDEX
    found = {m["digest"]: m["artifactType"] for m in r.json()["manifests"]}
    assert found == {sig.digest: "application/example.sig", sbom.digest: "application/example.sbom"}
    r = client.get(f"/v2/app/ref/referrers/{subject.digest}",
                   params={"artifactType": "application/example.sbom"})
    assert [m["digest"] for m in r.json()["manifests"]] == [sbom.digest]
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    r = client.get(f"/v2/app/ref/referrers/{sha256(b'none')}")
    assert r.status_code == 200 and r.json()["manifests"] == []
    assert client.get("/v2/app/ref/referrers/sha256:bad").status_code == 400


def test_deletes(client):
    image = make_image([100, 200])
    push_image(client, "app/del", image, "v1")
    client.put("/v2/app/del/manifests/v2", content=image.manifest,
               headers={"Content-Type": OCI_MANIFEST})
    assert client.delete("/v2/app/del/manifests/v2").status_code == 202  # tag only
    assert client.get("/v2/app/del/manifests/v2").status_code == 404
    assert client.get("/v2/app/del/manifests/v1").status_code == 200
    assert client.delete(f"/v2/app/del/manifests/{image.digest}").status_code == 202
    assert client.get("/v2/app/del/manifests/v1").status_code == 404
    assert client.get("/v2/app/del/tags/list").json()["tags"] == []
    layer = sha256(image.layers[0])
    assert client.delete(f"/v2/app/del/blobs/{layer}").status_code == 202
    r = client.get(f"/v2/app/del/blobs/{layer}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
    assert client.delete(f"/v2/app/del/blobs/{layer}").status_code == 404
    assert client.delete(f"/v2/app/del/manifests/{image.digest}").status_code == 404


def test_unknown_route_and_method(client):
    r = client.get("/v2/app/x/whatever")
    assert r.status_code == 404 and r.json()["errors"]
    r = client.post("/v2/app/x/manifests/v1")
    assert r.status_code == 405 and error_codes(r) == ["UNSUPPORTED"]


def test_connection_survives_an_early_error_response(node):
    """An answer sent before the body arrived must not leave the body to be read as the next
    request (the keep-alive connection would hang)."""
    import socket
    import time

    def exchange(sock, raw_head: bytes, body: bytes = b"") -> bytes:
        sock.sendall(raw_head)
        time.sleep(0.02)
        if body:
            sock.sendall(body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
                     .split(b":")[1])
        while len(rest) < length:
            rest += sock.recv(65536)
        return head.split(b"\r\n")[0]

    with httpx.Client(base_url=node.url) as c:
        location = c.post("/v2/early/err/blobs/uploads/").headers["Location"]
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        body = b"x" * 20
        status = exchange(sock, (f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Range: 22-41\r\n"
                                 f"Content-Length: {len(body)}\r\n\r\n").encode(), body)
        assert b" 416" in status
        status = exchange(sock, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200" in status


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/nope", 404), ("POST", "/v2/", 405), ("DELETE", "/healthz", 405),
])
def test_framework_errors_use_the_oci_error_body(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status
    assert r.json()["errors"][0]["code"] in ("NOT_FOUND", "UNSUPPORTED")
