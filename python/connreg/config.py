"""Node settings: defaults < TOML file (--config) < environment (CONNREG_*) < command line."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass
class Settings:
    data_dir: Path = Path("./data")
    listen: str = "127.0.0.1:5000"
    log_level: str = "info"
    # The spec lets a registry cap manifest size; 4 MiB is what distribution and others use.
    max_manifest_bytes: int = 4 * MiB
    # Uploads untouched this long are purged (their bytes were never visible anyway).
    upload_ttl_seconds: float = 24 * 3600
    # Bytes of manifests kept in memory; they are immutable by digest, so caching is safe.
    manifest_cache_bytes: int = 32 * MiB

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @classmethod
    def load(cls, config_file: Path | None = None, overrides: dict[str, Any] | None = None,
             environ: dict[str, str] | None = None) -> "Settings":
        values: dict[str, Any] = {}
        if config_file is not None:
            with open(config_file, "rb") as f:
                values.update(tomllib.load(f))
        env = os.environ if environ is None else environ
        for f in fields(cls):
            key = f"CONNREG_{f.name.upper()}"
            if key in env:
                values[f.name] = env[key]
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls()
        for name, raw in values.items():
            default = getattr(settings, name)
            try:
                value = type(default)(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"setting {name}: {raw!r} is not a valid "
                                 f"{type(default).__name__}") from exc
            setattr(settings, name, value)
        settings.host_port  # validates listen early
        return settings
