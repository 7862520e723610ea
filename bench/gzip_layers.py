"""Gzip layers by their uncompressed change: what a rebuilt rootfs layer costs on the link.

    .venv/bin/python bench/gzip_layers.py [--layer PATH.gz | --tar PATH.tar] [--every 60]

v1 is a real rootfs tar (by default the Debian bookworm minbase layer that
`bench/build_image.sh` builds into bench/.cache/oci-debian), v2 the same tar with every 60th
regular file changed in place (192 bytes each). Each is compressed by the real tools: Python's
`gzip` (zlib level 6), Go's `compress/gzip` (default level, as docker/containerd/BuildKit; a
tiny program built with Debian's golang-go, skipped when `go` is missing). For each compressor
it measures, in process, exactly the messages the protocol sends for v2 (docs/delta.md "Gzip
layers"): the plaintext chunk list as JSON, the batch frames of the plaintext chunks v1 lacks
(zstd where it shrinks) and the reconstruction file; plus the parent's analysis time, and the
child's recreation time and peak RSS (a separate process, `ru_maxrss`). "By gzip chunks" is
what today's chunk transfer would move (the compressed chunks of v2 not in v1).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from connreg import _core
from connreg.delta.gzip_layers import PLAIN_PARAMS

BENCH = Path(__file__).resolve().parent
GO_SOURCE = """package main

import (
	"compress/gzip"
	"io"
	"os"
)

// gzip stdin to stdout the way docker/containerd compress layers (default level, no name).
func main() {
	w := gzip.NewWriter(os.Stdout)
	if _, err := io.Copy(w, os.Stdin); err != nil {
		panic(err)
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
}
"""


def find_layer() -> Path | None:
    for root in (BENCH / ".cache" / "oci-debian",):
        blobs = root / "blobs" / "sha256"
        if blobs.is_dir():
            return max(blobs.iterdir(), key=lambda p: p.stat().st_size)
    return None


def rebuilt(tar: bytes, every: int) -> tuple[bytes, int, int]:
    """The tar with every n-th regular file changed in place; (tar, files changed, bytes)."""
    out = io.BytesIO()
    changed = changed_bytes = n = 0
    with tarfile.open(fileobj=io.BytesIO(tar)) as src, \
            tarfile.open(fileobj=out, mode="w", format=src.format) as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None:
                n += 1
                if n % every == 0 and len(data) >= 256:
                    mid = len(data) // 2
                    data = data[:mid] + bytes((b + 1) & 0xFF for b in data[mid:mid + 192]) \
                        + data[mid + 192:]
                    changed += 1
                    changed_bytes += 192
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue(), changed, changed_bytes


def go_gzip(work: Path) -> Path | None:
    if shutil.which("go") is None:
        return None
    src = work / "gogzip.go"
    src.write_text(GO_SOURCE)
    exe = work / "gogzip"
    subprocess.run(["go", "build", "-o", str(exe), str(src)], check=True,
                   env={**os.environ, "GOCACHE": str(work / "gocache"), "GO111MODULE": "off"})
    return exe


def compress(kind: str, tar_path: Path, out: Path, go_exe: Path | None) -> None:
    if kind == "zlib-6 (Python gzip)":
        out.write_bytes(gzip.compress(tar_path.read_bytes(), 6, mtime=0))
    else:
        with open(tar_path, "rb") as i, open(out, "wb") as o:
            subprocess.run([str(go_exe)], stdin=i, stdout=o, check=True)


def link_bytes(v1_gz: Path, v2_gz: Path, v2_tar: Path, recon: int) -> tuple[int, int, int]:
    """(list JSON, batch frames, total) that cross the link for v2, v1 held by the child."""
    _, v1_chunks = _core.gzip_plain_chunks(str(v1_gz), PLAIN_PARAMS)
    size, v2_chunks = _core.gzip_plain_chunks(str(v2_gz), PLAIN_PARAMS)
    listing = len(gzip.compress(json.dumps({  # as the parent sends it (Content-Encoding)
        "digest": "sha256:" + "0" * 64, "size": v2_gz.stat().st_size, "plainSize": size,
        "reconSize": recon, "params": "x" * 40, "chunks": [list(c) for c in v2_chunks]}).encode(),
        6))
    have = {c[2] for c in v1_chunks}
    missing = [(o, n) for o, n, cid in v2_chunks if cid not in have]
    frames = 0
    for start in range(0, len(missing), 128):  # the child's batches (≤ 128 chunks, 2 MiB)
        frames += len(_core.gunzip_frame(str(v2_gz), missing[start:start + 128], 3))
    return listing, frames, listing + frames + recon


def gzip_chunk_bytes(v1_gz: Path, v2_gz: Path) -> int:
    store_dir = Path(tempfile.mkdtemp())
    try:
        store = _core.BlobStore(str(store_dir))
        d1 = store.put_bytes(v1_gz.read_bytes())
        d2 = store.put_bytes(v2_gz.read_bytes())
        have = {c[2] for c in store.chunks(d1)}
        return sum(n for _, n, cid in store.chunks(d2) if cid not in have)
    finally:
        shutil.rmtree(store_dir)


def recreate_in_child(recon: Path, plain: Path, out: Path) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of recreating the layer in a fresh process."""
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child forked from this
    # (large) process would report this process's peak.
    code = ("import sys,time,re; from connreg import _core; t=time.monotonic(); "
            "_core.gzip_recreate_file(sys.argv[1], sys.argv[2], sys.argv[3]); "
            "hwm=re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print(time.monotonic()-t, hwm)")
    proc = subprocess.run([sys.executable, "-c", code, str(recon), str(plain), str(out)],
                          check=True, capture_output=True, text=True)
    seconds, peak_kib = proc.stdout.split()
    return float(seconds), int(peak_kib) * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=Path, help="a gzip layer whose tar is v1")
    ap.add_argument("--tar", type=Path, help="a tar to use as v1")
    ap.add_argument("--every", type=int, default=60)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gzbench-"))
    try:
        if args.tar:
            v1_tar = args.tar.read_bytes()
        else:
            layer = args.layer or find_layer()
            if layer is None:
                print("no layer: run bench/build_image.sh or pass --layer/--tar", file=sys.stderr)
                return 2
            v1_tar = gzip.decompress(layer.read_bytes())
        # v1 rewritten by the same tar writer, so only file contents differ between versions
        v1_tar, _, _ = rebuilt(v1_tar, 1 << 62)
        v2_tar, files, changed = rebuilt(v1_tar, args.every)
        (work / "v1.tar").write_bytes(v1_tar)
        (work / "v2.tar").write_bytes(v2_tar)
        print(f"v1 tar {len(v1_tar)} bytes; v2: {files} files changed, {changed} bytes")
        go_exe = go_gzip(work)
        kinds = ["zlib-6 (Python gzip)"] + (["Go compress/gzip (default)"] if go_exe else [])
        rows = []
        for kind in kinds:
            for v in ("v1", "v2"):
                compress(kind, work / f"{v}.tar", work / f"{v}.gz", go_exe)
            gz_size = (work / "v2.gz").stat().st_size
            t = time.monotonic()
            try:
                _, _, recon, segments, _ = _core.gzip_analyse(str(work / "v2.gz"),
                                                              str(work / "v2.recon"), PLAIN_PARAMS)
            except _core.GzipError as exc:
                rows.append((kind, gz_size, None, str(exc).split("\n")[0][:120]))
                continue
            analyse = time.monotonic() - t
            listing, frames, total = link_bytes(work / "v1.gz", work / "v2.gz",
                                                work / "v2.tar", recon)
            seconds, rss = recreate_in_child(work / "v2.recon", work / "v2.tar",
                                             work / "v2.out")
            exact = (work / "v2.out").read_bytes() == (work / "v2.gz").read_bytes()
            by_chunks = gzip_chunk_bytes(work / "v1.gz", work / "v2.gz")
            rows.append((kind, gz_size, dict(recon=recon, segments=segments, listing=listing,
                                             frames=frames, total=total, analyse=analyse,
                                             recreate=seconds, rss=rss, exact=exact,
                                             by_chunks=by_chunks), None))
        print("\n| v2 compressed by | layer | by gzip chunks (today) | by its change: list + "
              "plaintext frames + recon = total | analyse (parent) | recreate (child) | "
              "peak RSS (child) | exact |")
        print("|---|---|---|---|---|---|---|---|")
        for kind, size, r, why in rows:
            if r is None:
                print(f"| {kind} | {size / 1e6:.1f} MB | – | analysis fails: {why} | | | | |")
                continue
            print(f"| {kind} | {size / 1e6:.1f} MB | {100 * r['by_chunks'] / size:.1f}% | "
                  f"{r['listing'] / 1e3:.0f} KB + {r['frames'] / 1e3:.0f} KB + "
                  f"{r['recon'] / 1e3:.1f} KB = {r['total'] / 1e3:.0f} KB "
                  f"(**{100 * r['total'] / size:.2f}%**) | {r['analyse']:.1f} s | "
                  f"{r['recreate']:.1f} s ({size / 1e6 / r['recreate']:.1f} MB/s) | "
                  f"{r['rss'] / 1e6:.0f} MB | {r['exact']} |")
        return 0
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
