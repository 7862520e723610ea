"""Keeping a long-running node's memory near what it uses (docs/operations.md, "Memory").

glibc keeps freed memory for reuse. Two of its habits made a node's RSS climb under a burst and
stay there (bench/RESULTS.md, "Sync under load"):
- Its mmap threshold is dynamic: once a large block (a 16 MiB scrypt buffer, a 4 MiB blob read)
  is freed, later blocks of that size come from the heap instead of their own mapping, and a
  heap gives memory back only from its top. A fixed threshold (`malloc_mmap_threshold_bytes`)
  keeps large blocks in mappings, which return to the system when freed.
- Freed small blocks stay in the arenas. `malloc_trim` hands whole free pages back
  (`madvise`); the node calls it every `malloc_trim_interval_seconds` when RSS grew or more
  memory was freed since the last trim. (Growth alone was not enough: a trim at the peak of a
  burst, while its objects were still alive, was the last one, and the 50-60 MB they left
  free when the burst ended stayed resident for good: bench/RESULTS.md, "Memory (m13)".)
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


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def malloc_info() -> dict[str, int] | None:
    """glibc's own view, all arenas (mallinfo2, glibc 2.33+): heap bytes taken from the
    system, of them in use and free (kept for reuse; what malloc_trim can hand back, whole
    pages of it), and large blocks in their own mappings. None without it."""
    lib = _glibc()
    fn = getattr(lib, "mallinfo2", None) if lib is not None else None
    if fn is None:
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return {"heapBytes": info.arena, "inUseBytes": info.uordblks, "freeBytes": info.fordblks,
            "mmapBytes": info.hblkhd}


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# Freed heap memory that is worth a trim even though RSS did not grow (below it: noise).
TRIM_FREED_BYTES = 1 << 20


class TrimPolicy:
    """When a trim is worth it: RSS grew, or at least TRIM_FREED_BYTES more heap is free
    than right after the last trim (`free` None: no mallinfo2, growth alone decides)."""

    def __init__(self) -> None:
        self.floor = 0  # RSS right after the last trim
        self.freed = 0  # free heap bytes right after the last trim, or the lowest since

    def due(self, rss: int, free: int | None) -> bool:
        if rss > self.floor or (free is not None and free >= self.freed + TRIM_FREED_BYTES):
            return True
        if free is not None and free < self.freed:
            self.freed = free  # reused since: count the next frees from here
        return False

    def trimmed(self, rss: int, free: int | None) -> None:
        self.floor, self.freed = rss, free or 0


def _free_heap() -> int | None:
    info = malloc_info()
    return info["freeBytes"] if info else None


def _trim(lib) -> tuple[int, int | None]:
    """malloc_trim; then (RSS, free heap bytes) as they are after it."""
    lib.malloc_trim(0)
    return rss_bytes(), _free_heap()


async def trim_loop(interval: float) -> None:
    """Give free heap pages back every `interval` seconds when `TrimPolicy` says so (an idle
    node does nothing). malloc_trim runs in a worker thread: it walks the arenas."""
    lib = _glibc()
    if lib is None or interval <= 0:
        return
    policy = TrimPolicy()
    # The first look soon after start: what importing and opening the stores left free goes
    # back before the node idles (~1 MB), not only after the first interval.
    delay = min(interval, 1.0)
    while True:
        await trio.sleep(delay)
        delay = interval
        rss = rss_bytes()
        if not policy.due(rss, _free_heap()):
            continue
        after, free = await trio.to_thread.run_sync(_trim, lib)
        policy.trimmed(after, free)
        if rss - after > 8 << 20:
            log.debug("gave %.1f MiB of free heap back to the system", (rss - after) / 2**20)
