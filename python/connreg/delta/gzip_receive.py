"""Parent side of gzip-layer delta upward: a ReadWrite child pushes a rebuilt gzip layer as the
change of its plaintext plus its reconstruction data (docs/delta.md "Gzip layers, upward").

- `POST /connreg/v1/sync/gzip/base?repo=R` with `{"params": key, "ids": [blake3, …]}` →
  `{"base": digest|null, "known": [bool, …]}`: the gzip layer of R whose plaintext holds the
  most of these chunks (the previous version), and which chunks it holds.
- `GET  /connreg/v1/sync/gzip/push?repo=R&digest=D` → `{"size": N}`: plaintext staged so far.
- `POST /connreg/v1/sync/gzip/push?repo=R&digest=D&base=B&offset=N` with a plan frame
  (`plan.py`, copy and data entries): append to D's staged plaintext, copies taken from B's
  plaintext. `offset` must be the staged size (else 416 with `detail.uploadSize`).
- `PUT  /connreg/v1/sync/gzip/push?repo=R&digest=D` with the reconstruction file as body:
  recreate D from the staged plaintext, verify its SHA-256, store it and link it into R
  (201). A layer that does not recreate exactly: 400 `DIGEST_INVALID`, nothing stored, the
  staged plaintext dropped; the child then pushes it by chunks.
Same authorization as the other upward delta endpoints (a sync token allowed to push R).
"""

from __future__ import annotations

import trio
from quart import Response, current_app, request

from connreg import _core, errors
from connreg.api.http import json_response, read_body_limited
from connreg.delta import plan
from connreg.delta.receive import (MAX_KNOWN_IDS, _CHUNK_ID_RE, _caller, _count, _json_body,
                                   bp)
from connreg.errors import RegistryError
from connreg.references import check_digest

# Bytes copied from the base per request (read into memory by one inflate pass of the base).
MAX_COPY_BYTES = 32 * 1024 * 1024
MAX_RECON_BYTES = 64 * 1024 * 1024
_locks: dict[str, trio.Lock] = {}


def _layers():
    layers = current_app.extensions["registry"].chunk_index.gzip
    if not layers.enabled:  # S3 blobs or a scaled root (delta/gzip_layers.py)
        raise RegistryError(errors.UNSUPPORTED, message="gzip-layer delta is off on this node "
                            "(a scaled root or blobs on S3): push the layer by its chunks")
    return layers


def _staged(digest: str):
    return _layers().dir / "work" / ("up-" + digest.split(":", 1)[1] + ".plain")


def _size(path) -> int:
    return path.stat().st_size if path.exists() else 0


@bp.route("/connreg/v1/sync/gzip/base", methods=["POST"])
async def gzip_base() -> Response:
    principal, child, repo = await _caller()
    doc = await _json_body(child)
    layers = _layers()
    ids = doc.get("ids")
    if doc.get("params") != layers.key:
        raise RegistryError(errors.CHUNK_PARAMS_MISMATCH, detail={"params": layers.key})
    if (not isinstance(ids, list) or len(ids) > MAX_KNOWN_IDS
            or not all(isinstance(i, str) and _CHUNK_ID_RE.fullmatch(i) for i in ids)):
        raise RegistryError(errors.INVALID_BODY, message=f"ids: at most {MAX_KNOWN_IDS} "
                                                         "BLAKE3 hex ids")
    await layers.catch_up()
    meta = current_app.extensions["registry"].meta
    base = await trio.to_thread.run_sync(
        lambda: layers.best_base(ids, exclude="", may_use=lambda d: meta.linked_blob_size(
            repo, d) is not None))
    held = set()
    if base is not None:
        held = {cid for _, _, cid in layers.plain_chunks(base[0])}
    resp = json_response({"base": base[0] if base else None,
                          "known": [i in held for i in ids]})
    _count(child, len(await resp.get_data()))
    return resp


def _digest_arg(name: str) -> str:
    return check_digest(request.args.get(name, ""))


@bp.route("/connreg/v1/sync/gzip/push", methods=["GET"])
async def gzip_push_size() -> Response:
    await _caller()
    return json_response({"size": _size(_staged(_digest_arg("digest")))})


@bp.route("/connreg/v1/sync/gzip/push", methods=["POST"])
async def gzip_push_append() -> Response:
    principal, child, repo = await _caller()
    digest, base = _digest_arg("digest"), _digest_arg("base")
    reg = current_app.extensions["registry"]
    layers = _layers()
    if reg.meta.linked_blob_size(repo, base) is None or not reg.blobs.exists(base):
        raise RegistryError(errors.BLOB_UNKNOWN, detail={"digest": base})
    body = await read_body_limited(plan.MAX_BODY, errors.BODY_TOO_LARGE)
    _count(child, len(body))
    try:
        entries = plan.parse(body)
    except plan.PlanError as exc:
        raise RegistryError(errors.INVALID_BODY, message=f"plan: {exc}") from None
    held = {cid: (o, n) for o, n, cid in await trio.to_thread.run_sync(layers.plain_chunks, base)}
    ranges, copied = [], 0
    for e in entries:
        if isinstance(e, plan.Ref):
            raise RegistryError(errors.INVALID_BODY, message="ref entries are not taken here")
        if isinstance(e, plan.Copy):
            found = held.get(e.chunk_id)
            if found is None or found[1] != e.length:
                raise RegistryError(errors.CHUNK_UNKNOWN, detail={"chunk": e.chunk_id})
            ranges.append(found)
            copied += e.length
    if copied > MAX_COPY_BYTES:
        raise RegistryError(errors.INVALID_BODY,
                            message=f"at most {MAX_COPY_BYTES} copied bytes per request")
    literals = [e.entry for e in entries if isinstance(e, plan.Data)]
    try:
        decoded = await trio.to_thread.run_sync(_core.decode_chunks, b"".join(literals))
    except _core.CorruptChunk as exc:
        raise RegistryError(errors.DIGEST_INVALID, message=str(exc)) from None
    copies = (await trio.to_thread.run_sync(_core.gunzip_ranges, reg.blobs.path_for(base),
                                            ranges)) if ranges else []
    path = _staged(digest)
    lock = _locks.setdefault(digest, trio.Lock())
    async with lock:
        offset = int(request.args.get("offset", "-1") or -1)
        size = _size(path)
        if offset != size:
            raise RegistryError(errors.RANGE_INVALID,
                                message=f"staged plaintext is {size} bytes",
                                detail={"uploadSize": size})
        pieces, ci, di = [], iter(copies), iter(decoded)
        for e in entries:
            pieces.append(next(ci) if isinstance(e, plan.Copy) else next(di)[1])

        def append() -> int:
            with open(path, "ab") as out:
                for piece in pieces:
                    out.write(piece)
            return _size(path)

        size = await trio.to_thread.run_sync(append)
    return json_response({"size": size}, status=202)


@bp.route("/connreg/v1/sync/gzip/push", methods=["PUT"])
async def gzip_push_finish() -> Response:
    principal, child, repo = await _caller()
    digest = _digest_arg("digest")
    reg = current_app.extensions["registry"]
    recon = await read_body_limited(MAX_RECON_BYTES, errors.BODY_TOO_LARGE)
    _count(child, len(recon))
    path = _staged(digest)
    lock = _locks.setdefault(digest, trio.Lock())
    async with lock:
        if not reg.blobs.exists(digest):
            if not path.exists():
                raise RegistryError(errors.BLOB_UPLOAD_UNKNOWN,
                                    message=f"no staged plaintext for {digest}")
            recon_file = path.with_suffix(".recon")
            await trio.to_thread.run_sync(recon_file.write_bytes, recon)
            upload_id = "gzup-" + digest.replace(":", "-")
            upload = reg.blobs.upload(upload_id)
            if upload.size:
                upload.abort()
                upload = reg.blobs.upload(upload_id)
            try:
                # the layer's size ends the reconstruction file: held to the disk budget
                size = int.from_bytes(recon[-8:], "little") if len(recon) >= 8 else 0
                await trio.to_thread.run_sync(upload._append, size, lambda: _core.gzip_recreate(
                    str(recon_file), str(path), upload._inner))
                await trio.to_thread.run_sync(upload.commit, digest)
            except (_core.GzipError, _core.DigestMismatch) as exc:
                upload.abort()
                path.unlink(missing_ok=True)
                raise RegistryError(errors.DIGEST_INVALID,
                                    message=f"gzip layer did not recreate exactly: {exc}",
                                    detail={"digest": digest}) from None
            finally:
                recon_file.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        _locks.pop(digest, None)
    await reg.meta.link_blob(repo, digest, reg.blobs.size(digest))
    reg.chunk_index.schedule(digest)
    return Response(b"", status=201, headers={"Docker-Content-Digest": digest})
