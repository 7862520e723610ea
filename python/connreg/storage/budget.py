"""The disk budget: how many more bytes this node may take, and headroom for deletes.

Two limits (docs/architecture.md, "Disk budget"):
- `min_free_bytes`: free space kept on the data dir's filesystem (default 5 % of it, at most
  1 GiB), so the node never fills the disk it shares with SQLite, logs and the system;
- `max_store_bytes`: a cap on the blob store (`store/`: blobs, unfinished uploads, staging).

`StorageBudget.check(n)` says whether `n` more bytes fit, raising `StorageFull` otherwise. The
store's size is a running total: counted once at start by walking `store/`, then moved by
`added`/`released` as the budgeted blob store (storage/budgeted.py) writes and deletes.

Headroom: SQLite needs a little space even to record a delete (WAL frames, a change-log row). A
reserved file, `<data_dir>/reserve`, holds that space while the disk has room; a write that
frees space and finds the disk full deletes it (`release_reserve`) and retries, so deletes and
garbage collection always get through. It is recreated once there is room again.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from connreg import _core, errors
from connreg.errors import RegistryError

log = logging.getLogger("connreg.storage")

MiB = 1024 * 1024
GiB = 1024 * MiB
# Default min_free_bytes: this share of the filesystem, capped (a 2 TB disk need not keep 100 GB).
DEFAULT_MIN_FREE_SHARE = 0.05
DEFAULT_MIN_FREE_CAP = 1 * GiB
RESERVE_NAME = "reserve"
SQLITE_FULL = 13


class StorageFull(Exception):
    """No room for a write: the budget refused it, or the disk (or SQLite) ran out anyway.

    Whoever raises it has already undone the write (partial files removed). The API answers
    507 with an OCI error body (`StorageBudget.refusal`); sync backs off and retries.
    """

    def __init__(self, message: str, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message  # callers may add what they undid ("; … discarded")
        self.detail = detail

    def __str__(self) -> str:
        return self.message


def is_sqlite_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full" (SQLITE_FULL), whatever the extended code."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == SQLITE_FULL) or "disk is full" in str(exc)


def is_out_of_space(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from Rust or Python, SQLITE_FULL, or an already translated StorageFull."""
    if isinstance(exc, (StorageFull, _core.StorageFull)):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return is_sqlite_full(exc)


def find_out_of_space(exc: BaseException) -> BaseException | None:
    """The out-of-space error inside `exc` (exception groups included, or as its cause)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if is_out_of_space(e):
            return e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        if e.__cause__ is not None:
            todo.append(e.__cause__)
    return None


def size_text(n: int) -> str:
    """Bytes for people: 512 B, 64.0 KiB, 3.1 MiB, 1.0 GiB."""
    if n < 1024:
        return f"{n} B"
    for unit, scale in (("GiB", GiB), ("MiB", MiB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


class StorageBudget:
    """Thread-safe: `check`, `added` and `released` run on trio's worker threads."""

    def __init__(self, data_dir: Path, store_dir: Path, min_free_bytes: int = -1,
                 max_store_bytes: int = 0):
        self.data_dir = Path(data_dir)
        self.store_dir = Path(store_dir)
        fs = os.statvfs(self.data_dir)
        total = fs.f_blocks * fs.f_frsize
        # -1 (the default) means "computed from the filesystem"; 0 keeps nothing free.
        self.min_free = (min_free_bytes if min_free_bytes >= 0
                         else min(int(total * DEFAULT_MIN_FREE_SHARE), DEFAULT_MIN_FREE_CAP))
        self.max_store = max(max_store_bytes, 0)  # 0: no cap
        self.reserve_path = self.data_dir / RESERVE_NAME
        # Enough for many deletes' WAL frames, small against the filesystem.
        self.reserve_bytes = min(8 * MiB, max(1 * MiB, total // 64))
        self._lock = threading.Lock()
        self._used = 0
        self._reserve_present = self.reserve_path.exists()
        self.recount()
        self.ensure_reserve()

    # --- measurements ------------------------------------------------------------------------
    def free_bytes(self) -> int:
        fs = os.statvfs(self.data_dir)
        return fs.f_bavail * fs.f_frsize

    @property
    def used_bytes(self) -> int:
        return self._used

    def recount(self) -> int:
        """Walk `store/` and reset the running total to what is really there."""
        total = 0
        for root, _, files in os.walk(self.store_dir):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    pass  # removed while we walked
        with self._lock:
            self._used = total
        return total

    def added(self, n: int) -> None:
        with self._lock:
            self._used += n

    def released(self, n: int) -> None:
        """`n` bytes left the store (a blob or upload deleted): GC calls this too."""
        with self._lock:
            self._used = max(self._used - n, 0)
        if not self._reserve_present:
            self.ensure_reserve()

    def snapshot(self, needed: int | None = None) -> dict[str, Any]:
        """The numbers an error body and a DISK_FULL report carry."""
        doc: dict[str, Any] = {"freeBytes": self.free_bytes(), "minFreeBytes": self.min_free,
                               "storeBytes": self._used}
        if self.max_store:
            doc["maxStoreBytes"] = self.max_store
        if needed is not None:
            doc["neededBytes"] = needed
        return doc

    # --- the question ------------------------------------------------------------------------
    def check(self, needed: int, what: str = "this upload", holding: int = 0) -> None:
        """Raise StorageFull unless `needed` more bytes fit in both limits. `holding`: what the
        write already has on disk (named in the message, so a stream stopped midway says so)."""
        if not self._reserve_present:
            self.ensure_reserve(needed)
        free = self.free_bytes()
        more = f" more (it holds {size_text(holding)})" if holding else ""
        if self.max_store and self._used + needed > self.max_store:
            raise StorageFull(
                f"storage budget exhausted: the store holds {size_text(self._used)} of "
                f"max_store_bytes {size_text(self.max_store)}, {what} needs "
                f"{size_text(needed)}{more}", self.snapshot(needed))
        if free - needed < self.min_free:
            raise StorageFull(
                f"storage budget exhausted: {size_text(free)} free, min_free_bytes "
                f"{size_text(self.min_free)}, {what} needs {size_text(needed)}{more}",
                self.snapshot(needed))

    def out_of_space(self, what: str, needed: int | None = None) -> StorageFull:
        """The StorageFull for a write the filesystem itself refused (ENOSPC, SQLITE_FULL)."""
        fs = os.statvfs(self.data_dir)
        inodes = ", no inodes left" if fs.f_files and not fs.f_favail else ""
        return StorageFull(
            f"storage full: no space left on the data dir's filesystem {what} "
            f"({size_text(fs.f_bavail * fs.f_frsize)} free{inodes}, min_free_bytes "
            f"{size_text(self.min_free)})", self.snapshot(needed))

    def refusal(self, exc: BaseException) -> RegistryError:
        """The 507 OCI error body for an out-of-space error of any origin."""
        if isinstance(exc, StorageFull):
            message, detail = exc.message, exc.detail or self.snapshot()
        else:
            full = self.out_of_space(f"({type(exc).__name__}: {str(exc)[:200]})")
            message, detail = full.message, full.detail
        return RegistryError(errors.STORAGE_FULL, detail=detail, message=message)

    # --- headroom for deletes ---------------------------------------------------------------
    def ensure_reserve(self, beyond: int = 0) -> bool:
        """Create the reserved file if there is room for it (plus `beyond` and min_free)."""
        with self._lock:
            if self.reserve_path.exists():
                self._reserve_present = True
                return True
            if self.free_bytes() < self.reserve_bytes + self.min_free + beyond:
                return False
            tmp = self.reserve_path.with_name(RESERVE_NAME + ".tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.reserve_bytes)  # real blocks, not a hole
                finally:
                    os.close(fd)
                os.replace(tmp, self.reserve_path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                log.warning("could not create the %s headroom file: %s",
                            size_text(self.reserve_bytes), exc)
                return False
            self._reserve_present = True
            log.info("disk headroom restored: %s reserved for deletes", size_text(self.reserve_bytes))
            return True

    def release_reserve(self) -> bool:
        """Delete the reserved file so a delete can be recorded; False if there was none."""
        with self._lock:
            self._reserve_present = False
            try:
                self.reserve_path.unlink()
            except FileNotFoundError:
                return False
        log.warning("disk full: released the %s headroom file so deletes can proceed",
                    size_text(self.reserve_bytes))
        return True
