"""In-process checks of the audit trail's file handling and forwarding, and of lock policy:
torn lines after a crash, day files and retention, pages, resends, and which operations each
lock attribute refuses."""

from __future__ import annotations

import json
import os
import time

import pytest
import trio

from connreg.audit.forward import AuditForwarder, receive
from connreg.audit.log import AuditLog, Position
from connreg.locks import policy
from connreg.locks.model import RepositoryLock


class State:
    """The two sync-state calls the forwarder and the intake use."""

    def __init__(self):
        self.values = {}

    def get_state(self, key):
        return self.values.get(key)

    async def set_state(self, key, value):
        self.values[key] = value


def _events(log: AuditLog, n: int, **fields) -> None:
    for i in range(n):
        log.record("push", actor="cibot", source="10.0.0.1", outcome="success",
                   repository=f"team/r{i % 3}", tag=f"v{i}", **fields)


def test_a_torn_last_line_is_skipped_and_the_next_event_stays_whole(tmp_path):
    log = AuditLog(tmp_path, None)
    _events(log, 3)
    os.write(log._fd, b'{"time":"2026-12-03T10:00:00.000Z","event":"pu')  # a power cut mid-line
    log.close()
    again = AuditLog(tmp_path, None)  # restart: the fragment becomes a line of its own
    again.record("delete", actor="admin", source="x", outcome="success", repository="team/r0")
    events, next_page = again.query(since=0)
    assert [e["event"] for e in events] == ["push", "push", "push", "delete"]
    assert next_page is None
    lines = (tmp_path / f"audit-{time.strftime('%Y%m%d', time.gmtime())}.jsonl").read_bytes()
    assert lines.endswith(b"\n") and lines.count(b"\n") == 5


def test_b_pages_filters_recent_and_retention(tmp_path):
    log = AuditLog(tmp_path, "edge1", retention_days=30)
    _events(log, 10)
    old = tmp_path / "audit-20000101.jsonl"
    old.write_text(json.dumps({"time": "2000-01-01T00:00:00.000Z", "event": "pull"}) + "\n")
    page, token = log.query(since=time.time() - 60, limit=4)
    assert [e["tag"] for e in page] == ["v0", "v1", "v2", "v3"] and token
    rest, end = log.query(limit=100, page=token)
    assert [e["tag"] for e in rest] == [f"v{i}" for i in range(4, 10)] and end is None
    assert len(log.query(since=0, repository="team/r1")[0]) == 3
    assert log.query(since=0, registry="-")[0] == [{"time": "2000-01-01T00:00:00.000Z",
                                                     "event": "pull"}]  # no registry: the root
    assert [e["tag"] for e in log.recent(2)] == ["v9", "v8"]
    assert log.apply_retention() == 1 and not old.exists()
    with pytest.raises(ValueError):
        Position.parse("../../etc:1")


def test_c_forwarding_is_acknowledged_once_and_resends_are_not_stored_twice(tmp_path):
    async def main():
        child = AuditLog(tmp_path / "child", "edge1")
        parent = AuditLog(tmp_path / "parent", None)
        child_state, parent_state = State(), State()
        forwarder = AuditForwarder(child, child_state)
        _events(child, 700)
        child.record("push", actor="x", source="y", outcome="success", registry_spoof=1)
        allowed = lambda name: name in ("edge1", "edge2")
        batch = forwarder.batch()
        assert len(batch["events"]) == 500 and forwarder.behind
        answer = {"audit": await receive(parent, parent_state, batch, "edge1", allowed)}
        # the answer was lost: the same batch again, acknowledged, not stored twice
        assert forwarder.batch() == batch
        again = await receive(parent, parent_state, batch, "edge1", allowed)
        assert again == {"acknowledged": batch["to"], "stored": 0}
        assert await forwarder.acknowledged(batch, answer)
        second = forwarder.batch()
        assert len(second["events"]) == 201 and not forwarder.behind
        # an event claiming a registry outside the reporter's subtree is dropped
        second["events"][-1]["registry"] = "elsewhere"
        ack = await receive(parent, parent_state, second, "edge1", allowed)
        assert ack["stored"] == 200
        assert await forwarder.acknowledged(second, {"audit": ack})
        assert forwarder.batch() is None
        stored, _ = parent.query(since=0, limit=1000)
        assert len(stored) == 700 and {e["registry"] for e in stored} == {"edge1"}
        # an older parent answers without `audit`: nothing moves, offered again later
        _events(child, 1)
        pending = forwarder.batch()
        assert not await forwarder.acknowledged(pending, {"recorded": ["edge1"]})
        assert forwarder.batch() is None
    trio.run(main)


def test_d_lock_policy():
    tag_lock = RepositoryLock("r", "v1", None, write_enabled=False, delete_enabled=False)
    digest_lock = RepositoryLock("r", None, "sha256:a", delete_enabled=False)
    rows = [tag_lock, digest_lock]
    assert policy.refuse_write(rows, "r", "v1", "sha256:b", "sha256:a").lock == tag_lock
    assert policy.refuse_write(rows, "r", "v2", "sha256:b", None) is None
    assert policy.refuse_write(rows, "r", "v2", "sha256:b", "sha256:a") is None  # write ok on a
    assert policy.refuse_tag_delete(rows, "r", "v1", "sha256:x").lock == tag_lock
    assert policy.refuse_tag_delete(rows, "r", "v3", "sha256:a").lock == digest_lock
    assert policy.refuse_manifest_delete(rows, "r", "sha256:c", ["v1"]).lock == tag_lock
    assert policy.refuse_manifest_delete(rows, "r", "sha256:c", []) is None
    repo_lock = RepositoryLock("r", None, None, read_enabled=False)
    refused = policy.refuse_read([repo_lock], "r", None, None)
    assert refused.registry_error().status == 403 and "readEnabled=false" in str(refused)
    assert policy.refuse_write(rows, "r", "v1", "sha256:b", "sha256:a"
                               ).registry_error().status == 405


def test_e_a_429_is_busy_not_unreachable():
    from connreg.sync.remote import ParentBusy, ParentUnavailable, _transient

    assert isinstance(_transient(429, "GET x"), ParentBusy)
    assert isinstance(_transient(429, "GET x"), ParentUnavailable)  # still retried the same way
    assert not isinstance(_transient(503, "GET x"), ParentBusy)


def test_f_an_edges_childs_events_relay_to_the_root(tmp_path):
    """edge11 (child of edge1) → edge1 → root: the root stores them as edge11's."""
    async def main():
        leaf, middle, root = (AuditLog(tmp_path / n, reg) for n, reg in
                              (("leaf", "edge11"), ("middle", "edge1"), ("root", None)))
        leaf_state, middle_state, root_state = State(), State(), State()
        leaf.record("push", actor="cibot", source="10.0.0.9", outcome="success",
                    repository="team/app", tag="v1")
        middle.record("delete", actor="admin", source="10.0.0.8", outcome="success",
                      repository="team/app", tag="old")
        batch = AuditForwarder(leaf, leaf_state).batch()
        await receive(middle, middle_state, batch, "edge11", lambda n: n == "edge11")
        up = AuditForwarder(middle, middle_state).batch()
        await receive(root, root_state, up, "edge1", lambda n: n in ("edge1", "edge11"))
        stored, _ = root.query(since=0)
        assert {(e["registry"], e["event"], e["actor"]) for e in stored} == {
            ("edge1", "delete", "admin"), ("edge11", "push", "cibot")}
        assert root.query(since=0, registry="edge11")[0][0]["tag"] == "v1"
    trio.run(main)


def test_g_reachable_again_only_after_an_outage_and_429_is_not_an_outage(caplog):
    """The log lines of sync/service.py `_guarded`/`_online`, with a mock clock."""
    import logging

    import trio.testing

    from connreg.sync.remote import ParentBusy, ParentRefused, ParentUnavailable
    from connreg.sync.service import SyncService
    from connreg.sync.state import SyncState

    service = SyncService.__new__(SyncService)
    service.state = SyncState(State())
    service._unreachable = False

    async def failing_once(exc):
        raised = []

        async def loop():
            if not raised:
                raised.append(exc)
                raise exc
        await service._guarded("up", loop)

    async def main():
        caplog.set_level(logging.INFO, logger="connreg.sync")
        await failing_once(ParentRefused(403, "refused", method="PUT", url="/v2/x"))
        for _ in range(3):
            service._online()  # the status loop, every 5 s, while up sync is refused
        assert "parent reachable again" not in caplog.text
        await failing_once(ParentBusy("GET /connreg/v1/sync/changes: HTTP 429"))
        assert "asks to slow down" in caplog.text and "unreachable" not in caplog.text
        assert service.state.connection_state != "Offline"
        await failing_once(ParentUnavailable("GET x: connection refused"))
        assert service.state.connection_state == "Offline"
        service._online()
        service._online()
        assert caplog.text.count("parent reachable again") == 1
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
