"""Parent side of sync, under /connreg/v1/sync/: change feed, config documents, status intake.

A child reads `GET /connreg/v1/sync/changes?cursor=N&wait=S`: the changes after its cursor to
repositories its sync token may pull, waiting up to S seconds for one to appear (long-poll, so
continuous mode propagates in about a round trip). The answer's `cursor` is where to continue;
`expired: true` means entries after the child's cursor were pruned (older than the message TTL)
and the child must reconcile fully, then continue from `head`.
"""

from __future__ import annotations

import time
from collections import Counter

import trio

from quart import Blueprint, Response, current_app, request

from connreg import errors
from connreg.api.http import json_response, read_json_body
from connreg.audit import forward as audit_forward
from connreg.errors import RegistryError
from connreg.parsing import INT64_MAX, bounded_int, bounded_seconds
from connreg.sync.control_sync import config_version, record_statuses, subtree_documents

bp = Blueprint("sync_feed", __name__)
# Requests per child connected registry since this process started (sync API and /v2/):
# lets operators and tests see that a node outside its window leaves its parent alone.
TRAFFIC: Counter[str] = Counter()
# Body bytes exchanged with each child (both directions, headers excluded).
TRAFFIC_BYTES: Counter[str] = Counter()
SYNC_TOKEN_SUFFIX = "-sync-token"
MAX_WAIT = 30.0
MAX_LIMIT = 1000
# A status report carries one entry per registry of the subtree: a few KB each at most.
MAX_STATUS_BODY = 8 * 1024 * 1024


def sync_child(principal) -> str | None:
    """The connected registry whose sync token `principal` authenticated with, if any."""
    if principal is not None and principal.kind == "token" and principal.name.endswith(SYNC_TOKEN_SUFFIX):
        return principal.name[: -len(SYNC_TOKEN_SUFFIX)]
    return None


async def sync_caller(verb: str):
    """Authenticate a sync request: the admin, or a sync token with the gateway action."""
    authz = current_app.extensions["authorizer"]
    if not authz.enabled:
        return None, None
    principal = await authz.caller()
    if principal is None:
        raise authz.unauthorized()
    child = sync_child(principal)
    if child:
        TRAFFIC[child] += 1
    if principal.perms.everything:
        return principal, child
    if child is None or not principal.perms.allows_gateway(child, verb):
        raise RegistryError(errors.DENIED, message=f"{principal.name} may not use the sync API")
    return principal, child


def _query_int(name: str, default: int, low: int, high: int = INT64_MAX) -> int:
    raw = request.args.get(name)
    return default if raw is None else bounded_int(raw, name, low, high)


@bp.route("/connreg/v1/sync/changes", methods=["GET"])
async def changes() -> Response:
    principal, child = await sync_caller("message/read")
    reg = current_app.extensions["registry"]
    cursor = _query_int("cursor", 0, 0)
    limit = min(_query_int("limit", 500, 1), MAX_LIMIT)  # larger asks get full pages
    raw_wait = request.args.get("wait")
    # A child may ask to wait longer than this node holds a request: it gets MAX_WAIT.
    wait = 0.0 if raw_wait is None else min(bounded_seconds(raw_wait, "wait", 24 * 3600),
                                            MAX_WAIT)
    first, head = reg.meta.change_bounds()
    if request.args.get("peek"):  # where the feed ends now (a reconciliation resumes there)
        return json_response({"changes": [], "cursor": head, "head": head, "expired": False})
    expired = cursor + 1 < first and cursor < head
    if cursor > head:  # a cursor from the future: this node's log was reset; start over
        expired = True
    if expired:
        return json_response({"changes": [], "cursor": head, "head": head, "expired": True})
    control = current_app.extensions["control"]

    def config() -> str | None:
        return config_version(control.store, child) if child else None

    known_config = request.args.get("config")
    if wait and head <= cursor:
        # Wake on a new change, or when the child's configuration changed at this node.
        deadline = trio.current_time() + wait
        while trio.current_time() < deadline and (known_config is None
                                                  or config() == known_config):
            await reg.meta.wait_for_change(cursor, min(1.0, deadline - trio.current_time()))
            if reg.meta.change_bounds()[1] > cursor:
                break
    own_origin = f"child:{child}" if child else None
    visible = []
    batch = reg.meta.changes_since(cursor, limit)
    for change in batch:
        if change.origin == own_origin:
            continue  # the child made this change itself
        if principal is not None and not principal.perms.can_pull(change.repo):
            continue  # outside the child's repository set: the parent refuses, not the child
        visible.append(change.to_json())
    next_cursor = batch[-1].seq if batch else cursor
    return json_response({"changes": visible, "cursor": next_cursor,
                          "head": reg.meta.change_bounds()[1], "expired": False,
                          "config": config(), "time": time.time()})


@bp.route("/connreg/v1/sync/config", methods=["GET"])
async def config() -> Response:
    """The caller's subtree of control documents (its own CR first)."""
    principal, child = await sync_caller("config/read")
    control = current_app.extensions["control"]
    name = child or request.args.get("name")
    if not name:
        raise RegistryError(errors.NAME_UNKNOWN, message="which connected registry? (?name=)")
    return json_response({**subtree_documents(control.store, name),
                          "version": config_version(control.store, name)})


@bp.route("/connreg/v1/sync/status", methods=["POST"])
async def status() -> Response:
    """A child reports its state and relays its descendants'; stored on our copy."""
    principal, child = await sync_caller("config/write")
    doc = await read_json_body(MAX_STATUS_BODY, "status report")
    if (not isinstance(doc, dict) or not isinstance(doc.get("registries"), list)
            or not all(isinstance(entry, dict) for entry in doc["registries"])):
        raise RegistryError(errors.INVALID_BODY, message='expected {"registries": [...]}')
    control = current_app.extensions["control"]

    def allowed(name: str) -> bool:
        return principal is None or principal.perms.allows_gateway(name, "config/write")

    stored = await record_statuses(control.store, doc["registries"], allowed, child)
    answer: dict = {"recorded": stored}
    audit = current_app.extensions.get("audit")
    if "audit" in doc and audit is not None:  # the child's audit events (audit/forward.py)
        answer["audit"] = await audit_forward.receive(
            audit, current_app.extensions["registry"].meta, doc["audit"], child, allowed)
    return json_response(answer)


@bp.route("/connreg/v1/sync/traffic", methods=["GET"])
async def traffic() -> Response:
    """Requests seen from each child since start (admin only)."""
    principal, _ = await sync_caller("config/read")
    if principal is not None and not principal.perms.everything:
        raise RegistryError(errors.DENIED, message="only the admin may read sync traffic")
    return json_response({"requests": dict(TRAFFIC), "bytes": dict(TRAFFIC_BYTES)})
