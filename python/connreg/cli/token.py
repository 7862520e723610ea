"""`connreg token create|update|show|list|delete` and `token credential generate`.

Generated passwords are printed once (the API never returns them again) and nowhere else.
"""

from __future__ import annotations

import argparse

from connreg.cli import output
from connreg.cli.client import UsageError, connect, path
from connreg.cli.common import (
    ACTIONS_HELP, GATEWAY_ACTIONS_METAVAR, REPO_ACTIONS_METAVAR, add_command, add_group,
    choice_ci, expiry, gateway_actions, repository_actions,
)

STATUS = choice_ci("enabled", "disabled")

LIST_COLUMNS = [
    ("NAME", lambda t: t.get("name")),
    ("SCOPE MAP", lambda t: t.get("scopeMap")),
    ("STATUS", lambda t: t.get("status")),
    ("PASSWORDS", lambda t: [c.get("name") for c in t.get("credentials") or []]),
    ("SYSTEM", lambda t: t.get("system")),
    ("CREATED", lambda t: t.get("createdAt")),
]

PASSWORD_COLUMNS = [
    ("PASSWORD", lambda p: p.get("name")),
    ("VALUE", lambda p: p.get("value")),
    ("EXPIRY", lambda p: p.get("expiry")),
]


def render(token: dict) -> str:
    credentials = [f"{c.get('name')} (created {output.cell(c.get('createdAt'))}, "
                   f"expires {output.cell(c.get('expiry')) if c.get('expiry') else 'never'})"
                   for c in token.get("credentials") or []]
    text = output.record([
        ("Name", token.get("name")),
        ("Scope map", token.get("scopeMap")),
        ("Status", token.get("status")),
        ("System", token.get("system")),
        ("Created", token.get("createdAt")),
        ("Credentials", credentials),
    ])
    if token.get("passwords"):
        text += "\n\n" + output.table(token["passwords"], PASSWORD_COLUMNS)
    return text


def _emit_with_passwords(args: argparse.Namespace, token: dict) -> None:
    output.emit(args.output, token, render)
    if token.get("passwords"):
        output.note("Save these passwords now: they are shown only once.")


def _create(args: argparse.Namespace) -> None:
    actions = repository_actions(args.repository) + gateway_actions(args.gateway)
    if args.scope_map and actions:
        raise UsageError("give either --scope-map or --repository/--gateway, not both")
    if not args.scope_map and not actions:
        raise UsageError("give --scope-map NAME or at least one --repository REPO ACTION…")
    body: dict = {"name": args.name}
    if actions:
        body["actions"] = actions  # the server makes the scope map `<name>-scope-map` with it
    else:
        body["scopeMap"] = args.scope_map
    if args.status:
        body["status"] = args.status
    if args.expiration:
        body["expiry"] = args.expiration
    token = connect(args).post(path("tokens"), body)
    _emit_with_passwords(args, token)


def _update(args: argparse.Namespace) -> None:
    body = {k: v for k, v in (("scopeMap", args.scope_map), ("status", args.status)) if v}
    if not body:
        raise UsageError("nothing to update: give --scope-map and/or --status")
    output.emit(args.output, connect(args).patch(path("tokens", args.name), body), render)


def _show(args: argparse.Namespace) -> None:
    output.emit(args.output, connect(args).get(path("tokens", args.name)), render)


def _list(args: argparse.Namespace) -> None:
    answer = connect(args).get(path("tokens"))
    output.emit(args.output, answer, lambda a: output.table(a.get("tokens") or [], LIST_COLUMNS))


def _delete(args: argparse.Namespace) -> None:
    connect(args).delete(path("tokens", args.name))
    if args.output == "table":
        print(f"Deleted token {args.name!r}.")


def _generate(args: argparse.Namespace) -> None:
    body: dict = {"passwordName": args.password_name}
    if args.expiration:
        body["expiry"] = args.expiration
    token = connect(args).post(path("tokens", args.name, "credentials"), body)
    _emit_with_passwords(args, token)


def register(sub: argparse._SubParsersAction) -> None:
    group = add_group(sub, "token", "manage tokens (identities with a scope map and passwords)")

    p = add_command(group, "create", _create, "create a token and print its passwords once",
                    description="Create a token. With --repository/--gateway a scope map named "
                    "'<name>-scope-map'\nis created for it first.",
                    epilog=ACTIONS_HELP + "\n\nexamples:\n"
                    "  connreg token create --name ci --scope-map ci-push\n"
                    "  connreg token create --name reader --repository team/app content/read "
                    "metadata/read")
    p.add_argument("--name", required=True)
    p.add_argument("--scope-map", metavar="NAME", help="an existing scope map")
    p.add_argument("--repository", action="append", nargs="+", metavar=REPO_ACTIONS_METAVAR,
                   help="a repository and its actions (repeatable)")
    p.add_argument("--gateway", action="append", nargs="+", metavar=GATEWAY_ACTIONS_METAVAR,
                   help="a connected registry and its gateway actions (repeatable)")
    p.add_argument("--status", type=STATUS, help="enabled (default) or disabled")
    p.add_argument("--expiry", "--expiration", dest="expiration", type=expiry,
                   metavar="ISO-8601",
                   help="when the passwords expire (the API's `expiry`; --expiration is the same "
                        "option): a UTC date-time (2026-12-31T23:59:59Z) or a duration from now "
                        "(P30D); default: never")

    p = add_command(group, "update", _update, "change a token's scope map or status")
    p.add_argument("--name", required=True)
    p.add_argument("--scope-map", metavar="NAME")
    p.add_argument("--status", type=STATUS, help="enabled or disabled")

    p = add_command(group, "show", _show, "show one token (never its passwords)")
    p.add_argument("--name", required=True)

    add_command(group, "list", _list, "list tokens")

    p = add_command(group, "delete", _delete, "delete a token")
    p.add_argument("--name", required=True)

    cred = add_group(group, "credential", "manage a token's passwords")
    p = add_command(cred, "generate", _generate, "generate new password(s) and print them once",
                    description="Generate a new password1, password2, or (by default) both. The "
                    "old value stops\nworking at once; the other password is untouched.")
    p.add_argument("--name", required=True, help="the token")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--password1", dest="password_name", action="store_const",
                       const="password1", help="regenerate password1 only")
    which.add_argument("--password2", dest="password_name", action="store_const",
                       const="password2", help="regenerate password2 only")
    p.add_argument("--expiry", "--expiration", dest="expiration", type=expiry,
                   metavar="ISO-8601",
                   help="when the new password(s) expire (--expiration is the same option): a "
                        "date-time or a duration from now (P30D); default: never")
