"""Owner-only data dir: blobs are private images and the SQLite files hold token hashes, so
nothing in a node's data dir is readable by other users (docs/operations.md, "Data at rest").

Two halves, both run at the start of every command that writes a data dir (`serve`,
`maintenance …`, `sync parked … --data-dir`):
- the process umask becomes 0o077, so whatever is created afterwards (by Python, by SQLite for
  its -wal/-shm files, by the Rust blob store, which creates with the default modes) is 0700 for
  directories and 0600 for files, without each writer having to say so;
- what an older version or an operator left looser is tightened once, in one walk that stays
  inside the data dir (symlinks are neither followed nor changed), with one log line.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("connreg.datadir")

OWNER_ONLY_UMASK = 0o077
_GROUP_OTHER = 0o077


@dataclass
class Tightened:
    """What the walk changed: paths made owner-only, and paths it could not change."""

    changed: int = 0
    failed: int = 0


def make_owner_only(data_dir: Path) -> Tightened:
    """Set the owner-only umask for this process, create `data_dir` (0700) if missing, and
    tighten what is already in it. Logs one line when it changed or failed anything."""
    os.umask(OWNER_ONLY_UMASK)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    result = tighten(data_dir)
    if result.changed or result.failed:
        failed = (f"; {result.failed} could not be changed (not their owner?)"
                  if result.failed else "")
        log.warning("data dir %s: %d path(s) were open to group or others, now owner-only "
                    "(directories 0700, files 0600)%s", data_dir, result.changed, failed)
    return result


def tighten(data_dir: Path) -> Tightened:
    """Remove group and other permissions from every directory and regular file under
    `data_dir` (the directory itself included; if it is a symlink, its target is the data dir).
    Nothing else is touched: symlinks, sockets and the like are skipped, never followed."""
    result = Tightened()
    top = os.path.realpath(data_dir)  # fwalk would not enter a data dir that is a symlink
    _tighten_one(top, None, result)
    for _dirpath, dirnames, filenames, dir_fd in os.fwalk(top, follow_symlinks=False):
        for name in dirnames + filenames:
            _tighten_one(name, dir_fd, result)
    return result


def _tighten_one(name: str, dir_fd: int | None, result: Tightened) -> None:
    try:
        # O_NOFOLLOW: a name swapped for a symlink in between is refused, not followed out.
        # The data dir itself (dir_fd None) may be a symlink the operator chose.
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
        if dir_fd is not None:
            flags |= os.O_NOFOLLOW
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=dir_fd is None)
        if not (stat.S_ISDIR(before.st_mode) or stat.S_ISREG(before.st_mode)):
            return
        if not before.st_mode & _GROUP_OTHER:
            return
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return  # removed meanwhile (a running GC, an upload finishing)
    except OSError:
        result.failed += 1
        return
    try:
        mode = os.fstat(fd).st_mode
        os.fchmod(fd, stat.S_IMODE(mode) & ~_GROUP_OTHER)
        result.changed += 1
    except OSError:
        result.failed += 1
    finally:
        os.close(fd)
