"""`connreg scope-map create|update|show|list|delete`."""

from __future__ import annotations

import argparse

from connreg.auth.actions import METRICS_READ
from connreg.cli import output
from connreg.cli.client import UsageError, connect, path
from connreg.cli.common import (
    ACTIONS_HELP, GATEWAY_ACTIONS, GATEWAY_ACTIONS_METAVAR, REPO_ACTIONS_METAVAR,
    REPOSITORY_ACTIONS, add_command, add_group, gateway_actions, repository_actions,
)

LIST_COLUMNS = [
    ("NAME", lambda s: s.get("name")),
    ("ACTIONS", lambda s: len(s.get("actions") or [])),
    ("SYSTEM", lambda s: s.get("system")),
    ("DESCRIPTION", lambda s: s.get("description")),
    ("UPDATED", lambda s: s.get("updatedAt")),
]


def render(scope_map: dict) -> str:
    return output.record([
        ("Name", scope_map.get("name")),
        ("Description", scope_map.get("description")),
        ("System", scope_map.get("system")),
        ("Created", scope_map.get("createdAt")),
        ("Updated", scope_map.get("updatedAt")),
        ("Actions", scope_map.get("actions") or []),
    ])


def _create(args: argparse.Namespace) -> None:
    actions = repository_actions(args.repository) + gateway_actions(args.gateway)
    if args.metrics_read:
        actions.append(METRICS_READ)
    if not actions:
        raise UsageError("give at least one --repository REPO ACTION…, --gateway CR ACTION… "
                         "or --metrics-read")
    body = {"name": args.name, "actions": actions}
    if args.description is not None:
        body["description"] = args.description
    output.emit(args.output, connect(args).post(path("scope-maps"), body), render)


def _update(args: argparse.Namespace) -> None:
    replace = repository_actions(args.repository) + gateway_actions(args.gateway)
    add = (repository_actions(args.add_repository, "--add-repository")
           + gateway_actions(args.add_gateway, "--add-gateway"))
    remove_groups = (args.remove_repository or []) + (args.remove_gateway or [])
    if replace and (add or remove_groups):
        raise UsageError("--repository/--gateway replace all actions; do not combine them with "
                         "--add-*/--remove-*")
    if not (replace or add or remove_groups or args.description is not None):
        raise UsageError("nothing to update: give --repository/--gateway, --add-*/--remove-* "
                         "or --description")
    client = connect(args)
    body: dict = {}
    if replace:
        body["actions"] = replace
    if add:
        body["addActions"] = add
    if remove_groups:
        remove = (repository_actions(args.remove_repository, "--remove-repository", False)
                  + gateway_actions(args.remove_gateway, "--remove-gateway", False))
        # A group without actions (`--remove-repository team/app`) removes all of its actions.
        bare = [("repositories", g[0], REPOSITORY_ACTIONS)
                for g in args.remove_repository or [] if len(g) == 1]
        bare += [("gateway", g[0], GATEWAY_ACTIONS) for g in args.remove_gateway or [] if len(g) == 1]
        if bare:
            current = client.get(path("scope-maps", args.name)).get("actions") or []
            for kind, target, allowed in bare:
                prefix = f"{kind}/{target.strip('/')}/"
                matching = [a for a in current
                            if a.startswith(prefix) and a[len(prefix):] in allowed]
                if not matching:
                    raise UsageError(f"scope map {args.name!r} has no actions for "
                                     f"{target.strip('/')!r}")
                remove += [a for a in matching if a not in remove]
        body["removeActions"] = remove
    if args.description is not None:
        body["description"] = args.description
    output.emit(args.output, client.patch(path("scope-maps", args.name), body), render)


def _show(args: argparse.Namespace) -> None:
    output.emit(args.output, connect(args).get(path("scope-maps", args.name)), render)


def _list(args: argparse.Namespace) -> None:
    answer = connect(args).get(path("scope-maps"))
    output.emit(args.output, answer,
                lambda a: output.table(a.get("scopeMaps") or [], LIST_COLUMNS))


def _delete(args: argparse.Namespace) -> None:
    connect(args).delete(path("scope-maps", args.name))
    if args.output == "table":
        print(f"Deleted scope map {args.name!r}.")


def _action_options(parser: argparse.ArgumentParser, verb: str = "") -> None:
    parser.add_argument(f"--{verb}repository", action="append", nargs="+",
                        metavar=REPO_ACTIONS_METAVAR,
                        help="a repository and its actions (repeatable)")
    parser.add_argument(f"--{verb}gateway", action="append", nargs="+",
                        metavar=GATEWAY_ACTIONS_METAVAR,
                        help="a connected registry and its gateway actions (repeatable)")


def register(sub: argparse._SubParsersAction) -> None:
    group = add_group(sub, "scope-map", "manage scope maps (sets of allowed actions)",
                      "A scope map lists the actions a token may perform.\n\n" + ACTIONS_HELP)

    p = add_command(group, "create", _create, "create a scope map",
                    epilog=ACTIONS_HELP + "\n\nexample:\n  connreg scope-map create --name ci-push "
                    "--repository team/app content/read content/write metadata/read "
                    "metadata/write")
    p.add_argument("--name", required=True)
    _action_options(p)
    p.add_argument("--metrics-read", action="store_true",
                   help="also allow GET /metrics and the /ui/ dashboard (the node-wide action "
                        "metrics/read), e.g. for a Prometheus scraper's token")
    p.add_argument("--description")

    p = add_command(group, "update", _update, "change a scope map's actions or description",
                    description="Change a scope map. --repository/--gateway replace the whole "
                    "action list;\n--add-repository/--add-gateway add actions and "
                    "--remove-repository/--remove-gateway\nremove them (with no ACTION, all of "
                    "that repository's or registry's actions).",
                    epilog=ACTIONS_HELP + "\n\nexample:\n  connreg scope-map update --name ci-push "
                    "--add-repository team/db content/read\n      --remove-repository team/app "
                    "content/write")
    p.add_argument("--name", required=True)
    _action_options(p)
    _action_options(p, "add-")
    p.add_argument("--remove-repository", action="append", nargs="+", metavar=("REPO", "ACTION"),
                   help="actions to remove; REPO alone removes all its actions (repeatable)")
    p.add_argument("--remove-gateway", action="append", nargs="+", metavar=("CR", "ACTION"),
                   help="gateway actions to remove; CR alone removes all of them (repeatable)")
    p.add_argument("--description")

    p = add_command(group, "show", _show, "show one scope map")
    p.add_argument("--name", required=True)

    add_command(group, "list", _list, "list scope maps")

    p = add_command(group, "delete", _delete, "delete a scope map (refused while a token uses it)")
    p.add_argument("--name", required=True)
