"""What the request-metrics middleware (connreg/metrics/http.py) adds per request.

In-process: the same ASGI call (a manifest GET answered by a stub app that sends a 200 with a
1 KiB body) is made N times bare and N times through RequestMetrics with a real NodeMetrics
registry; the difference per call is the middleware's cost. For scale, the same run then times
N sequential manifest GETs (keep-alive) against a real `connreg serve` node, which includes
the middleware: the cost's share of a whole request.

    .venv/bin/python bench/metrics_overhead.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time

import trio
from quart import Quart

from connreg.metrics.http import RequestMetrics, RouteNames
from connreg.metrics.node import NodeMetrics

BODY = b"x" * 1024
SCOPE = {"type": "http", "method": "GET", "path": "/v2/library/app/manifests/v1",
         "headers": [], "query_string": b""}


async def stub(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": BODY})


async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message):
    pass


async def timed(app, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await app(SCOPE, receive, send)
    return (time.perf_counter() - started) / n


async def main(n: int) -> None:
    quart = Quart("bench")
    quart.config["CONNREG_SETTINGS"] = None
    wrapped = RequestMetrics(stub, NodeMetrics(quart).http, RouteNames(quart.url_map))
    bare, metered = [], []
    for _ in range(7):
        bare.append(await timed(stub, n))
        metered.append(await timed(wrapped, n))
    b, m = statistics.median(bare), statistics.median(metered)
    print(f"{n} calls x 7 rounds: bare {b * 1e6:.2f} µs/call, with metrics {m * 1e6:.2f} "
          f"µs/call, middleware cost {(m - b) * 1e6:.2f} µs/call (median)")


def real_node(n: int) -> float:
    """Median seconds per manifest GET against a real node (7 rounds of n // 10)."""
    import tempfile
    from pathlib import Path

    import httpx

    from connreg.testing import start_node
    from connreg.testing.oci import OCI_MANIFEST, make_image

    with tempfile.TemporaryDirectory() as tmp:
        node = start_node(Path(tmp) / "node", args=["--no-auth"])
        try:
            image = make_image([1000])
            with httpx.Client(base_url=node.url, timeout=30) as c:
                for blob in image.blobs():
                    from connreg.testing.oci import sha256
                    c.post("/v2/bench/app/blobs/uploads/", params={"digest": sha256(blob)},
                           content=blob)
                c.put("/v2/bench/app/manifests/v1", content=image.manifest,
                      headers={"Content-Type": OCI_MANIFEST})
                rounds = []
                for _ in range(7):
                    started = time.perf_counter()
                    for _ in range(max(n // 10, 1)):
                        c.get("/v2/bench/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
                    rounds.append((time.perf_counter() - started) / max(n // 10, 1))
            return statistics.median(rounds)
        finally:
            node.stop()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    trio.run(main, count)
    per_request = real_node(count)
    print(f"real node: manifest GET {per_request * 1e6:.0f} µs per request (median of 7 rounds "
          f"of {count // 10}, client on the same cores)")
