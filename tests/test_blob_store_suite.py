"""The blob store's behaviour, written once and run against every backend.

`filesystem` is `_core.BlobStore` on a local folder; `s3` is `_core.S3BlobStore` on a real
S3-compatible server (`rclone serve s3` over a folder, testing/s3.py). Each test gets a fresh
store; `reopen()` gives another instance over the same storage, as another replica (or a
restarted process) would see it.
"""

from __future__ import annotations

import hashlib
import itertools
import os

import httpx
import pytest

from connreg import _core
from connreg.testing.s3 import start_s3_server

# Small parts on S3 so that a few hundred KiB cross several of them (rclone takes any part
# size; AWS S3 wants 5 MiB, the default is 8).
PART = 64 * 1024
_ids = itertools.count()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def payload(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(n) if n else b""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "root")
    yield server
    server.stop()


class Backend:
    def __init__(self, kind: str, make):
        self.kind = kind
        self._make = make
        self.store = make()

    def reopen(self):
        """Another store over the same storage (another replica)."""
        return self._make()


@pytest.fixture(params=["filesystem", "s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "filesystem":
        root = tmp_path / "store"
        return Backend("filesystem", lambda: _core.BlobStore(str(root)))
    server = request.getfixturevalue("s3")
    prefix = f"t{next(_ids)}-{os.getpid()}"
    return Backend("s3", lambda: server.blob_store(prefix, part_size=PART))


def test_put_bytes_read_exists_size(backend):
    store = backend.store
    data = payload(1000)
    digest = store.put_bytes(data)
    assert digest == sha256(data)
    assert store.exists(digest) and store.size(digest) == 1000
    assert store.read(digest) == data
    size, mtime = store.stat(digest)
    assert size == 1000 and mtime > 0
    assert store.put_bytes(data, digest) == digest  # again: verified, nothing rewritten
    assert backend.reopen().read(digest) == data


def test_put_bytes_refuses_a_mismatch_and_stores_nothing(backend):
    store = backend.store
    claimed = sha256(b"something else")
    with pytest.raises(_core.DigestMismatch):
        store.put_bytes(b"data", claimed)
    assert not store.exists(claimed) and store.size(claimed) is None
    assert store.stat(claimed) is None
    assert store.list_digests() == []


def test_ranged_reads_clamp_like_a_slice(backend):
    store = backend.store
    data = payload(5000, 1)
    digest = store.put_bytes(data)
    assert store.read(digest, 100, 50) == data[100:150]
    assert store.read(digest, 4990, 100) == data[4990:]
    assert store.read(digest, 4000) == data[4000:]
    assert store.read(digest, 5000) == b""
    assert store.read(digest, 9999, 10) == b""
    assert store.read(digest, 10, 0) == b""
    missing = sha256(b"missing")
    for args in [(missing,), (missing, 10, 5), (missing, 0, 0)]:
        with pytest.raises(_core.BlobNotFound):
            store.read(*args)


def test_empty_blob(backend):
    store = backend.store
    upload = store.upload("empty")
    assert upload.commit(sha256(b"")) == sha256(b"")
    assert store.size(sha256(b"")) == 0 and store.read(sha256(b"")) == b""


def test_upload_commit_makes_the_blob_and_ends_the_upload(backend):
    store = backend.store
    data = payload(3 * PART + 123, 2)
    upload = store.upload("u1")
    assert store.upload_exists("u1") and store.upload_size("u1") == 0
    for i in range(0, len(data), 10_000):
        upload.write(data[i:i + 10_000])
    assert upload.flush() == len(data) == upload.size
    assert store.upload_size("u1") == len(data)
    assert not store.exists(sha256(data))  # nothing visible before the commit
    assert upload.commit(sha256(data)) == sha256(data)
    assert store.read(sha256(data)) == data
    assert not store.upload_exists("u1") and store.upload_size("u1") is None
    with pytest.raises(_core.UploadNotFound):
        upload.write(b"more")


def test_commit_refuses_a_mismatch_and_the_upload_goes_on(backend):
    store = backend.store
    data = payload(2 * PART + 7, 3)
    upload = store.upload("u2")
    upload.write(data[:PART + 5])
    wrong = sha256(b"not this")
    with pytest.raises(_core.DigestMismatch):
        upload.commit(wrong)
    assert not store.exists(wrong) and not store.exists(sha256(data))
    assert store.list_digests() == []
    # the bytes written before the refusal are kept, here and on another replica
    assert store.upload_size("u2") == PART + 5
    other = backend.reopen().upload("u2")
    assert other.size == PART + 5
    other.write(data[PART + 5:])
    assert other.commit(sha256(data)) == sha256(data)
    assert store.read(sha256(data)) == data


def test_upload_continues_on_another_replica(backend):
    data = payload(5 * PART + 999, 4)
    cuts = [0, 1000, PART + 1, 3 * PART, 3 * PART + 10, len(data)]
    stores = [backend.store, backend.reopen(), backend.reopen()]
    for n, (start, end) in enumerate(zip(cuts, cuts[1:])):
        store = stores[n % len(stores)]
        upload = store.upload("moving")
        upload.write(b"")  # how a replica catches up with a session (upload_sessions.py)
        assert upload.size == start, f"replica {n % 3} sees {upload.size}, expected {start}"
        upload.write(data[start:end])
        upload.flush()
    final = stores[2].upload("moving")
    final.write(b"")
    assert final.size == len(data)
    assert final.commit(sha256(data)) == sha256(data)
    for store in stores:
        assert store.read(sha256(data), PART - 10, 20) == data[PART - 10:PART + 10]


def test_deduplicated_commit_ends_the_upload(backend):
    store = backend.store
    data = payload(PART + 1, 5)
    digest = store.put_bytes(data)
    upload = store.upload("dup")
    upload.write(data)
    assert upload.commit(digest) == digest
    assert not store.upload_exists("dup")
    assert store.read(digest) == data


def test_abort(backend):
    store = backend.store
    upload = store.upload("gone")
    upload.write(payload(2 * PART, 6))
    upload.flush()
    store.abort_upload("gone")
    assert not store.upload_exists("gone") and store.upload_size("gone") is None
    store.abort_upload("gone")  # idempotent
    with pytest.raises(_core.UploadNotFound):
        upload.commit(sha256(payload(2 * PART, 6)))
    # the same id starts afresh
    assert store.upload("gone").size == 0
    store.upload("gone").abort()
    assert not store.upload_exists("gone")
    assert store.list_digests() == []


def test_delete(backend):
    store = backend.store
    digest = store.put_bytes(b"to delete")
    assert store.delete(digest) is True
    assert store.delete(digest) is False
    assert not store.exists(digest)
    with pytest.raises(_core.BlobNotFound):
        store.read(digest)


def test_listing_for_gc(backend):
    store = backend.store
    blobs = sorted(store.put_bytes(payload(100 + i, 10 + i)) for i in range(5))
    store.upload("left-a").write(b"x")
    store.upload("left-b")
    assert store.list_digests() == blobs
    listed = store.list_blobs()
    assert [d for d, _, _ in listed] == blobs
    assert {d: s for d, s, _ in listed} == {d: store.size(d) for d in blobs}
    uploads = dict(store.list_uploads())
    assert set(uploads) == {"left-a", "left-b"} and all(age >= 0 for age in uploads.values())
    assert store.purge_stale_uploads(3600) == 0
    assert store.purge_stale_uploads(0) == 2
    assert store.list_uploads() == [] and store.list_digests() == blobs


def test_copy_from_blobs_is_all_or_nothing(backend):
    store = backend.store
    a, b = payload(3 * PART, 20), payload(PART // 2, 21)
    da, db = store.put_bytes(a), store.put_bytes(b)
    upload = store.upload("copy")
    upload.write(b"head")
    upload.copy_from(da, 10, 2 * PART)
    with pytest.raises(_core.CoreError):  # past the end of b: nothing appended
        upload.copy_many([(da, 0, 5), (db, 1, PART)])
    with pytest.raises(_core.BlobNotFound):
        upload.copy_many([(da, 0, 5), (sha256(b"nope"), 0, 1)])
    assert upload.size == 4 + 2 * PART
    upload.copy_many([(db, 0, 100), (da, 0, PART + 3)])
    expected = b"head" + a[10:10 + 2 * PART] + b[:100] + a[:PART + 3]
    assert upload.size == len(expected)
    assert upload.commit(sha256(expected)) == sha256(expected)
    assert store.read(sha256(expected)) == expected


def test_chunks_and_chunk_frames(backend):
    store = backend.store
    data = payload(300_000, 30)
    digest = store.put_bytes(data)
    chunks = store.chunks(digest)
    assert chunks == _core.chunk_bytes(data)
    inner = getattr(store, "unbudgeted", store)
    frame = _core.encode_chunks(inner, [(digest, off, n) for off, n, _ in chunks[:3]])
    decoded = _core.decode_chunks(frame)
    assert [d for _, d in decoded] == [data[off:off + n] for off, n, _ in chunks[:3]]
    with pytest.raises(_core.BlobNotFound):
        store.chunks(sha256(b"absent"))


def test_sha512_commit(backend):
    store = backend.store
    for name, data in [("small", payload(100, 40)), ("large", payload(2 * PART + 3, 41))]:
        digest = "sha512:" + hashlib.sha512(data).hexdigest()
        upload = store.upload(f"s512-{name}")
        upload.write(data)
        assert upload.commit(digest) == digest
        assert store.read(digest) == data


def test_invalid_ids_and_digests_are_refused(backend):
    store = backend.store
    for bad in ["", "a/b", "..", "x" * 129]:
        with pytest.raises(_core.CoreError):
            store.upload(bad)
        with pytest.raises(_core.CoreError):
            store.upload_size(bad)
    with pytest.raises(_core.InvalidDigest):
        store.exists("sha256:short")
    with pytest.raises(_core.UnsupportedAlgorithm):
        store.read("md5:" + "0" * 32)


# --- S3 only -------------------------------------------------------------------------------


def test_s3_nothing_at_the_digest_key_before_verification(s3):
    store = s3.blob_store("verify", part_size=PART)
    data = payload(3 * PART, 50)
    upload = store.upload("v1")
    upload.write(data)
    upload.flush()
    blobs_dir = s3.bucket_dir() / "verify" / "blobs"
    assert not blobs_dir.exists() or not any(p.is_file() for p in blobs_dir.rglob("*"))
    with pytest.raises(_core.DigestMismatch):
        upload.commit(sha256(data + b"x"))
    assert not blobs_dir.exists() or not any(p.is_file() for p in blobs_dir.rglob("*"))
    upload.commit(sha256(data))
    hexd = sha256(data).split(":")[1]
    stored = blobs_dir / "sha256" / hexd[:2] / hexd
    assert stored.read_bytes() == data
    assert store.key_for(sha256(data)) == f"verify/blobs/sha256/{hexd[:2]}/{hexd}"
    # the upload's objects are gone with it
    assert not (s3.bucket_dir() / "verify" / "uploads" / "v1").exists() or not any(
        p.is_file() for p in (s3.bucket_dir() / "verify" / "uploads" / "v1").rglob("*"))


def test_s3_presigned_get(s3):
    store = s3.blob_store("presign")
    data = payload(4096, 60)
    digest = store.put_bytes(data)
    url = store.presigned_url(digest, 60)
    assert url.startswith(s3.endpoint + "/")
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == data
    ranged = httpx.get(url, headers={"Range": "bytes=10-19"})
    # rclone answers 200 with a Content-Range (AWS: 206)
    assert ranged.status_code in (200, 206) and ranged.content == data[10:20]
    assert ranged.headers["Content-Range"] == "bytes 10-19/4096"
    assert httpx.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status_code == 403
    with pytest.raises(_core.CoreError):
        store.path_for(digest)  # no local file to hand out


def test_s3_credentials_and_endpoint(s3, monkeypatch):
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CONNREG_S3_ENDPOINT"]:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(_core.CoreError, match="AWS_ACCESS_KEY_ID"):
        _core.S3BlobStore(s3.url(), endpoint=s3.endpoint)
    with pytest.raises(_core.CoreError, match="loopback"):
        _core.S3BlobStore(s3.url(), endpoint="http://192.0.2.1:9000", access_key_id="k",
                          secret_access_key="s")
    with pytest.raises(_core.CoreError, match="s3://"):
        _core.S3BlobStore("/local/path", access_key_id="k", secret_access_key="s")
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = _core.S3BlobStore(s3.url("from-env"))
    digest = store.put_bytes(b"env")
    assert store.read(digest) == b"env"
    wrong = _core.S3BlobStore(s3.url("from-env"), secret_access_key="wrong-secret")
    with pytest.raises(_core.CoreError):
        wrong.exists(digest)
