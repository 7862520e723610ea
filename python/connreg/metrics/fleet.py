"""What one node knows about itself and the connected registries below it, in one snapshot.

`/metrics` and the dashboard (`connreg/ui/`) both read it. The parts that need a query (the
control documents, the outbox, the change-log times behind a child's lag) are read in a worker
thread on private read-only connections; the rest is in memory. At the root the snapshot covers
the whole tree (every node relays its descendants' reports upward); at an edge, its subtree.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import trio

from connreg.control.interfaces import CONNECTED_REGISTRY, TOKEN
from connreg.control.service import HEARTBEAT_TIMEOUT_SECONDS
from connreg.metrics.counts import oldest_unapplied, outbox_counts
from connreg.sync.state import UP_CURSOR

CONTROL_FILE = "control.sqlite"
STATES = ("Online", "Offline", "Syncing", "Unhealthy")
ROOT_NAME = "root"  # how the root is shown: it has no connected-registry resource


@dataclass
class NodeView:
    """One node as this node sees it (itself, from memory; others, from their last report)."""

    name: str
    parent: str | None
    mode: str = "ReadWrite"
    state: str = "Offline"
    # Held by a deployed instance (activationStatus Active): one created but never started, or
    # deactivated, is Offline too, and an alert on Offline alone would fire for it.
    active: bool = True
    is_self: bool = False
    direct_child: bool = False        # our child: its lag is measured against our change log
    last_contact: float | None = None  # its last report reached us (s since the epoch)
    last_sync: float | None = None     # its last successful sync
    lag_entries: int | None = None
    lag_seconds: float | None = None
    outbox_entries: int | None = None
    parked_entries: int | None = None
    store_bytes: int | None = None
    free_bytes: int | None = None
    max_store_bytes: int | None = None
    min_free_bytes: int | None = None
    bytes_per_second: float | None = None
    bytes_remaining: int | None = None
    eta_seconds: float | None = None
    bytes_down: int | None = None
    bytes_up: int | None = None
    delta_local_bytes: int | None = None
    delta_fetched_bytes: int | None = None
    current_repository: str | None = None
    children: list["NodeView"] = field(default_factory=list)

    @property
    def delta_saved_ratio(self) -> float | None:
        """Share of large-blob bytes delta transfer took from local chunks instead of the wire."""
        if not self.delta_local_bytes and not self.delta_fetched_bytes:
            return None
        return self.delta_local_bytes / (self.delta_local_bytes + self.delta_fetched_bytes)


@dataclass
class FleetSnapshot:
    me: NodeView                      # this node: the tree's root here
    registries: list[NodeView]        # everything below it, parents before children
    taken_at: float = field(default_factory=time.time)

    def all(self) -> list[NodeView]:
        return [self.me, *self.registries]


def parse_iso(text) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _read_control(db: Path) -> tuple[list[dict], dict[str, dict]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        crs = [json.loads(r[0]) for r in conn.execute(
            "SELECT doc FROM resources WHERE kind = ? ORDER BY name", (CONNECTED_REGISTRY,))]
        names = [cr.get("syncToken") for cr in crs if cr.get("syncToken")]
        tokens = {}
        for name in names:
            row = conn.execute("SELECT doc FROM resources WHERE kind = ? AND name = ?",
                               (TOKEN, name)).fetchone()
            if row:
                tokens[name.lower()] = json.loads(row[0])
        return crs, tokens
    finally:
        conn.close()


def _control_from_store(store) -> tuple[list[dict], dict[str, dict]]:
    """What _read_control reads, through the control store (PostgreSQL: a few short reads on
    the replica's reader connection)."""
    crs = sorted(store.list(CONNECTED_REGISTRY), key=lambda cr: cr.get("name", ""))
    tokens = {}
    for name in {cr["syncToken"] for cr in crs if cr.get("syncToken")}:
        doc = store.get(TOKEN, name)
        if doc is not None:
            tokens[name.lower()] = doc
    return crs, tokens


def reported_state(cr: dict, token: dict | None, now: float) -> str:
    """connectionState as reported, Offline once heartbeats stopped or its sync token is
    disabled (the rule `connected-registry show` applies, control/service.py)."""
    if token is not None and token.get("status") == "disabled":
        return "Offline"
    state = cr.get("connectionState") or "Offline"
    last = parse_iso(cr.get("lastActivityTime"))
    if state != "Offline" and (last is None or now - last > HEARTBEAT_TIMEOUT_SECONDS):
        return "Offline"
    return state if state in STATES else "Unhealthy"


def _subtree(crs: list[dict], me: str | None) -> list[dict]:
    """The CRs below `me` (all of them at the root), each after its parent."""
    by_parent: dict[str, list[dict]] = {}
    for cr in crs:
        by_parent.setdefault((cr.get("parent") or "").lower(), []).append(cr)
    out, frontier = [], [(me or "").lower()]
    while frontier:
        for child in by_parent.get(frontier.pop(0), []):
            out.append(child)
            frontier.append(child["name"].lower())
    return out


def _from_report(cr: dict, token: dict | None, me: str | None, now: float) -> NodeView:
    progress = cr.get("syncProgress") or {}
    storage = cr.get("storage") or {}
    parent = cr.get("parent") or None
    view = NodeView(
        name=cr["name"], parent=parent or ROOT_NAME, mode=cr.get("mode") or "ReadWrite",
        state=reported_state(cr, token, now), active=cr.get("activationStatus") == "Active",
        direct_child=(parent or "").lower() == (me or "").lower(),
        last_contact=parse_iso(cr.get("lastActivityTime")),
        last_sync=parse_iso(cr.get("lastSuccessfulSyncTime")),
        outbox_entries=progress.get("outboxEntries"), parked_entries=progress.get("parkedEntries"),
        store_bytes=storage.get("storeBytes"), free_bytes=storage.get("freeBytes"),
        max_store_bytes=storage.get("maxStoreBytes"), min_free_bytes=storage.get("minFreeBytes"),
        bytes_per_second=progress.get("bytesPerSecond"),
        bytes_remaining=progress.get("bytesRemaining"), eta_seconds=progress.get("etaSeconds"),
        bytes_down=progress.get("bytesDown"), bytes_up=progress.get("bytesUp"),
        delta_local_bytes=progress.get("deltaLocalBytes"),
        delta_fetched_bytes=progress.get("deltaFetchedBytes"),
        current_repository=progress.get("currentRepository"))
    return view


async def take(app) -> FleetSnapshot:
    """The snapshot for `app`'s node (blocking reads in worker threads)."""
    settings = app.config["CONNREG_SETTINGS"]
    registry = app.extensions["registry"]
    service = app.extensions.get("sync")
    me = service.config.name if service is not None else None
    now = time.time()
    engine = registry.engine  # a PostgreSQL root: no control.sqlite / metadata.sqlite here
    if engine is not None:
        crs, tokens = _control_from_store(app.extensions["control"].store)
    else:
        crs, tokens = await trio.to_thread.run_sync(_read_control,
                                                    Path(settings.data_dir) / CONTROL_FILE)
    below = [_from_report(cr, tokens.get((cr.get("syncToken") or "").lower()), me, now)
             for cr in _subtree(crs, me)]
    # A direct child's lag: our changes after its feed cursor, and how old the first one is.
    head = registry.meta.change_bounds()[1]
    cursors = {}
    for cr, view in zip(_subtree(crs, me), below):
        cursor = (cr.get("syncProgress") or {}).get("downCursor")
        if view.direct_child and isinstance(cursor, int):
            view.lag_entries = max(head - cursor, 0)
            cursors[view.name] = cursor
    first_times = await oldest_unapplied(settings.data_dir, cursors, engine)
    for view in below:
        if view.name in first_times:
            first = first_times[view.name]
            view.lag_seconds = 0.0 if first is None else max(now - first, 0.0)

    own = NodeView(name=me or ROOT_NAME, parent=None, is_self=True)
    budget = registry.budget
    own.store_bytes, own.max_store_bytes = budget.used_bytes, budget.max_store or None
    own.free_bytes = await trio.to_thread.run_sync(budget.free_bytes)
    own.min_free_bytes = budget.min_free
    if service is not None:
        state = service.state
        own.mode = service.config.mode
        own.state = state.connection_state
        own.last_sync = state.last_successful_sync_time
        counts = await outbox_counts(settings.data_dir, state.cursor(UP_CURSOR),
                                     not service.config.read_only, engine)
        own.outbox_entries, own.parked_entries = counts.pending, counts.parked
        transfer = state.transfer
        own.bytes_per_second, own.bytes_remaining = transfer.rate(), transfer.remaining()
        progress = transfer.to_json()
        own.eta_seconds = progress["etaSeconds"]
        own.bytes_down, own.bytes_up = transfer.bytes["down"], transfer.bytes["up"]
        own.delta_local_bytes = transfer.delta_local_bytes
        own.delta_fetched_bytes = transfer.delta_fetched_bytes
        own.current_repository = state.current_repo
    else:
        own.state = "Online"  # the root serves; it has no parent link to lose
        counts = await outbox_counts(settings.data_dir, None, False, engine)
        own.outbox_entries, own.parked_entries = 0, counts.parked

    # Link the tree for the dashboard.
    by_name = {own.name.lower(): own, **{v.name.lower(): v for v in below}}
    for view in below:
        parent = by_name.get((view.parent or "").lower()) if not view.direct_child else own
        (parent or own).children.append(view)
    return FleetSnapshot(own, below, now)
