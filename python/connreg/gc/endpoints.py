"""Garbage collection of this node over HTTP, admin only, on every node (root and edges):

    POST /connreg/v1/gc   {"dryRun": bool, "gracePeriodSeconds": n, "untaggedRetentionSeconds": n}
                          (each optional, also as query parameters) → the run's report
    GET  /connreg/v1/gc   → the schedule, the settings in force, whether a run is in progress
                            and the last run's report

A run started while another is in progress waits for it, then runs.
"""

from __future__ import annotations

import logging
import math

from quart import Blueprint, Response, current_app, request

from connreg import errors
from connreg.api.http import json_response, read_json_body
from connreg.errors import RegistryError
from connreg.parsing import bounded_seconds
from connreg.gc.collector import GarbageCollector
from connreg.storage.interfaces import BlobGone

log = logging.getLogger("connreg.gc")
bp = Blueprint("gc", __name__, url_prefix="/connreg/v1/gc")
MAX_BODY = 64 * 1024
MAX_SECONDS = 100 * 365 * 24 * 3600.0  # a grace period or retention beyond a century is a typo


async def _admin() -> None:
    await current_app.extensions["authorizer"].require_node_admin("garbage collection")


def _invalid(message: str) -> RegistryError:
    return RegistryError(errors.INVALID_BODY, message=message)


async def _options() -> dict:
    """The body's options, with query parameters as a fallback (`?dryRun=true`)."""
    # size-limited before parsing, depth- and number-limited while parsing (413/400)
    doc = await read_json_body(MAX_BODY, empty_as={})
    if not isinstance(doc, dict):
        raise _invalid("request body must be a JSON object")
    for key in ("dryRun", "gracePeriodSeconds", "untaggedRetentionSeconds"):
        if key not in doc and key in request.args:
            doc[key] = request.args[key]
    return doc


def _flag(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise _invalid(f"{name} must be true or false")


def _seconds(value, name: str) -> float:
    if isinstance(value, str):  # from the query string: digits with an optional fraction
        return bounded_seconds(value, name, MAX_SECONDS, code=errors.INVALID_BODY)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise _invalid(f"{name} must be a number of seconds") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise _invalid(f"{name} must be a number of seconds from 0 to {MAX_SECONDS:g}")
    return seconds


def _collector() -> GarbageCollector:
    return current_app.extensions["gc"]


@bp.route("", methods=["POST"])
async def run() -> Response:
    await _admin()
    settings = current_app.config["CONNREG_SETTINGS"]
    doc = await _options()
    dry_run = _flag(doc.get("dryRun", False), "dryRun")
    grace = _seconds(doc.get("gracePeriodSeconds", settings.gc_grace_seconds),
                     "gracePeriodSeconds")
    retention = _seconds(doc.get("untaggedRetentionSeconds",
                                 settings.gc_untagged_retention_seconds),
                         "untaggedRetentionSeconds")
    report = await _collector().collect(grace, retention, dry_run=dry_run)
    return json_response(report.to_json())


@bp.route("", methods=["GET"])
async def status() -> Response:
    await _admin()
    settings = current_app.config["CONNREG_SETTINGS"]
    collector = _collector()
    last = collector.last_report
    return json_response({
        "schedule": current_app.extensions["gc_schedule"]() or None,
        "gracePeriodSeconds": settings.gc_grace_seconds,
        "untaggedRetentionSeconds": settings.gc_untagged_retention_seconds,
        "running": collector.running,
        "lastRun": last.to_json() if last else None,
    })


@bp.app_errorhandler(BlobGone)
async def blob_gone(exc: BlobGone) -> Response:
    """A push lost a race with the sweep (possible only for a blob unreferenced for longer than
    the grace period): nothing was written, and sending the blob again succeeds."""
    log.info("%s %s refused: blob %s was removed by garbage collection while it was stored",
             request.method, request.path, exc.digest)
    err = RegistryError(errors.BLOB_UPLOAD_INVALID, detail={"digest": exc.digest},
                        message=f"blob {exc.digest} was removed by garbage collection while "
                        "this request stored it; upload it again")
    return Response(err.body(), status=err.status, content_type="application/json")
