"""`GET /metrics` on every node, and the one function that wires metrics into an app.

Who may scrape: the node's admin, or a token whose scope map holds `metrics/read`
(docs/auth.md); with `metrics_public = true` anyone who reaches the port (for a scraper on a
private network); with auth off, everyone, like the rest of the node. The scrape reads what
needs a query in worker threads (`fleet.take`), then renders in one step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, current_app

from connreg import errors
from connreg.auth.actions import METRICS_READ
from connreg.errors import RegistryError
from connreg.metrics.http import RequestMetrics, RequestStats, RouteNames

if TYPE_CHECKING:
    from connreg.metrics.node import NodeMetrics

bp = Blueprint("metrics", __name__)


async def require_metrics_reader(what: str):
    """401 without credentials, 403 for a caller without `metrics/read`; the caller (None
    when auth is off)."""
    authz = current_app.extensions["authorizer"]
    if not authz.enabled:
        return None
    principal = await authz.caller()
    if principal is None or principal.kind == "anonymous":
        raise authz.unauthorized(message=f"{what} needs the admin's credentials or a token "
                                         f"with {METRICS_READ}")
    if not principal.perms.allows_node(METRICS_READ):
        raise RegistryError(errors.DENIED, message=f"{principal.name} may not read {what}: its "
                            f"scope map lacks {METRICS_READ}")
    return principal


@bp.route("/metrics", methods=["GET"])
async def metrics() -> Response:
    settings = current_app.config["CONNREG_SETTINGS"]
    if not settings.metrics_public:
        await require_metrics_reader("metrics")
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from connreg.metrics import fleet

    node = node_metrics(current_app)
    snapshot = await fleet.take(current_app)
    node.snapshot = snapshot  # no await from here to the rendering: one scrape's view
    body = generate_latest(node.registry)
    return Response(body, content_type=CONTENT_TYPE_LATEST)


def node_metrics(app) -> "NodeMetrics":
    """The app's Prometheus registry, made at the first scrape: a node nobody scrapes never
    loads prometheus_client (docs/operations.md, Memory)."""
    node = app.extensions.get("metrics")
    if node is None:
        from prometheus_client import disable_created_metrics

        from connreg.metrics.node import NodeMetrics

        disable_created_metrics()  # the `_created` twin of every counter only doubles a scrape
        node = app.extensions["metrics"] = NodeMetrics(app, app.extensions["request_stats"])
    return node


def install(app) -> None:
    """The request statistics and their middleware (outermost, so it sees every request), and
    the endpoint. Call after the other ASGI layers are in place."""
    stats = app.extensions["request_stats"] = RequestStats()
    app.register_blueprint(bp)
    app.asgi_app = RequestMetrics(app.asgi_app, stats, RouteNames(app.url_map))
