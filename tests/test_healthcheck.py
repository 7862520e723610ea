"""`python -m connreg.healthcheck`, the container image's HEALTHCHECK: it finds the node from the
same CONNREG_* variables the node reads, over http or https, and says why when it fails."""

from __future__ import annotations

import os
import subprocess
import sys

from connreg.config import Settings
from connreg.healthcheck import probe_target
from connreg.testing import free_port
from connreg.testing.tls import CertificateAuthority


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    return subprocess.run([sys.executable, "-m", "connreg.healthcheck"], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_wildcard_listen_addresses_are_probed_over_loopback():
    assert probe_target(Settings(listen="0.0.0.0:5000")) == ("127.0.0.1", 5000, False)
    assert probe_target(Settings(listen="[::]:5001")) == ("::1", 5001, False)
    assert probe_target(Settings(listen="10.0.0.5:5002", tls_cert="c", tls_key="k")) == \
        ("10.0.0.5", 5002, True)


def test_healthy_node_over_http_and_a_closed_port(node):
    assert healthcheck({"CONNREG_LISTEN": node.host}).returncode == 0
    closed = healthcheck({"CONNREG_LISTEN": f"127.0.0.1:{free_port()}"})
    assert closed.returncode == 1
    assert closed.stderr.startswith("unhealthy: http://127.0.0.1:")


def test_https_node_is_probed_with_tls(hierarchy, tmp_path):
    ca = CertificateAuthority(tmp_path / "tls")
    server = ca.issue()
    root = hierarchy.start_root(args=["--tls-cert", str(server.cert_file),
                                      "--tls-key", str(server.key_file)], ca_file=ca.ca_file)
    tls_env = {"CONNREG_TLS_CERT": str(server.cert_file), "CONNREG_TLS_KEY": str(server.key_file)}
    assert healthcheck({"CONNREG_LISTEN": root.host, **tls_env}).returncode == 0
    # Without the TLS settings the check speaks http to an https port: unhealthy, not a hang.
    assert healthcheck({"CONNREG_LISTEN": root.host}).returncode == 1


def test_a_setting_that_does_not_parse_is_reported():
    bad = healthcheck({"CONNREG_LISTEN": "127.0.0.1:notaport"})
    assert bad.returncode == 1
    assert "unhealthy:" in bad.stderr
