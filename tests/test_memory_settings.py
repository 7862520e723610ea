"""`malloc_arena_max`: the node caps glibc's malloc arenas at start (bench/RESULTS.md, Soak:
per-thread arenas kept RSS climbing under load)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from connreg.config import Settings

needs_glibc = pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no libc found")


def _limit(arenas: int, env: dict[str, str]) -> str:
    """limit_malloc_arenas in a fresh interpreter, as `connreg serve` calls it at start."""
    code = f"from connreg.serve import limit_malloc_arenas; print(limit_malloc_arenas({arenas}))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


@needs_glibc
def test_arenas_are_capped_unless_the_environment_or_zero_says_otherwise():
    base = {"PATH": "/usr/bin:/bin"}
    assert _limit(2, base) == "True"
    assert _limit(0, base) == "False"  # 0: glibc's own default
    assert _limit(2, {**base, "MALLOC_ARENA_MAX": "4"}) == "False"  # the operator's variable wins


def test_the_default_is_two_and_settable_from_the_environment():
    assert Settings().malloc_arena_max == 2
    assert Settings.load(environ={"CONNREG_MALLOC_ARENA_MAX": "0"}).malloc_arena_max == 0
