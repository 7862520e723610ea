"""Registry authorization: the one hook the /v2/ dispatcher calls between route and handler.

Each route and method needs one registry action on the repository in the path (spec §4):
reads need `pull`, uploads and manifest PUT need `push`, DELETEs need `delete`. No credentials
→ 401 `UNAUTHORIZED` with a Bearer challenge naming the scope; valid credentials without the
action → 403 `DENIED` (or 401 `insufficient_scope` when the caller's Bearer token is merely
narrower than what the caller may have, so clients fetch a wider token).
"""

from __future__ import annotations

import logging
from typing import Callable

from quart import current_app, request

from connreg import errors
from connreg.auth.actions import Permissions, repo_matches
from connreg.auth.identity import Authenticator, Principal
from connreg.auth.sources import TrustedProxies
from connreg.config import Settings
from connreg.errors import RegistryError
from connreg.references import MAX_NAME_LENGTH, NAME_RE

log = logging.getLogger("connreg.auth")

# route name -> method -> registry action on the repository `name`
REQUIRED = {
    "upload-start": {"POST": "push"},
    "upload": {"GET": "push", "PATCH": "push", "PUT": "push", "DELETE": "push"},
    "blob": {"GET": "pull", "HEAD": "pull", "DELETE": "delete"},
    "manifest": {"GET": "pull", "HEAD": "pull", "PUT": "push", "DELETE": "delete"},
    "tags": {"GET": "pull"},
    "referrers": {"GET": "pull"},
}
# A connected registry's name and repository set (patterns) as it stands now.
SynchronizedSet = Callable[[], "tuple[str, list[str]] | None"]
# At most this many patterns are spelled out in a refusal message.
PATTERNS_SHOWN = 10
# What the challenge asks for: clients conventionally request pull along with push.
CHALLENGE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}
OPEN = Principal("<open>", "open", Permissions(everything=True), via="none")


def mount_source(route: str) -> str | None:
    """The `from` repository of a cross-repository mount (`POST …/uploads/?mount=D&from=R`),
    when it is a valid name; the mount needs pull on it."""
    if route != "upload-start" or request.args.get("mount") is None:
        return None
    source = request.args.get("from") or ""
    return source if len(source) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(source) else None


def source_address() -> str:
    """Who failed logins are counted against: the peer, or the client behind a trusted
    reverse proxy (`auth/sources.py`)."""
    authz = current_app.extensions.get("authorizer")
    if authz is None:
        return request.remote_addr or "unknown"
    return authz.proxies.source(request.remote_addr, request.headers.getlist("X-Forwarded-For"))


class Authorizer:
    def __init__(self, settings: Settings, authenticator: Authenticator | None,
                 read_only_mode: str | None = None,
                 synchronized_set: SynchronizedSet | None = None):
        self.settings = settings
        self.authn = authenticator
        self.proxies = TrustedProxies(settings.trusted_proxies)
        # Set on a ReadOnly connected registry: every write is DENIED naming the mode (§1).
        self.read_only_name = read_only_mode
        # Set on a connected registry: writes outside its current repository set are DENIED
        # (they could never reach the parent). A callable, since the root changes the set at
        # runtime.
        self.synchronized_set = synchronized_set

    @property
    def enabled(self) -> bool:
        return self.authn is not None

    def challenge(self, scope: str | None = None, error: str | None = None) -> dict[str, str]:
        base = f"{request.scheme}://{request.host}"
        value = f'Bearer realm="{base}/oauth2/token",service="{self.settings.auth_service}"'
        if scope:
            value += f',scope="{scope}"'
        if error:
            value += f',error="{error}"'
        return {"WWW-Authenticate": value}

    def unauthorized(self, scope: str | None = None, message: str | None = None,
                     error: str | None = None, detail=None) -> RegistryError:
        return RegistryError(errors.UNAUTHORIZED, message=message, detail=detail,
                             headers=self.challenge(scope, error))

    async def require_node_admin(self, task: str) -> None:
        """For this node's own upkeep endpoints (GC, parked entries), which answer on every
        node: 401 without credentials, 403 for anyone but the admin; open with auth off."""
        if not self.enabled:
            return
        principal = await self.caller()
        if principal is None or principal.kind == "anonymous":
            raise self.unauthorized(message=f"{task} needs the admin's credentials")
        if principal.kind != "admin":
            raise RegistryError(errors.DENIED, message=f"{principal.name} may not use {task}: "
                                "that needs this node's admin")

    async def caller(self, scope: str | None = None) -> Principal | None:
        """The authenticated caller, None without credentials; bad credentials → 401."""
        try:
            return await self.authn.authenticate(request.headers.get("Authorization"),
                                                 source_address())
        except RegistryError as exc:
            if exc.code is errors.UNAUTHORIZED:
                raise self.unauthorized(scope, exc.message) from None
            raise

    async def check_base(self) -> None:
        """`/v2/`: any valid credentials (an anonymous pull token included) get 200."""
        if self.enabled and await self.caller() is None:
            raise self.unauthorized()

    async def authorize(self, route: str, method: str, params: dict[str, str]) -> Principal:
        if not self.enabled:
            principal = OPEN
        elif route == "catalog":
            principal = await self.caller("registry:catalog:*") or self.authn.anonymous()
            if principal is None:
                raise self.unauthorized("registry:catalog:*")
            request.catalog_filter = self.visible_repositories(principal)
            return principal
        else:
            repo, action = params["name"], REQUIRED[route][method]
            scope = f"repository:{repo}:{CHALLENGE_ACTIONS[action]}"
            source = mount_source(route)
            if source is not None:  # ask for the mount's source too, as distribution does
                scope += f" repository:{source}:pull"
            principal = await self.caller(scope)
            if principal is None:
                anonymous = self.authn.anonymous()
                if anonymous is None or not anonymous.can(repo, action):
                    raise self.unauthorized(scope)
                principal = anonymous
            elif not principal.can(repo, action):
                if principal.via == "bearer" and action in principal.perms.docker_actions(repo):
                    raise self.unauthorized(scope, error="insufficient_scope",
                                            message="token does not cover this scope")
                log.info("denied %s on %s to %s", action, repo, principal.name)
                raise RegistryError(errors.DENIED, detail={"repository": repo, "action": action},
                                    message=f"{principal.name} may not {action} {repo}")
            if (source is not None and principal.via == "bearer"
                    and not principal.can(source, "pull")
                    and "pull" in principal.perms.docker_actions(source)):
                # a token narrower than its holder: fetch one covering the source, then mount
                raise self.unauthorized(scope, error="insufficient_scope",
                                        message="token does not cover the mount's source")
        if route != "catalog" and self.read_only_name and REQUIRED[route][method] != "pull":
            raise RegistryError(errors.DENIED, message=f"connected registry "
                                f"{self.read_only_name} is ReadOnly: writes are not accepted")
        if route != "catalog" and REQUIRED[route][method] != "pull":
            self.refuse_unsynchronized(params["name"])
        if route == "upload-start":
            # The upload handler asks before mounting (api/uploads.py `may_mount`).
            request.may_mount = lambda source: self.may_mount(principal, source)
        return principal

    def refuse_unsynchronized(self, repo: str) -> None:
        """On a connected registry, DENIED for a write to a repository outside its set, for
        every caller: the parent would refuse it, so it would wait in the outbox forever. The
        sync's own writes are unaffected: the puller stores without HTTP, and a child's set is
        inside ours (the root adds a child's repositories to its ancestors)."""
        scope = self.synchronized_set() if self.synchronized_set else None
        if scope is None:
            return
        name, patterns = scope
        if not patterns or any(repo_matches(p, repo) for p in patterns):
            return  # an empty set means everything, as in the down loop
        shown = ", ".join(patterns[:PATTERNS_SHOWN]) + (", …" if len(patterns) > PATTERNS_SHOWN
                                                        else "")
        log.info("denied a write to %s: outside the repository set of %s", repo, name)
        raise RegistryError(
            errors.DENIED, detail={"repository": repo, "connectedRegistry": name},
            message=f"repository {repo} is not synchronized by connected registry {name} "
                    f"(its set: {shown}); writes here could never reach the parent")

    @staticmethod
    def may_mount(principal: Principal, source: str | None) -> bool:
        """Mount only from a repository the caller may pull; otherwise a normal upload.

        An automatic mount (no `from`) is kept only for callers who may read everything, since
        it would otherwise reveal blobs of repositories the caller cannot see.
        """
        if source is not None:
            return principal.can(source, "pull")
        return principal.perms.everything

    @staticmethod
    def visible_repositories(principal: Principal):
        """For the catalog: None when the caller sees every repository, else a predicate."""
        if principal.perms.everything or principal.perms.read_everything:
            return None
        if principal.via == "bearer" and not principal.catalog_granted:
            return lambda repo: principal.can(repo, "pull")  # a token without the catalog scope
        return principal.perms.can_pull
