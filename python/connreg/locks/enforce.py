"""Locks on the /v2/ request path: reads (read-enabled false) and blob deletions, decided after
authorization. Manifest and tag writes and deletions are decided by the metadata store inside
their write transaction (`locks/policy.py`), whoever makes them (clients, children's pushes)."""

from __future__ import annotations

from connreg.references import is_digest
from connreg.registry import Registry


def check_request(reg: Registry, route: str, method: str, params: dict[str, str],
                  sync_child: str | None) -> None:
    """Raise the OCI refusal when a lock forbids this request."""
    from connreg.locks import policy

    name = params.get("name")
    if name is None:
        return
    if method in ("GET", "HEAD") and route in ("manifest", "blob"):
        # A child mirrors locked content too (its own copy enforces the same locks), so an
        # unlock at the root finds every tier holding the image.
        if sync_child is not None or not reg.meta.read_locked(name):
            return
        tag = digest = None
        if route == "manifest":
            reference = params["reference"]
            if is_digest(reference):
                digest = reference
            else:
                tag, digest = reference, reg.meta.resolve_tag(name, reference)
        refusal = policy.refuse_read(reg.meta.locks(name), name, tag, digest)
    elif method == "DELETE" and route == "blob":
        refusal = policy.refuse_blob_delete(reg.meta.locks(name), name, params["digest"])
    else:
        return
    if refusal is not None:
        raise refusal.registry_error()
