#!/usr/bin/env python3
"""Soak benchmark (issue 8, item 7): a three-tier hierarchy under ordinary wear for N minutes,
then: did every tier converge, was any acknowledged push lost, and do memory, descriptors and
disk stay flat?

    cd /work/main && .venv/bin/python bench/soak.py                # 10 minutes + convergence
    .venv/bin/python bench/soak.py --minutes 1 --results ''        # a short try, stdout only

root → edge (ReadWrite, `soak/*`) → child (ReadOnly, `soak/app` `soak/lib`), each a real
`connreg serve` subprocess; the edge and the child reach their parents through a TCP proxy in
this process that can cut the link. A seeded random driver pushes small images at the root and
the edge, moves and deletes tags, deletes manifests, pushes outside the edge's set, cuts links,
kills nodes with SIGKILL (restarted on the same data dir), and runs GC where the build has it.
Every acknowledged write is journalled; at the end the driver stops, links are restored and the
tiers are compared with each other and with the journal.

Not a test: exit 0 = converged and nothing lost, 1 = not converged or something lost or
resurrected, 2 = the run could not be set up. See bench/README.md and the "Soak" section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gzip
import io
import json
import os
import platform
import random
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.node import Node
from connreg.testing.oci import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, descriptor, sha256

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
JOURNAL_COPY = BENCH / ".cache" / "soak-journal.json"  # the last run's journal (gitignored)
KiB, MiB = 1024, 1024 * 1024
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json, " \
                  "application/vnd.oci.image.index.v1+json"

EDGE_SET = ["soak/*"]
CHILD_SET = ["soak/app", "soak/lib"]
SHARED_REPOS = ["soak/app", "soak/lib", "soak/tool"]  # written at the root and at the edge
ROOT_ONLY_REPO = "rootonly/x"                          # outside the edge's set
STRAY_REPO = "stray/x"                                 # pushed at the edge, outside its set
# Roles in this benchmark → names of the connected registries (5–40 characters).
CR_NAME = {"root": "root", "edge": "soakedge", "child": "soakchild"}
TAGS_PER_WRITER = 4  # each writer owns its tags (root: r0…, edge: e0…): one writer per tag
# GC here keeps blobs younger than 2 min (longer than a link cut + a restart + the sync's 30-s
# backoff, so nothing a sync is still assembling) and untagged manifests for 1 min; the defaults
# (1 h, 7 days) would give nothing back within a 10-minute run.
GC_GRACE_SECONDS = 120
GC_RETENTION_SECONDS = 60


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the link: a TCP proxy that can be cut ----------------------------------------------------

class LinkProxy:
    """Loopback TCP proxy child → parent. `cut(seconds)` closes every open connection at once
    and refuses new ones (accepted, then reset) until the time is up or `restore()`."""

    def __init__(self, upstream_port: int, name: str):
        self.name = name
        self.upstream = ("127.0.0.1", upstream_port)
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", 0))
        self._lsock.listen(128)
        self.port = self._lsock.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down_until = 0.0
        self._closed = False
        self.connections = 0
        self.refused = 0
        self.cuts = 0
        self.bytes = 0
        threading.Thread(target=self._accept, name=f"proxy-{name}", daemon=True).start()

    @property
    def is_cut(self) -> bool:
        return time.monotonic() < self._down_until

    def cut(self, seconds: float) -> int:
        """Cut now for `seconds`; returns how many connections were closed."""
        with self._lock:
            self._down_until = time.monotonic() + seconds
            self.cuts += 1
            victims = list(self._open)
        for s in victims:
            _shutdown(s)
        return len(victims) // 2

    def restore(self) -> None:
        with self._lock:
            self._down_until = 0.0

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._lsock.accept()
            except OSError:
                return
            if self.is_cut:
                # Reset rather than FIN: the child sees a refused/broken link at once.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                self.refused += 1
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:  # the parent is down (killed): the child sees a closed connection
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._open.update((client, upstream))
            pair = {"left": 2}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair, client, upstream),
                                 daemon=True).start()

    def _pump(self, src, dst, pair: dict, a, b) -> None:
        try:
            while True:
                data = src.recv(64 * KiB)
                if not data:
                    break
                dst.sendall(data)
                self.bytes += len(data)  # approximate under races; information only
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


# --- what this build can do (features land while the issue is worked on) -----------------------

@dataclass
class Features:
    max_store_bytes: bool = False
    gc_cli: bool = False          # `connreg maintenance gc --data-dir DIR` (stopped node)
    gc_api: str | None = None     # "METHOD path" of the management API's on-demand GC
    gc_settings: dict[str, str] = field(default_factory=dict)  # env for short grace/retention
    parked_cli: bool = False      # `connreg sync parked list --data-dir DIR`
    notes: list[str] = field(default_factory=list)


def _settings_fields() -> set[str]:
    from connreg.config import Settings
    return {f.name for f in dataclasses.fields(Settings)}


def _cli_help(*args: str) -> str | None:
    proc = subprocess.run([sys.executable, "-m", "connreg", *args, "--help"],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout if proc.returncode == 0 else None


def _gc_api_route() -> str | None:
    """The management API's on-demand GC route, read from the source (no guessing over HTTP)."""
    import connreg
    pkg = Path(connreg.__file__).parent
    for path in [*pkg.glob("control/*.py"), *pkg.glob("gc/*.py"), pkg / "app.py"]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for m in re.finditer(r"""["'](/connreg/v1/[\w/{}-]*gc[\w/{}-]*)["']""", text):
            route = m.group(1)
            if "{" not in route:
                return f"POST {route}"
    return None


def detect_features() -> Features:
    f = Features()
    names = _settings_fields()
    f.max_store_bytes = "max_store_bytes" in names
    maint = _cli_help("maintenance") or ""
    f.gc_cli = bool(re.search(r"\bgc\b", maint)) and _cli_help("maintenance", "gc") is not None
    f.gc_api = _gc_api_route()
    # Short grace and retention, so GC can give back what this run deleted within minutes.
    for name, value in (("gc_grace_seconds", GC_GRACE_SECONDS),
                        ("gc_untagged_retention_seconds", GC_RETENTION_SECONDS)):
        if name in names:
            f.gc_settings[f"CONNREG_{name.upper()}"] = str(value)
    sync_help = _cli_help("sync") or ""
    f.parked_cli = "parked" in sync_help
    return f


# --- images --------------------------------------------------------------------------------------

def layer_bytes(rng: random.Random, size: int) -> bytes:
    """A gzip tarball holding one file of `size` bytes from the seeded RNG."""
    payload = rng.randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(f"soak-{rng.getrandbits(32):08x}.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


def make_image(rng: random.Random) -> tuple[list[bytes], bytes]:
    """(blobs, manifest): 1–3 layers of 4 KiB–1 MiB (log-uniform) and a config."""
    layers = [layer_bytes(rng, int(4 * KiB * 256 ** rng.random()))
              for _ in range(rng.choice((1, 1, 2, 3)))]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [sha256(gzip.decompress(x)) for x in layers]},
                         }).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": descriptor(OCI_CONFIG, config),
                           "layers": [descriptor(OCI_LAYER_GZIP, x) for x in layers]}).encode()
    return [config, *layers], manifest


# --- the journal of acknowledged writes and what it implies ---------------------------------

NOT_APPLIED, ACKED, UNCERTAIN = "not-applied", "acked", "uncertain"


@dataclass
class Outcome:
    kind: str           # ACKED, NOT_APPLIED or UNCERTAIN
    status: int | None  # HTTP status of the deciding request (None: transport error)
    detail: str = ""


class Model:
    """Expected final state. Each tag has one writer, whose writes are sequential, so the
    expectation is the writer's last acknowledged write; a write whose answer never came
    (transport error mid-request) may or may not have happened: both outcomes are accepted
    until a later acknowledged write on the same tag settles it."""

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], set[str | None]] = {}
        self.manifests: dict[str, bytes] = {}
        self.live: dict[tuple[str, str], list[str]] = {}   # (writer, repo) → digests
        self.deleted: set[tuple[str, str]] = set()          # (repo, digest) acked deletes
        self.journal: list[dict] = []

    def record(self, node: str, op: str, repo: str, ref: str, digest: str | None,
               out: Outcome) -> None:
        self.journal.append({"t": round(time.time(), 3), "node": node, "op": op, "repo": repo,
                             "ref": ref, "digest": digest, "outcome": out.kind,
                             "status": out.status, "detail": out.detail[:200]})
        if out.kind == NOT_APPLIED:
            return
        key = (repo, ref)
        before = self.tags.get(key, {None})
        if op in ("push", "retag"):
            self.tags[key] = {digest} if out.kind == ACKED else before | {digest}
            if op == "push":
                self.live.setdefault((node, repo), []).append(digest)
        elif op == "delete-tag":
            self.tags[key] = {None} if out.kind == ACKED else before | {None}
        elif op == "delete-manifest":
            for k, values in self.tags.items():
                if k[0] == repo and ref in values:
                    self.tags[k] = ({v for v in values if v != ref} | {None}
                                    if out.kind == ACKED else values | {None})
            if out.kind == ACKED:
                self.deleted.add((repo, ref))
            live = self.live.get((node, repo), [])
            if ref in live:
                live.remove(ref)


def tiers_for(repo: str) -> list[str]:
    """The nodes that must hold `repo` once converged."""
    if repo == ROOT_ONLY_REPO:
        return ["root"]
    if repo in CHILD_SET:
        return ["root", "edge", "child"]
    return ["root", "edge"]


# --- the cluster ---------------------------------------------------------------------------------

class Cluster:
    def __init__(self, base: Path, features: Features, budget: int | None):
        self.base = base
        self.features = features
        self.h = Hierarchy(base, env=dict(features.gc_settings))
        self.proxies: dict[str, LinkProxy] = {}
        self.budget = budget
        self._clients: dict[str, httpx.Client] = {}
        self.restarts: Counter = Counter()
        self.down: set[str] = set()
        self.lock = threading.Lock()

    def node(self, role: str) -> Node:
        return self.h.nodes[CR_NAME[role]]

    def client(self, name: str) -> httpx.Client:
        c = self._clients.get(name)
        if c is None:
            node = self.node(name)
            c = httpx.Client(base_url=node.url, auth=node.admin, timeout=30)
            self._clients[name] = c
        return c

    def start(self) -> None:
        root = self.h.start_root()
        log(f"root {root.url}")
        self.h.create(CR_NAME["edge"], "ReadWrite", EDGE_SET)
        self.h.create(CR_NAME["child"], "ReadOnly", CHILD_SET, parent=CR_NAME["edge"])
        self.proxies["edge"] = LinkProxy(root.port, "edge→root")
        edge_env = {"CONNREG_PARENT_ENDPOINT": f"127.0.0.1:{self.proxies['edge'].port}"}
        if self.budget is not None:
            edge_env["CONNREG_MAX_STORE_BYTES"] = str(self.budget)
        edge = self.h.start_child(CR_NAME["edge"], env=edge_env)
        self.proxies["child"] = LinkProxy(edge.port, "child→edge")
        child = self.h.start_child(CR_NAME["child"], parent=CR_NAME["edge"], env={
            "CONNREG_PARENT_ENDPOINT": f"127.0.0.1:{self.proxies['child'].port}"})
        log(f"edge {edge.url} (via proxy :{self.proxies['edge'].port}), "
            f"child {child.url} (via proxy :{self.proxies['child'].port})")
        for name in (CR_NAME["edge"], CR_NAME["child"]):
            wait_for(lambda: cli(root, "connected-registry", "show", "--name", name)
                     .get("activationStatus") == "Active", 90, interval=0.5,
                     message=f"{name} active")

    def kill_and_restart(self, name: str, downtime: float, offline_gc: bool, stats: "Stats"
                         ) -> None:
        node = self.node(name)
        with self.lock:
            self.down.add(name)
        try:
            node.kill()
            stats.event(f"kill -9 {name}")
            time.sleep(downtime)
            if offline_gc:
                result = run_offline_gc(name, node)
                stats.gc_offline.append(result)
                log(f"gc {result}")
            for attempt in range(3):
                try:
                    node.start(timeout=120)
                    break
                except RuntimeError as exc:
                    stats.problem(f"{name} did not restart (attempt {attempt + 1}): "
                                  f"{str(exc).splitlines()[0][:300]}")
                    time.sleep(5)
            else:
                stats.fatal.append(f"{name} could not be restarted on its data dir")
            self.restarts[name] += 1
            stats.event(f"{name} back (pid {node.proc.pid})")
        finally:
            with self.lock:
                self.down.discard(name)

    def stop(self) -> None:
        for c in self._clients.values():
            c.close()
        for p in self.proxies.values():
            p.close()
        self.h.stop_all()


def _gc_summary(report: dict) -> str:
    return (f"freed {report.get('blobs', '?')} blobs, {(report.get('bytes') or 0) / MiB:.1f} "
            f"MiB, {report.get('manifests', '?')} manifests, "
            f"{report.get('uploadFiles', 0)} upload files")


def run_offline_gc(role: str, node: Node) -> str:
    proc = subprocess.run([sys.executable, "-m", "connreg", "maintenance", "gc",
                           "--data-dir", str(node.data_dir), "--untagged-retention",
                           str(GC_RETENTION_SECONDS), "--output", "json"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        try:
            return f"offline {role}: {_gc_summary(json.loads(proc.stdout))}"
        except ValueError:
            pass
    text = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return f"offline {role}: **exit {proc.returncode}**: {text[-1][:200] if text else ''}"


def run_online_gc(cluster: Cluster, role: str) -> str:
    method, path = cluster.features.gc_api.split(" ", 1)
    node = cluster.node(role)
    try:
        r = httpx.request(method, f"{node.url}{path}", auth=node.admin, timeout=300,
                          json={"gracePeriodSeconds": GC_GRACE_SECONDS,
                                "untaggedRetentionSeconds": GC_RETENTION_SECONDS})
    except httpx.HTTPError as exc:
        return f"online {role}: {type(exc).__name__}: {exc}"
    if r.status_code == 200:
        try:
            return f"online {role}: {_gc_summary(r.json())}"
        except ValueError:
            pass
    return f"online {role}: **HTTP {r.status_code}** {r.text.strip()[:200]}"


# --- statistics ----------------------------------------------------------------------------------

@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    ops: Counter = field(default_factory=Counter)          # (node, op, result)
    errors: dict[str, str] = field(default_factory=dict)   # first example per (node, op, status)
    stray: Counter = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    gc_online: list[str] = field(default_factory=list)
    gc_offline: list[str] = field(default_factory=list)

    def event(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.0f} s {text}")
        log(text)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        log("PROBLEM: " + text)

    def count(self, node: str, op: str, out: Outcome) -> None:
        result = out.kind if out.kind != NOT_APPLIED else (
            f"HTTP {out.status}" if out.status else "no connection")
        self.ops[node, op, result] += 1
        if out.kind != ACKED:
            self.errors.setdefault(f"{node} {op} {out.status}", out.detail[:240])


# --- the driver ---------------------------------------------------------------------------------

def _error_text(r: httpx.Response) -> str:
    try:
        e = r.json()["errors"][0]
        return f"{e.get('code')}: {e.get('message')}"
    except (ValueError, KeyError, IndexError, TypeError):
        return r.text[:200]


def push(c: httpx.Client, repo: str, ref: str, blobs: list[bytes], manifest: bytes) -> Outcome:
    try:
        for blob in blobs:
            r = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)},
                       content=blob, headers={"Content-Type": "application/octet-stream"})
            if r.status_code != 201:
                return Outcome(NOT_APPLIED, r.status_code, f"blob: {_error_text(r)}")
    except httpx.HTTPError as exc:  # before the manifest PUT nothing visible happened
        return Outcome(NOT_APPLIED, None, f"blob: {type(exc).__name__}: {exc}")
    return put_manifest(c, repo, ref, manifest)


def put_manifest(c: httpx.Client, repo: str, ref: str, manifest: bytes) -> Outcome:
    try:
        r = c.put(f"/v2/{repo}/manifests/{ref}", content=manifest,
                  headers={"Content-Type": OCI_MANIFEST})
    except httpx.ConnectError as exc:
        return Outcome(NOT_APPLIED, None, f"manifest: ConnectError: {exc}")
    except httpx.HTTPError as exc:
        return Outcome(UNCERTAIN, None, f"manifest: {type(exc).__name__}: {exc}")
    if r.status_code == 201:
        return Outcome(ACKED, 201)
    return Outcome(NOT_APPLIED, r.status_code, f"manifest: {_error_text(r)}")


def delete(c: httpx.Client, repo: str, ref: str) -> Outcome:
    try:
        r = c.delete(f"/v2/{repo}/manifests/{ref}")
    except httpx.ConnectError as exc:
        return Outcome(NOT_APPLIED, None, f"ConnectError: {exc}")
    except httpx.HTTPError as exc:
        return Outcome(UNCERTAIN, None, f"{type(exc).__name__}: {exc}")
    if r.status_code in (202, 404):  # 404: already gone, which is what was asked
        return Outcome(ACKED, r.status_code)
    return Outcome(NOT_APPLIED, r.status_code, _error_text(r))


class Driver:
    WRITERS = {"root": "r", "edge": "e"}

    def __init__(self, cluster: Cluster, model: Model, stats: Stats, rng: random.Random,
                 args):
        self.c = cluster
        self.m = model
        self.s = stats
        self.rng = rng
        self.args = args
        self.threads: list[threading.Thread] = []

    def _writer_repo(self, node: str) -> str:
        if node == "root" and self.rng.random() < 0.1:
            return ROOT_ONLY_REPO
        return self.rng.choice(SHARED_REPOS)

    def _tag(self, node: str) -> str:
        return f"{self.WRITERS[node]}{self.rng.randrange(TAGS_PER_WRITER)}"

    def op_push(self, node: str) -> None:
        repo, ref = self._writer_repo(node), self._tag(node)
        blobs, manifest = make_image(self.rng)
        digest = sha256(manifest)
        out = push(self.c.client(node), repo, ref, blobs, manifest)
        if out.kind != NOT_APPLIED:
            self.m.manifests[digest] = manifest
        self.m.record(node, "push", repo, ref, digest, out)
        self.s.count(node, "push", out)

    def op_retag(self, node: str) -> None:
        repo = self._writer_repo(node)
        live = self.m.live.get((node, repo))
        if not live:
            return self.op_push(node)
        digest, ref = self.rng.choice(live), self._tag(node)
        out = put_manifest(self.c.client(node), repo, ref, self.m.manifests[digest])
        self.m.record(node, "retag", repo, ref, digest, out)
        self.s.count(node, "retag", out)

    def op_delete_tag(self, node: str) -> None:
        repo, ref = self._writer_repo(node), self._tag(node)
        before = self.m.tags.get((repo, ref), {None})
        if before == {None}:
            return
        out = delete(self.c.client(node), repo, ref)
        if out.status == 404 and None not in before:
            # The writer's own node lost a tag it acknowledged (nothing else writes it).
            self.s.fatal.append(f"{repo}:{ref} vanished at {node} before its delete (last "
                                f"acknowledged: {_short(next(iter(before)))})")
        self.m.record(node, "delete-tag", repo, ref, None, out)
        self.s.count(node, "delete-tag", out)

    def op_delete_manifest(self, node: str) -> None:
        repo = self._writer_repo(node)
        live = self.m.live.get((node, repo))
        if not live:
            return
        digest = self.rng.choice(live)
        out = delete(self.c.client(node), repo, digest)
        self.m.record(node, "delete-manifest", repo, digest, digest, out)
        self.s.count(node, "delete-manifest", out)

    def op_stray(self) -> None:
        blobs, manifest = make_image(self.rng)
        out = push(self.c.client("edge"), STRAY_REPO, "s0", blobs, manifest)
        if out.kind == ACKED:
            self.s.stray["accepted (201)"] += 1
        elif out.status == 403:
            self.s.stray["refused 403"] += 1
        else:
            self.s.stray[f"other: {out.status or 'no answer'}"] += 1
            self.s.errors.setdefault(f"edge stray {out.status}", out.detail[:240])
        self.s.count("edge", "stray-push", out)

    def step(self) -> None:
        ops = [(22, self.op_push, "root"), (22, self.op_push, "edge"),
               (7, self.op_retag, "root"), (7, self.op_retag, "edge"),
               (5, self.op_delete_tag, "root"), (5, self.op_delete_tag, "edge"),
               (3, self.op_delete_manifest, "root"), (3, self.op_delete_manifest, "edge"),
               (4, None, "stray")]
        _, fn, node = self.rng.choices(ops, weights=[w for w, _, _ in ops])[0]
        if fn is None:
            self.op_stray()
        else:
            fn(node)

    def _background(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def run(self, seconds: float) -> None:
        rng, args = self.rng, self.args
        now = time.monotonic()
        end = now + seconds
        next_cut = now + rng.expovariate(1 / args.cut_every)
        next_kill = now + rng.expovariate(1 / args.kill_every)
        next_gc = now + args.gc_every / 3
        gc_turn = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_cut:
                name = rng.choice(list(self.c.proxies))
                proxy = self.c.proxies[name]
                if not proxy.is_cut:
                    secs = rng.uniform(5, 40)
                    closed = proxy.cut(secs)
                    self.s.event(f"cut {proxy.name} for {secs:.0f} s ({closed} connections)")
                next_cut = now + rng.expovariate(1 / args.cut_every)
            if now >= next_kill:
                name = rng.choice(["root", "edge", "child"])
                if not self.c.down:
                    offline_gc = self.c.features.gc_cli and rng.random() < 0.5
                    self._background(self.c.kill_and_restart, name, rng.uniform(1, 8),
                                     offline_gc, self.s)
                next_kill = now + rng.expovariate(1 / args.kill_every)
            if self.c.features.gc_api and now >= next_gc:
                # Each node in turn: every node is collected once per --gc-every seconds.
                name = ("root", "edge", "child")[gc_turn % 3]
                gc_turn += 1
                if name not in self.c.down:
                    result = run_online_gc(self.c, name)
                    self.s.gc_online.append(result)
                    log(f"gc {result}")
                next_gc = now + args.gc_every / 3
            self.step()
            time.sleep(rng.uniform(0.2, 1.0))
        for t in self.threads:
            t.join(timeout=300)


# --- resource sampling ---------------------------------------------------------------------------

def _tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def _rss_kb(pid: int) -> int:
    total = 0
    for p in _tree_pids(pid):
        try:
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def _fds(pid: int) -> int:
    total = 0
    for p in _tree_pids(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def _threads(pid: int) -> int:
    total = 0
    for p in _tree_pids(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/task"))
        except OSError:
            pass
    return total


def _disk_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


@dataclass
class Sample:
    t: float   # minutes since the start of the chaos
    pid: int
    rss_mib: float
    fds: int
    disk_mib: float
    threads: int


class Sampler:
    def __init__(self, cluster: Cluster, interval: float):
        self.c = cluster
        self.interval = interval
        self.samples: dict[str, list[Sample]] = {n: [] for n in ("root", "edge", "child")}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        t = (time.monotonic() - self.t0) / 60
        for name, out in self.samples.items():
            node = self.c.node(name)
            proc = node.proc
            if proc is None or proc.poll() is not None:
                continue  # down (killed, restarting): no sample
            out.append(Sample(t, proc.pid, _rss_kb(proc.pid) / 1024, _fds(proc.pid),
                              _disk_bytes(node.data_dir) / MiB, _threads(proc.pid)))


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope (value per minute)."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


# --- convergence and loss checks ----------------------------------------------------------------

def tag_map(c: httpx.Client, repos: list[str]) -> dict[tuple[str, str], str]:
    out = {}
    for repo in repos:
        r = c.get(f"/v2/{repo}/tags/list", params={"n": 10000})
        if r.status_code == 404:
            continue
        r.raise_for_status()
        for tag in r.json().get("tags") or []:
            h = c.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
            if h.status_code == 200:
                out[repo, tag] = h.headers["Docker-Content-Digest"]
    return out


def catalog(c: httpx.Client) -> list[str]:
    r = c.get("/v2/_catalog", params={"n": 10000})
    r.raise_for_status()
    return r.json().get("repositories") or []


def _matches(repo: str, patterns: list[str]) -> bool:
    return any(repo == p or (p.endswith("/*") and repo.startswith(p[:-1])) for p in patterns)


@dataclass
class Check:
    converged: bool
    mismatches: list[str]   # tier vs tier
    lost: list[str]         # an acknowledged write missing at a tier that should have it
    resurrected: list[str]  # an acknowledged delete undone
    leaked: list[str]       # content where it must never be


def check(cluster: Cluster, model: Model) -> Check:
    clients = {n: cluster.client(n) for n in ("root", "edge", "child")}
    cats = {n: catalog(c) for n, c in clients.items()}
    maps = {}
    for n, c in clients.items():
        repos = sorted(set(cats[n]) | {r for r, _ in model.tags} | {STRAY_REPO})
        maps[n] = tag_map(c, repos)

    def scoped(n: str, patterns: list[str]) -> dict:
        return {k: v for k, v in maps[n].items() if _matches(k[0], patterns)}

    mismatches = []
    for upper, lower, patterns in (("root", "edge", EDGE_SET), ("edge", "child", CHILD_SET)):
        a, b = scoped(upper, patterns), scoped(lower, patterns)
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                mismatches.append(f"{key[0]}:{key[1]} {upper}={_short(a.get(key))} "
                                  f"{lower}={_short(b.get(key))}")
    lost, resurrected, leaked = [], [], []
    for (repo, ref), accepted in sorted(model.tags.items()):
        for n in tiers_for(repo):
            actual = maps[n].get((repo, ref))
            if actual in accepted:
                continue
            want = "/".join(_short(v) for v in accepted)
            line = f"{repo}:{ref} at {n}: has {_short(actual)}, expected {want}"
            (resurrected if accepted == {None} else lost).append(line)
    for repo, digest in sorted(model.deleted):
        for n in tiers_for(repo):
            h = clients[n].head(f"/v2/{repo}/manifests/{digest}",
                                headers={"Accept": MANIFEST_ACCEPT})
            if h.status_code != 404:
                resurrected.append(f"{repo}@{_short(digest)} (deleted) at {n}: HTTP "
                                   f"{h.status_code}")
    for n in ("edge", "child"):
        for key in maps[n]:
            if not _matches(key[0], EDGE_SET if n == "edge" else CHILD_SET):
                if key[0] != STRAY_REPO or n != "edge":
                    leaked.append(f"{key[0]}:{key[1]} at {n} (outside its set)")
    for key in maps["root"]:
        if key[0] == STRAY_REPO:
            leaked.append(f"{key[0]}:{key[1]} reached the root (a stray push)")
    return Check(not mismatches, mismatches, lost, resurrected, leaked)


def blob_check(cluster: Cluster) -> list[str]:
    """Every tag at every tier: manifest readable, every blob it references present."""
    broken = []
    for n in ("root", "edge", "child"):
        c = cluster.client(n)
        for repo in catalog(c):
            for (_, tag), digest in tag_map(c, [repo]).items():
                r = c.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT})
                if r.status_code != 200:
                    broken.append(f"{repo}:{tag} at {n}: manifest GET {r.status_code}")
                    continue
                doc = r.json()
                for d in [doc.get("config", {}), *doc.get("layers", [])]:
                    if not d.get("digest"):
                        continue
                    h = c.head(f"/v2/{repo}/blobs/{d['digest']}")
                    if h.status_code != 200:
                        broken.append(f"{repo}:{tag} at {n}: blob {_short(d['digest'])} "
                                      f"HTTP {h.status_code} (dangling manifest)")
    return broken


def _short(digest: str | None) -> str:
    if digest is None:
        return "∅"
    return digest.removeprefix("sha256:")[:12]


# --- report --------------------------------------------------------------------------------------

def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"],
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
    return f"{os.cpu_count()} vCPUs (shared with other work){mem}, Linux {platform.release()}"


def _fmt(v: float | None, unit: str = "", digits: int = 1) -> str:
    return "–" if v is None else f"{v:+.{digits}f}{unit}"


WARM_UP_MINUTES = 1.0  # a fresh process fills its caches first; not a leak


def segments(ss: list[Sample]) -> list[list[Sample]]:
    """The samples of each process (a kill -9 and restart starts a new one), in order."""
    out: list[list[Sample]] = []
    for s in ss:
        if not out or out[-1][-1].pid != s.pid:
            out.append([])
        out[-1].append(s)
    return out


def resource_rows(samples: dict[str, list[Sample]]) -> list[str]:
    rows = ["| node | metric | first sample | last sample | slope, longest-lived process after "
            f"its first {WARM_UP_MINUTES:g} min (/min) | over | processes |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, ss in samples.items():
        if not ss:
            rows.append(f"| {name} | – | no samples | | | | |")
            continue
        segs = segments(ss)
        longest = max(segs, key=lambda seg: seg[-1].t - seg[0].t)
        steady = [s for s in longest if s.t >= longest[0].t + WARM_UP_MINUTES]
        span = steady[-1].t - steady[0].t if steady else 0.0
        for metric, label, unit in (("rss_mib", "RSS", " MiB"), ("fds", "open fds", ""),
                                    ("threads", "threads", ""),
                                    ("disk_mib", "disk (du)", " MiB")):
            fit = slope([(s.t, getattr(s, metric)) for s in steady])
            first, last = getattr(ss[0], metric), getattr(ss[-1], metric)
            fmt = (lambda v: f"{v:.0f}") if not unit else (lambda v: f"{v:.1f}{unit}")
            rows.append(f"| {name} | {label} | {fmt(first)} | {fmt(last)} | "
                        f"{_fmt(fit, unit, 2)} | {span:.1f} min, {len(steady)} samples | "
                        f"{len(segs)} |")
    return rows


def steady_slopes(samples: dict[str, list[Sample]], metric: str) -> dict[str, float | None]:
    out = {}
    for name, ss in samples.items():
        if not ss:
            out[name] = None
            continue
        longest = max(segments(ss), key=lambda seg: seg[-1].t - seg[0].t)
        out[name] = slope([(s.t, getattr(s, metric)) for s in longest
                           if s.t >= longest[0].t + WARM_UP_MINUTES])
    return out


def reading(args, cluster: Cluster, model: Model, stats: Stats, sampler: Sampler,
            final: Check | None, converge_s: float | None, broken: list[str]) -> str:
    """A few sentences generated from the figures (the table has them all)."""
    acked = Counter(j["op"] for j in model.journal if j["outcome"] == ACKED)
    cuts = sum(p.cuts for p in cluster.proxies.values())
    kills = sum(cluster.restarts.values())
    text = [f"{args.minutes:g} min of chaos: {acked['push']} acknowledged pushes, "
            f"{acked['retag']} tag moves, {acked['delete-tag'] + acked['delete-manifest']} "
            f"deletes, {cuts} link cuts, {kills} kill -9."]
    if final is not None and final.converged:
        text.append(f"The tiers agreed {converge_s:.0f} s after the driver stopped"
                    if converge_s is not None else "The tiers agreed")
        text[-1] += (", and nothing acknowledged was lost or undone." if not final.lost
                     and not final.resurrected else
                     f", but {len(final.lost)} acknowledged writes are missing and "
                     f"{len(final.resurrected)} deletes undone.")
    elif final is not None:
        text.append(f"The tiers did **not** agree within {args.converge_timeout:g} s "
                    f"({len(final.mismatches)} tags differ).")
    if broken:
        text.append(f"{len(broken)} tags point at a manifest or blob that is missing.")
    tried = sum(stats.stray.values())
    accepted = stats.stray.get("accepted (201)", 0)
    if tried:
        text.append(f"All {tried} stray pushes at the edge were refused with 403." if
                    stats.stray.get("refused 403", 0) == tried else
                    f"Of {tried} stray pushes at the edge, {accepted} were accepted "
                    f"(this build does not refuse them) and "
                    f"{stats.stray.get('refused 403', 0)} refused with 403.")
    full = sum(v for (n, _, r), v in stats.ops.items() if n == "edge" and r == "HTTP 507")
    other5 = sum(v for (_, _, r), v in stats.ops.items()
                 if r.startswith("HTTP 5") and r != "HTTP 507")
    if cluster.budget:
        text.append(f"The edge's {cluster.budget / MiB:.0f} MiB budget answered {full} client "
                    "pushes with 507 while GC gave space back.")
    text.append(f"{other5} client requests got another 5xx." if other5 else
                "No client request got any other 5xx.")
    fmt = lambda d, unit: ", ".join(f"{n} {_fmt(v, unit, 2)}" for n, v in d.items())
    text.append("Per minute over each node's longest-lived process after warm-up: RSS "
                f"{fmt(steady_slopes(sampler.samples, 'rss_mib'), ' MiB')}; open fds "
                f"{fmt(steady_slopes(sampler.samples, 'fds'), '')}; disk "
                f"{fmt(steady_slopes(sampler.samples, 'disk_mib'), ' MiB')}.")
    return " ".join(text)


def render(args, command: str, features: Features, cluster: Cluster, model: Model,
           stats: Stats, sampler: Sampler, final: Check | None, converge_s: float | None,
           broken: list[str], budget: int | None, parked: list[str], statuses: list[str],
           elapsed: float, ok: bool) -> str:
    out = ["## Soak\n"]
    out.append(f"Run {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC, took "
               f"{elapsed / 60:.1f} min ({args.minutes:g} min of chaos + convergence); "
               f"connreg at git {git_rev()}; {machine()}.\n")
    out.append("Command (from the repo root):\n")
    out.append(f"```\n{command}\n```\n")
    verdict = "**converged, nothing lost**" if ok else "**FAILED** (see below)"
    summary = reading(args, cluster, model, stats, sampler, final, converge_s, broken)
    out.append(f"Result: {verdict}. {summary}\n")
    out.append("### Outcome\n")
    out.append("| check | result |")
    out.append("| --- | --- |")
    if final is None:
        out.append("| convergence | not checked (the run stopped early) |")
    else:
        conv = (f"yes, {converge_s:.0f} s after the chaos stopped" if final.converged
                else f"**no** after {args.converge_timeout:.0f} s: {len(final.mismatches)} "
                     "tag(s) differ")
        out.append(f"| every tier converged (root = edge on `soak/*`, edge = child on "
                   f"`{' '.join(CHILD_SET)}`) | {conv} |")
        out.append(f"| acknowledged writes lost | {len(final.lost) or 'none'} |")
        out.append(f"| acknowledged deletes undone | {len(final.resurrected) or 'none'} |")
        out.append(f"| content outside a set where it must not be | "
                   f"{len(final.leaked) or 'none'} |")
        out.append(f"| tags whose manifest or blobs are missing (dangling) | "
                   f"{len(broken) or 'none'} |")
    out.append(f"| other failures (a node that would not restart, a tag gone at its own "
               f"writer, the run stopping) | {len(stats.fatal) or 'none'} |")
    acked = Counter((j["node"], j["op"]) for j in model.journal if j["outcome"] == ACKED)
    out.append(f"| acknowledged pushes (root / edge) | {acked['root', 'push']} / "
               f"{acked['edge', 'push']} (+ {acked['root', 'retag']} / {acked['edge', 'retag']}"
               f" tag moves of existing manifests) |")
    out.append(f"| acknowledged deletes (tag / manifest, root + edge) | "
               f"{acked['root', 'delete-tag'] + acked['edge', 'delete-tag']} / "
               f"{acked['root', 'delete-manifest'] + acked['edge', 'delete-manifest']} |")
    stray = ", ".join(f"{v} {k}" for k, v in sorted(stats.stray.items())) or "none tried"
    out.append(f"| stray pushes at the edge (`{STRAY_REPO}`) | {stray} |")
    cuts = ", ".join(f"{p.name}: {p.cuts} cuts, {p.refused} connections refused"
                     for p in cluster.proxies.values())
    out.append(f"| link cuts | {cuts} |")
    out.append(f"| kill -9 + restart | " + (", ".join(
        f"{n} ×{k}" for n, k in sorted(cluster.restarts.items())) or "none") + " |")
    if budget is not None:
        full = sum(v for (n, _, r), v in stats.ops.items() if n == "edge" and "507" in r)
        out.append(f"| edge disk budget (`CONNREG_MAX_STORE_BYTES`) | {budget / MiB:.0f} MiB; "
                   f"{full} client writes at the edge answered 507 |")
    else:
        out.append("| edge disk budget | not set: " + (
            "this build has no `max_store_bytes` setting" if not features.max_store_bytes
            else "`--edge-budget-mib 0`") + " |")
    out.append("| GC on demand (running node) | " + (
        f"{len(stats.gc_online)} runs via `{features.gc_api}`" if features.gc_api
        else "not available in this build") + " |")
    out.append("| GC offline (`connreg maintenance gc`, on a killed node before its restart) | "
               + (f"{len(stats.gc_offline)} runs" if features.gc_cli
                  else "not available in this build") + " |")
    out.append("")
    out.append("### Resources\n")
    out.append(f"Sampled every {args.sample_seconds:g} s from the start of the chaos to the end "
               "of the convergence wait: RSS = `VmRSS` of the node's process tree, fds = entries "
               "in `/proc/PID/fd`, threads = entries in `/proc/PID/task`, disk = allocated "
               "bytes under its data dir (blobs, SQLite, "
               "the reserve file). Slopes are least-squares fits per minute. A kill -9 starts a "
               "new process with empty caches, so the fit uses the node's longest-lived "
               f"process, without its first {WARM_UP_MINUTES:g} min; disk is cumulative "
               "across restarts (first/last sample = start/end of the run). All samples: "
               "`samples.json` in the work dir.\n")
    out.extend(resource_rows(sampler.samples))
    out.append("")
    out.append("### Requests\n")
    out.append("| node | operation | result | count |")
    out.append("| --- | --- | --- | --- |")
    for (n, op, result), v in sorted(stats.ops.items()):
        out.append(f"| {n} | {op} | {result} | {v} |")
    out.append("")
    details = []
    if final is not None:
        for label, items in (("tiers differ", final.mismatches), ("lost", final.lost),
                             ("deletes undone", final.resurrected),
                             ("outside a set", final.leaked), ("dangling", broken)):
            for item in items[:20]:
                details.append(f"{label}: `{item}`")
            if len(items) > 20:
                details.append(f"{label}: … {len(items) - 20} more")
    for text in stats.fatal + stats.problems[:20]:
        details.append(text)
    for k, v in sorted(stats.errors.items())[:25]:
        details.append(f"first refusal/failure `{k}`: {v}")
    if stats.events:
        details.append("chaos timeline (seconds since the start): " + "; ".join(
            " ".join(e.split()) for e in stats.events[:60]))
    details += [f"parked at the end: {p}" for p in parked]
    details += [f"status at the root: {s}" for s in statuses]
    details += [f"GC {g}" for g in stats.gc_online[-3:] + stats.gc_offline[:6]]
    gc_failed = [g for g in stats.gc_online + stats.gc_offline if "**" in g]
    details += [f"GC failed: {g}" for g in gc_failed[:6]]
    for note in features.notes:
        details.append(note)
    if details:
        out.append("### Details\n")
        out.extend(f"- {d}" for d in details)
        out.append("")
    out.append("### Method\n")
    out.append(
        f"- **Nodes**: root → `edge` (ReadWrite, `{' '.join(EDGE_SET)}`) → `child` (ReadOnly, "
        f"`{' '.join(CHILD_SET)}`), each a real `connreg serve` subprocess with its own data "
        "dir under /tmp, configured with `connreg connected-registry create`/`get-settings`. "
        "The edge and the child reach their parents through a TCP proxy in the benchmark "
        "process (`CONNREG_PARENT_ENDPOINT`), continuous sync.")
    out.append(
        f"- **Driver** (seed `{args.seed}`), one action every 0.2–1.0 s: pushes of new images "
        "(1–3 random gzip layers of 4 KiB–1 MiB, log-uniform, plus config; monolithic blob "
        "POSTs then the manifest PUT, admin credentials, plain OCI API) at the root and at the "
        f"edge into `{' '.join(SHARED_REPOS)}` (the root also into `{ROOT_ONLY_REPO}`, outside "
        "the edge's set); tag moves (an existing manifest PUT under another tag); tag deletes; "
        f"manifest deletes by digest; stray pushes at the edge into `{STRAY_REPO}`. Each tag "
        f"has one writer (root: `r0`–`r{TAGS_PER_WRITER - 1}`, edge: "
        f"`e0`–`e{TAGS_PER_WRITER - 1}`), so the expected final state of a tag is its writer's "
        "last acknowledged write (tag conflicts are covered by tests/test_sync.py, not here). "
        "A write whose answer never came (node killed mid-request) may or may not have "
        "happened; both outcomes are accepted until the writer's next acknowledged write on "
        "that tag.")
    out.append(
        f"- **Chaos**: link cuts on a random proxy every ~{args.cut_every:g} s (exponential), "
        "5–40 s long (all open connections shut down, new ones reset); kill -9 of a random "
        f"node every ~{args.kill_every:g} s, down 1–8 s, restarted on the same data dir and "
        "port" + ("; half of the time `connreg maintenance gc --data-dir DIR "
                  f"--untagged-retention {GC_RETENTION_SECONDS}` runs on the stopped node first"
                  if features.gc_cli else "") +
        (f"; GC on demand (`{features.gc_api}` with `gracePeriodSeconds` "
         f"{GC_GRACE_SECONDS}, `untaggedRetentionSeconds` {GC_RETENTION_SECONDS}; the same "
         "values as the nodes' settings) on each node in turn, every node once per "
         f"{args.gc_every:g} s" if features.gc_api else "") + ".")
    out.append(
        f"- **End**: the driver stops, links are restored, " +
        (f"GC runs on every node (again every {args.gc_every:g} s while waiting, as a "
         "schedule would), " if features.gc_api else "") +
        f"then every 5 s (at most {args.converge_timeout:g} s) the tiers are compared: tags → "
        "digests of `soak/*` at root and edge, of the child's set at edge and child, and each "
        "tag of the journal at every tier that must hold it; every acknowledged manifest "
        "delete must answer 404 at those tiers; nothing outside a node's set may be there, and "
        "no stray push may reach the root. After convergence every tag's manifest and blobs "
        "are read at every tier (no dangling manifests).")
    return "\n".join(out) + "\n"


def write_results(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# connreg benchmark results\n"
    start = text.find("\n## Soak\n")
    if start >= 0:
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    path.write_text(text.rstrip("\n") + "\n\n" + section)


# --- main ---------------------------------------------------------------------------------------

def parked_entries(cluster: Cluster, features: Features) -> list[str]:
    if not features.parked_cli:
        return []
    out = []
    for name in ("edge", "child"):
        node = cluster.node(name)
        proc = subprocess.run([sys.executable, "-m", "connreg", "sync", "parked", "list",
                               "--data-dir", str(node.data_dir)],
                              capture_output=True, text=True, timeout=60)
        text = (proc.stdout.strip() or proc.stderr.strip())
        out.append(f"{name}: {text[:400]}" if text else f"{name}: none")
    return out


def root_statuses(cluster: Cluster, timeout: float = 60) -> list[str]:
    """What the root shows for the edge and the child, once both report Online again (a
    node's status loop may still sit in its backoff from the last cut) or after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        docs = {}
        for name in ("edge", "child"):
            try:
                docs[name] = cli(cluster.h.root, "connected-registry", "show", "--name",
                                 CR_NAME[name])
            except RuntimeError as exc:
                docs[name] = {"connectionState": f"error: {exc}"}
        online = all(d.get("connectionState") == "Online" for d in docs.values())
        if online or time.monotonic() >= deadline:
            break
        time.sleep(5)
    out = []
    for name, doc in docs.items():
        details = [f"{d.get('code')} {d.get('description', '')[:160]}"
                   for d in doc.get("statusDetails") or []]
        out.append(f"{name}: {doc.get('connectionState')}"
                   + (f" ({'; '.join(details)})" if details else ""))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10, help="minutes of chaos (default 10)")
    ap.add_argument("--seed", default="connreg-soak", help="seed of the driver's RNG")
    ap.add_argument("--converge-timeout", type=float, default=240,
                    help="seconds to wait for convergence after the chaos (default 240)")
    ap.add_argument("--cut-every", type=float, default=45, help="mean seconds between link "
                                                                  "cuts (default 45)")
    ap.add_argument("--kill-every", type=float, default=120, help="mean seconds between "
                                                                    "kill -9 (default 120)")
    ap.add_argument("--gc-every", type=float, default=60, help="seconds between GC runs on "
                                                                 "demand (default 60)")
    ap.add_argument("--edge-budget-mib", type=int, default=40,
                    help="max_store_bytes of the edge, if the build has it (0 = none)")
    ap.add_argument("--sample-seconds", type=float, default=10)
    ap.add_argument("--results", default=str(BENCH / "RESULTS.md"),
                    help="file whose 'Soak' section is (re)written; '' = stdout only")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work dir (data dirs, logs, journal) even on success")
    args = ap.parse_args()
    command = shlex.join([".venv/bin/python", "bench/soak.py", *sys.argv[1:]])

    started = time.monotonic()
    features = detect_features()
    log("features: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(features).items()
                                  if k != "notes"))
    budget = args.edge_budget_mib * MiB if features.max_store_bytes and args.edge_budget_mib \
        else None
    base = Path(tempfile.mkdtemp(prefix="connreg-soak-", dir="/tmp"))
    log(f"work dir {base}")
    cluster = Cluster(base, features, budget)
    model = Model()
    stats = Stats()
    sampler = Sampler(cluster, args.sample_seconds)
    final: Check | None = None
    converge_s = None
    broken: list[str] = []
    parked: list[str] = []
    statuses: list[str] = []
    ok = False
    setup_failed = False
    try:
        try:
            cluster.start()
        except Exception:
            traceback.print_exc()
            setup_failed = True
            raise
        sampler.start()
        stats.started = time.monotonic()
        driver = Driver(cluster, model, stats, random.Random(args.seed), args)
        log(f"chaos for {args.minutes:g} min")
        driver.run(args.minutes * 60)
        log("chaos over: restoring links")
        for p in cluster.proxies.values():
            p.restore()
        t_stop = time.monotonic()
        deadline = t_stop + args.converge_timeout
        next_gc = t_stop
        while True:
            if features.gc_api and time.monotonic() >= next_gc:
                # As a schedule would: what the budget held back can only come in once
                # garbage older than the grace period is gone.
                for name in ("root", "edge", "child"):
                    result = run_online_gc(cluster, name)
                    stats.gc_online.append(result)
                    log(f"gc {result}")
                next_gc = time.monotonic() + args.gc_every
            try:
                final = check(cluster, model)
            except httpx.HTTPError as exc:
                log(f"check: {type(exc).__name__}: {exc}")
                final = None
            if final and final.converged and not final.lost and not final.resurrected:
                converge_s = time.monotonic() - t_stop
                break
            if time.monotonic() >= deadline:
                break
            if final:
                log(f"waiting: {len(final.mismatches)} differ, {len(final.lost)} missing, "
                    f"{len(final.resurrected)} undone")
            time.sleep(5)
        if final is None:
            final = check(cluster, model)
        log(f"converged={final.converged} lost={len(final.lost)} "
            f"undone={len(final.resurrected)} leaked={len(final.leaked)}")
        broken = blob_check(cluster)
        sampler.stop()
        parked = parked_entries(cluster, features)
        statuses = root_statuses(cluster)
        ok = (final.converged and not final.lost and not final.resurrected
              and not final.leaked and not broken and not stats.fatal)
    except Exception:
        if not setup_failed:
            traceback.print_exc()
            stats.fatal.append("the run stopped: " + traceback.format_exc().splitlines()[-1])
    finally:
        if sampler._thread.is_alive():
            sampler.stop()
        (base / "samples.json").write_text(json.dumps(
            {n: [dataclasses.asdict(x) for x in ss] for n, ss in sampler.samples.items()}))
        journal = json.dumps(model.journal, indent=1)
        (base / "journal.json").write_text(journal)
        JOURNAL_COPY.parent.mkdir(parents=True, exist_ok=True)
        JOURNAL_COPY.write_text(journal)
        cluster.stop()
    elapsed = time.monotonic() - started
    if setup_failed:
        log(f"setup failed; work dir kept: {base}")
        return 2
    section = render(args, command, features, cluster, model, stats, sampler, final,
                     converge_s, broken, budget, parked, statuses, elapsed, ok)
    print("\n" + section)
    if args.results:
        write_results(Path(args.results), section)
        log(f"wrote the 'Soak' section of {args.results}")
    if ok and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        log(f"work dir kept (node logs, data dirs, journal.json): {base}")
    log(f"done in {elapsed / 60:.1f} min: " + ("converged, nothing lost" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
