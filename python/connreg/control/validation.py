"""Field rules of the control-plane resources (spec §1–§4); each failure is one clear INVALID."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from connreg.auth.actions import CR_NAME_RE, parse_action, valid_repo_target
from connreg.errors import ErrorCode, RegistryError

INVALID = ErrorCode("INVALID", 400, "invalid request")
LIMIT_EXCEEDED = ErrorCode("LIMIT_EXCEEDED", 400, "limit exceeded")
CONFLICT = ErrorCode("CONFLICT", 409, "conflict")
RESOURCE_NOT_FOUND = ErrorCode("NOT_FOUND", 404, "resource not found")

RESOURCE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{4,49}")
RESERVED_NAMES = {"admin"}
MODES = ("ReadWrite", "ReadOnly")
LOG_LEVELS = ("Debug", "Information", "Warning", "Error", "None")
CONTINUOUS = "* * * * *"
MAX_EXPIRY_SECONDS = 100 * 365 * 24 * 3600
_DURATION_RE = re.compile(r"P(?:([0-9]{1,19})W)?(?:([0-9]{1,19})D)?(?:T(?:([0-9]{1,19})H)?(?:([0-9]{1,19})M)?(?:([0-9]{1,19})S)?)?")
_ENDPOINT_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
_NOTIFICATION_RE = re.compile(r"(?:\*|[a-z0-9._/-]+|[a-z0-9._/-]+/\*):(?:\*|[A-Za-z0-9_][A-Za-z0-9._-]{0,127})"
                              r"|[a-z0-9._/-]+@sha256:[a-f0-9]{64}")
HOUR, DAY = 3600, 86400


def invalid(message: str, field: str | None = None) -> RegistryError:
    return RegistryError(INVALID, message=message, detail={"field": field} if field else None)


def conflict(message: str) -> RegistryError:
    return RegistryError(CONFLICT, message=message)


def not_found(kind: str, name: str) -> RegistryError:
    return RegistryError(RESOURCE_NOT_FOUND, message=f"{kind} {name!r} not found",
                         detail={"name": name[:100]})


def limit(message: str) -> RegistryError:
    return RegistryError(LIMIT_EXCEEDED, message=message)


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def resource_name(name, kind: str) -> str:
    if not isinstance(name, str) or not RESOURCE_NAME_RE.fullmatch(name):
        raise invalid(f"{kind} name must be 5-50 characters: letters, digits, '-' or '_', "
                      "starting with a letter or digit", "name")
    if name.lower() in RESERVED_NAMES:
        raise invalid(f"{kind} name {name!r} is reserved", "name")
    return name


def cr_name(name) -> str:
    if not isinstance(name, str) or not CR_NAME_RE.fullmatch(name):
        raise invalid("connected registry name must be 5-40 characters: letters, digits, '-' "
                      "or '_', starting with a letter", "name")
    return name


def string_list(value, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(f"{field} must be a list of strings", field)
    return value


def actions(value, max_repositories: int) -> list[str]:
    """Validated, de-duplicated, sorted actions; at most `max_repositories` repository entries."""
    out = set()
    repos = set()
    for text in string_list(value, "actions"):
        try:
            action = parse_action(text)
        except ValueError as exc:
            raise invalid(str(exc), "actions") from None
        if action.kind == "repositories":
            repos.add(action.target)
        out.add(str(action))
    if len(repos) > max_repositories:
        raise limit(f"a scope map holds at most {max_repositories} repository entries "
                    f"({len(repos)} given)")
    return sorted(out)


def repositories(value, max_repositories: int, required: bool = True) -> list[str]:
    repos = string_list(value, "repositories")
    for repo in repos:
        if not valid_repo_target(repo):
            raise invalid(f"invalid repository {repo!r}: an exact name or a prefix/* pattern",
                          "repositories")
    repos = sorted(set(repos))
    if required and not repos:
        raise invalid("at least one repository is required", "repositories")
    if len(repos) > max_repositories:
        raise limit(f"at most {max_repositories} repositories per connected registry "
                    f"({len(repos)} given)")
    return repos


def choice(value, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise invalid(f"{field} must be one of {', '.join(allowed)} (got {value!r})", field)
    return value


def cron(value, field: str) -> str:
    from croniter import croniter  # loaded once a schedule is set (docs/operations.md, Memory)

    if not isinstance(value, str) or len(value.split()) != 5 or not croniter.is_valid(value):
        raise invalid(f"{field} must be a 5-field cron expression (got {value!r})", field)
    return " ".join(value.split())


def duration_seconds(value, field: str) -> int:
    """ISO-8601 duration of weeks, days, hours, minutes, seconds (no years or months)."""
    m = _DURATION_RE.fullmatch(value) if isinstance(value, str) else None
    if not m or value in ("P", "PT") or value.endswith("T"):
        raise invalid(f"{field} must be an ISO-8601 duration such as PT1H or P2D "
                      f"(got {value!r})", field)
    w, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return (((w * 7 + d) * 24 + h) * 60 + mi) * 60 + s


def duration(value, field: str, low: int, high: int, low_text: str, high_text: str) -> str:
    seconds = duration_seconds(value, field)
    if not low <= seconds <= high:
        raise invalid(f"{field} must be between {low_text} and {high_text} (got {value})", field)
    return value


# The smallest sync window. Lowered only by the test-only setting
# `test_min_sync_window_seconds`, so tests of windows need not wait an hour.
MIN_SYNC_WINDOW_SECONDS = HOUR


def sync_window(value, schedule: str) -> str | None:
    if value is None:
        if schedule != CONTINUOUS:
            raise invalid("syncWindow is required with a non-continuous syncSchedule "
                          f"({schedule!r}); give a duration between PT1H and P7D", "syncWindow")
        return None
    low = MIN_SYNC_WINDOW_SECONDS
    return duration(value, "syncWindow", low, 7 * DAY, "PT1H" if low == HOUR else f"PT{low}S",
                    "P7D")


def message_ttl(value) -> str:
    return duration(value, "messageTtl", DAY, 90 * DAY, "P1D", "P90D")


def expiry(value, field: str = "expiry") -> str | None:
    """An absolute ISO-8601 time in the future, or a duration from now (P30D)."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("P"):
        seconds = duration_seconds(value, field)
        if seconds > MAX_EXPIRY_SECONDS:  # past what a date-time can carry
            raise invalid(f"{field} must be at most 100 years from now", field)
        return iso(time.time() + seconds)
    try:
        dt = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise invalid(f"{field} must be an ISO-8601 date-time or duration (got {value!r})",
                      field) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    if dt.timestamp() <= time.time():
        raise invalid(f"{field} must be in the future", field)
    return iso(dt.timestamp())


def endpoint(value, field: str) -> str:
    if not isinstance(value, str) or not _ENDPOINT_RE.fullmatch(value):
        raise invalid(f"{field} must be host:port (got {value!r})", field)
    return value


def notifications(value) -> list[str]:
    pats = string_list(value, "notifications")
    for p in pats:
        if not _NOTIFICATION_RE.fullmatch(p):
            raise invalid(f"invalid notification pattern {p!r}: repo:tag, repo:*, *:* or "
                          "repo@digest", "notifications")
    return sorted(set(pats))


def boolean(value, field: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"{field} must be true or false", field)
    return value


def bandwidth(value) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise invalid("bandwidthLimit must be a positive number of bytes per second or null",
                      "bandwidthLimit")
    return value
