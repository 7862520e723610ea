"""Shared fixtures: every test talks to real `connreg serve` processes on loopback."""

from __future__ import annotations

import shutil

import pytest

from connreg.testing import Node, start_node
from connreg.testing.hierarchy import Hierarchy

# The foundation tests (OCI API, skopeo, durability, conformance) run against an open registry;
# the auth and control-plane tests start nodes with auth on (the default).
OPEN = ["--no-auth"]


@pytest.fixture
def node(tmp_path) -> Node:
    """A fresh open registry node (`--no-auth`) with its own data dir, stopped after the test."""
    n = start_node(tmp_path / "node", args=OPEN)
    yield n
    n.stop()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory) -> Node:
    """One open node for a module of tests that do not depend on an empty registry."""
    n = start_node(tmp_path_factory.mktemp("shared") / "node", args=OPEN)
    yield n
    n.stop()


@pytest.fixture
def hierarchy(tmp_path) -> Hierarchy:
    """A root (auth on) for connected registries a test creates and starts; all stopped after."""
    h = Hierarchy(tmp_path)
    h.start_root()
    yield h
    h.stop_all()


def pytest_report_header(config):
    return f"skopeo: {shutil.which('skopeo') or 'not found'}"


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL cluster on loopback for the session (testing/postgres.py);
    tests take a fresh database each with `postgres_server.create_database(name)`."""
    from connreg.testing import postgres

    why = postgres.available()
    if why:
        pytest.skip(why)
    server = postgres.start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_store_server(tmp_path_factory):
    """One `rclone serve s3` on loopback for the session's scaled roots (testing/s3.py); each
    takes its own prefix with `s3_store_server.url(prefix)`."""
    from connreg.testing.s3 import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("s3") / "root")
    yield server
    server.stop()
