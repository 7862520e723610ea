"""Manifest GET/HEAD answered at the ASGI layer, in front of Quart.

Manifest reads are most of a registry's requests (every pull starts with one; tools and
connected registries poll tags) and each is tiny, so Quart's per-request machinery (request
and response objects, contexts, hooks) costs more than the lookup itself: about a fifth of the
throughput (bench/RESULTS.md). This layer answers only the plain, successful case — a manifest
route, a valid name, a stored manifest, no conditional headers, and a caller that may pull
without a password check (auth off, anonymous pull, or a Bearer token) — with the same headers
the Quart handler sends. Everything else passes through untouched to the app, which stays the
one place that decides errors, challenges, Basic logins (and their failure counting) and the
traffic accounting of sync children.
"""

from __future__ import annotations

from connreg.api import routes
from connreg.auth.authorizer import REQUIRED, Authorizer
from connreg.errors import RegistryError
from connreg.references import check_digest, check_name, is_digest
from connreg.registry import Registry
from connreg.sync.endpoints import sync_child

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")
PULL = REQUIRED["manifest"]["GET"]
# Headers whose presence sends the request to the full handler.
_SLOW_HEADERS = {b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
                 b"range"}


class FastManifestReads:
    def __init__(self, app, registry: Registry, authz: Authorizer):
        self.app = app
        self.reg = registry
        self.authz = authz
        self.audit = None  # set by the app: the pulls answered here are audited (audit/hooks.py)

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
                and scope["path"].startswith("/v2/") and "/manifests/" in scope["path"]):
            answer = await self._answer(scope)
            if answer is not None:
                headers, body, pulled = answer
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body",
                            "body": body if scope["method"] == "GET" else b""})
                if scope["method"] == "GET" and self.audit is not None:
                    self._audit(scope, *pulled)
                return
        await self.app(scope, receive, send)

    def _audit(self, scope, name: str, reference: str, digest: str, size: int,
               actor: str) -> None:
        from connreg.audit.hooks import fast_pull

        peer = (scope.get("client") or ("unknown",))[0]
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        fast_pull(self.audit, scope, name, reference, digest, size, actor,
                  self.authz.proxies.source(peer, forwarded))

    async def _answer(self, scope) -> tuple[list, bytes, tuple] | None:
        """(headers, body, what was pulled by whom) of a 200 answer, or None to let the app
        handle the request."""
        found = routes.match(scope["path"][len("/v2/"):])
        if found is None or found[0].name != "manifest":
            return None
        name, reference = found[1]["name"], found[1]["reference"]
        authorization = None
        for key, value in scope["headers"]:
            if key in _SLOW_HEADERS:
                return None
            if key == b"authorization":
                authorization = value.decode("latin-1")
        try:
            check_name(name)
            if self.reg.meta.read_locked(name):
                return None  # a read lock in the repository: the app decides (connreg/locks)
            if is_digest(reference):
                check_digest(reference)
            actor = await self._may_pull(authorization, name)
            if actor is None:
                return None
        except RegistryError:
            return None
        digest = reference if is_digest(reference) else self.reg.meta.resolve_tag(name, reference)
        record = self.reg.meta.get_manifest(name, digest) if digest else None
        if record is None:
            return None
        body = await self.reg.read_manifest(record.digest) if scope["method"] == "GET" else b""
        digest_bytes = record.digest.encode()
        headers = [
            (b"content-type", record.media_type.encode()),
            (b"docker-content-digest", digest_bytes),
            (b"etag", b'"' + digest_bytes + b'"'),
            (b"content-length", str(record.size).encode()),
            API_VERSION,
        ]
        return headers, body, (name, reference, record.digest, record.size, actor)

    async def _may_pull(self, authorization: str | None, repo: str) -> str | None:
        """Who pulls (the name for the audit trail), only when the caller may pull `repo` and
        that needs no password check; None otherwise."""
        if not self.authz.enabled:
            return "<open>"
        authn = self.authz.authn
        if authorization is None:
            anonymous = authn.anonymous()
            return "anonymous" if anonymous is not None and anonymous.can(repo, PULL) else None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None  # Basic: the app checks it (and counts failures) once
        principal = authn.bearer(token.strip())
        if principal.can(repo, PULL) and sync_child(principal) is None:
            return principal.name
        return None
