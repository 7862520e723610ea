"""Child side of gzip-layer delta upward: push a rebuilt gzip layer to the parent as the change
of its plaintext plus its reconstruction data (docs/delta.md "Gzip layers, upward").

The child analysed the layer itself (in the background, like every node with
`gzip_analysis` on). The parent names its previous version (`gzip/base`) and which plaintext
chunks that holds; the child sends plan requests (copy entries for those, data entries, read
from its own layer in one inflate pass per request, for the rest) that the parent appends to
its staged plaintext, then the reconstruction file; the parent recreates the layer and verifies
its SHA-256 before it stores it. Staged plaintext survives a cut: the next attempt asks its
size and continues there. Anything else raises `DeltaUnavailable`: the layer goes by chunks.
"""

from __future__ import annotations

import logging

import trio

from connreg import _core
from connreg.delta import plan
from connreg.delta.fetch import DeltaUnavailable, resume_point
from connreg.sync.remote import ParentRefused

log = logging.getLogger("connreg.delta")
ANALYSIS_WAIT_SECONDS = 90.0
MIN_HELD_SHARE = 0.25
MAX_ENTRIES = 1024
MAX_LITERAL = 2 * 1024 * 1024
MAX_COPY = 32 * 1024 * 1024  # the parent's limit per request


class GzipDeltaPusher:
    def __init__(self, reg, parent, state=None):
        self.reg = reg
        self.layers = reg.chunk_index.gzip
        self.parent = parent
        self.level = reg.settings.zstd_level
        self._refused: set[str] = set()

    async def push(self, repo: str, digest: str) -> None:
        layers = self.layers
        if digest in self._refused or not layers.is_gzip(digest):
            raise DeltaUnavailable(f"{digest[:19]} does not go as a gzip layer")
        waited = 0.0
        while layers.analysed(digest) is None and waited < ANALYSIS_WAIT_SECONDS:
            if not layers.analysis_pending(digest):
                raise DeltaUnavailable(f"gzip layer {digest[:19]} is not analysed here")
            await trio.sleep(1.0)
            waited += 1.0
        if layers.analysed(digest) is None:
            raise DeltaUnavailable(f"gzip layer {digest[:19]} is not analysed here yet")
        chunks = await trio.to_thread.run_sync(layers.plain_chunks, digest)
        answer = await self.parent.gzip_base(repo, layers.key, [c[2] for c in chunks])
        if answer is None or answer.get("base") is None:
            raise DeltaUnavailable(f"the parent holds no previous version of {digest[:19]}")
        base, known = answer["base"], answer["known"]
        held = sum(c[1] for c, k in zip(chunks, known) if k)
        if held < MIN_HELD_SHARE * sum(c[1] for c in chunks):
            raise DeltaUnavailable(f"the parent's previous version of {digest[:19]} shares "
                                   "too little")
        size = await self.parent.gzip_push_size(repo, digest)
        point = resume_point(chunks, size)
        if point is None or point[1]:
            raise DeltaUnavailable(f"the parent's staged plaintext of {digest[:19]} is not a "
                                   "prefix of whole chunks")
        if size:
            log.info("resuming upward gzip delta of %s at plaintext byte %d", digest[:19], size)
        i, sent = point[0], 0
        path = self.reg.blobs.path_for(digest)
        while i < len(chunks):
            j, copy, literal = i, 0, 0
            while j < len(chunks) and j - i < MAX_ENTRIES:
                n = chunks[j][1]
                if known[j] and copy + n > MAX_COPY or not known[j] and literal + n > MAX_LITERAL \
                        and j > i:
                    break
                copy, literal = (copy + n, literal) if known[j] else (copy, literal + n)
                j += 1
            wanted = [(o, n) for (o, n, _), k in zip(chunks[i:j], known[i:j]) if not k]
            data = iter(plan.split_batch(await trio.to_thread.run_sync(
                _core.gunzip_frame, path, wanted, self.level))) if wanted else iter(())
            entries = [plan.Copy(c[2], c[1]) if k else next(data)
                       for c, k in zip(chunks[i:j], known[i:j])]
            body = plan.encode(entries)
            offset = chunks[i][0]
            try:
                size = await self.parent.gzip_push_append(repo, digest, base, offset, body)
            except ParentRefused as exc:
                if exc.status == 416:  # an earlier request applied, its answer lost
                    size = await self.parent.gzip_push_size(repo, digest)
                    point = resume_point(chunks, size)
                    if point is None or point[1]:
                        raise DeltaUnavailable("the parent's staged plaintext is out of step")
                    i = point[0]
                    continue
                raise DeltaUnavailable(f"the parent refused the plaintext of {digest[:19]}: "
                                       f"{exc}") from None
            sent += len(body)
            i = j
        recon = await trio.to_thread.run_sync(layers.recon_path(digest).read_bytes)
        try:
            await self.parent.gzip_push_finish(repo, digest, recon)
        except ParentRefused as exc:
            self._refused.add(digest)
            raise DeltaUnavailable(f"the parent did not recreate {digest[:19]}: {exc}") from None
        log.info("pushed gzip layer %s by its change: %d plan bytes from base %s, %d of "
                 "reconstruction data", digest[:19], sent, base[:19], len(recon))
