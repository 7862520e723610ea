"""Where audit events come from, wired into the app (`install`):

- /v2/: manifest pushes and deletions, blob deletions, pulls (`audit_pulls`: off, manifests —
  manifest GETs —, or all — blob GETs too), refused ones included; from the request and its
  answer, after it was answered. A child's sync traffic is left out unless refused (the child
  forwards its own clients' events, with their actors). Plain manifest GETs answered by the
  fast path (api/fast_reads.py) are recorded there through `fast_pull`.
- the management and node APIs under /connreg/v1/: every change (POST, PATCH, PUT, DELETE) of
  scope maps, tokens, connected registries, locks, GC runs and parked entries, with its path
  and outcome — never its body (passwords are created there);
- logins: failed logins and lockouts, from auth/identity.py (`Authenticator.audit`).
"""

from __future__ import annotations

import base64

from quart import Response, current_app, request

from connreg.api import routes
from connreg.audit.log import AuditLog
from connreg.references import is_digest

# Sync traffic and status reports are not control-plane changes.
NOT_CONTROL = ("/connreg/v1/sync/status", "/connreg/v1/sync/chunks", "/connreg/v1/sync/uploads")


def outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "denied" if status in (401, 403, 405, 429) else "failed"


def basic_username(authorization: str | None) -> str | None:
    """The user name of a Basic header (never the password), for refusals without a caller."""
    if not authorization or not authorization[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0][:100] or None


def _actor() -> str | None:
    principal = getattr(request, "principal", None)
    if principal is not None:
        return "anonymous" if principal.kind == "anonymous" else principal.name
    actor = getattr(request, "audit_actor", None)
    return actor or basic_username(request.headers.get("Authorization"))


def install(app, audit: AuditLog, source_address) -> None:
    @app.after_request
    async def audit_request(resp: Response) -> Response:
        try:
            if request.path.startswith("/v2/"):
                _registry_event(audit, resp, source_address)
            elif request.path.startswith("/connreg/v1/") and request.method in (
                    "POST", "PATCH", "PUT", "DELETE") and not request.path.startswith(NOT_CONTROL):
                await _control_event(audit, resp, source_address)
        except Exception:  # auditing must never turn an answer into an error
            import logging
            logging.getLogger("connreg.audit").exception("audit hook failed")
        return resp


def _registry_event(audit: AuditLog, resp: Response, source_address) -> None:
    found = routes.match(request.path[len("/v2/"):])
    if found is None:
        return
    route, params = found
    method, status = request.method, resp.status_code
    if status == 401 and not request.headers.get("Authorization"):
        return  # the usual challenge before a client sends credentials
    if route.name == "manifest":
        event = {"PUT": "push", "DELETE": "delete", "GET": "pull"}.get(method)
        if event == "pull" and audit.pulls == "off":
            return
    elif route.name == "blob":
        event = {"DELETE": "delete", "GET": "pull"}.get(method)
        if event == "pull" and audit.pulls != "all":
            return
    else:
        return
    if event is None:
        return
    if getattr(request, "sync_child", None) and status < 400:
        return  # the child's own trail names who did it
    reference = params.get("reference") or params.get("digest") or ""
    tag = None if is_digest(reference) else reference
    digest = resp.headers.get("Docker-Content-Digest") or (reference if tag is None else None)
    size = request.content_length if method == "PUT" else (
        int(resp.headers.get("Content-Length") or 0) if method == "GET" and status < 400
        else None)
    image_size = None
    if event == "push" and status == 201 and digest and size is not None:
        # what the image weighs: the manifest and the blobs it references directly
        registry = current_app.extensions["registry"]
        image_size = size + registry.meta.blobs_size(params["name"], digest)
    audit.record(event, actor=_actor(), source=source_address(), outcome=outcome(status),
                 status=status, repository=params.get("name"), tag=tag, digest=digest,
                 size=size, imageSize=image_size,
                 object="blob" if route.name == "blob" else "manifest",
                 via=("sync:" + request.sync_child) if getattr(request, "sync_child", None)
                 else None)


async def _control_event(audit: AuditLog, resp: Response, source_address) -> None:
    path = request.path[len("/connreg/v1/"):][:300]
    target = getattr(request, "audit_target", None)
    if target is None and resp.status_code in (200, 201) and request.method == "POST" \
            and path in ("scope-maps", "tokens", "connected-registries"):
        try:
            doc = await resp.get_json()
            target = doc.get("name") if isinstance(doc, dict) else None
        except Exception:
            target = None
    audit.record("control", actor=_actor(), source=source_address(),
                 outcome=outcome(resp.status_code), status=resp.status_code,
                 action=f"{request.method} {path}", target=target)


def fast_pull(audit: AuditLog, scope, name: str, reference: str, digest: str, size: int,
              actor: str, source: str) -> None:
    """A manifest GET the ASGI fast path answered (api/fast_reads.py)."""
    if audit.pulls == "off":
        return
    audit.record("pull", actor=actor, source=source, outcome="success", status=200,
                 repository=name, tag=None if is_digest(reference) else reference,
                 digest=digest, size=size, object="manifest")
