"""GET/HEAD/PUT/DELETE /v2/<name>/manifests/<reference> (reference = tag or digest)."""

from __future__ import annotations

from quart import Response, request

from connreg import errors
from connreg.api.http import empty, read_body_limited, request_origin
from connreg.content import delete_reference, store_manifest
from connreg.errors import RegistryError
from connreg.references import check_digest, is_digest
from connreg.registry import Registry
from connreg.storage import ManifestRecord


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


async def get_manifest(reg: Registry, name: str, reference: str, head: bool = False) -> Response:
    record = _resolve(reg, name, reference)
    headers = {
        "Content-Type": record.media_type,
        "Docker-Content-Digest": record.digest,
        "ETag": f'"{record.digest}"',
    }
    body = b"" if head else await reg.read_manifest(record.digest)
    resp = Response(body, status=200, headers=headers)
    resp.headers["Content-Type"] = record.media_type
    resp.headers["Content-Length"] = str(record.size)
    return resp


async def put_manifest(reg: Registry, name: str, reference: str) -> Response:
    body = await read_body_limited(reg.settings.max_manifest_bytes, errors.MANIFEST_TOO_LARGE)
    digest, subject = await store_manifest(reg, name, reference, body,
                                           request.headers.get("Content-Type"),
                                           origin=request_origin())
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    if subject:
        headers["OCI-Subject"] = subject
    return empty(201, headers)


async def delete_manifest(reg: Registry, name: str, reference: str) -> Response:
    if not await delete_reference(reg, name, reference, origin=request_origin()):
        raise RegistryError(errors.MANIFEST_UNKNOWN, detail={"name": name, "reference": reference})
    return empty(202)
