"""Keeping a long-running node's memory near what it uses (docs/operations.md, "Memory").

glibc keeps freed memory for reuse. Two of its habits made a node's RSS climb under a burst and
stay there (bench/RESULTS.md, "Sync under load"):
- Its mmap threshold is dynamic: once a large block (a 16 MiB scrypt buffer, a 4 MiB blob read)
  is freed, later blocks of that size come from the heap instead of their own mapping, and a
  heap gives memory back only from its top. A fixed threshold (`malloc_mmap_threshold_bytes`)
  keeps large blocks in mappings, which return to the system when freed.
- Freed small blocks stay in the arenas. `malloc_trim` hands whole free pages back
  (`madvise`); the node calls it every `malloc_trim_interval_seconds` when the heap grew.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

import trio

log = logging.getLogger("connreg")
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.malloc_trim  # absent outside glibc
            lib.mallopt
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def fix_mmap_threshold(threshold: int) -> bool:
    """Set glibc's mmap threshold (which also stops it from moving); False without glibc or
    with 0 (glibc's dynamic default kept)."""
    lib = _glibc()
    if lib is None or threshold <= 0:
        return False
    return lib.mallopt(M_MMAP_THRESHOLD, threshold) == 1


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def trim_loop(interval: float) -> None:
    """Give free heap pages back every `interval` seconds, when RSS grew since the last time
    (an idle node does nothing). malloc_trim runs in a worker thread: it walks the arenas."""
    lib = _glibc()
    if lib is None or interval <= 0:
        return
    floor = 0
    while True:
        await trio.sleep(interval)
        rss = rss_bytes()
        if rss <= floor:
            continue
        await trio.to_thread.run_sync(lib.malloc_trim, 0)
        after = rss_bytes()
        if rss - after > 8 << 20:
            log.debug("gave %.1f MiB of free heap back to the system", (rss - after) / 2**20)
        floor = after
