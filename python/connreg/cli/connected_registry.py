"""`connreg connected-registry create|update|show|list|deactivate|resync|repo|delete|get-settings`."""

from __future__ import annotations

import argparse

from connreg.cli import output
from connreg.cli.client import UsageError, connect, path
from connreg.cli.common import add_command, add_group, choice_ci, confirm
from connreg.cli.watch import watch

MODE = choice_ci("ReadWrite", "ReadOnly")
LOG_LEVEL = choice_ci("Debug", "Information", "Warning", "Error", "None")
PROTOCOL = choice_ci("http", "https")
BOOLEAN = {"true": True, "false": False, "yes": True, "no": False}

LIST_COLUMNS = [
    ("NAME", lambda c: c.get("name")),
    ("MODE", lambda c: c.get("mode")),
    ("PARENT", lambda c: c.get("parent") or "(root)"),
    ("ACTIVATION", lambda c: c.get("activationStatus")),
    ("STATE", lambda c: c.get("connectionState")),
    ("LAST SYNC", lambda c: c.get("lastSuccessfulSyncTime")),
    ("REPOSITORIES", lambda c: len(c.get("repositories") or [])),
]

STATUS_COLUMNS = [
    ("CODE", lambda s: s.get("code")),
    ("DESCRIPTION", lambda s: s.get("description")),
    ("TIME", lambda s: s.get("timestamp")),
    ("CORRELATION ID", lambda s: s.get("correlationId")),
]


def render(cr: dict) -> str:
    bandwidth = cr.get("bandwidthLimit")
    text = output.record([
        ("Name", cr.get("name")),
        ("Mode", cr.get("mode")),
        ("Parent", cr.get("parent") or "(root)"),
        ("Repositories", cr.get("repositories") or []),
        ("Client tokens", cr.get("clientTokens") or []),
        ("Sync token", cr.get("syncToken")),
        ("Sync schedule", cr.get("syncSchedule")),
        ("Sync window", cr.get("syncWindow")),
        ("Message TTL", cr.get("messageTtl")),
        ("Log level", cr.get("logLevel")),
        ("Notifications", cr.get("notifications") or []),
        ("GC enabled", cr.get("gcEnabled")),
        ("GC schedule", cr.get("gcSchedule")),
        ("Bandwidth limit", f"{bandwidth} bytes/s" if bandwidth else "unlimited"),
        ("Activation", cr.get("activationStatus")),
        ("Instance", cr.get("instanceId")),
        ("Connection", cr.get("connectionState")),
        ("Last activity", cr.get("lastActivityTime")),
        ("Last sync", cr.get("lastSyncTime")),
        ("Last good sync", cr.get("lastSuccessfulSyncTime")),
        ("Version", cr.get("version")),
    ])
    if cr.get("statusDetails"):
        text += "\n\nStatus details:\n" + output.table(cr["statusDetails"], STATUS_COLUMNS)
    return text


def _bool(value: str) -> bool:
    try:
        return BOOLEAN[value.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}") from None


def _bandwidth(value: str) -> int | None:
    """Bytes per second; `none` or 0 means unlimited (sent as null)."""
    if value.lower() in ("none", "unlimited", "0"):
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(
            f"expected bytes per second (a whole number) or 'none', got {value!r}")
    return number


def _settings(args: argparse.Namespace) -> dict:
    """The settable fields common to create and update, for the options given."""
    fields = {
        "syncSchedule": args.sync_schedule, "syncWindow": args.sync_window,
        "messageTtl": args.sync_message_ttl, "logLevel": args.log_level,
        "notifications": args.notifications, "gcEnabled": args.gc_enabled,
        "gcSchedule": args.gc_schedule,
    }
    body = {k: v for k, v in fields.items() if v is not None}
    if args.bandwidth_limit is not None:
        body["bandwidthLimit"] = _bandwidth(args.bandwidth_limit)
    return body


def _create(args: argparse.Namespace) -> None:
    body: dict = {"name": args.name, "repositories": args.repository}
    if args.mode:
        body["mode"] = args.mode
    if args.parent:
        body["parent"] = args.parent
    if args.client_tokens:
        body["clientTokens"] = args.client_tokens
    body.update(_settings(args))
    output.emit(args.output, connect(args).post(path("connected-registries"), body), render)


def _update(args: argparse.Namespace) -> None:
    body = _settings(args)
    if args.client_tokens is not None:  # the whole set, as `create` takes it
        body["clientTokens"] = args.client_tokens
    if args.add_client_tokens:
        body["addClientTokens"] = args.add_client_tokens
    if args.remove_client_tokens:
        body["removeClientTokens"] = args.remove_client_tokens
    if not body:
        raise UsageError("nothing to update; see --help for the settings you can change")
    output.emit(args.output, connect(args).patch(path("connected-registries", args.name), body),
                render)


def _show(args: argparse.Namespace) -> None:
    if args.watch:  # a live progress line instead (cli/watch.py)
        if args.interval <= 0 or args.interval > 3600:
            raise UsageError("--interval: seconds between polls, more than 0 and at most 3600")
        watch(connect(args), args.name, args.interval)
        return
    output.emit(args.output, connect(args).get(path("connected-registries", args.name)), render)


def _list(args: argparse.Namespace) -> None:
    params = {}
    if args.parent:
        params["parent"] = args.parent
    if args.no_children:
        params["noChildren"] = "true"
    answer = connect(args).get(path("connected-registries"), params=params)
    if args.no_children and not args.parent:
        # Direct children of the root (as `az acr` does); the server may not filter this case.
        answer["connectedRegistries"] = [c for c in answer.get("connectedRegistries") or []
                                         if not c.get("parent")]
    output.emit(args.output, answer,
                lambda a: output.table(a.get("connectedRegistries") or [], LIST_COLUMNS))


def _deactivate(args: argparse.Namespace) -> None:
    answer = connect(args).post(path("connected-registries", args.name, "deactivate"))
    output.emit(args.output, answer,
                lambda _: f"Deactivated {args.name!r}: a new instance can now activate it.")


def _resync(args: argparse.Namespace) -> None:
    answer = connect(args).post(path("connected-registries", args.name, "resync"))
    output.emit(args.output, answer,
                lambda _: f"Asked {args.name!r} to synchronize now; it does so on its next "
                          "contact with its parent.")


def _repo(args: argparse.Namespace) -> None:
    if not args.add and not args.remove:
        raise UsageError("give --add REPO… and/or --remove REPO…")
    body = {"add": args.add or [], "remove": args.remove or []}
    answer = connect(args).post(path("connected-registries", args.name, "repositories"), body)
    output.emit(args.output, answer, render)


def _delete(args: argparse.Namespace) -> None:
    what = "and its sync token and scope map" if args.cleanup else "(its sync token and scope map stay)"
    confirm(f"Delete connected registry {args.name!r} {what}?", args.yes,
            f"deleting connected registry {args.name!r}")
    params = {"cleanup": "true"} if args.cleanup else None
    answer = connect(args).delete(path("connected-registries", args.name), params=params)

    def text(a: dict | None) -> str:
        lines = [f"Deleted connected registry {args.name!r}."]
        left = (a or {}).get("leftBehind") or []
        if left:
            lines.append("Left behind (delete them with 'connreg token delete' / "
                         "'connreg scope-map delete', or use --cleanup next time):")
            lines += [f"  {item}" for item in left]
        return "\n".join(lines)

    output.emit(args.output, answer, text)


def _get_settings(args: argparse.Namespace) -> None:
    client = connect(args)
    if not args.parent_endpoint:
        # Find out before asking to rotate a password: only the root's address is known.
        parent = client.get(path("connected-registries", args.name)).get("parent")
        if parent:
            raise UsageError(f"{args.name!r} is a child of connected registry {parent!r}: give "
                             "--parent-endpoint HOST:PORT (where the node reaches it)")
    confirm(f"Generate a new password{args.generate_password} for the sync token of "
            f"{args.name!r}? An instance using the old one stops syncing until reconfigured.",
            args.yes, f"get-settings (it replaces a sync-token password of {args.name!r})")
    body: dict = {"parentProtocol": args.parent_protocol,
                  "generatePassword": args.generate_password}
    if args.parent_endpoint:
        body["parentEndpoint"] = args.parent_endpoint
    answer = client.post(path("connected-registries", args.name, "settings"), body)

    def text(a: dict) -> str:
        rest = [(output.label(k), v) for k, v in a.items() if k != "connectionString"]
        return output.record([("Connection string", a.get("connectionString")), *rest])

    output.emit(args.output, answer, text)
    output.note("The connection string holds a password that is shown only once; pass it to the "
                "node as --connection-string or CONNREG_CONNECTION_STRING.")


def _setting_options(p: argparse.ArgumentParser, creating: bool) -> None:
    p.add_argument("--sync-schedule", metavar="CRON",
                   help="5-field cron; default '* * * * *' (continuous)" if creating else
                   "5-field cron")
    p.add_argument("--sync-window", metavar="DURATION",
                   help="ISO-8601 duration PT1H..P7D; required with a non-continuous schedule")
    p.add_argument("--sync-message-ttl", metavar="DURATION",
                   help="ISO-8601 duration P1D..P90D" + (" (default P2D)" if creating else ""))
    p.add_argument("--log-level", type=LOG_LEVEL, metavar="LEVEL",
                   help="Debug, Information" + (" (default)" if creating else "")
                        + ", Warning, Error or None")
    p.add_argument("--notifications", nargs="+" if creating else "*", action="extend",
                   metavar="PATTERN",
                   help="artifact patterns to report, e.g. 'team/app:*'"
                        + ("" if creating else "; replaces the list, give none to clear it"))
    p.add_argument("--gc-enabled", type=_bool, metavar="true|false",
                   help="garbage-collect unreferenced content on the node")
    p.add_argument("--gc-schedule", metavar="CRON", help="when garbage collection runs")
    p.add_argument("--bandwidth-limit", metavar="BYTES_PER_S",
                   help="cap on sync traffic; 'none' for unlimited" +
                        (" (default)" if creating else ""))


def register(sub: argparse._SubParsersAction) -> None:
    group = add_group(sub, "connected-registry", "manage connected registries of the hierarchy")

    p = add_command(group, "create", _create, "create a connected registry",
                    epilog="example:\n  connreg connected-registry create --name factory1 "
                    "--mode ReadOnly --repository team/app team/db \\\n"
                    "      --sync-schedule '0 2 * * *' --sync-window PT4H")
    p.add_argument("--name", required=True)
    p.add_argument("--mode", type=MODE, metavar="ReadWrite|ReadOnly",
                   help="ReadWrite (default) or ReadOnly; a ReadOnly parent only has ReadOnly "
                        "children")
    p.add_argument("--parent", metavar="CR", help="parent connected registry (default: the root)")
    p.add_argument("--repository", required=True, nargs="+", action="extend", metavar="REPO",
                   help="repositories it syncs: names or prefix patterns like 'team/*'")
    p.add_argument("--client-tokens", nargs="+", action="extend", metavar="TOKEN",
                   help="tokens its clients use (at most 20)")
    _setting_options(p, creating=True)

    p = add_command(group, "update", _update, "change a connected registry's settings",
                    description="Change settings. Mode and parent cannot change after creation; "
                    "repositories\nchange with 'connreg connected-registry repo'.")
    p.add_argument("--name", required=True)
    p.add_argument("--client-tokens", nargs="+", action="extend", metavar="TOKEN",
                   help="the tokens its clients use, replacing the current set (as in create)")
    p.add_argument("--add-client-tokens", nargs="+", action="extend", metavar="TOKEN")
    p.add_argument("--remove-client-tokens", nargs="+", action="extend", metavar="TOKEN")
    _setting_options(p, creating=False)

    p = add_command(group, "show", _show, "show a connected registry and its reported state")
    p.add_argument("--name", required=True)
    p.add_argument("--watch", action="store_true",
                   help="keep polling and show one live line: state, bytes moved, rate, and "
                        "bytes left with an ETA while a sync transfers blobs (Ctrl-C ends it)")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between polls with --watch (default 1)")

    p = add_command(group, "list", _list, "list connected registries")
    p.add_argument("--parent", metavar="CR", help="only this registry's descendants")
    p.add_argument("--no-children", action="store_true",
                   help="only direct children (of --parent, or of the root)")

    p = add_command(group, "deactivate", _deactivate,
                    "mark it inactive so that a new instance can activate it")
    p.add_argument("--name", required=True)

    p = add_command(group, "resync", _resync, "ask the instance to synchronize now")
    p.add_argument("--name", required=True)

    p = add_command(group, "repo", _repo, "add or remove synchronized repositories",
                    description="Add repositories (also to every ancestor) or remove them (also "
                    "from every descendant).")
    p.add_argument("--name", required=True)
    p.add_argument("--add", nargs="+", action="extend", metavar="REPO")
    p.add_argument("--remove", nargs="+", action="extend", metavar="REPO")

    p = add_command(group, "delete", _delete, "delete a connected registry",
                    description="Delete a connected registry. Asks for confirmation on a "
                    "terminal; without one, --yes is required.")
    p.add_argument("--name", required=True)
    p.add_argument("--cleanup", action="store_true",
                   help="also delete its sync token and scope map and its actions in ancestors")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p = add_command(group, "get-settings", _get_settings,
                    "rotate the sync-token password and print the connection string",
                    description="Generate a new sync-token password and print the connection "
                    "string a node needs\n(shown once). The old password stops working, so this "
                    "asks for confirmation\nlike delete.")
    p.add_argument("--name", required=True)
    p.add_argument("--parent-protocol", required=True, type=PROTOCOL, metavar="http|https",
                   help="how the node reaches its parent")
    p.add_argument("--generate-password", type=int, choices=(1, 2), default=1,
                   help="which sync-token password to regenerate (default 1)")
    p.add_argument("--parent-endpoint", metavar="HOST:PORT",
                   help="the parent's address as the node sees it (needed when the parent is "
                        "a connected registry)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
