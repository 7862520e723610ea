"""`connreg maintenance …`: offline upkeep of a node's data dir (run while the node is stopped
or alongside it; SQLite WAL lets both write)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from connreg import datadir
from connreg.config import Settings


def _reindex(args: argparse.Namespace) -> int:
    from connreg.registry import Registry

    settings = Settings.load(config_file=args.config, overrides={"data_dir": args.data_dir})
    if not (settings.data_dir / "metadata.sqlite").exists():
        print(f"connreg: error: no registry data in {settings.data_dir}", file=sys.stderr)
        return 1
    datadir.make_owner_only(settings.data_dir)  # before SQLite or the store writes a file
    registry = Registry(settings)
    try:
        count = trio.run(registry.chunk_index.reindex)
    finally:
        registry.close()
    print(f"indexed the chunks of {count} blob(s) in {settings.data_dir}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    """Offline GC: no grace period (nothing is being pushed), untagged retention as set."""
    import json
    import logging

    from connreg.control import activation
    from connreg.gc import DataDirBusy
    from connreg.gc.lock import hold_exclusively
    from connreg.gc.service import collector_for
    from connreg.registry import Registry

    settings = Settings.load(config_file=args.config, overrides={"data_dir": args.data_dir})
    if settings.metadata_url.strip():
        # No grace period offline, and replicas elsewhere may be serving the shared engines.
        print("connreg: error: offline GC is for a single node; the replicas of a scaled root "
              "collect online (`connreg gc run --registry URL`), one at a time", file=sys.stderr)
        return 2
    if not (settings.data_dir / "metadata.sqlite").exists():
        print(f"connreg: error: no registry data in {settings.data_dir}", file=sys.stderr)
        return 1
    retention = (settings.gc_untagged_retention_seconds if args.untagged_retention is None
                 else args.untagged_retention)
    if retention < 0:
        print("connreg: error: --untagged-retention must be 0 or more", file=sys.stderr)
        return 2
    try:
        lock = hold_exclusively(settings.data_dir)
    except DataDirBusy as exc:
        print(f"connreg: error: {exc}", file=sys.stderr)
        return 1
    datadir.make_owner_only(settings.data_dir)  # before SQLite or the store writes a file
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    registry = Registry(settings)
    try:
        collector = collector_for(registry, activation.load_state(settings.data_dir))
        report = trio.run(lambda: collector.collect(0.0, retention, dry_run=args.dry_run,
                                                    node_running=False))
    finally:
        registry.close()
        os.close(lock)
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        for m in report.manifests:
            print(f"{'would delete' if args.dry_run else 'deleted'} manifest "
                  f"{m['repository']}@{m['digest']}: {m['reason']}")
        print(f"{settings.data_dir}: {report.summary()}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Copy a stopped single node's data onto PostgreSQL + S3 (or a shared folder)."""
    from connreg import _core
    from connreg.gc.lock import DataDirBusy, hold_exclusively
    from connreg.storage import backends
    from connreg.storage.migrate import (MigrationRefused, MigrationReport, copy_blobs,
                                         copy_metadata, verify)
    from connreg.storage.postgres_engine import EngineUnreachable

    try:
        settings = Settings.load(config_file=args.config, overrides={
            "data_dir": args.data_dir, "metadata_url": args.metadata_url,
            "blob_store": args.blob_store, "s3_endpoint": args.s3_endpoint})
        if backends.metadata_kind(settings) != "postgres":
            raise ValueError("--metadata-url postgresql://… (or CONNREG_METADATA_URL) is required")
        if not settings.blob_store:
            raise ValueError("--blob-store s3://BUCKET[/PREFIX] or a shared folder is required")
    except ValueError as exc:
        print(f"connreg: error: {exc}", file=sys.stderr)
        return 2
    if not (settings.data_dir / "metadata.sqlite").exists():
        print(f"connreg: error: no registry data in {settings.data_dir}", file=sys.stderr)
        return 2
    try:
        lock = hold_exclusively(settings.data_dir)  # the node must be stopped
    except DataDirBusy as exc:
        print(f"connreg: error: {exc}", file=sys.stderr)
        return 1
    try:
        engine = backends.open_engine(settings)
        dest = backends.open_blob_store(settings)
        source = _core.BlobStore(str(settings.data_dir / "store"))
        report = MigrationReport()
        copy_blobs(source, dest, report)
        copy_metadata(settings.data_dir, engine, report)
        missing = verify(settings.data_dir, engine, dest)
        engine.close()
    except (EngineUnreachable, MigrationRefused, backends.BackendError) as exc:
        print(f"connreg: error: {exc}", file=sys.stderr)
        return 1
    finally:
        os.close(lock)
    print(report.summary())
    if missing:
        print(f"connreg: error: {len(missing)} item(s) missing at the destination, e.g. "
              f"{', '.join(missing[:5])}; run the migration again", file=sys.stderr)
        return 1
    print(f"migrated {settings.data_dir}: everything is at the destination")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("maintenance", help="offline upkeep of a node's data dir")
    actions = group.add_subparsers(dest="action", required=True)
    reindex = actions.add_parser("reindex-chunks",
                                 help="rebuild the chunk index used by delta transfer")
    reindex.add_argument("--data-dir", type=Path, help="the node's data dir (default ./data)")
    reindex.add_argument("--config", type=Path, help="TOML settings (chunk sizes)")
    reindex.set_defaults(func=_reindex)
    gc = actions.add_parser(
        "gc", help="collect garbage in a stopped node's data dir (docs/gc.md)",
        description="Delete what nothing needs any more: blobs of deleted images, untagged "
        "manifests older than the retention, upload leftovers. The node must be stopped (no "
        "grace period applies); for a running node use `connreg gc run`.")
    gc.add_argument("--data-dir", type=Path, help="the node's data dir (default ./data)")
    gc.add_argument("--config", type=Path, help="TOML settings (gc_untagged_retention_seconds)")
    gc.add_argument("--dry-run", action="store_true", help="report what would go, delete nothing")
    gc.add_argument("--untagged-retention", type=float, metavar="SECONDS",
                    help="keep untagged manifests this long (default: the setting "
                    "gc_untagged_retention_seconds, 7 days; 0: keep them all)")
    gc.add_argument("--output", "-o", choices=("table", "json"), default="table",
                    help="a summary for people (default) or the report as JSON")
    gc.add_argument("--verbose", "-v", action="store_true", help="log every deletion")
    gc.set_defaults(func=_gc)
    migrate = actions.add_parser(
        "migrate", help="move a stopped single node onto PostgreSQL + S3 (docs/scaling.md)",
        description="Copy every blob (verified) and then all metadata, the control plane and "
        "the token signing key of a stopped node into the shared engines of a scaled root. "
        "Idempotent: run it again after an interruption; the source is only read.")
    migrate.add_argument("--data-dir", type=Path, help="the node's data dir (default ./data)")
    migrate.add_argument("--config", type=Path, help="TOML settings")
    migrate.add_argument("--metadata-url", help="postgresql://… (env CONNREG_METADATA_URL)")
    migrate.add_argument("--blob-store", help="s3://BUCKET[/PREFIX] or a shared folder "
                         "(env CONNREG_BLOB_STORE)")
    migrate.add_argument("--s3-endpoint", help="S3-compatible endpoint (env CONNREG_S3_ENDPOINT)")
    migrate.set_defaults(func=_migrate)
