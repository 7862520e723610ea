"""`connreg login URL` and `connreg logout [URL]`: the stored credentials (see credentials.py)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from connreg.cli import credentials, output
from connreg.cli.client import CliError, Client, UsageError, ca_file_for, normalize_url, path
from connreg.cli.common import add_command


def _read_password(args: argparse.Namespace, registry: str) -> str:
    if args.password_stdin:
        if args.password:
            raise UsageError("--password and --password-stdin exclude each other")
        return sys.stdin.readline().rstrip("\r\n")
    password = args.password or os.environ.get("CONNREG_PASSWORD")
    if password:
        return password
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {args.username} at {registry}: ")
    raise UsageError("no password: pass --password, --password-stdin or set CONNREG_PASSWORD")


def _login(args: argparse.Namespace) -> None:
    registry = normalize_url(args.url)
    if not args.username:
        args.username = os.environ.get("CONNREG_USERNAME")
    if not args.username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise UsageError("no user name: pass --username or set CONNREG_USERNAME")
        sys.stderr.write(f"Username for {registry}: ")
        sys.stderr.flush()
        args.username = sys.stdin.readline().strip()
    password = _read_password(args, registry)
    ca_file = ca_file_for(args)
    client = Client(registry, args.username, password, ca_file=ca_file)
    limited = None
    try:
        client.get(path("scope-maps"))
    except CliError as exc:
        if exc.status != 403:
            raise CliError(f"login to {registry} as {args.username} failed: "
                           f"{exc.api_message}") from None
        limited = exc.api_message  # valid credentials that may not use the management API
    data = credentials.load()
    entry = {"username": args.username, "password": password}
    if ca_file:
        entry["caFile"] = ca_file  # later commands verify the registry with it too
    data.setdefault("registries", {})[registry] = entry
    data["current"] = registry
    where = credentials.save(data)
    print(f"Logged in to {registry} as {args.username}; credentials stored in {where}.")
    if limited:
        output.note(f"note: the credentials are valid but {registry} refuses management "
                    f"requests from {args.username}: {limited}")


def _logout(args: argparse.Namespace) -> None:
    data = credentials.load()
    registry = normalize_url(args.url) if args.url else data.get("current")
    entries = data.get("registries", {})
    if not registry or registry not in entries:
        print(f"Not logged in{' to ' + registry if registry else ''}.")
        return
    del entries[registry]
    if data.get("current") == registry:
        data["current"] = next(iter(entries), None)
    credentials.save(data)
    print(f"Removed the stored credentials for {registry}.")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "login", _login, "check credentials for a registry and store them",
                    description="Check the credentials against the registry's management API "
                    "and store them\n(file mode 0600) in $CONNREG_CONFIG_DIR/credentials.json, "
                    "by default\n~/.config/connreg/credentials.json. Later commands use them when "
                    "no\n--registry/--username/--password (or CONNREG_* variables) are given.",
                    global_options=False)
    p.add_argument("url", metavar="URL", help="e.g. https://registry.example:5000")
    p.add_argument("--username", "-u", metavar="NAME", help="admin or a token name")
    p.add_argument("--password", "-p", metavar="PASSWORD",
                   help="visible to other users in the process list; prefer --password-stdin, "
                        "CONNREG_PASSWORD or the prompt")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    p.add_argument("--ca-file", metavar="FILE",
                   help="PEM CA certificate(s) an https registry must verify against (env "
                        "CONNREG_CA_FILE; default: the system trust store); stored with the "
                        "credentials")

    p = add_command(sub, "logout", _logout, "forget the stored credentials for a registry",
                    global_options=False)
    p.add_argument("url", metavar="URL", nargs="?",
                   help="default: the registry of the last login")
