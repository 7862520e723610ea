"""`GET /connreg/v1/audit` for `connreg audit list` (this node's admin; docs/audit.md):

    ?registry=NAME   events that happened at that connected registry ("-": at the root itself)
    ?repository=R    ?actor=A    ?since=ISO-8601 (default: 24 hours ago)
    ?limit=N         at most 1,000 per page (default 100)
    ?page=TOKEN      the `next` of the previous page

Answers `{"events": [...], "next": TOKEN or null}`, oldest first. At the root the trail holds
the events of the whole tree (edges forward theirs); at an edge, its own and its subtree's.
"""

from __future__ import annotations

import time

from quart import Blueprint, Response, current_app, request

from connreg import errors
from connreg.api.http import json_response
from connreg.audit.log import MAX_QUERY_LIMIT, Position, parse_time
from connreg.errors import RegistryError
from connreg.parsing import bounded_int

bp = Blueprint("audit", __name__)
DEFAULT_SINCE_SECONDS = 24 * 3600


def _filter(name: str) -> str | None:
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if len(value) > 256:
        raise RegistryError(errors.QUERY_INVALID, message=f"{name} is too long")
    return value


@bp.route("/connreg/v1/audit", methods=["GET"])
async def list_events() -> Response:
    await current_app.extensions["authorizer"].require_node_admin("the audit log")
    audit = current_app.extensions["audit"]
    raw_limit = request.args.get("limit")
    limit = 100 if raw_limit is None else bounded_int(raw_limit, "limit", 1, MAX_QUERY_LIMIT)
    page = _filter("page")
    if page is not None:
        try:
            Position.parse(page)
        except ValueError as exc:
            raise RegistryError(errors.QUERY_INVALID, message=f"page: {exc}") from None
    since_text = _filter("since")
    try:
        since = parse_time(since_text) if since_text else time.time() - DEFAULT_SINCE_SECONDS
    except ValueError:
        raise RegistryError(errors.QUERY_INVALID, message="since must be an ISO-8601 date-time "
                            "(2026-12-03T10:00:00Z)") from None
    events, next_page = await _query(audit, _filter("registry"), _filter("repository"),
                                     _filter("actor"), since, limit, page)
    return json_response({"events": events, "next": next_page})


async def _query(audit, registry, repository, actor, since, limit, page):
    import trio

    # File reads off the event loop: a page reads up to QUERY_SCAN_BYTES.
    return await trio.to_thread.run_sync(
        lambda: audit.query(registry, repository, actor, since, limit, page))
