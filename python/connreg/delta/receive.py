"""Parent side of upward delta transfer: a ReadWrite child pushes a large blob by chunks.

- `POST /connreg/v1/sync/chunks/known?repo=R` with `{"params": key, "ids": [blake3, …]}` →
  `{"known": [bool, …]}`: whether this node can copy each chunk from a blob linked into a
  repository the caller may pull (nothing about other repositories is revealed).
- `POST /connreg/v1/sync/uploads/<id>?repo=R&offset=N` with a plan frame (`plan.py`): append
  copied and literal chunks to the upload session `<id>` of R (opened with the ordinary
  `POST /v2/R/blobs/uploads/`, finished with the ordinary `PUT ?digest=`, which verifies the
  SHA-256). `offset` must be the session's size, so a resent or stale request changes nothing.
Both need a sync token (or the admin) allowed to push R. Every entry is verified before the
first byte is appended: a rejected request leaves the session exactly as it was.
"""

from __future__ import annotations

import json
import re

import trio
from quart import Blueprint, Response, current_app, request

from connreg import _core, errors
from connreg.api.http import json_response, read_body_limited
from connreg.api.uploads import require_upload, session_headers
from connreg.delta import plan
from connreg.errors import RegistryError
from connreg.references import check_name
from connreg.sync.endpoints import TRAFFIC_BYTES, sync_caller

bp = Blueprint("delta_up", __name__)
MAX_KNOWN_IDS = 20_000
MAX_KNOWN_BODY = 2 * 1024 * 1024
_CHUNK_ID_RE = re.compile(r"[0-9a-f]{64}")


async def _caller():
    """(principal, child, repo) of a sync request that may push `repo`."""
    if not current_app.config["CONNREG_SETTINGS"].delta:
        raise RegistryError(errors.NOT_FOUND, message="delta transfer is disabled on this node")
    principal, child = await sync_caller("message/write")
    repo = check_name(request.args.get("repo", ""))
    if principal is not None and not principal.can(repo, "push"):
        raise RegistryError(errors.DENIED, message=f"{principal.name} may not push {repo}")
    return principal, child, repo


def _reader(principal):
    """Which repositories' blobs may serve chunks to this caller (None: all)."""
    if principal is None or principal.perms.everything or principal.perms.read_everything:
        return None
    return lambda repo: principal.can(repo, "pull")


def _count(child: str | None, n: int) -> None:
    if child:
        TRAFFIC_BYTES[child] += n


@bp.route("/connreg/v1/sync/chunks/known", methods=["POST"])
async def known_chunks() -> Response:
    principal, child, repo = await _caller()
    body = await read_body_limited(MAX_KNOWN_BODY, errors.BODY_TOO_LARGE)
    _count(child, len(body))
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if (not isinstance(ids, list) or len(ids) > MAX_KNOWN_IDS
            or not all(isinstance(i, str) and _CHUNK_ID_RE.fullmatch(i) for i in ids)):
        raise RegistryError(errors.INVALID_BODY,
                            message=f'expected {{"params": "<key>", "ids": [<blake3 hex>, …]}} '
                                    f"with at most {MAX_KNOWN_IDS} ids")
    index = current_app.extensions["registry"].chunk_index
    if doc.get("params") != index.key:
        raise RegistryError(errors.CHUNK_PARAMS_MISMATCH,
                            detail={"params": str(doc.get("params"))[:100],
                                    "expected": index.key})
    found = await index.locate_readable(ids, _reader(principal))
    answer = {"known": [i in found for i in ids]}
    _count(child, len(json.dumps(answer)))
    return json_response(answer)


def _offset_arg() -> int:
    raw = request.args.get("offset", "")
    if not raw.isdigit() or len(raw) > 18:
        raise RegistryError(errors.BLOB_UPLOAD_INVALID, detail={"offset": raw[:50]},
                            message="offset query parameter (the session's size) required")
    return int(raw)


def _decode(entries: list[plan.Data]) -> list[bytes]:
    """Each literal chunk's bytes, BLAKE3-verified, with at most MAX_LITERAL bytes in all
    (zstd payloads could otherwise expand a small body without bound)."""
    out, budget = [], plan.MAX_LITERAL
    for e in entries:
        ((_, data),) = _core.decode_chunks(e.entry, max(1, min(plan.MAX_CHUNK, budget)))
        budget -= len(data)
        out.append(data)
    return out


def _apply(upload: _core.Upload, ops: list[tuple]) -> int:
    """Append every op in one worker-thread call: a cancelled request cannot stop it halfway.
    Consecutive copies go in one `copy_many` (pipelined hashing)."""
    copies: list[tuple[str, int, int]] = []
    for op in ops:
        if op[0] == "copy":
            copies.append(op[1:])
            continue
        if copies:
            upload.copy_many(copies)
            copies = []
        upload.write(op[1])
    if copies:
        upload.copy_many(copies)
    return upload.size


@bp.route("/connreg/v1/sync/uploads/<upload_id>", methods=["POST"])
async def append_chunks(upload_id: str) -> Response:
    principal, child, repo = await _caller()
    reg = current_app.extensions["registry"]
    offset = _offset_arg()
    require_upload(reg, repo, upload_id)  # fail fast, before reading the body
    body = await read_body_limited(plan.MAX_BODY, errors.BODY_TOO_LARGE)
    _count(child, len(body))
    try:
        entries = plan.parse(body)
    except plan.PlanError as exc:
        raise RegistryError(errors.INVALID_BODY, message=f"malformed chunk plan: {exc}")
    try:
        decoded = await trio.to_thread.run_sync(
            _decode, [e for e in entries if isinstance(e, plan.Data)])
    except _core.CorruptChunk as exc:
        raise RegistryError(errors.DIGEST_INVALID, detail={"chunk": str(exc)[:300]},
                            message="a literal chunk does not match its id (or does not "
                                    "decompress within the limits)")
    copies = await reg.chunk_index.locate_readable(
        [e.chunk_id for e in entries if isinstance(e, plan.Copy)], _reader(principal))
    ops, data = [], iter(decoded)
    for n, e in enumerate(entries):
        if isinstance(e, plan.Data):
            ops.append(("write", next(data)))
            continue
        found = copies.get(e.chunk_id)
        if found is None or found[2] != e.length:
            raise RegistryError(errors.CHUNK_UNKNOWN,
                                detail={"entry": n, "chunk": e.chunk_id, "length": e.length})
        ops.append(("copy", *found))
    async with reg.upload_lock(upload_id):
        upload = require_upload(reg, repo, upload_id)
        if offset != upload.size:
            raise RegistryError(errors.RANGE_INVALID,
                                detail={"offset": offset, "uploadSize": upload.size},
                                message=f"plan must start at offset {upload.size}",
                                headers=session_headers(repo, upload_id, upload.size))
        try:
            size = await trio.to_thread.run_sync(_apply, upload, ops)
        except _core.BlobNotFound:
            # A source blob was deleted (garbage collection) after we looked: what was appended
            # so far are whole chunks; the child continues from the size we report.
            raise RegistryError(errors.CHUNK_UNKNOWN, detail={"uploadSize": upload.size},
                                message="a copied chunk's blob disappeared; continue from "
                                        "uploadSize", headers=session_headers(
                                            repo, upload_id, upload.size))
        except _core.UploadNotFound:  # purged (upload TTL) while we were appending
            raise RegistryError(errors.BLOB_UPLOAD_UNKNOWN, detail={"uuid": upload_id[:200]})
    return json_response({"size": size}, 202, headers=session_headers(repo, upload_id, size))
