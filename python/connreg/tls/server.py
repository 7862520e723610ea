"""The certificate a node serves TLS with: checked at start, re-read without a restart.

Hypercorn builds one `ssl.SSLContext` when it starts serving and every listener makes each new
connection's TLS state from that same object. So a rotation is `load_cert_chain` on that very
context: connections already open keep the certificate they agreed on, the next handshake gets
the new one, and the node is never down. A new pair is first checked on a scratch context (a
half-copied rotation must not leave the live context with a certificate and a key that do not
belong together); if the check fails the old certificate stays and the error is logged.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("connreg.tls")


class CertificateError(ValueError):
    """The certificate or key cannot be served; one line that names the file and the reason."""


@dataclass(frozen=True)
class _Pair:
    """One certificate chain and its key as read from disk, checked to belong together."""

    cert_pem: bytes
    key_pem: bytes
    leaf: x509.Certificate

    def describe(self) -> str:
        until = self.leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"subject {self.leaf.subject.rfc4514_string() or '(empty)'}, "
                f"serial {self.leaf.serial_number:x}, valid until {until}")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read TLS {what} file {path}: "
                               f"{exc.strerror or exc}") from None


def _read_pair(cert_file: Path, key_file: Path) -> _Pair:
    # cryptography (~8 MB) is loaded only by a node that serves TLS (docs/operations.md, Memory).
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_pem, key_pem = _read(cert_file, "certificate"), _read(key_file, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertificateError(f"TLS certificate file {cert_file} holds no PEM "
                               "certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(f"TLS key file {key_file} is encrypted; connreg needs an "
                               "unencrypted key (keep the file mode 0600)") from None
    except (ValueError, serialization.UnsupportedAlgorithm):
        raise CertificateError(f"TLS key file {key_file} holds no PEM private key") from None
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER, public):
        raise CertificateError(f"TLS key file {key_file} does not belong to the certificate "
                               f"in {cert_file} (their public keys differ)")
    return _Pair(cert_pem, key_pem, leaf)


def _load_into(context: ssl.SSLContext, pair: _Pair, cert_file: Path) -> None:
    """`load_cert_chain` takes paths only: hand it the bytes already checked, through a private
    temporary directory, so what is loaded is exactly what was read (not a file that changed
    in between). A scratch context takes them first; the live one only if that worked."""
    with tempfile.TemporaryDirectory(prefix="connreg-tls-") as tmp:  # created 0700
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, pair.cert_pem), (key_path, pair.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise CertificateError(f"TLS certificate {cert_file} cannot be served: "
                                   f"{exc.reason or exc}") from None
        context.load_cert_chain(cert_path, key_path)


def _stamp(*paths: Path) -> tuple:
    """What changes when a file is rewritten or replaced (renamed over, symlink swapped)."""
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


class ServedCertificate:
    """The certificate and key this node serves, and the live context that holds them."""

    def __init__(self, cert_file: str | Path, key_file: str | Path):
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self._stamp = _stamp(self.cert_file, self.key_file)
        self._pair = _read_pair(self.cert_file, self.key_file)
        self.context: ssl.SSLContext | None = None
        self._warn_if_expired(self._pair)

    @classmethod
    def from_settings(cls, tls_cert: str, tls_key: str) -> "ServedCertificate | None":
        """None when TLS is off; CertificateError when only one file is named or the files
        cannot be served."""
        if not tls_cert and not tls_key:
            return None
        if not tls_key:
            raise CertificateError("--tls-cert is set but --tls-key is not (tls_key, "
                                   "CONNREG_TLS_KEY): give both or neither")
        if not tls_cert:
            raise CertificateError("--tls-key is set but --tls-cert is not (tls_cert, "
                                   "CONNREG_TLS_CERT): give both or neither")
        return cls(tls_cert, tls_key)

    @property
    def serial(self) -> int:
        return self._pair.leaf.serial_number

    def server_context(self, ciphers: str, alpn_protocols: list[str]) -> ssl.SSLContext:
        """The context to serve with (built once; later reloads change it in place)."""
        if self.context is None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.options |= ssl.OP_NO_COMPRESSION  # HTTP/2 forbids TLS compression
            context.set_ciphers(ciphers)
            context.set_alpn_protocols(alpn_protocols)
            _load_into(context, self._pair, self.cert_file)
            self.context = context
            log.info("serving TLS with %s (%s)", self.cert_file, self._pair.describe())
        return self.context

    def reload(self, why: str) -> bool:
        """Read the files again and serve what they hold from the next handshake on. A pair
        that cannot be served is logged and the current certificate stays."""
        self._stamp = _stamp(self.cert_file, self.key_file)
        try:
            pair = _read_pair(self.cert_file, self.key_file)
            if self.context is not None:
                _load_into(self.context, pair, self.cert_file)
        except CertificateError as exc:
            log.error("TLS certificate reload (%s) failed, still serving the previous "
                      "certificate (%s): %s", why, self._pair.describe(), exc)
            return False
        if pair.leaf.public_key().__class__ is not self._pair.leaf.public_key().__class__:
            # OpenSSL keeps one certificate per key type: the old one stays on offer too.
            log.warning("the new TLS certificate has another key type than the old one; "
                        "restart the node so that only the new one is served")
        self._pair = pair
        self._warn_if_expired(pair)
        log.info("TLS certificate reloaded (%s): %s", why, pair.describe())
        return True

    def changed_on_disk(self) -> bool:
        return _stamp(self.cert_file, self.key_file) != self._stamp

    async def keep_current(self, check_every: float,
                           task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Reload on SIGHUP, and when either file changes on disk (checked every
        `check_every` seconds; 0: only on SIGHUP). Runs until cancelled."""
        with trio.open_signal_receiver(signal.SIGHUP) as hangups:
            task_status.started()
            async with trio.open_nursery() as nursery:
                if check_every > 0:
                    nursery.start_soon(self._poll, check_every)
                async for _ in hangups:
                    self.reload("SIGHUP")

    async def _poll(self, check_every: float) -> None:
        while True:
            await trio.sleep(check_every)
            if self.changed_on_disk():
                self.reload("files changed")

    @staticmethod
    def _warn_if_expired(pair: _Pair) -> None:
        if pair.leaf.not_valid_after_utc <= datetime.now(timezone.utc):
            log.warning("the TLS certificate has expired (%s); clients will refuse it",
                        pair.describe())
