"""The disk budget (issue 8, item 3): a full disk answers 507 and never bricks a node.

Real `connreg serve` processes on a real 64 MiB tmpfs (mounted here; these tests need root):
uploads that cannot fit are refused before a byte is written, streams that cross the budget are
stopped and their bytes removed, SQLite running out of space answers 507, deletes still work,
and writes resume the moment space returns, without a restart. A ReadOnly child that cannot
store what it syncs says DISK_FULL at the root and catches up once it can.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from connreg.testing import start_node
from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.oci import OCI_MANIFEST, make_image, sha256
from helpers import push_image

MiB = 1024 * 1024
PASSWORD = "disk-budget-admin-password-0123456789"


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (the node's data dir) and a list of nodes to stop before unmounting."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    nodes: list = []
    try:
        yield mount, nodes
    finally:
        for node in nodes:
            node.stop()
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)])


def files_under(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def free_bytes(path: Path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


def fill_to_the_brim(path: Path) -> None:
    """Write a file until the filesystem refuses even one more byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (MiB, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def storage_full(r: httpx.Response) -> dict:
    """The one error of a 507 answer; fails on any other status (a 500 above all)."""
    assert r.status_code == 507, (r.status_code, r.text)
    (error,) = r.json()["errors"]
    assert error["code"] == "DENIED"
    return error


def pieces(data: bytes, size: int = MiB):
    """A body without Content-Length: httpx sends it with chunked transfer encoding."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_full_disk_push_is_refused_cleanly_and_the_node_goes_on(small_disk):
    mount, nodes = small_disk
    node = start_node(mount, args=["--no-auth"])
    nodes.append(node)
    big = os.urandom(80 * MiB)
    with httpx.Client(base_url=node.url, timeout=120) as c:
        # Declared length beyond the budget: refused before a byte is written.
        error = storage_full(c.post("/v2/big/layer/blobs/uploads/",
                                    params={"digest": sha256(big)}, content=big))
        assert "storage budget exhausted" in error["message"]
        assert "min_free_bytes" in error["message"] and "80.0 MiB" in error["message"]
        assert error["detail"]["neededBytes"] == len(big)
        assert error["detail"]["freeBytes"] < len(big)
        assert files_under(mount / "store") == {}

        # A stream without a length crosses the budget midway: stopped, its bytes removed.
        session = c.post("/v2/big/layer/blobs/uploads/")
        assert session.status_code == 202
        location = session.headers["Location"]
        error = storage_full(c.patch(location, content=pieces(big)))
        assert "storage budget exhausted" in error["message"]
        assert "discarded" in error["message"]
        assert files_under(mount / "store") == {}
        assert c.get(location).status_code == 404  # the session is gone with its bytes
        assert free_bytes(mount) > 56 * MiB

        # Without a restart: a small push (blob + manifest) and a delete succeed.
        image = make_image([50_000])
        push_image(c, "small/app", image, "v1")
        assert c.get("/v2/small/app/manifests/v1",
                     headers={"Accept": OCI_MANIFEST}).content == image.manifest
        assert c.delete(f"/v2/small/app/manifests/{image.digest}").status_code == 202
        assert c.get(f"/v2/small/app/manifests/{image.digest}").status_code == 404
    assert node.proc.poll() is None
    assert "Traceback" not in node.log()


def test_sqlite_out_of_space_is_507_and_writes_resume_when_space_returns(small_disk):
    mount, nodes = small_disk
    node = start_node(mount, admin_password=PASSWORD)  # auth on: management writes too
    nodes.append(node)
    kept, doomed = make_image([20_000]), make_image([20_000])
    filler = mount / "filler"  # someone else's file on the same filesystem
    with httpx.Client(base_url=node.url, auth=node.admin, timeout=60) as c:
        push_image(c, "shop/kept", kept, "v1")
        push_image(c, "shop/doomed", doomed, "v1")
        assert (mount / "reserve").exists()
        fill_to_the_brim(filler)

        # The manifest bytes are stored already: only SQLite needs room, and has none.
        statuses = []
        for i in range(300):
            r = c.put(f"/v2/shop/kept/manifests/t{i}", content=kept.manifest,
                      headers={"Content-Type": OCI_MANIFEST})
            statuses.append(r.status_code)
            if r.status_code != 201:
                assert "database or disk is full" in storage_full(r)["message"]
                break
        assert statuses[-1] == 507, statuses
        for i in range(300):  # the control plane's own database, the same way
            r = c.post("/connreg/v1/scope-maps", json={"name": f"map-{i}", "actions": []})
            if r.status_code != 201:
                assert "database or disk is full" in storage_full(r)["message"]
                break
        else:
            pytest.fail("300 management writes on a full disk all succeeded")
        storage_full(c.post("/v2/shop/kept/blobs/uploads/", params={"digest": sha256(b"x")},
                            content=b"x"))

        # Reads go on; deletes get the headroom (the reserve file is given up for them).
        assert c.get("/v2/shop/kept/manifests/v1",
                     headers={"Accept": OCI_MANIFEST}).status_code == 200
        assert c.delete("/v2/shop/doomed/manifests/v1").status_code == 202
        assert c.delete(f"/v2/shop/doomed/manifests/{doomed.digest}").status_code == 202
        # (whether they needed the reserve depends on what the failed writes left in the WAL)

    # A restart on the full disk: the node comes up and serves (it used to stay bricked).
    node.restart()
    with httpx.Client(base_url=node.url, auth=node.admin, timeout=60) as c:
        assert c.get("/v2/shop/kept/manifests/v1",
                     headers={"Accept": OCI_MANIFEST}).status_code == 200
        r = c.put("/v2/shop/kept/manifests/full", content=kept.manifest,
                  headers={"Content-Type": OCI_MANIFEST})
        if r.status_code != 201:  # the shutdown's checkpoint may have freed a page or two
            storage_full(r)

        # Space returns: every kind of write works again, no restart.
        filler.unlink()
        r = c.put("/v2/shop/kept/manifests/after", content=kept.manifest,
                  headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201, r.text
        r = c.post("/connreg/v1/scope-maps", json={"name": "map-after", "actions": []})
        assert r.status_code == 201, r.text
        push_image(c, "shop/new", make_image([30_000]), "v1")
        assert (mount / "reserve").exists()  # headroom restored for the next time
    assert node.proc.poll() is None


def test_max_store_bytes_refuses_by_declared_length_before_writing(tmp_path):
    node = start_node(tmp_path / "node", args=["--no-auth"],
                      env={"CONNREG_MAX_STORE_BYTES": str(MiB)})
    uploads = tmp_path / "node" / "store" / "uploads"
    try:
        with httpx.Client(base_url=node.url, timeout=60) as c:
            two = os.urandom(2 * MiB)
            error = storage_full(c.post("/v2/cap/app/blobs/uploads/",
                                        params={"digest": sha256(two)}, content=two))
            assert "max_store_bytes 1.0 MiB" in error["message"]
            assert error["detail"]["maxStoreBytes"] == MiB
            assert list(uploads.iterdir()) == []  # not even a session file

            # A chunk declared too large is refused and leaves its session as it was.
            location = c.post("/v2/cap/app/blobs/uploads/").headers["Location"]
            upload_file = uploads / location.rsplit("/", 1)[1]
            storage_full(c.patch(location, content=two,
                                 headers={"Content-Range": f"0-{len(two) - 1}"}))
            assert upload_file.stat().st_size == 0
            part = two[:600_000]
            r = c.patch(location, content=part, headers={"Content-Range": "0-599999"})
            assert r.status_code == 202, r.text
            assert c.put(location, params={"digest": sha256(part)}).status_code == 201

            # What is stored counts: 600 kB more would cross 1 MiB.
            more = os.urandom(600_000)
            assert "holds" in storage_full(c.post(
                "/v2/cap/app/blobs/uploads/", params={"digest": sha256(more)},
                content=more))["message"]

            # A stream without a length is stopped where it crosses, and removed.
            location = c.post("/v2/cap/app/blobs/uploads/").headers["Location"]
            assert "discarded" in storage_full(
                c.patch(location, content=pieces(two, 256 * 1024)))["message"]
            assert list(uploads.iterdir()) == []
    finally:
        node.stop()


def test_child_that_cannot_store_reports_disk_full_and_catches_up(tmp_path):
    h = Hierarchy(tmp_path)
    try:
        h.start_root()
        h.create("tinyedge", "ReadOnly", ["disk/*"])
        child = h.start_child("tinyedge", env={"CONNREG_MAX_STORE_BYTES": "200000"})
        image = make_image([400_000])
        with httpx.Client(base_url=h.root.url, auth=h.root.admin, timeout=60) as c:
            push_image(c, "disk/app", image, "v1")

        def disk_full() -> list:
            doc = cli(h.root, "connected-registry", "show", "--name", "tinyedge")
            return [d for d in doc["statusDetails"] if d["code"] == "DISK_FULL"]

        (detail,) = wait_for(disk_full, 60, 0.5, "DISK_FULL reported at the root")
        assert "max_store_bytes" in detail["description"]
        assert "neededBytes=" in detail["description"] and "freeBytes=" in detail["description"]
        tag_url = f"{child.url}/v2/disk/app/manifests/v1"
        assert httpx.head(tag_url, auth=child.admin).status_code == 404
        assert "Traceback" not in child.log()

        child.env["CONNREG_MAX_STORE_BYTES"] = "0"  # the operator gives it room
        child.restart()
        wait_for(lambda: httpx.head(tag_url, auth=child.admin, headers={
            "Accept": OCI_MANIFEST}).headers.get("Docker-Content-Digest") == image.digest,
            60, 0.5, "the child catching up")
        wait_for(lambda: not disk_full(), 60, 0.5, "DISK_FULL cleared at the root")
    finally:
        h.stop_all()


def test_filesystem_refusing_the_store_itself_is_507_with_nothing_left_behind(small_disk):
    """Out of inodes: the budget (bytes) says yes, the filesystem says ENOSPC to the Rust store."""
    mount, nodes = small_disk
    subprocess.run(["mount", "-o", "remount,nr_inodes=200", str(mount)], check=True)
    node = start_node(mount, args=["--no-auth"])
    nodes.append(node)
    image = make_image([10_000])
    stuffing = mount / "inodes"
    stuffing.mkdir()
    with httpx.Client(base_url=node.url, timeout=60) as c:
        for blob in image.blobs():
            r = c.post("/v2/ino/app/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
            assert r.status_code == 201, r.text
        n = 0
        while True:  # someone else uses up every inode
            try:
                (stuffing / str(n)).touch()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
            n += 1
        data = b"no inode for me"
        error = storage_full(c.post("/v2/ino/app/blobs/uploads/", params={"digest": sha256(data)},
                                    content=data))
        assert "storage full" in error["message"] and "no inodes left" in error["message"]
        error = storage_full(c.put("/v2/ino/app/manifests/v1", content=image.manifest,
                                   headers={"Content-Type": OCI_MANIFEST}))
        assert "storage full" in error["message"]
        assert files_under(mount / "store" / "uploads") == {}
        assert files_under(mount / "store" / "tmp") == {}
        assert c.get(f"/v2/ino/app/blobs/{sha256(image.config)}").content == image.config

        for child in stuffing.iterdir():
            child.unlink()
        push_image(c, "ino/app", image, "v1")
        r = c.post("/v2/ino/app/blobs/uploads/", params={"digest": sha256(data)}, content=data)
        assert r.status_code == 201, r.text
    assert node.proc.poll() is None


def test_running_total_follows_every_write_and_delete(tmp_path):
    """The store's size is kept as a running total; after each kind of write and delete it must
    equal what a fresh walk of store/ counts."""
    from connreg import _core
    from connreg.storage.budget import StorageBudget, StorageFull
    from connreg.storage.budgeted import BudgetedBlobStore

    budget = StorageBudget(tmp_path, tmp_path / "store", min_free_bytes=0, max_store_bytes=MiB)
    blobs = BudgetedBlobStore(_core.BlobStore(str(tmp_path / "store")), budget)

    def agrees() -> bool:
        counted = budget.used_bytes
        return counted == budget.recount()

    a, b = os.urandom(100_000), os.urandom(200_000)
    blobs.put_bytes(a, sha256(a))
    blobs.put_bytes(a, sha256(a))  # deduplicated: nothing added
    assert budget.used_bytes == len(a) and agrees()
    up = blobs.upload("one")
    up.write(b[:150_000])
    up.copy_from(sha256(a), 0, 1_000)
    assert agrees()
    up.abort()
    assert agrees() and budget.used_bytes == len(a)
    up = blobs.upload("two")
    up.write(b)
    up.commit(sha256(b))
    dup = blobs.upload("three")
    dup.write(b)
    dup.commit(sha256(b))  # the blob exists: the upload's bytes are given back
    assert agrees() and budget.used_bytes == len(a) + len(b)
    blobs.upload("four").write(b"x" * 1000)
    blobs.abort_upload("four")
    assert agrees()
    # Crossing max_store_bytes midway: refused, the upload discarded, its bytes given back.
    big = blobs.upload("five")
    big.write(os.urandom(600_000))
    with pytest.raises(StorageFull, match="discarded"):
        big.write(os.urandom(200_000))
    assert blobs.upload_size("five") is None and agrees()
    assert blobs.delete(sha256(b)) and agrees()
    assert budget.used_bytes == len(a)
