"""Short-lived signed registry tokens (JWT, EdDSA/Ed25519) and refresh tokens.

The signing key is generated on first start into `<data_dir>/auth/token-signing-key.pem` with
mode 0600 and never leaves the node. Access tokens carry the Docker token-spec `access` claim
(`[{"type":"repository","name":…,"actions":[…]}]`). Refresh tokens carry the subject and the
password they were obtained with (`cred`: password1, password2 or admin; `ver`: a fingerprint
of that password's hash) plus `auth_time`, the password login they descend from; they are valid
until that password changes or the maximum lifetime after `auth_time` passes
(`Authenticator.refresh_principal` checks the rest).

Times come from `now()`: the wall clock plus `test_clock_offset_seconds` (test-only), which is
why PyJWT's own time checks are off and `exp`/`nbf` are checked here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                                   Ed25519PublicKey)

ALGORITHM = "EdDSA"
KEY_FILE = "token-signing-key.pem"
# PKCS #8 of an Ed25519 private key (RFC 8410, section 7): this DER prefix, then the 32-byte
# seed. What `new_key_pem` writes and what `openssl genpkey -algorithm ed25519` writes.
ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
PEM_BEGIN, PEM_END = b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----"


def write_secret_file(path: Path, data: bytes) -> bool:
    """Create `path` with mode 0600 and `data`; False if it already exists (never overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def new_key_pem() -> bytes:
    """A new Ed25519 private key (32 random bytes) as PKCS #8 PEM. Written without the
    cryptography package: a node loads that (~8 MB) only when it first signs or checks a
    token (docs/operations.md, Memory)."""
    der = ED25519_PKCS8_PREFIX + secrets.token_bytes(32)
    return PEM_BEGIN + b"\n" + base64.b64encode(der) + b"\n" + PEM_END + b"\n"


def is_plain_ed25519_pem(pem: bytes) -> bool:
    """True for exactly the form `new_key_pem` writes (a check that needs no cryptography)."""
    lines = pem.strip().splitlines()
    if len(lines) != 3 or lines[0].strip() != PEM_BEGIN or lines[2].strip() != PEM_END:
        return False
    try:
        der = base64.b64decode(lines[1].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(der) == len(ED25519_PKCS8_PREFIX) + 32 and der.startswith(ED25519_PKCS8_PREFIX)


def load_key(pem: bytes, where: str) -> "Ed25519PrivateKey":
    """The private key in `pem`; ValueError naming `where` if it is not an Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{where} is not an Ed25519 private key")
    return key


def read_or_create_key(auth_dir: Path, shared_pem: bytes | None = None) -> tuple[bytes, str]:
    """The node's key (PEM) from `auth_dir`, generated on first start, or `shared_pem`, the
    key all replicas of a scaled root share (kept in their shared database, docs/scaling.md);
    and what to call it in errors. A key in any other form than `new_key_pem`'s is loaded
    (checked) at once, so a bad file still stops the node at start."""
    path = auth_dir / KEY_FILE
    if shared_pem is None and not path.exists():
        write_secret_file(path, new_key_pem())
    pem = shared_pem or path.read_bytes()
    where = "the shared key" if shared_pem else str(path)
    if not is_plain_ed25519_pem(pem):
        load_key(pem, where)
    return pem, where




@dataclass(frozen=True)
class TokenClaims:
    subject: str
    # repository name -> granted registry actions (pull/push/delete)
    access: dict[str, frozenset[str]]
    catalog: bool
    expires_at: float


class TokenService:
    def __init__(self, auth_dir: Path, service: str, ttl: int, refresh_max_lifetime: int,
                 clock_offset: float = 0.0, shared_key_pem: bytes | None = None,
                 cache_entries: int = 10_000):
        self._pem, self._where = read_or_create_key(auth_dir, shared_key_pem)
        self._keys: tuple[Ed25519PrivateKey, Ed25519PublicKey, str] | None = None
        self._verified: dict[str, TokenClaims] = {}
        self.cache_entries = max(1, cache_entries)  # verified access tokens remembered
        self.service = service
        self.ttl = ttl
        self.refresh_max_lifetime = refresh_max_lifetime
        self.clock_offset = clock_offset

    def now(self) -> float:
        return time.time() + self.clock_offset

    @property
    def cached_tokens(self) -> int:
        return len(self._verified)

    def _key_pair(self) -> tuple[Ed25519PrivateKey, Ed25519PublicKey, str]:
        """Private key, public key, key id: loaded (with cryptography) at the first token."""
        if self._keys is None:
            from cryptography.hazmat.primitives import serialization

            key = load_key(self._pem, self._where)
            public = key.public_key()
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self._keys = key, public, hashlib.sha256(raw).hexdigest()[:16]
        return self._keys

    @property
    def key_id(self) -> str:
        return self._key_pair()[2]

    def _sign(self, claims: dict) -> str:
        import jwt

        key, _, key_id = self._key_pair()
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id})

    def _base(self, subject: str, ttl: int, typ: str) -> dict:
        now = int(self.now())
        return {"iss": self.service, "aud": self.service, "sub": subject, "iat": now,
                "nbf": now - 5, "exp": now + ttl, "jti": secrets.token_urlsafe(12), "typ": typ}

    def issue_access(self, subject: str, access: dict[str, set[str]], catalog: bool) -> tuple[str, dict]:
        claims = self._base(subject, self.ttl, "access")
        entries = [{"type": "repository", "name": repo, "actions": sorted(actions)}
                   for repo, actions in sorted(access.items())]
        if catalog:
            entries.append({"type": "registry", "name": "catalog", "actions": ["*"]})
        claims["access"] = entries
        return self._sign(claims), claims

    def issue_refresh(self, subject: str, slot: str, version: str,
                      auth_time: int | None = None) -> str:
        """A refresh token for `subject`, bound to its password `slot` at `version`; it expires
        `refresh_max_lifetime` after `auth_time` (the password login it descends from; now
        for a fresh login), so refreshing never extends it."""
        now = int(self.now())
        auth_time = now if auth_time is None else int(auth_time)
        claims = self._base(subject, 0, "refresh")
        claims.update(exp=auth_time + self.refresh_max_lifetime, auth_time=auth_time,
                      cred=slot, ver=version)
        return self._sign(claims)

    def _decode(self, token: str, typ: str) -> dict | None:
        import jwt

        try:
            claims = jwt.decode(token, self._key_pair()[1], algorithms=[ALGORITHM],
                                audience=self.service, issuer=self.service,
                                options={"require": ["exp", "sub", "iat"], "verify_exp": False,
                                         "verify_nbf": False, "verify_iat": False})
        except jwt.PyJWTError:
            return None
        now = self.now()
        try:
            if float(claims["exp"]) <= now or float(claims.get("nbf", 0)) > now:
                return None
        except (TypeError, ValueError):
            return None
        return claims if claims.get("typ") == typ else None

    def verify_access(self, token: str) -> TokenClaims | None:
        # A verified token's claims are remembered until it expires: the signature check is
        # the costly part of a request, and a signed token cannot change. (The subject's
        # current permissions are still checked on every request by the caller.)
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at > self.now():
                return cached
            del self._verified[token]
        result = self._verify_access(token)
        if result is not None:
            if len(self._verified) >= self.cache_entries:
                now = self.now()  # expired ones go first; a table full of live ones is emptied
                for old in [t for t, c in self._verified.items() if c.expires_at <= now]:
                    del self._verified[old]
                if len(self._verified) >= self.cache_entries:
                    self._verified.clear()
            self._verified[token] = result
        return result

    def _verify_access(self, token: str) -> TokenClaims | None:
        claims = self._decode(token, "access")
        if claims is None:
            return None
        access: dict[str, frozenset[str]] = {}
        catalog = False
        for entry in claims.get("access") or []:
            if entry.get("type") == "repository" and isinstance(entry.get("name"), str):
                access[entry["name"]] = frozenset(entry.get("actions") or ())
            elif entry.get("type") == "registry" and entry.get("name") == "catalog":
                catalog = True
        return TokenClaims(claims["sub"], access, catalog, float(claims["exp"]))

    def verify_refresh(self, token: str) -> dict | None:
        """The claims of a genuine, unexpired refresh token, else None."""
        claims = self._decode(token, "refresh")
        if claims is None or not isinstance(claims.get("sub"), str):
            return None
        return claims
