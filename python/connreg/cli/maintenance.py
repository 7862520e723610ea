"""`connreg maintenance …`: offline upkeep of a node's data dir (run while the node is stopped
or alongside it; SQLite WAL lets both write)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from connreg.config import Settings


def _reindex(args: argparse.Namespace) -> int:
    from connreg.registry import Registry

    settings = Settings.load(config_file=args.config, overrides={"data_dir": args.data_dir})
    if not (settings.data_dir / "metadata.sqlite").exists():
        print(f"connreg: error: no registry data in {settings.data_dir}", file=sys.stderr)
        return 1
    registry = Registry(settings)
    try:
        count = trio.run(registry.chunk_index.reindex)
    finally:
        registry.close()
    print(f"indexed the chunks of {count} blob(s) in {settings.data_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("maintenance", help="offline upkeep of a node's data dir")
    actions = group.add_subparsers(dest="action", required=True)
    reindex = actions.add_parser("reindex-chunks",
                                 help="rebuild the chunk index used by delta transfer")
    reindex.add_argument("--data-dir", type=Path, help="the node's data dir (default ./data)")
    reindex.add_argument("--config", type=Path, help="TOML settings (chunk sizes)")
    reindex.set_defaults(func=_reindex)
