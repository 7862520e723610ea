"""Verifying the servers this process talks to (a node's parent, the CLI's registry).

One function builds what httpx gets as `verify`, so activation, sync, delta transfer, the
activation relay and the management CLI all trust the same certificates and refuse the same way.
A failed verification is turned into one line that says which server, which trust it was
checked against and why, instead of httpx's bare `ConnectError`.
"""

from __future__ import annotations

import ssl
from pathlib import Path

SYSTEM_STORE = "the system trust store"


class TrustError(ValueError):
    """The CA file cannot be used (missing, unreadable, not PEM); one line for the operator."""


def verifying_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A client context that checks the server's certificate and host name: against `ca_file`
    alone when given (a private CA), else against the system trust store (`SSL_CERT_FILE` and
    `SSL_CERT_DIR` are honoured). TLS 1.2 at least."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except FileNotFoundError:
        raise TrustError(f"CA file {ca_file} does not exist") from None
    except OSError as exc:
        raise TrustError(f"cannot read CA file {ca_file}: {exc.strerror or exc}") from None
    except ssl.SSLError as exc:
        raise TrustError(f"CA file {ca_file} holds no usable PEM certificate: "
                         f"{exc.reason or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_failure(exc: BaseException, peer: str, ca_file: str | Path | None = None,
                role: str = "parent") -> str | None:
    """One line naming the TLS failure behind `exc` (an httpx error; the ssl error sits further
    down its chain of causes), or None when `exc` was not about TLS."""
    cause = _ssl_cause(exc)
    if cause is None:
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        trust = ca_file or SYSTEM_STORE
        reason = cause.verify_message or cause.reason or str(cause)
        return f"{role} {peer} presented a certificate that does not verify against {trust}: {reason}"
    reason = cause.reason or str(cause)
    hint = " (is it serving plain HTTP?)" if reason == "WRONG_VERSION_NUMBER" else ""
    return f"TLS handshake with {role} {peer} failed: {reason}{hint}"


def untrusted_certificate(exc: BaseException) -> bool:
    """True when `exc` comes from a server certificate that did not verify."""
    return isinstance(_ssl_cause(exc), ssl.SSLCertVerificationError)


def unreachable_reason(exc: BaseException, peer: str, ca_file: str | Path | None = None,
                       role: str = "parent") -> str:
    """Why `peer` could not be reached: the TLS failure in words, else the error's type."""
    return tls_failure(exc, peer, ca_file, role) or type(exc).__name__


def _ssl_cause(exc: BaseException | None) -> ssl.SSLError | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
