"""Parent side of the batched upload: `POST /connreg/v1/sync/upload`, the upward mirror of
`POST /connreg/v1/sync/objects`. A ReadWrite child sends many small blobs and manifests by
digest in one request (`sync/upload_batch_format.py`), and conditional tag moves: each the same
write as the conditional manifest PUT by tag the pusher sends otherwise (`sync/pusher.py`,
conflicts: 412 with the tag's current digest when it is not where the child last saw it).

What is refused for the WHOLE batch (an OCI error answer, nothing of the batch stored): a body
that is not a valid frame or decompresses beyond the limits, more than `sync_batch_max_objects`
objects or `sync_batch_max_bytes` bytes of them, a malformed repository name or digest, an object
whose bytes do not hash to its digest (a broken child or link, not a decision about one entry),
a caller without the sync API's write action, a ReadOnly node, and a batch whose new bytes do
not fit the disk budget (507).

What is answered PER OBJECT (200 with `{"objects": [{"status": 201} | {"status": 4xx,
"errors": [...]}, …]}`, in the order sent; the others are stored): a repository the caller may
not push or this node does not synchronize, a repository whose lock forbids writes, a manifest
the ordinary manifest PUT would refuse (`content.store_manifest`: invalid, too large, a blob or
child manifest not present, a lock), a tag move whose condition does not hold (412, `current`
in the detail) or whose manifest is not here. The child then sends only that entry the ordinary
way, which gets the same refusal and parks just it (`sync/parked.py`), or settles the conflict.

Storing: every object is verified before anything is stored; blobs are written durably
(`put_bytes` hashes again and fsyncs) and linked, their links sharing group commits; then the
manifests go through `store_manifest` with the child's origin, so the change log records them
and they climb further up. Image manifests are stored together, indexes after them in order (an
index needs its children), the tag moves last, several at once (the child sends at most one
per tag in a batch). A disk that fills anyway midway (another writer) ends the request
with 507: blobs written but not yet linked are unreferenced (garbage collection takes them),
what was linked or stored is whole, and the child sends the batch again later.
"""

from __future__ import annotations

import logging
import os
import signal

import trio
from quart import Blueprint, Response, current_app

from connreg import errors
from connreg.api.http import json_response, read_body_limited
from connreg.content import INDEX_TYPES, store_manifest
from connreg.errors import RegistryError
from connreg.locks import policy as lock_policy
from connreg.storage import TagPrecondition
from connreg.storage.interfaces import BlobGone
from connreg.storage.budget import StorageFull
from connreg.sync import upload_batch_format as fmt
from connreg.sync.endpoints import TRAFFIC_BYTES, sync_caller

log = logging.getLogger("connreg.sync")
bp = Blueprint("sync_upload_batch", __name__)
# Blobs written at once (each a file write + fsync, or a request on S3).
BLOB_WRITERS = 4
# Image manifests stored at once: their metadata writes share group commits.
MANIFEST_WRITERS = 16
_receiving: trio.Semaphore | None = None


def _refusal(exc: RegistryError) -> dict:
    entry: dict = {"code": exc.code.code, "message": exc.message}
    if exc.detail is not None:
        entry["detail"] = exc.detail
    return {"status": exc.status, "errors": [entry]}


def _repository_refusal(principal, repo: str) -> RegistryError | None:
    """Why objects may not be stored in `repo` for this caller, if they may not."""
    authz = current_app.extensions["authorizer"]
    reg = current_app.extensions["registry"]
    if principal is not None and not principal.can(repo, "push"):
        return RegistryError(errors.DENIED, detail={"repository": repo, "action": "push"},
                             message=f"{principal.name} may not push {repo}")
    try:
        authz.refuse_unsynchronized(repo)
    except RegistryError as exc:
        return exc
    # A repository-level write lock refuses every manifest: its blobs would never be used.
    refused = lock_policy.refuse_write(reg.meta.locks(repo), repo, None, "", None)
    return refused.registry_error() if refused is not None else None


@bp.route("/connreg/v1/sync/upload", methods=["POST"])
async def upload() -> Response:
    global _receiving
    principal, child = await sync_caller("message/write")
    authz = current_app.extensions["authorizer"]
    if authz.read_only_name:
        raise RegistryError(errors.DENIED, message=f"connected registry {authz.read_only_name} "
                                                   "is ReadOnly: writes are not accepted")
    reg = current_app.extensions["registry"]
    settings = reg.settings
    if _receiving is None:
        _receiving = trio.Semaphore(max(1, settings.sync_batch_parallel))
    async with _receiving:  # bounds the memory held: a body, its decompressed copy
        limit = fmt.frame_limit(settings.sync_batch_max_objects, settings.sync_batch_max_bytes)
        frame = await read_body_limited(limit, errors.BODY_TOO_LARGE)
        if child:
            TRAFFIC_BYTES[child] += len(frame)
        objects = await trio.to_thread.run_sync(fmt.decode, frame,
                                                settings.sync_batch_max_objects,
                                                settings.sync_batch_max_bytes)
        del frame
        answers = await _store(reg, principal, child, objects)
    return json_response({"objects": answers})


async def _store(reg, principal, child: str | None, objects: list[fmt.UploadObject]
                 ) -> list[dict]:
    answers: list[dict | None] = [None] * len(objects)
    refusals: dict[str, RegistryError | None] = {}
    for i, obj in enumerate(objects):
        if obj.repo not in refusals:
            refusals[obj.repo] = _repository_refusal(principal, obj.repo)
        refused = refusals[obj.repo]
        if refused is not None:
            answers[i] = _refusal(refused)
        elif obj.is_manifest and len(obj.data) > reg.settings.max_manifest_bytes:
            answers[i] = _refusal(RegistryError(
                errors.MANIFEST_TOO_LARGE, detail={"limit": reg.settings.max_manifest_bytes,
                                                   "size": len(obj.data)}))
    blobs = [i for i, o in enumerate(objects)
             if answers[i] is None and not o.is_manifest and not o.is_tag]
    # Held to the disk budget as a whole before anything is written (507, nothing stored).
    present: set[str] = set()
    asked = list(dict.fromkeys(objects[i].digest for i in blobs))

    def look(share: list[str]) -> None:  # on S3 each is a request: a few threads at once
        present.update(d for d in share if reg.blobs.exists(d))

    async with trio.open_nursery() as nursery:
        for k in range(min(BLOB_WRITERS, len(asked))):
            nursery.start_soon(trio.to_thread.run_sync, look, asked[k::BLOB_WRITERS])
    new = {objects[i].digest: len(objects[i].data) for i in blobs
           if objects[i].digest not in present}
    new_manifests = sum(len(o.data) for i, o in enumerate(objects)
                        if answers[i] is None and o.is_manifest)
    reg.budget.check(sum(new.values()) + new_manifests, "this upload batch")

    full: list[StorageFull] = []
    writes: dict[str, bytes] = {}
    for i in blobs:  # (the same blob for two repositories: written once)
        if objects[i].digest in new:
            writes.setdefault(objects[i].digest, objects[i].data)

    def write(group: list[tuple[str, bytes]]) -> None:
        # One worker thread per share of the blobs, not per blob: a thread hop each was a
        # tenth of a receiving node's time in a profile.
        for digest, data in group:
            try:
                reg.blobs.put_bytes(data, digest)
            except StorageFull as exc:
                full.append(exc)
                return

    items = list(writes.items())
    async with trio.open_nursery() as nursery:
        for k in range(min(BLOB_WRITERS, len(items))):
            nursery.start_soon(trio.to_thread.run_sync, write, items[k::BLOB_WRITERS])
    if full:
        raise full[0]

    async def link(i: int) -> None:
        obj = objects[i]
        try:
            await reg.meta.link_blob(obj.repo, obj.digest, len(obj.data))
        except StorageFull as exc:
            full.append(exc)
            return
        except BlobGone:  # garbage collection took the file just written: not linked
            answers[i] = _refusal(RegistryError(
                errors.BLOB_UNKNOWN, detail={"digest": obj.digest},
                message=f"{obj.digest} was removed by garbage collection meanwhile; send it "
                        "again"))
            return
        reg.chunk_index.schedule(obj.digest)
        answers[i] = {"status": 201}

    async with trio.open_nursery() as nursery:  # concurrent: one group commit for many
        for i in blobs:
            nursery.start_soon(link, i)
    if full:
        raise full[0]
    if reg.settings.test_kill_in_upload_batch:  # the crash test: blobs stored, no manifest
        os.kill(os.getpid(), signal.SIGKILL)

    origin = f"child:{child}" if child else "local"
    slots = trio.CapacityLimiter(MANIFEST_WRITERS)

    async def put(i: int) -> None:
        obj = objects[i]
        async with slots:
            try:
                await store_manifest(reg, obj.repo, obj.digest, obj.data, obj.media_type,
                                     origin=origin)
                answers[i] = {"status": 201}
            except StorageFull as exc:
                full.append(exc)
            except RegistryError as exc:
                answers[i] = _refusal(exc)

    async def move(i: int) -> None:
        obj = objects[i]
        async with slots:
            record = reg.meta.get_manifest(obj.repo, obj.digest)
            if record is None:
                answers[i] = _refusal(RegistryError(
                    errors.MANIFEST_UNKNOWN, detail={"name": obj.repo, "reference": obj.digest}))
                return
            precondition = (TagPrecondition(if_match=frozenset({obj.if_tag_is}))
                            if obj.if_tag_is else TagPrecondition(if_none_match=frozenset({"*"})))
            try:
                body = await reg.read_manifest(obj.digest)
                await store_manifest(reg, obj.repo, obj.tag, body, record.media_type,
                                     origin=origin, precondition=precondition)
                answers[i] = {"status": 201}
            except StorageFull as exc:
                full.append(exc)
            except RegistryError as exc:
                answers[i] = _refusal(exc)

    manifests = [i for i, o in enumerate(objects) if answers[i] is None and o.is_manifest]
    images = [i for i in manifests if objects[i].media_type not in INDEX_TYPES]
    async with trio.open_nursery() as nursery:
        for i in images:
            nursery.start_soon(put, i)
    for i in manifests:  # indexes, in the order sent: children first
        if i not in images and not full:
            await put(i)
    if not full:
        async with trio.open_nursery() as nursery:
            for i, obj in enumerate(objects):
                if answers[i] is None and obj.is_tag:
                    nursery.start_soon(move, i)
    if full:
        raise full[0]
    refused = sum(1 for a in answers if a is not None and a["status"] != 201)
    if refused:
        log.info("upload batch from %s: %d of %d object(s) refused", child or "a client",
                 refused, len(objects))
    return [a if a is not None else {"status": 500} for a in answers]
