"""Wiring GC into a serving node: the data-dir lock, the collector, its API and its schedule."""

from __future__ import annotations

from typing import Callable

import trio

from connreg.config import Settings
from connreg.gc import endpoints
from connreg.gc.collector import GarbageCollector
from connreg.gc.lock import hold_for_serving
from connreg.gc.schedule import run_on_schedule
from connreg.registry import Registry
from connreg.sync.schedule import Clock
from connreg.sync.state import UP_CURSOR


def collector_for(reg: Registry, state: dict | None) -> GarbageCollector:
    """A ReadWrite connected registry never collects what its outbox still has to push."""
    read_write_edge = state is not None and state.get("mode") != "ReadOnly"
    if not read_write_edge:
        return GarbageCollector(reg)
    from connreg.sync.puller import PARENT  # loaded by the edge's sync already

    return GarbageCollector(reg, UP_CURSOR, PARENT)


def install(app, reg: Registry, settings: Settings, state: dict | None) -> None:
    """At app creation: hold the data dir for serving, create the collector, serve its API."""
    app.extensions["gc_lock"] = hold_for_serving(settings.data_dir)
    app.extensions["gc"] = collector_for(reg, state)
    app.extensions["gc_schedule"] = lambda: settings.gc_schedule.strip()
    app.register_blueprint(endpoints.bp)


async def start(app, settings: Settings, nursery: trio.Nursery) -> None:
    """Once serving: run GC on the schedule. A connected registry follows its resource."""
    collector: GarbageCollector = app.extensions["gc"]
    service = app.extensions.get("sync")
    expression: Callable[[], str]
    if service is not None:
        def expression() -> str:
            config = service.config
            return (config.gc_schedule or "").strip() if config.gc_enabled else ""
        app.extensions["gc_schedule"] = expression
    else:
        expression = app.extensions["gc_schedule"]

    async def scheduled_run() -> None:
        await collector.collect(settings.gc_grace_seconds, settings.gc_untagged_retention_seconds)

    await nursery.start(run_on_schedule, expression, scheduled_run,
                        Clock(settings.test_clock_offset_seconds))
