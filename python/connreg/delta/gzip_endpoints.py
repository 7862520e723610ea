"""Parent side of gzip-layer delta, under /connreg/v1/sync/gzip (sync tokens or admin).

- `GET  ?repo=R&digest=D` → `{"digest","size","plainSize","reconSize","params","chunks":
  [[offset, length, blake3], …]}`: the chunk list of the layer's plaintext, once the layer is
  analysed (404 `NOT_FOUND` before that, or when it cannot be recreated exactly).
  202 `{"pending": true}` while the layer waits for its analysis (the child polls).
- `GET  /recon?repo=R&digest=D` → its reconstruction file (`rust/src/gzip/recon.rs`).
- `POST ?repo=R&digest=D` with `{"ranges": [[offset, length], …]}` → those plaintext ranges
  as a chunk batch frame (as `POST /connreg/v1/sync/chunks`), inflated from the stored layer.
Same rules as the chunk endpoints: the caller must be allowed to pull R, and D must be a blob
of R.
"""

from __future__ import annotations

import gzip
import json

import trio
from quart import Response, current_app, request

from connreg import _core, errors
from connreg.api.http import json_response, read_json_body
from connreg.delta.endpoints import (FRAME_TYPE, MAX_BATCH_BYTES, MAX_BATCH_CHUNKS,
                                     MAX_BATCH_REQUEST, _blob_for_caller, bp)
from connreg.errors import RegistryError
from connreg.sync.endpoints import TRAFFIC_BYTES

RECON_TYPE = "application/vnd.connreg.gzip-recon.v1"


def _layers():
    return current_app.extensions["registry"].chunk_index.gzip


def _analysed(digest: str) -> tuple[int, int]:
    found = _layers().analysed(digest)
    if found is None:
        raise RegistryError(errors.NOT_FOUND,
                            message=f"gzip layer {digest} is not analysed on this node")
    return found


@bp.route("/connreg/v1/sync/gzip", methods=["GET"])
async def gzip_layer() -> Response:
    child, digest, size = await _blob_for_caller()
    layers = _layers()
    if layers.analysed(digest) is None and layers.analysis_pending(digest):
        return json_response({"digest": digest, "pending": True}, status=202)
    plain_size, recon_size = _analysed(digest)
    chunks = await trio.to_thread.run_sync(layers.plain_chunks, digest)
    body = {"digest": digest, "size": size, "plainSize": plain_size, "reconSize": recon_size,
            "params": layers.key, "chunks": [list(c) for c in chunks]}
    data = json.dumps(body).encode()
    headers = {}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        # ~12,500 entries for a 200 MB tar: the hex ids halve when compressed
        data = await trio.to_thread.run_sync(gzip.compress, data, 6)
        headers["Content-Encoding"] = "gzip"
    if child:
        TRAFFIC_BYTES[child] += len(data)
    return Response(data, content_type="application/json", headers=headers)


@bp.route("/connreg/v1/sync/gzip/recon", methods=["GET"])
async def gzip_recon() -> Response:
    child, digest, _ = await _blob_for_caller()
    _analysed(digest)
    data = await trio.to_thread.run_sync(_layers().recon_path(digest).read_bytes)
    settings = current_app.config["CONNREG_SETTINGS"]
    if settings.test_corrupt_gzip_recon > 0 and len(data) > 64:
        settings.test_corrupt_gzip_recon -= 1  # test-only fault injection
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        data = bytes(flipped)
    if child:
        TRAFFIC_BYTES[child] += len(data)
    return Response(data, content_type=RECON_TYPE)


@bp.route("/connreg/v1/sync/gzip", methods=["POST"])
async def gzip_ranges() -> Response:
    child, digest, _ = await _blob_for_caller()
    plain_size, _ = _analysed(digest)
    doc = await read_json_body(MAX_BATCH_REQUEST, "plaintext batch request")
    ranges = doc.get("ranges") if isinstance(doc, dict) else None
    if not isinstance(ranges, list) or not ranges or len(ranges) > MAX_BATCH_CHUNKS:
        raise RegistryError(errors.INVALID_BODY,
                            message=f'expected {{"ranges": [[offset, length], …]}} with 1 to '
                                    f"{MAX_BATCH_CHUNKS} entries")
    items, total, last_end = [], 0, 0
    for entry in ranges:
        if (not isinstance(entry, list) or len(entry) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in entry)):
            raise RegistryError(errors.INVALID_BODY, message="each range is [offset, length]")
        offset, length = entry
        if offset < last_end or length <= 0 or offset + length > plain_size:
            raise RegistryError(errors.RANGE_INVALID,
                                message="ranges must be ascending, non-overlapping and inside "
                                        "the plaintext",
                                detail={"range": entry, "plainSize": plain_size})
        last_end = offset + length
        total += length
        items.append((offset, length))
    if total > MAX_BATCH_BYTES:
        raise RegistryError(errors.INVALID_BODY,
                            message=f"a batch holds at most {MAX_BATCH_BYTES} bytes")
    reg = current_app.extensions["registry"]
    level = current_app.config["CONNREG_SETTINGS"].zstd_level
    path = reg.blobs.path_for(digest)
    try:
        frame = await trio.to_thread.run_sync(_core.gunzip_frame, path, items, level)
    except _core.GzipError as exc:
        raise RegistryError(errors.NOT_FOUND, message=f"gzip layer {digest}: {exc}") from None
    if child:
        TRAFFIC_BYTES[child] += len(frame)
    return Response(frame, content_type=FRAME_TYPE)
