"""`connreg` entry point: subcommands registered here, each in its own module."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from connreg import __version__
from connreg.config import Settings


def _serve(args: argparse.Namespace) -> int:
    from connreg import datadir, serve
    from connreg.control import activation
    from connreg.gc.schedule import check_schedule
    from connreg.tls import ServedCertificate

    try:
        settings = Settings.load(
            config_file=args.config,
            overrides={"data_dir": args.data_dir, "listen": args.listen,
                       "log_level": args.log_level, "auth": args.auth,
                       "anonymous_pull": args.anonymous_pull,
                       "advertise_address": args.advertise_address,
                       "connection_string": args.connection_string,
                       "parent_endpoint": args.parent_endpoint,
                       "parent_ca_file": args.parent_ca_file,
                       "tls_cert": args.tls_cert, "tls_key": args.tls_key,
                       "metadata_url": args.metadata_url, "blob_store": args.blob_store,
                       "s3_endpoint": args.s3_endpoint},
        )
        from connreg.storage import backends
        backends.metadata_kind(settings), backends.blob_location(settings)  # validated early
        if settings.is_connected_registry:
            activation.connection(settings)  # validates the connection string early
            activation.parent_trust(settings)  # and the parent's CA file
        # The files are read again when serving starts; a bad pair must stop us before
        # activation tells the parent this node is up.
        ServedCertificate.from_settings(settings.tls_cert, settings.tls_key)
        check_schedule(settings.gc_schedule, "gc_schedule")
        if settings.audit_pulls not in ("off", "manifests", "all"):
            raise ValueError(f"audit_pulls: {settings.audit_pulls!r} is not off, manifests "
                             "or all")
    except (OSError, ValueError) as exc:
        print(f"connreg: error: {exc}", file=sys.stderr)
        return 2
    # Owner-only before anything (activation state, admin password, databases) is written.
    serve.configure_logging(settings)
    try:
        datadir.make_owner_only(settings.data_dir)
    except OSError as exc:
        print(f"connreg: error: data dir {settings.data_dir}: {exc}", file=sys.stderr)
        return 2
    if settings.is_connected_registry:
        try:
            state = activation.activate(settings)
        except activation.ActivationError as exc:
            print(f"connreg: error: {exc}", file=sys.stderr)
            return 3
        if state.get("offline"):
            print(f"connreg: warning: {state['offline']}; serving as connected registry "
                  f"{state.get('name')} with what is stored", file=sys.stderr)
    from connreg.gc import DataDirBusy
    from connreg.storage.backends import EngineUnreachable  # psycopg only with a database

    try:
        serve.main(settings)
    except DataDirBusy as exc:  # an offline garbage collection holds the data dir
        print(f"connreg: error: {exc}", file=sys.stderr)
        return 1
    except EngineUnreachable as exc:  # the orchestrator restarts us; say why, no traceback
        print(f"connreg: error: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser(serve_only: bool = False) -> argparse.ArgumentParser:
    """Every subcommand; `serve_only`: just `serve`, whose process then never imports the
    client commands' modules (~1 MB resident for the node's life; docs/operations.md)."""
    parser = argparse.ArgumentParser(prog="connreg", description="Connected OCI registry")
    parser.add_argument("--version", action="version", version=f"connreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a registry node")
    serve.add_argument("--data-dir", type=Path, help="where blobs and metadata live "
                       "(env CONNREG_DATA_DIR, default ./data)")
    serve.add_argument("--listen", help="host:port (env CONNREG_LISTEN, default 127.0.0.1:5000)")
    serve.add_argument("--config", type=Path, help="TOML file with settings")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument("--no-auth", dest="auth", action="store_const", const=False,
                       help="open registry without authentication, for tests only "
                       "(env CONNREG_AUTH=false)")
    serve.add_argument("--anonymous-pull", action="store_const", const=True,
                       help="let clients without credentials pull (env CONNREG_ANONYMOUS_PULL)")
    serve.add_argument("--advertise-address", help="host:port children reach this node at "
                       "(env CONNREG_ADVERTISE_ADDRESS, default --listen)")
    serve.add_argument("--connection-string", help="run as a connected registry: the string "
                       "printed by `connreg connected-registry get-settings` "
                       "(env CONNREG_CONNECTION_STRING)")
    serve.add_argument("--parent-endpoint", help="host:port of the parent, overriding the "
                       "connection string's (env CONNREG_PARENT_ENDPOINT)")
    serve.add_argument("--parent-ca-file", metavar="FILE", help="PEM CA certificate(s) an "
                       "https parent must verify against (env CONNREG_PARENT_CA_FILE; default: "
                       "the system trust store)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM "
                       "certificate chain (env CONNREG_TLS_CERT; needs --tls-key; re-read on "
                       "SIGHUP or change)")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's unencrypted PEM "
                       "private key (env CONNREG_TLS_KEY)")
    serve.add_argument("--metadata-url", metavar="URL", help="postgresql://… : metadata and "
                       "control plane on PostgreSQL, shared by replicas (env "
                       "CONNREG_METADATA_URL; default SQLite in the data dir)")
    serve.add_argument("--blob-store", metavar="WHERE", help="s3://BUCKET[/PREFIX] or a folder "
                       "every replica mounts (env CONNREG_BLOB_STORE; default <data-dir>/store)")
    serve.add_argument("--s3-endpoint", metavar="URL", help="endpoint of an S3-compatible "
                       "store (env CONNREG_S3_ENDPOINT; credentials from AWS_* variables)")
    serve.set_defaults(func=_serve)
    if serve_only:
        return parser

    from connreg.cli import connected_registry, gc, login, maintenance, scope_map, sync, token
    from connreg.cli import audit as audit_cli, repository as repository_cli

    for module in (login, scope_map, token, connected_registry, maintenance, sync, gc):
        module.register(sub)
    for module in (repository_cli, audit_cli):  # image locks, the audit trail
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(serve_only=argv[:1] == ["serve"]).parse_args(argv)
    return args.func(args)
