"""Gzip layers by their uncompressed change, between real nodes: a rebuilt zlib-made layer
reaches the child as the change of its tar plus reconstruction data, recreated exactly and
verified; what cannot be recreated (unanalysable layer, corrupt reconstruction data) still
arrives by chunks; a cut transfer resumes."""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import subprocess
import tarfile

import httpx
import pytest

from connreg.testing.hierarchy import Hierarchy, wait_for
from connreg.testing.oci import sha256
from test_delta import blob_at, child_bytes, push_artifact

WORDS = ("usr lib share doc copyright bin etc the and for debian package version license GNU "
         "x86_64 linux config README changelog gz so python3 perl locale man").split()


def rootfs_tar(seed: int, files: int = 700, changed_every: int = 0) -> bytes:
    """A tar of text files like a rootfs layer (about 5 MB); with `changed_every`, every
    n-th file has a few hundred bytes inserted: a rebuild with a small change."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(files):
            n = rng.randrange(200, 12000)
            body = " ".join(rng.choice(WORDS) for _ in range(n // 6)).encode()[:n]
            if changed_every and i % changed_every == 0:
                edit = random.Random(i)
                body = body[:n // 3] + " ".join(edit.choice(WORDS) for _ in range(40)).encode() \
                    + body[n // 3:]
            info = tarfile.TarInfo(f"usr/share/doc/pkg{i // 20}/file{i}.txt")
            info.size, info.mtime = len(body), 1_700_000_000
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def zlib_layer(tar: bytes) -> bytes:
    return gzip.compress(tar, 6, mtime=0)  # what Python tools and `gzip -6` make


# Edges without children need no analysis of their own (it would only compete for the CPU).
NO_ANALYSIS = {"CONNREG_GZIP_ANALYSIS": "false"}
# The test layers are under 1 MiB (analysis time is what the runtime budget pays for).
SMALL_THRESHOLD = {"CONNREG_DELTA_THRESHOLD_BYTES": str(256 * 1024)}
V1 = zlib_layer(rootfs_tar(1))
V2 = zlib_layer(rootfs_tar(1, changed_every=60))


def push(node, repo: str, tag: str, layer: bytes) -> None:
    with httpx.Client(base_url=node.url, auth=node.admin, timeout=60) as c:
        push_artifact(c, repo, tag, layer)


def gzip_hierarchy(tmp_path, **root_env: str) -> Hierarchy:
    h = Hierarchy(tmp_path)
    h.env.update(SMALL_THRESHOLD, **root_env)  # the root's knobs do nothing at a child
    h.start_root()
    return h


def test_rebuilt_zlib_layer_syncs_by_its_change_down_with_a_kill_and_up(tmp_path):
    hierarchy = gzip_hierarchy(tmp_path)
    try:
        _down_by_change_with_a_kill(hierarchy)
        _up_by_change(hierarchy)
    finally:
        hierarchy.stop_all()


def _up_by_change(hierarchy):
    """A ReadWrite edge (analysing its own layers) pushes a rebuild of v1 up by its change."""
    root = hierarchy.root
    hierarchy.create("gzstore1", "ReadWrite", ["img/*"])
    edge = hierarchy.start_child("gzstore1")
    wait_for(lambda: blob_at(edge, "img/base", sha256(V2)) == V2, 60, message="v2 at the store")
    before = child_bytes(root, "gzstore1")
    v3 = zlib_layer(rootfs_tar(1, changed_every=45))
    push(edge, "img/base", "v3", v3)
    wait_for(lambda: blob_at(root, "img/base", sha256(v3)) == v3, 90, message="v3 at the root")
    sent = child_bytes(root, "gzstore1") - before
    print(f"v3 layer {len(v3)} bytes up: {sent} bytes on the link ({100 * sent / len(v3):.1f}%)")
    assert "pushed gzip layer " + sha256(v3)[:19] in edge.log()
    assert sent < 0.4 * len(v3)


def _down_by_change_with_a_kill(hierarchy):
    # ~150 KB/s: v2's changed plaintext takes a few seconds, time to kill the edge midway
    hierarchy.create("gzedge1", "ReadOnly", ["img/*"], extra=["--bandwidth-limit", "150000"])
    edge = hierarchy.start_child("gzedge1", env=NO_ANALYSIS)
    push(hierarchy.root, "img/base", "v1", V1)
    wait_for(lambda: blob_at(edge, "img/base", sha256(V1)) == V1, 60, message="v1 at the edge")
    after_v1 = child_bytes(hierarchy.root, "gzedge1")
    push(hierarchy.root, "img/base", "v2", V2)
    # the plaintext of v2 grows as chunks are copied from v1's and fetched: kill it midway
    work = edge.data_dir / "gzip-layers" / "work" / (sha256(V2).split(":")[1] + ".plain")
    wait_for(lambda: work.exists() and work.stat().st_size > 1_000_000, 90, interval=0.05,
             message="part of v2's plaintext at the edge")
    edge.kill()
    edge.start()
    wait_for(lambda: blob_at(edge, "img/base", sha256(V2)) == V2, 90, message="v2 at the edge")
    moved = child_bytes(hierarchy.root, "gzedge1") - after_v1
    print(f"\nv2 layer {len(V2)} bytes: {moved} bytes on the link ({100 * moved / len(V2):.1f}%)")
    log = edge.log()
    assert "resuming gzip layer " + sha256(V2)[:19] in log
    assert "recreated gzip layer " + sha256(V2)[:19] in log
    assert "analysed gzip layer " + sha256(V2)[:19] in hierarchy.root.log()
    # every 60th of 700 files changed: 12 edits, each costing a 16 KiB plaintext chunk or
    # two (zstd-compressed), plus the plaintext chunk list; chunks of the gzip bytes: ~100%
    assert moved < 0.3 * len(V2)


def test_what_cannot_be_recreated_still_arrives_by_chunks(tmp_path):
    h = gzip_hierarchy(tmp_path, CONNREG_TEST_CORRUPT_GZIP_RECON="1")
    root = h.root
    try:
        h.create("gzedge2", "ReadOnly", ["img/*"])
        edge = h.start_child("gzedge2", env=NO_ANALYSIS)
        push(root, "img/base", "v1", V1)
        wait_for(lambda: blob_at(edge, "img/base", sha256(V1)) == V1, 60, message="v1 at edge")
        # corrupt reconstruction data: refused before anything becomes visible, then chunks
        push(root, "img/base", "v2", V2)
        wait_for(lambda: blob_at(edge, "img/base", sha256(V2)) == V2, 90, message="v2 at edge")
        log = edge.log()
        assert f"gzip layer {sha256(V2)[:19]} did not recreate exactly" in log
        assert "assembled " + sha256(V2)[:19] in log  # by chunks of the compressed bytes
        # a layer preflate cannot model (a second gzip member longer than a trailer)
        odd = zlib_layer(rootfs_tar(7, files=100)) + gzip.compress(rootfs_tar(8, files=100), 0,
                                                                   mtime=0)
        push(root, "img/base", "v3", odd)
        wait_for(lambda: blob_at(edge, "img/base", sha256(odd)) == odd, 90, message="v3 at edge")
        assert f"gzip layer {sha256(odd)[:19]} cannot be recreated exactly" in root.log()
        assert "gzip layer delta not used for " + sha256(odd)[:19] in edge.log()
    finally:
        h.stop_all()


GO_GZIP = """package main
import ("compress/gzip"; "io"; "os")
func main() { w := gzip.NewWriter(os.Stdout); if _, err := io.Copy(w, os.Stdin); err != nil { panic(err) }; if err := w.Close(); err != nil { panic(err) } }
"""


@pytest.mark.skipif(shutil.which("go") is None,
                    reason="`go` is not installed (Debian golang-go): no Go-made layer to test")
def test_rebuilt_go_layer_syncs_down_by_its_change(tmp_path):
    """A layer made by Go's compress/gzip, as docker makes them (needs the vendored
    preflate-rs fix for single one-bit Huffman codes)."""
    (tmp_path / "gz.go").write_text(GO_GZIP)
    exe = tmp_path / "gogzip"
    subprocess.run(["go", "build", "-o", str(exe), str(tmp_path / "gz.go")], check=True,
                   env={**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GO111MODULE": "off"})

    def go_layer(tar: bytes) -> bytes:
        return subprocess.run([str(exe)], input=tar, capture_output=True, check=True).stdout

    v1, v2 = go_layer(rootfs_tar(1)), go_layer(rootfs_tar(1, changed_every=60))
    h = gzip_hierarchy(tmp_path / "nodes")
    try:
        h.create("gzgoedge", "ReadOnly", ["img/*"])
        edge = h.start_child("gzgoedge", env=NO_ANALYSIS)
        push(h.root, "img/go", "v1", v1)
        wait_for(lambda: blob_at(edge, "img/go", sha256(v1)) == v1, 60, message="v1 at the edge")
        after_v1 = child_bytes(h.root, "gzgoedge")
        push(h.root, "img/go", "v2", v2)
        wait_for(lambda: blob_at(edge, "img/go", sha256(v2)) == v2, 90, message="v2 at the edge")
        moved = child_bytes(h.root, "gzgoedge") - after_v1
        print(f"\nGo-made v2 layer {len(v2)} bytes: {moved} bytes on the link "
              f"({100 * moved / len(v2):.1f}%)")
        assert "recreated gzip layer " + sha256(v2)[:19] in edge.log()
        assert moved < 0.3 * len(v2)
    finally:
        h.stop_all()
