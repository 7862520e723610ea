"""GET/HEAD/DELETE /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import os
import re

import trio
from quart import Response, request

from connreg import errors
from connreg.api.http import empty
from connreg.errors import RegistryError
from connreg.references import check_digest
from connreg.registry import Registry

READ_CHUNK = 4 << 20
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str, size: int) -> tuple[int, int]:
    """One `bytes=a-b` / `a-` / `-n` range → inclusive (start, end), or 416."""
    m = _RANGE_RE.fullmatch(header.strip())
    bad = RegistryError(errors.RANGE_INVALID, detail={"range": header[:100], "size": size},
                        headers={"Content-Range": f"bytes */{size}"})
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise bad
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix range: the last n bytes
        n = int(last)
        if n == 0:
            raise bad
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        raise bad
    return start, end


def _require_blob(reg: Registry, name: str, digest: str) -> int:
    check_digest(digest)
    size = reg.meta.linked_blob_size(name, digest)
    if size is None or not reg.blobs.exists(digest):
        raise RegistryError(errors.BLOB_UNKNOWN, detail={"digest": digest})
    return size


async def _stream(path: str, start: int, length: int):
    fd = await trio.to_thread.run_sync(os.open, path, os.O_RDONLY)
    try:
        offset, end = start, start + length
        while offset < end:
            chunk = await trio.to_thread.run_sync(os.pread, fd, min(READ_CHUNK, end - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            yield chunk
    finally:
        os.close(fd)


async def get_blob(reg: Registry, name: str, digest: str, head: bool = False) -> Response:
    size = _require_blob(reg, name, digest)
    headers = {
        "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    status, start, length = 200, 0, size
    range_header = request.headers.get("Range")
    if range_header and size > 0:
        start, end = parse_range(range_header, size)
        length = end - start + 1
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(length)
    if head or length == 0:
        resp = Response(b"", status=status, headers=headers)
        resp.headers["Content-Length"] = str(length)
        return resp
    resp = Response(_stream(reg.blobs.path_for(digest), start, length), status=status,
                    headers=headers)
    resp.timeout = None  # large blobs over slow links take as long as they take
    return resp


async def delete_blob(reg: Registry, name: str, digest: str) -> Response:
    check_digest(digest)
    if not await reg.meta.unlink_blob(name, digest):
        raise RegistryError(errors.BLOB_UNKNOWN, detail={"digest": digest})
    # The bytes stay until garbage collection: other repositories may link the same digest.
    return empty(202)
