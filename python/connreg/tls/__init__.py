"""TLS: the certificate a node serves (and re-reads), and how it verifies the servers it calls."""

from connreg.tls.client import (TrustError, tls_failure, unreachable_reason,
                                untrusted_certificate, verifying_context)
from connreg.tls.server import CertificateError, ServedCertificate

__all__ = ["CertificateError", "ServedCertificate", "TrustError", "tls_failure",
           "unreachable_reason", "untrusted_certificate", "verifying_context"]
