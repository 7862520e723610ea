"""The Quart (trio) application: one dispatcher for /v2/, error rendering, health."""

from __future__ import annotations

import logging

from quart import Response, request
from werkzeug.exceptions import HTTPException
from connreg.streaming import StreamingQuart

from connreg import errors, memory_report
from connreg.api import client_budget, routes
from connreg.api.fast_reads import FastManifestReads
from connreg.auth import endpoints as auth_endpoints
from connreg.auth.authorizer import Authorizer
from connreg.auth.identity import Authenticator
from connreg.auth.tokens import TokenService
from connreg.config import Settings
from connreg.control import activation
from connreg.control import api as control_api
from connreg.control.service import ControlPlane
from connreg.control import validation as control_validation
from connreg.control.sqlite_store import SqliteControlStore
from connreg.errors import RegistryError
from connreg.references import check_name
from connreg.registry import Registry
from connreg.storage import readiness
from connreg.storage.budget import StorageFull, find_out_of_space
from connreg.delta import endpoints as delta_endpoints
from connreg.delta import receive as delta_receive
from connreg.gc import service as gc_service
from connreg.metrics import endpoint as metrics_endpoint
from connreg import ui
from connreg.locks import api as locks_api
from connreg.locks import enforce as lock_enforce
from connreg.locks import sync as locks_sync
from connreg.audit import AuditLog
from connreg.audit import api as audit_api
from connreg.audit import hooks as audit_hooks
from connreg.auth.authorizer import source_address
from connreg.sync import endpoints as sync_endpoints
from connreg.sync import batch_endpoints as sync_batch_endpoints
from connreg.sync import upload_batch_endpoints as sync_upload_batch_endpoints
from connreg.sync import parked_api as sync_parked_api
from connreg.sync.endpoints import sync_child
from connreg.sync.runner import run_node_tasks

log = logging.getLogger("connreg")
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


ERROR_HEADER = "Connreg-Error"  # the reason, for answers without a body (HEAD)
ERROR_HEADER_MAX = 300


def error_header(exc: RegistryError) -> str:
    """`CODE: message`, printable ASCII on one line (a header cannot carry more)."""
    text = f"{exc.code.code}: {exc.message}"
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return text[:ERROR_HEADER_MAX]


def _error_response(exc: RegistryError) -> Response:
    resp = Response(exc.body(), status=exc.status, content_type="application/json")
    for key, value in exc.headers.items():
        resp.headers[key] = value
    resp.headers[ERROR_HEADER] = error_header(exc)
    try:
        if request.method == "HEAD" and exc.status not in (401, 404):
            # The body a HEAD answer lacks said why; a 404 or a challenge is routine.
            log.info("HEAD %s refused: %s", request.path[:300], resp.headers[ERROR_HEADER])
    except RuntimeError:  # outside a request context
        pass
    return resp


def create_app(settings: Settings) -> StreamingQuart:
    app = StreamingQuart("connreg")
    # Blobs are streamed, never buffered; their size and duration are not the framework's call.
    app.config.update(MAX_CONTENT_LENGTH=None, BODY_TIMEOUT=None, RESPONSE_TIMEOUT=None)
    registry = Registry(settings)
    app.extensions["registry"] = registry
    app.config["CONNREG_SETTINGS"] = settings

    # Control plane and auth (docs/auth.md): resources in <data_dir>/control.sqlite, one
    # Authorizer that the /v2/ dispatcher, the token endpoint and the management API share.
    # Replicas of a scaled root share it, and the token signing key, on PostgreSQL.
    shared_key = None
    if registry.engine is not None:
        # psycopg (~10 MB) only with metadata_url (docs/operations.md, Memory).
        from connreg.auth.tokens import new_key_pem
        from connreg.control.postgres_store import PostgresControlStore

        control_store = PostgresControlStore(registry.engine)
        shared_key = control_store.shared_secret("token-signing-key", new_key_pem)
    else:
        control_store = SqliteControlStore(settings.data_dir / "control.sqlite")
    app.extensions["control"] = ControlPlane(settings, control_store)
    authn = None
    if settings.auth:
        tokens = TokenService(settings.data_dir / "auth", settings.auth_service,
                              settings.token_ttl_seconds,
                              settings.refresh_token_ttl_seconds
                              or settings.refresh_token_max_lifetime_seconds,
                              clock_offset=settings.test_clock_offset_seconds,
                              shared_key_pem=shared_key,
                              cache_entries=settings.token_cache_entries)
        authn = Authenticator(settings, control_store, tokens)
    state = activation.load_state(settings.data_dir) if settings.is_connected_registry else None
    # The audit trail (docs/audit.md): this node's events, and at a parent its subtree's.
    audit = AuditLog(settings.data_dir / "audit", state["name"] if state else None,
                     settings.audit_retention_days, settings.audit_fsync_seconds,
                     settings.audit_pulls)
    registry.audit = audit
    app.extensions["audit"] = audit
    if authn is not None:
        authn.audit = audit  # failed logins and lockouts
    read_only = state["name"] if state and state.get("mode") == "ReadOnly" else None

    def synchronized_set() -> tuple[str, list[str]]:
        """This connected registry's repository set as it stands now: the sync service's copy
        follows the root's changes; before it starts, what activation recorded."""
        service = app.extensions.get("sync")
        if service is not None:
            return service.config.name, service.config.repositories
        return state["name"], list(state.get("repositories") or [])

    authz = Authorizer(settings, authn, read_only,
                       synchronized_set=synchronized_set if state is not None else None)
    app.extensions["authorizer"] = authz
    # Plain successful manifest reads skip Quart's per-request machinery (api/fast_reads.py).
    app.asgi_app = FastManifestReads(app.asgi_app, registry, authz)
    app.asgi_app.audit = audit  # pulls it answers are audited too
    app.register_blueprint(auth_endpoints.bp)
    app.register_blueprint(control_api.bp)
    app.register_blueprint(sync_endpoints.bp)
    app.register_blueprint(sync_parked_api.bp)  # this node's parked outbox entries
    app.register_blueprint(sync_batch_endpoints.bp)  # batched objects and presence checks
    app.register_blueprint(sync_upload_batch_endpoints.bp)  # a child's small objects, batched
    app.register_blueprint(delta_endpoints.bp)
    app.register_blueprint(delta_receive.bp)
    app.register_blueprint(locks_api.bp)  # image locks (docs/locks.md)
    app.register_blueprint(locks_sync.bp)  # a child fetches a repository's locks
    app.register_blueprint(audit_api.bp)  # connreg audit list
    app.register_blueprint(memory_report.bp)  # GET /connreg/v1/debug/memory (admin)
    audit_hooks.install(app, audit, source_address)
    gc_service.install(app, registry, settings, state)  # garbage collection (docs/gc.md)
    ui.install(app)  # the dashboard at /ui/ (connreg/ui/)
    client_budget.install(app, settings, authz)  # serving vs syncing (api/client_budget.py)
    metrics_endpoint.install(app)  # GET /metrics and request metrics, outermost (last)
    if settings.test_min_sync_window_seconds:
        control_validation.MIN_SYNC_WINDOW_SECONDS = settings.test_min_sync_window_seconds

    @app.before_serving
    async def start_background_tasks() -> None:
        if registry.engine is not None:  # follow changes made at the other replicas
            registry.engine.start_listening()
        await app.nursery.start(registry.chunk_index.run)
        await app.nursery.start(audit.run)  # fsync and retention of the audit trail
        # Upload sessions: purged once before serving, then bounded (upload_sessions.py).
        await app.nursery.start(registry.uploads.run)
        # Sync with the parent (connected registries) and change-log pruning (every node).
        app.extensions["sync"] = await run_node_tasks(settings, registry, control_store, state,
                                                      app.nursery)
        await gc_service.start(app, settings, app.nursery)  # on the node's GC schedule

    @app.after_serving
    async def close() -> None:
        registry.close()
        control_store.close()
        audit.close()

    @app.after_request
    async def api_version(resp: Response) -> Response:
        resp.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
        child = getattr(request, "sync_child", None)
        if child and request.method != "HEAD":  # what a child downloads through /v2/
            sync_endpoints.TRAFFIC_BYTES[child] += int(resp.headers.get("Content-Length") or 0)
        return resp

    @app.errorhandler(RegistryError)
    async def registry_error(exc: RegistryError) -> Response:
        return _error_response(exc)

    @app.errorhandler(HTTPException)
    async def framework_error(exc: HTTPException) -> Response:
        # Routing failures outside /v2/ (unknown path, wrong method) in the same error shape.
        code = {404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED}.get(exc.code)
        if code is None:
            code = errors.ErrorCode("UNSUPPORTED" if exc.code < 500 else "UNKNOWN", exc.code,
                                    exc.name.lower())
        return _error_response(RegistryError(code, detail={"path": request.path[:300]}))

    @app.errorhandler(StorageFull)
    async def storage_full(exc: StorageFull) -> Response:
        log.warning("%s %s: %s", request.method, request.path, exc.message)
        return _error_response(registry.budget.refusal(exc))

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        # Out of space where nobody caught it (ENOSPC, SQLITE_FULL): still 507, never 500.
        full = find_out_of_space(exc)
        if full is not None:
            log.warning("%s %s: out of space: %s", request.method, request.path, full)
            return _error_response(registry.budget.refusal(full))
        if readiness.is_engine_unavailable(exc):  # the client retries, elsewhere or later
            log.warning("%s %s: a storage engine is unavailable: %s", request.method,
                        request.path, type(exc).__name__)
            return _error_response(RegistryError(errors.UNAVAILABLE,
                                                 headers={"Retry-After": "1"}))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(RegistryError(errors.INTERNAL))

    @app.route("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', content_type="application/json")

    @app.route("/readyz")
    async def readyz() -> Response:
        """200 when this node can take traffic: its metadata store and blob store answer
        (a balancer's health check; 503 names what does not)."""
        return await readiness.check(registry)

    @app.route("/v2/", methods=["GET", "HEAD"])
    @app.route("/v2", methods=["GET", "HEAD"])
    async def base() -> Response:
        await authz.check_base()
        return Response(b"{}", content_type="application/json")

    all_methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]

    @app.route("/v2/<path:path>", methods=all_methods)
    async def dispatch(path: str) -> Response:
        found = routes.match(path)
        if found is None:
            raise RegistryError(errors.NOT_FOUND, detail={"path": request.path[:300]})
        route, params = found
        handler = route.methods.get(request.method)
        if handler is None:
            raise RegistryError(errors.METHOD_NOT_ALLOWED,
                                detail={"method": request.method, "route": route.name},
                                headers={"Allow": ", ".join(route.methods)})
        if "name" in params:
            check_name(params["name"])
        # The one authorization step: 401/403 here, or the caller the handler acts for.
        principal = await authz.authorize(route.name, request.method, params)
        request.principal = principal  # whom upload sessions count against (api/uploads.py)
        request.sync_child = sync_child(principal)  # change-log origin of a child's pushes
        if request.sync_child:
            sync_endpoints.TRAFFIC[request.sync_child] += 1
            sync_endpoints.TRAFFIC_BYTES[request.sync_child] += request.content_length or 0
        # Read locks and blob-delete locks (connreg/locks); manifest writes check in the store.
        lock_enforce.check_request(registry, route.name, request.method, params,
                                   request.sync_child)
        return await handler(registry, **params)

    return app
