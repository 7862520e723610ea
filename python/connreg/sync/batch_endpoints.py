"""Parent side of batched sync: many small objects, or many presence checks, per request.

- `POST /connreg/v1/sync/objects` with `{"objects": [[repo, digest], …], "referrers": bool}`:
  those manifests and blobs as one zstd frame (`sync/batch_format.py`), in the order asked;
  with `referrers`, each manifest's header lists the digests of its referrers. The caller must
  be allowed to pull every repository named, and every digest must be a manifest or blob linked
  in its repository (else 404 `BLOB_UNKNOWN` naming the unknown ones, and nothing is sent). At
  most `sync_batch_max_objects` objects and `sync_batch_max_bytes` bytes of them (400 / 413);
  `sync_batch_parallel` answers are built at once, further requests wait.
- `POST /connreg/v1/sync/blobs/missing` with `{"blobs": [[repo, digest], …], "manifests":
  [[repo, digest], …]}`: for each blob "present" (linked in repo), "mounted" (linked now from a
  repository the caller may pull) or "missing"; for each manifest whether repo holds it. The
  caller must be allowed to push every repository of `blobs` and pull those of `manifests`;
  a connected registry refuses mounts outside its set like any write.

Large blobs never travel here: the child sends them by chunks or whole (`docs/delta.md`).
"""

from __future__ import annotations

import trio
from quart import Blueprint, Response, current_app, request

from connreg import errors
from connreg.api.http import json_response, read_json_body
from connreg.errors import RegistryError
from connreg.references import check_digest, check_name
from connreg.sync import batch_format
from connreg.sync.endpoints import TRAFFIC_BYTES, sync_caller

bp = Blueprint("sync_batch", __name__)
# 256 pairs of a 255-character name and a sha512 digest, with JSON punctuation: under 128 KiB.
MAX_REQUEST = 256 * 1024
# Mount sources looked at per blob: the first few repositories holding it suffice.
MOUNT_CANDIDATES = 16
_answering: trio.Semaphore | None = None


def _settings():
    return current_app.config["CONNREG_SETTINGS"]


def _pairs(doc: object, key: str, limit: int) -> list[tuple[str, str]]:
    items = doc.get(key, []) if isinstance(doc, dict) else None
    if not isinstance(items, list) or not all(
            isinstance(i, list) and len(i) == 2 and all(isinstance(x, str) for x in i)
            for i in items):
        raise RegistryError(errors.INVALID_BODY,
                            message=f'expected {{"{key}": [[repository, digest], …]}}')
    if len(items) > limit:
        raise RegistryError(errors.INVALID_BODY,
                            message=f"{len(items)} {key} in one batch; at most {limit} "
                                    "(sync_batch_max_objects)",
                            detail={"count": len(items), "max": limit})
    return [(check_name(repo), check_digest(digest)) for repo, digest in items]


def _may(principal, repo: str, action: str) -> None:
    if principal is not None and not principal.can(repo, action):
        raise RegistryError(errors.DENIED, message=f"{principal.name} may not {action} {repo}")


@bp.route("/connreg/v1/sync/objects", methods=["POST"])
async def objects() -> Response:
    global _answering
    principal, child = await sync_caller("message/read")
    settings = _settings()
    doc = await read_json_body(MAX_REQUEST, "object batch request")
    asked = _pairs(doc, "objects", settings.sync_batch_max_objects)
    with_referrers = isinstance(doc, dict) and doc.get("referrers") is True
    reg = current_app.extensions["registry"]
    found: list[tuple[str, str, int, str | None]] = []  # repo, digest, size, media type
    unknown: list[str] = []
    for repo, digest in asked:
        _may(principal, repo, "pull")
        record = reg.meta.get_manifest(repo, digest)
        size = record.size if record else reg.meta.linked_blob_size(repo, digest)
        if size is None:
            unknown.append(f"{repo}@{digest}")
            continue
        found.append((repo, digest, size, record.media_type if record else None))
    # The stored bytes, asked off the event loop: on S3 each is a request.
    stored = await trio.to_thread.run_sync(
        lambda: [reg.blobs.exists(digest) for _, digest, _, _ in found])
    unknown += [f"{repo}@{digest}" for (repo, digest, _, _), ok in zip(found, stored) if not ok]
    found = [f for f, ok in zip(found, stored) if ok]
    if unknown:
        raise RegistryError(errors.BLOB_UNKNOWN,
                            message=f"{len(unknown)} object(s) of the batch unknown here: "
                                    + ", ".join(unknown[:3]) + (" …" if len(unknown) > 3 else ""),
                            detail={"unknown": unknown[:settings.sync_batch_max_objects]})
    total = sum(size for _, _, size, _ in found)
    if total > settings.sync_batch_max_bytes:
        raise RegistryError(errors.BODY_TOO_LARGE,
                            message=f"the batch's objects hold {total} bytes; at most "
                                    f"{settings.sync_batch_max_bytes} per batch "
                                    "(sync_batch_max_bytes)",
                            detail={"bytes": total, "max": settings.sync_batch_max_bytes})
    if _answering is None:
        _answering = trio.Semaphore(max(1, settings.sync_batch_parallel))
    async with _answering:
        records = []
        datas = [reg.manifest_cache.get(digest) if media_type else None
                 for _, digest, _, media_type in found]
        # What the cache does not hold, read in one worker-thread call (not one per object).
        unread = [i for i, data in enumerate(datas) if data is None]
        read = await trio.to_thread.run_sync(
            lambda: [reg.blobs.read(found[i][1]) for i in unread])
        for i, data in zip(unread, read):
            datas[i] = data
        for (repo, digest, size, media_type), data in zip(found, datas):
            header: dict = {"digest": digest, "size": size}
            if media_type is not None:
                header["mediaType"] = media_type
                if with_referrers:
                    header["referrers"] = [r.digest for r in
                                           reg.meta.referrers(repo, digest, None)]
            if len(data) != size:
                raise RegistryError(errors.INTERNAL, message=f"{digest} changed size on disk")
            records.append((header, data))
        # Test-only: damage the answer (the child must refuse it; docs/sync.md, test knobs).
        corrupt = settings.test_corrupt_object_batches > 0
        if corrupt:
            settings.test_corrupt_object_batches -= 1
        # A batch of blobs only (no manifest) is mostly layers, compressed already: zstd's
        # fastest level, where a higher one would only burn CPU (configs still shrink).
        level = settings.zstd_level if any(m for *_, m in found) else min(settings.zstd_level, 1)
        frame = await trio.to_thread.run_sync(batch_format.encode, records, level, corrupt)
    if child:
        TRAFFIC_BYTES[child] += len(frame)
    return Response(frame, status=200, content_type=batch_format.MEDIA_TYPE)


@bp.route("/connreg/v1/sync/blobs/missing", methods=["POST"])
async def missing() -> Response:
    principal, _ = await sync_caller("message/write")
    settings = _settings()
    doc = await read_json_body(MAX_REQUEST, "presence request")
    blobs = _pairs(doc, "blobs", settings.sync_batch_max_objects)
    manifests = _pairs(doc, "manifests", settings.sync_batch_max_objects)
    authz = current_app.extensions["authorizer"]

    def refused(repo: str, action: str) -> bool:
        try:
            _may(principal, repo, action)
            if action == "push":
                authz.refuse_unsynchronized(repo)
            return False
        except RegistryError:
            return True

    reg = current_app.extensions["registry"]
    answers: list[str] = []
    for repo, digest in blobs:
        if refused(repo, "push"):
            # Said per blob, not for the batch: the child sends that entry the ordinary way,
            # gets the real refusal there and parks only it.
            answers.append("denied")
            continue  # one answer per blob, and never a mount into a refused repository
        # the store is asked off the event loop: on S3 each is a request
        size = await trio.to_thread.run_sync(reg.blobs.size, digest)
        if size is not None and reg.meta.linked_blob_size(repo, digest) is not None:
            answers.append("present")
            continue
        source = None
        if size is not None:
            source = next((r for r in reg.meta.blob_repositories(digest, MOUNT_CANDIDATES)
                           if principal is None or principal.can(r, "pull")), None)
        if source is None:
            answers.append("missing")
            continue
        await reg.meta.link_blob(repo, digest, size)  # re-checks the file in its transaction
        answers.append("mounted")
    held = [None if refused(repo, "pull") else reg.meta.get_manifest(repo, digest) is not None
            for repo, digest in manifests]
    return json_response({"blobs": answers, "manifests": held})
