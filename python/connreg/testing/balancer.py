"""nginx (Debian's) as the load balancer in front of replicas, on a free loopback port.

The configuration is what docs/scaling.md recommends for production: no stickiness (round
robin), request bodies streamed through (`proxy_request_buffering off`, no size limit), and a
request whose replica cannot be reached (connection refused or reset before an answer) passed
to the next one — POST/PATCH/PUT included, since nothing of them reached a replica.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from connreg.testing.node import free_port

CONFIG = """
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream replicas {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_next_upstream error timeout http_502 non_idempotent;
        proxy_next_upstream_tries 3;
        proxy_connect_timeout 2s;
        proxy_send_timeout 300s;
        proxy_read_timeout 300s;
        location / {{
            proxy_pass http://replicas;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@dataclass
class Balancer:
    upstreams: list[int]
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="connreg-lb-")))
    proc: subprocess.Popen | None = None
    workers: int = 1  # nginx worker processes ("auto" is one per core)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        # max_fails=1 fail_timeout=2s: a dead replica is skipped for 2 s after a failure
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;"
                            for p in self.upstreams)
        path = self.root / "nginx.conf"
        path.write_text(CONFIG.format(root=self.root, port=self.port, servers=servers,
                                      workers=self.workers))
        return path

    def start(self, timeout: float = 30.0) -> "Balancer":
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx not installed (make deps installs Debian's nginx-light)")
        config = self._write_config()
        log = open(self.root / "stderr.log", "ab")
        self.proc = subprocess.Popen([binary, "-c", str(config), "-p", str(self.root),
                                     "-e", str(self.root / "error.log")],
                                    stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.log()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start in {timeout}s: {self.log()}")

    def log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
