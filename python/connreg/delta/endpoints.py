"""Parent side of delta transfer, under /connreg/v1/sync/chunks (sync tokens or admin).

- `GET  ?repo=R&digest=D` → the blob's chunk list `{"digest","size","params","chunks":[[offset,
  length, blake3], …]}` (computed once, then served from the chunk index).
- `GET  ?repo=R&digest=D&offset=O&length=N&min=…&avg=…&max=…` → the list of finer chunks of
  that byte range (at most 8 MiB), cut with those parameters and not cached: a child refines a
  run of chunks it lacks into sub-chunks, most of which it holds in the old version.
- `POST ?repo=R&digest=D` with `{"ranges": [[offset, length], …]}` → those chunks as one frame
  (Rust `encode_chunks`: id, codec, length, payload per chunk; zstd where it shrinks the data).
The caller must be allowed to pull R, and D must be a blob of R: the same rule as a blob GET.
"""

from __future__ import annotations

import trio
from quart import Blueprint, Response, current_app, request

from connreg import _core, errors
from connreg.api.http import json_response, read_json_body
from connreg.delta.index import params_key
from connreg.errors import RegistryError
from connreg.parsing import bounded_int
from connreg.references import check_digest, check_name
from connreg.sync.endpoints import TRAFFIC_BYTES, sync_caller

bp = Blueprint("delta", __name__)
MAX_BATCH_CHUNKS = 256
MAX_BATCH_BYTES = 32 * 1024 * 1024
# A batch request names at most MAX_BATCH_CHUNKS [offset, length] pairs: a few KB.
MAX_BATCH_REQUEST = 64 * 1024
MAX_REFINE_BYTES = 8 * 1024 * 1024
MIN_REFINE_AVG = 1024
FRAME_TYPE = "application/vnd.connreg.chunks.v1"


async def _blob_for_caller() -> tuple[str, str, int]:
    if not current_app.config["CONNREG_SETTINGS"].delta:
        raise RegistryError(errors.NOT_FOUND, message="delta transfer is disabled on this node")
    principal, child = await sync_caller("message/read")
    repo = check_name(request.args.get("repo", ""))
    digest = check_digest(request.args.get("digest", ""))
    if principal is not None and not principal.can(repo, "pull"):
        raise RegistryError(errors.DENIED, message=f"{principal.name} may not pull {repo}")
    reg = current_app.extensions["registry"]
    size = reg.meta.linked_blob_size(repo, digest)
    # in a worker thread: on an S3 blob store (a scaled root) this is a request
    if size is None or not await trio.to_thread.run_sync(reg.blobs.exists, digest):
        raise RegistryError(errors.BLOB_UNKNOWN, detail={"digest": digest})
    return child, digest, size


@bp.route("/connreg/v1/sync/chunks", methods=["GET"])
async def chunk_list() -> Response:
    child, digest, size = await _blob_for_caller()
    if "offset" in request.args:
        return await _range_chunk_list(digest, size)
    index = current_app.extensions["registry"].chunk_index
    chunks = await index.ensure(digest)
    return json_response({"digest": digest, "size": size, "params": index.key,
                          "chunks": [list(c) for c in chunks]})


def _int_arg(name: str) -> int:
    return bounded_int(request.args.get(name), name)


async def _range_chunk_list(digest: str, size: int) -> Response:
    offset, length = _int_arg("offset"), _int_arg("length")
    if length == 0 or offset + length > size or length > MAX_REFINE_BYTES:
        raise RegistryError(errors.RANGE_INVALID, detail={"offset": offset, "length": length,
                                                          "size": size,
                                                          "maxLength": MAX_REFINE_BYTES})
    try:
        params = _core.ChunkParams(_int_arg("min"), _int_arg("avg"), _int_arg("max"))
    except _core.CoreError as exc:
        raise RegistryError(errors.INVALID_BODY, message=f"chunk parameters: {exc}") from None
    if params.avg_size < MIN_REFINE_AVG:
        raise RegistryError(errors.INVALID_BODY,
                            message=f"avg must be at least {MIN_REFINE_AVG} bytes")
    blobs = current_app.extensions["registry"].blobs

    def cut() -> list[tuple[int, int, str]]:
        data = blobs.read(digest, offset, length)
        return [(offset + o, n, cid) for o, n, cid in _core.chunk_bytes(data, params)]

    chunks = await trio.to_thread.run_sync(cut)
    return json_response({"digest": digest, "size": size, "params": params_key(params),
                          "offset": offset, "length": length,
                          "chunks": [list(c) for c in chunks]})


@bp.route("/connreg/v1/sync/chunks", methods=["POST"])
async def chunk_batch() -> Response:
    child, digest, size = await _blob_for_caller()
    doc = await read_json_body(MAX_BATCH_REQUEST, "chunk batch request")
    ranges = doc.get("ranges") if isinstance(doc, dict) else None
    if not isinstance(ranges, list) or not ranges or len(ranges) > MAX_BATCH_CHUNKS:
        raise RegistryError(errors.INVALID_BODY,
                            message=f'expected {{"ranges": [[offset, length], …]}} with 1 to '
                                    f"{MAX_BATCH_CHUNKS} entries")
    items, total = [], 0
    for entry in ranges:
        if (not isinstance(entry, list) or len(entry) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in entry)):
            raise RegistryError(errors.INVALID_BODY, message="each range is [offset, length]")
        offset, length = entry
        if offset < 0 or length <= 0 or offset + length > size:
            raise RegistryError(errors.RANGE_INVALID, detail={"range": entry, "size": size})
        total += length
        items.append((digest, offset, length))
    if total > MAX_BATCH_BYTES:
        raise RegistryError(errors.INVALID_BODY, message=f"a batch holds at most "
                                                         f"{MAX_BATCH_BYTES} bytes")
    reg = current_app.extensions["registry"]
    level = current_app.config["CONNREG_SETTINGS"].zstd_level
    frame = await trio.to_thread.run_sync(_core.encode_chunks, reg.blobs.unbudgeted, items,
                                          level)
    frame = _maybe_corrupt(frame)
    if child:
        TRAFFIC_BYTES[child] += len(frame)
    return Response(frame, content_type=FRAME_TYPE)


def _maybe_corrupt(frame: bytes) -> bytes:
    """Test-only fault injection (`test_corrupt_chunk_batches`): flip one payload byte."""
    settings = current_app.config["CONNREG_SETTINGS"]
    if settings.test_corrupt_chunk_batches > 0 and len(frame) > 40:
        settings.test_corrupt_chunk_batches -= 1
        data = bytearray(frame)
        data[-1] ^= 0xFF
        return bytes(data)
    return frame


# The gzip-layer routes share this blueprint (delta/gzip_endpoints.py).
from connreg.delta import gzip_endpoints  # noqa: E402,F401
