"""Automatic GC runs: at the times of a cron expression (UTC), read again before every wait.

The root's expression is the `gc_schedule` setting; a connected registry's comes from its
resource (`gcEnabled`, `gcSchedule`) as last received from its parent, so a change made at the
root takes effect at the edge's next configuration sync. No expression: no automatic runs
(the management API and `connreg maintenance gc` still collect on demand).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Awaitable, Callable

import trio

from connreg.sync.schedule import Clock

log = logging.getLogger("connreg.gc")
# How often a waiting loop looks at the expression again (it may have changed meanwhile).
RECHECK_SECONDS = 30.0


def next_run(cron: str, now: float) -> float:
    """The first time after `now` that `cron` names (ValueError/KeyError if it is invalid)."""
    from croniter import croniter  # loaded once a schedule is set (docs/operations.md, Memory)

    return croniter(cron, datetime.fromtimestamp(now, tz=timezone.utc)).get_next(float)


def check_schedule(cron: str, name: str) -> None:
    """ValueError naming the setting unless `cron` is empty or a valid cron expression."""
    if cron.strip():
        try:
            next_run(cron.strip(), 0.0)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"setting {name}: {cron!r} is not a cron expression "
                             f"(minute hour day month weekday, e.g. '0 0 * * *'): {exc}") from None


async def run_on_schedule(expression: Callable[[], str | None], collect: Callable[[], Awaitable],
                          clock: Clock, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run `collect()` at every time `expression()` names; never raises (a failed run is
    logged and the next one happens on time)."""
    task_status.started()
    warned: str | None = None
    while True:
        cron = (expression() or "").strip()
        if not cron:
            await trio.sleep(RECHECK_SECONDS)
            continue
        try:
            due = next_run(cron, clock.now())
        except (ValueError, KeyError) as exc:
            if warned != cron:
                log.warning("gc schedule %r is not a valid cron expression (%s); no automatic "
                            "garbage collection until it is fixed", cron, exc)
                warned = cron
            await trio.sleep(RECHECK_SECONDS)
            continue
        while clock.now() < due and (expression() or "").strip() == cron:
            await trio.sleep(min(RECHECK_SECONDS, due - clock.now()))
        if (expression() or "").strip() != cron:
            continue  # changed while we waited: wait for the new expression's time
        try:
            await collect()
        except Exception:  # a bug or a disk error: log it, keep the schedule
            log.exception("scheduled garbage collection failed")
