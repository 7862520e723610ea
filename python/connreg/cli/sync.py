"""`connreg sync parked list|retry|drop`: outbox entries the parent refused for good.

Run on the node: with `--data-dir DIR` the command works on the node's metadata store directly
(also while the node is stopped; a running node picks up a retry within 10 s), otherwise it
calls the node's `/connreg/v1/sync/parked` endpoints as its admin (`--registry` is the node's
URL then; a retry wakes its pusher at once).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import trio

from connreg import datadir
from connreg.cli import output
from connreg.cli.client import CliError, UsageError, connect, path
from connreg.cli.common import add_command, add_group
from connreg.sync.parked import describe

COLUMNS = [
    ("SEQ", lambda e: e["seq"]),
    ("CHANGE", lambda e: e["change"]),
    ("REFUSED", lambda e: f"{e['method']} {e['status']} {e.get('code') or ''}".rstrip()),
    ("MESSAGE", lambda e: e["message"]),
    ("PARKED AT", lambda e: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e["parkedAt"]))),
    ("ATTEMPTS", lambda e: e["attempts"]),
    ("RETRY", lambda e: "queued" if e["retry"] else "-"),
]


def _store(data_dir: Path):
    from connreg.storage.sqlite_metadata import SqliteMetadataStore

    database = data_dir / "metadata.sqlite"
    if not database.exists():
        raise CliError(f"no registry data in {data_dir}")
    datadir.make_owner_only(data_dir)  # SQLite creates its -wal/-shm files next
    return SqliteMetadataStore(database)


def _with_change(doc: dict) -> dict:
    from connreg.storage import ParkedChange

    fields = ParkedChange(doc["seq"], doc["repository"], doc["op"], doc["tag"], doc["digest"],
                          doc["origin"], doc["method"], doc["url"], doc["status"], doc["code"],
                          doc["message"], doc["parkedAt"], doc["attempts"], doc["retry"])
    return {**doc, "change": describe(fields)}


def _list(args: argparse.Namespace) -> None:
    if args.data_dir:
        store = _store(args.data_dir)
        try:
            entries = [e.to_json() for e in store.parked_changes()]
        finally:
            store.close()
        doc = {"parked": entries, "count": len(entries)}
    else:
        doc = connect(args).get(path("sync", "parked"))
    rows = [_with_change(e) for e in doc["parked"]]
    output.emit(args.output, doc, lambda _: output.table(rows, COLUMNS, empty="(none parked)"))


def _settle(args: argparse.Namespace, action: str) -> None:
    if not args.seq and not args.all:
        raise UsageError(f"say which entries to {action}: --seq N [N …] or --all")
    seqs = None if args.all else args.seq
    if args.data_dir:
        store = _store(args.data_dir)
        try:
            count = trio.run(store.requeue_parked if action == "retry" else store.drop_parked,
                             seqs)
        finally:
            store.close()
    else:
        body = {"all": True} if seqs is None else {"seqs": seqs}
        answer = connect(args).post(path("sync", "parked", action), body)
        count = answer["requeued" if action == "retry" else "dropped"]
    doc = {"requeued" if action == "retry" else "dropped": count}
    verb = "re-queued" if action == "retry" else "dropped"
    output.emit(args.output, doc, lambda _: f"{verb} {count} parked entr"
                f"{'y' if count == 1 else 'ies'}")


def register(sub: argparse._SubParsersAction) -> None:
    group = add_group(sub, "sync", "this node's sync with its parent")
    parked = add_group(group, "parked", "outbox entries the parent refused for good "
                       "(docs/sync.md, \"Parked entries\")")
    for name, func, help in (
            ("list", _list, "list parked entries, oldest first"),
            ("retry", lambda a: _settle(a, "retry"),
             "send entries to the parent again, in order, before the rest of the outbox"),
            ("drop", lambda a: _settle(a, "drop"),
             "forget entries (the local content stays, reachable by digest)")):
        p = add_command(parked, name, func, help)
        p.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="work on this node's data dir directly (also while it is stopped) "
                            "instead of the running node's API")
        if name != "list":
            p.add_argument("--seq", type=int, nargs="+", metavar="N", help="entries by seq")
            p.add_argument("--all", action="store_true", help="every parked entry")
