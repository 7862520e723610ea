"""Sync under a busy site (issue 13): how fast small images cross each hop, how late they arrive,
and what the nodes' memory does meanwhile. Not a test: it measures and reports.

    .venv/bin/python bench/sync_load.py                    # every phase, table into RESULTS.md
    .venv/bin/python bench/sync_load.py --phases down --results ''   # one phase, stdout only

root → A (ReadWrite) → B (ReadWrite) → C (ReadOnly), each a real `connreg serve` process on
loopback, every repository `load/*` in every set. Phases:

- `down`: a burst of P pushers × N images (2 random layers of L KiB + config + manifest, plain
  OCI API, Basic credentials of the root's admin) at the root; waits until C holds every tag.
- `up`: the same burst at B (the ReadWrite edge); waits until the root holds every tag.
- `sustain`: P pushers together pushing R images/s for S seconds at the root (arrival at C)
  and then at B (arrival at the root).
- `poll`: the `down` burst again while a client polls A (the middle node) with HEAD requests on a
  manifest by tag as fast as it answers; the sync must keep moving.
- `catchup`: each hop's own capacity, not bounded by how fast pushers feed it (an edge back
  after an outage). Down: A, B and C are stopped, a backlog of `--catchup-images` images is
  pushed at the root, then A is started and timed until it holds them all, then B, then C.
  Up: the root and A are stopped, the backlog is pushed at B; B is restarted beside a started
  A (so its first attempt is at once, not after a back-off) and timed until A holds them all;
  then A is restarted beside a started root and timed until the root does. A hop's rate is
  images / (last arrival − the node's readiness) at the node catching up (reconnecting and
  fetching ahead included); the rate between its first and last arrival is printed beside it.
  CPU ms per image is both ends' CPU over that node's catch-up (from its readiness).
- `logins`: P clients × 3 Basic logins with wrong passwords at once at a fresh root (each a
  16 MiB scrypt check); its RSS before, at peak and after.
- `idle`: RSS of a freshly started node that has served nothing, and its import cost.

Arrival times come from the nodes' own change logs (`time` of each entry; one machine, one
clock): for every tag the time it was written at the root (or B) and at each later hop. A hop's
rate is images / (last arrival there − first arrival at the hop before): under a burst that
is bounded by how fast the images come in, so the ingest rate is printed beside it. RSS is the
node's VmRSS sampled every 0.25 s: before the load (idle, after a warm-up image crossed every
hop), its peak, and 20 s after the last image arrived.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from connreg.testing.hierarchy import Hierarchy, wait_for
from connreg.testing.node import start_node

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
NODES = ["root", "A", "B", "C"]
# Connected-registry names need 5+ characters; the report calls them A, B, C.
CR_NAMES = {"A": "site-a", "B": "site-b", "C": "site-c"}
SECTION = "## Sync under load"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_image(layer_bytes: int, label: str) -> tuple[list[bytes], bytes]:
    layers = [os.urandom(layer_bytes) for _ in range(2)]
    config = json.dumps({"architecture": "amd64", "os": "linux", "label": label,
                         "rootfs": {"type": "layers",
                                    "diff_ids": [sha256(l) for l in layers]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(l), "size": len(l)}
                   for l in layers]}).encode()
    return [config, *layers], manifest


def push(c: httpx.Client, repo: str, tag: str, blobs: list[bytes], manifest: bytes) -> None:
    for blob in blobs:
        r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob,
                   headers={"Content-Type": "application/octet-stream"})
        if r.status_code != 201:
            raise RuntimeError(f"blob push to {repo}: {r.status_code} {r.text[:200]}")
    r = c.put(f"/v2/{repo}/manifests/{tag}", content=manifest,
              headers={"Content-Type": OCI_MANIFEST})
    if r.status_code != 201:
        raise RuntimeError(f"manifest push to {repo}:{tag}: {r.status_code} {r.text[:200]}")


# --- resources -------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    try:
        m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
        return int(m.group(1)) / 1024 if m else 0.0
    except OSError:
        return 0.0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


class Sampler:
    """VmRSS of every node, every 0.25 s, in a thread."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.peak = {n: 0.0 for n in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> dict[str, float]:
        return {n: rss_mb(p) for n, p in self.pids.items()}

    def reset_peak(self) -> None:
        self.peak = self.now()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for n, v in self.now().items():
                self.peak[n] = max(self.peak[n], v)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- the hierarchy ---------------------------------------------------------------------------

@dataclass
class Site:
    h: Hierarchy
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def node(self, name: str):
        return self.h.nodes[CR_NAMES.get(name, name)]

    def client(self, name: str) -> httpx.Client:
        if name not in self.clients:
            node = self.node(name)
            self.clients[name] = httpx.Client(base_url=node.url, auth=node.admin, timeout=60)
        return self.clients[name]

    def log_times(self, name: str, prefix: str) -> dict[tuple[str, str], float]:
        """When each tag of repositories `prefix*` was last set on node `name`."""
        c, cursor, times = self.client(name), 0, {}
        while True:
            r = c.get("/connreg/v1/sync/changes", params={"cursor": cursor, "limit": 1000})
            r.raise_for_status()
            doc = r.json()
            for ch in doc["changes"]:
                if ch["op"] == "manifest" and ch["tag"] and ch["repo"].startswith(prefix):
                    times[(ch["repo"], ch["tag"])] = ch["time"]
            if doc["cursor"] == cursor or not doc["changes"] and doc["cursor"] >= doc["head"]:
                return times
            cursor = doc["cursor"]


def start_site(base: Path, env: dict[str, str]) -> Site:
    h = Hierarchy(base, env=env)
    h.start_root()
    a, b, c = CR_NAMES["A"], CR_NAMES["B"], CR_NAMES["C"]
    h.create(a, "ReadWrite", ["load/*"])
    h.create(b, "ReadWrite", ["load/*"], parent=a)
    h.create(c, "ReadOnly", ["load/*"], parent=b)
    h.start_child(a)
    h.start_child(b, parent=a)
    h.start_child(c, parent=b)
    site = Site(h)
    # Warm-up: one image each way, so every node has reconciled and holds a live long-poll.
    blobs, manifest = make_image(1024, "warm-down")
    push(site.client("root"), "load/warm", "down", blobs, manifest)
    wait_for(lambda: ("load/warm", "down") in site.log_times("C", "load/warm"), 120,
             message="warm-up image at C")
    blobs, manifest = make_image(1024, "warm-up")
    push(site.client("B"), "load/warm", "up", blobs, manifest)
    wait_for(lambda: ("load/warm", "up") in site.log_times("root", "load/warm"), 120,
             message="warm-up image at the root")
    return site


# --- load ------------------------------------------------------------------------------------

def run_pushers(site: Site, at: str, prefix: str, pushers: int, images: int, layer_bytes: int,
                rate: float | None = None) -> tuple[float, float]:
    """P threads, each pushing `images` images to `prefix`p<i>:t<j>; with `rate` (images/s
    over all threads) they are paced. Returns (first push start, last acknowledgment)."""
    prepared = [[make_image(layer_bytes, f"{prefix}{i}-{j}") for j in range(images)]
                for i in range(pushers)]
    node = site.node(at)
    auth = node.admin  # each node has its own local admin
    errors: list[str] = []
    start = time.time()
    interval = pushers / rate if rate else 0.0

    def pusher(i: int) -> None:
        with httpx.Client(base_url=node.url, auth=auth, timeout=120) as c:
            for j, (blobs, manifest) in enumerate(prepared[i]):
                if interval:
                    delay = start + i * interval / pushers + j * interval - time.time()
                    if delay > 0:
                        time.sleep(delay)
                try:
                    push(c, f"{prefix}p{i}", f"t{j}", blobs, manifest)
                except Exception as exc:  # reported, the run goes on
                    errors.append(str(exc))

    threads = [threading.Thread(target=pusher, args=(i,)) for i in range(pushers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print(f"  {len(errors)} push errors, first: {errors[0]}", flush=True)
    return start, time.time()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def measure_flow(site: Site, sampler: Sampler, label: str, at: str, path: list[str],
                 prefix: str, pushers: int, images: int, layer_bytes: int,
                 rate: float | None = None, timeout: float = 600.0) -> dict:
    """Push at `at`, wait until the last node of `path` holds every tag, and compute the
    figures. `path` starts with `at`."""
    total = pushers * images
    pre = sampler.now()
    sampler.reset_peak()
    cpu0 = {n: cpu_seconds(p) for n, p in sampler.pids.items()}
    print(f"{label}: {pushers} pushers x {images} images at {at} ...", flush=True)
    start, acked = run_pushers(site, at, prefix, pushers, images, layer_bytes, rate)
    end = path[-1]
    deadline = time.time() + timeout
    have = {}
    while time.time() < deadline:
        have = site.log_times(end, prefix)
        if len(have) >= total:
            break
        time.sleep(0.5)
    finished = time.time()
    cpu1 = {n: cpu_seconds(p) for n, p in sampler.pids.items()}
    times = {n: site.log_times(n, prefix) for n in path}
    peak = dict(sampler.peak)
    time.sleep(20)  # RSS once the load is over
    after = sampler.now()
    src = times[at]
    result = {"label": label, "images": total, "arrived": len(times[end]),
              "ingest_rate": len(src) / max(acked - start, 1e-9),
              "push_seconds": acked - start, "hops": [], "pre": pre, "peak": peak,
              "after": after,
              "cpu": {n: (cpu1[n] - cpu0[n]) / max(finished - start, 1e-9) for n in cpu0},
              # CPU time per image: what the work costs, whatever else the machine runs.
              "cpu_ms_per_image": {n: (cpu1[n] - cpu0[n]) * 1000 / total for n in cpu0}}
    for a, b in zip(path, path[1:]):
        lat = [times[b][k] - times[a][k] for k in times[b] if k in times[a]]
        rate_ = len(times[b]) / max(max(times[b].values(), default=0)
                                    - min(times[a].values(), default=0), 1e-9)
        result["hops"].append({"hop": f"{a}→{b}", "n": len(lat), "rate": rate_,
                               "p50": percentile(lat, 50), "p99": percentile(lat, 99)})
    e2e = [times[end][k] - src[k] for k in times[end] if k in src]
    result["e2e"] = {"hop": f"{at}→{end}", "n": len(e2e), "p50": percentile(e2e, 50),
                     "p99": percentile(e2e, 99), "max": max(e2e, default=float("nan"))}
    print(json.dumps(result, indent=1, default=str), flush=True)
    return result


def catch_up(site: Site, label: str, node: str, parent: str, prefix: str, total: int,
             restart: list[str], timeout: float = 900.0) -> dict:
    """(Re)start `restart` in order (the catching-up `node` among them), then wait until `node`
    holds every tag of `prefix`; rate over its own arrivals, CPU of both ends."""
    for name in restart:
        site.node(name).stop()
    for name in restart:
        site.node(name).start()
    began = time.time()
    pids = {n: site.node(n).proc.pid for n in (parent, node)}
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    peak = {n: rss_mb(p) for n, p in pids.items()}
    deadline, have = time.time() + timeout, {}
    while time.time() < deadline:
        have = site.log_times(node, prefix)
        for n, p in pids.items():
            peak[n] = max(peak[n], rss_mb(p))
        if len(have) >= total:
            break
        time.sleep(0.2)
    cpu1 = {n: cpu_seconds(p) for n, p in pids.items()}
    times = sorted(have.values())
    span = (times[-1] - times[0]) if len(times) > 1 else float("nan")
    result = {"label": label, "hop": f"{parent}→{node}", "images": total, "arrived": len(have),
              # The hop's capacity: everything from readiness (reconnecting, fetching ahead)
              # to the last image stored; and the rate at which images became visible.
              "rate": len(times) / (times[-1] - began) if times else float("nan"),
              "apply_rate": (len(times) - 1) / span if span and span == span else float("nan"),
              "first_after_ready": (times[0] - began) if times else float("nan"),
              "last_after_ready": (times[-1] - began) if times else float("nan"),
              "cpu_ms_per_image": {n: (cpu1[n] - cpu0[n]) * 1000 / max(len(have), 1)
                                   for n in pids},
              "peak": peak}
    print(json.dumps(result, default=str), flush=True)
    return result


def measure_catchup(site: Site, args, layer: int) -> list[dict]:
    """The `catchup` phase (module doc): every hop catching up a backlog on its own."""
    total = args.pushers * args.catchup_per_pusher
    out = []
    for name in ("A", "B", "C"):
        site.node(name).stop()
    print(f"catch-up down: {total} images at the root while A, B, C are stopped ...", flush=True)
    run_pushers(site, "root", "load/cd-", args.pushers, args.catchup_per_pusher, layer)
    out.append(catch_up(site, "catch-up down", "A", "root", "load/cd-", total, ["A"]))
    out.append(catch_up(site, "catch-up down", "B", "A", "load/cd-", total, ["B"]))
    out.append(catch_up(site, "catch-up down", "C", "B", "load/cd-", total, ["C"]))
    for name in ("root", "A"):
        site.node(name).stop()
    print(f"catch-up up: {total} images at B while A and the root are stopped ...", flush=True)
    run_pushers(site, "B", "load/cu-", args.pushers, args.catchup_per_pusher, layer)
    out.append(catch_up(site, "catch-up up", "A", "B", "load/cu-", total, ["A", "B"]))
    site.node("A").stop()
    out.append(catch_up(site, "catch-up up", "root", "A", "load/cu-", total, ["root", "A"]))
    # What a later phase needs: every node up, the clients' connections fresh.
    for c in site.clients.values():
        c.close()
    site.clients.clear()
    return out


def head_poller(site: Site, node: str, rate: float, connections: int) -> subprocess.Popen:
    """A separate process sending HEAD on one manifest by tag at `rate` req/s (wrk cannot
    send HEAD: it waits for a body that never comes)."""
    # A Bearer token, as registry clients poll: the plain-read fast path answers it.
    r = site.client(node).get("/oauth2/token", params={"service": "connreg",
                                                       "scope": "repository:load/warm:pull"})
    r.raise_for_status()
    return subprocess.Popen([sys.executable, __file__, "--poll", site.node(node).host,
                             r.json()["token"], str(rate), str(connections)],
                            stdout=subprocess.PIPE, text=True)


def poll_main(host: str, token: str, rate: float, connections: int) -> None:
    """Keep-alive HEAD requests over `connections` sockets, paced to `rate` per second in
    total, until SIGINT; prints requests/s and how many were not 200."""
    import asyncio
    import signal

    addr, port = host.rsplit(":", 1)
    request = (f"HEAD /v2/load/warm/manifests/down HTTP/1.1\r\nHost: {host}\r\n"
               f"Accept: {OCI_MANIFEST}\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
    counts = {"ok": 0, "other": 0, "closed": 0}

    async def one(i: int, stop: asyncio.Event) -> None:
        reader = writer = None
        interval, due = connections / rate, time.monotonic() + i / rate
        while not stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            due = max(due + interval, time.monotonic() - 1.0)  # no catch-up storms
            if writer is None:
                reader, writer = await asyncio.open_connection(addr, int(port))
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                counts["closed"] += 1  # the server ended the connection: open another
                writer.close()
                reader = writer = None
                continue
            counts["ok" if head.startswith(b"HTTP/1.1 200") else "other"] += 1

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        began = time.monotonic()
        await asyncio.gather(*(one(i, stop) for i in range(connections)))
        took = time.monotonic() - began
        print(f"{(counts['ok'] + counts['other']) / took:.0f} req/s "
              f"({counts['other']} not 200, {counts['closed']} connections closed by the "
              f"server)", flush=True)

    asyncio.run(run())


def login_storm(base: Path, env: dict[str, str], clients: int, rounds: int) -> dict:
    """`clients` Basic logins at once, `rounds` times, each a password check (scrypt, 16 MiB)
    at a fresh root: distinct unknown users, so no check is shared or cached. Peak and after
    RSS of the node."""
    node = start_node(base / "logins", env={"CONNREG_AUTH_FAILURE_LIMIT": "100000", **env})
    try:
        time.sleep(3)
        sampler = Sampler({"root": node.proc.pid}).start()
        before = sampler.now()["root"]
        sampler.reset_peak()
        began = time.time()

        def login(i: int) -> None:
            with httpx.Client(base_url=node.url, timeout=120) as c:
                for r in range(rounds):
                    c.get("/v2/", auth=(f"storm-user-{i}-{r}", "not-the-password"))

        threads = [threading.Thread(target=login, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.time() - began
        peak = sampler.peak["root"]
        time.sleep(20)
        after = sampler.now()["root"]
        sampler.stop()
    finally:
        node.stop()
    return {"clients": clients, "rounds": rounds, "before": before, "peak": peak,
            "after": after, "seconds": took}


def idle_fresh_node(base: Path) -> dict:
    """RSS of a node that has served nothing, and what importing connreg costs."""
    node = start_node(base / "fresh", args=["--no-auth"])
    time.sleep(5)
    rss = rss_mb(node.proc.pid)
    node.stop()
    probe = ("import resource, sys\n"
             "def rss():\n"
             "    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])/1024\n"
             "a = rss()\n"
             "import connreg.app, connreg.serve\n"
             "b = rss()\n"
             "mods = sorted(m for m in sys.modules if '.' not in m)\n"
             "print(a, b, len(sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    return {"fresh_rss": rss, "bare_python": float(out[0]), "after_imports": float(out[1]),
            "modules": int(out[2])}


# --- report ----------------------------------------------------------------------------------

def fmt_rss(d: dict) -> str:
    return ", ".join(f"{n} {d[n]:.0f}" for n in NODES if n in d)


def report(results: list[dict], idle: dict | None, storm: dict | None, args,
           took: float, catchups: list[dict] | None = None) -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M')} (UTC), took {took / 60:.1f} min; connreg at "
             f"git {rev}{' + uncommitted changes' if dirty else ''}; label: {args.label}. "
             f"Load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
             f"{os.cpu_count()} CPUs (other tenants included).", "",
             "```", f".venv/bin/python bench/sync_load.py {' '.join(sys.argv[1:])}", "```", "",
             "| phase | images | ingest img/s | hop | hop img/s | hop p50 s | hop p99 s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for h in r["hops"]:
            lines.append(f"| {r['label']} | {r['arrived']}/{r['images']} | "
                         f"{r['ingest_rate']:.1f} | {h['hop']} | {h['rate']:.1f} | "
                         f"{h['p50']:.2f} | {h['p99']:.2f} |")
        e = r["e2e"]
        lines.append(f"| {r['label']} | | | **{e['hop']}** | | **{e['p50']:.2f}** | "
                     f"**{e['p99']:.2f}** (max {e['max']:.2f}) |")
    lines += ["", "RSS in MB (VmRSS) per node: before the phase / peak during it / 20 s after "
              "the last image arrived; CPU = share of one core during the phase, and CPU "
              "milliseconds per image (user + system, from /proc: independent of how busy the "
              "machine is).", "",
              "| phase | before | peak | after | CPU | CPU ms/image |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['label']} | {fmt_rss(r['pre'])} | {fmt_rss(r['peak'])} | "
                     f"{fmt_rss(r['after'])} | "
                     + ", ".join(f"{n} {r['cpu'][n]:.0%}" for n in NODES) + " | "
                     + ", ".join(f"{n} {r['cpu_ms_per_image'][n]:.0f}" for n in NODES) + " |")
        if r.get("poll"):
            lines.append(f"| | HEAD poll on A: {r['poll']} | | | | |")
    if catchups:
        lines += ["", "Catch-up (each hop alone, a backlog waiting; hop img/s = images / "
                      "(last arrival − readiness) at the node catching up, and between its "
                      "first and last arrival; seconds from its readiness to its first and "
                      "last arrival; CPU ms per image at both ends):", "",
                  "| phase | hop | images | hop img/s (first→last) | first / last arrival s | "
                  "CPU ms/image (parent side, child side) | peak RSS MB |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in catchups:
            cpu = ", ".join(f"{n} {v:.1f}" for n, v in c["cpu_ms_per_image"].items())
            peak = ", ".join(f"{n} {v:.0f}" for n, v in c["peak"].items())
            lines.append(f"| {c['label']} | {c['hop']} | {c['arrived']}/{c['images']} | "
                         f"**{c['rate']:.1f}** ({c['apply_rate']:.1f}) | {c['first_after_ready']:.1f} / "
                         f"{c['last_after_ready']:.1f} | {cpu} | {peak} |")
    if storm:
        lines += ["", f"Login storm at a fresh root: {storm['clients']} clients x "
                      f"{storm['rounds']} Basic logins with wrong passwords (each a scrypt "
                      f"check), {storm['seconds']:.1f} s: RSS {storm['before']:.0f} MB before, "
                      f"**peak {storm['peak']:.0f} MB**, {storm['after']:.0f} MB 20 s after."]
    if idle:
        lines += ["", f"Idle fresh node (`--no-auth`, nothing served, 5 s after ready): "
                      f"**{idle['fresh_rss']:.1f} MB** VmRSS. Floor: bare interpreter "
                      f"{idle['bare_python']:.1f} MB; after `import connreg.app, "
                      f"connreg.serve` {idle['after_imports']:.1f} MB "
                      f"({idle['modules']} modules)."]
    return "\n".join(lines) + "\n"


def write_results(path: Path, label: str, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    if SECTION not in old:
        old = old.rstrip("\n") + f"\n\n{SECTION}\n\nThe scenario of issue 13 (`bench/sync_load.py`, "
        old += "see bench/README.md). Newest run of each label replaces the older one.\n"
    head, _, rest = old.partition(SECTION)
    body, sep, tail = rest.partition("\n## ")
    marker = f"\n### {label}\n"
    if marker in body:
        before, _, after = body.partition(marker)
        nxt = after.find("\n### ")
        body = before + marker + "\n" + text + (after[nxt:] if nxt >= 0 else "")
    else:
        body = body.rstrip("\n") + "\n" + marker + "\n" + text
    path.write_text(head + SECTION + body + (sep + tail if sep else ""))


def main() -> int:
    if sys.argv[1:2] == ["--poll"]:  # the HEAD poller's own process
        poll_main(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phases", default="down,up,sustain,poll,catchup,logins,idle")
    ap.add_argument("--pushers", type=int, default=20)
    ap.add_argument("--images", type=int, default=10, help="per pusher (burst phases)")
    ap.add_argument("--layer-kib", type=int, default=64)
    ap.add_argument("--rate", type=float, default=20.0, help="images/s (sustain)")
    ap.add_argument("--sustain-seconds", type=float, default=60.0)
    ap.add_argument("--catchup-per-pusher", type=int, default=25,
                    help="images per pusher in the catch-up backlog (catchup)")
    ap.add_argument("--poll-connections", type=int, default=8)
    ap.add_argument("--poll-rate", type=float, default=1000.0, help="HEAD req/s (poll)")
    ap.add_argument("--label", default="run")
    ap.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for every node")
    args = ap.parse_args()
    phases = args.phases.split(",")
    env = {"CONNREG_LOG_LEVEL": "warning", **dict(e.split("=", 1) for e in args.env)}
    base = Path(tempfile.mkdtemp(prefix="connreg-syncload-"))
    t0 = time.time()
    results, idle, storm, catchups = [], None, None, []
    layer = args.layer_kib * 1024
    site = None
    try:
        if set(phases) - {"idle", "logins"}:
            site = start_site(base, env)
            sampler = Sampler({n: site.node(n).proc.pid for n in NODES}).start()
            if "down" in phases:
                results.append(measure_flow(site, sampler, "burst down", "root",
                                            ["root", "A", "B", "C"], "load/down-",
                                            args.pushers, args.images, layer))
            if "up" in phases:
                results.append(measure_flow(site, sampler, "burst up", "B",
                                            ["B", "A", "root"], "load/up-",
                                            args.pushers, args.images, layer))
            if "sustain" in phases:
                n = max(1, round(args.rate * args.sustain_seconds / args.pushers))
                results.append(measure_flow(site, sampler, f"{args.rate:g}/s down",
                                            "root", ["root", "A", "B", "C"], "load/sd-",
                                            args.pushers, n, layer, rate=args.rate))
                results.append(measure_flow(site, sampler, f"{args.rate:g}/s up", "B",
                                            ["B", "A", "root"], "load/su-", args.pushers, n,
                                            layer, rate=args.rate))
            if "poll" in phases:
                poller = head_poller(site, "A", args.poll_rate, args.poll_connections)
                time.sleep(2)
                r = measure_flow(site, sampler, "burst down + HEAD poll on A", "root",
                                 ["root", "A", "B", "C"], "load/poll-", args.pushers,
                                 args.images, layer)
                poller.send_signal(2)  # it prints its figures on SIGINT
                out = poller.communicate()[0] or ""
                r["poll"] = out.strip() or "the poller stopped early"
                results.append(r)
            sampler.stop()
            if "catchup" in phases:  # last: it restarts nodes (new pids)
                catchups = measure_catchup(site, args, layer)
        if "logins" in phases:
            storm = login_storm(base, env, args.pushers, 3)
            print(json.dumps(storm), flush=True)
        if "idle" in phases:
            idle = idle_fresh_node(base)
    finally:
        for c in (site.clients.values() if site else []):
            c.close()
        if site:
            site.h.stop_all()
        if args.keep:
            print("kept", base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    text = report(results, idle, storm, args, time.time() - t0, catchups)
    print(text)
    if args.results:
        write_results(Path(args.results), args.label, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
