"""The credentials file `connreg login` writes: one entry per registry URL, mode 0600.

Location: `$CONNREG_CONFIG_DIR/credentials.json`, else `$XDG_CONFIG_HOME/connreg/…`, else
`~/.config/connreg/credentials.json`. Shape:
`{"current": URL, "registries": {URL: {"username": U, "password": P, "caFile": F}}}` (`caFile`
only when login was given one); `current` is the registry used when neither `--registry` nor
`CONNREG_REGISTRY` is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    if explicit := os.environ.get("CONNREG_CONFIG_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "connreg"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def load() -> dict[str, Any]:
    """The stored document, or an empty one when there is none (or it is unreadable)."""
    try:
        data = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(data: dict[str, Any]) -> Path:
    """Write atomically; the file is created 0600 (never briefly readable by others)."""
    target = credentials_path()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case the umask or a pre-existing file said otherwise
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
