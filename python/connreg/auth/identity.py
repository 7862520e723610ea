"""Who is calling: credentials (Basic or Bearer) to a `Principal` with its permissions.

Identities: the admin (`admin`, every permission), tokens (their scope map's actions, while
enabled and holding a password that has not expired), and, when `anonymous_pull` is on, the
anonymous caller (pull on every repository). Password checks run scrypt in a worker thread;
a successful check is remembered for `CACHE_SECONDS` under an HMAC of the credentials with a
per-process random key, and forgotten as soon as any control-plane resource changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import trio

from connreg import errors
from connreg.auth.actions import Permissions
from connreg.auth.passwords import generate_password, hash_password, verify_password
from connreg.auth.ratelimit import FailureLimiter
from connreg.auth.tokens import TokenService, write_secret_file
from connreg.config import Settings
from connreg.control.interfaces import SCOPE_MAP, SETTING, TOKEN, ControlStore
from connreg.errors import RegistryError

log = logging.getLogger("connreg.auth")

ADMIN = "admin"
ANONYMOUS = "<anonymous>"
ADMIN_PASSWORD_FILE = "admin-password"
CACHE_SECONDS = 60.0
# Verified against when the user is unknown, so unknown and known names take the same time.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass
class Principal:
    name: str
    kind: str                      # "admin" | "token" | "anonymous" | "open"
    perms: Permissions
    # For Bearer tokens: what the token grants per repository (pull/push/delete); the
    # subject's current permissions still apply on top, so revocation is immediate.
    granted: dict[str, frozenset[str]] | None = None
    catalog_granted: bool = False
    via: str = "basic"             # "basic" | "bearer" | "none"
    extra: dict = field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        return self.kind in ("admin", "token", "open")

    def can(self, repo: str, docker_action: str) -> bool:
        if docker_action not in self.perms.docker_actions(repo):
            return False
        if self.granted is not None:
            return docker_action in self.granted.get(repo, ())
        return True


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def usable_credentials(token: dict, now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    out = []
    for cred in token.get("credentials", []):
        expiry = parse_time(cred.get("expiry"))
        if cred.get("hash") and (expiry is None or expiry > now):
            out.append(cred)
    return out


class Authenticator:
    def __init__(self, settings: Settings, store: ControlStore, tokens: TokenService):
        self.settings = settings
        self.store = store
        self.tokens = tokens
        self.limiter = FailureLimiter(settings.auth_failure_limit,
                                      settings.auth_failure_window_seconds)
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[bytes, tuple[str, int, float]] = {}
        self._admin_hash = self._load_admin_hash() if settings.auth else ""

    # --- the admin identity -----------------------------------------------------------------
    def _load_admin_hash(self) -> str:
        if self.settings.admin_password:
            return hash_password(self.settings.admin_password)
        doc = self.store.get(SETTING, "admin")
        if doc:
            return doc["passwordHash"]
        path = self.settings.data_dir / ADMIN_PASSWORD_FILE
        password = generate_password()
        if write_secret_file(path, (password + "\n").encode()):
            log.warning("generated the admin password into %s (mode 0600); read it from there",
                        path)
        else:  # the file outlived the database: keep the password the operator already has
            password = path.read_text().strip()
        hashed = hash_password(password)
        self.store.transact_sync(lambda t: t.put(SETTING, {"name": "admin",
                                                           "passwordHash": hashed}))
        return hashed

    # --- subjects -----------------------------------------------------------------------------
    def anonymous(self) -> Principal | None:
        if not self.settings.anonymous_pull:
            return None
        return Principal(ANONYMOUS, "anonymous", Permissions(read_everything=True), via="none")

    def principal_for(self, subject: str) -> Principal | None:
        """The subject's current permissions, or None if it may no longer sign in."""
        if subject == ADMIN:
            return Principal(ADMIN, "admin", Permissions(everything=True))
        if subject == ANONYMOUS:
            return self.anonymous()
        token = self.store.get(TOKEN, subject)
        if token is None or token.get("status") != "enabled" or not usable_credentials(token):
            return None
        scope_map = self.store.get(SCOPE_MAP, token["scopeMap"]) or {"actions": []}
        return Principal(token["name"], "token", Permissions(scope_map["actions"]))

    # --- credentials ----------------------------------------------------------------------------
    def _check_rate(self, source: str) -> None:
        wait = self.limiter.retry_after(source)
        if wait is not None:
            raise RegistryError(errors.TOO_MANY_REQUESTS,
                                message="too many failed logins from this address; retry later",
                                headers={"Retry-After": str(int(wait) + 1)})

    def _check_password(self, username: str, password: str) -> tuple[str, float | None] | None:
        """(subject, password expiry) if the password is right; runs scrypt, so call it in a
        worker thread."""
        if username == ADMIN:
            return (ADMIN, None) if verify_password(password, self._admin_hash) else None
        token = self.store.get(TOKEN, username)
        creds = usable_credentials(token) if token else []
        match = None
        for cred in creds:  # check both passwords whatever the outcome: no timing difference
            if verify_password(password, cred["hash"]):
                match = cred
        if not creds:
            verify_password(password, _DUMMY_HASH)
        if match is not None and token.get("status") == "enabled":
            return token["name"], parse_time(match.get("expiry"))
        return None

    async def login(self, username: str, password: str, source: str) -> Principal:
        """Check a username/password; UNAUTHORIZED or TOOMANYREQUESTS if refused."""
        self._check_rate(source)
        key = hmac.new(self._cache_key, f"{username}\0{password}".encode(), hashlib.sha256).digest()
        hit = self._verified.get(key)
        subject = None
        if hit and hit[1] == self.store.generation and hit[2] > time.time():
            subject = hit[0]
        else:
            found = await trio.to_thread.run_sync(self._check_password, username, password)
            if found is not None:
                subject, expiry = found
                if len(self._verified) > 10_000:
                    self._verified.clear()
                until = time.time() + CACHE_SECONDS
                self._verified[key] = (subject, self.store.generation,
                                       until if expiry is None else min(until, expiry))
        principal = self.principal_for(subject) if subject else None
        if principal is None:
            self.limiter.record_failure(source)
            # The username is not a secret; the password never appears in a log line.
            log.info("failed login for %r from %s", username[:100], source)
            raise RegistryError(errors.UNAUTHORIZED, message="invalid username or password")
        return principal

    def bearer(self, token: str) -> Principal:
        claims = self.tokens.verify_access(token)
        principal = self.principal_for(claims.subject) if claims else None
        if principal is None:
            raise RegistryError(errors.UNAUTHORIZED, message="invalid or expired bearer token")
        principal.granted = dict(claims.access)
        principal.catalog_granted = claims.catalog
        principal.via = "bearer"
        return principal

    async def authenticate(self, authorization: str | None, source: str) -> Principal | None:
        """The caller behind an Authorization header; None if it carries no credentials."""
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
                username, sep, password = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise RegistryError(errors.UNAUTHORIZED, message="malformed Basic credentials")
            return await self.login(username, password, source)
        if scheme == "bearer":
            return self.bearer(value.strip())
        raise RegistryError(errors.UNAUTHORIZED, message="unsupported authorization scheme")
