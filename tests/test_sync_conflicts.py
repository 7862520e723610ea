"""The pusher's tag update races a move at the parent (§5 conflicts: the parent wins).

The parent is a real `connreg serve` process; the child's sync objects run in this process so
the test can move the parent's tag in the gap between the pusher's look (HEAD) and its write —
the window a plain check-then-PUT would lose the parent's move in.
"""

from __future__ import annotations

import httpx
import trio

from connreg.config import Settings
from connreg.content import store_manifest
from connreg.registry import Registry
from connreg.sync.puller import Puller
from connreg.sync.pusher import Pusher
from connreg.sync.remote import ParentClient, TagMoved
from connreg.sync.state import SyncState, last_known_key
from connreg.testing.oci import OCI_MANIFEST, make_image
from helpers import push_blob, push_image

REPO = "race/app"


def _push_by_digest(client: httpx.Client, image) -> None:
    for blob in image.blobs():
        push_blob(client, REPO, blob)
    r = client.put(f"/v2/{REPO}/manifests/{image.digest}", content=image.manifest,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text


async def test_a_parent_move_during_the_push_is_not_overwritten(node, tmp_path):
    v0, ours, theirs = (make_image([3000 + i, 500]) for i in range(3))
    with httpx.Client(base_url=node.url, timeout=30) as http:
        push_image(http, REPO, v0, "latest")
        _push_by_digest(http, ours)
        _push_by_digest(http, theirs)

    reg = Registry(Settings(data_dir=tmp_path / "child"))
    parent = ParentClient(node.url, auth=None)
    try:
        state = SyncState(reg.meta)
        puller = Puller(reg, parent, state)
        pusher = Pusher(reg, parent, state, puller)
        # the child agreed on v0 with its parent, then a client moved latest to `ours` here
        await puller.set_tag(REPO, "latest", v0.digest)
        await puller.ensure_manifest(REPO, ours.digest)
        await store_manifest(reg, REPO, "latest", ours.manifest, OCI_MANIFEST)

        # an operator moves latest at the parent after the pusher looked, before it writes
        real_put = parent.put_manifest
        moves = []

        async def put_after_a_concurrent_move(*args, **kwargs):
            if not moves:
                async with httpx.AsyncClient(base_url=node.url) as other:
                    r = await other.put(f"/v2/{REPO}/manifests/latest", content=theirs.manifest,
                                        headers={"Content-Type": OCI_MANIFEST})
                    moves.append(r.status_code)
            return await real_put(*args, **kwargs)

        parent.put_manifest = put_after_a_concurrent_move
        await pusher._move_tag(REPO, "latest", ours.digest)

        assert moves == [201]
        assert await parent.head_manifest(REPO, "latest") == theirs.digest  # the parent won
        assert reg.meta.resolve_tag(REPO, "latest") == theirs.digest  # and the child follows
        assert reg.meta.get_manifest(REPO, ours.digest) is not None  # ours kept by digest
        assert state.get(last_known_key(REPO, "latest")) == theirs.digest
        [conflict] = [d for d in state.details if d.code == "SYNC_CONFLICT"]
        assert ours.digest in conflict.description and theirs.digest in conflict.description

        # the conditional write itself, as the parent sees it
        try:
            await real_put(REPO, "latest", ours.manifest, OCI_MANIFEST, if_tag_is=v0.digest)
        except TagMoved:
            pass
        else:
            raise AssertionError("a stale If-Match was accepted")
        await real_put(REPO, "latest", ours.manifest, OCI_MANIFEST, if_tag_is=theirs.digest)
        assert await parent.head_manifest(REPO, "latest") == ours.digest
    finally:
        await parent.aclose()
        reg.close()


async def test_a_conflict_seen_by_both_directions_is_reported_once(node, tmp_path):
    """The feed brings the parent's move while the outbox pushes ours: the puller and the
    pusher both detect the conflict, milliseconds apart. One SYNC_CONFLICT, one correlation id."""
    v0, ours, theirs = (make_image([4000 + i, 600]) for i in range(3))
    with httpx.Client(base_url=node.url, timeout=30) as http:
        push_image(http, REPO, v0, "twice")
        _push_by_digest(http, ours)
        push_image(http, REPO, theirs, "twice")  # the parent's move

    reg = Registry(Settings(data_dir=tmp_path / "child"))
    parent = ParentClient(node.url, auth=None)
    try:
        state = SyncState(reg.meta)
        puller = Puller(reg, parent, state)
        pusher = Pusher(reg, parent, state, puller)
        await puller.set_tag(REPO, "twice", v0.digest)  # agreed on v0 ...
        await puller.ensure_manifest(REPO, ours.digest)
        await store_manifest(reg, REPO, "twice", ours.manifest, OCI_MANIFEST)  # ... moved here

        # The pusher's look at the parent returns right after the puller reported: the
        # interleaving in which each direction used to report the conflict on its own.
        puller_reported = trio.Event()
        real_conflict, real_head = state.conflict, parent.head_manifest

        def conflict(*args):
            detail = real_conflict(*args)
            puller_reported.set()
            return detail

        async def head_after_the_puller(repo, reference):
            answer = await real_head(repo, reference)
            if reference == "twice":
                await puller_reported.wait()
            return answer

        state.conflict = conflict
        parent.head_manifest = head_after_the_puller
        async with trio.open_nursery() as nursery:
            nursery.start_soon(puller.set_tag, REPO, "twice", theirs.digest)
            nursery.start_soon(pusher._move_tag, REPO, "twice", ours.digest)

        assert reg.meta.resolve_tag(REPO, "twice") == theirs.digest
        assert await real_head(REPO, "twice") == theirs.digest  # the parent kept its move
        reported = [d for d in state.details if d.code == "SYNC_CONFLICT"]
        assert len(reported) == 1, [d.description for d in reported]
        assert ours.digest in reported[0].description
        assert theirs.digest in reported[0].description
    finally:
        await parent.aclose()
        reg.close()
