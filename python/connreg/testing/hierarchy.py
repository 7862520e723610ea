"""Build real multi-node hierarchies for tests: a root plus connected registries, each its own
`connreg serve` process, configured through the real CLI and connection strings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from connreg.testing.node import Node, start_node

ADMIN_PASSWORD = "hierarchy-admin-password-0123456789"


def cli(root: Node, *args: str) -> dict | list | None:
    """Run `connreg … --output json` as the root's admin; return the parsed JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    env.update(CONNREG_REGISTRY=root.url, CONNREG_USERNAME="admin",
               CONNREG_PASSWORD=root.admin_password)
    if root.ca_file:
        env["CONNREG_CA_FILE"] = str(root.ca_file)
    proc = subprocess.run([sys.executable, "-m", "connreg", *args, "--output", "json"],
                          env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"connreg {' '.join(args)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


@dataclass
class Hierarchy:
    base: Path
    env: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def root(self) -> Node:
        return self.nodes["root"]

    def start_root(self, args: list[str] | None = None, ca_file: Path | None = None) -> Node:
        """`args` and `ca_file` as `start_node` takes them (a TLS root: --tls-cert/--tls-key
        and the CA that signed its certificate)."""
        node = start_node(self.base / "root", admin_password=ADMIN_PASSWORD, args=args,
                          env={"CONNREG_AUTH_FAILURE_LIMIT": "1000", **self.env},
                          ca_file=ca_file)
        self.nodes["root"] = node
        return node

    def create(self, name: str, mode: str, repositories: list[str], parent: str | None = None,
               extra: list[str] = ()) -> dict:
        args = ["connected-registry", "create", "--name", name, "--mode", mode,
                "--repository", *repositories, *extra]
        if parent:
            args += ["--parent", parent]
        return cli(self.root, *args)

    def start_child(self, name: str, parent: str = "root", env: dict[str, str] | None = None,
                    parent_ca_file: Path | None = None) -> Node:
        """With `parent_ca_file` the child reaches its parent over https (the parent serves
        TLS) and verifies it against that file (CONNREG_PARENT_CA_FILE)."""
        parent_node = self.nodes[parent]
        protocol = "https" if parent_ca_file else "http"
        args = ["connected-registry", "get-settings", "--name", name, "--parent-protocol",
                protocol, "--yes"]
        if parent != "root":
            args += ["--parent-endpoint", parent_node.host]
        settings = cli(self.root, *args)
        node_env = {"CONNREG_CONNECTION_STRING": settings["connectionString"],
                    "CONNREG_AUTH_FAILURE_LIMIT": "1000", **self.env, **(env or {})}
        if parent_ca_file:
            node_env.setdefault("CONNREG_PARENT_CA_FILE", str(parent_ca_file))
        node = start_node(self.base / name, env=node_env)
        self.nodes[name] = node
        return node

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.stop()


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1,
             message: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                         + (f" (last error: {last_exc})" if last_exc else ""))
