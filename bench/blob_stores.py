"""Blob store throughput: the filesystem store against the S3 store on rclone serve s3.

    .venv/bin/python bench/blob_stores.py [--mib 64] [--runs 3]

For each store: an upload of N MiB written in 1 MiB pieces, flushed once per 16 MiB (a PATCH
each), committed; then the blob read back in 4 MiB ranged reads (as a blob GET does). Prints
the median seconds and MiB/s of each, and the S3/filesystem ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from connreg import _core
from connreg.testing.s3 import start_s3_server

PIECE = 1 << 20
READ = 4 << 20
FLUSH_EVERY = 16 << 20


def one_run(store, data: bytes, upload_id: str) -> tuple[float, float]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = time.perf_counter()
    upload = store.upload(upload_id)
    for offset in range(0, len(data), PIECE):
        upload.write(data[offset:offset + PIECE])
        if (offset + PIECE) % FLUSH_EVERY == 0:
            upload.flush()
    upload.commit(digest)
    written = time.perf_counter() - start
    start = time.perf_counter()
    for offset in range(0, len(data), READ):
        store.read(digest, offset, READ)
    read = time.perf_counter() - start
    store.delete(digest)
    return written, read


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    data = hashlib.shake_256(b"bench").digest(args.mib << 20)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_s3_server(Path(tmp) / "s3")
        try:
            stores = {"filesystem": _core.BlobStore(str(Path(tmp) / "fs")),
                      "s3 (rclone)": server.blob_store("bench")}
            results = {}
            for name, store in stores.items():
                runs = [one_run(store, data, f"bench-{i}") for i in range(args.runs)]
                results[name] = (statistics.median(r[0] for r in runs),
                                 statistics.median(r[1] for r in runs))
        finally:
            server.stop()
    print(f"{args.mib} MiB, median of {args.runs}")
    print("| store | upload + commit s | MiB/s | read s | MiB/s |")
    print("|---|---|---|---|---|")
    for name, (w, r) in results.items():
        print(f"| {name} | {w:.2f} | {args.mib / w:.0f} | {r:.2f} | {args.mib / r:.0f} |")
    (fw, fr), (sw, sr) = results["filesystem"], results["s3 (rclone)"]
    print(f"S3/filesystem time: upload {sw / fw:.1f}x, read {sr / fr:.1f}x")


if __name__ == "__main__":
    main()
