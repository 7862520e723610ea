"""Garbage collection (docs/gc.md): what no tag, manifest or push in progress needs any more
goes — deleted images' blobs, old untagged manifests, upload leftovers. Local housekeeping:
never written to the change log."""

from connreg.gc.collector import GarbageCollector, GcReport
from connreg.gc.lock import DataDirBusy
from connreg.gc.mark import GcPlan, mark

__all__ = ["DataDirBusy", "GarbageCollector", "GcPlan", "GcReport", "mark"]
