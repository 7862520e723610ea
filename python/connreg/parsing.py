"""Bounded parsers for untrusted input: numbers from headers, paths and queries; JSON bodies.

Python's own parsers accept far more than a registry should: `int()` takes unicode digits
('١٢'), surrounding whitespace, '+', '_' separators and 4,300 digits (then raises a ValueError
nobody expects), `float()` takes 'inf', 'nan' and '1e999'; `json.loads` recurses once per
nesting level and a deep enough document raises RecursionError. Every request number and JSON
body goes through here instead, and a refusal is a `RegistryError` (an OCI error body) with the
status the caller chooses: 400 for query parameters and bodies, 416 for ranges.
"""

from __future__ import annotations

import json
import re
from typing import Any

from connreg import errors
from connreg.errors import ErrorCode, RegistryError

MAX_DIGITS = 19  # enough for any 64-bit offset or size; more is never a real request
INT64_MAX = 2**63 - 1
MAX_JSON_DEPTH = 64  # manifests and sync documents nest a few levels; 64 is generous
_INTEGER = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")  # ASCII digits only, unlike str.isdigit
_DECIMAL = re.compile(rf"([0-9]{{1,{MAX_DIGITS}}})(?:\.([0-9]{{1,9}}))?")


def bounded_int(text: str | None, what: str, low: int = 0, high: int = INT64_MAX,
                code: ErrorCode = errors.QUERY_INVALID,
                headers: dict[str, str] | None = None) -> int:
    """`text` as an integer in [low, high]: ASCII digits only, at most 19 of them."""
    if text is None or not _INTEGER.fullmatch(text):
        raise _refusal(what, text, f"{what} must be a whole number of 1 to {MAX_DIGITS} "
                       "digits (0-9)", code, headers)
    value = int(text)
    if not low <= value <= high:
        raise _refusal(what, text, f"{what} must be between {low} and {high}", code, headers)
    return value


def bounded_seconds(text: str | None, what: str, high: float,
                    code: ErrorCode = errors.QUERY_INVALID) -> float:
    """A duration like `12` or `12.5` in [0, high]: digits with an optional short fraction
    (no exponent, sign, inf or nan)."""
    m = _DECIMAL.fullmatch(text) if text is not None else None
    value = float(text) if m else -1.0
    if not 0 <= value <= high:
        raise _refusal(what, text, f"{what} must be a number of seconds from 0 to {high:g} "
                       "(digits with an optional fraction)", code, None)
    return value


def _refusal(what: str, text: str | None, message: str, code: ErrorCode,
             headers: dict[str, str] | None) -> RegistryError:
    shown = None if text is None else text[:50]
    return RegistryError(code, detail={what: shown}, message=message, headers=headers)


_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `body` nests arrays/objects deeper than `limit`, found without recursion: the
    brackets outside strings are kept, then each pass removes the innermost pairs (one level,
    at the speed of a regex). Empty within `limit` passes: not deeper. Otherwise the document
    is deeper or unbalanced, and one counting pass over the brackets tells which (it stops at
    the first level past `limit`; json.loads refuses an unbalanced one that is not)."""
    brackets = _STRING.sub(b"", _ESCAPE.sub(b"", body)).translate(None, _NOT_BRACKET)
    left = brackets
    for _ in range(limit):
        if not left:
            return False
        left = _INNERMOST_PAIR.sub(b"", left)
    if not left:
        return False
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def strict_json(body: bytes, what: str = "request body",
                code: ErrorCode = errors.INVALID_BODY) -> Any:
    """Parse a JSON document that is UTF-8, nests at most MAX_JSON_DEPTH levels and holds no
    number outside what a float or a 64-bit integer can carry (no NaN/Infinity either)."""
    if body.startswith(b"\xef\xbb\xbf"):
        raise RegistryError(code, message=f"{what} must be UTF-8 JSON without a byte order mark")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(code, message=f"{what} is not valid UTF-8 (byte {exc.start})")
    if json_depth_exceeds(body):
        raise RegistryError(code, message=f"{what} nests deeper than {MAX_JSON_DEPTH} levels",
                            detail={"maxDepth": MAX_JSON_DEPTH})
    try:
        return json.loads(text, parse_constant=_no_constant, parse_int=_json_int,
                          parse_float=_json_float)
    except _NumberRefused as exc:
        raise RegistryError(code, message=f"{what} holds an unacceptable number: {exc}")
    except (ValueError, RecursionError):
        raise RegistryError(code, message=f"{what} is not valid JSON")


class _NumberRefused(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _NumberRefused(name)


def _json_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_DIGITS or int(text) > INT64_MAX or int(text) < -INT64_MAX - 1:
        raise _NumberRefused(f"{text[:30]} is outside the 64-bit range")
    return int(text)


def _json_float(text: str) -> float:
    if len(text) > 64:
        raise _NumberRefused(f"{text[:30]}… is too long")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NumberRefused(f"{text[:30]} overflows")
    return value
