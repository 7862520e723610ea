"""Start a real `connreg serve` subprocess on a free loopback port.

Tests talk to the node over HTTP exactly as clients do; nothing is imported in-process, so a test
can kill -9 the node and restart it on the same data dir.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """A running `connreg serve` process and where to reach it."""

    data_dir: Path
    port: int
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    # Set for a node serving TLS (its args carry --tls-cert/--tls-key): the CA that signed its
    # certificate; `url` is then https and the readiness check verifies against it.
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_password(self) -> str:
        """The admin's password: the one given in the environment, else the generated one."""
        given = self.env.get("CONNREG_ADMIN_PASSWORD")
        if given:
            return given
        return (self.data_dir / "admin-password").read_text().strip()

    @property
    def admin(self) -> tuple[str, str]:
        """(username, password) of the admin, as httpx's `auth=` takes it."""
        return ("admin", self.admin_password)

    def start(self, timeout: float = 30.0) -> "Node":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        log = open(self.log_path, "ab")
        cmd = [
            sys.executable, "-m", "connreg", "serve",
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"connreg exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0,
                             verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"connreg did not become ready in {timeout}s:\n{self.log()}")

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify` for talking to this node."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """SIGKILL: the crash case, no cleanup runs."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> "Node":
        self.stop()
        return self.start()


def start_node(data_dir: Path, port: int | None = None, args: list[str] | None = None,
               env: dict[str, str] | None = None, admin_password: str | None = None,
               ca_file: Path | None = None) -> Node:
    """Start a node. Auth is on unless `args` has `--no-auth`; `admin_password` sets
    CONNREG_ADMIN_PASSWORD (otherwise the node generates one, readable as `node.admin_password`).
    `ca_file`: the node serves TLS (give --tls-cert/--tls-key in `args` or `env`) with a
    certificate that CA signed.
    """
    env = dict(env or {})
    if admin_password is not None:
        env["CONNREG_ADMIN_PASSWORD"] = admin_password
    return Node(data_dir=data_dir, port=port or free_port(), extra_args=args or [],
                env=env, ca_file=ca_file).start()
