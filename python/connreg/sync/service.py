"""The sync service of a connected registry: owns the parent connection and three loops.

Inside a sync window (always, when continuous) three tasks run under one nursery:
- down: long-poll the parent's change feed and apply changes; reconcile fully on first sync,
  when the cursor expired, or when a resync was requested;
- up (ReadWrite only): wake on every local change and push the outbox;
- status: report this node's and its descendants' state to the parent (heartbeat).
At the window's end the nursery is cancelled; cursors are durable, so the next window resumes
exactly where this one stopped. Parent failures put the node Offline and back off (capped),
while clients keep being served from the local store.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import trio

from connreg import __version__
from connreg.auth.actions import repo_matches
from connreg.control import activation
from connreg.metrics.counts import outbox_counts
from connreg.registry import Registry
from connreg.storage.budget import find_out_of_space
from connreg.sync.batch import apply_feed
from connreg.sync.puller import PARENT, Puller
from connreg.sync.pusher import Pusher
from connreg.sync.remote import ParentBusy, ParentClient, ParentRefused, ParentUnavailable
from connreg.sync.schedule import Clock, Schedule, parse_duration
from connreg.sync.state import DOWN_CURSOR, UP_CURSOR, SyncState

log = logging.getLogger("connreg.sync")
LONG_POLL = 20.0
STATUS_EVERY = 5.0
STATUS_BUSY_EVERY = 1.0  # while a transfer runs (live progress at the parent)
MAX_BACKOFF = 30.0
MAX_REFUSED_BACKOFF = 10.0


# The resource's log levels (§2) as Python logging levels; "None" silences the node's own logs.
LOG_LEVELS = {"Debug": logging.DEBUG, "Information": logging.INFO, "Warning": logging.WARNING,
              "Error": logging.ERROR, "None": logging.CRITICAL + 1}


def apply_log_level(level: str | None) -> None:
    """Set the connreg loggers to the level the parent configured for this registry."""
    if level in LOG_LEVELS:
        logging.getLogger("connreg").setLevel(LOG_LEVELS[level])


def _leaves(exc: BaseException):
    """The individual exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


@dataclass
class NodeConfig:
    """This connected registry's settings as last received from its parent."""

    name: str
    mode: str = "ReadWrite"
    repositories: list[str] = field(default_factory=list)
    sync_schedule: str | None = None
    sync_window: str | None = None
    message_ttl: str = "P2D"
    resync_requested_at: str | None = None
    bandwidth_limit: int | None = None  # bytes/s for all sync traffic, both directions
    log_level: str | None = None  # Debug, Information, Warning, Error, None (§2)
    gc_enabled: bool = True  # garbage collection on gc_schedule (docs/gc.md)
    gc_schedule: str | None = "0 0 * * *"

    @classmethod
    def from_json(cls, doc: dict) -> "NodeConfig":
        return cls(name=doc["name"], mode=doc.get("mode") or "ReadWrite",
                   repositories=list(doc.get("repositories") or []),
                   sync_schedule=doc.get("syncSchedule"), sync_window=doc.get("syncWindow"),
                   message_ttl=doc.get("messageTtl") or "P2D",
                   resync_requested_at=doc.get("resyncRequestedAt"),
                   bandwidth_limit=doc.get("bandwidthLimit"),
                   log_level=doc.get("logLevel"),
                   gc_enabled=doc.get("gcEnabled") is not False,
                   gc_schedule=doc.get("gcSchedule") or "0 0 * * *")

    @property
    def read_only(self) -> bool:
        return self.mode == "ReadOnly"

    def wants(self, repo: str) -> bool:
        return any(repo_matches(pattern, repo) for pattern in self.repositories)


class SyncService:
    def __init__(self, reg: Registry, parent: ParentClient, config: NodeConfig, clock: Clock,
                 descendants=None, on_config=None):
        self.reg = reg
        self.parent = parent
        self.config = config
        self.clock = clock
        self.state = SyncState(reg.meta)
        self.puller = Puller(reg, parent, self.state)
        self.pusher = Pusher(reg, parent, self.state, self.puller)
        # Callables supplied by the control plane: statuses of our descendants (relayed up),
        # and what to do with the configuration document the parent sends down.
        self.descendants = descendants or (lambda: [])
        self.on_config = on_config
        self._reconcile_needed = self.state.cursor(DOWN_CURSOR) is None
        self._config_version: str | None = None  # as last applied; the feed says when it moves
        self.audit_forwarder = None  # set by the runner: audit events to send up
        self._unreachable = False  # the last failure was "parent unreachable"

    # --- public ------------------------------------------------------------------------------
    def schedule(self) -> Schedule:
        window = None
        if self.config.sync_window:
            window = max(parse_duration(self.config.sync_window), 1.0)
        return Schedule(self.config.sync_schedule, window, self.clock)

    def status(self) -> dict:
        return {"name": self.config.name, "version": __version__,
                "lastActivityTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "storage": self.reg.budget.snapshot(),  # disk use vs budget, for the dashboard
                **self.state.to_json()}

    async def count_outbox(self) -> None:
        """Refresh the outbox figures the status report carries (a query, off the loop)."""
        counts = await outbox_counts(self.reg.settings.data_dir, self.state.cursor(UP_CURSOR),
                                     not self.config.read_only, self.reg.engine)
        self.state.outbox_entries, self.state.parked_entries = counts.pending, counts.parked

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Never raises for parent trouble: it backs off and retries."""
        task_status.started()
        while True:
            schedule = self.schedule()
            window = schedule.current()
            if window is None:
                self.state.connection_state = "Offline"
                wait = max(schedule.seconds_until_next(), 0.1)
                log.info("outside the sync window; next window in %.0f s", wait)
                await trio.sleep(wait)
                continue  # look at the schedule again: the window may be open now
            end = window.end
            deadline = trio.current_time() + (end - self.clock.now()) if end != math.inf else math.inf
            with trio.move_on_at(deadline):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guarded, "down", self._down_loop)
                    if not self.config.read_only:
                        nursery.start_soon(self._guarded, "up", self._up_loop)
                    nursery.start_soon(self._guarded, "status", self._status_loop)
                    nursery.start_soon(self._watch_schedule, nursery, schedule.cron,
                                       self.config.sync_window)
            log.info("sync window closed; work resumes in the next window")

    # --- loops ---------------------------------------------------------------------------------
    async def _guarded(self, name: str, loop) -> None:
        """Run one loop forever: parent trouble backs off and retries; so does a bug, loudly,
        since a node that stops syncing for good is worse than one that retries."""
        backoff = 1.0
        while True:
            try:
                await loop()
                return
            except Exception as exc:  # groups from nurseries included; Cancelled is not caught
                leaves = list(_leaves(exc))
                busy = next((e for e in leaves if isinstance(e, ParentBusy)), None)
                unavailable = next((e for e in leaves if isinstance(e, ParentUnavailable)), None)
                refused = next((e for e in leaves if isinstance(e, ParentRefused)), None)
                full = find_out_of_space(exc)
                if full is not None:
                    # Nothing was stored and the cursor did not move: retry once there is room.
                    self.state.connection_state = "Unhealthy"
                    self.state.report("DISK_FULL", self._disk_full_description(name, full))
                    log.warning("%s sync: no room to store what the parent sent (%s); "
                                "retrying in %.0f s", name, full, backoff)
                elif busy is not None:
                    # Reachable, and rate limiting us: not "unreachable", and not Offline.
                    self.state.report("PARENT_BUSY", f"parent is rate limiting {name} sync: "
                                      f"{busy}")
                    log.warning("%s sync: the parent asks to slow down (%s); retrying in "
                                "%.0f s", name, busy, backoff)
                elif unavailable is not None:
                    self._unreachable = True  # "reachable again" is logged once it answers
                    self.state.connection_state = "Offline"
                    self.state.report("PARENT_UNREACHABLE", f"parent unreachable: {unavailable}")
                    log.warning("%s sync: parent unreachable (%s); retrying in %.0f s", name,
                                unavailable, backoff)
                elif refused is not None:
                    self.state.connection_state = "Unhealthy"
                    self.state.report("SYNC_REFUSED", f"parent refused {name} sync: {refused}")
                    log.warning("%s sync refused by parent: %s; retrying in %.0f s", name,
                                refused, backoff)
                    # Refused credentials right after a rotation usually mean the parent's copy
                    # of our token is a moment old: retry soon, but not so often as to be
                    # rate limited.
                    backoff = min(backoff, MAX_REFUSED_BACKOFF / 2)
                else:
                    self.state.connection_state = "Unhealthy"
                    self.state.report("SYNC_ERROR", f"{name} sync failed: {type(exc).__name__}")
                    log.exception("%s sync failed unexpectedly; retrying in %.0f s", name, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _disk_full_description(self, name: str, full: BaseException) -> str:
        refusal = self.reg.budget.refusal(full)
        numbers = ", ".join(f"{k}={v}" for k, v in refusal.detail.items())
        return f"{name} sync stopped by a full disk: {refusal.message} ({numbers})"

    def _online(self) -> None:
        if self._unreachable:  # not after a refusal: the parent was reachable all along
            self._unreachable = False
            log.info("parent reachable again")
        self.state.connection_state = "Online"
        self.state.clear("PARENT_BUSY")
        self.state.clear("PARENT_UNREACHABLE")
        self.state.clear("SYNC_REFUSED")

    async def _down_loop(self) -> None:
        if self.on_config is not None:
            await self._sync_config()
        while True:
            if self._reconcile_needed:
                await self.reconcile()
            cursor = self.state.cursor(DOWN_CURSOR) or 0
            wait = LONG_POLL if self.schedule().continuous else 0.0
            feed = await self.parent.changes(cursor, wait, self._config_version)
            self._online()
            if self.on_config is not None and feed.get("config") != self._config_version:
                await self._sync_config()
            if feed.get("expired"):
                log.info("change feed cursor %d expired at the parent; reconciling fully", cursor)
                self._reconcile_needed = True
                continue
            if feed["changes"]:
                self.state.connection_state = "Syncing"
                await apply_feed(self.puller, feed["changes"], self._covers,
                                 self.reg.settings.sync_apply_parallel)
                self.state.connection_state = "Online"
            if feed["cursor"] != cursor:
                await self.state.set(DOWN_CURSOR, str(feed["cursor"]))
            self._synced()
            self.state.clear("DISK_FULL")  # everything up to the cursor is stored
            if not feed["changes"] and not wait:
                # Windowed mode without long-poll: poll again shortly.
                await trio.sleep(5.0)

    async def _up_loop(self) -> None:
        while True:
            # Entries parked with 403 that our set covers are sent again at start and then
            # hourly: the set, or the parent's, may have grown meanwhile (sync/parked.py).
            await self.pusher.parked.recheck_refused(self._covers)
            head = self.reg.meta.change_bounds()[1]
            if self.pusher.has_work():
                self.state.connection_state = "Syncing"
                sent = await self.pusher.push_all()
                self._online()
                if sent:
                    log.info("pushed %d change(s) to the parent", sent)
                    self._synced()
            await self.pusher.wait_for_work(head, 10.0)

    def _covers(self, repo: str) -> bool:
        """Whether this node synchronizes `repo` (an empty set means everything)."""
        return self.config.wants(repo) or not self.config.repositories

    async def _status_loop(self) -> None:
        while True:
            await self.count_outbox()
            # The audit trail climbs with the reports (audit/forward.py): durable cursor,
            # bounded batches, metered; acknowledged by the parent before the cursor moves.
            batch = self.audit_forwarder.batch() if self.audit_forwarder else None
            answer = await self.parent.report_status([self.status(), *self.descendants()],
                                                     audit=batch)
            self._online()
            if batch is not None:
                await self.audit_forwarder.acknowledged(batch, answer)
            # Every STATUS_EVERY seconds, every second while blobs move: the parent's
            # `show --watch` and dashboard follow a large transfer live.
            for _ in range(int(STATUS_EVERY / STATUS_BUSY_EVERY)):
                await trio.sleep(STATUS_BUSY_EVERY)
                if self.state.transfer.remaining() is not None or (
                        self.audit_forwarder is not None and self.audit_forwarder.behind):
                    break

    async def _watch_schedule(self, nursery: trio.Nursery, cron, window) -> None:
        """Restart the window logic when the parent changes our schedule."""
        while (self.config.sync_schedule, self.config.sync_window) == (cron, window):
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()

    def _synced(self) -> None:
        now = time.time()
        self.state.last_sync_time = now
        self.state.last_successful_sync_time = now

    async def _sync_config(self) -> None:
        doc = await self.parent.config()
        previous = self.config
        me = next((r for r in doc.get("connectedRegistries", []) if r["name"] == self.config.name),
                  None)
        if me is not None:
            config = NodeConfig.from_json(me)
            if config.repositories != previous.repositories:
                # Recorded before it applies: a start without the parent checks writes by it.
                await trio.to_thread.run_sync(activation.remember_repositories,
                                              self.reg.settings.data_dir, config.repositories)
            # Our set first, our children's documents second: a child that learns its wider
            # set from us finds this node already accepting its pushes there.
            self.config = config
        try:
            await self.on_config(doc)
        except BaseException:
            self.config = previous  # applied again, in full, on the next attempt
            raise
        self._config_version = doc.get("version")
        if me is None:
            return
        if self.parent.meter is not None:
            self.parent.meter.set_rate(self.config.bandwidth_limit)
        if self.config.log_level != previous.log_level:
            apply_log_level(self.config.log_level)
        if self.config.resync_requested_at != previous.resync_requested_at and \
                self.config.resync_requested_at:
            self._reconcile_needed = True
        removed = set(previous.repositories) - set(self.config.repositories)
        added = set(self.config.repositories) - set(previous.repositories)
        if added:
            self._reconcile_needed = True
            await self.pusher.parked.requeue_refused(self._covers)
        if removed and self.config.read_only:
            await self.purge_unwanted()

    # --- reconciliation ----------------------------------------------------------------------
    async def reconcile(self) -> None:
        """Full reconciliation: make every synced repository equal to the parent's."""
        head = await self.parent.head()  # where to resume the feed once reconciled
        self.state.connection_state = "Syncing"
        parent_repos = await self.parent.catalog()
        repos = [r for r in parent_repos if self.config.wants(r) or not self.config.repositories]
        # Synced repositories the parent no longer has at all: their content goes too.
        gone = [r for r in self.reg.meta.list_repositories(None, None)
                if r not in parent_repos and (self.config.wants(r) or not self.config.repositories)]
        log.info("reconciling %d repositories with the parent", len(repos) + len(gone))
        outbox = (lambda: (set(), set())) if self.config.read_only else self._outbox
        await self.puller.reconcile(repos, outbox, unlisted=gone)
        if self.config.read_only:
            for repo in gone:  # forget an emptied repository (its bytes wait for GC)
                if not self.reg.meta.manifest_digests(repo):
                    await self.reg.meta.unlink_all_blobs(repo)
            await self.purge_unwanted(keep=set(repos))
        await self.state.set(DOWN_CURSOR, str(head))
        self._reconcile_needed = False
        self._online()
        self._synced()

    def _outbox(self) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """What still waits to be pushed up, parked entries included: (repo, tag) pairs with
        a local move or delete, and (repo, digest) pairs of manifests. Reconciliation must not
        undo or remove what the parent lacks only because it has not been pushed yet."""
        tags: set[tuple[str, str]] = set()
        manifests: set[tuple[str, str]] = set()

        def add(entries) -> None:
            for entry in entries:
                if entry.tag:
                    tags.add((entry.repo, entry.tag))
                if entry.op == "manifest" and entry.digest:
                    manifests.add((entry.repo, entry.digest))

        cursor = self.state.cursor(UP_CURSOR) or 0
        while True:
            batch = self.reg.meta.changes_since(cursor, 10_000, exclude_origin=PARENT)
            add(batch)
            if len(batch) < 10_000:
                break
            cursor = batch[-1].seq
        # After the outbox: an entry parked meanwhile was read there or is read here.
        add(self.reg.meta.parked_changes())
        return tags, manifests

    async def purge_unwanted(self, keep: set[str] | None = None) -> None:
        """ReadOnly: drop local repositories outside the repository set (§5)."""
        for repo in self.reg.meta.list_repositories(None, None):
            if not self.config.wants(repo) and (keep is None or repo not in keep):
                log.info("purging %s: no longer in this registry's repository set", repo)
                await self.puller.purge_repository(repo)
