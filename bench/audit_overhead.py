"""What one audit event costs the request that records it (connreg/audit/log.py).

In-process: `AuditLog.record` for a typical pull event, N times per round, 7 rounds, with the
default fsync policy (every second, in the background: the request pays json + one write()) and
with `audit_fsync_seconds = 0` (an fsync per event). Then `query` and `recent` over the events
written, the cost of a `connreg audit list` page and of the dashboard's list.

    .venv/bin/python bench/audit_overhead.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from connreg.audit.log import AuditLog


def per_event(log: AuditLog, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        log.record("pull", actor="cibot", source="10.1.2.3", outcome="success", status=200,
                   repository="team/app", tag=f"v{i % 50}", digest="sha256:" + "ab" * 32,
                   size=1234, object="manifest")
    return (time.perf_counter() - started) / n


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        batched = AuditLog(Path(tmp) / "batched", None, fsync_seconds=1.0)
        synced = AuditLog(Path(tmp) / "synced", None, fsync_seconds=0)
        rounds = [per_event(batched, n) for _ in range(7)]
        synced_rounds = [per_event(synced, max(n // 20, 50)) for _ in range(7)]
        print(f"record(): {statistics.median(rounds) * 1e6:.1f} µs/event (fsync every 1 s), "
              f"{statistics.median(synced_rounds) * 1e6:.1f} µs/event (fsync per event); "
              f"median of 7 rounds of {n} / {max(n // 20, 50)}")
        total = 7 * n
        started = time.perf_counter()
        page, _ = batched.query(since=0, limit=1000, repository="team/app")
        query = time.perf_counter() - started
        started = time.perf_counter()
        batched.recent(50)
        recent = time.perf_counter() - started
        print(f"query (1,000 of {total} events, filtered): {query * 1e3:.1f} ms; "
              f"recent(50): {recent * 1e3:.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
