"""`connreg connected-registry show --name N --watch`: one live line while a sync runs.

It polls the connected registry's resource (what the node last reported: its sync progress
every second while blobs move, every 5 s otherwise) and prints its state, the bytes moved,
the rate and, while a transfer is in flight, the bytes left and an ETA. On a terminal the line
is rewritten in place; piped, a new line is printed whenever it changes. Ctrl-C ends it.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from connreg.cli.client import Client, path


def size_text(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def duration_text(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class RateEstimate:
    """The rate from successive reports, for nodes that do not report one themselves."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None
        self.rate: float | None = None

    def update(self, moved: int, now: float) -> float | None:
        if self._last is not None and moved != self._last[1] and now > self._last[0]:
            self.rate = max(moved - self._last[1], 0) / (now - self._last[0])
        if self._last is None or moved != self._last[1]:
            self._last = (now, moved)
        return self.rate


def progress_line(cr: dict, estimate: RateEstimate | None = None,
                  now: float | None = None) -> str:
    progress = cr.get("syncProgress") or {}
    state = cr.get("connectionState") or "Unknown"
    down = progress.get("bytesDown", progress.get("bytesTransferred") or 0)
    up = progress.get("bytesUp") or 0
    rate = progress.get("bytesPerSecond")
    if rate is None and estimate is not None:
        rate = estimate.update(down + up, time.monotonic() if now is None else now)
    parts = [f"{cr.get('name')}: {state}",
             f"{size_text(down)} down, {size_text(up)} up",
             f"{size_text(rate or 0)}/s"]
    remaining = progress.get("bytesRemaining")
    if remaining is not None:
        repo = progress.get("currentRepository")
        eta = progress.get("etaSeconds")
        if eta is None and rate:
            eta = remaining / rate
        parts.append(f"{size_text(remaining)} left" + (f" in {repo}" if repo else ""))
        parts.append(f"ETA {duration_text(eta)}" if eta is not None else "ETA unknown")
    else:
        last = cr.get("lastSuccessfulSyncTime")
        parts.append(f"idle, last sync {last}" if last else "idle, not synced yet")
    return " | ".join(parts)


def watch(client: Client, name: str, interval: float, out: TextIO = sys.stdout,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Poll and print until interrupted (Ctrl-C ends it cleanly)."""
    estimate = RateEstimate()
    live = out.isatty()
    previous = None
    width = 0
    try:
        while True:
            cr = client.get(path("connected-registries", name))
            line = progress_line(cr, estimate)
            if live:
                out.write("\r" + line.ljust(width))
                width = len(line)
                out.flush()
            elif line != previous:
                out.write(line + "\n")
                out.flush()
            previous = line
            sleep(interval)
    except KeyboardInterrupt:
        if live:
            out.write("\n")
        out.flush()
