"""Connections end when they should (Hypercorn #330 worked around in connreg/connections.py),
and the head limits and timeouts hold (docs/operations.md, "Connections"). Raw sockets against
real `connreg serve` processes."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time

import httpx
import pytest

from connreg.testing import start_node
from connreg.testing.hierarchy import wait_for
from connreg.testing.oci import OCI_MANIFEST, make_image
from connreg.testing.tls import CertificateAuthority
from helpers import push_image

OPEN = ["--no-auth"]
# Generous: the machine is shared; a server that leaves the socket open never answers EOF.
CLOSE_WITHIN = 20.0
SHORT_KEEP_ALIVE = 2


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = start_node(tmp_path_factory.mktemp("conn") / "node", args=OPEN)
    yield n
    n.stop()


@pytest.fixture(scope="module")
def short_node(tmp_path_factory):
    """A node whose keep-alive timer (idle and request-head deadline) is 2 s."""
    n = start_node(tmp_path_factory.mktemp("conn-short") / "node", args=OPEN,
                   env={"CONNREG_KEEP_ALIVE_TIMEOUT_SECONDS": str(SHORT_KEEP_ALIVE)})
    yield n
    n.stop()


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory):
    """A node serving TLS: its close (a TLS close_notify first) runs under the same shield."""
    base = tmp_path_factory.mktemp("conn-tls")
    ca = CertificateAuthority(base / "ca")
    server = ca.issue()
    n = start_node(base / "node", ca_file=ca.ca_file,
                   args=[*OPEN, "--tls-cert", str(server.cert_file),
                         "--tls-key", str(server.key_file)])
    yield n
    n.stop()


def connect(node) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", node.port), timeout=CLOSE_WITHIN)
    if node.ca_file:
        context = ssl.create_default_context(cafile=str(node.ca_file))
        context.set_alpn_protocols(["http/1.1"])
        s = context.wrap_socket(s, server_hostname="127.0.0.1")
    s.settimeout(CLOSE_WITHIN)
    return s


def read_response(s: socket.socket, buffered: bytearray) -> tuple[int, dict, bytes]:
    """One complete response (status, lower-cased headers, body) from the socket."""
    while b"\r\n\r\n" not in buffered:
        data = s.recv(65536)
        assert data, f"connection closed before a complete response head: {bytes(buffered)!r}"
        buffered += data
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = s.recv(65536)
        assert data, "connection closed inside a response body"
        rest += data
    buffered[:] = rest[length:]
    return status, headers, rest[:length]


def closed_by_server(s: socket.socket, timeout: float = CLOSE_WITHIN) -> bool:
    """True when the server ends the connection (EOF or reset) within `timeout`; False when
    the socket is still open then. Anything else arriving is a protocol error."""
    s.settimeout(timeout)
    try:
        data = s.recv(65536)
    except socket.timeout:
        return False
    except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return True
    assert data == b"", f"unexpected bytes after the response: {data[:200]!r}"
    return True


def exchange(node, request: bytes) -> tuple[int, dict, bytes, socket.socket]:
    s = connect(node)
    s.sendall(request)
    status, headers, body = read_response(s, bytearray())
    return status, headers, body, s


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"GET /v2/ HTTP/1.0\r\n\r\n", id="http1.0"),
    pytest.param(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                 id="http1.1-close"),
    pytest.param(b"GET /v2/nothing/here/manifests/latest HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n", id="http1.1-close-404"),
])
def test_close_requested_closes_the_socket(node, request_bytes):
    status, headers, _, s = exchange(node, request_bytes)
    with s:
        assert status in (200, 404)
        assert headers.get("connection", "").lower() == "close"
        assert closed_by_server(s), "the server answered Connection: close but kept the socket"


def test_close_requested_over_tls_closes_the_socket(tls_node):
    for request in (b"GET /v2/ HTTP/1.0\r\n\r\n",
                    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
        status, headers, _, s = exchange(tls_node, request)
        with s:
            assert status == 200 and headers.get("connection", "").lower() == "close"
            assert closed_by_server(s), f"TLS socket left open after {request!r}"
    s = connect(tls_node)
    with s:
        buffered = bytearray()
        for _ in range(2):
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s, buffered)[0] == 200


def test_manifest_read_by_the_fast_path_closes_too(node):
    """Plain manifest GETs are answered in front of Quart (api/fast_reads.py)."""
    image = make_image([1000])
    with httpx.Client(base_url=node.url, timeout=30) as c:
        push_image(c, "conn/fast", image, "v1")
    for version, extra in (("1.0", b""), ("1.1", b"Host: x\r\nConnection: close\r\n")):
        request = (f"GET /v2/conn/fast/manifests/v1 HTTP/{version}\r\n".encode() + extra
                   + f"Accept: {OCI_MANIFEST}\r\n\r\n".encode())
        status, headers, body, s = exchange(node, request)
        with s:
            assert status == 200 and body == image.manifest
            assert closed_by_server(s), f"HTTP/{version} manifest GET left the socket open"


def test_http11_keep_alive_serves_a_second_request(node):
    s = connect(node)
    with s:
        buffered = bytearray()
        for _ in range(2):
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_response(s, buffered)
            assert status == 200
            assert headers.get("connection", "").lower() != "close"
        assert not closed_by_server(s, timeout=0.5), "keep-alive connection closed early"


def test_http10_keep_alive_is_answered_with_close(node):
    """Documented: HTTP/1.0 keep-alive is not offered (h11 speaks HTTP/1.0 without it); the
    answer says Connection: close and the socket is closed."""
    status, headers, _, s = exchange(
        node, b"GET /v2/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    with s:
        assert status == 200
        assert headers.get("connection", "").lower() == "close"
        assert closed_by_server(s)


def _server_sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            pass
    return count


def test_500_close_requests_leave_no_socket_open_at_the_server(node):
    pid = node.proc.pid
    baseline = _server_sockets(pid)
    clients = []
    try:
        for i in range(500):
            request = (b"GET /v2/ HTTP/1.0\r\n\r\n" if i % 2 else
                       b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, _, s = exchange(node, request)
            clients.append(s)  # kept open by us: only the server's close can free its side
            assert status == 200
            assert closed_by_server(s), f"request {i}: socket left open by the server"
        wait_for(lambda: _server_sockets(pid) <= baseline, timeout=30,
                 message=f"server sockets back to {baseline} "
                         f"(now {_server_sockets(pid)})")
    finally:
        for s in clients:
            s.close()


def _alive(node) -> None:
    assert httpx.get(f"{node.url}/healthz", timeout=30).status_code == 200


def test_head_within_the_limit_is_served(node):
    status, _, _, s = exchange(
        node, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 32 * 1024 + b"\r\n\r\n")
    s.close()
    assert status == 200


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200_000 + b"\r\n\r\n",
                 id="header"),
    pytest.param(b"GET /v2/" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                 id="request-line"),
])
def test_oversized_head_gets_431_or_close(node, request_bytes):
    s = connect(node)
    with s:
        try:
            s.sendall(request_bytes)
            answer = bytearray()
            while True:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, BrokenPipeError):
            answer = bytearray()  # closed while we were still sending: refused as well
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), bytes(answer[:200])
    _alive(node)


def test_stalled_request_head_is_closed(short_node):
    """Slowloris: a head dribbled a header at a time is cut at the keep-alive deadline."""
    s = connect(short_node)
    with s:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < CLOSE_WITHIN + SHORT_KEEP_ALIVE:
            try:
                s.sendall(b"X-Slow: a\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(s, timeout=0.2):
                closed = True
                break
        assert closed, "a request head still incomplete after the deadline kept its socket"
    _alive(short_node)


def test_idle_keep_alive_connection_is_closed(short_node):
    status, _, _, s = exchange(short_node, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    with s:
        assert status == 200
        assert closed_by_server(s, timeout=CLOSE_WITHIN + SHORT_KEEP_ALIVE)


@pytest.mark.parametrize("length", ["9" * 4301, "-1", "1e3", "\u0661\u0662", "12, 13"])
def test_unparseable_content_length_gets_an_oci_error_body(node, length):
    """h11 refuses these before the app runs; the answer still carries an OCI error body."""
    head = (f"PATCH /v2/x/blobs/uploads/abc HTTP/1.1\r\nHost: a\r\n"
            f"Content-Length: {length}\r\n\r\n").encode("utf-8")
    status, headers, body, s = exchange(node, head + b"zz")
    s.close()
    assert status == 400, (status, body[:200])
    assert headers.get("content-type") == "application/json"
    error = json.loads(body)["errors"][0]
    assert error["code"] == "INVALID" and "could not be parsed" in error["message"]
    _alive(node)
