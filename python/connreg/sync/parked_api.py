"""This node's parked outbox entries over HTTP (admin only), for `connreg sync parked`:

    GET  /connreg/v1/sync/parked          {"parked": [entry, …], "count": N}
    POST /connreg/v1/sync/parked/retry    {"seqs": [17, 18]} or {"all": true} → {"requeued": n}
    POST /connreg/v1/sync/parked/drop     {"seqs": [17, 18]} or {"all": true} → {"dropped": n}

Unlike the management API's resource endpoints (root only), these answer on connected
registries: the entries are the node's own. A retry wakes the running pusher at once.
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app

from connreg import errors
from connreg.api.http import json_response, read_json_body
from connreg.errors import RegistryError
from connreg.sync.parked import ParkedOutbox

bp = Blueprint("sync_parked", __name__, url_prefix="/connreg/v1/sync/parked")
MAX_LISTED = 10_000
# {"seqs": [...]} naming every listed entry fits easily.
MAX_SELECTION_BODY = 1024 * 1024


async def _admin() -> None:
    await current_app.extensions["authorizer"].require_node_admin("parked outbox entries")


def _outbox() -> ParkedOutbox:
    """The running pusher's (so a retry wakes it), else one over the metadata store."""
    service = current_app.extensions.get("sync")
    if service is not None:
        return service.pusher.parked
    return ParkedOutbox(current_app.extensions["registry"].meta)


async def _selection() -> list[int] | None:
    """The `seqs` the body names, or None for `"all": true`."""
    doc = await read_json_body(MAX_SELECTION_BODY, "selection")
    if isinstance(doc, dict) and doc.get("all") is True:
        return None
    seqs = doc.get("seqs") if isinstance(doc, dict) else None
    if not isinstance(seqs, list) or not seqs or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seqs):
        raise RegistryError(errors.INVALID_BODY, message='expected {"seqs": [<entry seq>, …]} '
                            'or {"all": true}')
    return seqs


@bp.route("", methods=["GET"])
async def list_parked() -> Response:
    await _admin()
    meta = current_app.extensions["registry"].meta
    entries = meta.parked_changes(limit=MAX_LISTED)
    return json_response({"parked": [e.to_json() for e in entries],
                          "count": meta.parked_count()})


@bp.route("/retry", methods=["POST"])
async def retry_parked() -> Response:
    await _admin()
    return json_response({"requeued": await _outbox().requeue(await _selection())})


@bp.route("/drop", methods=["POST"])
async def drop_parked() -> Response:
    await _admin()
    return json_response({"dropped": await _outbox().drop(await _selection())})
