"""One node's Prometheus registry: request series kept as they happen, everything else read
at scrape time from what the node already tracks (budget, sync state, GC, login limiter, the
fleet snapshot), so nothing on the hot path changes for metrics it does not need.

Each app gets its own CollectorRegistry (never the process-global one): two apps in one
process (tests, tools) never mix their series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)

from connreg import __version__
from connreg.metrics.fleet import STATES, FleetSnapshot
from connreg.metrics.http import LATENCY_BUCKETS, RequestStats


class NodeMetrics:
    def __init__(self, app, http: RequestStats):
        self.app = app
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = http  # updated by the middleware (http.py) since the app started
        # Set by the /metrics handler right before it renders (no await in between).
        self.snapshot: FleetSnapshot | None = None
        self.registry.register(_ScrapeTimeCollector(self))


def _gauge(name: str, doc: str, value, labels: dict | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
    if value is not None:
        family.add_metric(list(labels.values()) if labels else [], value)
    return family


def _counter(name: str, doc: str, value) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class _ScrapeTimeCollector:
    def __init__(self, metrics: NodeMetrics):
        self.metrics = metrics

    @staticmethod
    def _client_budget(app):
        budget = app.extensions.get("client_budget")  # api/client_budget.py; None when off
        if budget is None:
            return
        family = CounterMetricFamily("connreg_client_budget_requests", "Client requests past "
                                     "their budget while the node syncs: delayed to their "
                                     "turn (waited) or answered 429 (refused)",
                                     labels=["outcome"])
        family.add_metric(["waited"], budget.waited)
        family.add_metric(["refused"], budget.refused)
        yield family

    def describe(self):
        return []  # the series vary with the node's role; checked at scrape time

    def collect(self):
        app = self.metrics.app
        snap = self.metrics.snapshot
        info = InfoMetricFamily("connreg_build", "connreg version")
        info.add_metric([], {"version": __version__})
        yield info
        yield from self._http(self.metrics.http)
        yield from self._storage(app, snap)
        yield from self._gc(app)
        yield from self._auth(app)
        yield from self._client_budget(app)
        yield from self._sync_self(app, snap)
        if snap is not None:
            yield from self._fleet(snap)

    @staticmethod
    def _http(stats: RequestStats):
        requests = CounterMetricFamily("connreg_http_requests", "HTTP requests answered, by "
                                       "route template, method and status",
                                       labels=["route", "method", "status"])
        duration = HistogramMetricFamily("connreg_http_request_duration_seconds", "Time from "
                                         "request to the last byte of the response",
                                         labels=["route", "method"])
        received = CounterMetricFamily("connreg_http_request_bytes", "Request body bytes "
                                       "received", labels=["route"])
        sent = CounterMetricFamily("connreg_http_response_bytes", "Response body bytes sent",
                                   labels=["route"])
        by_route_method: dict[tuple[str, str], list] = {}
        by_route: dict[str, list[int]] = {}
        for (route, method, status), series in sorted(stats.series.items()):
            requests.add_metric([route, method, str(status)], series.count)
            merged = by_route_method.setdefault((route, method),
                                                [0.0, [0] * len(series.buckets)])
            merged[0] += series.seconds
            merged[1] = [a + b for a, b in zip(merged[1], series.buckets)]
            totals = by_route.setdefault(route, [0, 0])
            totals[0] += series.bytes_in
            totals[1] += series.bytes_out
        for (route, method), (seconds, buckets) in by_route_method.items():
            cumulative, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            duration.add_metric([route, method], cumulative, sum_value=seconds)
        for route, (bytes_in, bytes_out) in by_route.items():
            received.add_metric([route], bytes_in)
            sent.add_metric([route], bytes_out)
        yield from (requests, duration, received, sent)

    @staticmethod
    def _storage(app, snap):
        budget = app.extensions["registry"].budget
        yield _gauge("connreg_storage_bytes", "Bytes in the blob store (blobs and unfinished "
                     "uploads), what the store budget counts", budget.used_bytes)
        free = snap.me.free_bytes if snap is not None else None
        yield _gauge("connreg_storage_free_bytes", "Free bytes on the data dir's filesystem",
                     free)
        yield _gauge("connreg_storage_budget_max_bytes", "Cap on the blob store "
                     "(max_store_bytes); 0: none", budget.max_store)
        yield _gauge("connreg_storage_budget_min_free_bytes", "Free space always left on the "
                     "filesystem (min_free_bytes)", budget.min_free)

    @staticmethod
    def _gc(app):
        collector = app.extensions.get("gc")
        if collector is None:
            return
        yield _counter("connreg_gc_runs", "Garbage collections completed (dry runs excluded)",
                       collector.runs)
        yield _counter("connreg_gc_freed_bytes", "Bytes garbage collection freed",
                       collector.freed_bytes)
        report = collector.last_report
        yield _gauge("connreg_gc_last_run_timestamp_seconds", "When the last collection "
                     "started", report.started if report else None)

    @staticmethod
    def _auth(app):
        authz = app.extensions.get("authorizer")
        limiter = authz.authn.limiter if authz is not None and authz.authn is not None else None
        if limiter is None:
            return
        yield _counter("connreg_auth_failed_logins", "Logins refused for a wrong name or "
                       "password", limiter.failures_total)
        yield _counter("connreg_auth_lockouts", "(account, address) pairs locked out after "
                       "too many failed logins", limiter.lockouts_total)

    @staticmethod
    def _sync_self(app, snap):
        me = snap.me if snap is not None else None
        outbox = GaugeMetricFamily("connreg_sync_outbox_entries", "This node's outbox: own "
                                   "changes not yet acknowledged by the parent (pending) and "
                                   "those it refused (parked)", labels=["state"])
        if me is not None:
            outbox.add_metric(["pending"], me.outbox_entries or 0)
            outbox.add_metric(["parked"], me.parked_entries or 0)
        yield outbox
        from connreg.sync.endpoints import TRAFFIC, TRAFFIC_BYTES
        requests = CounterMetricFamily("connreg_sync_child_requests", "Requests from each "
                                       "child's sync token (sync API and /v2/)",
                                       labels=["registry"])
        served = CounterMetricFamily("connreg_sync_child_bytes", "Body bytes exchanged with "
                                     "each child, both directions", labels=["registry"])
        for name, count in sorted(TRAFFIC.items()):
            requests.add_metric([name], count)
        for name, count in sorted(TRAFFIC_BYTES.items()):
            served.add_metric([name], count)
        yield requests
        yield served
        service = app.extensions.get("sync")
        if service is None:
            return
        state = service.state
        connection = GaugeMetricFamily("connreg_sync_connection_state", "This node's link to "
                                       "its parent: 1 for the current state", labels=["state"])
        for name in STATES:
            connection.add_metric([name], 1 if state.connection_state == name else 0)
        yield connection
        transfer = state.transfer
        moved = CounterMetricFamily("connreg_sync_bytes", "Sync payload bytes moved, by "
                                    "direction (down: from the parent)", labels=["direction"])
        for direction in ("down", "up"):
            moved.add_metric([direction], transfer.bytes.get(direction, 0))
        yield moved
        delta = CounterMetricFamily("connreg_sync_delta_bytes", "Bytes of large blobs "
                                    "assembled by delta transfer: from local chunks (saved) or "
                                    "fetched", labels=["source"])
        delta.add_metric(["local"], transfer.delta_local_bytes)
        delta.add_metric(["fetched"], transfer.delta_fetched_bytes)
        yield delta
        meter = service.parent.meter
        if meter is not None:
            yield _counter("connreg_sync_metered_bytes", "Bytes counted against the "
                           "bandwidth cap (all sync traffic with the parent)", meter.total)
            limit = meter.rate or 0
            yield _gauge("connreg_sync_bandwidth_limit_bytes_per_second", "The bandwidth cap "
                         "the parent set for this node; 0: none", limit)
            yield _gauge("connreg_sync_bandwidth_utilization_ratio", "Sync rate over the last "
                         "10 s as a share of the cap (0 when there is none)",
                         transfer.rate() / limit if limit else 0)
        if state.last_successful_sync_time:
            yield _gauge("connreg_sync_last_success_timestamp_seconds", "When this node last "
                         "synced successfully with its parent", state.last_successful_sync_time)

    @staticmethod
    def _fleet(snap: FleetSnapshot):
        """Per connected registry below this node, from its last report (label: its name)."""
        up = GaugeMetricFamily("connreg_registry_state", "Each connected registry below this "
                               "node: 1 for its current state", labels=["registry", "state"])
        active = GaugeMetricFamily("connreg_registry_active", "Each connected registry below "
                                   "this node: 1 while a deployed instance holds it (activation "
                                   "Active), 0 when none does", labels=["registry"])
        contact = GaugeMetricFamily("connreg_sync_last_contact_timestamp_seconds", "When each "
                                    "connected registry below this node last reported",
                                    labels=["registry"])
        synced = GaugeMetricFamily("connreg_registry_last_sync_timestamp_seconds", "When each "
                                   "connected registry last synced successfully",
                                   labels=["registry"])
        lag = GaugeMetricFamily("connreg_sync_lag_seconds", "Age of the oldest change a direct "
                                "child has not applied yet (0: caught up)", labels=["registry"])
        lag_entries = GaugeMetricFamily("connreg_sync_lag_entries", "Changes in this node's log "
                                        "a direct child has not applied yet",
                                        labels=["registry"])
        outbox = GaugeMetricFamily("connreg_registry_outbox_entries", "Each connected "
                                   "registry's outbox as it reported it", labels=["registry",
                                                                                   "state"])
        stored = GaugeMetricFamily("connreg_registry_storage_bytes", "Each connected registry's "
                                   "blob store size as it reported it", labels=["registry"])
        free = GaugeMetricFamily("connreg_registry_storage_free_bytes", "Free bytes on each "
                                 "connected registry's data filesystem as it reported it",
                                 labels=["registry"])
        for view in snap.registries:
            for name in STATES:
                up.add_metric([view.name, name], 1 if view.state == name else 0)
            active.add_metric([view.name], 1 if view.active else 0)
            if view.last_contact is not None:
                contact.add_metric([view.name], view.last_contact)
            if view.last_sync is not None:
                synced.add_metric([view.name], view.last_sync)
            if view.lag_seconds is not None:
                lag.add_metric([view.name], view.lag_seconds)
            if view.lag_entries is not None:
                lag_entries.add_metric([view.name], view.lag_entries)
            if view.outbox_entries is not None:
                outbox.add_metric([view.name, "pending"], view.outbox_entries)
            if view.parked_entries is not None:
                outbox.add_metric([view.name, "parked"], view.parked_entries)
            if view.store_bytes is not None:
                stored.add_metric([view.name], view.store_bytes)
            if view.free_bytes is not None:
                free.add_metric([view.name], view.free_bytes)
        yield from (up, active, contact, synced, lag, lag_entries, outbox, stored, free)
