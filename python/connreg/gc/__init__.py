"""Garbage collection (docs/gc.md): what no tag, manifest or push in progress needs any more
goes — deleted images' blobs, old untagged manifests, upload leftovers. Local housekeeping:
never written to the change log.

`mark.py` decides (pure), `collector.py` sweeps, `schedule.py` runs it on a cron expression,
`endpoints.py` serves it, `lock.py` keeps offline GC and a serving node apart, `service.py`
wires it into the app."""

from connreg.gc.collector import GarbageCollector, GcReport
from connreg.gc.lock import DataDirBusy

__all__ = ["DataDirBusy", "GarbageCollector", "GcReport"]
