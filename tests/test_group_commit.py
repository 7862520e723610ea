"""Group commit of the metadata store's writes: writes queued together share one transaction,
yet each is undone alone when it raises, and a write cancelled while it waits never happens."""

from __future__ import annotations

import trio

from connreg.storage.sqlite_metadata import SqliteMetadataStore


def test_queued_writes_share_a_commit_but_fail_alone(tmp_path):
    async def main() -> None:
        meta = SqliteMetadataStore(tmp_path / "m.sqlite")
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(meta.set_state, f"k{i}", str(i))
        assert [meta.get_state(f"k{i}") for i in range(200)] == [str(i) for i in range(200)]

        def half_then_raise(conn) -> None:
            conn.execute("INSERT INTO sync_state (key, value) VALUES ('partial', '1')")
            raise ValueError("refused midway")

        outcome = []

        async def failing() -> None:
            try:
                await meta._write(half_then_raise)
            except ValueError as exc:
                outcome.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(meta.set_state, "before", "b")
            nursery.start_soon(failing)
            for i in range(20):
                nursery.start_soon(meta.set_state, f"z{i}", "v")
        assert outcome == ["refused midway"]
        assert meta.get_state("partial") is None  # its own writes rolled back
        assert meta.get_state("before") == "b" and meta.get_state("z19") == "v"

        with trio.move_on_after(0):  # cancelled before it could run: nothing written
            await meta.set_state("cancelled", "1")
        assert meta.get_state("cancelled") is None
        meta.close()

    trio.run(main)


def test_a_reopened_store_holds_every_acknowledged_write(tmp_path):
    async def main() -> None:
        meta = SqliteMetadataStore(tmp_path / "m.sqlite")
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(meta.set_state, f"k{i}", str(i))
        meta.close()
        again = SqliteMetadataStore(tmp_path / "m.sqlite")
        assert all(again.get_state(f"k{i}") == str(i) for i in range(50))
        again.close()

    trio.run(main)
