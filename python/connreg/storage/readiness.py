"""Whether a node can take traffic (`GET /readyz`), and what a dead shared engine looks like.

Ready means: the metadata store answers a read and the blob store answers an existence
check, each within READY_TIMEOUT_SECONDS. A balancer polls this to stop sending requests to
a replica whose engines it cannot reach (liveness stays `/healthz`: the process answers).
"""

from __future__ import annotations

import json

import trio
from quart import Response

from connreg import errors

READY_TIMEOUT_SECONDS = 5.0
# A well-formed digest no blob has: existence checks on it exercise the store, nothing else.
_PROBE = "sha256:" + "0" * 64


def _metadata_probe(registry) -> None:
    if registry.engine is not None:
        registry.engine.ping()
    else:
        registry.meta.change_bounds()


async def _probe(name: str, fn, problems: dict) -> None:
    try:
        with trio.fail_after(READY_TIMEOUT_SECONDS):
            await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except trio.TooSlowError:
        problems[name] = f"no answer within {READY_TIMEOUT_SECONDS:g}s"
    except Exception as exc:  # what failed is the answer; the message never holds a secret
        problems[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


async def check(registry) -> Response:
    problems: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_probe, "metadata", lambda: _metadata_probe(registry), problems)
        nursery.start_soon(_probe, "blobs", lambda: registry.blobs.exists(_PROBE), problems)
    if not problems:
        return Response(b'{"status":"ready"}', content_type="application/json")
    body = {"errors": [{"code": errors.UNAVAILABLE.code,
                        "message": "not ready: " + ", ".join(sorted(problems)),
                        "detail": problems}]}
    return Response(json.dumps(body), status=503, content_type="application/json",
                    headers={"Retry-After": "1"})


def is_engine_unavailable(exc: BaseException) -> bool:
    """A shared engine could not be reached (connection refused, dropped, timed out), as
    opposed to a bug: answered 503 so clients and balancers retry."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (psycopg.OperationalError, psycopg.errors.AdminShutdown)):
            return True
        from psycopg_pool import PoolTimeout
        if isinstance(exc, PoolTimeout):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
