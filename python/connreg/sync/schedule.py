"""When a connected registry may talk to its parent: cron schedule + window (§5).

`* * * * *` means continuous: always inside a window. Otherwise each cron start opens a window
of `sync_window` seconds; work left at a window's end resumes at the next start.

The clock is injectable for tests only (`Clock.offset`, settable through the test-only setting
`test_clock_offset_seconds`), so a test can place a node just before or inside a window instead
of waiting hours. Production nodes always use the real clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from connreg.control.validation import duration_seconds

CONTINUOUS = "* * * * *"


def _croniter():
    """croniter (with dateutil ~1 MB), loaded by a node with a cron schedule only."""
    from croniter import croniter

    return croniter


def parse_duration(text: str) -> float:
    """ISO-8601 duration → seconds (the control plane's parser; it validated the value)."""
    return float(duration_seconds(text, "duration"))


@dataclass
class Clock:
    offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@dataclass
class Window:
    start: float
    end: float  # float("inf") when continuous


class Schedule:
    def __init__(self, cron: str | None, window_seconds: float | None, clock: Clock):
        self.cron = (cron or CONTINUOUS).strip()
        self.window = window_seconds
        self.clock = clock
        if not self.continuous:
            _croniter()(self.cron)  # validates
            if not self.window:
                raise ValueError("a non-continuous sync schedule needs a sync window")

    @property
    def continuous(self) -> bool:
        return self.cron == CONTINUOUS

    def current(self) -> Window | None:
        """The window we are in now, or None between windows."""
        now = self.clock.now()
        if self.continuous:
            return Window(now, float("inf"))
        base = datetime.fromtimestamp(now, tz=timezone.utc)
        # A window may have started at the current minute itself: look back from just after now.
        croniter = _croniter()
        start = croniter(self.cron, base.replace(microsecond=0)).get_prev(float)
        if datetime.fromtimestamp(now, tz=timezone.utc).second == 0 and \
                croniter.match(self.cron, base):
            start = now - (now % 60)
        if now < start + self.window:
            return Window(start, start + self.window)
        return None

    def seconds_until_next(self) -> float:
        now = self.clock.now()
        base = datetime.fromtimestamp(now, tz=timezone.utc)
        nxt = _croniter()(self.cron, base).get_next(float)
        return max(0.0, nxt - now)
