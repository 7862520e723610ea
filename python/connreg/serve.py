"""Run one node: the Quart app under Hypercorn on trio."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from connreg import connections, memory
from connreg.app import create_app
from connreg.config import Settings
from connreg.tls import ServedCertificate

M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)

log = logging.getLogger("connreg")


async def _shutdown_on_signal(event: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            event.set()
            return


def _serve_tls(config: HypercornConfig, certificate: ServedCertificate) -> None:
    """Hypercorn serves its bind addresses with TLS once certfile and keyfile are set; the
    context it builds is ours instead of its own, so a certificate reload (SIGHUP, file change)
    reaches every listener. Hypercorn's ALPN list offers h2 first, then http/1.1."""
    config.certfile, config.keyfile = str(certificate.cert_file), str(certificate.key_file)
    context = certificate.server_context(config.ciphers, config.alpn_protocols)
    config.create_ssl_context = lambda: context


async def run(settings: Settings) -> None:
    certificate = ServedCertificate.from_settings(settings.tls_cert, settings.tls_key)
    app = create_app(settings)
    registry = app.extensions["registry"]
    purged = registry.blobs.purge_stale_uploads(settings.upload_ttl_seconds)
    if purged:
        log.info("purged %d stale uploads", purged)

    config = HypercornConfig()
    host, port = settings.host_port
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    if certificate is not None:
        _serve_tls(config, certificate)
    connections.configure(config, settings)  # timeouts, header limits, closing (#330)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_shutdown_on_signal, shutdown)
        nursery.start_soon(memory.trim_loop, settings.malloc_trim_interval_seconds)
        if certificate is not None:
            await nursery.start(certificate.keep_current, settings.tls_reload_check_seconds)
        log.info("connreg listening on %s://%s (data dir %s)",
                 "https" if certificate else "http", settings.listen, settings.data_dir)
        await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait)
        nursery.cancel_scope.cancel()


def configure_logging(settings: Settings) -> None:
    """The node's log format; a no-op when done already (the CLI does it before serving, so
    what happens to the data dir first is logged the same way)."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per request to the parent is noise; sync logs what it does itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas before any worker thread exists (`malloc_arena_max`); the
    MALLOC_ARENA_MAX environment variable, when set, wins. False where there is no glibc."""
    if arenas <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False


def main(settings: Settings) -> None:
    configure_logging(settings)
    limit_malloc_arenas(settings.malloc_arena_max)
    memory.fix_mmap_threshold(settings.malloc_mmap_threshold_bytes)
    if settings.memory_trace_frames > 0:  # for GET /connreg/v1/debug/memory (memory_report.py)
        import tracemalloc
        tracemalloc.start(min(settings.memory_trace_frames, 100))
    trio.run(run, settings)
