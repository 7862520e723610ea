"""A throwaway PostgreSQL server on loopback, for tests and benchmarks.

Debian's `postgresql` package: its server refuses to run as root, so when we are root the
cluster is created and run as the `postgres` user, in a directory under /tmp it can reach.
`fsync=off`: the cluster is deleted at the end anyway, and CI disks are slow.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from connreg.testing.node import free_port


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def available() -> str | None:
    """None when a server can be started here, else why not (for pytest.skip)."""
    if server_binaries() is None:
        return "PostgreSQL server not installed (make deps installs Debian's postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


@dataclass
class PostgresServer:
    root: Path
    port: int
    proc_user: str | None
    options: str = ""  # the server's command-line settings (pg_ctl -o)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        if self.proc_user:
            cmd = ("runuser", "-u", self.proc_user, "--", *cmd)
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)

    def pause(self) -> None:
        """Stop the server, keeping its data (a database outage); `resume` starts it again."""
        self._run(str(server_binaries() / "pg_ctl"), "-D", str(self.root / "data"),
                  "-m", "fast", "-w", "stop", timeout=60)

    def resume(self, timeout: float = 60.0) -> None:
        self._run(str(server_binaries() / "pg_ctl"), "-D", str(self.root / "data"),
                  "-l", str(self.root / "server.log"), "-o", self.options, "-w",
                  "-t", str(int(timeout)), "start", timeout=timeout + 10)

    def stop(self) -> None:
        bins = server_binaries()
        try:
            self._run(str(bins / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                      "-w", "stop", timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(max_connections: int = 200, timeout: float = 60.0) -> PostgresServer:
    """initdb a fresh cluster in /tmp and start it on a free loopback port (trust auth)."""
    bins = server_binaries()
    if bins is None:
        raise RuntimeError(available())
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="connreg-pg-", dir="/tmp"))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    root.chmod(0o700)
    server = PostgresServer(root=root, port=free_port(), proc_user=user)
    server._run(str(bins / "initdb"), "-D", str(root / "data"), "-U", "postgres",
                "-A", "trust", "-E", "UTF8", "--no-sync", timeout=120)
    options = (f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root}"
               f" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
               f" -c max_connections={max_connections}")
    server.options = options
    server.resume(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            return server
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.1)
