"""Who may collect garbage in a data dir.

A serving node holds a shared lock on `<data_dir>/node.lock` for as long as it runs (the
kernel drops it when the process ends, kill -9 included). Offline GC (`connreg maintenance gc`)
takes the lock exclusively: it deletes without a grace period, which is safe only while no
node serves the data dir, so it refuses to run next to one — and a node does not start while
an offline GC runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "node.lock"


class DataDirBusy(Exception):
    """The data dir is in use by a node (for offline GC) or by an offline GC (for a node)."""


def _lock(data_dir: Path, mode: int, busy: str) -> int:
    """Open `<data_dir>/node.lock` and take `mode` without waiting; DataDirBusy(busy) if held."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusy(busy) from None
    return fd


def hold_for_serving(data_dir: Path) -> int:
    """Take the shared lock for a serving node; returns the descriptor to keep open."""
    return _lock(data_dir, fcntl.LOCK_SH, f"an offline garbage collection is running on "
                 f"{data_dir}; start the node when it has finished")


def hold_exclusively(data_dir: Path) -> int:
    """Take the lock for offline GC; returns the descriptor (close it to release)."""
    return _lock(data_dir, fcntl.LOCK_EX, f"a node is serving {data_dir}: stop it first, or "
                 "collect garbage through it with `connreg gc run --registry URL`")
