"""What every management command shares: global options, one-line errors, confirmation prompts,
and the parsing of `REPO ACTION [ACTION…]` groups into management-API action strings.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Iterable
from datetime import datetime

from connreg.cli.client import CliError, UsageError

REPOSITORY_ACTIONS = ("content/read", "content/write", "content/delete",
                      "metadata/read", "metadata/write")
GATEWAY_ACTIONS = ("config/read", "config/write", "message/read", "message/write")

# The metavar trick renders `--repository REPO ACTION [ACTION ...]` in usage lines.
REPO_ACTIONS_METAVAR = ("REPO ACTION", "ACTION")
GATEWAY_ACTIONS_METAVAR = ("CR ACTION", "ACTION")

ACTIONS_HELP = (
    "repository actions: " + ", ".join(REPOSITORY_ACTIONS) + "\n"
    "gateway actions:    " + ", ".join(GATEWAY_ACTIONS) + "\n"
    "node actions:       metrics/read (scope-map --metrics-read: /metrics and the /ui/ dashboard)\n"
    "REPO may be an exact repository name or a prefix pattern like 'team/*'."
)


class CliParser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr (exit 2) instead of usage + error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"connreg: error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(self, args=None, namespace=None):
        # Unknown options would otherwise bubble up to the top-level parser (not ours) and be
        # reported there with its usage text; a command rejects them itself.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _global_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("global options")
    g.add_argument("--registry", metavar="URL",
                   help="root registry, e.g. https://registry.example:5000 (env CONNREG_REGISTRY; "
                        "default: the registry of the last 'connreg login')")
    g.add_argument("--username", "-u", metavar="NAME",
                   help="admin or token name (env CONNREG_USERNAME; default: from 'connreg login')")
    g.add_argument("--password", "-p", metavar="PASSWORD",
                   help="its password (env CONNREG_PASSWORD; prefer the environment or "
                        "'connreg login', command lines are visible to other users)")
    g.add_argument("--ca-file", metavar="FILE",
                   help="PEM CA certificate(s) an https registry must verify against (env "
                        "CONNREG_CA_FILE; default: from 'connreg login', else the system "
                        "trust store)")
    g.add_argument("--output", "-o", choices=("table", "json"), default="table",
                   help="table for people (default) or json: the management API's camelCase JSON")
    return parent


GLOBAL_OPTIONS = _global_options()


def run(func: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: CliError → one line on stderr and its exit code; Ctrl-C → 130."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args) or 0
        except CliError as exc:
            print(f"connreg: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("connreg: error: interrupted", file=sys.stderr)
            return 130

    return wrapper


def add_group(sub: argparse._SubParsersAction, name: str, help: str,
              description: str | None = None) -> argparse._SubParsersAction:
    """A command group (`connreg scope-map …`) and the subparsers action for its commands."""
    group = sub.add_parser(name, help=help, description=description or help,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    group.__class__ = CliParser  # the top-level parser is not ours; its children still are
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND",
                                parser_class=CliParser)


def add_command(sub: argparse._SubParsersAction, name: str, func: Callable, help: str,
                description: str | None = None, epilog: str | None = None,
                global_options: bool = True) -> argparse.ArgumentParser:
    """A leaf command with the global options, `--help`, and error handling around `func`."""
    parser = sub.add_parser(name, help=help, description=description or help, epilog=epilog,
                            parents=[GLOBAL_OPTIONS] if global_options else [],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.__class__ = CliParser
    parser.set_defaults(func=run(func))
    return parser


def repository_actions(groups: Iterable[list[str]] | None, option: str = "--repository",
                       require_actions: bool = True) -> list[str]:
    """`[["team/app", "content/read", …], …]` → `["repositories/team/app/content/read", …]`."""
    return _actions(groups, option, "repositories", REPOSITORY_ACTIONS, require_actions)


def gateway_actions(groups: Iterable[list[str]] | None, option: str = "--gateway",
                    require_actions: bool = True) -> list[str]:
    return _actions(groups, option, "gateway", GATEWAY_ACTIONS, require_actions)


def _actions(groups, option, kind, allowed, require_actions) -> list[str]:
    out: list[str] = []
    for target, *actions in groups or []:
        target = target.strip("/")
        if not target:
            raise UsageError(f"{option}: empty {'repository' if kind == 'repositories' else 'name'}")
        if target in allowed:
            raise UsageError(f"{option} {target}: the first value is the "
                             f"{'repository' if kind == 'repositories' else 'connected registry'}, "
                             "then its actions")
        if not actions and require_actions:
            raise UsageError(f"{option} {target}: give at least one action "
                             f"({', '.join(allowed)})")
        for action in actions:
            action = action.lower()
            if action not in allowed:
                raise UsageError(f"{option} {target}: unknown action {action!r}; "
                                 f"choose from {', '.join(allowed)}")
            full = f"{kind}/{target}/{action}"
            if full not in out:
                out.append(full)
    return out


_DURATION = re.compile(r"P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?",
                       re.IGNORECASE)


def expiry(value: str) -> str:
    """argparse type: an ISO-8601 date-time or a duration from now (`P30D`), kept as typed."""
    if _DURATION.fullmatch(value):
        return value
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an ISO-8601 date-time (2026-12-31T23:59:59Z) nor a "
            "duration from now (P30D, PT12H)") from None
    return value


def choice_ci(*choices: str) -> Callable[[str], str]:
    """argparse type: one of `choices`, case-insensitively, returned in canonical spelling."""
    canon = {c.lower(): c for c in choices}

    def parse(value: str) -> str:
        try:
            return canon[value.lower()]
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"invalid choice {value!r} (choose from {', '.join(choices)})") from None

    parse.__name__ = "choice"
    return parse


def confirm(question: str, yes: bool, what: str) -> None:
    """Ask `question` on a terminal; without one, refuse (naming `what`) unless `--yes`."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{what} needs confirmation and there is no terminal to ask on; "
                         "pass --yes")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("cancelled, nothing changed")
