"""A scaled root for tests and benchmarks: N `connreg serve` replicas on one PostgreSQL
database and one blob store, behind nginx (testing/balancer.py).

Each replica has its own data dir (nothing in it is shared); the blob store is a folder all of
them use, or the S3 store when `blob_store` is an s3:// URL (with `env` naming the endpoint and
credentials). Clients talk to `url`/`host`, the balancer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from connreg.testing.balancer import Balancer
from connreg.testing.node import Node, free_port


@dataclass
class ScaledRoot:
    base: Path
    metadata_url: str
    blob_store: str
    replicas: int = 2
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    balancer: Balancer | None = None

    @property
    def url(self) -> str:
        return self.balancer.url

    @property
    def host(self) -> str:
        return self.balancer.host

    @property
    def admin(self) -> tuple[str, str]:
        return ("admin", self.env["CONNREG_ADMIN_PASSWORD"])

    def node_args(self, balancer_port: int) -> list[str]:
        # children are told to reach the root at the balancer, never at one replica
        return ["--metadata-url", self.metadata_url, "--blob-store", self.blob_store,
                "--advertise-address", f"127.0.0.1:{balancer_port}", *self.args]

    def start(self) -> "ScaledRoot":
        from concurrent.futures import ThreadPoolExecutor
        lb_port = free_port()
        self.nodes = [Node(data_dir=self.base / f"replica{i}", port=free_port(),
                           extra_args=self.node_args(lb_port), env=dict(self.env))
                      for i in range(self.replicas)]
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # they start side by side
            for started in [pool.submit(n.start, 60) for n in self.nodes]:
                started.result()
        self.balancer = Balancer([n.port for n in self.nodes], port=lb_port).start()
        return self

    def as_node(self) -> Node:
        """The balancer dressed as a Node (url, host, admin password) for helpers that take
        one, such as testing.hierarchy; stopping it does nothing."""
        return Node(data_dir=self.base / "balancer", port=self.balancer.port, env=dict(self.env))

    def wait_ready(self, node: Node, timeout: float = 60.0) -> None:
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{node.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"replica {node.url} not ready in {timeout}s:\n{node.log()}")

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for node in self.nodes:
            node.stop()


def start_scaled_root(base: Path, metadata_url: str, replicas: int = 2,
                      blob_store: str | None = None, args: list[str] | None = None,
                      env: dict[str, str] | None = None) -> ScaledRoot:
    """Replicas on `metadata_url` and `blob_store` (default: a folder under `base`)."""
    store = blob_store or str(base / "shared-blobs")
    return ScaledRoot(base=base, metadata_url=metadata_url, blob_store=store,
                      replicas=replicas, args=list(args or []), env=dict(env or {})).start()
