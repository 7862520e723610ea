"""Scaled root benchmark: the same workload against, side by side in one run,

  sqlite        one node on SQLite + its data dir, clients straight at it (today's default)
  sqlite+lb     the same node behind nginx (what the balancer alone costs)
  pg-1          one replica on PostgreSQL + a shared blob folder (or S3: --s3), behind nginx
  pg-2          two replicas on the same PostgreSQL and folder, behind nginx (no stickiness)

Workload (bench/run.py's, reused): push of the Debian image with skopeo (fresh repository per
run), pull into a fresh OCI layout, manifest GET by tag with wrk. All four are up at once and
measured in turn, round after round (a shared machine's load drifts; interleaving spreads it
evenly). Medians; ratios against the single node on SQLite.

    .venv/bin/python bench/scale.py [--runs 5] [--wrk-rounds 3] [--s3]

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


def start_nodes(workdir: Path, count: int, args: list[str],
                env: dict[str, str] | None = None) -> list[Node]:
    nodes = [Node(data_dir=workdir / f"n{i}", port=free_port(), extra_args=["--no-auth", *args],
                  env=dict(env or {})) for i in range(count)]
    for n in nodes:
        n.start(timeout=120)
    return nodes


CONFIGS = (("sqlite", 0), ("sqlite+lb", 0), ("pg-1", 1), ("pg-2", 2))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--wrk-duration", type=int, default=5, help="seconds per wrk round")
    ap.add_argument("--wrk-rounds", type=int, default=3)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--wrk-conns", type=int, default=32)
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--s3", action="store_true", help="replicas store blobs in S3 (a local "
                    "`rclone serve s3`, testing/s3.py) instead of a shared folder")
    args = ap.parse_args()
    base.ensure_tools()
    base.ensure_image()
    info = base.image_info()
    wrk = (args.wrk_duration, args.wrk_threads, args.wrk_conns)
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="connreg-scale-bench-"))
    pg = start_postgres()
    s3 = None
    if args.s3:
        from connreg.testing.s3 import start_s3_server
        s3 = start_s3_server(workdir / "s3")
    nodes: list[Node] = []
    balancers: list[Balancer] = []
    targets: dict[str, Target] = {}
    try:
        for name, replicas in CONFIGS:
            here = workdir / name.replace("+", "-")
            if replicas == 0:
                mine = start_nodes(here, 1, [])
            else:
                store = s3.url(name) if s3 else str(here / "shared-blobs")
                url = pg.create_database(name.replace("-", "_"))
                mine = start_nodes(here, replicas,
                                   ["--metadata-url", url, "--blob-store", store],
                                   s3.env() if s3 else {})
            nodes += mine
            host = mine[0].host
            if name != "sqlite":
                lb = Balancer([n.port for n in mine], workers=args.nginx_workers).start()
                balancers.append(lb)
                host = lb.host
            targets[name] = Target(name, host)
            base.log(f"{name}: {len(mine)} node(s){' behind nginx' if name != 'sqlite' else ''}")
        results = {name: {"push": [], "pull": [], "wrk": []} for name in targets}
        for i in range(args.runs):
            for name, target in targets.items():
                # a fresh repository per push: nothing linked there yet, every blob uploaded
                base.REPO_NAME = f"bench/{name.replace('+', '-')}-{i}"
                results[name]["push"].append(base.push(target, base.TAG))
                results[name]["pull"].append(base.pull(target, base.TAG, workdir))
            base.log(f"push/pull round {i + 1}/{args.runs} done")
        last = f"{args.runs - 1}"
        for name, target in targets.items():
            base.REPO_NAME = f"bench/{name.replace('+', '-')}-{last}"
            base.verify_manifest(target, info)  # the right bytes, before counting answers
        for i in range(args.wrk_rounds):
            for name, target in targets.items():
                base.REPO_NAME = f"bench/{name.replace('+', '-')}-{last}"
                results[name]["wrk"].append(base.wrk_manifest(target, *wrk))
            base.log(f"wrk round {i + 1}/{args.wrk_rounds}: " + ", ".join(
                f"{n} {r['wrk'][-1]['rps']:.0f}/s" for n, r in results.items()))
    finally:
        for lb in balancers:
            lb.stop()
        for n in nodes:
            n.stop()
        pg.stop()
        if s3 is not None:
            s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(args, info, results, time.time() - started))
    return 0


def render(args, info, res, elapsed) -> str:
    names = list(res)

    def cell(name, key):
        xs = res[name][key]
        return f"{statistics.median(xs):.2f} s ({min(xs):.2f}–{max(xs):.2f})"

    def rps(name):
        return statistics.median(w["rps"] for w in res[name]["wrk"])

    def ratio(name, key):
        if key == "wrk":
            return rps(name) / rps("sqlite")
        return statistics.median(res[name][key]) / statistics.median(res["sqlite"][key])

    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M')} UTC, took {elapsed / 60:.1f} min, "
             f"connreg at git {base.git_rev()}; {args.runs} push/pull runs per column, wrk "
             f"-t{args.wrk_threads} -c{args.wrk_conns} -d{args.wrk_duration}s × "
             f"{args.wrk_rounds} rounds (median), configurations interleaved, nginx "
             f"worker_processes {args.nginx_workers}, {os.cpu_count()} CPUs; replicas' blobs in "
             f"{'S3 (rclone serve s3 on loopback)' if args.s3 else 'a shared folder'}.", "",
             f"Image: {info['total'] / 1e6:.1f} MB ({len(info['layers'])} layer(s)).", "",
             "| metric | " + " | ".join(names) + " |",
             "| --- |" + " --- |" * len(names),
             "| push, skopeo oci→registry, median (min–max) | "
             + " | ".join(cell(n, "push") for n in names) + " |",
             "| push vs sqlite | " + " | ".join(f"{ratio(n, 'push'):.2f}×" for n in names) + " |",
             "| pull, skopeo registry→oci, median (min–max) | "
             + " | ".join(cell(n, "pull") for n in names) + " |",
             "| pull vs sqlite | " + " | ".join(f"{ratio(n, 'pull'):.2f}×" for n in names) + " |",
             "| manifest GET by tag, req/s, median of rounds (min–max) | "
             + " | ".join(f"{rps(n):,.0f} ({min(w['rps'] for w in res[n]['wrk']):,.0f}–"
                          f"{max(w['rps'] for w in res[n]['wrk']):,.0f})" for n in names) + " |",
             "| manifest GET/s vs sqlite | "
             + " | ".join(f"{ratio(n, 'wrk'):.2f}×" for n in names) + " |",
             "", f"Two replicas vs one: {rps('pg-2') / rps('pg-1'):.2f}× the manifest GET/s."]
    bad = [f"{n}: {w['non2xx']} non-2xx, {w['socket_errors'] or 'no'} socket errors"
           for n in names for w in res[n]["wrk"] if w["non2xx"] or w["socket_errors"]]
    if bad:
        lines += ["", "Non-2xx answers or socket errors: " + "; ".join(bad)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
