"""How a node's HTTP connections live and end: timeouts and header limits set on purpose
(docs/operations.md, "Connections"), and a fix for Hypercorn ending connections.

The fix: Hypercorn (issue pgjones/hypercorn#330, still open in 0.18.0) answers an HTTP/1.0
request, or one with `Connection: close`, with `Connection: close` and then leaves the socket
open until the client hangs up. Its h11 protocol does ask for the close at the right moment
(the response is done, h11's state is MUST_CLOSE), but it asks from the task that ran the
application: finishing the response reports the stream closed to the application, quart-trio
cancels that task at once, and the close (`TCPServer.protocol_send(Closed())` → `_close`:
`send_eof`, then `aclose`) starts with a checkpoint, so the cancellation aborts it before the
socket is touched. Nobody asks again. The same cancellation also aborts the restart of the
keep-alive timer after a kept-alive response (`protocol_send(Updated(idle=True))`), so an idle
connection was never closed either. Shielding those two connection-level steps from the
cancellation of the task that happens to request them is the whole fix; a deadline bounds them
(a TLS close_notify can block on a peer that does not read), after which the socket is closed
abruptly, so a close always happens.
"""

from __future__ import annotations

import json
import logging
import re
from itertools import chain
from importlib.metadata import version

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

from connreg.config import Settings

log = logging.getLogger("connreg.connections")

# The newest Hypercorn known to leave the socket open (#330 open upstream when this was
# written). A later release is left alone; tests/test_connections.py shows whether it behaves,
# and if it does not, this bound is raised.
_CLOSE_BUG_UP_TO = (0, 18, 0)
# A graceful close (TLS close_notify) gets this long before the socket is closed abruptly.
CLOSE_GRACE_SECONDS = 5.0


def configure(config: HypercornConfig, settings: Settings) -> None:
    """Set the connection limits (deliberately, not Hypercorn's defaults) and make sure a
    connection that should end does end."""
    # Idle time allowed between requests on a keep-alive connection. Hypercorn runs this same
    # timer from the moment a connection opens or goes idle until a request head is complete,
    # so it is also the deadline for a slowly dribbled head (slowloris).
    config.keep_alive_timeout = settings.keep_alive_timeout_seconds
    # Request line plus headers (h11 buffers an incomplete head up to this; more → 431 and
    # close), and the decoded header list of an HTTP/2 request.
    config.h11_max_incomplete_size = settings.max_request_head_bytes
    config.h2_max_header_list_size = settings.max_request_head_bytes
    # No per-read timeout: Hypercorn applies it to every read on the socket, also while a
    # response streams out (a large blob, a long poll) and the client rightly sends nothing,
    # which would cut those off. The timer above covers the stalled head.
    config.read_timeout = None
    _close_even_when_cancelled()
    _protocol_errors_as_oci_bodies()


def _installed_hypercorn() -> tuple[int, ...]:
    numbers = re.match(r"\d+(?:\.\d+)*", version("hypercorn"))
    return tuple(int(n) for n in numbers.group(0).split(".")) if numbers else ()


def _close_even_when_cancelled() -> None:
    """Shield Hypercorn's connection close and keep-alive timer updates from the cancellation
    of the task asking for them (module docstring); only on the versions known to need it, and
    only once per process."""
    if getattr(TCPServer.protocol_send, "connreg_shielded", False):
        return
    installed = _installed_hypercorn()
    if installed > _CLOSE_BUG_UP_TO:
        log.debug("hypercorn %s: connection handling left as it is", installed)
        return
    original_send, original_close = TCPServer.protocol_send, TCPServer._close

    async def _shielded(self: TCPServer, step) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_GRACE_SECONDS) as in_time:
                await step
            if in_time.cancelled_caught:
                await trio.aclose_forcefully(self.stream)

    async def protocol_send(self: TCPServer, event: Event) -> None:
        if isinstance(event, RawData):  # Hypercorn shields its sends itself, without deadline
            await original_send(self, event)
        else:  # Closed, Updated: connection state, not the application's business
            await _shielded(self, original_send(self, event))

    async def _close(self: TCPServer) -> None:
        await _shielded(self, original_close(self))

    protocol_send.connreg_shielded = True  # type: ignore[attr-defined]
    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]
    TCPServer._close = _close  # type: ignore[method-assign]


def _protocol_errors_as_oci_bodies() -> None:
    """A request h11 cannot parse (a malformed Content-Length, a head over the limit) is
    refused by Hypercorn before the app sees it, with an empty body; answer it with the OCI
    error body every other refusal has. The status and the close stay Hypercorn's."""
    if getattr(H11Protocol._send_error_response, "connreg_oci", False):
        return

    async def _send_error_response(self: H11Protocol, status_code: int) -> None:
        code = "SIZE_INVALID" if status_code == 431 else "INVALID"
        body = json.dumps({"errors": [{
            "code": code, "message": f"malformed HTTP request ({status_code}): the request line "
            "or a header (e.g. Content-Length) could not be parsed or is too large"}]}).encode()
        await self._send_h11_event(h11.Response(status_code=status_code, headers=list(chain(
            [(b"content-type", b"application/json"),
             (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
            self.config.response_headers("h11")))))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    _send_error_response.connreg_oci = True  # type: ignore[attr-defined]
    H11Protocol._send_error_response = _send_error_response  # type: ignore[method-assign]
