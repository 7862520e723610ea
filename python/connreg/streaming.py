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


class StreamingBody(TrioBody):
    def __init__(self, expected_content_length, max_content_length) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._drained = EventWrapper()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._drained.set()
        return data

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


class StreamingQuart(QuartTrio):
    asgi_http_class = StreamingHTTPConnection
    request_class = StreamingRequest
