"""Scaled root benchmark: the same workload against, side by side in one run,

  sqlite        one node on SQLite + its data dir, clients straight at it (today's default)
  sqlite+lb     the same node behind nginx (what the balancer alone costs)
  pg-1          one replica on PostgreSQL + a shared blob folder, behind nginx
  pg-2          two replicas on the same PostgreSQL and folder, behind nginx (no stickiness)

Workload (bench/run.py's, reused): push of the Debian image with skopeo (fresh repository per
run), pull into a fresh OCI layout, manifest GET by tag with wrk. Medians; ratios against the
single node on SQLite.

    .venv/bin/python bench/scale.py [--runs 5] [--wrk-duration 10] [--blob-store s3://…]

Results: bench/RESULTS.md, section "Scaled root".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as base  # noqa: E402  bench/run.py: image, skopeo, wrk helpers

from connreg.testing.balancer import Balancer  # noqa: E402
from connreg.testing.node import Node, free_port  # noqa: E402
from connreg.testing.postgres import start_postgres  # noqa: E402


@dataclass
class Target:
    name: str
    host: str


def start_nodes(workdir: Path, count: int, args: list[str]) -> list[Node]:
    nodes = [Node(data_dir=workdir / f"n{i}", port=free_port(), extra_args=["--no-auth", *args])
             for i in range(count)]
    for n in nodes:
        n.start(timeout=120)
    return nodes


def measure(target: Target, runs: int, wrk: tuple[int, int, int], workdir: Path,
            info: dict) -> dict:
    pushes, pulls = [], []
    for i in range(runs):
        # a fresh repository per push: nothing linked there yet, every blob uploaded
        base.REPO_NAME = f"bench/{target.name.replace('+', '-')}-{i}"
        pushes.append(base.push(target, base.TAG))
        pulls.append(base.pull(target, base.TAG, workdir))
    base.verify_manifest(target, info)
    w = base.wrk_manifest(target, *wrk)
    return {"push": pushes, "pull": pulls, "wrk": w}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--wrk-duration", type=int, default=10)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--wrk-conns", type=int, default=32)
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--blob-store", default="", help="s3://… for the replicas (default: a "
                    "shared folder); S3 endpoint/credentials from CONNREG_S3_ENDPOINT/AWS_*")
    args = ap.parse_args()
    base.ensure_tools()
    base.ensure_image()
    info = base.image_info()
    wrk = (args.wrk_duration, args.wrk_threads, args.wrk_conns)
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="connreg-scale-bench-"))
    pg = start_postgres()
    results: dict[str, dict] = {}
    try:
        for name, replicas in (("sqlite", 0), ("sqlite+lb", 0), ("pg-1", 1), ("pg-2", 2)):
            here = workdir / name.replace("+", "-")
            if replicas == 0:
                nodes = start_nodes(here, 1, [])
            else:
                store = args.blob_store or str(here / "shared-blobs")
                url = pg.create_database(name.replace("-", "_"))
                nodes = start_nodes(here, replicas, ["--metadata-url", url, "--blob-store", store])
            lb = None
            if name != "sqlite":
                lb = Balancer([n.port for n in nodes], workers=args.nginx_workers).start()
            target = Target(name, lb.host if lb else nodes[0].host)
            base.log(f"{name}: {len(nodes)} node(s){' behind nginx' if lb else ''}")
            try:
                results[name] = measure(target, args.runs, wrk, here, info)
            finally:
                if lb:
                    lb.stop()
                for n in nodes:
                    n.stop()
            base.log(f"{name}: push {statistics.median(results[name]['push']):.2f}s, pull "
                     f"{statistics.median(results[name]['pull']):.2f}s, "
                     f"{results[name]['wrk']['rps']:.0f} manifest GET/s")
    finally:
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(args, info, results, time.time() - started))
    return 0


def render(args, info, res, elapsed) -> str:
    names = list(res)
    one = res["sqlite"]

    def cell(name, key):
        xs = res[name][key]
        return f"{statistics.median(xs):.2f} s ({min(xs):.2f}–{max(xs):.2f})"

    def ratio(name, key):
        if key == "wrk":
            return res[name]["wrk"]["rps"] / one["wrk"]["rps"]
        return statistics.median(res[name][key]) / statistics.median(one[key])

    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M')} UTC, took {elapsed / 60:.1f} min, "
             f"connreg at git {base.git_rev()}; {args.runs} push/pull runs per column, wrk "
             f"-t{args.wrk_threads} -c{args.wrk_conns} -d{args.wrk_duration}s, nginx "
             f"worker_processes {args.nginx_workers}, {os.cpu_count()} CPUs.", "",
             f"Image: {info['total'] / 1e6:.1f} MB ({len(info['layers'])} layer(s)).", "",
             "| metric | " + " | ".join(names) + " |",
             "| --- |" + " --- |" * len(names),
             "| push, skopeo oci→registry, median (min–max) | "
             + " | ".join(cell(n, "push") for n in names) + " |",
             "| push vs sqlite | " + " | ".join(f"{ratio(n, 'push'):.2f}×" for n in names) + " |",
             "| pull, skopeo registry→oci, median (min–max) | "
             + " | ".join(cell(n, "pull") for n in names) + " |",
             "| pull vs sqlite | " + " | ".join(f"{ratio(n, 'pull'):.2f}×" for n in names) + " |",
             "| manifest GET by tag, req/s (p50, p99) | "
             + " | ".join(f"{res[n]['wrk']['rps']:,.0f} ({res[n]['wrk']['p50']}, "
                          f"{res[n]['wrk']['p99']})" for n in names) + " |",
             "| manifest GET/s vs sqlite | "
             + " | ".join(f"{ratio(n, 'wrk'):.2f}×" for n in names) + " |"]
    if "pg-1" in res and "pg-2" in res:
        lines += ["", f"Two replicas vs one: {res['pg-2']['wrk']['rps'] / res['pg-1']['wrk']['rps']:.2f}× "
                  "the manifest GET/s."]
    bad = [n for n in names if res[n]["wrk"]["non2xx"] or res[n]["wrk"]["socket_errors"]]
    if bad:
        lines += ["", "Non-2xx answers or socket errors: " + ", ".join(
            f"{n}: {res[n]['wrk']['non2xx']} non-2xx, {res[n]['wrk']['socket_errors']}"
            for n in bad)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
