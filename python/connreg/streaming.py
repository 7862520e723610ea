"""Request bodies with backpressure.

Quart's body buffer takes whatever the socket delivers, so a fast client pushing a large blob
to a slower disk would pile the blob up in memory. Here the ASGI reader waits while more than
`HIGH_WATER` bytes are buffered and unread; the pause propagates through Hypercorn's bounded
queue to TCP flow control, so memory per upload stays bounded.
"""

from __future__ import annotations

import trio
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import EventWrapper, TrioBody, TrioRequest

HIGH_WATER = 4 * 1024 * 1024
# A response sent before its request body was read (an early 4xx) must not leave the rest of
# that body on the connection: it would be parsed as the next request and the keep-alive
# connection would hang. Up to this much is read and dropped; past it, or past the deadline,
# the connection is closed instead. Large enough that a layer refused before it was read (507
# storage budget) still gets its answer to the client: a close with unread data sends a TCP
# reset, which can destroy the response in flight; the deadline bounds the cost.
MAX_DRAIN = 512 * 1024 * 1024
DRAIN_SECONDS = 10.0


class StreamingBody(TrioBody):
    def __init__(self, expected_content_length, max_content_length) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._drained = EventWrapper()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._drained.set()
        return data

    @property
    def complete(self) -> bool:
        return self._complete.is_set() and not self._data

    async def drain(self, limit: int) -> bool:
        """Read and drop what is left of the body; False if more than `limit` bytes remain."""
        if self._must_raise is not None:
            return False
        dropped = 0
        async for chunk in self:
            dropped += len(chunk)
            if dropped > limit:
                return False
        return True

    async def wait_for_room(self) -> None:
        while len(self._data) >= HIGH_WATER and self._must_raise is None:
            self._drained.clear()
            await self._drained.wait()


class StreamingRequest(TrioRequest):
    body_class = StreamingBody


class StreamingHTTPConnection(TrioASGIHTTPConnection):
    async def handle_messages(self, nursery: trio.Nursery, request, receive) -> None:  # type: ignore[override]
        while True:
            message = await receive()
            if message["type"] == "http.request":
                request.body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    request.body.set_complete()
                else:
                    await request.body.wait_for_room()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


    async def handle_request(self, nursery: trio.Nursery, request, send) -> None:  # type: ignore[override]
        response = await self.app.handle_request(request)
        body = request.body
        if not body.complete:
            drained = False
            with trio.move_on_after(DRAIN_SECONDS):
                drained = await body.drain(MAX_DRAIN)
            if not drained:
                response.headers["Connection"] = "close"
        timeout = response.timeout if response.timeout is not Ellipsis \
            else self.app.config["RESPONSE_TIMEOUT"]
        if timeout is not None:
            with trio.move_on_after(timeout):
                await self._send_response(send, response)
        else:
            await self._send_response(send, response)
        nursery.cancel_scope.cancel()


class StreamingQuart(QuartTrio):
    asgi_http_class = StreamingHTTPConnection
    request_class = StreamingRequest
