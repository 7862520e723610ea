"""The chunk index waits for ingest to go quiet before chunking fresh blobs (so it does not
compete with a push still in progress), and catches up at once when a sync needs it."""

from __future__ import annotations

import os

import trio

from connreg.config import Settings
from connreg.delta import index as index_module
from connreg.registry import Registry


async def test_fresh_blobs_wait_for_quiet_but_lookups_catch_up(tmp_path):
    reg = Registry(Settings(data_dir=tmp_path / "node"))
    try:
        index = reg.chunk_index
        first = reg.blobs.put_bytes(os.urandom(300_000))
        second = reg.blobs.put_bytes(os.urandom(300_000))
        async with trio.open_nursery() as nursery:
            await nursery.start(index.run)
            index.schedule(first)
            await trio.sleep(index_module.QUIET_SECONDS / 4)
            assert index.chunks_of(first) is None  # still quiet-waiting
            await index.catch_up()  # what a sync does before looking chunks up
            chunks = index.chunks_of(first)
            assert chunks and sum(n for _, n, _ in chunks) == 300_000
            assert index.locate(chunks[0][2]) == (first, 0, chunks[0][1])

            index.schedule(second)
            with trio.fail_after(index_module.QUIET_SECONDS * 5):
                while index.chunks_of(second) is None:  # the background run gets to it
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        reg.close()
