"""GET/HEAD/DELETE /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import os
import re

import trio
from quart import Response, request
from quart.wrappers.response import ResponseBody

from connreg import _core, errors
from connreg.api.http import empty
from connreg.errors import RegistryError
from connreg.parsing import bounded_int
from connreg.references import check_digest
from connreg.registry import Registry

READ_CHUNK = 4 << 20
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


def parse_range(header: str, size: int) -> tuple[int, int]:
    """One `bytes=a-b` / `a-` / `-n` range → inclusive (start, end), or 416."""
    m = _RANGE_RE.fullmatch(header.strip())
    detail = {"range": header[:100], "size": size}
    unsatisfiable = {"Content-Range": f"bytes */{size}"}
    bad = RegistryError(errors.RANGE_INVALID, detail=detail, headers=unsatisfiable)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise bad

    def number(text: str, what: str) -> int:
        return bounded_int(text, what, code=errors.RANGE_INVALID, headers=unsatisfiable)

    first, last = m.group(1), m.group(2)
    if first == "":  # suffix range: the last n bytes
        n = number(last, "range suffix length")
        if n == 0:
            raise bad
        return max(0, size - n), size - 1
    start = number(first, "range start")
    end = size - 1 if last == "" else min(number(last, "range end"), size - 1)
    if start >= size or end < start:
        raise bad
    return start, end


async def _require_blob(reg: Registry, name: str, digest: str) -> int:
    check_digest(digest)
    size = reg.meta.linked_blob_size(name, digest)
    # in a worker thread: on S3 this is a request to the store
    if size is None or not await trio.to_thread.run_sync(reg.blobs.exists, digest):
        raise RegistryError(errors.BLOB_UNKNOWN, detail={"digest": digest})
    return size


def _has_local_files(reg: Registry) -> bool:
    """Whether blobs are files this process can open (the filesystem store), rather than
    objects read through the store (S3)."""
    return isinstance(getattr(reg.blobs, "unbudgeted", reg.blobs), _core.BlobStore)


async def blob_redirect_url(reg: Registry, digest: str) -> str | None:
    """Where to send a client for the blob's bytes instead of serving them (`blob_redirect`):
    a presigned GET URL of the object on an S3 store, valid `blob_redirect_seconds`; None
    when redirects are off or the store cannot sign URLs (the filesystem store)."""
    presign = getattr(reg.blobs, "presigned_url", None)
    if not reg.settings.blob_redirect or presign is None:
        return None
    seconds = min(max(reg.settings.blob_redirect_seconds, 1), 7 * 24 * 3600)
    return await trio.to_thread.run_sync(presign, digest, float(seconds))


class _BlobBody(ResponseBody):
    """A blob's bytes as a response body, read one piece ahead.

    The next piece is read on a worker thread while the current one is being sent, so file
    reads overlap socket writes. The read-ahead task lives in a nursery opened and closed around
    Quart's `async with body: async for …` loop, so it ends with the response, whether the
    client read everything or went away.
    """

    def __init__(self, path: str, start: int, length: int):
        self.path, self.start, self.length = path, start, length

    async def _open(self) -> None:
        self._fd = await trio.to_thread.run_sync(os.open, self.path, os.O_RDONLY)

    async def _read(self, offset: int, n: int) -> bytes:
        return await trio.to_thread.run_sync(os.pread, self._fd, n, offset)

    def _close(self) -> None:
        os.close(self._fd)

    async def __aenter__(self) -> "_BlobBody":
        await self._open()
        self._nursery_manager = trio.open_nursery()
        nursery = await self._nursery_manager.__aenter__()
        send, self._pieces = trio.open_memory_channel[bytes](1)
        nursery.start_soon(self._read_ahead, send)
        self._cancel = nursery.cancel_scope
        return self

    async def _read_ahead(self, send: trio.MemorySendChannel[bytes]) -> None:
        async with send:
            offset, end = self.start, self.start + self.length
            while offset < end:
                piece = await self._read(offset, min(READ_CHUNK, end - offset))
                if not piece:
                    return
                offset += len(piece)
                await send.send(piece)

    def __aiter__(self):
        return self._pieces.__aiter__()

    async def __aexit__(self, exc_type, exc_value, tb) -> None:
        # Done, or the client went away: stop reading ahead. The nursery is told the body
        # ended normally so that an exception from the send loop reaches Quart as it was,
        # not wrapped in an ExceptionGroup.
        self._cancel.cancel()
        try:
            await self._nursery_manager.__aexit__(None, None, None)
        finally:
            self._close()


class _StoreBlobBody(_BlobBody):
    """The same, for a store without local files (S3): each piece is a ranged read through
    the store, in a worker thread."""

    def __init__(self, blobs, digest: str, start: int, length: int):
        super().__init__("", start, length)
        self.blobs, self.digest = blobs, digest

    async def _open(self) -> None:
        pass

    async def _read(self, offset: int, n: int) -> bytes:
        return await trio.to_thread.run_sync(self.blobs.read, self.digest, offset, n)

    def _close(self) -> None:
        pass


async def get_blob(reg: Registry, name: str, digest: str, head: bool = False) -> Response:
    size = await _require_blob(reg, name, digest)
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
    redirect = await blob_redirect_url(reg, digest)
    if redirect is not None:  # the client fetches (its Range too) from the store itself
        return Response(b"", status=307, headers={"Location": redirect,
                                                  "Docker-Content-Digest": digest})
    if _has_local_files(reg):
        body = _BlobBody(reg.blobs.path_for(digest), start, length)
    else:
        body = _StoreBlobBody(reg.blobs, digest, start, length)
    resp = Response(body, status=status, headers=headers)
    resp.timeout = None  # large blobs over slow links take as long as they take
    return resp


async def delete_blob(reg: Registry, name: str, digest: str) -> Response:
    check_digest(digest)
    if not await reg.meta.unlink_blob(name, digest):
        raise RegistryError(errors.BLOB_UNKNOWN, detail={"digest": digest})
    # The bytes stay until garbage collection: other repositories may link the same digest.
    return empty(202)
