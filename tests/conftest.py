"""Shared fixtures: every test talks to real `connreg serve` processes on loopback."""

from __future__ import annotations

import shutil

import pytest

from connreg.testing import Node, start_node


@pytest.fixture
def node(tmp_path) -> Node:
    """A fresh registry node with its own data dir, stopped after the test."""
    n = start_node(tmp_path / "node")
    yield n
    n.stop()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory) -> Node:
    """One node for a module of tests that do not depend on an empty registry."""
    n = start_node(tmp_path_factory.mktemp("shared") / "node")
    yield n
    n.stop()


def pytest_report_header(config):
    return f"skopeo: {shutil.which('skopeo') or 'not found'}"
