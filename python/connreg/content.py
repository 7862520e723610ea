"""Manifests as content, apart from HTTP: validation, storing, deleting.

The OCI handlers (api/manifests.py) and the sync engine (sync/) both write through here, so a
manifest that arrives from a client or from the parent passes the same checks and lands in the
change log the same way; only `origin` differs.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from connreg import _core, errors
from connreg.errors import RegistryError
from connreg.locks import LockRefused
from connreg.parsing import INT64_MAX, strict_json
from connreg.references import check_digest, check_tag, is_digest
from connreg.registry import Registry
from connreg.storage import ManifestRecord, TagPrecondition, TagPreconditionFailed
from connreg.storage.interfaces import BlobGone, ReferencesGone

log = logging.getLogger("connreg")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
# Layers that are never pushed to a registry (Windows base layers) may reference external URLs.
FOREIGN_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}


def is_foreign_layer(media_type: object) -> bool:
    """A layer the registry is not expected to hold (sync neither fetches nor sends it): the
    types above, and their relatives by name (other compressions)."""
    text = str(media_type or "")
    return "nondistributable" in text or "foreign" in text


def _invalid(message: str, detail: Any = None) -> RegistryError:
    return RegistryError(errors.MANIFEST_INVALID, message=f"manifest invalid: {message}",
                         detail=detail)


def _descriptor(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    if not isinstance(value.get("mediaType"), str) or not value["mediaType"]:
        raise _invalid(f"{where}.mediaType must be a non-empty string")
    digest = value.get("digest")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest must be a string")
    try:
        check_digest(digest)
    except RegistryError:
        raise _invalid(f"{where}.digest is not a valid digest", {"digest": digest[:200]})
    size = value.get("size")
    if type(size) is not int or not 0 <= size <= INT64_MAX:
        raise _invalid(f"{where}.size must be an integer from 0 to 2^63-1",
                       {"size": str(size)[:50]})
    _annotations(value, where)
    return value


def _annotations(doc: dict, where: str) -> None:
    """`annotations`, where present, maps strings to strings (image-spec annotations rules)."""
    annotations = doc.get("annotations")
    if annotations is None and "annotations" not in doc:
        return
    if not isinstance(annotations, dict):
        raise _invalid(f"{where}.annotations must be an object")
    for key, value in annotations.items():
        if not isinstance(value, str):
            raise _invalid(f"{where}.annotations values must be strings",
                           {"key": key[:200], "type": type(value).__name__})


def _media_type(doc: dict, content_type: str | None) -> str:
    body_type = doc.get("mediaType")
    header_type = (content_type or "").split(";")[0].strip()
    if body_type is not None and not isinstance(body_type, str):
        raise _invalid("mediaType must be a string")
    if body_type and header_type and header_type in IMAGE_TYPES | INDEX_TYPES \
            and body_type != header_type:
        raise _invalid("Content-Type does not match the manifest's mediaType",
                       {"contentType": header_type, "mediaType": body_type})
    media_type = body_type or header_type
    if media_type not in IMAGE_TYPES | INDEX_TYPES:
        if "manifests" in doc:
            media_type = OCI_INDEX
        elif "config" in doc:
            media_type = OCI_MANIFEST
        else:
            raise _invalid("unsupported manifest media type", {"mediaType": media_type[:200]})
    return media_type


def parse_manifest(body: bytes, content_type: str | None) -> tuple[dict, str, list[dict], list[dict]]:
    """Validate the document; return (doc, media type, blob descriptors, child manifests)."""
    # UTF-8 only (json.loads would also take UTF-16/32 bytes), bounded depth and numbers
    doc = strict_json(body, "manifest", errors.MANIFEST_INVALID)
    if not isinstance(doc, dict):
        raise _invalid("body must be a JSON object")
    version = doc.get("schemaVersion")
    if type(version) is not int or version != 2:  # not 2.0, "2" or true
        raise _invalid("schemaVersion must be the integer 2",
                       {"schemaVersion": str(version)[:50]})
    media_type = _media_type(doc, content_type)
    blobs: list[dict] = []
    children: list[dict] = []
    if media_type in IMAGE_TYPES:
        blobs.append(_descriptor(doc.get("config"), "config"))
        layers = doc.get("layers", [])
        if not isinstance(layers, list):
            raise _invalid("layers must be a list")
        for i, layer in enumerate(layers):
            layer = _descriptor(layer, f"layers[{i}]")
            if layer["mediaType"] not in FOREIGN_LAYER_TYPES:
                blobs.append(layer)
    else:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise _invalid("manifests must be a list")
        children = [_descriptor(m, f"manifests[{i}]") for i, m in enumerate(manifests)]
    if "subject" in doc:
        _descriptor(doc["subject"], "subject")
    if "artifactType" in doc and not isinstance(doc["artifactType"], str):
        raise _invalid("artifactType must be a string")
    _annotations(doc, "manifest")
    return doc, media_type, blobs, children


async def store_manifest(reg: Registry, name: str, reference: str, body: bytes,
                         content_type: str | None, origin: str = "local",
                         precondition: TagPrecondition | None = None,
                         bytes_stored: bool = False) -> tuple[str, str | None]:
    """Validate and store a manifest under a tag or digest reference; return (digest, subject).

    `precondition` makes the update conditional on where the reference points now
    (RegistryError PRECONDITION_FAILED otherwise, nothing written). `bytes_stored`: the
    caller stored the body in the blob store already (sync stores a batch's manifests in one
    call); the metadata write still checks they are there, and stores them if not."""
    tag = None
    if is_digest(reference):
        check_digest(reference)
    else:
        tag = check_tag(reference)
    doc, media_type, blobs, children = parse_manifest(body, content_type)

    algorithm = reference.split(":", 1)[0] if tag is None else "sha256"
    digest = _core.digest_bytes(body, algorithm)
    if tag is None and digest != reference:
        raise RegistryError(errors.DIGEST_INVALID, detail={"expected": reference, "actual": digest})

    blob_sizes = {d["digest"]: reg.meta.linked_blob_size(name, d["digest"]) for d in blobs}
    child_records = {d["digest"]: reg.meta.get_manifest(name, d["digest"]) for d in children}
    missing_blobs = [digest for digest, size in blob_sizes.items() if size is None]
    missing_children = [digest for digest, record in child_records.items() if record is None]
    if missing_blobs or missing_children:
        raise RegistryError(errors.MANIFEST_BLOB_UNKNOWN,
                            detail={"blobs": missing_blobs, "manifests": missing_children})
    # A descriptor's size is part of what it promises: a client trusts it to size downloads.
    stored_sizes = {**blob_sizes, **{d: r.size for d, r in child_records.items()}}
    for d in blobs + children:
        if d["size"] != stored_sizes[d["digest"]]:
            raise _invalid("a descriptor's size differs from the stored content's size",
                           {"digest": d["digest"], "size": d["size"],
                            "storedSize": stored_sizes[d["digest"]]})

    subject = doc.get("subject", {}).get("digest")
    artifact_type = doc.get("artifactType")
    if artifact_type is None and media_type in IMAGE_TYPES:
        artifact_type = doc["config"]["mediaType"]
    annotations = doc.get("annotations")
    if tag is None and precondition is not None:
        # a digest names immutable content: only its existence can differ
        _check_precondition(precondition, reference,
                            digest if reg.meta.get_manifest(name, digest) else None)
    record = ManifestRecord(name, digest, media_type, len(body), subject, artifact_type,
                            json.dumps(annotations) if annotations else None)
    references = [d["digest"] for d in blobs] + [d["digest"] for d in children]
    for attempt in (1, 2):
        if attempt == 2 or not bytes_stored:
            await trio.to_thread.run_sync(reg.blobs.put_bytes, body, digest)
        try:
            await reg.meta.put_manifest(record, references, tag, origin,
                                        precondition if tag is not None else None)
            break
        except TagPreconditionFailed as exc:
            raise _precondition_failed(reference, exc.current) from exc
        except LockRefused as exc:  # a lock on the repository, tag or manifest (connreg/locks)
            raise exc.registry_error() from None
        except ReferencesGone as exc:  # garbage-collected since we validated them
            log.info("manifest %s@%s not stored: garbage collection removed %s after it was "
                     "validated", name, digest, ", ".join(exc.missing))
            raise RegistryError(errors.MANIFEST_BLOB_UNKNOWN,
                                detail={"blobs": exc.missing, "manifests": []}) from exc
        except BlobGone:
            log.info("manifest %s@%s: garbage collection removed its stored bytes meanwhile; "
                     "storing them again", name, digest)
            # GC removed an identical, unreferenced copy of these bytes after put_bytes
            # found it: store them again (fresh bytes are protected by the grace period; only
            # a zero grace period can take them a second time, and then the client retries)
            if attempt == 2:
                raise
    reg.manifest_cache.put(digest, body)
    return digest, subject


async def delete_reference(reg: Registry, name: str, reference: str, origin: str = "local",
                           precondition: TagPrecondition | None = None) -> bool:
    """Delete a manifest (by digest, with its tags) or just a tag (conditionally, if asked)."""
    if is_digest(reference):
        check_digest(reference)
        if precondition is not None:
            _check_precondition(precondition, reference,
                                reference if reg.meta.get_manifest(name, reference) else None)
        try:
            return await reg.meta.delete_manifest(name, reference, origin)
        except LockRefused as exc:
            raise exc.registry_error() from None
    try:
        return await reg.meta.delete_tag(name, reference, origin, precondition)
    except TagPreconditionFailed as exc:
        raise _precondition_failed(reference, exc.current) from exc
    except LockRefused as exc:
        raise exc.registry_error() from None


def _check_precondition(precondition: TagPrecondition, reference: str, current: str | None) -> None:
    if not precondition.holds(current):
        raise _precondition_failed(reference, current)


def _precondition_failed(reference: str, current: str | None) -> RegistryError:
    return RegistryError(errors.PRECONDITION_FAILED,
                         detail={"reference": reference, "current": current})
