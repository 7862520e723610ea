"""Password hashing: scrypt with a random salt per password, stored as a self-describing string.

Format: `scrypt$<n>$<r>$<p>$<salt, base64url>$<hash, base64url>`, so parameters can be raised
later without breaking stored hashes. Verification compares in constant time.

A login is checked with `match_slot`, which always runs scrypt exactly `PASSWORD_SLOTS` times
(against a dummy hash for an empty slot), so an unknown name, a disabled token, a token with one
password and a wrong password all cost the same (docs/auth.md, "No timing oracle").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string

SCHEME = "scrypt"
# 16 MiB of memory and ~50 ms per hash on a current core: slow for guessing, fine for logins
# (verified credentials are cached briefly, see auth.authenticator).
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_PASSWORD_ALPHABET = string.ascii_letters + string.digits
_PASSWORD_LENGTH = 43  # 43 base-62 characters carry just over 256 bits


def generate_password() -> str:
    """A fresh random password of 256 bits in letters and digits only.

    No '-' or '_': a password starting with '-' would be read as an option by
    `connreg login -p …` (and by most other CLIs), and neither character needs
    quoting in a shell, a URL or the connection string.
    """
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(_PASSWORD_LENGTH))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=HASH_BYTES)
    return f"{SCHEME}${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != SCHEME:
            return False
        expected_bytes = _unb64(expected)
        digest = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                                p=int(p), dklen=len(expected_bytes), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected_bytes)


# Every identity has at most this many passwords (a token's password1 and password2).
PASSWORD_SLOTS = 2
# Checked in place of a missing password; nobody knows its password.
DUMMY_HASH = hash_password(secrets.token_urlsafe(32))


def match_slot(password: str, slots: list[str | None]) -> int | None:
    """The index of the slot whose hash `password` matches, or None. Runs scrypt exactly
    PASSWORD_SLOTS times whatever the slots hold (None: a dummy), and checks every slot
    even after a match, so the answer's cost says nothing about the account."""
    padded = (list(slots) + [None] * PASSWORD_SLOTS)[:PASSWORD_SLOTS]
    found = None
    for index, stored in enumerate(padded):
        ok = verify_password(password, stored or DUMMY_HASH)
        if ok and stored is not None and found is None:
            found = index
    return found


def credential_version(stored: str) -> str:
    """A short fingerprint of one stored hash. Regenerating a password makes a new salt and
    hash, so the fingerprint changes: refresh tokens carry it to die with their password.
    It is a hash of a salted hash and says nothing usable about the password."""
    return _b64(hashlib.sha256(stored.encode()).digest()[:12])
