"""Wiring: the background tasks every node runs for sync, started by the app.

- Every node prunes its change log to its children's message TTL (the longest one, default
  P2D), so a child away for longer finds its cursor expired and reconciles fully.
- A connected registry (a node with a connection string) also runs its SyncService.
"""

from __future__ import annotations

import logging

import trio

from typing import TYPE_CHECKING

from connreg.config import Settings
from connreg.control.interfaces import CONNECTED_REGISTRY, ControlStore
from connreg.control.activation import connection
from connreg.registry import Registry
from connreg.sync.schedule import Clock, parse_duration
from connreg.sync.state import UP_CURSOR

if TYPE_CHECKING:
    from connreg.sync.service import SyncService

log = logging.getLogger("connreg.sync")
DEFAULT_TTL = "P2D"
PRUNE_EVERY = 60.0


def retention_seconds(store: ControlStore, me: str | None) -> float:
    """The longest message TTL among this node's direct children."""
    ttls = [parse_duration(cr.get("messageTtl") or DEFAULT_TTL)
            for cr in store.list(CONNECTED_REGISTRY)
            if (cr.get("parent") or None) == me or
            (me is not None and (cr.get("parent") or "").lower() == me.lower())]
    return max(ttls, default=parse_duration(DEFAULT_TTL))


async def prune_loop(reg: Registry, store: ControlStore, me: str | None, clock: Clock,
                     keeps_outbox: bool = False) -> None:
    """`keeps_outbox` on a ReadWrite connected registry: entries its parent has not yet
    acknowledged are its outbox, kept however long the parent is away (nothing is lost)."""
    while True:
        cutoff = clock.now() - retention_seconds(store, me)
        keep_from = None
        if keeps_outbox:
            from connreg.sync.puller import PARENT

            unsent = reg.meta.changes_since(int(reg.meta.get_state(UP_CURSOR) or 0), 1,
                                            exclude_origin=PARENT)
            keep_from = unsent[0].seq if unsent else None
        pruned = await reg.meta.prune_changes(cutoff, keep_from)
        if pruned:
            log.info("pruned %d change-log entries older than the message TTL", pruned)
        await trio.sleep(PRUNE_EVERY)


def build_sync_service(settings: Settings, reg: Registry, store: ControlStore, state: dict,
                       clock: Clock) -> SyncService:
    # The sync machinery (and httpx) is loaded by a node with a parent only: a root never
    # needs it (docs/operations.md, Memory).
    from connreg.audit.forward import AuditForwarder
    from connreg.delta.bandwidth import BandwidthMeter
    from connreg.sync.control_sync import descendant_statuses, replace_documents
    from connreg.sync.remote import ParentClient
    from connreg.sync.service import NodeConfig, SyncService, apply_log_level

    conn = connection(settings)
    config = NodeConfig.from_json(state)
    apply_log_level(config.log_level)
    meter = BandwidthMeter(config.bandwidth_limit)
    parent = ParentClient(conn.base_url, (conn.token, conn.password), meter=meter,
                          ca_file=conn.ca_file)
    service = SyncService(reg, parent, config, clock,
                          descendants=lambda: descendant_statuses(store, config.name),
                          on_config=lambda doc: replace_documents(store, doc))
    if getattr(reg, "audit", None) is not None:  # the audit trail goes up with the reports
        service.audit_forwarder = AuditForwarder(reg.audit, reg.meta)
    return service


async def run_node_tasks(settings: Settings, reg: Registry, store: ControlStore,
                         state: dict | None, nursery: trio.Nursery) -> SyncService | None:
    clock = Clock(settings.test_clock_offset_seconds)
    me = state["name"] if state else None
    read_write = state is not None and state.get("mode") != "ReadOnly"
    nursery.start_soon(prune_loop, reg, store, me, clock, read_write)
    if state is None:
        return None
    service = build_sync_service(settings, reg, store, state, clock)
    await nursery.start(service.run)
    log.info("connected registry %s: syncing with %s (%s)", me, connection(settings).endpoint,
             service.config.mode)
    return service
