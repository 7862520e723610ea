"""The grammar of repository names, tags and digests (distribution-spec "Pulling manifests")."""

from __future__ import annotations

import re

from connreg import errors
from connreg.errors import RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# Registered algorithms only; the hex length is what the algorithm produces.
DIGEST_RE = re.compile(r"(sha256):([a-f0-9]{64})|(sha512):([a-f0-9]{128})")
MAX_NAME_LENGTH = 255


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise RegistryError(errors.NAME_INVALID, detail={"name": name[:300]})
    return name


def is_digest(reference: str) -> bool:
    return ":" in reference


def check_digest(digest: str, code: errors.ErrorCode = errors.DIGEST_INVALID) -> str:
    if not DIGEST_RE.fullmatch(digest):
        raise RegistryError(code, detail={"digest": digest[:200]},
                            message="invalid digest: expected sha256:<64 hex> or sha512:<128 hex>")
    return digest


def check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise RegistryError(errors.TAG_INVALID, detail={"tag": tag[:200]},
                            message="invalid tag: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
    return tag


def check_reference(reference: str) -> str:
    """A manifest reference is a tag or a digest."""
    if is_digest(reference):
        return check_digest(reference, errors.DIGEST_INVALID)
    return check_tag(reference)
