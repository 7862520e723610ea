"""The Quart (trio) application: one dispatcher for /v2/, error rendering, health."""

from __future__ import annotations

import logging

from quart import Response, request
from connreg.streaming import StreamingQuart

from connreg import errors
from connreg.api import routes
from connreg.config import Settings
from connreg.errors import RegistryError
from connreg.references import check_name
from connreg.registry import Registry

log = logging.getLogger("connreg")
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


def _error_response(exc: RegistryError) -> Response:
    resp = Response(exc.body(), status=exc.status, content_type="application/json")
    for key, value in exc.headers.items():
        resp.headers[key] = value
    return resp


def create_app(settings: Settings) -> StreamingQuart:
    app = StreamingQuart("connreg")
    # Blobs are streamed, never buffered; their size and duration are not the framework's call.
    app.config.update(MAX_CONTENT_LENGTH=None, BODY_TIMEOUT=None, RESPONSE_TIMEOUT=None)
    registry = Registry(settings)
    app.extensions["registry"] = registry

    @app.after_serving
    async def close() -> None:
        registry.close()

    @app.after_request
    async def api_version(resp: Response) -> Response:
        resp.headers[API_VERSION_HEADER[0]] = API_VERSION_HEADER[1]
        return resp

    @app.errorhandler(RegistryError)
    async def registry_error(exc: RegistryError) -> Response:
        return _error_response(exc)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(RegistryError(errors.INTERNAL))

    @app.route("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', content_type="application/json")

    @app.route("/v2/", methods=["GET", "HEAD"])
    @app.route("/v2", methods=["GET", "HEAD"])
    async def base() -> Response:
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
        return await handler(registry, **params)

    return app
