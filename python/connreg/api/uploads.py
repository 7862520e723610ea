"""Blob uploads: POST (session, monolithic, mount), PATCH (chunks), PUT (close), GET, DELETE.

Bytes go straight into the BlobStore's upload file while hashing; a blob becomes visible only
when `Upload.commit` has verified the digest and made it durable.
"""

from __future__ import annotations

import logging
import re

import trio
from quart import Response, request

from connreg import _core, errors
from connreg.api.http import BodyLengthMismatch, body_chunks, empty
from connreg.errors import RegistryError
from connreg.parsing import bounded_int
from connreg.references import check_digest, check_name
from connreg.registry import Registry
from connreg.storage.budget import StorageFull
from connreg.storage.interfaces import UploadSessionLimit

log = logging.getLogger("connreg")
_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/[0-9]+|/\*)?")


def session_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "Range": f"0-{max(size - 1, 0)}",
        "Docker-Upload-UUID": upload_id,
    }


def _blob_created(name: str, digest: str) -> Response:
    return empty(201, {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})


def _content_range(headers: dict[str, str] | None = None) -> tuple[int, int] | None:
    """The request's Content-Range as inclusive (start, end); None without one; 416 (with
    `headers`) when it is malformed or its numbers are out of bounds (parsing.bounded_int)."""
    header = request.headers.get("Content-Range")
    if header is None:
        return None
    m = _CONTENT_RANGE_RE.fullmatch(header.strip())
    if m:
        start, end = (bounded_int(g, what, code=errors.RANGE_INVALID, headers=headers)
                      for g, what in ((m.group(1), "Content-Range start"),
                                      (m.group(2), "Content-Range end")))
        if end >= start:
            return start, end
    raise RegistryError(errors.RANGE_INVALID, detail={"contentRange": header[:100]},
                        message="Content-Range must be <start>-<end> with end >= start",
                        headers=headers)


def _declared_length() -> int | None:
    """How many bytes the request says it carries: Content-Length, else its Content-Range."""
    if request.content_length is not None:
        return request.content_length
    try:
        declared = _content_range()
    except RegistryError:  # refused by the PATCH/PUT check; ignored on a POST, as before
        return None
    return declared[1] - declared[0] + 1 if declared else None


def _check_budget(reg: Registry, holding: int = 0) -> None:
    """Refuse (507) a body whose declared length would cross the disk budget, before any byte
    of it is written; an upload session it was meant for stays as it was."""
    declared = _declared_length()
    if declared:
        reg.budget.check(declared, "this upload", holding=holding)


async def _append_body(reg: Registry, upload: _core.Upload, name: str | None = None,
                       exact: int | None = None, commit_next: bool = False) -> int:
    """Stream the body into `upload`. A stream that crosses the disk budget or fills the disk
    midway (chunked encoding, a wrong length, other writers) is stopped and its whole session
    discarded: the bytes are given back and nothing can complete it while the disk is full.

    `exact` is the length a Content-Range declared for a body without Content-Length: the body
    is counted as it streams and stopped at the first byte past it (416). A wrong length never
    leaves its bytes in the session: up to 1 MiB nothing was written yet and the session stays
    as it was; past that, the part already written cannot be taken back (uploads are append-
    only), so the session is discarded, as for a full disk.

    What was written is flushed before this returns (and when the body is cut): an S3 upload
    gathers bytes in memory until then, and another replica continues from the flushed state.
    `commit_next` skips that when a commit follows at once (it stores everything itself)."""
    _check_budget(reg, holding=upload.size)
    size_before = upload.size
    try:
        async for chunk in body_chunks(exact=exact):
            await trio.to_thread.run_sync(upload.write, chunk)
    except StorageFull as exc:
        await discard_after_full(reg, upload.upload_id, exc)
        raise
    except BodyLengthMismatch as exc:
        message = (f"the body {'ran past' if exc.overflow else 'ended short of'} the "
                   f"{exc.expected} bytes its Content-Range declares")
        headers = session_headers(name or "", upload.upload_id, size_before)
        if upload.size != size_before:
            await _discard_quietly(reg, upload.upload_id)
            message += "; the upload session was discarded (its written part cannot be undone)"
            headers = {}
        raise RegistryError(errors.RANGE_INVALID, message=message, headers=headers,
                            detail={"expected": exc.expected, "received": exc.received})
    except BaseException:  # a cut body: what was written stays in the session, as on disk
        with trio.CancelScope(shield=True):
            await _flush_quietly(upload)
        raise
    if not commit_next:
        await trio.to_thread.run_sync(upload.flush)
    return upload.size


async def _flush_quietly(upload: _core.Upload) -> None:
    try:
        await trio.to_thread.run_sync(upload.flush)
    except Exception:  # the session keeps its last flushed state; the client resumes from it
        log.warning("could not record upload %s after a cut body", upload.upload_id,
                    exc_info=True)


def _check_content_range(upload: _core.Upload, name: str, upload_id: str) -> int | None:
    """A chunk must start exactly where the upload ends (resumable uploads rely on it) and
    carry exactly the bytes its range names. Returns the length a chunked-encoding body must
    have (checked as it streams), None when Content-Length already fixes it or no range is
    given."""
    headers = session_headers(name, upload_id, upload.size)
    declared = _content_range(headers)
    if declared is None:
        return None
    start, end = declared
    length = request.content_length
    if start != upload.size or (length is not None and length != end - start + 1):
        raise RegistryError(
            errors.RANGE_INVALID,
            detail={"contentRange": request.headers["Content-Range"][:100],
                    "uploadSize": upload.size, "contentLength": length},
            message=f"chunk must start at offset {upload.size} and carry end-start+1 bytes",
            headers=headers)
    return end - start + 1 if length is None else None


async def _commit(reg: Registry, name: str, upload_id: str, upload: _core.Upload,
                  digest: str) -> Response:
    try:
        await trio.to_thread.run_sync(upload.commit, digest)
        reg.forget_upload(upload_id)
        # A committed blob whose link cannot be recorded stays unlinked (GC takes it); the
        # client pushes again once there is room and the commit finds the blob in place.
        size = await trio.to_thread.run_sync(reg.blobs.size, digest)  # S3: a round trip
        await reg.meta.link_blob(name, digest, size)
    except _core.DigestMismatch:
        raise RegistryError(errors.DIGEST_INVALID, detail={"digest": digest})
    except StorageFull as exc:
        await discard_after_full(reg, upload_id, exc)
        raise
    reg.chunk_index.schedule(digest)
    await reg.meta.delete_upload(upload_id)
    return _blob_created(name, digest)


async def _try_mount(reg: Registry, name: str, digest: str, source: str | None) -> Response | None:
    if source is not None:
        try:
            check_name(source)
        except RegistryError:
            return None
        size = reg.meta.linked_blob_size(source, digest)
    else:
        # Automatic mount: the blob is already here under another repository.
        size = reg.meta.any_blob_size(digest)
    if size is None or not await trio.to_thread.run_sync(reg.blobs.exists, digest):
        return None
    await reg.meta.link_blob(name, digest, size)
    return _blob_created(name, digest)


async def start_upload(reg: Registry, name: str) -> Response:
    mount, source = request.args.get("mount"), request.args.get("from")
    if mount is not None:
        check_digest(mount)
        # The auth layer says whether this caller may mount from `source` (None: open registry).
        may_mount = getattr(request, "may_mount", None)
        if may_mount is None or may_mount(source):
            mounted = await _try_mount(reg, name, mount, source)
            if mounted is not None:
                return mounted
    digest = request.args.get("digest")
    if digest is not None:
        check_digest(digest)
    _check_budget(reg)  # a body that cannot fit gets no session at all
    upload_id = reg.new_upload_id()
    await _open_session(reg, name, upload_id)
    async with reg.upload_lock(upload_id):  # in use from the start: never purged meanwhile
        upload = await reg.uploads.open(upload_id)
        if digest is not None:  # monolithic upload in one POST: its session ends with it
            try:
                await _append_body(reg, upload, commit_next=True)
                return await _commit(reg, name, upload_id, upload, digest)
            except BaseException:  # a bad digest, a cut connection, a full disk …
                with trio.CancelScope(shield=True):
                    await _discard_quietly(reg, upload_id)
                raise
        if request.content_length:
            await _append_body(reg, upload)
    return empty(202, session_headers(name, upload_id, upload.size))


# What a client at a session cap is told to wait: sessions end when their clients finish or
# cancel them, which the node cannot predict; a minute is a polite poll.
SESSION_CAP_RETRY_AFTER_SECONDS = 60


def _session_owner() -> str:
    """Who a new session counts against: the authenticated principal (admin, a token, a sync
    token), else the source address (anonymous callers, an open `--no-auth` registry)."""
    principal = getattr(request, "principal", None)
    if principal is not None and principal.kind in ("admin", "token"):
        return principal.name
    return f"address {request.remote_addr}"


async def _open_session(reg: Registry, name: str, upload_id: str) -> None:
    """Record a new session, or answer 429 if its owner or the node is at its cap.

    A monolithic upload (POST ?digest=) counts too while its body streams: it holds a file
    and a row like any session, though both end with its request."""
    owner = _session_owner()
    try:
        await reg.uploads.create(upload_id, name, owner)
    except UploadSessionLimit as exc:
        if exc.scope == "identity":
            message = (f"{owner} has {exc.limit} open upload sessions, the most one identity may "
                       f"have (max_upload_sessions_per_identity); finish or cancel one, or wait "
                       f"for idle ones to expire (upload_ttl_seconds)")
        else:
            message = (f"this registry has {exc.limit} open upload sessions, the most it keeps "
                       f"(max_upload_sessions); try again later")
        raise RegistryError(errors.TOO_MANY_REQUESTS, message=message,
                            detail={"identity": owner, "cap": exc.scope, "limit": exc.limit},
                            headers={"Retry-After": str(SESSION_CAP_RETRY_AFTER_SECONDS)})


async def _discard_quietly(reg: Registry, upload_id: str) -> None:
    """End a session after a failure without hiding that failure; what cannot be removed now
    (a full disk) goes with the purge of expired sessions."""
    try:
        await _discard(reg, upload_id)
    except Exception:
        log.warning("could not discard upload session %s now; the expiry purge will",
                    upload_id, exc_info=True)


async def require_upload(reg: Registry, name: str, upload_id: str) -> _core.Upload:
    """The session's upload, or 404 BLOB_UPLOAD_UNKNOWN. The blob store is asked from a worker
    thread: on S3 these are requests, which must not stall the event loop."""
    if reg.meta.upload_repo(upload_id) != name or not await trio.to_thread.run_sync(
            reg.blobs.upload_exists, upload_id):
        raise RegistryError(errors.BLOB_UPLOAD_UNKNOWN, detail={"uuid": upload_id[:200]})
    return await reg.uploads.open(upload_id)


async def patch_upload(reg: Registry, name: str, upload_id: str) -> Response:
    async with reg.upload_lock(upload_id):
        upload = await require_upload(reg, name, upload_id)
        await reg.uploads.sync_with_store(upload)  # another replica may have appended
        exact = _check_content_range(upload, name, upload_id)
        size = await _append_body(reg, upload, name, exact)
    return empty(202, session_headers(name, upload_id, size))


async def finish_upload(reg: Registry, name: str, upload_id: str) -> Response:
    digest = request.args.get("digest")
    async with reg.upload_lock(upload_id):
        upload = await require_upload(reg, name, upload_id)
        await reg.uploads.sync_with_store(upload)  # another replica may have appended
        if digest is None:
            raise RegistryError(errors.DIGEST_INVALID, message="digest query parameter required")
        check_digest(digest)
        exact = _check_content_range(upload, name, upload_id)
        await _append_body(reg, upload, name, exact, commit_next=True)
        return await _commit(reg, name, upload_id, upload, digest)


async def upload_status(reg: Registry, name: str, upload_id: str) -> Response:
    upload = await require_upload(reg, name, upload_id)
    await reg.uploads.sync_with_store(upload)  # another replica may have appended
    return empty(204, session_headers(name, upload_id, upload.size))


async def _discard(reg: Registry, upload_id: str) -> None:
    reg.forget_upload(upload_id)
    await trio.to_thread.run_sync(reg.blobs.abort_upload, upload_id)
    await reg.meta.delete_upload(upload_id)


async def discard_after_full(reg: Registry, upload_id: str, exc: StorageFull) -> None:
    """Drop a session that ran out of room, and say so in the 507's message."""
    try:
        await _discard(reg, upload_id)
    except StorageFull:
        pass  # the file is gone; the row goes with the stale-upload purge
    if "discarded" not in exc.message:
        exc.message += "; the upload session was discarded"


async def cancel_upload(reg: Registry, name: str, upload_id: str) -> Response:
    async with reg.upload_lock(upload_id):
        await require_upload(reg, name, upload_id)
        await _discard(reg, upload_id)
    return empty(204)
