"""TLS on every link, with real processes and a CA made by the test.

A root serving HTTPS (auth on) that skopeo and podman push to and pull from verifying it with
the CA, and refuse without it; HTTP/2 offered by ALPN; the certificate rotated under a running
node (SIGHUP and a change on disk) while an open connection carries on; an edge syncing from
the https root with `--parent-ca-file`, and refusing a root its CA did not sign with a message
that says so; the management CLI over https; bad certificate files refused at start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from connreg.testing.hierarchy import ADMIN_PASSWORD, Hierarchy, cli, wait_for
from connreg.testing.node import free_port, start_node
from connreg.testing.oci import OCI_MANIFEST, make_image, sha256, write_layout
from connreg.testing.tls import CertificateAuthority
from helpers import push_image

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
needs_podman = pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")
CREDS = f"admin:{ADMIN_PASSWORD}"
MiB = 1024 * 1024


class TlsRoot:
    def __init__(self, base: Path):
        self.ca = CertificateAuthority(base / "ca")
        self.server = self.ca.issue()
        # What skopeo/podman take as --cert-dir: a directory holding the CA as ca.crt, laid
        # out like /etc/containers/certs.d/HOST:PORT/.
        self.cert_dir = base / "certs.d"
        self.cert_dir.mkdir()
        shutil.copy(self.ca.ca_file, self.cert_dir / "ca.crt")
        self.h = Hierarchy(base)
        self.root = self.h.start_root(args=["--tls-cert", str(self.server.cert_file),
                                            "--tls-key", str(self.server.key_file)],
                                      ca_file=self.ca.ca_file)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.root.url, auth=self.root.admin, timeout=30,
                            verify=self.root.verify, **kwargs)

    def digest(self, repo: str, tag: str) -> str | None:
        with self.client() as c:
            r = c.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
            return r.headers.get("Docker-Content-Digest") if r.status_code == 200 else None


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    t = TlsRoot(tmp_path_factory.mktemp("tls"))
    yield t
    t.h.stop_all()


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc


def image_layout(tmp_path: Path, sizes: list[int]) -> tuple[Path, str]:
    image = make_image(sizes)
    src = tmp_path / "src"
    write_layout(src, image.blobs(), image.manifest, OCI_MANIFEST, "v1")
    return src, image.digest


@needs_skopeo
def test_skopeo_push_and_pull_verify_the_registry_with_its_ca(tls, tmp_path):
    src, digest = image_layout(tmp_path, [200_000, 30_000])
    host = tls.root.host
    run("skopeo", "--insecure-policy", "copy", "--dest-cert-dir", str(tls.cert_dir),
        "--dest-creds", CREDS, f"oci:{src}:v1", f"docker://{host}/tls/skopeo:v1")
    assert tls.digest("tls/skopeo", "v1") == digest
    out = tmp_path / "out"
    run("skopeo", "--insecure-policy", "copy", "--src-cert-dir", str(tls.cert_dir),
        "--src-creds", CREDS, f"docker://{host}/tls/skopeo:v1", f"oci:{out}:v1")
    assert (out / "blobs" / "sha256" / digest.removeprefix("sha256:")).exists()

    # Without the CA the registry's certificate is unknown: verification fails, nothing copied.
    refused = run("skopeo", "--insecure-policy", "copy", "--src-creds", CREDS,
                  f"docker://{host}/tls/skopeo:v1", f"oci:{tmp_path / 'refused'}:v1",
                  check=False)
    assert refused.returncode != 0
    assert "x509: certificate signed by unknown authority" in refused.stderr


@needs_podman
@needs_skopeo
def test_podman_pull_and_push_verify_the_registry_with_its_ca(tls, tmp_path):
    src, digest = image_layout(tmp_path, [100_000])
    host = tls.root.host
    run("skopeo", "--insecure-policy", "copy", "--dest-cert-dir", str(tls.cert_dir),
        "--dest-creds", CREDS, f"oci:{src}:v1", f"docker://{host}/tls/podman:v1")
    # Podman's own store for this test (vfs: no overlay mounts needed); podman refuses a
    # runroot path longer than 50 characters, so that one is a short temporary directory.
    with tempfile.TemporaryDirectory(prefix="podman-") as runroot:
        podman = ["podman", "--root", str(tmp_path / "storage"), "--runroot", runroot,
                  "--storage-driver", "vfs"]
        run(*podman, "pull", "--cert-dir", str(tls.cert_dir), "--creds", CREDS,
            f"{host}/tls/podman:v1")
        run(*podman, "push", "--cert-dir", str(tls.cert_dir), "--creds", CREDS,
            f"{host}/tls/podman:v1", f"docker://{host}/tls/podman-pushed:v1")
        refused = run(*podman, "pull", "--creds", CREDS, f"{host}/tls/podman:v1",
                      check=False)
    assert tls.digest("tls/podman-pushed", "v1") is not None
    assert refused.returncode != 0
    assert "x509: certificate signed by unknown authority" in refused.stderr


def test_http2_is_negotiated_and_serves_the_registry(tls):
    image = make_image([150_000])
    with tls.client(http2=True) as c:
        push_image(c, "tls/h2", image, "v1")
        r = c.get("/v2/tls/h2/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200 and r.content == image.manifest
        blob = c.get(f"/v2/tls/h2/blobs/{sha256(image.layers[0])}")
        assert blob.http_version == "HTTP/2" and blob.content == image.layers[0]
        # A streamed upload (PATCH without Content-Length) travels in HTTP/2 DATA frames.
        data = os.urandom(3 * MiB)
        started = c.post("/v2/tls/h2/blobs/uploads/")
        assert started.status_code == 202
        patched = c.patch(started.headers["Location"],
                          content=(data[i:i + MiB] for i in range(0, len(data), MiB)),
                          headers={"Content-Type": "application/octet-stream"})
        assert patched.status_code == 202 and patched.headers["Range"] == f"0-{len(data) - 1}"
        done = c.put(patched.headers["Location"], params={"digest": sha256(data)})
        assert done.status_code == 201 and done.http_version == "HTTP/2"
    with tls.client() as c:  # a client that offers only HTTP/1.1 still gets it
        assert c.get("/v2/").http_version == "HTTP/1.1"


def test_edge_syncs_over_https_verifying_the_root_with_parent_ca_file(tls, tmp_path):
    # The CLI reaches the https root too: Hierarchy's `cli` passes CONNREG_CA_FILE.
    tls.h.create("tlsedge", "ReadWrite", ["tls/sync/*"])
    edge = tls.h.start_child("tlsedge", parent_ca_file=tls.ca.ca_file)
    down = make_image([1_500_000, 20_000])  # over delta_threshold: chunk lists and batches
    with tls.client() as c:
        push_image(c, "tls/sync/down", down, "v1")
    up = make_image([30_000])
    with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=30) as c:
        push_image(c, "tls/sync/up", up, "v1")
        wait_for(lambda: c.head("/v2/tls/sync/down/manifests/v1",
                                headers={"Accept": OCI_MANIFEST}).headers.get(
                                    "Docker-Content-Digest") == down.digest,
                 60, message="root's push at the edge")
    wait_for(lambda: tls.digest("tls/sync/up", "v1") == up.digest, 60,
             message="edge's push at the root")

    # The same edge told to trust another CA: it still serves what it has (activated before),
    # and its sync says exactly why the parent is refused.
    other = CertificateAuthority(tmp_path / "other", name="another CA")
    edge.stop()
    edge.env["CONNREG_PARENT_CA_FILE"] = str(other.ca_file)
    start = len(edge.log())
    edge.start()
    refusal = (f"parent {tls.root.host} presented a certificate that does not verify against "
               f"{other.ca_file}: unable to get local issuer certificate")
    wait_for(lambda: f"parent unreachable (GET /connreg/v1/sync/" in edge.log()[start:] and
             refusal in edge.log()[start:], 60, message="the refusal in the edge's log")
    assert f"warning: parent {tls.root.host} unreachable ({refusal})" in edge.log()[start:]
    with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=30) as c:
        assert c.get("/v2/tls/sync/down/manifests/v1",
                     headers={"Accept": OCI_MANIFEST}).status_code == 200


def test_a_new_edge_refuses_a_root_its_ca_did_not_sign(tls, tmp_path):
    other = CertificateAuthority(tmp_path / "other", name="another CA")
    tls.h.create("tlsstranger", "ReadOnly", ["tls/sync/*"])
    with pytest.raises(RuntimeError) as failed:
        tls.h.start_child("tlsstranger", parent_ca_file=other.ca_file)
    assert "connreg exited with 3" in str(failed.value)
    assert (f"cannot reach parent {tls.root.host} to activate connected registry tlsstranger: "
            f"parent {tls.root.host} presented a certificate that does not verify against "
            f"{other.ca_file}: unable to get local issuer certificate") in str(failed.value)


def test_cli_takes_an_https_registry_and_a_ca_file(tls, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    env["CONNREG_CONFIG_DIR"] = str(tmp_path / "config")

    def connreg(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "connreg", *args], env=env, input=stdin,
                              capture_output=True, text=True, timeout=60)

    unverified = connreg("scope-map", "list", "--registry", tls.root.url, "-u", "admin",
                         "-p", ADMIN_PASSWORD)
    assert unverified.returncode == 1
    assert (f"registry {tls.root.url} presented a certificate that does not verify against "
            "the system trust store: unable to get local issuer certificate (pass --ca-file "
            "or set CONNREG_CA_FILE)") in unverified.stderr

    login = connreg("login", tls.root.url, "-u", "admin", "--password-stdin",
                    "--ca-file", str(tls.ca.ca_file), stdin=ADMIN_PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    listed = connreg("scope-map", "list", "--output", "json")  # CA file from the login
    assert listed.returncode == 0, listed.stderr

    missing = connreg("scope-map", "list", "--ca-file", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2
    assert f"--ca-file: CA file {tmp_path / 'nope.pem'} does not exist" in missing.stderr


def _served_serial(port: int, ca_file: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        return int(conn.getpeercert()["serialNumber"], 16)


def _healthz_on(conn: ssl.SSLSocket) -> bytes:
    """One keep-alive HTTP/1.1 request on an open TLS connection; the status line."""
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        assert piece, "the server closed the connection"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        piece = conn.recv(65536)
        assert piece, "the server closed the connection"
        body += piece
    return head.split(b"\r\n")[0]


def test_certificate_rotation_without_restart_keeps_open_connections(tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    served_cert, served_key = tmp_path / "served.crt", tmp_path / "served.key"

    def install(cert, key=None) -> None:
        """Replace the served files the way a renewal tool does (write aside, rename over)."""
        for source, target in ((cert.cert_file, served_cert),
                               ((key or cert).key_file, served_key)):
            shutil.copy(source, target.with_suffix(".new"))
            os.replace(target.with_suffix(".new"), target)

    first = ca.issue("first")
    install(first)
    node = start_node(tmp_path / "node", ca_file=ca.ca_file,
                      args=["--no-auth", "--tls-cert", str(served_cert),
                            "--tls-key", str(served_key)],
                      env={"CONNREG_TLS_RELOAD_CHECK_SECONDS": "0.3"})
    try:
        pid = node.proc.pid
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as held:
            assert _healthz_on(held) == b"HTTP/1.1 200 "
            assert int(held.getpeercert()["serialNumber"], 16) == first.serial

            second = ca.issue("second")
            install(second)
            node.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "TLS certificate reloaded (SIGHUP)" in node.log(), 30,
                     message="the SIGHUP reload")
            assert _served_serial(node.port, ca.ca_file) == second.serial
            # The connection opened before keeps its certificate and keeps working.
            assert _healthz_on(held) == b"HTTP/1.1 200 "
            assert int(held.getpeercert()["serialNumber"], 16) == first.serial

        third = ca.issue("third")
        seen = len(node.log())
        install(third)  # no signal: the change on disk is enough
        wait_for(lambda: _served_serial(node.port, ca.ca_file) == third.serial, 30,
                 message="the reload after the files changed")
        assert "TLS certificate reloaded (files changed)" in node.log()[seen:]

        # A broken rotation (a key that is not the certificate's) keeps the third certificate.
        seen = len(node.log())
        install(ca.issue("fourth"), key=first)
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificate reload (SIGHUP) failed, still serving the previous "
                 "certificate" in node.log()[seen:], 30, message="the failed reload")
        assert f"does not belong to the certificate in {served_cert}" in node.log()[seen:]
        assert _served_serial(node.port, ca.ca_file) == third.serial
        assert node.proc.poll() is None and node.proc.pid == pid
    finally:
        node.stop()


def test_serve_refuses_unusable_tls_settings_at_start(tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    one, two = ca.issue("one"), ca.issue("two")

    def serve(*args: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "connreg", "serve", "--data-dir", str(tmp_path / "data"),
             "--listen", f"127.0.0.1:{free_port()}", "--no-auth", *args],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")},
                 **(env or {})}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        return proc.stderr

    assert "--tls-cert is set but --tls-key is not" in serve("--tls-cert", str(one.cert_file))
    assert (f"TLS key file {two.key_file} does not belong to the certificate in "
            f"{one.cert_file}") in serve(env={"CONNREG_TLS_CERT": str(one.cert_file),
                                              "CONNREG_TLS_KEY": str(two.key_file)})
    missing = tmp_path / "missing.crt"
    assert f"cannot read TLS certificate file {missing}: No such file or directory" in \
        serve("--tls-cert", str(missing), "--tls-key", str(one.key_file))
    connection = ("ConnectedRegistryName=x;SyncTokenName=x-sync;SyncTokenPassword=p;"
                  "ParentGatewayEndpoint=127.0.0.1:1;ParentEndpointProtocol=https")
    assert f"parent_ca_file: CA file {missing} does not exist" in \
        serve("--connection-string", connection, "--parent-ca-file", str(missing))


def _login_cookies(node, password: str, headers: dict | None = None) -> str:
    """The Set-Cookie headers of the dashboard's login form and of a successful login, in a
    fresh client (no session yet)."""
    with httpx.Client(base_url=node.url, verify=node.verify, timeout=30) as client:
        page = client.get("/ui/login", headers=headers)
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        # Sent by hand: a Secure cookie would not go back over the test's plain http, as it
        # does from the browser through its https proxy.
        form_cookie = page.headers["set-cookie"].split(";", 1)[0]
        client.cookies.clear()
        r = client.post("/ui/login", headers={**(headers or {}), "Cookie": form_cookie},
                        data={"csrf": csrf, "username": "admin", "password": password})
    assert r.status_code == 303, r.text
    return page.headers["set-cookie"] + "\n" + r.headers["set-cookie"]


def test_dashboard_cookies_are_secure_over_tls_and_behind_a_tls_proxy(tls, tmp_path):
    cookies = _login_cookies(tls.root, tls.root.admin_password)
    assert cookies.count("Secure") == 2 and cookies.count("HttpOnly") == 2
    # Plain http: not Secure (a browser would drop the cookie), and a forged
    # X-Forwarded-Proto from a peer that is not a trusted proxy changes nothing.
    pw = "plain-admin-pw-1"
    plain = start_node(tmp_path / "plain", admin_password=pw)
    proxied = start_node(tmp_path / "proxied", admin_password=pw,
                         env={"CONNREG_TRUSTED_PROXIES": "127.0.0.1/32"})
    try:
        https = {"X-Forwarded-Proto": "https"}
        assert "Secure" not in _login_cookies(plain, pw)
        assert "Secure" not in _login_cookies(plain, pw, https)
        # Behind a trusted proxy that terminated TLS: Secure.
        assert _login_cookies(proxied, pw, https).count("Secure") == 2
        assert "Secure" not in _login_cookies(proxied, pw, {"X-Forwarded-Proto": "http"})
    finally:
        plain.stop()
        proxied.stop()
