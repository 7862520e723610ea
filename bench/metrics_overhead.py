"""What the request-metrics middleware (connreg/metrics/http.py) adds per request.

In-process and deterministic: the same ASGI call (a manifest GET answered by a stub app that
sends a 200 with a 1 KiB body) is made N times bare and N times through RequestMetrics with a
real NodeMetrics registry; the difference per call is the middleware's cost. Compare it with
a whole manifest GET (bench/RESULTS.md, (d): ~2,000 req/s on this machine, ~500 µs each).

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


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
