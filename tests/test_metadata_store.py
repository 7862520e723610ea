"""The MetadataStore and ControlStore behaviour suite, written once and run against every
backend: SQLite (the embedded default) and PostgreSQL (the scaled root), like distribution's
one storage-driver suite for every driver.

The PostgreSQL runs also open a second store on the same database — a second replica — to show
that what one replica writes, the other reads, waits on and is constrained by.
"""

from __future__ import annotations

import itertools
import time

import pytest
import trio

from connreg.control.interfaces import CONNECTED_REGISTRY
from connreg.locks.model import LockRefused, RepositoryLock
from connreg.storage.interfaces import (BlobGone, ManifestRecord, ParkedChange, ReferencesGone,
                                        TagPrecondition, TagPreconditionFailed,
                                        UploadSessionLimit)

D = [f"sha256:{str(i) * 64}" for i in range(10)]
MT = "application/vnd.oci.image.manifest.v1+json"
_names = itertools.count()


class Backend:
    """Opens stores of one backend; `replica()` opens another store on the same data."""

    def __init__(self, kind: str, tmp_path, postgres_server=None):
        self.kind = kind
        self.opened = []
        self.present: set[str] | None = None  # blobs that "exist" (None: no check)
        if kind == "sqlite":
            self.path = tmp_path / "metadata.sqlite"
            self.control_path = tmp_path / "control.sqlite"
        else:
            self.url = postgres_server.create_database(f"suite{next(_names)}")

    def _present(self, digest: str) -> bool:
        return self.present is None or digest in self.present

    def replica(self):
        if self.kind == "sqlite":
            from connreg.storage.sqlite_metadata import SqliteMetadataStore
            store = SqliteMetadataStore(self.path, blob_present=self._present)
        else:
            from connreg.storage.postgres_engine import PostgresEngine
            from connreg.storage.postgres_metadata import PostgresMetadataStore
            store = PostgresMetadataStore(PostgresEngine(self.url), blob_present=self._present)
        self.opened.append(store)
        return store

    def control(self):
        if self.kind == "sqlite":
            from connreg.control.sqlite_store import SqliteControlStore
            store = SqliteControlStore(self.control_path)
        else:
            from connreg.control.postgres_store import PostgresControlStore
            from connreg.storage.postgres_engine import PostgresEngine
            store = PostgresControlStore(PostgresEngine(self.url))
        self.opened.append(store)
        return store

    def close(self):
        for store in self.opened:
            store.close()
            engine = getattr(store, "engine", None)
            if engine is not None:
                engine.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    pg = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    b = Backend(request.param, tmp_path, pg)
    yield b
    b.close()


@pytest.fixture
def store(backend):
    return backend.replica()


def record(repo: str, digest: str, subject: str | None = None,
           artifact_type: str | None = None) -> ManifestRecord:
    return ManifestRecord(repo, digest, MT, 100, subject, artifact_type, None)


async def test_repositories_links_and_manifests(store):
    assert not store.repository_exists("a/b")
    await store.link_blob("a/b", D[1], 10)
    await store.link_blob("c", D[1], 10)
    assert store.repository_exists("a/b")
    assert store.linked_blob_size("a/b", D[1]) == 10
    assert store.linked_blob_size("a/b", D[2]) is None
    assert store.any_blob_size(D[1]) == 10
    assert store.list_repositories(None, None) == ["a/b", "c"]
    assert store.list_repositories(1, "a/b") == ["c"]
    await store.put_manifest(record("a/b", D[0]), [D[1]], "v1")
    assert store.get_manifest("a/b", D[0]) == record("a/b", D[0])
    assert store.resolve_tag("a/b", "v1") == D[0]
    assert store.manifest_digests("a/b") == [D[0]]
    assert await store.unlink_blob("c", D[1]) and not await store.unlink_blob("c", D[1])
    assert await store.delete_manifest("a/b", D[0])
    assert store.resolve_tag("a/b", "v1") is None and store.get_manifest("a/b", D[0]) is None
    assert not await store.delete_manifest("a/b", D[0])
    assert await store.unlink_all_blobs("a/b") == 1
    assert not store.repository_exists("a/b")


async def test_tags_list_in_order_with_pagination(store):
    for tag in ["b", "a", "c"]:
        await store.put_manifest(record("r", D[0]), [], tag)
    assert store.list_tags("r", None, None) == ["a", "b", "c"]
    assert store.list_tags("r", 1, "a") == ["b"]
    assert await store.delete_tag("r", "b") and not await store.delete_tag("r", "b")
    assert store.list_tags("r", None, None) == ["a", "c"]


async def test_conditional_tag_updates_are_checked_in_the_write(store):
    await store.put_manifest(record("r", D[0]), [], "t")
    with pytest.raises(TagPreconditionFailed) as e:
        await store.put_manifest(record("r", D[1]), [], "t",
                                 precondition=TagPrecondition(if_match=frozenset({D[2]})))
    assert e.value.current == D[0] and store.resolve_tag("r", "t") == D[0]
    with pytest.raises(TagPreconditionFailed):
        await store.put_manifest(record("r", D[1]), [], "t",
                                 precondition=TagPrecondition(if_none_match=frozenset({"*"})))
    await store.put_manifest(record("r", D[1]), [], "t",
                             precondition=TagPrecondition(if_match=frozenset({D[0]})))
    assert store.resolve_tag("r", "t") == D[1]
    with pytest.raises(TagPreconditionFailed):
        await store.delete_tag("r", "t", precondition=TagPrecondition(if_match=frozenset({D[0]})))
    assert await store.delete_tag("r", "t",
                                  precondition=TagPrecondition(if_match=frozenset({D[1]})))


async def test_racing_conditional_updates_from_two_replicas_one_wins(backend):
    """Twenty writers on two stores (replicas), each moving the tag from D[0] only: exactly one
    succeeds, and the change log has exactly one entry for it."""
    a, b = backend.replica(), backend.replica()
    await a.put_manifest(record("r", D[0]), [], "t")
    head = a.change_bounds()[1]
    wins, losses = [], []

    async def attempt(store, digest):
        try:
            await store.put_manifest(record("r", digest), [], "t",
                                     precondition=TagPrecondition(if_match=frozenset({D[0]})))
            wins.append(digest)
        except TagPreconditionFailed:
            losses.append(digest)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(attempt, (a, b)[i % 2], D[1 + i % 9])
    assert len(wins) == 1 and len(losses) == 19
    assert b.resolve_tag("r", "t") == wins[0]
    changes = b.changes_since(head, 100)
    assert [(c.op, c.digest, c.prev) for c in changes] == [("manifest", wins[0], D[0])]


async def test_blob_and_reference_checks_inside_the_write(backend):
    store = backend.replica()
    backend.present = {D[1]}
    with pytest.raises(BlobGone):
        await store.link_blob("r", D[2], 1)
    await store.link_blob("r", D[1], 1)
    backend.present = {D[0], D[1]}
    with pytest.raises(ReferencesGone) as e:
        await store.put_manifest(record("r", D[0]), [D[1], D[3]], "t")
    assert e.value.missing == [D[3]] and store.get_manifest("r", D[0]) is None
    backend.present = {D[1]}
    with pytest.raises(BlobGone):
        await store.put_manifest(record("r", D[0]), [D[1]], "t")


async def test_bulk_links_are_all_or_none(backend):
    """`link_blobs` (sync stores a batch's blobs and links them in one transaction): every
    link is written, repositories created, sizes replaced; one file gone links none."""
    store, other = backend.replica(), backend.replica()
    await store.link_blob("a", D[1], 5)
    backend.present = {D[1], D[2]}
    with pytest.raises(BlobGone) as e:
        await store.link_blobs([("a", D[2], 2), ("b", D[3], 3), ("b", D[1], 1)])
    assert e.value.digest == D[3]
    assert other.linked_blob_size("a", D[2]) is None and not other.repository_exists("b")
    assert other.linked_blob_size("a", D[1]) == 5
    backend.present = None
    await store.link_blobs([("a", D[2], 2), ("b", D[3], 3), ("b", D[1], 1), ("a", D[1], 6)])
    assert [other.linked_blob_size(r, d) for r, d in
            [("a", D[2]), ("b", D[3]), ("b", D[1]), ("a", D[1])]] == [2, 3, 1, 6]
    assert other.list_repositories(None, None) == ["a", "b"]
    await store.link_blobs([])  # nothing to do, no transaction


async def test_change_log_is_global_ordered_and_prunable(backend):
    a, b = backend.replica(), backend.replica()
    assert a.change_bounds() == (1, 0)
    await a.put_manifest(record("r", D[0]), [], "t")
    await b.put_manifest(record("r", D[1]), [], "t", origin="child:e1")
    await a.put_manifest(record("r", D[1]), [], "t")  # no change: no entry
    await b.delete_tag("r", "t")
    await a.delete_manifest("r", D[0])
    log = b.changes_since(0, 100)
    assert [c.seq for c in log] == [1, 2, 3, 4]
    assert [(c.op, c.digest, c.tag, c.prev, c.origin) for c in log] == [
        ("manifest", D[0], "t", None, "local"), ("manifest", D[1], "t", D[0], "child:e1"),
        ("delete_tag", None, "t", D[1], "local"), ("delete_manifest", D[0], None, None, "local")]
    assert [c.seq for c in a.changes_since(1, 2, exclude_origin="local")] == [2]
    assert a.change_bounds() == (1, 4)
    assert await a.prune_changes(time.time() + 1, keep_from=3) == 2
    assert b.change_bounds() == (3, 4)
    assert await b.prune_changes(time.time() + 1) == 2
    assert a.change_bounds() == (5, 4)  # empty, the head remembered
    await b.put_manifest(record("r", D[2]), [], None)
    assert [c.seq for c in a.changes_since(4, 10)] == [5]


async def test_wait_for_change_wakes_on_a_write_at_another_replica(backend):
    """(SQLite has one serving process per file: there the writer is the same store.)"""
    a = backend.replica()
    b = backend.replica() if backend.kind == "postgres" else a
    if backend.kind == "postgres":
        # no periodic re-reads: only the NOTIFY can wake it within the test's deadline
        a.recheck_seconds = a.engine.recheck_seconds = 3600
    with trio.fail_after(2):
        await a.wait_for_change(0, 0.2)  # nothing: times out quietly
    woke = trio.Event()

    async def waiter():
        await a.wait_for_change(0, 60)
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.3)
        assert not woke.is_set()
        await b.put_manifest(record("r", D[0]), [], "t")
        with trio.fail_after(30):
            await woke.wait()


async def test_state_and_parked_entries(store):
    assert store.get_state("k") is None
    await store.set_state("k", "1")
    await store.set_state("k", "2")
    assert store.get_state("k") == "2"
    await store.set_state("k", None)
    assert store.get_state("k") is None
    entries = [ParkedChange(seq, "r", "manifest", "t", D[seq], "local", "PUT", "/v2/x", 403,
                            "DENIED", "no", 1.5) for seq in (3, 1, 2)]
    for e in entries:
        await store.park_change(e)
    await store.park_change(ParkedChange(2, "q", "manifest", "t", D[2], "local", "PUT",
                                         "/v2/y", 400, None, "bad", 2.5, attempts=2))
    assert [p.seq for p in store.parked_changes()] == [1, 2, 3]
    assert store.parked_changes(repo="q")[0].attempts == 2
    assert store.parked_count() == 3
    assert await store.requeue_parked([1, 3]) == 2
    assert [p.seq for p in store.parked_changes(retry_only=True)] == [1, 3]
    assert await store.drop_parked([3]) == 1
    assert [p.seq for p in store.parked_changes(limit=1)] == [1]
    assert await store.drop_parked(None) == 2 and store.parked_count() == 0


async def test_chunk_index(store):
    await store.link_blob("r", D[1], 300)
    await store.put_chunk_list(D[1], "p1", [(0, 100, "c0"), (100, 200, "c1")])
    assert store.chunk_list(D[1], "p1") == [(0, 100, "c0"), (100, 200, "c1")]
    assert store.chunk_list(D[1], "p2") is None
    assert store.find_chunk("c1", "p1") == (D[1], 100, 200)
    assert store.find_chunk("c1", "p2") is None
    assert store.chunk_holders(["c0", "c9"], "p1") == [("c0", "r", D[1], 0, 100)]
    await store.put_chunk_list(D[1], "p1", [(0, 300, "c2")])  # replaced, not appended
    assert store.chunk_list(D[1], "p1") == [(0, 300, "c2")]
    await store.drop_chunk_list(D[1])
    assert store.chunk_list(D[1], "p1") is None


async def test_upload_sessions_caps_hold_across_replicas(backend):
    a, b = backend.replica(), backend.replica()
    await a.create_upload("u1", "r", "alice", max_per_owner=2, max_total=3)
    await b.create_upload("u2", "r", "alice", max_per_owner=2, max_total=3)
    with pytest.raises(UploadSessionLimit) as e:
        await a.create_upload("u3", "r", "alice", max_per_owner=2, max_total=3)
    assert e.value.scope == "identity"
    await b.create_upload("u4", "r", "bob", max_per_owner=2, max_total=3)
    with pytest.raises(UploadSessionLimit) as e:
        await a.create_upload("u5", "r", "carol", max_per_owner=2, max_total=3)
    assert e.value.scope == "total"
    assert a.upload_repo("u2") == "r" and b.upload_ids() == {"u1", "u2", "u4"}
    # touching never moves activity back
    await a.touch_uploads({"u1": time.time() + 100, "u2": time.time() - 50})
    assert sorted(b.expired_uploads(time.time() + 10)) == ["u2", "u4"]
    # alice's idle session is reclaimed for a new one (not the one kept in use)
    reclaimed = await b.create_upload("u6", "r", "alice", max_per_owner=2,
                                      reclaim_idle_before=time.time() + 200,
                                      keep=frozenset({"u1"}))
    assert reclaimed == "u2" and a.upload_ids() == {"u1", "u4", "u6"}
    await a.delete_uploads(["u1", "u4"])
    assert b.upload_ids() == {"u6"}


async def test_gc_snapshot_and_rechecked_deletions(backend):
    store = backend.replica()
    await store.link_blob("r", D[1], 10)
    await store.link_blob("r", D[2], 20)
    await store.put_manifest(record("r", D[0]), [D[1]], None)
    await store.put_manifest(record("r", D[3]), [D[1]], "keep")
    await store.create_upload("u1", "r")
    snap = await trio.to_thread.run_sync(store.gc_snapshot, "cursor", "parent")
    assert {m[1] for m in snap.manifests} == {D[0], D[3]}
    assert snap.tags == [("r", D[3])] and ("r", D[0], D[1]) in snap.refs
    assert {(l[0], l[1], l[2]) for l in snap.links} == {("r", D[1], 10), ("r", D[2], 20)}
    assert [u[0] for u in snap.uploads] == ["u1"] and snap.repositories == ["r"]
    assert {d for _, d in snap.outbox} == {D[0], D[3]}
    created = {m[1]: m[2] for m in snap.manifests}
    # the tagged one is kept however it is asked for
    assert await store.gc_delete_manifests("r", created) == [D[0]]
    assert await store.gc_unlink_blobs("r", [D[1], D[2]], time.time() + 1) == [D[2]]
    removed = []
    freed = await store.gc_delete_blobs([D[1], D[2]], lambda d: removed.append(d) or 20)
    assert removed == [D[2]] and freed == [(D[2], 20, 0)]
    assert await store.gc_delete_upload_rows(["u1", "nope"]) == 1
    assert await store.gc_drop_empty_repositories(["r"]) == []
    await store.delete_manifest("r", D[3])
    await store.unlink_blob("r", D[1])
    assert await store.gc_drop_empty_repositories(["r"]) == ["r"]


async def test_locks_refuse_inside_the_write_except_from_the_parent(backend):
    """A lock set at one replica refuses the write, tag delete and manifest delete made at
    another (the check reads the lock rows inside the write transaction); the parent's changes
    (origin "parent") are never refused; all attributes enabled removes the row."""
    a, b = backend.replica(), backend.replica()
    await a.put_manifest(record("r", D[0]), [], "t")
    await b.set_lock(RepositoryLock("r", "t", None, write_enabled=False, updated=1.0))
    assert a.locks("r") == [RepositoryLock("r", "t", None, write_enabled=False, updated=1.0)]
    assert a.locked_repositories() == ["r"]
    with pytest.raises(LockRefused) as e:
        await a.put_manifest(record("r", D[1]), [], "t")
    assert e.value.operation == "write" and a.resolve_tag("r", "t") == D[0]
    await a.put_manifest(record("r", D[2]), [], None)  # by digest: the tag lock is not asked
    await a.put_manifest(record("r", D[1]), [], "t", origin="parent")
    assert b.resolve_tag("r", "t") == D[1]
    await b.set_lock(RepositoryLock("r", "t", None, delete_enabled=False, updated=2.0))
    with pytest.raises(LockRefused) as e:
        await a.delete_tag("r", "t")
    assert e.value.operation == "delete"
    with pytest.raises(LockRefused):  # deleting the manifest would delete the locked tag
        await a.delete_manifest("r", D[1])
    assert a.resolve_tag("r", "t") == D[1] and a.get_manifest("r", D[1]) is not None
    await a.put_manifest(record("r", D[0]), [], "t")  # the write lock was replaced
    assert await a.delete_tag("r", "t", origin="parent")
    # a delete-locked manifest is refused and kept by garbage collection, untagged or not
    await b.set_lock(RepositoryLock("r", None, D[2], delete_enabled=False, updated=3.0))
    with pytest.raises(LockRefused):
        await a.delete_manifest("r", D[2])
    created = {m[1]: m[2] for m in
               (await trio.to_thread.run_sync(a.gc_snapshot, None, "parent")).manifests}
    assert await a.gc_delete_manifests("r", created) == sorted([D[0], D[1]])
    assert a.get_manifest("r", D[2]) is not None
    await b.set_lock(RepositoryLock("r", None, D[2], updated=4.0))
    await b.set_lock(RepositoryLock("r", "t", None, updated=4.0))
    assert a.locks("r") == [] and a.locked_repositories() == []
    assert await a.delete_manifest("r", D[2])
    ops = [c.op for c in b.changes_since(0, 100)]
    assert ops.count("lock") == 5


async def test_replace_locks_and_read_locked(backend):
    """replace_locks makes a repository's locks what the parent sent, logging one change only
    when they differed; read_locked answers from memory and follows a lock set anywhere."""
    a, b = backend.replica(), backend.replica()
    assert not a.read_locked("r")
    wanted = [RepositoryLock("r", None, None, read_enabled=False, updated=1.0),
              RepositoryLock("r", "t", None, write_enabled=False, updated=1.0),
              RepositoryLock("r", "u", None, updated=1.0)]  # unlocked: not stored
    head = a.change_bounds()[1]
    assert await a.replace_locks("r", wanted)
    assert not await a.replace_locks("r", list(reversed(wanted)))
    assert [(c.op, c.origin) for c in a.changes_since(head, 100)] == [("lock", "parent")]
    assert sorted(a.locks("r"), key=lambda l: l.ref) == wanted[:2]
    assert a.read_locked("r") and not a.read_locked("other")
    assert await a.replace_locks("r", [])
    assert a.locks("r") == [] and not a.read_locked("r")
    if backend.kind == "postgres":  # replicas: a lock written at b reaches a's memory
        a.engine.start_listening()
        assert not a.read_locked("s")
        await b.set_lock(RepositoryLock("s", None, None, read_enabled=False, updated=2.0))
        with trio.fail_after(30):
            while not a.read_locked("s"):
                await trio.sleep(0.05)
        await b.replace_locks("s", [])
        with trio.fail_after(30):
            while a.read_locked("s"):
                await trio.sleep(0.05)


async def test_blob_repositories_and_blobs_size(store):
    await store.link_blob("r1", D[1], 10)
    await store.link_blob("r1", D[2], 20)
    await store.link_blob("r2", D[1], 10)
    await store.put_manifest(record("r1", D[0]), [D[1], D[2]], "t")
    assert sorted(store.blob_repositories(D[1], 10)) == ["r1", "r2"]
    assert len(store.blob_repositories(D[1], 1)) == 1
    assert store.blob_repositories(D[3], 10) == []
    assert store.blobs_size("r1", D[0]) == 30
    assert store.blobs_size("r1", D[5]) == 0 and store.blobs_size("r2", D[0]) == 0


async def test_control_store_transactions_and_generation(backend):
    a, b = backend.control(), backend.control()
    before = a.generation

    def put(txn):
        txn.put("token", {"name": "CI", "actions": ["x"]})
        return txn.count("token")

    assert await a.transact(put) == 1
    assert a.generation > before
    assert b.get("token", "ci") == {"name": "CI", "actions": ["x"]}  # case-insensitive names
    assert [d["name"] for d in b.list("token")] == ["CI"]
    unchanged = a.generation
    assert await a.transact(lambda txn: txn.get("token", "nope")) is None
    assert a.generation == unchanged  # a transaction that wrote nothing

    def fail(txn):
        txn.delete("token", "ci")
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await b.transact(fail)
    assert a.count("token") == 1
    assert await b.transact(lambda txn: txn.delete("token", "Ci"))
    assert a.count("token") == 0
    if backend.kind == "postgres":  # the other replica's caches follow within the re-read
        with trio.fail_after(10):
            while a.generation < b.generation:
                await trio.sleep(0.05)
    # A connected registry's status report moves `generation` only; a token write moves both
    # (the verified-credential cache keys on credentials_generation, auth/identity.py).
    creds, gen = b.credentials_generation, b.generation
    await b.transact(lambda txn: txn.put(CONNECTED_REGISTRY, {"name": "edge"}))
    assert b.generation > gen and b.credentials_generation == creds
    await b.transact(lambda txn: txn.put("token", {"name": "t2"}))
    assert b.credentials_generation > creds
    if backend.kind == "postgres":
        with trio.fail_after(10):
            while a.credentials_generation < b.credentials_generation:
                await trio.sleep(0.05)


def test_failed_logins_are_counted_across_replicas(postgres_server):
    """Shared throttling (auth/shared_ratelimit.py): failures at two replicas add up to one
    lockout that both enforce; a success forgets the pair everywhere."""
    from connreg.auth.shared_ratelimit import SharedFailureLimiter
    from connreg.storage.postgres_engine import PostgresEngine

    url = postgres_server.create_database(f"suite{next(_names)}")
    engines = [PostgresEngine(url), PostgresEngine(url)]
    try:
        a, b = (SharedFailureLimiter(e, limit=3, window=60, max_lockout=600) for e in engines)
        for limiter in (a, a):
            assert limiter.reserve("Guessed", "10.0.0.9") is None
            assert limiter.failed("Guessed", "10.0.0.9") is None
        assert b.reserve("guessed", "10.0.0.9") is None  # names are case-insensitive
        assert b.failed("guessed", "10.0.0.9") == 60  # the third failure, at the other replica
        refusal = a.reserve("guessed", "10.0.0.9")
        assert refusal is not None and 0 < refusal.retry_after <= 60
        assert a.retry_after("guessed", "10.0.0.9") is not None
        assert a.reserve("guessed", "10.0.0.8") is None  # another source is not locked out
        a.succeeded("guessed", "10.0.0.8")
        assert b.reserve("other", "10.0.0.9") is None  # nor another account
        b.succeeded("other", "10.0.0.9")
        engines[0].execute("UPDATE login_lockouts SET locked_until = 0")  # the lockout ends
        assert b.reserve("guessed", "10.0.0.9") is None
        b.succeeded("guessed", "10.0.0.9")
        assert engines[1].execute("SELECT count(*) FROM login_lockouts")[0][0] == 0
    finally:
        for e in engines:
            e.close()
