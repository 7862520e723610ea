"""What a node knows about its sync: durable cursors (in the metadata store) and live progress.

Durable keys: `down_cursor` (last parent change applied), `up_cursor` (last own change the
parent acknowledged), `tag|<repo>|<tag>` (the digest the parent's tag had when we last agreed:
a tag moved at the parent since then means a conflict if we moved it too), `push|<repo>|<digest>`
(the parent's upload session of a large blob being pushed, whole or by chunks).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from connreg.storage import MetadataStore

DOWN_CURSOR = "down_cursor"
UP_CURSOR = "up_cursor"
MAX_DETAILS = 20


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
    def progress_bytes(self, n: int) -> None:
        self.bytes_transferred += n

    def progress_blob(self) -> None:
        self.blobs_transferred += 1

    def report(self, code: str, description: str) -> StatusDetail:
        detail = StatusDetail(code, description)
        self.details = [d for d in self.details if d.code != code or code == "SYNC_CONFLICT"]
        self.details.append(detail)
        self.details = self.details[-MAX_DETAILS:]
        return detail

    def conflict(self, repo: str, tag: str, ours: str | None, theirs: str) -> StatusDetail:
        """A tag moved here and at the parent since we last agreed: the parent's wins (§5)."""
        return self.report(
            "SYNC_CONFLICT",
            f"tag {repo}:{tag} moved here (to {ours or 'deleted'}) and at the parent "
            f"(to {theirs}); the parent's tag wins, {ours or 'the local change'} stays "
            f"reachable by digest")

    def clear(self, code: str) -> None:
        self.details = [d for d in self.details if d.code != code]

    def to_json(self) -> dict:
        return {
            "connectionState": self.connection_state,
            "lastSyncTime": _iso(self.last_sync_time),
            "lastSuccessfulSyncTime": _iso(self.last_successful_sync_time),
            "statusDetails": [d.to_json() for d in self.details],
            "syncProgress": {"currentRepository": self.current_repo,
                             "bytesTransferred": self.bytes_transferred,
                             "blobsTransferred": self.blobs_transferred},
        }
