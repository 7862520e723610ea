"""Small HTTP helpers shared by the resource handlers."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator
from urllib.parse import urlencode

from quart import Response, request

from connreg import errors
from connreg.errors import RegistryError
from connreg.parsing import bounded_int, strict_json

MAX_PAGE = 10_000


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> Response:
    return Response(json.dumps(doc), status=status, headers=headers or {},
                    content_type=content_type)


def empty(status: int, headers: dict[str, str] | None = None) -> Response:
    resp = Response(b"", status=status, headers=headers or {})
    resp.headers["Content-Length"] = "0"
    return resp


def pagination() -> tuple[int | None, str | None]:
    """`n` and `last` query parameters (tags list, catalog)."""
    raw_n = request.args.get("n")
    n = None
    if raw_n is not None and raw_n != "":
        # any count a client may ask for, served in pages of at most MAX_PAGE
        n = min(bounded_int(raw_n, "n", code=errors.PAGINATION_NUMBER_INVALID), MAX_PAGE)
    return n, request.args.get("last")


def next_link(path: str, n: int, last: str) -> str:
    return f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'


def paginate(items_fetcher, path: str) -> tuple[list[str], dict[str, str]]:
    """Fetch one page plus one extra item to learn whether a `Link: rel=next` is due."""
    n, last = pagination()
    if n == 0:
        return [], {}
    limit = MAX_PAGE if n is None else n
    items = items_fetcher(limit + 1, last)
    headers = {}
    if len(items) > limit:
        items = items[:limit]
        headers["Link"] = next_link(path, limit, items[-1])
    return items, headers


class BodyLengthMismatch(Exception):
    """The body ran past, or ended short of, the length its request declared."""

    def __init__(self, received: int, expected: int, overflow: bool):
        super().__init__(f"received {received} bytes, expected {expected}")
        self.received, self.expected, self.overflow = received, expected, overflow


async def body_chunks(min_chunk: int = 1 << 20, exact: int | None = None) -> AsyncIterator[bytes]:
    """The request body re-buffered into chunks of at least `min_chunk` bytes.

    Bigger chunks mean fewer hops to a worker thread for hashing and writing. With `exact`
    (a length declared by Content-Range on a chunked-encoding body), every piece is counted as
    it arrives: the first byte past `exact` raises BodyLengthMismatch at once, and so does an
    end short of it; the last buffer is held back until the end is confirmed, so a body of at
    most `min_chunk` bytes is never handed on unless its length is exact.
    """
    buf = bytearray()
    received = 0
    async for part in request.body:
        received += len(part)
        if exact is not None and received > exact:
            raise BodyLengthMismatch(received, exact, overflow=True)
        buf += part
        if len(buf) >= min_chunk and (exact is None or received < exact):
            yield bytes(buf)
            buf.clear()
    if exact is not None and received != exact:
        raise BodyLengthMismatch(received, exact, overflow=False)
    if buf:
        yield bytes(buf)


async def read_body_limited(limit: int, too_large: errors.ErrorCode) -> bytes:
    """The whole body, or `too_large` once it passes `limit` (the rest is drained or the
    connection closed by streaming.py, so keep-alive stays in step)."""
    length = request.content_length
    if length is not None and length > limit:
        raise RegistryError(too_large, detail={"limit": limit, "size": length})
    buf = bytearray()
    async for part in request.body:
        buf += part
        if len(buf) > limit:
            raise RegistryError(too_large, detail={"limit": limit})
    return bytes(buf)


async def read_json_body(limit: int, what: str = "request body",
                         too_large: errors.ErrorCode = errors.BODY_TOO_LARGE,
                         invalid: errors.ErrorCode = errors.INVALID_BODY,
                         empty_as: Any = None) -> Any:
    """The request's JSON document, size-limited before parsing and depth-limited while
    parsing (parsing.strict_json); an empty body is `empty_as` when given, else refused."""
    body = await read_body_limited(limit, too_large)
    if empty_as is not None and not body.strip():
        return empty_as
    return strict_json(body, what, invalid)


def request_origin() -> str:
    """Who made this change, for the change log: a child's sync identity or a local client.

    The auth layer stores the child connected registry's name on the request when the caller
    authenticated with that child's sync token.
    """
    child = getattr(request, "sync_child", None)
    return f"child:{child}" if child else "local"
