"""`connreg` entry point: subcommands registered here, each in its own module."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from connreg import __version__
from connreg.config import Settings


def _serve(args: argparse.Namespace) -> int:
    from connreg import serve

    try:
        settings = Settings.load(
            config_file=args.config,
            overrides={"data_dir": args.data_dir, "listen": args.listen,
                       "log_level": args.log_level},
        )
    except (OSError, ValueError) as exc:
        print(f"connreg: error: {exc}", file=sys.stderr)
        return 2
    serve.main(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connreg", description="Connected OCI registry")
    parser.add_argument("--version", action="version", version=f"connreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a registry node")
    serve.add_argument("--data-dir", type=Path, help="where blobs and metadata live "
                       "(env CONNREG_DATA_DIR, default ./data)")
    serve.add_argument("--listen", help="host:port (env CONNREG_LISTEN, default 127.0.0.1:5000)")
    serve.add_argument("--config", type=Path, help="TOML file with settings")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
