"""Dashboard sessions: a random cookie value → who logged in, their CSRF token, and when the
session ends.

Sessions live in memory (a restart logs everyone out), keyed by a SHA-256 of the cookie value
so the table never holds a usable cookie. Each session ends `ui_session_seconds` after its
login, or at logout; at most MAX_SESSIONS exist (the oldest go first). The caller's current
permissions are looked up again on every request, so a token disabled or deleted since the
login loses the dashboard at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "connreg_ui"
LOGIN_COOKIE = "connreg_ui_login"  # the login form's CSRF token (double submit)
COOKIE_PATH = "/ui"
MAX_SESSIONS = 1000


@dataclass
class Session:
    subject: str      # "admin" or a token name
    csrf: str         # what every POST form of this session must carry
    expires: float    # wall clock


def _key(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


class Sessions:
    def __init__(self, lifetime: float, clock=time.time):
        self.lifetime = max(lifetime, 60.0)
        self._clock = clock
        self._table: OrderedDict[bytes, Session] = OrderedDict()

    def create(self, subject: str) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        self._expire()
        while len(self._table) >= MAX_SESSIONS:
            self._table.popitem(last=False)
        value = secrets.token_urlsafe(32)
        session = Session(subject, secrets.token_urlsafe(32), self._clock() + self.lifetime)
        self._table[_key(value)] = session
        return value, session

    def get(self, value: str | None) -> Session | None:
        if not value or len(value) > 100:
            return None
        key = _key(value)
        session = self._table.get(key)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._table[key]
            return None
        return session

    def end(self, value: str | None) -> None:
        if value:
            self._table.pop(_key(value), None)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._table.items() if s.expires <= now]:
            del self._table[key]

    def __len__(self) -> int:
        return len(self._table)
