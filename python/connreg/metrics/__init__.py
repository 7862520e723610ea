"""Prometheus metrics of a node (`GET /metrics`, docs/operations.md).

    http.py      request counts, latency and bytes (ASGI middleware)
    node.py      the per-app registry and the scrape-time collector
    fleet.py     this node and the connected registries below it (shared with the dashboard)
    counts.py    the few figures that need a query, read off the event loop
    endpoint.py  `GET /metrics`, its authorization, and `install(app)`
"""
