"""How the dashboard writes numbers and times (templates call these as `fmt.…`)."""

from __future__ import annotations

import time


def size(n) -> str:
    if n is None:
        return "–"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "–"


def rate(n) -> str:
    return "–" if n is None else f"{size(n)}/s"


def seconds(n) -> str:
    if n is None:
        return "–"
    n = int(round(n))
    if n < 60:
        return f"{n} s"
    if n < 3600:
        return f"{n // 60} min {n % 60:02d} s"
    if n < 86400:
        return f"{n // 3600} h {n % 3600 // 60:02d} min"
    return f"{n // 86400} d {n % 86400 // 3600} h"


def ago(ts) -> str:
    if ts is None:
        return "never"
    return f"{seconds(max(time.time() - ts, 0))} ago"


def when(ts) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def percent(ratio) -> str:
    return "–" if ratio is None else f"{ratio * 100:.0f} %"


def disk_ratio(view) -> float | None:
    """Share of the node's budget its store uses: of max_store_bytes when capped, else of
    what the filesystem could hold for it (store + free − min free)."""
    if view.store_bytes is None:
        return None
    if view.max_store_bytes:
        return min(view.store_bytes / view.max_store_bytes, 1.0)
    if view.free_bytes is None:
        return None
    room = view.store_bytes + max(view.free_bytes - (view.min_free_bytes or 0), 0)
    return min(view.store_bytes / room, 1.0) if room else None


def disk_limit(view) -> str:
    if view.max_store_bytes:
        return f"of {size(view.max_store_bytes)} cap"
    if view.free_bytes is not None:
        return f"{size(view.free_bytes)} free"
    return ""


def short_digest(digest) -> str:
    return digest[:19] + "…" if digest and len(digest) > 20 else (digest or "")
