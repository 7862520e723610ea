"""The upload batch on the wire (`POST /connreg/v1/sync/upload`): a child's small blobs and
manifests for its parent, many per request.

The body is one zstd frame. Decompressed, it is one record per object: a header line, then
exactly `size` bytes of the object.

    {"repo": "team/app", "digest": "sha256:…", "size": 1234, "mediaType": "…"}\\n<bytes>

`mediaType` marks a manifest (absent for a blob). Blobs come before the manifests that
reference them, an index's children before the index. A tag move is a record without bytes,
after the manifests: move `tag` to the manifest `digest` (held by the parent or sent before it
in the batch) if the tag points at `ifTagIs` now (`null`: if there is no such tag), exactly the
conditional manifest PUT of `sync/pusher.py` (If-Match / If-None-Match: *).

    {"repo": "team/app", "digest": "sha256:…", "size": 0, "tag": "v1", "ifTagIs": "sha256:…"}\n
 The receiving side trusts nothing of
it: `decode` refuses the whole batch (`BatchInvalid`, nothing of it stored) when the frame is
malformed, holds more than the limits allow or decompresses beyond them, names a malformed
repository or digest, or holds an object whose bytes do not hash to its digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from connreg import _core, errors
from connreg.errors import RegistryError
from connreg.references import check_digest, check_name, check_tag
from connreg.sync import batch_format

MEDIA_TYPE = "application/vnd.connreg.upload.v1+zstd"
# A header line is a repository name (≤ 255), a digest (≤ 135), a size and a media type.
MAX_HEADER = 2048


@dataclass
class UploadObject:
    repo: str
    digest: str
    data: bytes
    media_type: str | None = None  # set for manifests
    tag: str | None = None  # set for tag moves (no bytes)
    if_tag_is: str | None = None  # a tag move's condition (None: no such tag yet)

    @property
    def is_manifest(self) -> bool:
        return self.media_type is not None and self.tag is None

    @property
    def is_tag(self) -> bool:
        return self.tag is not None


def header(repo: str, digest: str, size: int, media_type: str | None) -> dict:
    doc: dict = {"repo": repo, "digest": digest, "size": size}
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def tag_header(repo: str, tag: str, digest: str, if_tag_is: str | None) -> dict:
    return {"repo": repo, "digest": digest, "size": 0, "tag": tag, "ifTagIs": if_tag_is}


def encode(records: list[tuple[dict, bytes]], level: int) -> bytes:
    """Header dicts (`header`) and bytes → one zstd frame."""
    return batch_format.encode(records, level)


def frame_limit(max_objects: int, max_bytes: int) -> int:
    """The most a valid frame decompresses to (and, zstd never growing data by much, the most
    a body may hold)."""
    return max_bytes + MAX_HEADER * max_objects


def _invalid(message: str, detail: object = None) -> RegistryError:
    return RegistryError(errors.BLOB_UPLOAD_INVALID, message=f"upload batch refused, nothing "
                         f"of it stored: {message}", detail=detail)


def decode(frame: bytes, max_objects: int, max_bytes: int) -> list[UploadObject]:
    """Split and verify a batch; RegistryError for the whole batch when anything is wrong (see
    the module doc). Hashes every object: call it in a worker thread."""
    try:
        plain = _core.zstd_decompress(frame, frame_limit(max_objects, max_bytes))
    except _core.CoreError as exc:
        raise _invalid(f"the body is not a zstd frame of at most "
                       f"{frame_limit(max_objects, max_bytes)} bytes ({exc})") from None
    objects: list[UploadObject] = []
    total = 0
    pos = 0
    while pos < len(plain):
        if len(objects) >= max_objects:
            raise RegistryError(errors.INVALID_BODY,
                                message=f"upload batch refused, nothing of it stored: more than "
                                        f"{max_objects} objects; at most {max_objects} "
                                        "(sync_batch_max_objects)",
                                detail={"max": max_objects})
        end = plain.find(b"\n", pos, pos + MAX_HEADER)
        if end < 0:
            raise _invalid(f"record {len(objects)} has no header line of at most "
                           f"{MAX_HEADER} bytes")
        try:
            doc = json.loads(plain[pos:end])
        except ValueError:
            raise _invalid(f"the header of record {len(objects)} is not JSON") from None
        if not isinstance(doc, dict):
            raise _invalid(f"the header of record {len(objects)} is not an object")
        repo, digest, size = doc.get("repo"), doc.get("digest"), doc.get("size")
        media_type = doc.get("mediaType")
        if not isinstance(repo, str) or not isinstance(digest, str) or \
                not isinstance(size, int) or isinstance(size, bool) or size < 0 or \
                (media_type is not None and not isinstance(media_type, str)):
            raise _invalid(f"the header of record {len(objects)} needs repo, digest, size "
                           "(and mediaType for a manifest)")
        check_name(repo)  # NAME_INVALID / DIGEST_INVALID / TAG_INVALID, for the whole batch
        check_digest(digest)
        if "tag" in doc:
            tag, if_tag_is = doc.get("tag"), doc.get("ifTagIs")
            if not isinstance(tag, str) or size != 0 or \
                    (if_tag_is is not None and not isinstance(if_tag_is, str)):
                raise _invalid(f"the tag move of record {len(objects)} needs tag, size 0 and "
                               "ifTagIs (a digest or null)")
            check_tag(tag)
            if if_tag_is is not None:
                check_digest(if_tag_is)
            objects.append(UploadObject(repo, digest, b"", None, tag, if_tag_is))
            pos = end + 1
            continue
        total += size
        if total > max_bytes:
            raise RegistryError(errors.BODY_TOO_LARGE,
                                message=f"upload batch refused, nothing of it stored: its "
                                        f"objects hold more than {max_bytes} bytes "
                                        "(sync_batch_max_bytes)",
                                detail={"max": max_bytes})
        if end + 1 + size > len(plain):
            raise _invalid(f"the batch ends inside {digest}")
        data = plain[end + 1:end + 1 + size]
        actual = _core.digest_bytes(data, digest.split(":", 1)[0])
        if actual != digest:
            raise RegistryError(errors.DIGEST_INVALID,
                                message=f"upload batch refused, nothing of it stored: the bytes "
                                        f"sent as {digest} hash to {actual}",
                                detail={"repository": repo, "digest": digest, "actual": actual})
        objects.append(UploadObject(repo, digest, data, media_type))
        pos = end + 1 + size
    if not objects:
        raise _invalid("the batch holds no object")
    return objects
