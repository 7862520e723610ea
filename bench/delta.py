#!/usr/bin/env python3
"""Delta-transfer benchmark (issue 5): bytes on the wire between a connected registry and its
parent, counted by a TCP proxy in between, plus the Rust core's chunking/assembly throughput.

    cd /work/main && .venv/bin/python bench/delta.py              # everything, ~5 min
    .venv/bin/python bench/delta.py --scenarios A,core --results ''   # a part, stdout only

Not a test: it measures and reports (target met / not met); it fails (exit 1) only when a
scenario could not be run. Every server is a real `connreg serve` subprocess on 127.0.0.1; the
proxies run in this process (threads). See bench/README.md and the "Delta transfer" section of
bench/RESULTS.md for the method.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from connreg import _core
from connreg.testing.hierarchy import Hierarchy, cli, wait_for

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LAYOUT = BENCH / ".cache" / "oci-debian"
MiB = 1024 * 1024
MB = 1e6
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json"])
CAP = 5_000_000  # bytes/s for scenario D
LOG_PATTERN = re.compile(r"resum|whole-blob|assembled|unreachable|reachable again|"
                         r"failed verification|corrupt|kept|by chunks", re.I)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the byte-counting proxy ---------------------------------------------------------------------

class CountingProxy:
    """A loopback TCP proxy child → parent that counts every payload byte in both directions.

    One thread per direction per connection. `cut_after(n)` makes it close every open connection
    (both sides, RST-free shutdown) once, as soon as n more bytes have passed; new connections
    are accepted normally afterwards. `events` holds (monotonic time, running total) per forwarded
    read, for rate measurements.
    """

    def __init__(self, upstream_port: int, name: str):
        self.name = name
        self.upstream = ("127.0.0.1", upstream_port)
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(128)
        self.port = self._lsock.getsockname()[1]
        self._lock = threading.Lock()
        self.up = 0      # child → parent
        self.down = 0    # parent → child
        self.connections = 0
        self.events: list[tuple[float, int]] = []
        self._cut_at: int | None = None
        self.cuts: list[tuple[float, int, int]] = []  # (time, total at cut, connections closed)
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{name}", daemon=True).start()

    @property
    def total(self) -> int:
        with self._lock:
            return self.up + self.down

    def cut_after(self, nbytes: int) -> None:
        with self._lock:
            self._cut_at = self.up + self.down + nbytes

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._lsock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = {"left": 2}
            with self._lock:
                self.connections += 1
                self._open.update((client, upstream))
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up, pair, client, upstream),
                                 daemon=True).start()

    def _pump(self, src, dst, up: bool, pair: dict, a, b) -> None:
        try:
            while True:
                data = src.recv(256 * 1024)
                if not data:
                    break
                dst.sendall(data)
                cut = False
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    total = self.up + self.down
                    self.events.append((time.monotonic(), total))
                    if self._cut_at is not None and total >= self._cut_at:
                        self._cut_at = None
                        cut = True
                        victims = list(self._open)
                        self.cuts.append((time.monotonic(), total, len(victims) // 2))
                if cut:
                    for s in victims:
                        _shutdown(s)
                    break
        except OSError:
            pass
        finally:
            _shutdown(a)
            _shutdown(b)
            with self._lock:
                pair["left"] -= 1
                last = pair["left"] == 0
                if last:
                    self._open.discard(a)
                    self._open.discard(b)
            if last:
                a.close()
                b.close()

    def close(self) -> None:
        self._closed = True
        try:
            self._lsock.close()
        except OSError:
            pass
        with self._lock:
            victims = list(self._open)
        for s in victims:
            _shutdown(s)


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# --- cluster helpers -----------------------------------------------------------------------------

@dataclass
class Link:
    """A connected registry, the proxy in front of its parent, and which root that is."""
    name: str
    h: Hierarchy
    proxy: CountingProxy
    node: object = None

    @property
    def root(self):
        return self.h.root


@dataclass
class Bench:
    base: Path
    on: Hierarchy = None    # root with delta transfer (default settings)
    off: Hierarchy = None   # root with CONNREG_DELTA=false
    links: list[Link] = field(default_factory=list)

    def child(self, h: Hierarchy, name: str, repos: list[str], extra: list[str] = (),
              mode: str = "ReadOnly") -> Link:
        h.create(name, mode, repos, extra=list(extra))
        proxy = CountingProxy(h.root.port, name)
        link = Link(name, h, proxy)
        self.links.append(link)
        env = dict(h.env)
        env.pop("CONNREG_DELTA", None)  # only the parent's setting matters for the wire
        saved, h.env = h.env, {}
        try:
            link.node = h.start_child(name, env={**env,
                                                 "CONNREG_PARENT_ENDPOINT": f"127.0.0.1:{proxy.port}"})
        finally:
            h.env = saved
        wait_for(lambda: cli(h.root, "connected-registry", "show", "--name", name)
                 .get("activationStatus") == "Active", 60, interval=0.5,
                 message=f"{name} active")
        wait_for(lambda: proxy.total > 0, 30, message=f"{name} traffic through its proxy")
        return link

    def stop_child(self, link: Link) -> None:
        if link.node is not None:
            link.node.stop()
        link.proxy.close()

    def close(self) -> None:
        for link in self.links:
            self.stop_child(link)
        for h in (self.on, self.off):
            if h is not None:
                h.stop_all()


def parent_counter(root, name: str) -> int:
    """The parent's own per-child body byte counter (cross-check only)."""
    r = httpx.get(f"{root.url}/connreg/v1/sync/traffic", auth=root.admin, timeout=10)
    return int(r.json().get("bytes", {}).get(name, 0))


def manifest_digest(node, repo: str, ref: str) -> str | None:
    r = httpx.head(f"{node.url}/v2/{repo}/manifests/{ref}", auth=node.admin,
                   headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
    return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


def get_manifest(node, repo: str, ref: str) -> tuple[bytes, dict]:
    r = httpx.get(f"{node.url}/v2/{repo}/manifests/{ref}", auth=node.admin,
                  headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
    r.raise_for_status()
    return r.content, r.json()


def oras_push(root, repo: str, tag: str, path: Path) -> str:
    """Push one file as an OCI artifact with oras-py (monolithic POST+PUT, basic auth: oras-py's
    token backend does not re-request a token when a later request needs a wider scope)."""
    import oras.client
    client = oras.client.OrasClient(hostname=root.host, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth("admin", root.admin_password)
    resp = client.push(target=f"{root.host}/{repo}:{tag}",
                       files=[f"{path}:application/octet-stream"],
                       disable_path_validation=True, quiet=True)
    if resp.status_code != 201:
        raise RuntimeError(f"oras push {repo}:{tag}: HTTP {resp.status_code} {resp.text[:200]}")
    return manifest_digest(root, repo, tag)


def skopeo_push(root, src_tag: str, repo: str, tag: str) -> str:
    cmd = ["skopeo", "copy", "--quiet", "--dest-creds", f"admin:{root.admin_password}",
           "--dest-tls-verify=false", f"oci:{LAYOUT}:{src_tag}",
           f"docker://{root.host}/{repo}:{tag}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo copy failed: {proc.stderr.strip()[-500:]}")
    return manifest_digest(root, repo, tag)


@dataclass
class Transfer:
    """Bytes on the wire (proxy) for one sync, and what the parent's own counter says."""
    wire: int
    up: int
    down: int
    parent_counter: int
    seconds: float  # from the push at the root having finished to the tag visible at the child


def measure_sync(link: Link, repo: str, tag: str, push, timeout: float,
                 at=None) -> tuple[Transfer, str]:
    """Run `push()` (returns the manifest digest at the root) and wait until the child (or
    the node `at`) serves `repo:tag` at that digest; return what crossed the proxy meanwhile."""
    p = link.proxy
    up0, down0 = p.up, p.down
    c0 = parent_counter(link.root, link.name)
    digest = push()
    t_pushed = time.monotonic()
    target = at or link.node
    wait_for(lambda: manifest_digest(target, repo, tag) == digest, timeout, interval=0.1,
             message=f"{repo}:{tag} at {link.name if at is None else 'the root'}")
    seconds = time.monotonic() - t_pushed
    time.sleep(0.5)  # let the sync step's last request/answer finish
    up, down = p.up - up0, p.down - down0
    return Transfer(up + down, up, down, parent_counter(link.root, link.name) - c0,
                    seconds), digest


def measure_push_up(link: Link, repo: str, tag: str, push, timeout: float) -> Transfer:
    """Run `push()` (at the child; returns the manifest digest there) and wait until the root
    serves `repo:tag` at that digest; return what crossed the proxy meanwhile."""
    return measure_sync(link, repo, tag, push, timeout, at=link.root)[0]


def blob_ok(node, repo: str, digest: str, size: int) -> bool:
    r = httpx.head(f"{node.url}/v2/{repo}/blobs/{digest}", auth=node.admin, timeout=10)
    return r.status_code == 200 and int(r.headers.get("Content-Length", -1)) == size


def log_lines(node, since: int = 0) -> list[str]:
    text = node.log()[since:]
    return [line for line in text.splitlines() if LOG_PATTERN.search(line)]


# --- scenarios ----------------------------------------------------------------------------------

@dataclass
class Row:
    scenario: str
    figure: str
    value: str
    target: str = ""
    met: str = ""  # "met", "**not met**", "" (info)


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def prng(seed: str, n: int) -> bytes:
    """n deterministic, incompressible pseudo-random bytes (a SHAKE-256 stream): the same
    seed gives the same data, so the byte counts repeat from run to run."""
    return hashlib.shake_256(seed.encode()).digest(n)


def edited(data: bytes, seed: str, regions: int, fraction: float, insert: int, insert_at: int
           ) -> tuple[bytes, int]:
    """`fraction` of the bytes overwritten with new pseudo-random bytes in `regions` scattered
    places (one at a random offset inside each of `regions` equal strata, so they never
    overlap), then `insert` new bytes inserted at `insert_at`. Returns (v2, bytes changed)."""
    rng = random.Random(seed + "/positions")
    out = bytearray(data)
    region = int(len(data) * fraction) // regions
    stratum = len(data) // regions
    for i in range(regions):
        at = i * stratum + rng.randrange(0, stratum - region)
        out[at:at + region] = prng(f"{seed}/region{i}", region)
    new = prng(f"{seed}/insert", insert)
    return bytes(out[:insert_at]) + new + bytes(out[insert_at:]), region * regions


def scenario_a(b: Bench, args, rows: list[Row], notes: list[str]) -> None:
    size = args.size_mib * MiB
    repo = "bench/artifact"
    delta = b.child(b.on, "deltaA1", ["bench/*"])
    whole = b.child(b.off, "wholeA1", ["bench/*"])
    v1 = prng(f"{args.seed}/A/v1", size)
    v2, changed = edited(v1, seed=f"{args.seed}/A/v2", regions=100, fraction=0.01, insert=MiB, insert_at=4096)
    # What 64 KiB chunks alone (no refinement into sub-chunks) would have to move: v2's chunks
    # that v1 does not have.
    v1_ids = {c for _, _, c in _core.chunk_bytes(v1)}
    v2_chunks = _core.chunk_bytes(v2)
    floor = sum(n for _, n, c in v2_chunks if c not in v1_ids)
    floor_n = sum(1 for _, _, c in v2_chunks if c not in v1_ids)
    # A second edit pattern, synced for real: the same 1% in 10 regions (+ 1 MiB inserted),
    # made from v1 with its own seed, pushed after v2 to the delta child only.
    v3, changed3 = edited(v1, seed=f"{args.seed}/A/v3", regions=10, fraction=0.01, insert=MiB,
                          insert_at=4096)
    p1, p2 = b.base / "a-v1" / "artifact.bin", b.base / "a-v2" / "artifact.bin"
    p3 = b.base / "a-v3" / "artifact.bin"
    for p, data in ((p1, v1), (p2, v2), (p3, v3)):
        p.parent.mkdir()
        p.write_bytes(data)
    d1, d2, d3 = _core.digest_bytes(v1), _core.digest_bytes(v2), _core.digest_bytes(v3)
    del v1, v2, v3
    res = {}
    for tag, path, blob in (("v1", p1, d1), ("v2", p2, d2)):
        for link in (delta, whole):
            log(f"A: {tag} → {link.name}")
            t, _ = measure_sync(link, repo, tag, lambda: oras_push(link.root, repo, tag, path),
                                args.timeout)
            if not blob_ok(link.node, repo, blob, path.stat().st_size):
                raise RuntimeError(f"{blob} missing or wrong size at {link.name}")
            res[tag, link.name] = t
            log(f"A: {tag} at {link.name}: {t.wire:,} bytes on the wire in {t.seconds:.1f} s")
    log("A: v3 (10 regions) → " + delta.name)
    t3, _ = measure_sync(delta, repo, "v3", lambda: oras_push(delta.root, repo, "v3", p3),
                         args.timeout)
    if not blob_ok(delta.node, repo, d3, p3.stat().st_size):
        raise RuntimeError(f"{d3} missing or wrong size at {delta.name}")
    v3_size = p3.stat().st_size
    v2_size = p2.stat().st_size
    for p in (p1, p2, p3):
        shutil.rmtree(p.parent)
    dv1, wv1 = res["v1", delta.name], res["v1", whole.name]
    dv2, wv2 = res["v2", delta.name], res["v2", whole.name]
    pct = 100 * dv2.wire / v2_size
    rows += [
        Row("A", f"v1 ({size / MiB:.0f} MiB pseudo-random) first sync, delta parent",
            f"{dv1.wire / MB:,.1f} MB on the wire ({dv1.wire / size:.3f}× its size), "
            f"{dv1.seconds:.1f} s"),
        Row("A", "v1 first sync, whole-blob parent (CONNREG_DELTA=false)",
            f"{wv1.wire / MB:,.1f} MB ({wv1.wire / size:.3f}×), {wv1.seconds:.1f} s"),
        Row("A", f"**v2 ({v2_size / MiB:.0f} MiB: {changed / MiB:.2f} MiB changed in 100 places "
                 f"+ 1 MiB inserted at 4 KiB), delta parent**",
            f"**{dv2.wire / MB:,.2f} MB = {pct:.2f}% of v2** ({dv2.seconds:.1f} s)",
            "≤ 5% of v2", verdict(pct <= 5.0)),
        Row("A", f"**v3 ({v3_size / MiB:.0f} MiB: {changed3 / MiB:.2f} MiB changed in 10 places "
                 f"+ 1 MiB inserted at 4 KiB, made from v1), delta parent**",
            f"**{t3.wire / MB:,.2f} MB = {100 * t3.wire / v3_size:.2f}% of v3** "
            f"({t3.seconds:.1f} s)", "≤ 5% of v3", verdict(100 * t3.wire / v3_size <= 5.0)),
        Row("A", "v2, whole-blob parent (what a pull-through proxy / zot sync moves)",
            f"{wv2.wire / MB:,.1f} MB = {100 * wv2.wire / v2_size:.1f}% of v2 "
            f"({wv2.seconds:.1f} s); delta moves {wv2.wire / max(dv2.wire, 1):.0f}× less"),
    ]
    notes.append(f"A: v2 on the wire, delta: up {dv2.up:,} B (requests), down {dv2.down:,} B; "
                 f"parent's body counter {dv2.parent_counter:,} B. Whole-blob: up {wv2.up:,}, "
                 f"down {wv2.down:,}, parent's counter {wv2.parent_counter:,} B. "
                 f"Least possible for v2 ≈ changed + inserted bytes = "
                 f"{(changed + MiB) / MB:.2f} MB ({100 * (changed + MiB) / v2_size:.2f}%).")
    notes.append(f"A: without refinement, whole 64 KiB chunks alone would move {floor_n} of "
                 f"v2's {len(v2_chunks):,} chunks (default FastCDC params, mean "
                 f"{v2_size / len(v2_chunks) / 1024:.0f} KiB) = {floor / MB:.2f} MB = "
                 f"{100 * floor / v2_size:.2f}% of v2; refining runs of missing chunks into "
                 f"~4 KiB sub-chunks against the old version moved {dv2.wire / floor:.3f}× that "
                 f"(incl. chunk lists, sub-chunk lists, batch framing, HTTP and sync chatter).")
    delta_log = [l for l in log_lines(delta.node) if "assembled" in l]
    if delta_log:
        notes.append("A: " + delta.name + " log: `" + delta_log[-1].split(" connreg.delta: ")[-1]
                     + "`")
    b.stop_child(delta)
    b.stop_child(whole)


def scenario_b(b: Bench, args, rows: list[Row], notes: list[str]) -> None:
    if not (LAYOUT / "index.json").exists():
        log("B: image cache missing; running bench/build_image.sh")
        subprocess.run([str(BENCH / "build_image.sh")], check=True, timeout=1800)
    repo = "bench/debian"
    delta = b.child(b.on, "deltaB1", [repo])
    whole = b.child(b.off, "wholeB1", [repo])
    res = {}
    for tag, src in (("v1", "bookworm"), ("v2", "bookworm-v2")):
        for link in (delta, whole):
            log(f"B: {tag} ({src}) → {link.name}")
            t, _ = measure_sync(link, repo, tag, lambda: skopeo_push(link.root, src, repo, tag),
                                args.timeout)
            res[tag, link.name] = t
            log(f"B: {tag} at {link.name}: {t.wire:,} bytes on the wire in {t.seconds:.1f} s")
    m1, doc1 = get_manifest(b.on.root, repo, "v1")
    m2, doc2 = get_manifest(b.on.root, repo, "v2")
    old = {d["digest"] for d in [doc1["config"], *doc1["layers"]]}
    new = [d for d in [doc2["config"], *doc2["layers"]] if d["digest"] not in old]
    new_size = len(m2) + sum(d["size"] for d in new)
    v1_size = len(m1) + sum(d["size"] for d in [doc1["config"], *doc1["layers"]])
    for link in (delta, whole):
        for d in [doc2["config"], *doc2["layers"]]:
            if not blob_ok(link.node, repo, d["digest"], d["size"]):
                raise RuntimeError(f"{d['digest']} missing or wrong size at {link.name}")
    dv2, wv2 = res["v2", delta.name], res["v2", whole.name]
    ratio = dv2.wire / new_size
    layer = [d for d in new if d in doc2["layers"]]
    rows += [
        Row("B", f"Debian v1 first sync ({v1_size / MB:.1f} MB: 1 gzip layer + config + manifest)"
                 ", delta parent",
            f"{res['v1', delta.name].wire / MB:.2f} MB "
            f"({res['v1', delta.name].wire / v1_size:.3f}×); whole-blob parent "
            f"{res['v1', whole.name].wire / MB:.2f} MB"),
        Row("B", f"**v2 = v1 + apt-get install curl layer; new content {new_size:,} B "
                 f"(layer {sum(d['size'] for d in layer):,} + config "
                 f"{doc2['config']['size']:,} + manifest {len(m2):,}), delta parent**",
            f"**{dv2.wire:,} B = {ratio:.4f}× the new content** ({dv2.seconds:.1f} s)",
            "≤ 1.05×", verdict(ratio <= 1.05)),
        Row("B", "v2, whole-blob parent",
            f"{wv2.wire:,} B = {wv2.wire / new_size:.4f}× ({wv2.seconds:.1f} s)"),
    ]
    notes.append(f"B: v2 delta: up {dv2.up:,} B, down {dv2.down:,} B, parent's body counter "
                 f"{dv2.parent_counter:,} B. The new layer is gzip: its chunks do not compress "
                 f"and none is held by v1, so the gain over whole-blob is only what v1 already "
                 f"has (the whole-blob child also skips blobs it has).")
    b.stop_child(delta)
    b.stop_child(whole)


def scenario_c(b: Bench, args, rows: list[Row], notes: list[str]) -> None:
    size = args.size_mib * MiB
    repo = "bench/cut"
    link = b.child(b.on, "cutC1", [repo])
    path = b.base / "c" / "blob.bin"
    path.parent.mkdir()
    path.write_bytes(prng(f"{args.seed}/C", size))
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    log_start = len(link.node.log())
    link.proxy.cut_after(size // 2)
    log(f"C: {size / MiB:.0f} MiB → {link.name}, proxy cuts every connection after "
        f"{size // 2 / MiB:.0f} MiB")
    t, _ = measure_sync(link, repo, "v1", lambda: oras_push(link.root, repo, "v1", path),
                        args.timeout)
    shutil.rmtree(path.parent)
    if not blob_ok(link.node, repo, digest, size):
        raise RuntimeError(f"{digest} missing or wrong size at {link.name}")
    cuts = link.proxy.cuts
    lines = log_lines(link.node, log_start)
    how = ("chunk-wise resume" if any("resuming" in l for l in lines)
           else "whole-blob Range resume" if any("whole-blob" in l for l in lines)
           else "no resume seen in the log")
    ratio = t.wire / size
    rows += [
        Row("C", f"**{size / MiB:.0f} MiB blob, every connection cut once at "
                 f"{cuts[0][1] / MiB:.1f} MiB through the proxy, total for the blob**"
            if cuts else f"**{size / MiB:.0f} MiB blob (the cut never happened!)**",
            f"**{t.wire / MB:,.1f} MB = {ratio:.3f}× its size** ({t.seconds:.1f} s, {how})",
            "≤ 1.1×", verdict(ratio <= 1.1 and bool(cuts))),
    ]
    notes.append(f"C: proxy cut {cuts[0][2] if cuts else 0} open connection(s) at "
                 f"{cuts[0][1]:,} B; parent's body counter {t.parent_counter:,} B. "
                 f"Child log after the cut:" if cuts else "C: the proxy never cut.")
    notes.append("```\n" + "\n".join(_short(l) for l in lines[-8:]) + "\n```")
    b.stop_child(link)


def _short(line: str) -> str:
    line = re.sub(r"sha256:[0-9a-f]{12,}", lambda m: m.group(0)[:19] + "…", line)
    return line if len(line) < 220 else line[:217] + "…"


def scenario_d(b: Bench, args, rows: list[Row], notes: list[str]) -> None:
    size = args.cap_mib * MiB
    repo = "bench/capped"
    link = b.child(b.on, "capD1", [repo], extra=["--bandwidth-limit", str(CAP)])
    path = b.base / "d" / "blob.bin"
    path.parent.mkdir()
    path.write_bytes(prng(f"{args.seed}/D", size))
    p = link.proxy
    marks = {}

    def push():
        marks["base"] = p.total
        marks["start"] = time.monotonic()
        return oras_push(link.root, repo, "v1", path)

    log(f"D: {size / MiB:.0f} MiB → {link.name} capped at {CAP / MB:.0f} MB/s")
    t, digest = measure_sync(link, repo, "v1", push, args.timeout + size / CAP)
    visible = time.monotonic() - 0.5  # measure_sync settles 0.5 s after seeing the tag
    shutil.rmtree(path.parent)
    with p._lock:
        events = [e for e in p.events if marks["start"] <= e[0] <= visible + 0.05]
    # The sync starts with the change-feed answer and the chunk list; idle chatter before it
    # (a status report during the push) is < 16 KiB, so the first event past that is the start.
    first = next(i for i, e in enumerate(events) if e[1] - marks["base"] > 16 * 1024)
    events = events[first:]
    t0, t1 = events[0][0], events[-1][0]
    moved = events[-1][1] - marks["base"]
    rate = moved / (t1 - t0)
    # Spec: averaged over 10 s. The highest 10-s window, and the rate after the first second
    # (the bucket starts full, so the first second may carry up to one second's worth extra).
    peak10 = 0.0
    j = 0
    for i in range(len(events)):
        while events[j][0] < events[i][0] - 10.0:
            j += 1
        if events[i][0] - t0 >= 10.0:
            before = events[j - 1][1] if j else events[0][1]
            peak10 = max(peak10, (events[i][1] - before) / 10.0)
    after1 = [e for e in events if e[0] >= t0 + 1.0]
    steady = ((events[-1][1] - after1[0][1]) / (t1 - after1[0][0])
              if len(after1) > 1 else float("nan"))
    ok = abs(rate - CAP) <= 0.1 * CAP
    rows += [
        Row("D", f"**{size / MiB:.0f} MiB blob, CR bandwidth limit {CAP:,} B/s: bytes on the "
                 f"wire / (last − first byte)**",
            f"**{rate / MB:.2f} MB/s** ({moved / MB:.1f} MB in {t1 - t0:.1f} s, "
            f"{100 * (rate - CAP) / CAP:+.1f}%)",
            "5 MB/s ± 10%", verdict(ok)),
        Row("D", "same transfer: highest 10-s window; rate after its first second",
            f"{peak10 / MB:.2f} MB/s; {steady / MB:.2f} MB/s"),
    ]
    b.stop_child(link)


def scenario_e(b: Bench, args, rows: list[Row], notes: list[str]) -> None:
    """Upward: a ReadWrite edge pushes v2 of an artifact whose v1 the parent has."""
    size = args.size_mib * MiB
    repo = "bench/edge-artifact"
    delta = b.child(b.on, "deltaE1", ["bench/*"], mode="ReadWrite")
    whole = b.child(b.off, "wholeE1", ["bench/*"], mode="ReadWrite")
    v1 = prng(f"{args.seed}/E/v1", size)
    v2, changed = edited(v1, seed=f"{args.seed}/E/v2", regions=10, fraction=0.01, insert=MiB,
                         insert_at=4096)
    p1, p2 = b.base / "e-v1" / "artifact.bin", b.base / "e-v2" / "artifact.bin"
    for p, data in ((p1, v1), (p2, v2)):
        p.parent.mkdir()
        p.write_bytes(data)
    del v1, v2
    res = {}
    for link in (delta, whole):
        log(f"E: v1 at the root, synced down to {link.name}")
        measure_sync(link, repo, "v1", lambda: oras_push(link.root, repo, "v1", p1), args.timeout)
        log(f"E: v2 pushed at {link.name}, up to its root")
        t = measure_push_up(link, repo, "v2", lambda: oras_push(link.node, repo, "v2", p2),
                            args.timeout)
        res[link.name] = t
        log(f"E: v2 up from {link.name}: {t.wire:,} bytes on the wire in {t.seconds:.1f} s")
    v2_size = p2.stat().st_size
    shutil.rmtree(p1.parent)
    shutil.rmtree(p2.parent)
    d, w = res[delta.name], res[whole.name]
    rows += [
        Row("E", f"**v2 ({v2_size / MiB:.0f} MiB: {changed / MiB:.2f} MiB changed in 10 places "
                 f"+ 1 MiB inserted) pushed at a ReadWrite edge, v1 at its parent: up by "
                 f"chunks**",
            f"**{d.wire / MB:,.2f} MB = {100 * d.wire / v2_size:.2f}% of v2** "
            f"({d.seconds:.1f} s)"),
        Row("E", "same push, parent with delta off (whole-blob resumable push)",
            f"{w.wire / MB:,.1f} MB = {100 * w.wire / v2_size:.1f}% of v2 ({w.seconds:.1f} s); "
            f"by chunks moves {w.wire / max(d.wire, 1):.0f}× less"),
    ]
    pushed = [l for l in log_lines(delta.node) if "pushed" in l and "by chunks" in l]
    if pushed:
        notes.append("E: " + delta.name + " log: `" + pushed[-1].split(" connreg.delta: ")[-1]
                     + "`")
    b.stop_child(delta)
    b.stop_child(whole)


def core_throughput(b: Bench, args, rows: list[Row], notes: list[str]) -> None:
    size = args.size_mib * MiB
    runs = max(3, args.runs)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})  # this thread on one core; the Rust calls run on it
    try:
        data = prng(f"{args.seed}/core", size)
        mib = args.size_mib
        params = _core.ChunkParams()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            chunks = _core.chunk_bytes(data, params)
            times.append(time.perf_counter() - t)
        _row_rate(rows, f"chunk_bytes (FastCDC + BLAKE3 ids), {mib} MiB in memory", size, times,
                  f"{len(chunks):,} chunks, mean {size / len(chunks) / 1024:.0f} KiB")
        store = _core.BlobStore(b.base / "core-store")
        up = store.upload("core-src")
        for i in range(0, size, 8 * MiB):
            up.write(data[i:i + 8 * MiB])
        digest = up.commit(_core.digest_bytes(data))
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            chunks = store.chunks(digest, params)
            times.append(time.perf_counter() - t)
        _row_rate(rows, f"BlobStore.chunks on a stored {mib} MiB blob (file in page cache)", size,
                  times, "")
        # Assembly as a child does it (delta/fetch.py): the chunks it holds, copied with
        # `copy_many` per 16 MiB, then commit with the digest (running SHA-256 checked). Same
        # digest → the dedup path: verify, discard. copy_many hashes on a second thread, so
        # these rows run unpinned (both cores); the one-core per-chunk copy_from loop is shown
        # after them for comparison.
        os.sched_setaffinity(0, set(cpus))

        def groups(order):
            out, cur, size_ = [], [], 0
            for off, length, _ in order:
                cur.append((digest, off, length))
                size_ += length
                if size_ >= 16 * MiB:
                    out.append(cur)
                    cur, size_ = [], 0
            return out + ([cur] if cur else [])

        def assemble(upload_id, order, commit_digest):
            t = time.perf_counter()
            up = store.upload(upload_id)
            for group in groups(order):
                up.copy_many(group)
            t_copied = time.perf_counter()
            up.commit(commit_digest)
            return time.perf_counter() - t, t_copied - t, time.perf_counter() - t_copied

        times = [assemble(f"asm-same-{i}", chunks, digest)[0] for i in range(runs)]
        _row_rate(rows, "assembly + SHA-256 verify: copy_many over all chunks of the stored "
                        "blob (16 MiB per call), commit(its digest)", size, times,
                  "verify then discard (blob exists); copy on one thread, SHA-256 on another")
        # A new blob (chunks in reverse order): verify + fsync + rename, as for a real v2.
        rev = b"".join(data[o:o + n] for o, n, _ in reversed(chunks))
        rev_digest = _core.digest_bytes(rev)
        del rev
        times, copies, commits = [], [], []
        for i in range(runs):
            total, copied, committed = assemble(f"asm-new-{i}", list(reversed(chunks)),
                                                rev_digest)
            times.append(total)
            copies.append(copied)
            commits.append(committed)
            store.delete(rev_digest)
        _row_rate(rows, "assembly + SHA-256 verify of a new blob (chunks reversed): "
                        "copy_many, commit = verify + fsync + rename", size, times,
                  f"of which the copy {size / statistics.median(copies) / MB:,.0f} "
                  f"MB/s, commit {statistics.median(commits):.2f} s (fsync of {mib} MiB to "
                  f"the VM's disk)")
        os.sched_setaffinity(0, {cpus[-1]})

        def info_row(label: str, run) -> None:
            times = []
            for i in range(runs):
                t = time.perf_counter()
                run(i)
                times.append(time.perf_counter() - t)
            rates = sorted(size / t / MB for t in times)
            rows.append(Row("core", label, f"{statistics.median(rates):,.0f} MB/s (median of "
                                           f"{runs}, {rates[0]:,.0f}–{rates[-1]:,.0f})"))

        def one_call_per_chunk(i: int) -> None:
            up = store.upload(f"asm-one-{i}")
            for off, length, _ in chunks:
                up.copy_from(digest, off, length)
            up.commit(digest)

        info_row("(comparison) the same assembly on one core, one copy_from call per chunk "
                 "(read, hash, write in series)", one_call_per_chunk)
        info_row("SHA-256 alone on this CPU (`_core.digest_bytes`, 256 MiB in memory, one "
                 "pass): roughly the ceiling for assembly + verify",
                 lambda i, d=data: _core.digest_bytes(d))
        del data
    finally:
        os.sched_setaffinity(0, set(cpus))
        shutil.rmtree(b.base / "core-store", ignore_errors=True)


def _row_rate(rows: list[Row], what: str, size: int, times: list[float], extra: str) -> None:
    rates = sorted(size / t / MB for t in times)
    med = statistics.median(rates)
    value = (f"**{med:,.0f} MB/s** (median of {len(rates)}, {rates[0]:,.0f}–{rates[-1]:,.0f})"
             + (f"; {extra}" if extra else ""))
    rows.append(Row("core", f"**{what}**", value, "≥ 1 GB/s (1,000 MB/s)", verdict(med >= 1000)))
    log(f"core: {what}: {med:,.0f} MB/s (runs {', '.join(f'{r:,.0f}' for r in rates)})")


SCENARIOS = {"core": core_throughput, "A": scenario_a, "B": scenario_b, "C": scenario_c,
             "D": scenario_d, "E": scenario_e}


# --- report -------------------------------------------------------------------------------------

def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "unknown"


def machine() -> str:
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} vCPUs (shared, noisy){mem}, Linux {platform.release()}"


def render(rows: list[Row], notes: list[str], failures: list[str], args, elapsed: float) -> str:
    out = ["## Delta transfer\n"]
    out.append(f"Run {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} (local), took "
               f"{elapsed / 60:.1f} min; connreg at git {git_rev()}; {machine()}. "
               f"Scenarios: {args.scenarios}.\n")
    out.append("Command (from the repo root, as root; the Debian image is built by "
               "`bench/build_image.sh` if `bench/.cache/oci-debian` is missing):\n")
    out.append("```\n.venv/bin/python bench/delta.py\n```\n")
    out.append("### Results\n")
    out.append("Bytes on the wire = TCP payload bytes in both directions between the child and "
               "its parent, counted by a proxy in front of the parent (MB = 10^6 bytes).\n")
    out.append("| | figure | value | target | met? |")
    out.append("| --- | --- | --- | --- | --- |")
    for r in rows:
        out.append(f"| {r.scenario} | {r.figure} | {r.value} | {r.target} | {r.met} |")
    for f in failures:
        out.append(f"| | **failed** | {f} | | **not run** |")
    out.append("")
    if notes:
        out.append("Details:\n")
        for n in notes:
            out.append(n if n.startswith("```") else f"- {n}")
        out.append("")
    out.append("### Method\n")
    out.append(
        "- **Nodes**: two roots, each a real `connreg serve` subprocess "
        "(`connreg.testing.hierarchy.Hierarchy`): one with default settings (delta on: chunk "
        "lists + zstd chunk batches for blobs ≥ 1 MiB, FastCDC 16/64/256 KiB, BLAKE3 ids), "
        "one with `CONNREG_DELTA=false`, so its children fall back to whole-blob transfer "
        "(resumable with `Range`) — the bytes a pull-through proxy (distribution) or zot's sync "
        "would move. Each scenario creates fresh ReadOnly connected registries with "
        "`connreg connected-registry create` and starts them with "
        "`CONNREG_PARENT_ENDPOINT=127.0.0.1:<proxy port>`, so all of a child's sync traffic "
        "(change feed, config, status, chunk lists, batches, blobs, manifests) crosses its own "
        "proxy. Children are stopped at the end of their scenario.")
    out.append(
        "- **Proxy**: threads in the benchmark process, loopback only, one per child; counts "
        "every byte it forwards in both directions (HTTP headers and bodies; TCP/IP headers "
        "not included). A figure is the count from just before the push at the root until the "
        "child serves the new tag (polled every 0.1 s) plus 0.5 s, so it includes everything "
        "the sync did meanwhile (long-poll answers, status reports). The parent's own counter "
        "(`GET /connreg/v1/sync/traffic`, body bytes only) is shown in the details as a "
        "cross-check.")
    out.append(
        f"- **Data**: every blob is a deterministic pseudo-random byte stream (SHAKE-256 of a "
        f"label and `--seed`, default `{args.seed}`): incompressible like random data, and the "
        "same in every run, so byte counts repeat; another seed gives other chunk boundaries "
        "(with `os.urandom` data, earlier runs of A's v2 gave 5.5% and 6.1%).")
    out.append(
        f"- **A**: v1 = {args.size_mib} MiB of that data, pushed with "
        "oras-py (`OrasClient(insecure=True, auth_backend='basic')`, one file as an artifact "
        "layer `application/octet-stream`). v2 = v1 with 1% of its bytes overwritten by other "
        "pseudo-random bytes in 100 regions (one at a seeded random offset in each hundredth of the blob) and "
        "then 1 MiB of new bytes inserted at offset 4096. v1 then v2 go to the delta root "
        "and to the whole-blob root; each child syncs `bench/*`.")
    out.append(
        "- **B**: `skopeo copy --dest-creds admin:PW --dest-tls-verify=false "
        "oci:bench/.cache/oci-debian:bookworm docker://127.0.0.1:PORT/bench/debian:v1`, then "
        "`bookworm-v2` as `v2`, to both roots. New content = the v2 manifest's bytes plus the "
        "sizes of the blobs v2 references that v1 does not (the new layer and config).")
    out.append(
        f"- **C**: a fresh {args.size_mib} MiB pseudo-random blob pushed with oras-py; the child's proxy "
        "shuts down every open connection (both sides) once, as soon as half the blob's size "
        "has passed it; new connections are accepted afterwards. The child retries on its own "
        "(backoff) and continues; the figure is the total for the whole sync. Log lines are the "
        "child's own.")
    out.append(
        f"- **D**: `connreg connected-registry create … --bandwidth-limit {CAP}`, a "
        f"{args.cap_mib} MiB pseudo-random blob. Rate = bytes the proxy counted from the push until the "
        "tag was visible at the child, divided by the time from the start of the transfer (the "
        "first forwarded read once more than 16 KiB had passed since the push began: the chunk "
        "list; earlier idle chatter is smaller) to the last forwarded read before the tag was "
        "visible. The child's token bucket starts full (one second's worth), which is in the "
        "figure; the rate after the first second and the highest 10-s window (the spec "
        "averages over 10 s) are shown too.")
    out.append(
        f"- **E** (upward): a ReadWrite child of each root; v1 ({args.size_mib} MiB of that "
        "data) pushed at the root with oras-py and synced down, then v2 (1% changed in 10 "
        "regions + 1 MiB inserted at 4 KiB) pushed at the child with oras-py; the figure is "
        "the proxy's count from that push until the root serves v2's tag. Under the delta "
        "root the child's pusher sends only the chunks the root lacks (`delta/push.py`); under "
        "the whole-blob root it falls back to the resumable whole-blob push.")
    out.append(
        f"- **core**: in the benchmark process, the calling thread pinned to one CPU "
        f"(`os.sched_setaffinity`); the Rust calls release the GIL but run on that thread. "
        f"Input: {args.size_mib} MiB of that data; default `ChunkParams()`; median of "
        f"{max(3, args.runs)} runs, MB/s = 10^6 bytes of input per second. Assembly = what a "
        "child's fetch does with the chunks it holds: `Upload.copy_many([(digest, offset, "
        "length), …])` per 16 MiB of chunks of a stored blob (source in the page cache; the "
        "Rust side gathers 256 KiB pieces, writes each and hashes it on a second thread), then "
        "`Upload.commit(digest)`, which checks the running SHA-256. These assembly rows run "
        "unpinned (the copy and the hash use one core each); the comparison row is the older "
        "one-core loop, one `copy_from` per chunk. The first variant commits the same digest "
        "(the blob exists, so the upload is verified and discarded), the second builds a new "
        "blob and so also pays fsync and rename. Data dirs are under /tmp (the VM's disk).")
    out.append(
        "- The machine is shared and noisy: byte counts repeat from run to run (to within the "
        "few hundred bytes of idle sync chatter that happen to fall in a window); times and "
        "rates do not.")
    return "\n".join(out) + "\n"


def write_results(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# connreg benchmark results\n"
    start = text.find("\n## Delta transfer")
    if start >= 0:
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    path.write_text(text.rstrip("\n") + "\n\n" + section)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="core,A,B,C,D,E",
                    help="comma-separated subset of core,A,B,C,D,E (default: all)")
    ap.add_argument("--size-mib", type=int, default=256, help="artifact / blob size for A, C, "
                                                               "core (default 256)")
    ap.add_argument("--cap-mib", type=int, default=100, help="blob size for D (default 100)")
    ap.add_argument("--runs", type=int, default=5, help="repetitions of the core "
                                                        "measurements (≥3; default 5)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for one sync")
    ap.add_argument("--results", default=str(BENCH / "RESULTS.md"),
                    help="file whose 'Delta transfer' section is (re)written; '' = stdout only")
    ap.add_argument("--seed", default="connreg-delta-bench",
                    help="seed of the pseudo-random data (default: connreg-delta-bench)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = ap.parse_args()
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    if shutil.which("skopeo") is None and "B" in wanted:
        ap.error("scenario B needs skopeo (apt-get install skopeo)")

    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="connreg-delta-bench-", dir="/tmp"))
    log(f"work dir {base}")
    b = Bench(base)
    rows: list[Row] = []
    notes: list[str] = []
    failures: list[str] = []
    try:
        if any(s != "core" for s in wanted):
            b.on = Hierarchy(base / "delta")
            b.on.start_root()
            b.off = Hierarchy(base / "whole", env={"CONNREG_DELTA": "false"})
            b.off.start_root()
            log(f"roots: delta {b.on.root.url}, whole-blob {b.off.root.url}")
        for name in SCENARIOS:
            if name not in wanted:
                continue
            log(f"--- {name}")
            try:
                SCENARIOS[name](b, args, rows, notes)
            except Exception as exc:  # report, keep going with the other scenarios
                traceback.print_exc()
                failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
                for link in b.links:
                    if link.node is not None and link.node.proc and link.node.proc.poll() is None:
                        tail = link.node.log().splitlines()[-15:]
                        print(f"--- last log lines of {link.name}:\n" + "\n".join(tail))
                        b.stop_child(link)
    finally:
        b.close()
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - started
    section = render(rows, notes, failures, args, elapsed)
    print("\n" + section)
    if args.results:
        write_results(Path(args.results), section)
        log(f"wrote the 'Delta transfer' section of {args.results}")
    log(f"done in {elapsed / 60:.1f} min")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
