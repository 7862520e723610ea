"""Request metrics at the ASGI layer, outermost: every request counts, including the manifest
reads `api/fast_reads.py` answers before Quart sees them.

Labels stay bounded: the route is the name of a /v2/ route (`v2:manifest`, `v2:blob`, …) or
the URL rule of any other endpoint (`/connreg/v1/connected-registries/<name>`), never the
path; the method is one of a fixed set; the status is the numeric code.

Cheap on purpose (bench/metrics_overhead.py): the figures are plain integers and floats in one
small object per (route, method, status), updated on the event loop thread without a lock, and
turned into Prometheus families only when scraped (node.py). prometheus_client's own Counter
and Histogram take a lock per update, which cost five times as much here.
"""

from __future__ import annotations

import time
from bisect import bisect_left

from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Request latency buckets (seconds): manifest reads take milliseconds, blob streams and sync
# long polls (up to 30 s) far longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


def v2_route(rest: str) -> str:
    """The /v2/ route a path after `/v2/` names, by its last segments (the same answer as
    api/routes.py's table, whose order puts uploads before blobs, without its regexes)."""
    if rest == "_catalog":
        return "v2:catalog"
    parts = rest.rsplit("/", 3)
    if len(parts) >= 3:
        if parts[-2] == "manifests":
            return "v2:manifest"
        if parts[-2] == "referrers":
            return "v2:referrers"
        if parts[-2] == "tags" and parts[-1] == "list":
            return "v2:tags"
        if len(parts) == 4 and parts[-3] == "blobs" and parts[-2] == "uploads":
            return "v2:upload" if parts[-1] else "v2:upload-start"
        if parts[-2] == "blobs":
            return "v2:upload-start" if parts[-1] == "uploads" else "v2:blob"
    return "v2:" + UNMATCHED


class RouteNames:
    """Path → bounded route label."""

    def __init__(self, url_map):
        self._adapter = url_map.bind("localhost")

    def __call__(self, path: str, method: str) -> str:
        if path.startswith("/v2/"):
            return v2_route(path[4:]) if len(path) > 4 else "base"
        if path == "/v2":
            return "base"
        try:
            rule, _ = self._adapter.match(path, method, return_rule=True)
            return rule.rule
        except (RequestRedirect, HTTPException):  # 404 / 405 / a trailing-slash redirect
            return UNMATCHED


class Series:
    """One (route, method, status): how many, how long (histogram), bytes in and out."""

    __slots__ = ("count", "seconds", "buckets", "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.bytes_in = 0
        self.bytes_out = 0

    def add(self, seconds: float, received: int, sent: int) -> None:
        self.count += 1
        self.seconds += seconds
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.bytes_in += received
        self.bytes_out += sent


class RequestStats:
    def __init__(self) -> None:
        self.series: dict[tuple[str, str, int], Series] = {}

    def get(self, route: str, method: str, status: int) -> Series:
        key = (route, method, status)
        found = self.series.get(key)
        if found is None:
            found = self.series[key] = Series()
        return found


class RequestMetrics:
    """ASGI middleware: requests by route/method/status, latency, bytes in and out."""

    def __init__(self, app, stats: RequestStats, route_names: RouteNames):
        self.app = app
        self.stats = stats
        self.route_names = route_names

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering
        received = sent = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body") or b"")
            return message

        async def counting_send(message):
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body":
                sent += len(message.get("body") or b"")
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = self.route_names(scope["path"], scope["method"])
            self.stats.get(route, method, status).add(time.perf_counter() - started,
                                                      received, sent)
