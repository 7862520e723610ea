"""Who is calling: credentials (Basic or Bearer) to a `Principal` with its permissions.

Identities: the admin (`admin`, every permission), tokens (their scope map's actions, while
enabled and holding a password that has not expired), and, when `anonymous_pull` is on, the
anonymous caller (pull on every repository). Password checks run scrypt in a worker thread,
always twice (`passwords.match_slot`: no timing oracle); a successful check is remembered for
`CACHE_SECONDS` under an HMAC of the credentials with a per-process random key, and forgotten as
soon as any control-plane resource changes. Identical checks running at once share one hash.

Every attempt takes a slot of the (account, source address) limiter before its hash runs
(`auth/ratelimit.py`); refresh tokens are bound to the password they were obtained with
(`refresh_principal`).
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
from connreg.auth.passwords import (PASSWORD_SLOTS, credential_version, generate_password,
                                    hash_password, match_slot)
from connreg.auth.ratelimit import FailureLimiter
from connreg.auth.tokens import TokenService, write_secret_file
from connreg.config import Settings
from connreg.control.interfaces import SCOPE_MAP, SETTING, TOKEN, ControlStore
from connreg.errors import RegistryError

log = logging.getLogger("connreg.auth")

ADMIN = "admin"
ANONYMOUS = "<anonymous>"
ADMIN_PASSWORD_FILE = "admin-password"
# The control-store setting holding the hash of CONNREG_ADMIN_PASSWORD when that is given.
ADMIN_ENV_SETTING = "admin-from-environment"
CACHE_SECONDS = 60.0
# The password slots of a token, in the order `match_slot` checks them.
TOKEN_SLOTS = ("password1", "password2")
assert len(TOKEN_SLOTS) == PASSWORD_SLOTS
# The admin's one password, as named in refresh tokens.
ADMIN_SLOT = "admin"


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


@dataclass(frozen=True)
class Verified:
    """A password check that succeeded: who, with which password, valid until when."""
    subject: str
    slot: str             # "password1" | "password2" | "admin"
    version: str          # `credential_version` of the matched hash
    expiry: float | None  # the password's expiry


@dataclass
class _Check:
    """A password check in flight; identical attempts arriving meanwhile wait for it."""
    done: trio.Event = field(default_factory=trio.Event)
    finished: bool = False
    result: Verified | None = None


class Authenticator:
    def __init__(self, settings: Settings, store: ControlStore, tokens: TokenService):
        self.settings = settings
        self.store = store
        self.tokens = tokens
        self.limiter = FailureLimiter(settings.auth_failure_limit,
                                      settings.auth_failure_window_seconds,
                                      settings.auth_lockout_max_seconds)
        engine = getattr(store, "engine", None)
        if engine is not None:  # replicas of a scaled root count failures together
            from connreg.auth.shared_ratelimit import SharedFailureLimiter
            self.limiter = SharedFailureLimiter(engine, settings.auth_failure_limit,
                                                settings.auth_failure_window_seconds,
                                                settings.auth_lockout_max_seconds)
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[bytes, tuple[Verified, int, float]] = {}
        self.credential_cache_entries = max(1, settings.credential_cache_entries)
        self._checks: dict[bytes, _Check] = {}
        # scrypt takes 16 MiB per hash: at most this many run at once (a login storm would
        # otherwise hold 16 MiB per worker thread; the others wait for a slot).
        self._hashing = trio.CapacityLimiter(max(1, settings.password_check_parallel))
        self._admin_hash = self._load_admin_hash() if settings.auth else ""
        self.audit = None  # the node's AuditLog (audit/): failed logins and lockouts

    def now(self) -> float:
        """Wall-clock time as the token service sees it (shifted by the test-only offset)."""
        return self.tokens.now()

    # --- the admin identity -----------------------------------------------------------------
    def _load_admin_hash(self) -> str:
        if self.settings.admin_password:
            # Keep the hash of CONNREG_ADMIN_PASSWORD while it still matches, so the admin's
            # refresh tokens (bound to the hash) survive restarts and die when the operator
            # changes the password. Its own document: the generated password's stays as it was.
            env_doc = self.store.get(SETTING, ADMIN_ENV_SETTING)
            if env_doc and match_slot(self.settings.admin_password,
                                      [env_doc["passwordHash"]]) == 0:
                return env_doc["passwordHash"]
            hashed = hash_password(self.settings.admin_password)
            self.store.transact_sync(lambda t: t.put(SETTING, {"name": ADMIN_ENV_SETTING,
                                                               "passwordHash": hashed}))
            return hashed
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
        if token is None or token.get("status") != "enabled" or not usable_credentials(
                token, self.now()):
            return None
        scope_map = self.store.get(SCOPE_MAP, token["scopeMap"]) or {"actions": []}
        return Principal(token["name"], "token", Permissions(scope_map["actions"]))

    # --- credentials ----------------------------------------------------------------------------
    @staticmethod
    def _too_many(wait: float) -> RegistryError:
        return RegistryError(errors.TOO_MANY_REQUESTS,
                             message="too many failed logins for this account from this "
                                     "address; retry later",
                             headers={"Retry-After": str(int(wait) + 1)})

    def _check_password(self, username: str, password: str) -> Verified | None:
        """Which password of `username` this is, if any. Runs scrypt exactly PASSWORD_SLOTS
        times on every path (unknown name, disabled token, expired or missing password, wrong
        or right password), so call it in a worker thread."""
        if username == ADMIN:
            index = match_slot(password, [self._admin_hash])
            return None if index is None else Verified(
                ADMIN, ADMIN_SLOT, credential_version(self._admin_hash), None)
        token = self.store.get(TOKEN, username)
        usable = {}
        if token is not None and token.get("status") == "enabled":
            usable = {c["name"]: c for c in usable_credentials(token, self.now())}
        slots = [usable[name]["hash"] if name in usable else None for name in TOKEN_SLOTS]
        index = match_slot(password, slots)
        if index is None:
            return None
        cred = usable[TOKEN_SLOTS[index]]
        return Verified(token["name"], cred["name"], credential_version(cred["hash"]),
                        parse_time(cred.get("expiry")))

    def _credentials_generation(self) -> int:
        """Moves when a document that can change a credential's check is written (not on the
        status reports of connected registries); a store without it: every write."""
        return getattr(self.store, "credentials_generation", self.store.generation)

    def _cached(self, key: bytes) -> Verified | None:
        hit = self._verified.get(key)
        if hit and hit[1] == self._credentials_generation() and hit[2] > time.time():
            return hit[0]
        return None

    @property
    def cached_credentials(self) -> int:
        return len(self._verified)

    def known_credentials(self, username: str, password: str) -> bool:
        """Whether these credentials passed a password check recently (the verified cache
        only: no scrypt, no limiter), for cheap decisions such as the client request budget's
        "is this a sync child" (api/client_budget.py)."""
        key = hmac.new(self._cache_key, f"{username}\0{password}".encode(),
                       hashlib.sha256).digest()
        return self._cached(key) is not None

    def _remember(self, key: bytes, verified: Verified) -> None:
        if len(self._verified) >= self.credential_cache_entries:
            # Expired entries go first; only a table full of live ones is emptied (a hit costs
            # a dict lookup, a miss one scrypt check: no order is kept to evict by).
            now = time.time()
            for old in [k for k, (_, _, until) in self._verified.items() if until <= now]:
                del self._verified[old]
            if len(self._verified) >= self.credential_cache_entries:
                self._verified.clear()
        until = time.time() + CACHE_SECONDS
        if verified.expiry is not None:  # an expiry on the token service's clock
            until = min(until, verified.expiry - self.tokens.clock_offset)
        self._verified[key] = (verified, self._credentials_generation(), until)

    async def _verify(self, username: str, password: str, source: str) -> Verified | None:
        """The password check behind a login, with its limiter slot; TOOMANYREQUESTS if the
        (account, address) pair is locked or has every slot in flight."""
        key = hmac.new(self._cache_key, f"{username}\0{password}".encode(),
                       hashlib.sha256).digest()
        while True:
            wait = self.limiter.retry_after(username, source)
            if wait is not None:
                raise self._too_many(wait)
            cached = self._cached(key)
            if cached is not None:
                return cached
            running = self._checks.get(key)
            if running is None:
                break
            await running.done.wait()  # the same credentials are being checked: share it
            if running.finished:
                return running.result
        refusal = self.limiter.reserve(username, source)
        if refusal is not None:
            raise self._too_many(refusal.retry_after)
        check = self._checks[key] = _Check()
        found = None
        try:
            found = await trio.to_thread.run_sync(self._check_password, username, password,
                                                  limiter=self._hashing)
            if found is not None and self.principal_for(found.subject) is None:
                found = None  # e.g. deleted or disabled while the hash ran
            check.result, check.finished = found, True
        finally:
            del self._checks[key]
            check.done.set()
            if found is not None:
                self.limiter.succeeded(username, source)
                self._remember(key, found)
            else:
                locked_for = self.limiter.failed(username, source)
                if locked_for is not None:
                    # Once per lockout, not per refused attempt.
                    log.warning("locked out logins for %r from %s for %d s after %d failed "
                                "logins", username[:100], source, locked_for,
                                self.limiter.limit)
                    if self.audit is not None:
                        self.audit.record("lockout", actor=username[:100], source=source,
                                          outcome="denied", seconds=int(locked_for))
        return found

    async def login(self, username: str, password: str, source: str) -> Principal:
        """Check a username/password; UNAUTHORIZED or TOOMANYREQUESTS if refused."""
        found = await self._verify(username, password, source)
        principal = self.principal_for(found.subject) if found else None
        if principal is None:
            # The username is not a secret; the password never appears in a log line.
            log.info("failed login for %r from %s", username[:100], source)
            if self.audit is not None:  # the audit trail (audit/), never the password
                self.audit.record("login_failed", actor=username[:100], source=source,
                                  outcome="failed", status=401)
            raise RegistryError(errors.UNAUTHORIZED, message="invalid username or password")
        principal.extra["credential"] = found
        return principal

    # --- refresh tokens -------------------------------------------------------------------------
    def issue_refresh(self, principal: Principal) -> str | None:
        """A refresh token bound to the password `principal` signed in with (None if it did
        not sign in with a password, e.g. the anonymous caller)."""
        found: Verified | None = principal.extra.get("credential")
        if found is None:
            return None
        return self.tokens.issue_refresh(found.subject, found.slot, found.version,
                                         principal.extra.get("auth_time"))

    def refresh_principal(self, token: str) -> Principal:
        """The caller behind a refresh token, while the password it was obtained with is
        unchanged, enabled and not expired; UNAUTHORIZED naming why otherwise."""
        claims = self.tokens.verify_refresh(token)
        if claims is None:
            raise RegistryError(errors.UNAUTHORIZED, message="invalid or expired refresh token "
                                "(older than the maximum lifetime, or not issued here); "
                                "log in again")
        subject, slot, version = claims["sub"], claims.get("cred"), claims.get("ver")
        if not isinstance(slot, str) or not isinstance(version, str):
            raise self._stale("it was issued by an older version, before refresh tokens were "
                              "bound to a password")
        current = None
        if subject == ADMIN:
            if slot == ADMIN_SLOT:
                current = Verified(ADMIN, ADMIN_SLOT, credential_version(self._admin_hash), None)
        else:
            doc = self.store.get(TOKEN, subject)
            if doc is None:
                raise self._stale(f"token {subject} no longer exists")
            if doc.get("status") != "enabled":
                raise self._stale(f"token {doc['name']} is disabled")
            cred = next((c for c in doc.get("credentials", []) if c.get("name") == slot), None)
            if cred is not None and cred in usable_credentials(doc, self.now()):
                current = Verified(doc["name"], slot, credential_version(cred["hash"]),
                                   parse_time(cred.get("expiry")))
            elif cred is not None:
                raise self._stale(f"{slot} of token {doc['name']} has expired")
        if current is None or not hmac.compare_digest(current.version.encode(), version.encode()):
            raise self._stale(f"{slot} of {subject} was regenerated since "
                              "this refresh token was issued")
        principal = self.principal_for(subject)
        if principal is None:
            raise self._stale(f"{subject} may no longer sign in")
        principal.extra["credential"] = current
        principal.extra["auth_time"] = claims.get("auth_time")
        return principal

    @staticmethod
    def _stale(reason: str) -> RegistryError:
        return RegistryError(errors.UNAUTHORIZED,
                             message=f"refresh token no longer valid: {reason}; log in again")

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
