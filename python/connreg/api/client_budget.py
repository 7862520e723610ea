"""Per-client request budget while this node syncs: serving must not starve sync (issue 13).

One event loop serves clients and runs sync. A client polling a manifest as fast as the node
answers (1,000 HEAD/s) took a whole core and slowed the node's sync several fold: most of a
request's cost is Hypercorn, h11 and trio, before and after connreg's own few lookups
(bench/RESULTS.md, "Serving vs syncing"), so making the handler cheaper cannot give the time
back; answering fewer requests can.

While this node's sync has work (it moved sync bytes, or a child's sync request arrived, in the
last SYNC_ACTIVE_HOLD seconds), each client — a source address and the identity it shows
(a valid token's subject, or a Basic user whose password checked out already; never the
secret; anything else shares one budget per source) — gets `client_request_rate` requests per second
with a burst of `client_request_burst` (GCRA: one timestamp per client). A request past its
budget waits its turn, without using the loop, for at most `client_request_max_wait_seconds`:
a polling client that waits for each answer (every registry client does) is slowed to the
budget instead of refused. Past that wait it gets 429 TOOMANYREQUESTS with Retry-After and a
message naming the budget. Sync traffic is never budgeted: a sync child's requests (its sync
token, verified — a cached Bearer token or Basic credentials that passed a check already) and
the sync API. Nothing is budgeted while sync is idle unless `client_budget_always` is set.

Bounded: one float per tracked client, at most MAX_CLIENTS of them (least recently seen
forgotten first: forgetting only forgives a debt), and a waiting request holds a sleeping task
and its connection (Hypercorn's connection limits bound those) for at most the max wait.
"""

from __future__ import annotations

import base64
import math
import time
from collections import OrderedDict

import trio

from connreg import errors
from connreg.errors import RegistryError
from connreg.sync.endpoints import SYNC_TOKEN_SUFFIX

# How long after the last sync activity the budget keeps applying: sync works in batches with
# short pauses (a round trip to the parent, a batch being built); the budget must not lapse
# between them.
SYNC_ACTIVE_HOLD = 5.0
# Clients tracked at once (one float each); beyond, the least recently seen is forgotten.
MAX_CLIENTS = 4096
# Requests that are sync's own: the sync API (a child's feed, batches, chunks, uploads of its
# pushes) and the node's health checks. A child's /v2/ requests are recognised by its token.
EXEMPT_PREFIXES = ("/connreg/v1/sync/", "/healthz", "/readyz")
# Only reads are budgeted: heavy reads are what starved sync; writes are what sync carries
# (slowing them slows the source of sync's work) and have their own caps (upload sessions).
READS = ("GET", "HEAD")
# The feed's long poll waits for changes: it is no sign of sync work by itself.
LONG_POLL_PATHS = ("/connreg/v1/sync/changes", "/connreg/v1/sync/status")


class Budget:
    """The accounting: per client key, the time its next request is due (GCRA)."""

    def __init__(self, rate: float, burst: int, max_wait: float, clock=time.monotonic,
                 max_clients: int = MAX_CLIENTS, when: str = "while this node syncs"):
        self.rate = max(rate, 0.01)
        self.burst = max(int(burst), 1)
        self.max_wait = min(max(max_wait, 0.0), 60.0)
        self.interval = 1.0 / self.rate
        self.tolerance = (self.burst - 1) * self.interval
        self.clock = clock
        self.max_clients = max(max_clients, 1)
        self.when = when  # in the refusal's message: when the budget applies
        self._due: OrderedDict[object, float] = OrderedDict()
        self.waited = 0  # requests that waited their turn
        self.refused = 0  # requests answered 429

    def take(self, key: object) -> float:
        """Seconds this request must wait for its turn (0: now), and its turn is taken; or
        RegistryError 429 when the wait would exceed the max wait (nothing is taken)."""
        now = self.clock()
        due = max(self._due.get(key, now), now)
        wait = due - self.tolerance - now
        if wait > self.max_wait:
            self.refused += 1
            retry_after = max(1, math.ceil(wait - self.max_wait))
            raise RegistryError(
                errors.TOO_MANY_REQUESTS,
                message=f"client request budget exceeded: {self.rate:g} requests/s per client "
                        f"(burst {self.burst}) {self.when} (client_request_rate); "
                        f"retry after {retry_after} s",
                detail={"budget": "client_request_rate", "rate": self.rate,
                        "burst": self.burst},
                headers={"Retry-After": str(retry_after)})
        self._due[key] = due + self.interval
        self._due.move_to_end(key)
        while len(self._due) > self.max_clients:
            self._due.popitem(last=False)
        if wait > 0:
            self.waited += 1
            return wait
        return 0.0

    def __len__(self) -> int:
        return len(self._due)


class SyncActivity:
    """When this node last did sync work: a child's sync request seen here, or bytes its own
    sync moved (`progress` returns the sync service's transfer figures, or None)."""

    def __init__(self, progress=lambda: None, clock=time.monotonic):
        self.progress = progress
        self.clock = clock
        self.last = -math.inf
        self._bytes_seen = 0

    def mark(self) -> None:
        self.last = self.clock()

    def active(self) -> bool:
        now = self.clock()
        transfer = self.progress()
        if transfer is not None:
            moved = sum(transfer.bytes.values())
            if moved != self._bytes_seen:
                self._bytes_seen = moved
                self.last = now
        return now - self.last < SYNC_ACTIVE_HOLD


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class ClientBudget:
    """ASGI layer between the request metrics and everything else (so refusals are counted)."""

    def __init__(self, app, budget: Budget, activity: SyncActivity, authz, always: bool):
        self.app = app
        self.budget = budget
        self.activity = activity
        self.authz = authz
        self.always = always

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(EXEMPT_PREFIXES):
                if path.startswith("/connreg/v1/sync/") and not path.startswith(LONG_POLL_PATHS):
                    self.activity.mark()
            elif scope["method"] in READS and (self.always or self.activity.active()):
                key = self._client(scope)
                if key is None:  # a sync child
                    self.activity.mark()
                else:
                    try:
                        wait = self.budget.take(key)
                    except RegistryError as exc:
                        await self._refuse(scope, send, exc)
                        return
                    if wait:
                        await trio.sleep(wait)
        await self.app(scope, receive, send)

    def _client(self, scope) -> tuple[str, str] | None:
        """(source address, claimed identity) of the caller; None for a sync child."""
        peer = (scope.get("client") or ("unknown",))[0]
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        source = self.authz.proxies.source(peer, forwarded) if self.authz else peer
        authorization = _header(scope, b"authorization")
        if not authorization:
            return source, ""
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        authn = self.authz.authn if self.authz is not None else None
        if scheme == "bearer":
            claims = authn.tokens.verify_access(value) if authn is not None else None
            if claims is None:
                return source, "bearer?"  # refused by the app anyway; one bucket for all
            if claims.subject.endswith(SYNC_TOKEN_SUFFIX):
                return None
            return source, claims.subject
        if scheme == "basic":
            try:
                username, sep, password = base64.b64decode(value, validate=True).decode() \
                    .partition(":")
            except (ValueError, UnicodeDecodeError):
                return source, "basic?"
            known = sep and authn is not None and authn.known_credentials(username, password)
            if known and username.endswith(SYNC_TOKEN_SUFFIX):
                return None
            # Only a name whose password checked out gets a budget of its own: made-up names
            # (each a new bucket otherwise) share one per source, like unknown Bearer tokens.
            return source, username[:200] if known else "basic?"
        return source, scheme[:20]

    @staticmethod
    async def _refuse(scope, send, exc: RegistryError) -> None:
        from connreg.app import error_header  # the same Connreg-Error header the app sends

        body = exc.body()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()),
                   (b"docker-distribution-api-version", b"registry/2.0"),
                   (b"connreg-error", error_header(exc).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body",
                    "body": body if scope["method"] != "HEAD" else b""})


def install(app, settings, authz) -> None:
    """Wrap the app's ASGI stack (before the request metrics go outermost); a no-op when
    `client_request_rate` is 0."""
    if settings.client_request_rate <= 0:
        return

    def progress():
        service = app.extensions.get("sync")
        state = getattr(service, "state", None)
        return getattr(state, "transfer", None)

    budget = Budget(settings.client_request_rate, settings.client_request_burst,
                    settings.client_request_max_wait_seconds,
                    when="at all times" if settings.client_budget_always
                    else "while this node syncs")
    app.extensions["client_budget"] = budget
    app.asgi_app = ClientBudget(app.asgi_app, budget, SyncActivity(progress), authz,
                                settings.client_budget_always)
