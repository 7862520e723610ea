"""The object batch on the wire (`POST /connreg/v1/sync/objects`), both sides.

An answer is one zstd frame. Decompressed, it is one record per requested object, in the order
asked: a header line, then exactly `size` bytes of the object.

    {"digest": "sha256:…", "size": 1234, "mediaType": "…", "referrers": ["sha256:…"]}\\n<bytes>

`mediaType` is set for manifests (absent for blobs), `referrers` only when the request asked
for them and only for manifests. The fetching side trusts nothing of it: each object must hash
to the digest it was asked for, else the whole batch is refused (nothing of it is stored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from connreg import _core

MEDIA_TYPE = "application/vnd.connreg.objects.v1+zstd"
# A header line is a digest, a size, a media type and at most a page of referrer digests.
MAX_HEADER = 64 * 1024


class BatchCorrupt(Exception):
    """An answer that is not what was asked: malformed, other objects, or bytes that do not
    hash to their digest."""


@dataclass
class BatchObject:
    digest: str
    data: bytes
    media_type: str | None = None
    referrers: list[str] | None = field(default=None)


def encode(records: list[tuple[dict, bytes]], level: int, corrupt: bool = False) -> bytes:
    """Header dicts and bytes → one zstd frame. `corrupt` (tests only) flips the last byte,
    so the last object no longer matches its digest."""
    parts = []
    for header, data in records:
        parts.append(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        parts.append(data)
    plain = b"".join(parts)
    if corrupt and plain:
        plain = plain[:-1] + bytes([plain[-1] ^ 0xFF])
    return _core.zstd_compress(plain, level)


def decode(frame: bytes, asked: list[str], max_bytes: int) -> list[BatchObject]:
    """Verify and split an answer to a request for `asked` (digests, in order). Runs SHA-256
    over every object: call it in a worker thread."""
    try:
        # Headers add at most MAX_HEADER per object to the objects' own bytes.
        plain = _core.zstd_decompress(frame, max_bytes + MAX_HEADER * len(asked))
    except _core.CoreError as exc:
        raise BatchCorrupt(f"object batch does not decompress: {exc}") from None
    objects: list[BatchObject] = []
    pos = 0
    for digest in asked:
        end = plain.find(b"\n", pos, pos + MAX_HEADER)
        if end < 0:
            raise BatchCorrupt(f"object batch ends before {digest}")
        try:
            header = json.loads(plain[pos:end])
        except ValueError:
            raise BatchCorrupt(f"object batch header for {digest} is not JSON") from None
        size = header.get("size") if isinstance(header, dict) else None
        if header.get("digest") != digest or not isinstance(size, int) or isinstance(size, bool) \
                or size < 0 or end + 1 + size > len(plain):
            raise BatchCorrupt(f"object batch header does not describe {digest}")
        data = plain[end + 1:end + 1 + size]
        try:
            actual = _core.digest_bytes(data, digest.split(":", 1)[0])
        except _core.CoreError as exc:
            raise BatchCorrupt(f"{digest}: {exc}") from None
        if actual != digest:
            raise BatchCorrupt(f"object {digest} in the batch hashes to {actual}")
        media_type = header.get("mediaType")
        referrers = header.get("referrers")
        if referrers is not None and not (isinstance(referrers, list) and
                                          all(isinstance(r, str) for r in referrers)):
            raise BatchCorrupt(f"object batch referrers of {digest} are malformed")
        objects.append(BatchObject(digest, data, media_type if isinstance(media_type, str)
                                   else None, referrers))
        pos = end + 1 + size
    if pos != len(plain):
        raise BatchCorrupt("object batch holds more than was asked")
    return objects
