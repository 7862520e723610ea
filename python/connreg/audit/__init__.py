"""The audit trail of a node and of the fleet below it (docs/audit.md): `log` writes and reads
the daily JSON-lines files, `hooks` turns requests and logins into events, `forward` carries
them up to the root with the status reports, `api` answers `connreg audit list`."""

from connreg.audit.log import AuditLog

__all__ = ["AuditLog"]
