"""GET/HEAD/PUT/DELETE /v2/<name>/manifests/<reference> (reference = tag or digest)."""

from __future__ import annotations

from quart import Response, request

from connreg import errors
from connreg.api.http import empty, read_body_limited, request_origin
from connreg.content import delete_reference, store_manifest
from connreg.errors import RegistryError
from connreg.references import check_digest, is_digest
from connreg.registry import Registry
from connreg.storage import ManifestRecord, TagPrecondition


def _resolve(reg: Registry, name: str, reference: str) -> ManifestRecord:
    # A reference that breaks the tag grammar cannot name anything stored: 404, as for any
    # unknown tag (the conformance suite expects this for reads and deletes).
    if is_digest(reference):
        check_digest(reference)
        digest = reference
    else:
        digest = reg.meta.resolve_tag(name, reference)
    record = reg.meta.get_manifest(name, digest) if digest else None
    if record is None:
        raise RegistryError(errors.MANIFEST_UNKNOWN, detail={"name": name, "reference": reference})
    return record


def _entity_tags(header: str, weak_matches: bool) -> frozenset[str]:
    """`"sha256:…", W/"…", *` → the digests named (our ETag is the quoted digest).

    Unquoted values are accepted too, for hand-written requests. Weak tags never match for
    If-Match (RFC 9110 strong comparison) and match like strong ones for If-None-Match.
    """
    tags = set()
    for item in header.split(","):
        item = item.strip()
        if item.startswith("W/"):
            if not weak_matches:
                continue
            item = item[2:]
        if item:
            tags.add(item.strip('"'))
    return frozenset(tags)


def request_precondition() -> TagPrecondition | None:
    """The request's If-Match/If-None-Match as a precondition on the reference, if any."""
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    if if_match is None and if_none_match is None:
        return None
    return TagPrecondition(
        if_match=None if if_match is None else _entity_tags(if_match, weak_matches=False),
        if_none_match=None if if_none_match is None else _entity_tags(if_none_match,
                                                                      weak_matches=True))


async def get_manifest(reg: Registry, name: str, reference: str, head: bool = False) -> Response:
    record = _resolve(reg, name, reference)
    headers = {
        "Content-Type": record.media_type,
        "Docker-Content-Digest": record.digest,
        "ETag": f'"{record.digest}"',
    }
    precondition = request_precondition()
    if precondition is not None and not precondition.holds(record.digest):
        if precondition.if_match is not None:
            raise RegistryError(errors.PRECONDITION_FAILED,
                                detail={"reference": reference, "current": record.digest})
        not_modified = Response(b"", status=304, headers=headers)  # the cached copy is current
        not_modified.headers.pop("Content-Length", None)
        return not_modified
    body = b"" if head else await reg.read_manifest(record.digest)
    resp = Response(body, status=200, headers=headers)
    resp.headers["Content-Type"] = record.media_type
    resp.headers["Content-Length"] = str(record.size)
    return resp


async def put_manifest(reg: Registry, name: str, reference: str) -> Response:
    body = await read_body_limited(reg.settings.max_manifest_bytes, errors.MANIFEST_TOO_LARGE)
    digest, subject = await store_manifest(reg, name, reference, body,
                                           request.headers.get("Content-Type"),
                                           origin=request_origin(),
                                           precondition=request_precondition())
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    if subject:
        headers["OCI-Subject"] = subject
    return empty(201, headers)


async def delete_manifest(reg: Registry, name: str, reference: str) -> Response:
    if not await delete_reference(reg, name, reference, origin=request_origin(),
                                  precondition=request_precondition()):
        raise RegistryError(errors.MANIFEST_UNKNOWN, detail={"name": name, "reference": reference})
    return empty(202)
