"""`connreg gc run|status`: garbage collection of a running node, through its API.

Unlike the resource commands, these talk to whichever node `--registry` names — the root or
a connected registry — as that node's admin. For a stopped node: `connreg maintenance gc`.
"""

from __future__ import annotations

import argparse

from connreg.cli import output
from connreg.cli.client import connect, path
from connreg.cli.common import add_command, add_group

REPORT_FIELDS = [
    ("Dry run", "dryRun"), ("Started", "startedAt"), ("Duration (s)", "durationSeconds"),
    ("Grace period (s)", "gracePeriodSeconds"),
    ("Untagged retention (s)", "untaggedRetentionSeconds"),
    ("Manifests", "manifests"), ("Blob links", "blobLinks"), ("Blobs", "blobs"),
    ("Bytes", "bytes"), ("Chunk-index rows", "chunkRows"), ("Upload sessions", "uploadRows"),
    ("Upload files", "uploadFiles"), ("Staging files", "tmpFiles"),
    ("Upload bytes", "uploadBytes"),
]


def render_report(report: dict) -> str:
    text = output.record([(label, report.get(key)) for label, key in REPORT_FIELDS])
    listed = [f"{m['repository']}@{m['digest']}: {m['reason']}"
              for m in report.get("deletedManifests") or []]
    if listed:
        text += "\n\n" + ("Would delete:\n  " if report.get("dryRun") else "Deleted:\n  ")
        text += "\n  ".join(listed)
    return text


def _run(args: argparse.Namespace) -> None:
    body: dict = {"dryRun": args.dry_run}
    if args.grace_period is not None:
        body["gracePeriodSeconds"] = args.grace_period
    if args.untagged_retention is not None:
        body["untaggedRetentionSeconds"] = args.untagged_retention
    output.emit(args.output, connect(args).post(path("gc"), body), render_report)


def _status(args: argparse.Namespace) -> None:
    def render(doc: dict) -> str:
        text = output.record([
            ("Schedule", doc.get("schedule") or "on demand only"),
            ("Grace period (s)", doc.get("gracePeriodSeconds")),
            ("Untagged retention (s)", doc.get("untaggedRetentionSeconds")),
            ("Running", doc.get("running")),
        ])
        if doc.get("lastRun"):
            text += "\n\nLast run:\n" + render_report(doc["lastRun"])
        return text
    output.emit(args.output, connect(args).get(path("gc")), render)


def register(sub: argparse._SubParsersAction) -> None:
    group = add_group(sub, "gc", "garbage collection of a running node (its admin only)")
    p = add_command(group, "run", _run, "collect garbage now and print what was freed",
                    description="Collect garbage on the node --registry names (root or "
                    "connected registry)\nand print what was freed. Without options the node's "
                    "settings apply.")
    p.add_argument("--dry-run", action="store_true", help="report what would go, delete nothing")
    p.add_argument("--grace-period", type=float, metavar="SECONDS",
                   help="keep blobs linked or uploaded this recently (default: the node's "
                   "gc_grace_seconds, 1 h; 0 is safe for content but may fail pushes in flight)")
    p.add_argument("--untagged-retention", type=float, metavar="SECONDS",
                   help="keep untagged manifests this long (default: the node's setting, "
                   "7 days; 0: keep them all)")
    add_command(group, "status", _status, "show the GC schedule, settings and last run")
