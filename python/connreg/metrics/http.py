"""Request metrics at the ASGI layer, outermost: every request counts, including the manifest
reads `api/fast_reads.py` answers before Quart sees them.

Labels stay bounded: the route is the name of a /v2/ route (`manifest`, `blob`, …) or the URL
rule of any other endpoint (`/connreg/v1/connected-registries/<name>`), never the path; the
method is one of a fixed set; the status is the numeric code. Per request the cost is a route
match (already done once by the fast path), a dict lookup for the cached label children and
three increments.
"""

from __future__ import annotations

import time

from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from connreg.api import routes

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


class RouteNames:
    """Path → bounded route label."""

    def __init__(self, url_map):
        self._adapter = url_map.bind("localhost")

    def __call__(self, path: str, method: str) -> str:
        if path.startswith("/v2/"):
            rest = path[4:]
            if not rest:
                return "base"
            found = routes.match(rest)
            return "v2:" + found[0].name if found else "v2:" + UNMATCHED
        if path == "/v2":
            return "base"
        try:
            rule, _ = self._adapter.match(path, method, return_rule=True)
            return rule.rule
        except RequestRedirect:
            return UNMATCHED
        except HTTPException:  # 404 / 405
            return UNMATCHED


class RequestMetrics:
    """ASGI middleware: requests by route/method/status, latency, bytes in and out."""

    def __init__(self, app, metrics, route_names: RouteNames):
        self.app = app
        self.metrics = metrics
        self.route_names = route_names
        self._children: dict[tuple, tuple] = {}

    def _series(self, route: str, method: str, status: int):
        key = (route, method, status)
        found = self._children.get(key)
        if found is None:
            m = self.metrics
            found = (m.requests.labels(route, method, str(status)),
                     m.duration.labels(route, method),
                     m.request_bytes.labels(route), m.response_bytes.labels(route))
            self._children[key] = found
        return found

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in METHODS else "other"
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
            route = self.route_names(scope["path"], scope["method"])
            requests, duration, bytes_in, bytes_out = self._series(route, method, status)
            requests.inc()
            duration.observe(time.perf_counter() - started)
            if received:
                bytes_in.inc(received)
            if sent:
                bytes_out.inc(sent)
