#!/usr/bin/env python3
"""connreg vs. CNCF distribution (Debian's docker-registry 2.8) benchmark.

    cd /work/main && .venv/bin/python bench/run.py            # both servers
    .venv/bin/python bench/run.py --servers distribution      # peer only

Everything runs on 127.0.0.1. See bench/README.md for the method; results go to
stdout (markdown) and bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
LAYOUT = CACHE / "oci-debian"
TAG = "bookworm"
REPO_NAME = "bench/debian"
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
APT_TOOLS = {  # executable -> Debian package
    "skopeo": "skopeo",
    "docker-registry": "docker-registry",
    "wrk": "wrk",
    "curl": "curl",
    "umoci": "umoci",
    "debootstrap": "debootstrap",
}
TARGETS = {
    "push": ("<=", 1.0),
    "pull": ("<=", 1.0),
    "blob": (">=", 1.0),
    "manifest": (">=", 1.0),
    "rss": ("<=", 150.0),  # MB absolute, connreg only
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def ensure_tools() -> None:
    missing = sorted({pkg for exe, pkg in APT_TOOLS.items() if shutil.which(exe) is None})
    if not missing:
        return
    log(f"installing missing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)


def ensure_image() -> None:
    subprocess.run(["bash", str(BENCH / "build_image.sh")], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_info() -> dict:
    idx = json.loads((LAYOUT / "index.json").read_text())
    for m in idx["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG:
            mdig = m["digest"]
            break
    else:
        raise SystemExit(f"tag {TAG} not in {LAYOUT}")
    manifest = json.loads((LAYOUT / "blobs" / "sha256" / mdig.split(":")[1]).read_text())
    layers = manifest["layers"]
    big = max(layers, key=lambda d: d["size"])
    return {
        "manifest_digest": mdig,
        "layers": [(d["digest"], d["size"]) for d in layers],
        "big_digest": big["digest"],
        "big_size": big["size"],
        "total": sum(d["size"] for d in layers) + manifest["config"]["size"],
    }


# --------------------------------------------------------------------------- process tree / RSS


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...  -- comm may contain spaces/parens
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(p.name))
    return kids


def process_tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def read_status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssWatcher:
    """Polls the server's process tree; remembers every pid's last VmHWM (peak RSS)."""

    def __init__(self, root: int, interval: float = 0.25):
        self.root = root
        self.interval = interval
        self.hwm: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def sample(self) -> None:
        for pid in process_tree(self.root):
            v = read_status_kb(pid, "VmHWM")
            if v is not None:
                self.hwm[pid] = max(v, self.hwm.get(pid, 0))
                if pid not in self.names:
                    try:
                        self.names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
                    except OSError:
                        self.names[pid] = "?"

    def current_rss_mb(self) -> float:
        return sum(read_status_kb(p, "VmRSS") or 0 for p in process_tree(self.root)) / 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> tuple[float, int, list[str]]:
        self.sample()
        self._stop.set()
        self._t.join()
        return sum(self.hwm.values()) / 1024, len(self.hwm), [f"{p}: {self.hwm[p] / 1024:.1f} MB {self.names.get(p, '')}" for p in sorted(self.hwm)]


# --------------------------------------------------------------------------- servers


class ServerError(RuntimeError):
    pass


@dataclass
class Server:
    name: str
    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    watcher: RssWatcher | None = None
    logfile: Path | None = None
    idle_rss_mb: float = 0.0
    extra: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self, data: Path) -> list[str]:
        raise NotImplementedError

    def ready_url(self) -> str:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        data = Path(tempfile.mkdtemp(prefix=f"{self.name}-data-", dir=self.workdir))
        self.data = data
        cmd = self.command(data)
        self.logfile = data.with_suffix(".log")
        self.cmdline = cmd
        with open(self.logfile, "wb") as lf:
            self.proc = subprocess.Popen(
                cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=str(REPO),
            )
        self.watcher = RssWatcher(self.proc.pid)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode} during startup: {shlex.join(cmd)}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.ready_url(), timeout=2) as r:
                    if r.status == 200:
                        time.sleep(0.3)
                        self.watcher.sample()
                        self.idle_rss_mb = self.watcher.current_rss_mb()
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except Exception as e:  # noqa: BLE001
                last = repr(e)
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"{self.name} not ready after {timeout}s at {self.ready_url()} (last: {last}): {shlex.join(cmd)}\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> tuple[float, int, list[str]]:
        res = self.watcher.stop() if self.watcher else (0.0, 0, [])
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.data, ignore_errors=True)
        return res


class Connreg(Server):
    def __init__(self, workdir: Path, python: str, extra: list[str]):
        super().__init__("connreg", workdir, extra=extra)
        self.python = python

    def command(self, data: Path) -> list[str]:
        # Open mode, like the distribution peer (which runs without auth): same work per request.
        return [self.python, "-m", "connreg", "serve", "--data-dir", str(data), "--listen", self.host,
                "--no-auth", *self.extra]

    def ready_url(self) -> str:
        return f"http://{self.host}/healthz"


class Distribution(Server):
    def __init__(self, workdir: Path):
        super().__init__("distribution", workdir)

    def command(self, data: Path) -> list[str]:
        cfg = data.with_suffix(".yml")
        root = data / "storage"
        root.mkdir()
        # log level warn; access log off (it is not a log level thing in 2.8 and
        # would print one line per request to stdout).
        cfg.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {root}\n"
            "  delete:\n    enabled: true\n"
            "  cache:\n    blobdescriptor: inmemory\n"
            f"http:\n  addr: {self.host}\n"
        )
        return ["docker-registry", "serve", str(cfg)]

    def ready_url(self) -> str:
        return f"http://{self.host}/v2/"


# --------------------------------------------------------------------------- measurements


_UNSHARE_OK: bool | None = None


def skopeo_cmd(args: list[str]) -> list[str]:
    """skopeo, with its blob-info cache on a private tmpfs when possible, so no run
    learns blob locations from an earlier one (which would turn uploads into
    cross-repo mounts)."""
    global _UNSHARE_OK
    cachedir = "/var/lib/containers/cache"
    inner = shlex.join(["skopeo", *args])
    if _UNSHARE_OK is None:
        try:
            os.makedirs(cachedir, exist_ok=True)
            _UNSHARE_OK = subprocess.run(
                ["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {cachedir} && true"],
                capture_output=True,
            ).returncode == 0
        except (OSError, FileNotFoundError):
            _UNSHARE_OK = False
        if not _UNSHARE_OK:
            log("unshare/tmpfs not available: skopeo uses its shared blob-info cache")
    if _UNSHARE_OK:
        return ["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {cachedir} && exec {inner}"]
    return ["skopeo", *args]


def timed(cmd: list[str], what: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt_ = time.perf_counter() - t0
    if p.returncode != 0:
        raise ServerError(f"{what} failed (rc={p.returncode}): {shlex.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return dt_


def push(srv: Server, tag: str) -> float:
    return timed(
        skopeo_cmd(["copy", "--quiet", "--dest-tls-verify=false", f"oci:{LAYOUT}:{TAG}", f"docker://{srv.host}/{REPO_NAME}:{tag}"]),
        f"push to {srv.name}",
    )


def pull(srv: Server, tag: str, workdir: Path) -> float:
    dest = Path(tempfile.mkdtemp(prefix="pull-", dir=workdir))
    try:
        return timed(
            skopeo_cmd(["copy", "--quiet", "--src-tls-verify=false", f"docker://{srv.host}/{REPO_NAME}:{tag}", f"oci:{dest}:{TAG}"]),
            f"pull from {srv.name}",
        )
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def verify_blob(srv: Server, info: dict) -> None:
    url = f"http://{srv.host}/v2/{REPO_NAME}/blobs/{info['big_digest']}"
    h = hashlib.sha256()
    n = 0
    with urllib.request.urlopen(url, timeout=60) as r:
        while chunk := r.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    if "sha256:" + h.hexdigest() != info["big_digest"] or n != info["big_size"]:
        raise ServerError(f"{srv.name}: blob GET returned wrong content ({n} bytes, sha256:{h.hexdigest()})")


def blob_get(srv: Server, info: dict) -> float:
    url = f"http://{srv.host}/v2/{REPO_NAME}/blobs/{info['big_digest']}"
    p = subprocess.run(
        ["curl", "-sS", "-L", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", url],
        capture_output=True, text=True,
    )
    if p.returncode != 0:
        raise ServerError(f"blob GET from {srv.name} failed: {p.stderr}")
    code, size, t = p.stdout.split()
    if code != "200" or int(size) != info["big_size"]:
        raise ServerError(f"blob GET from {srv.name}: HTTP {code}, {size} bytes (want {info['big_size']})")
    return int(size) / float(t) / 1e6  # MB/s (10^6)


def verify_manifest(srv: Server, info: dict) -> None:
    req = urllib.request.Request(f"http://{srv.host}/v2/{REPO_NAME}/manifests/{TAG}", headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    if "sha256:" + hashlib.sha256(body).hexdigest() != info["manifest_digest"]:
        raise ServerError(f"{srv.name}: manifest GET returned a different manifest")


def wrk_manifest(srv: Server, duration: int, threads: int, conns: int) -> dict:
    lua = CACHE / "manifest_accept.lua"
    lua.write_text(f'wrk.method = "GET"\nwrk.headers["Accept"] = "{ACCEPT}"\n')
    url = f"http://{srv.host}/v2/{REPO_NAME}/manifests/{TAG}"
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "-s", str(lua), url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if p.returncode != 0:
        raise ServerError(f"wrk against {srv.name} failed: {p.stderr}{p.stdout}")
    out = p.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:(.*)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    return {
        "rps": rps,
        "total": total,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errs.group(1).strip() if errs else "",
        "p50": p50.group(1) if p50 else "?",
        "p99": p99.group(1) if p99 else "?",
        "raw": out,
    }


# --------------------------------------------------------------------------- driver


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_series(xs: list[float], unit: str, digits: int) -> str:
    if not xs:
        return "—"
    return f"{med(xs):.{digits}f} {unit} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def tool_versions() -> dict[str, str]:
    def v(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001
            return f"? ({e})"

    return {
        "skopeo": v(["skopeo", "--version"]),
        "docker-registry": v(["docker-registry", "--version"]),
        "wrk": v(["wrk", "-v"]),
        "curl": v(["curl", "--version"]),
    }


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="connreg,distribution", help="comma list of connreg,distribution")
    ap.add_argument("--runs", type=int, default=7, help="timed repetitions for push, pull and blob GET (default 7, keep >=5)")
    ap.add_argument("--wrk-duration", type=int, default=10)
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--wrk-conns", type=int, default=32)
    ap.add_argument("--connreg-python", default=str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable)
    ap.add_argument("--connreg-arg", action="append", default=[], help="extra argument for `connreg serve` (repeatable)")
    ap.add_argument("--results", default=str(BENCH / "RESULTS.md"), help="markdown output ('' = don't write)")
    ap.add_argument("--startup-timeout", type=float, default=60.0)
    args = ap.parse_args()

    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    ensure_tools()
    ensure_image()
    info = image_info()
    log(f"image {LAYOUT}:{TAG}: {len(info['layers'])} layer(s), biggest {info['big_size'] / 1e6:.1f} MB, total {info['total'] / 1e6:.1f} MB")

    workroot = Path(tempfile.mkdtemp(prefix="connreg-bench-"))
    servers: dict[str, Server] = {}
    for n in names:
        if n == "connreg":
            servers[n] = Connreg(workroot, args.connreg_python, args.connreg_arg)
        elif n == "distribution":
            servers[n] = Distribution(workroot)
        else:
            raise SystemExit(f"unknown server {n}")

    res: dict[str, dict] = {n: {"push": [], "pull": [], "blob": [], "push_rss": []} for n in servers}
    failed: dict[str, str] = {}

    def fail(n: str, e: Exception) -> None:
        failed[n] = str(e)
        log(f"{n} FAILED: {e}")

    started = time.time()
    try:
        # (a) push: fresh server + empty data dir per run, interleaved between servers
        for i in range(args.runs):
            for n, srv in servers.items():
                if n in failed:
                    continue
                try:
                    srv.start(args.startup_timeout)
                    try:
                        t = push(srv, TAG)
                    finally:
                        hwm, _, _ = srv.stop()
                    res[n]["push"].append(t)
                    res[n]["push_rss"].append(hwm)
                    log(f"push {i + 1}/{args.runs} {n}: {t:.2f}s")
                except Exception as e:  # noqa: BLE001
                    fail(n, e)

        # (b)-(e): one long-lived server each (both up at once), image pushed once untimed
        live = []
        for n, srv in servers.items():
            if n in failed:
                continue
            try:
                srv.start(args.startup_timeout)
                res[n]["idle_rss"] = srv.idle_rss_mb
                push(srv, TAG)
                verify_manifest(srv, info)
                verify_blob(srv, info)
                live.append(n)
            except Exception as e:  # noqa: BLE001
                fail(n, e)
                srv.stop()
        for i in range(args.runs):
            for n in list(live):
                try:
                    t = pull(servers[n], TAG, workroot)
                    res[n]["pull"].append(t)
                    log(f"pull {i + 1}/{args.runs} {n}: {t:.2f}s")
                except Exception as e:  # noqa: BLE001
                    fail(n, e)
                    live.remove(n)
        for i in range(args.runs):
            for n in list(live):
                try:
                    mbps = blob_get(servers[n], info)
                    res[n]["blob"].append(mbps)
                    log(f"blob GET {i + 1}/{args.runs} {n}: {mbps:.0f} MB/s")
                except Exception as e:  # noqa: BLE001
                    fail(n, e)
                    live.remove(n)
        for n in list(live):
            try:
                w = wrk_manifest(servers[n], args.wrk_duration, args.wrk_threads, args.wrk_conns)
                res[n]["wrk"] = w
                log(f"manifest GET {n}: {w['rps']:.0f} req/s (non-2xx {w['non2xx']}, p50 {w['p50']}, p99 {w['p99']})")
                if w["non2xx"]:
                    log(f"WARNING: {n} answered {w['non2xx']} of {w['total']} manifest GETs with non-2xx/3xx")
            except Exception as e:  # noqa: BLE001
                fail(n, e)
                live.remove(n)
        for n in servers:
            srv = servers[n]
            if srv.proc is not None:
                hwm, nproc, detail = srv.stop()
                res[n]["rss"] = hwm
                res[n]["nproc"] = nproc
                res[n]["rss_detail"] = detail
    finally:
        for srv in servers.values():
            if srv.proc is not None:
                srv.stop()
        shutil.rmtree(workroot, ignore_errors=True)
    elapsed = time.time() - started

    md = render(args, names, info, res, failed, elapsed)
    print(md)
    if args.results:
        Path(args.results).write_text(md)
        log(f"wrote {args.results}")
    return 1 if failed else 0


def render(args, names, info, res, failed, elapsed) -> str:
    cmd = ".venv/bin/python bench/run.py" + ("" if sys.argv[1:] == [] else " " + shlex.join(sys.argv[1:]))
    c, d = res.get("connreg"), res.get("distribution")

    def medv(r, k):
        if r is None:
            return None
        if k == "manifest":
            return r["wrk"]["rps"] if "wrk" in r else None
        if k == "rss":  # worst instance: the long-lived server or any fresh push-run server
            vals = [v for v in [r.get("rss"), *r.get("push_rss", [])] if v is not None]
            return max(vals) if vals else None
        return med(r[k]) if r.get(k) else None

    def cell(r, k):
        if r is None:
            return "not run"
        if k == "push":
            return fmt_series(r["push"], "s", 2)
        if k == "pull":
            return fmt_series(r["pull"], "s", 2)
        if k == "blob":
            return fmt_series(r["blob"], "MB/s", 0)
        if k == "manifest":
            if "wrk" not in r:
                return "—"
            w = r["wrk"]
            extra = f"; {w['non2xx']} non-2xx" if w["non2xx"] else ""
            return f"{w['rps']:,.0f} req/s (p50 {w['p50']}, p99 {w['p99']}{extra})"
        if k == "rss":
            if r.get("rss") is None and not r.get("push_rss"):
                return "—"
            parts = []
            if r.get("push_rss"):
                parts.append(f"push servers max {max(r['push_rss']):.1f} MB")
            if r.get("rss") is not None:
                parts.append(f"long-lived {r['rss']:.1f} MB, {r['nproc']} proc{'s' if r['nproc'] != 1 else ''}")
            return f"**{medv(r, 'rss'):.1f} MB** ({'; '.join(parts)})"
        if k == "idle":
            return f"{r['idle_rss']:.1f} MB" if "idle_rss" in r else "—"
        return "?"

    rows = [
        ("push", f"(a) push, skopeo copy oci→registry, median of {args.runs} (min–max)"),
        ("pull", f"(b) pull, skopeo copy registry→fresh oci: dir, median of {args.runs}"),
        ("blob", f"(c) blob GET {info['big_size'] / 1e6:.1f} MB layer, curl → /dev/null, median of {args.runs}"),
        ("manifest", f"(d) manifest GET by tag, wrk -t{args.wrk_threads} -c{args.wrk_conns} -d{args.wrk_duration}s"),
        ("rss", "(e) peak RSS, sum of VmHWM over the server's process tree, worst instance"),
        ("idle", "RSS right after start (info)"),
    ]
    out = []
    out.append("# connreg benchmark results\n")
    out.append(f"Run {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} (local), took {elapsed / 60:.1f} min. connreg at git {git_rev()}.\n")
    out.append(
        "Machine: 2 vCPUs, shared and noisy (a sandboxed VM; other tenants' load is not under our control), "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB RAM, {platform.system()} {platform.release()}. "
        "Client tools (skopeo, curl, wrk) run on the same 2 cores as the server, so absolute numbers are "
        "low and jitter is high; compare the two servers within one run, not across runs.\n"
    )
    out.append("Command (from the repo root, as root):\n\n```\n" + cmd + "\n```\n")
    out.append(
        f"Image: `{LAYOUT.relative_to(REPO)}:{TAG}` built by `bench/build_image.sh` "
        f"(debootstrap --variant=minbase bookworm + umoci): {len(info['layers'])} gzip layer(s), "
        f"biggest {info['big_size'] / 1e6:.1f} MB, {info['total'] / 1e6:.1f} MB with config.\n"
    )
    if failed:
        out.append("## Failures\n")
        for n, e in failed.items():
            out.append(f"**{n}** failed:\n\n```\n{e.strip()[:4000]}\n```\n")

    out.append("## Results\n")
    out.append("| metric | connreg | distribution 2.8 | ratio connreg/distribution |")
    out.append("| --- | --- | --- | --- |")
    for k, label in rows:
        cv, dv = medv(c, k), medv(d, k)
        if k == "idle":
            cv = c.get("idle_rss") if c else None
            dv = d.get("idle_rss") if d else None
        ratio = f"{cv / dv:.2f}×" if cv is not None and dv else "—"
        out.append(f"| {label} | {cell(c, k)} | {cell(d, k)} | {ratio} |")
    out.append("")

    out.append("## Targets\n")
    out.append("| target | value | met? |")
    out.append("| --- | --- | --- |")

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("met" if ok else "**not met**")

    for k, text in [
        ("push", "push time ≤ 1.0× distribution"),
        ("pull", "pull time ≤ 1.0× distribution"),
        ("blob", "blob GET throughput ≥ 1.0× distribution"),
        ("manifest", "manifest GET req/s ≥ 1.0× distribution (distribution measured ~1,260 req/s earlier)"),
    ]:
        cv, dv = medv(c, k), medv(d, k)
        if cv is None or not dv:
            out.append(f"| {text} | — | — (not measured) |")
            continue
        r = cv / dv
        op, lim = TARGETS[k]
        ok = r <= lim if op == "<=" else r >= lim
        note = ""
        if k == "manifest" and c["wrk"]["non2xx"]:
            ok, note = False, f" ({c['wrk']['non2xx']} non-2xx answers counted in req/s)"
        if k in ("push", "pull", "blob") and c.get(k) and d.get(k):
            if min(c[k]) <= max(d[k]) and min(d[k]) <= max(c[k]):
                note += " (min–max ranges overlap: within this machine's noise)"
        if failed.get("connreg"):
            note += " (connreg failed part-way; see Failures)"
        out.append(f"| {text} | {r:.2f}× | {verdict(ok)}{note} |")
    cv = medv(c, "rss")
    if cv is None:
        out.append("| connreg peak RSS ≤ 150 MB | — | — (not measured) |")
    else:
        out.append(f"| connreg peak RSS ≤ 150 MB | {cv:.1f} MB | {verdict(cv <= TARGETS['rss'][1])} |")
    out.append("")

    out.append("## Method\n")
    out.append(
        f"- **Push (a)**: every run starts the server on a **fresh, empty data dir** and a new port, pushes "
        f"`oci:{TAG}` to `{REPO_NAME}:{TAG}` with `skopeo copy --dest-tls-verify=false`, then stops the server; "
        "startup is not timed. So each push uploads every blob (no blob exists anywhere on the server). skopeo "
        "runs in a private mount namespace with a tmpfs over its blob-info cache (`/var/lib/containers/cache`), so "
        "it never tries a cross-repo mount learned from an earlier run. Runs alternate connreg/distribution."
    )
    out.append(
        "- **Pull (b)**, **blob GET (c)**, **manifest GET (d)**: one long-lived server each, both up at the same "
        "time on fresh data dirs, image pushed once (untimed), manifest and biggest blob checked by digest first. "
        "Pull = `skopeo copy --src-tls-verify=false docker://… oci:FRESH_DIR:bookworm`, fresh dir per run, "
        "alternating servers. Blob GET = `curl -L -o /dev/null` of the biggest layer, MB = 10^6 bytes, "
        "from curl's `size_download / time_total`. Manifest = `wrk` with a Lua script setting "
        "`Accept: " + ACCEPT + "` on `GET /v2/" + REPO_NAME + "/manifests/" + TAG + "` (by tag); non-2xx answers are reported."
    )
    out.append(
        "- **Peak RSS (e)**: a sampler reads `/proc/PID/status` `VmHWM` every 0.25 s for the server process and "
        "all its descendants (so workers that connreg forks are included) and once more at the end; the figure is "
        "the **sum of each process's own peak** over the long-lived server's life (push + pulls + blob GETs + wrk) — "
        "an upper bound when peaks of different processes do not coincide. The same is recorded for each fresh "
        "server of the push runs; the table and the target use the **worst** of all these instances."
    )
    for n, r in (("connreg", c), ("distribution", d)):
        if r and r.get("push_rss"):
            out.append(f"  {n} peak RSS per push-run server: " + ", ".join(f"{v:.1f}" for v in r["push_rss"]) + " MB.")
    out.append(
        "- distribution: Debian `docker-registry` started with a generated config: filesystem storage in a temp dir, "
        "`inmemory` blob-descriptor cache (Debian's default), delete enabled, http on 127.0.0.1:free port, "
        "`log.level: warn`, access log disabled."
    )
    out.append(
        f"- connreg: `{Path(args.connreg_python).name} -m connreg serve --data-dir TMP --listen 127.0.0.1:PORT"
        + (" " + shlex.join(args.connreg_arg) if args.connreg_arg else "")
        + "` (its defaults otherwise), readiness at `/healthz`."
    )
    for n in names:
        r = res.get(n, {})
        if r.get("rss_detail"):
            out.append(f"- {n} processes at the end (VmHWM): " + "; ".join(r["rss_detail"]))
    out.append("- Tools: " + "; ".join(f"{k}: {v}" for k, v in tool_versions().items()))
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
