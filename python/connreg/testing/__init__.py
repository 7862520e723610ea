"""Helpers that start real connreg nodes for tests and benchmarks."""

from connreg.testing.node import Node, free_port, start_node

__all__ = ["Node", "free_port", "start_node"]
