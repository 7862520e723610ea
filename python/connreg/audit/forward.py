"""Audit events climb the tree with the status reports (`POST /connreg/v1/sync/status`).

Child: each report carries the next batch of this node's trail (its own events and those its
children forwarded) after a durable cursor (`audit_forwarded` in the metadata store's sync
state): at most MAX_BATCH_EVENTS events and MAX_BATCH_BYTES, metered against the bandwidth cap.
The cursor moves only when the parent acknowledges the batch's end, so a lost answer or a
restart sends the same batch again; while more is waiting, reports follow each other quickly.

Parent: `receive` keeps events whose `registry` lies in the reporter's subtree, appends them to
its own trail as they are (so they relay upward in turn), and remembers per child where the
acknowledged stream ends: a resent batch is acknowledged again without being stored twice.
A parent of an older version answers without `audit`: the child then waits AUDIT_RETRY_SECONDS
before offering events again (nothing is lost; the cursor did not move).
"""

from __future__ import annotations

import json
import logging
import time

from connreg.audit.log import MAX_LINE, AuditLog, Position

log = logging.getLogger("connreg.audit")
CURSOR_KEY = "audit_forwarded"
MAX_BATCH_EVENTS = 500
MAX_BATCH_BYTES = 256 * 1024
AUDIT_RETRY_SECONDS = 600.0
MAX_EVENT_FIELDS = 32


class AuditForwarder:
    def __init__(self, audit: AuditLog, meta):
        self.audit = audit
        self.meta = meta
        self.behind = False  # the last batch was full: more is waiting
        self._not_taken_until = 0.0

    def _cursor(self) -> Position | None:
        value = self.meta.get_state(CURSOR_KEY)
        if not value:
            return None
        stream, _, position = value.partition(":")
        if stream != self.audit.stream_id:
            return None  # a new trail (data dir restored?): start at its beginning
        try:
            return Position.parse(position)
        except ValueError:
            return None

    def batch(self) -> dict | None:
        """The next events to send, or None when there are none (or the parent takes none)."""
        if time.monotonic() < self._not_taken_until:
            return None
        start = self._cursor()
        events, after, _ = self.audit.read(start, MAX_BATCH_EVENTS, MAX_BATCH_BYTES)
        if after is None or (start is not None and after == start):
            self.behind = False
            return None
        self.behind = len(events) >= MAX_BATCH_EVENTS
        return {"stream": self.audit.stream_id,
                "from": (start or Position("00000000", 0)).token(), "to": after.token(),
                "events": [event for _, event in events]}

    async def acknowledged(self, batch: dict, answer) -> bool:
        """Move the cursor when the parent's answer acknowledges `batch`; whether it did."""
        ack = answer.get("audit") if isinstance(answer, dict) else None
        if not isinstance(ack, dict):
            log.info("the parent does not take audit events (an older version?); offering "
                     "them again in %.0f s", AUDIT_RETRY_SECONDS)
            self._not_taken_until = time.monotonic() + AUDIT_RETRY_SECONDS
            self.behind = False
            return False
        if ack.get("acknowledged") != batch["to"]:
            self.behind = False
            return False
        await self.meta.set_state(CURSOR_KEY, f"{batch['stream']}:{batch['to']}")
        return True


def _clean(event) -> dict | None:
    """A forwarded event as stored: a flat object of short scalars, or None to drop it."""
    if not isinstance(event, dict) or len(event) > MAX_EVENT_FIELDS:
        return None
    for key, value in event.items():
        if not isinstance(key, str) or len(key) > 64:
            return None
        if value is not None and not isinstance(value, (str, int, float, bool)):
            return None
    if len(json.dumps(event)) > MAX_LINE:
        return None
    return event


async def receive(audit: AuditLog, meta, batch, reporter: str | None, allowed) -> dict:
    """Store a child's batch; the acknowledgement to answer with (see the module doc)."""
    if not isinstance(batch, dict) or not isinstance(batch.get("events"), list) \
            or len(batch["events"]) > 2 * MAX_BATCH_EVENTS:
        return {"acknowledged": None, "error": "malformed audit batch"}
    stream, to = batch.get("stream"), batch.get("to")
    try:
        if not isinstance(stream, str) or not 0 < len(stream) <= 64 or not isinstance(to, str):
            raise ValueError("stream")
        end = Position.parse(to)
    except ValueError:
        return {"acknowledged": None, "error": "malformed audit batch"}
    key = f"audit_in:{(reporter or '-').lower()}"
    stored = meta.get_state(key) or ""
    stored_stream, _, stored_to = stored.partition(":")
    if stored_stream == stream:
        try:
            if end <= Position.parse(stored_to):
                return {"acknowledged": to, "stored": 0}  # a resend of what we hold
        except ValueError:
            pass
    kept, dropped = [], 0
    for event in batch["events"]:
        event = _clean(event)
        name = event.get("registry") if event else None
        if event is None or not isinstance(name, str) or not allowed(name):
            dropped += 1
            continue
        kept.append(event)
    if dropped:
        log.warning("dropped %d audit event(s) from %s: malformed or not from its subtree",
                    dropped, reporter or "the admin")
    audit.append_relayed(kept)
    await meta.set_state(key, f"{stream}:{to}")
    return {"acknowledged": to, "stored": len(kept)}
