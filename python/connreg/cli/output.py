"""Rendering: `--output json` prints the API's JSON as is; `--output table` is for people.

Tables are plain aligned text (no colors, no box drawing) so they survive logs and `less`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

Column = tuple[str, Callable[[dict], Any]]


def emit(output: str, data: Any, table: Callable[[Any], str]) -> None:
    """Print `data` as JSON, or `table(data)` for people. An empty answer prints no JSON."""
    if output == "json":
        if data is not None:
            print(json.dumps(data, indent=2, sort_keys=False))
    else:
        text = table(data)
        if text:
            print(text)


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value) if value else "-"
    return str(value)


def label(key: str) -> str:
    """`syncTokenName` → `Sync token name`."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).split()
    return " ".join([words[0].capitalize(), *(w.lower() for w in words[1:])]) if words else key


def table(rows: Sequence[dict], columns: Sequence[Column], empty: str = "(none)") -> str:
    """An aligned table with a header and a dash rule."""
    if not rows:
        return empty
    body = [[cell(get(r)) for _, get in columns] for r in rows]
    headers = [h for h, _ in columns]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(headers)]
    fmt = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(b) for b in body)])


def record(pairs: Sequence[tuple[str, Any]]) -> str:
    """`Label:  value` lines; list values continue one item per line under the first."""
    width = max(len(label) for label, _ in pairs) + 1
    lines = []
    for label, value in pairs:
        head = f"{label + ':':<{width}}  "
        if isinstance(value, (list, tuple)) and value:
            items = [cell(v) for v in value]
            lines.append(head + items[0])
            lines.extend(" " * len(head) + item for item in items[1:])
        else:
            lines.append(head + cell(value))
    return "\n".join(line.rstrip() for line in lines)


def note(message: str) -> None:
    """A remark for people, on stderr so that stdout stays machine-readable."""
    print(message, file=sys.stderr)
