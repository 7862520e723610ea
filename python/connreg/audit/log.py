"""The node's audit trail: one JSON line per event in DATA_DIR/audit/audit-YYYYMMDD.jsonl.

Layout:

    audit/
      stream-id              random id of this trail (a parent tells a wiped node's new trail
                             from a resend of the old one)
      audit-20261203.jsonl   the events of one UTC day, appended in order

Durability: each event is one `write()` of one whole line on an O_APPEND descriptor, so a
killed process (kill -9) never leaves half a line; the file is fsynced every
`audit_fsync_seconds` (0: after each event), so a power cut loses at most that much. A line a
power cut did tear is skipped on read (it does not parse, or has no newline), and at start a
file that does not end in a newline gets one, so the next event starts a line of its own.

Positions: `(day, byte offset)` name the start of a line; the sync forwarder's cursor is one,
and so is a page token of `query`. Files older than `audit_retention_days` are deleted (hourly).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import trio

log = logging.getLogger("connreg.audit")
FILE_RE = re.compile(r"audit-(\d{8})\.jsonl")
# One event's line at most; longer values are cut before (nothing a client sends is unbounded).
MAX_LINE = 8 * 1024
# A query reads at most this much per call and then returns a page token to continue from.
QUERY_SCAN_BYTES = 32 * 1024 * 1024
MAX_QUERY_LIMIT = 1000
RECENT_TAIL_BYTES = 1024 * 1024
RETENTION_CHECK_SECONDS = 3600.0


@dataclass(frozen=True, order=True)
class Position:
    day: str      # YYYYMMDD
    offset: int   # byte offset of a line start

    def token(self) -> str:
        return f"{self.day}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> "Position":
        day, _, offset = text.partition(":")
        if not (len(day) == 8 and day.isascii() and day.isdigit() and offset.isascii()
                and offset.isdigit() and len(offset) <= 18):
            raise ValueError(f"not an audit position: {text[:40]!r}")
        return cls(day, int(offset))


def iso_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def parse_time(text: str) -> float:
    """An ISO-8601 date-time (UTC unless it names a zone) → epoch seconds; ValueError."""
    from datetime import datetime, timezone

    if not isinstance(text, str) or len(text) > 40:
        raise ValueError("not a date-time")
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _day(ts: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts))


def _clip(value):
    if isinstance(value, str) and len(value) > 512:
        return value[:512] + "…"
    return value


class AuditLog:
    def __init__(self, directory: Path, registry: str | None, retention_days: int = 30,
                 fsync_seconds: float = 1.0, pulls: str = "manifests"):
        self.directory = directory
        self.registry = registry  # this node's connected-registry name; None at the root
        self.retention_days = retention_days
        self.fsync_seconds = fsync_seconds
        if pulls not in ("off", "manifests", "all"):
            raise ValueError(f"audit_pulls: {pulls!r} is not off, manifests or all")
        self.pulls = pulls
        directory.mkdir(parents=True, exist_ok=True)
        self.stream_id = self._stream_id()
        self._fd: int | None = None
        self._fd_day: str | None = None
        self._dirty = False
        for path in self._files()[-1:]:
            self._end_with_newline(path)

    # --- writing ---------------------------------------------------------------------------------
    def _stream_id(self) -> str:
        path = self.directory / "stream-id"
        try:
            value = path.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        value = secrets.token_hex(8)
        path.write_text(value + "\n")
        return value

    @staticmethod
    def _end_with_newline(path: Path) -> None:
        """A torn last line (power cut mid-write) stays a line of its own, skipped on read."""
        with open(path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")

    def _descriptor(self, day: str) -> int:
        if self._fd is None or self._fd_day != day:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
            self._fd = os.open(self.directory / f"audit-{day}.jsonl",
                               os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fd_day = day
        return self._fd

    def _append(self, event: dict) -> None:
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if len(line) > MAX_LINE:
            return  # cannot happen with clipped fields; never write an unbounded line
        day = _day(time.time())
        try:
            os.write(self._descriptor(day), line)  # one whole line per write()
            if self.fsync_seconds <= 0:
                os.fsync(self._fd)
            else:
                self._dirty = True
        except OSError as exc:  # a full disk must not fail the request being audited
            log.warning("audit event not written: %s", exc)

    def record(self, event: str, *, actor: str | None, source: str | None, outcome: str,
               **fields) -> None:
        """Append one event of this node. Field values are names, digests and numbers only:
        never a password, token or request body."""
        now = time.time()
        doc = {"time": iso_time(now), "registry": self.registry, "event": event,
               "actor": _clip(actor), "source": _clip(source), "outcome": outcome}
        doc.update({k: _clip(v) for k, v in fields.items() if v is not None})
        self._append(doc)

    def append_relayed(self, events: list[dict]) -> int:
        """Store events a child forwarded (its own and its descendants'), as they are."""
        for event in events:
            self._append(event)
        return len(events)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """fsync every `fsync_seconds` when something was written; retention hourly."""
        task_status.started()
        await trio.to_thread.run_sync(self.apply_retention)
        last_retention = trio.current_time()
        while True:
            await trio.sleep(self.fsync_seconds if self.fsync_seconds > 0 else 1.0)
            if self._dirty and self._fd is not None:
                self._dirty = False
                fd = os.dup(self._fd)  # the day may roll over (and close ours) meanwhile
                try:
                    await trio.to_thread.run_sync(os.fsync, fd)
                finally:
                    os.close(fd)
            if trio.current_time() - last_retention > RETENTION_CHECK_SECONDS:
                last_retention = trio.current_time()
                await trio.to_thread.run_sync(self.apply_retention)

    def apply_retention(self) -> int:
        if self.retention_days <= 0:
            return 0
        cut = _day(time.time() - self.retention_days * 86400)
        removed = 0
        for path in self._files():
            if FILE_RE.fullmatch(path.name).group(1) < cut:
                try:
                    path.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("old audit file %s not removed: %s", path.name, exc)
        if removed:
            log.info("removed %d audit file(s) older than %d days", removed, self.retention_days)
        return removed

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    # --- reading ---------------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if FILE_RE.fullmatch(p.name))

    def _days(self) -> list[str]:
        return [FILE_RE.fullmatch(p.name).group(1) for p in self._files()]

    def read(self, start: Position | None, max_events: int, max_bytes: int
             ) -> tuple[list[tuple[Position, dict]], Position | None, int]:
        """Events from `start` (None: the oldest retained), in order: at most `max_events`,
        reading about `max_bytes` at most. Returns them with their positions, the position
        after the last line read (None when nothing is retained at all) and the bytes read.
        Lines that do not parse are skipped; an unfinished last line waits for the next read."""
        days = self._days()
        if not days:
            return [], start, 0
        if start is None or start.day < days[0]:
            start = Position(days[0], 0)  # what the cursor pointed at was removed by retention
        out: list[tuple[Position, dict]] = []
        position = start
        consumed = 0
        for day in [d for d in days if d >= start.day]:
            offset = start.offset if day == start.day else 0
            position = Position(day, offset)
            try:
                with open(self.directory / f"audit-{day}.jsonl", "rb") as f:
                    f.seek(offset)
                    want = max(max_bytes - consumed, MAX_LINE)
                    data = f.read(want)
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            cursor = 0
            while cursor < end and len(out) < max_events:
                newline = data.index(b"\n", cursor)
                line = data[cursor:newline]
                at = Position(day, offset + cursor)
                cursor = newline + 1
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a torn line
                if isinstance(event, dict):
                    out.append((at, event))
            position = Position(day, offset + cursor)
            consumed += cursor
            # the whole rest of this file read, and no unfinished line at its end
            at_file_end = len(data) < want and cursor == len(data)
            if len(out) >= max_events or consumed >= max_bytes or not at_file_end:
                break
            if day != days[-1]:
                position = Position(days[days.index(day) + 1], 0)
        return out, position, consumed

    def query(self, registry: str | None = None, repository: str | None = None,
              actor: str | None = None, since: float | None = None, limit: int = 100,
              page: str | None = None) -> tuple[list[dict], str | None]:
        """Events matching every filter given, oldest first from `since` (epoch seconds) or
        from the `page` token a previous call returned; the token for the next page, or None
        when this page reached the end. `registry` "-" matches the root's own events. One call
        reads at most QUERY_SCAN_BYTES; a sparse filter may return a short page and a token."""
        limit = max(1, min(limit, MAX_QUERY_LIMIT))
        position = Position.parse(page) if page else (
            Position(_day(since), 0) if since is not None else None)
        since_iso = iso_time(since) if since is not None else None
        matches: list[dict] = []
        scanned = 0
        while scanned < QUERY_SCAN_BYTES:
            batch, after, consumed = self.read(position, limit * 4, QUERY_SCAN_BYTES - scanned)
            scanned += consumed
            for at, event in batch:
                if self._matches(event, registry, repository, actor, since_iso):
                    matches.append(event)
                    if len(matches) == limit:
                        return matches, self._after(at)
            if not batch and (after is None or after == position):
                return matches, None  # the end of the trail
            position = after
        return matches, position.token() if position else None

    def _after(self, at: Position) -> str:
        """The token of the line after the one at `at`."""
        path = self.directory / f"audit-{at.day}.jsonl"
        with open(path, "rb") as f:
            f.seek(at.offset)
            line = f.readline(MAX_LINE + 1)
        return Position(at.day, at.offset + len(line)).token()

    @staticmethod
    def _matches(event: dict, registry, repository, actor, since_iso) -> bool:
        if since_iso is not None and str(event.get("time", "")) < since_iso:
            return False
        if registry is not None:
            here = event.get("registry")
            if (registry == "-" and here is not None) or (registry != "-" and here != registry):
                return False
        if repository is not None and event.get("repository") != repository:
            return False
        if actor is not None and event.get("actor") != actor:
            return False
        return True

    def recent(self, limit: int = 50) -> list[dict]:
        """The newest `limit` events (at most 1,000), newest first: the tail of the newest
        files only, for the dashboard."""
        limit = max(1, min(limit, MAX_QUERY_LIMIT))
        found: deque[dict] = deque()
        for path in reversed(self._files()):
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - RECENT_TAIL_BYTES))
                data = f.read()
            lines = data.split(b"\n")
            if size > RECENT_TAIL_BYTES:
                lines = lines[1:]  # the first may be cut
            for line in reversed(lines):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    found.append(event)
                    if len(found) >= limit:
                        return list(found)
            if size > RECENT_TAIL_BYTES:
                break
        return list(found)
