"""`connreg repository update|show`: image locks (ACR's changeable attributes, docs/locks.md).

    connreg repository update --repository team/app --tag v1 --write-enabled false
    connreg repository show --repository team/app --tag v1
"""

from __future__ import annotations

import argparse

from connreg.cli import output
from connreg.cli.client import UsageError, connect, path
from connreg.cli.common import add_command, add_group

BOOLEAN = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}

LOCK_COLUMNS = [
    ("LOCKED", lambda l: f"{l['repository']}:{l['tag']}" if l.get("tag")
     else f"{l['repository']}@{l['digest']}" if l.get("digest") else l["repository"]),
    ("WRITE", lambda l: l.get("writeEnabled")),
    ("DELETE", lambda l: l.get("deleteEnabled")),
    ("READ", lambda l: l.get("readEnabled")),
]


def _bool(value: str) -> bool:
    try:
        return BOOLEAN[value.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}") from None


def render(doc: dict) -> str:
    attrs = doc.get("changeableAttributes") or {}
    pairs = [("Repository", doc.get("repository"))]
    if doc.get("tag"):
        pairs.append(("Tag", doc["tag"]))
    if doc.get("digest"):
        pairs.append(("Digest", doc["digest"]))
    if "tagCount" in doc:
        pairs += [("Tags", doc["tagCount"]), ("Manifests", doc.get("manifestCount"))]
    pairs += [("Write enabled", attrs.get("writeEnabled")),
              ("Delete enabled", attrs.get("deleteEnabled")),
              ("Read enabled", attrs.get("readEnabled"))]
    text = output.record(pairs)
    if doc.get("locks"):
        text += "\n\nLocks in the repository:\n" + output.table(doc["locks"], LOCK_COLUMNS)
    return text


def _target(args: argparse.Namespace) -> dict:
    target = {"repository": args.repository}
    if args.tag:
        target["tag"] = args.tag
    if args.digest:
        target["digest"] = args.digest
    return target


def _update(args: argparse.Namespace) -> None:
    body = _target(args)
    for field, value in (("writeEnabled", args.write_enabled),
                         ("deleteEnabled", args.delete_enabled),
                         ("readEnabled", args.read_enabled)):
        if value is not None:
            body[field] = value
    if len(body) == len(_target(args)):
        raise UsageError("nothing to update: give --write-enabled, --delete-enabled and/or "
                         "--read-enabled")
    output.emit(args.output, connect(args).patch(path("locks"), body), render)


def _show(args: argparse.Namespace) -> None:
    output.emit(args.output, connect(args).get(path("locks"), _target(args)), render)


def _target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", "-r", required=True, metavar="REPO")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--tag", "-t", metavar="TAG", help="one tag (default: the repository)")
    which.add_argument("--digest", metavar="DIGEST", help="one manifest, by digest")


def register(sub: argparse._SubParsersAction) -> None:
    group = add_group(sub, "repository", "lock repositories, tags and manifests")
    p = add_command(group, "update", _update, "lock or unlock a repository, tag or manifest",
                    description="Change what may be done to a repository, one tag, or one "
                    "manifest (by digest).\nSet at the root; every connected registry below "
                    "enforces it, also while offline.\nA write lock refuses moving the tag "
                    "(or any push, on a repository), a delete lock\nrefuses deletions: 405 "
                    "UNSUPPORTED. A read lock refuses pulls: 403 DENIED.",
                    epilog="example:\n  connreg repository update --repository team/app --tag v1 "
                    "--write-enabled false --delete-enabled false")
    _target_options(p)
    p.add_argument("--write-enabled", type=_bool, metavar="BOOL")
    p.add_argument("--delete-enabled", type=_bool, metavar="BOOL")
    p.add_argument("--read-enabled", type=_bool, metavar="BOOL")
    p = add_command(group, "show", _show, "show the lock attributes of a repository, tag or "
                    "manifest (on any node)")
    _target_options(p)
