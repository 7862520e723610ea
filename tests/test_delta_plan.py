"""The child's upward plan walk, in process: from any offset the parent's session may hold
(inside a copied chunk, a ref or a literal stretch of a refined run), the plans it builds
rebuild exactly the rest of the blob at a parent that holds the old version."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

from connreg import _core
from connreg.delta import plan
from connreg.delta.push import DeltaPusher, _Push
from connreg.storage.budget import StorageBudget
from connreg.storage.budgeted import BudgetedBlobStore

KiB, MiB = 1024, 1024 * 1024
SUB = _core.ChunkParams(1024, 4096, 16384)


class FakeParent:
    """Holds v1; answers `near_chunks` like the parent's endpoint and applies plans."""

    def __init__(self, v1: bytes):
        self.v1 = v1
        self.chunks = _core.chunk_bytes(v1)
        self.where = {}
        for o, n, c in self.chunks:
            self.where.setdefault(c, (o, n))

    async def near_chunks(self, repo, params, before, after, length, ids):
        anchor = before or after
        a_off, a_len = self.where[anchor]
        start, end = (0, a_off) if before is None else (a_off + a_len, len(self.v1))
        if before is not None and after is not None:
            end = next(o for o, _, c in self.chunks if c == after and o >= start)
        at = {}
        for o, _, c in _core.chunk_bytes(self.v1[start:end], SUB):
            at.setdefault(c, start + o - a_off)
        return anchor, [at.get(i) for i in ids]

    def apply(self, entries) -> list[bytes]:
        out = []
        for e in entries:
            if isinstance(e, plan.Copy):
                o, n = self.where[e.chunk_id]
                assert n == e.length
                out.append(self.v1[o:o + n])
            elif isinstance(e, plan.Ref):
                at = self.where[e.anchor][0] + e.delta
                data = self.v1[at:at + e.length]
                assert len(data) == e.length and at >= 0
                assert _core.digest_bytes(data, "blake3") == "blake3:" + e.chunk_id
                out.append(data)
            else:
                ((_, data),) = _core.decode_chunks(e.entry)
                out.append(data)
        return out


async def test_plans_rebuild_the_blob_from_any_offset(tmp_path):
    rng = random.Random(7)
    v1 = os.urandom(3 * MiB)
    v2 = bytearray(v1)
    for k in range(6):
        at = k * len(v1) // 6 + rng.randrange(0, len(v1) // 6 - 3000)
        v2[at:at + 3000] = os.urandom(3000)
    v2 = bytes(v2[:10 * KiB]) + os.urandom(5000) + bytes(v2[10 * KiB:])  # a run at the start
    v2 = v2[:-5000] + os.urandom(7000)  # and one at the end
    # The node's store as the app builds it: the Rust store under the disk budget.
    blobs = BudgetedBlobStore(_core.BlobStore(tmp_path / "store"),
                              StorageBudget(tmp_path, tmp_path / "store"))
    digest = blobs.put_bytes(v2)
    parent = FakeParent(v1)
    reg = SimpleNamespace(blobs=blobs, settings=SimpleNamespace(zstd_level=3))
    pusher = DeltaPusher(reg, parent, state=None)
    chunks = _core.chunk_bytes(v2)
    known = {c for c, _ in parent.where.items()}

    def walk_from(offset: int):
        async def run() -> tuple[bytes, list]:
            job = _Push("r", digest, chunks, [o for o, _, _ in chunks], known)
            job.find_runs()
            out, kinds = b"", []
            position = offset
            while position < len(v2):
                entries, end = await pusher._plan(job, position)
                for e, part in zip(entries, parent.apply(entries)):
                    kinds.append((type(e).__name__, offset + len(out), len(part)))
                    out += part
                assert offset + len(out) == end
                position = end
            return out, kinds
        return run

    rebuilt, pieces = await walk_from(0)()
    assert rebuilt == v2
    count = {k: sum(1 for p in pieces if p[0] == k) for k in ("Copy", "Ref", "Data")}
    assert count["Ref"] >= 8 and count["Data"] < 20, count  # only edited sub-chunks as bytes
    print(f"\n{count}; resuming at {len(pieces) * 2} offsets")
    # Resume inside (and at the start of) every piece of each kind, and at random offsets.
    offsets = [o + d for _, o, n in pieces for d in (0, n // 3) if o + d > 0]
    for offset in offsets + [rng.randrange(1, len(v2)) for _ in range(10)]:
        rebuilt, _ = await walk_from(offset)()
        assert rebuilt == v2[offset:], offset
