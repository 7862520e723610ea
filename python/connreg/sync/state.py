"""What a node knows about its sync: durable cursors (in the metadata store) and live progress.

Durable keys: `down_cursor` (last parent change applied), `up_cursor` (last own change the
parent acknowledged), `tag|<repo>|<tag>` (the digest the parent's tag had when we last agreed:
a tag moved at the parent since then means a conflict if we moved it too), `push|<repo>|<digest>`
(the parent's upload session of a large blob being pushed, whole or by chunks). Parked outbox
entries live in their own table (`sync/parked.py`); each is reported as a SYNC_REFUSED detail.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from connreg.storage import MetadataStore, ParkedChange
from connreg.sync.parked import describe
from connreg.sync.progress import TransferProgress

log = logging.getLogger("connreg.sync")
DOWN_CURSOR = "down_cursor"
UP_CURSOR = "up_cursor"
MAX_DETAILS = 20
# Parked entries reported one detail each, oldest first; beyond, one summary detail.
MAX_PARKED_DETAILS = 10
PARKED_ID_NAMESPACE = uuid.UUID("5f0c3c1e-8d0a-4a55-9d7e-3e6b0b9a7c21")


def last_known_key(repo: str, tag: str) -> str:
    return f"tag|{repo}|{tag}"


def push_session_key(repo: str, digest: str) -> str:
    """Where the URL of the parent's upload session for pushing `digest` to `repo` is kept."""
    return f"push|{repo}|{digest}"


@dataclass
class StatusDetail:
    code: str
    description: str
    timestamp: float = field(default_factory=time.time)
    correlation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    key: str | None = None  # what the detail is about: the same event is reported once

    def to_json(self) -> dict:
        return {"code": self.code, "description": self.description,
                "timestamp": _iso(self.timestamp), "correlationId": self.correlation_id}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class SyncState:
    def __init__(self, meta: MetadataStore):
        self.meta = meta
        self.connection_state = "Offline"
        self.last_sync_time: float | None = None
        self.last_successful_sync_time: float | None = None
        self.current_repo: str | None = None
        self.bytes_transferred = 0
        self.blobs_transferred = 0
        self.details: list[StatusDetail] = []
        # Bytes by direction, rate and bytes left (`show --watch`, the dashboard, /metrics).
        self.transfer = TransferProgress()
        # (pending, parked) outbox entries as last counted off the loop (the status loop does).
        self.outbox_entries: int | None = None
        self.parked_entries: int | None = None

    # durable values
    def get(self, key: str) -> str | None:
        return self.meta.get_state(key)

    async def set(self, key: str, value: str) -> None:
        if self.meta.get_state(key) != value:
            await self.meta.set_state(key, value)

    async def delete(self, key: str) -> None:
        if self.meta.get_state(key) is not None:
            await self.meta.set_state(key, None)

    def cursor(self, key: str) -> int | None:
        value = self.get(key)
        return int(value) if value is not None else None

    # live progress
    def progress_bytes(self, n: int, direction: str = "down") -> None:
        self.bytes_transferred += n
        self.transfer.moved(n, direction)

    def progress_blob(self) -> None:
        self.blobs_transferred += 1

    def report(self, code: str, description: str, key: str | None = None) -> StatusDetail:
        detail = StatusDetail(code, description, key=key)
        self.details = [d for d in self.details if d.code != code or code == "SYNC_CONFLICT"]
        self.details.append(detail)
        self.details = self.details[-MAX_DETAILS:]
        return detail

    def conflict(self, repo: str, tag: str, ours: str | None, theirs: str) -> StatusDetail:
        """A tag moved here and at the parent since we last agreed: the parent's wins (§5).

        Both sync directions detect the same conflict (the puller when the feed brings the
        parent's move, the pusher when its HEAD sees it), often within milliseconds of each
        other: it is reported and logged once, under one correlation id."""
        key = f"{repo}:{tag}:{ours}:{theirs}"
        known = next((d for d in self.details if d.code == "SYNC_CONFLICT" and d.key == key),
                     None)
        if known is not None:
            return known
        detail = self.report(
            "SYNC_CONFLICT",
            f"tag {repo}:{tag} moved here (to {ours or 'deleted'}) and at the parent "
            f"(to {theirs}); the parent's tag wins, {ours or 'the local change'} stays "
            f"reachable by digest", key=key)
        log.warning("%s [%s]", detail.description, detail.correlation_id)
        return detail

    def parked_details(self) -> list[dict]:
        """One SYNC_REFUSED detail per parked outbox entry (the oldest MAX_PARKED_DETAILS),
        then one naming how many more there are. Read from the durable table, so they survive
        restarts; an entry's correlation id stays the same until it is parked again."""
        entries = self.meta.parked_changes(limit=MAX_PARKED_DETAILS + 1)
        details = [_parked_detail(e).to_json() for e in entries[:MAX_PARKED_DETAILS]]
        if len(entries) > MAX_PARKED_DETAILS:
            more = self.meta.parked_count() - MAX_PARKED_DETAILS
            details.append(StatusDetail(
                "SYNC_REFUSED", f"{more} more parked outbox entr{'y' if more == 1 else 'ies'} "
                "refused by the parent; `connreg sync parked list` on this node shows them all",
                correlation_id=str(uuid.uuid5(PARKED_ID_NAMESPACE, f"more:{more}"))).to_json())
        return details

    def clear(self, code: str) -> None:
        self.details = [d for d in self.details if d.code != code]

    def to_json(self) -> dict:
        return {
            "connectionState": self.connection_state,
            "lastSyncTime": _iso(self.last_sync_time),
            "lastSuccessfulSyncTime": _iso(self.last_successful_sync_time),
            "statusDetails": [d.to_json() for d in self.details] + self.parked_details(),
            "syncProgress": {"currentRepository": self.current_repo,
                             "bytesTransferred": self.bytes_transferred,
                             "blobsTransferred": self.blobs_transferred,
                             "downCursor": self.cursor(DOWN_CURSOR),  # lag in entries, above
                             "outboxEntries": self.outbox_entries,
                             "parkedEntries": self.parked_entries,
                             **self.transfer.to_json()},
        }


def _parked_detail(entry: ParkedChange) -> StatusDetail:
    return StatusDetail(
        "SYNC_REFUSED",
        f"outbox entry {entry.seq} parked, {describe(entry)}: the parent refused it "
        f"({entry.reason}); later changes go on; `connreg sync parked retry|drop` settles it",
        timestamp=entry.parked_at,
        correlation_id=str(uuid.uuid5(PARKED_ID_NAMESPACE,
                                      f"{entry.seq}:{entry.parked_at}")))
