"""Parent side of upward delta transfer: a ReadWrite child pushes a large blob by chunks.

- `POST /connreg/v1/sync/chunks/known?repo=R` with `{"params": key, "ids": [blake3, …]}` →
  `{"known": [bool, …]}`: whether this node can copy each chunk from a blob linked into a
  repository the caller may pull (nothing about other repositories is revealed).
- `POST /connreg/v1/sync/chunks/near?repo=R` with `{"params": sub-key, "before": id|null,
  "after": id|null, "length": N, "ids": [blake3, …]}` → `{"anchor": id|null, "at": [delta|null,
  …]}`: refinement of a run of N bytes the child is about to send, whose neighbours are the
  chunks `before` and `after` (null: the run starts / ends the blob). This node cuts its old
  version of that run (the bytes between its copies of the neighbours) with the sub-chunk
  parameters and says where each sub-chunk is, relative to the anchor chunk (`before`, else
  `after`); the child then names those bytes with `ref` plan entries instead of sending them.
- `POST /connreg/v1/sync/uploads/<id>?repo=R&offset=N` with a plan frame (`plan.py`): append
  copied, referenced and literal chunks to the upload session `<id>` of R (opened with the ordinary
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
from connreg.api.uploads import discard_after_full, require_upload, session_headers
from connreg.delta import plan
from connreg.delta.endpoints import MIN_REFINE_AVG
from connreg.errors import RegistryError
from connreg.parsing import bounded_int, strict_json
from connreg.references import check_name
from connreg.storage.budget import StorageFull
from connreg.sync.endpoints import TRAFFIC_BYTES, sync_caller

bp = Blueprint("delta_up", __name__)
MAX_KNOWN_IDS = 20_000
MAX_KNOWN_BODY = 2 * 1024 * 1024
_CHUNK_ID_RE = re.compile(r"[0-9a-f]{64}")
# An old stretch much longer than the run is probably not its old version (and costs reading).
MAX_NEAR_OLD = 16 * 1024 * 1024
_PARAMS_RE = re.compile(r"fastcdc-blake3:([0-9]{1,10}):([0-9]{1,10}):([0-9]{1,10})")


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


async def _json_body(child: str | None) -> dict:
    """The request's JSON object (counted as the child's traffic); {} for another JSON value."""
    body = await read_body_limited(MAX_KNOWN_BODY, errors.BODY_TOO_LARGE)
    _count(child, len(body))
    doc = strict_json(body)  # malformed, too deep, or numbers out of range: 400 INVALID
    return doc if isinstance(doc, dict) else {}


@bp.route("/connreg/v1/sync/chunks/known", methods=["POST"])
async def known_chunks() -> Response:
    principal, child, repo = await _caller()
    doc = await _json_body(child)
    ids = doc.get("ids")
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


def _sub_params(key: object) -> _core.ChunkParams:
    """The sub-chunk parameters a `chunks/near` request names (fine ones only)."""
    m = _PARAMS_RE.fullmatch(key) if isinstance(key, str) else None
    params = None
    if m:
        try:
            params = _core.ChunkParams(*(int(g) for g in m.groups()))
        except _core.CoreError:
            pass
    if params is None or params.avg_size < MIN_REFINE_AVG:
        raise RegistryError(errors.CHUNK_PARAMS_MISMATCH,
                            detail={"params": str(key)[:100],
                                    "expected": "fastcdc-blake3:<min>:<avg>:<max> with avg a "
                                                f"power of two >= {MIN_REFINE_AVG}"})
    return params


def _chunk_id(value: object) -> bool:
    return value is None or isinstance(value, str) and bool(_CHUNK_ID_RE.fullmatch(value))


@bp.route("/connreg/v1/sync/chunks/near", methods=["POST"])
async def near_chunks() -> Response:
    principal, child, repo = await _caller()
    doc = await _json_body(child)
    ids, before, after, length = doc.get("ids"), doc.get("before"), doc.get("after"), \
        doc.get("length")
    if (not isinstance(ids, list) or len(ids) > MAX_KNOWN_IDS
            or not all(isinstance(i, str) and _CHUNK_ID_RE.fullmatch(i) for i in ids)
            or not _chunk_id(before) or not _chunk_id(after) or before is after is None
            or not isinstance(length, int) or isinstance(length, bool) or length <= 0):
        raise RegistryError(errors.INVALID_BODY,
                            message='expected {"params": "<key>", "before": <blake3 hex or '
                                    'null>, "after": <blake3 hex or null>, "length": <run '
                                    'bytes>, "ids": [<blake3 hex>, …]} with before or after '
                                    f"set and at most {MAX_KNOWN_IDS} ids")
    params = _sub_params(doc.get("params"))
    at = await _near(principal, params, before, after, length)
    anchor = (before or after) if at else None
    answer = {"anchor": anchor, "at": [at.get(i) for i in ids]}
    encoded = json.dumps(answer).encode()
    _count(child, len(encoded))
    return Response(encoded, content_type="application/json")


async def _near(principal, params: _core.ChunkParams, before: str | None, after: str | None,
                length: int) -> dict[str, int]:
    """Sub-chunk id → its offset minus the anchor's, over the old stretch between this node's
    copies of `before` and `after` in the anchor's blob; {} when there is no such stretch.
    The other neighbour is looked up in the anchor's own chunk list, so a chunk that several
    blobs hold cannot pair two unrelated blobs."""
    reg = current_app.extensions["registry"]
    index = reg.chunk_index
    anchor = before or after
    found = (await index.locate_readable([anchor], _reader(principal))).get(anchor)
    if found is None:
        return {}
    blob, anchor_offset, anchor_length = found
    if before is None:  # the run starts the blob: its old version too
        start, end = 0, anchor_offset
    else:
        start, end = anchor_offset + anchor_length, None
        if after is None:  # the run ends the blob
            end = reg.blobs.size(blob)
        else:
            for offset, _, chunk_id in index.chunks_of(blob) or []:
                if chunk_id == after and offset >= start:
                    end = offset
                    break
    if end is None or not 0 < end - start <= min(MAX_NEAR_OLD, 4 * length + (1 << 20)):
        return {}

    def cut() -> dict[str, int]:
        data = reg.blobs.read(blob, start, end - start)
        where: dict[str, int] = {}
        for offset, _, chunk_id in _core.chunk_bytes(data, params):
            where.setdefault(chunk_id, start + offset - anchor_offset)
        return where

    try:
        return await trio.to_thread.run_sync(cut)
    except _core.BlobNotFound:  # deleted since we looked (garbage collection)
        return {}


def _offset_arg() -> int:
    """`offset`, the session's size the plan continues from (required)."""
    return bounded_int(request.args.get("offset"), "offset", code=errors.BLOB_UPLOAD_INVALID)


def _decode(entries: list[plan.Data]) -> list[bytes]:
    """Each literal chunk's bytes, BLAKE3-verified, with at most MAX_LITERAL bytes in all
    (zstd payloads could otherwise expand a small body without bound)."""
    out, budget = [], plan.MAX_LITERAL
    for e in entries:
        ((_, data),) = _core.decode_chunks(e.entry, max(1, min(plan.MAX_CHUNK, budget)))
        budget -= len(data)
        out.append(data)
    return out


def _read_refs(blobs, refs: list[tuple[int, plan.Ref, tuple[str, int, int]]], budget: int
               ) -> list[bytes]:
    """Each ref's bytes from the anchor's blob, checked to lie inside it and to hash to the
    ref's id (read here, then written as read: what was verified is what gets appended)."""
    out = []
    for n, ref, (blob, anchor_offset, _) in refs:
        start = anchor_offset + ref.delta
        size = blobs.size(blob)
        if size is None or start < 0 or start + ref.length > size:
            raise RegistryError(errors.CHUNK_UNKNOWN,
                                detail={"entry": n, "anchor": ref.anchor, "delta": ref.delta,
                                        "length": ref.length},
                                message="a ref's range is outside the blob holding its anchor")
        budget -= ref.length
        if budget < 0:
            raise RegistryError(errors.INVALID_BODY, message="a plan reads at most "
                                f"{plan.MAX_LITERAL} literal and ref bytes")
        data = blobs.read(blob, start, ref.length)
        if _core.digest_bytes(data, "blake3") != "blake3:" + ref.chunk_id:
            raise RegistryError(errors.DIGEST_INVALID,
                                detail={"entry": n, "anchor": ref.anchor, "chunk": ref.chunk_id},
                                message="a ref's bytes at this node do not hash to its id")
        out.append(data)
    return out


def _apply(upload: _core.Upload, ops: list[tuple]) -> int:
    """Append every op in one worker-thread call: a cancelled request cannot stop it halfway.
    Consecutive copies go in one `copy_many` (pipelined hashing). What was appended is flushed
    (an S3 upload's state, so another replica continues), also before a failure propagates."""
    copies: list[tuple[str, int, int]] = []
    try:
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
    except _core.UploadNotFound:
        raise  # nothing left to flush
    except BaseException:
        upload.flush()
        raise
    upload.flush()
    return upload.size


@bp.route("/connreg/v1/sync/uploads/<upload_id>", methods=["POST"])
async def append_chunks(upload_id: str) -> Response:
    principal, child, repo = await _caller()
    reg = current_app.extensions["registry"]
    offset = _offset_arg()
    await require_upload(reg, repo, upload_id)  # fail fast, before reading the body
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
        [e.chunk_id if isinstance(e, plan.Copy) else e.anchor
         for e in entries if not isinstance(e, plan.Data)], _reader(principal))
    refs = []
    for n, e in enumerate(entries):
        if isinstance(e, plan.Ref):
            if e.anchor not in copies:
                raise RegistryError(errors.CHUNK_UNKNOWN, detail={"entry": n, "anchor": e.anchor},
                                    message="a ref's anchor chunk is unknown to this node")
            refs.append((n, e, copies[e.anchor]))
    try:
        referenced = await trio.to_thread.run_sync(
            _read_refs, reg.blobs, refs, plan.MAX_LITERAL - sum(len(d) for d in decoded))
    except _core.BlobNotFound:  # deleted since we looked (garbage collection)
        raise RegistryError(errors.CHUNK_UNKNOWN, message="a ref's blob disappeared")
    ops, data, ref_data = [], iter(decoded), iter(referenced)
    for n, e in enumerate(entries):
        if isinstance(e, plan.Data):
            ops.append(("write", next(data)))
            continue
        if isinstance(e, plan.Ref):
            ops.append(("write", next(ref_data)))
            continue
        found = copies.get(e.chunk_id)
        if found is None or found[2] != e.length:
            raise RegistryError(errors.CHUNK_UNKNOWN,
                                detail={"entry": n, "chunk": e.chunk_id, "length": e.length})
        ops.append(("copy", *found))
    async with reg.upload_lock(upload_id):
        upload = await require_upload(reg, repo, upload_id)
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
        except StorageFull as exc:  # the plan crossed the disk budget: session discarded, 507
            await discard_after_full(reg, upload_id, exc)
            raise
    return json_response({"size": size}, 202, headers=session_headers(repo, upload_id, size))


# The gzip-layer routes share this blueprint (delta/gzip_receive.py).
from connreg.delta import gzip_receive  # noqa: E402,F401
