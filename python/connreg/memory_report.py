"""Where a node's memory is: `GET /connreg/v1/debug/memory` (admin only, every node).

The answer (JSON, a few KiB at most) holds:
- `rss`: the process's resident memory from /proc/self/status (anonymous vs file-backed; the
  file-backed part is shared libraries, shared with other processes on the machine);
- `malloc`: glibc's heap: bytes in use, free but kept, and in their own mappings;
- `sqlite`: bytes SQLite holds in this process (page caches of every open connection), read
  with `sqlite3_memory_used()` from the library the `sqlite3` module uses;
- `python`: modules imported, threads, pymalloc blocks allocated;
- `caches`: each in-memory cache and queue with its size and the setting that bounds it;
- `tracemalloc`: when `memory_trace_frames` > 0 (tracing started at serve time), the largest
  allocation sites (`?top=N`, at most 100) and the traced total; else null.

Nothing here costs anything until it is asked for (tracing is off by default), and it shows
sizes only: no keys, digests, names or credentials.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
import tracemalloc
from typing import Any

from quart import Blueprint, Response, current_app, request

from connreg import memory
from connreg.api.http import json_response
from connreg.parsing import bounded_int

bp = Blueprint("memory_report", __name__, url_prefix="/connreg/v1/debug")
MAX_TOP = 100
_sqlite_lib: Any = None


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes (empty without /proc)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def sqlite_memory_used() -> int | None:
    """Bytes SQLite has allocated in this process, all connections together; None when the
    library cannot be reached (another build linked into the module statically)."""
    global _sqlite_lib
    if _sqlite_lib is None:
        import _sqlite3

        try:  # the library the sqlite3 module loaded, not a second copy
            lib = ctypes.CDLL(_sqlite3.__file__)
            lib.sqlite3_memory_used.restype = ctypes.c_int64
            lib.sqlite3_memory_used()
            _sqlite_lib = lib
        except (OSError, AttributeError):
            name = ctypes.util.find_library("sqlite3")
            try:
                lib = ctypes.CDLL(name) if name else None
                if lib is not None:
                    lib.sqlite3_memory_used.restype = ctypes.c_int64
                _sqlite_lib = lib or False
            except (OSError, AttributeError):
                _sqlite_lib = False
    return int(_sqlite_lib.sqlite3_memory_used()) if _sqlite_lib else None


def cache_sizes(app) -> dict[str, dict]:
    """Every bounded in-memory cache and queue of the node: size, bound, unit, setting."""
    registry = app.extensions["registry"]
    out: dict[str, dict] = {}

    def add(name: str, size: int, bound: int, unit: str, setting: str) -> None:
        out[name] = {"size": size, "max": bound, "unit": unit, "setting": setting}

    cache = registry.manifest_cache
    add("manifests", cache.used_bytes, cache.max_bytes, "bytes", "manifest_cache_bytes")
    authn = app.extensions["authorizer"].authn
    if authn is not None:
        add("verified_credentials", authn.cached_credentials, authn.credential_cache_entries,
            "entries", "credential_cache_entries")
        add("verified_tokens", authn.tokens.cached_tokens, authn.tokens.cache_entries,
            "entries", "token_cache_entries")
        limiter = authn.limiter
        if hasattr(limiter, "max_pairs"):  # the in-process one (not PostgreSQL's)
            add("login_failure_pairs", len(limiter), limiter.max_pairs, "entries",
                "(fixed: 100000)")
    sessions = app.extensions.get("ui_sessions")
    if sessions is not None:
        from connreg.ui.sessions import MAX_SESSIONS
        add("dashboard_sessions", len(sessions), MAX_SESSIONS, "entries", "(fixed: 1000)")
    return out


def top_allocations(limit: int) -> dict | None:
    """The `limit` largest allocation sites by line, while tracemalloc is tracing."""
    if not tracemalloc.is_tracing():
        return None
    traced, peak = tracemalloc.get_traced_memory()
    stats = tracemalloc.take_snapshot().statistics("lineno")
    roots = sorted({p for p in sys.path if p}, key=len, reverse=True)

    def where(frame) -> str:
        name = frame.filename
        for root in roots:  # paths relative to the import root: shorter, and no host layout
            if name.startswith(root + os.sep):
                name = name[len(root) + 1:]
                break
        return f"{name}:{frame.lineno}"

    return {"tracedBytes": traced, "peakBytes": peak, "frames": tracemalloc.get_traceback_limit(),
            "top": [{"where": where(s.traceback[0]), "bytes": s.size, "count": s.count}
                    for s in stats[:limit]]}


def report(app, top: int) -> dict:
    return {"rss": proc_status(), "malloc": memory.malloc_info(),
            "sqlite": {"memoryUsed": sqlite_memory_used()},
            "python": {"modules": len(sys.modules), "threads": threading.active_count(),
                       "allocatedBlocks": sys.getallocatedblocks()},
            "caches": cache_sizes(app), "tracemalloc": top_allocations(top)}


@bp.route("/memory", methods=["GET"])
async def memory_endpoint() -> Response:
    await current_app.extensions["authorizer"].require_node_admin("the memory report")
    top = bounded_int(request.args.get("top", "20"), "top", 1, MAX_TOP)
    return json_response(report(current_app, top), headers={"Cache-Control": "no-store"})
