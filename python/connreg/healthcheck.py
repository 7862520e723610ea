"""`python3 -m connreg.healthcheck`: exit 0 when the node configured by the environment
(CONNREG_LISTEN, CONNREG_TLS_CERT; the container image's way of configuring) answers /healthz.

The container image's HEALTHCHECK runs this: the image has no shell and no curl, and only the
node's own settings say whether it speaks http or https and on which port. It checks that the
node answers, not whom it presents itself as, so the certificate is not verified.
"""

from __future__ import annotations

import http.client
import ssl
import sys

from connreg.config import Settings

TIMEOUT_SECONDS = 5.0


def probe_target(settings: Settings) -> tuple[str, int, bool]:
    """Where to reach the node from inside its own container: a wildcard listen address is
    reached over loopback."""
    host, port = settings.host_port
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port, bool(settings.tls_cert and settings.tls_key)


def check(settings: Settings) -> str | None:
    """None when /healthz answers 200, else why not."""
    host, port, tls = probe_target(settings)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT_SECONDS, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_SECONDS)
    try:
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:  # refused, timed out, not HTTP
        return f"{'https' if tls else 'http'}://{host}:{port}/healthz: {exc}"
    finally:
        conn.close()
    return None if status == 200 else f"/healthz answered {status}"


def main() -> int:
    try:
        problem = check(Settings.load())
    except ValueError as exc:  # a setting in the environment that does not parse
        problem = str(exc)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
