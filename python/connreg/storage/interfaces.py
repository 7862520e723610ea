"""The storage protocols every backend implements. Nothing here knows about HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ManifestRecord:
    repo: str
    digest: str
    media_type: str
    size: int
    subject: str | None = None
    artifact_type: str | None = None
    annotations_json: str | None = None


@dataclass(frozen=True)
class Referrer:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations_json: str | None


@dataclass(frozen=True)
class Change:
    """One entry of a node's change log (its children's feed, and its own outbox)."""

    seq: int
    time: float
    repo: str
    op: str  # "manifest" (stored, and tag set when tag is given) | "delete_manifest" | "delete_tag"
    digest: str | None
    tag: str | None
    prev: str | None  # the digest a tag pointed at before this change
    origin: str  # "local" | "parent" | "child:<name>"

    def to_json(self) -> dict:
        return {"seq": self.seq, "time": self.time, "repo": self.repo, "op": self.op,
                "digest": self.digest, "tag": self.tag, "prev": self.prev, "origin": self.origin}


@dataclass(frozen=True)
class ParkedChange:
    """An outbox entry the parent refused for good (403, 400, 404 …), set aside so the rest of
    the outbox moves on; kept until it is retried successfully, superseded or dropped."""

    seq: int  # the change-log entry's sequence number
    repo: str
    op: str
    tag: str | None
    digest: str | None  # for a tag deletion: the digest the tag pointed at
    origin: str
    method: str  # the refused request
    url: str
    status: int
    code: str | None  # the parent's OCI error code, when its answer had a body
    message: str
    parked_at: float
    attempts: int = 1
    retry: bool = False  # re-queued: the pusher sends it again, before the outbox

    def change(self) -> Change:
        """The change-log entry to send again (for a tag deletion, `digest` kept the digest
        the tag pointed at: the entry's `prev`)."""
        if self.op == "delete_tag":
            return Change(self.seq, self.parked_at, self.repo, self.op, None, self.tag,
                          self.digest, self.origin)
        return Change(self.seq, self.parked_at, self.repo, self.op, self.digest, self.tag,
                      None, self.origin)

    @property
    def reason(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"{self.method} {self.url} answered {self.status}{code}: {self.message}"

    def to_json(self) -> dict:
        return {"seq": self.seq, "repository": self.repo, "op": self.op, "tag": self.tag,
                "digest": self.digest, "origin": self.origin, "method": self.method,
                "url": self.url, "status": self.status, "code": self.code,
                "message": self.message, "reason": self.reason,
                "parkedAt": self.parked_at, "attempts": self.attempts, "retry": self.retry}


@dataclass(frozen=True)
class TagPrecondition:
    """What a tag must point at for a conditional update (HTTP `If-Match`/`If-None-Match`).

    Checked by the metadata store in the same transaction as the update, so two writers racing
    for one tag cannot both succeed: the sync pusher relies on this to never overwrite a tag the
    parent moved after it looked.
    `if_match`: the tag must exist and point at one of these digests ("*": at anything).
    `if_none_match`: the tag must not point at any of these ("*": must not exist).
    """

    if_match: frozenset[str] | None = None
    if_none_match: frozenset[str] | None = None

    def holds(self, current: str | None) -> bool:
        if self.if_match is not None:
            if current is None or ("*" not in self.if_match and current not in self.if_match):
                return False
        if self.if_none_match is not None and current is not None:
            if "*" in self.if_none_match or current in self.if_none_match:
                return False
        return True


class UploadSessionLimit(Exception):
    """Starting one more upload session would pass a cap; nothing was written.

    `scope` is "identity" (sessions of `owner`) or "total" (sessions of the node)."""

    def __init__(self, scope: str, owner: str, limit: int):
        super().__init__(f"{scope} cap of {limit} open upload sessions reached ({owner})")
        self.scope = scope
        self.owner = owner
        self.limit = limit


class TagPreconditionFailed(Exception):
    """A conditional tag update found the tag somewhere else; nothing was written."""

    def __init__(self, tag: str, current: str | None):
        super().__init__(f"tag {tag} points at {current or 'nothing'}")
        self.tag = tag
        self.current = current


class BlobGone(Exception):
    """A blob's file vanished (garbage collection) between a caller's look and its write, so
    linking it or recording a manifest stored as it would leave a dangling row; nothing was
    written. The caller stores the bytes again (or asks its client to)."""

    def __init__(self, digest: str):
        super().__init__(f"blob {digest} was removed by garbage collection meanwhile")
        self.digest = digest


class ReferencesGone(Exception):
    """Blobs or child manifests a manifest references were removed (garbage collection) after
    it was validated; nothing was written."""

    def __init__(self, missing: list[str]):
        super().__init__(f"referenced content removed meanwhile: {', '.join(missing)}")
        self.missing = missing


@dataclass(frozen=True)
class GcSnapshot:
    """One consistent view of what garbage collection decides on (rows as plain tuples)."""

    manifests: list[tuple[str, str, float, str | None]]  # repo, digest, created, subject
    tags: list[tuple[str, str]]  # repo, digest
    refs: list[tuple[str, str, str]]  # repo, manifest digest, referenced digest
    links: list[tuple[str, str, int, float]]  # repo, digest, size, linked (0: before tracking)
    uploads: list[tuple[str, float]]  # upload session id, created
    chunked: list[tuple[str, int]]  # digests the chunk index has a list for, rows each
    outbox: list[tuple[str, str]]  # repo, digest of manifests not yet acknowledged upstream
    repositories: list[str]


class BlobStore(Protocol):
    """Content-addressed bytes. Implemented natively by `connreg._core.BlobStore`."""

    def path_for(self, digest: str) -> str: ...
    def exists(self, digest: str) -> bool: ...
    def size(self, digest: str) -> int | None: ...
    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> str: ...
    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes: ...
    def delete(self, digest: str) -> bool: ...
    def list_digests(self) -> list[str]: ...
    def upload(self, upload_id: str): ...
    def upload_exists(self, upload_id: str) -> bool: ...
    def upload_size(self, upload_id: str) -> int | None: ...
    def abort_upload(self, upload_id: str) -> None: ...
    def purge_stale_uploads(self, max_age_seconds: float) -> int: ...


class MetadataStore(Protocol):
    """Repositories, per-repository blob links, manifests, tags, referrers, upload sessions.

    Reads are cheap and synchronous; writes are async because a backend may block (fsync,
    network) and must not stall the event loop.
    """

    # repositories
    def repository_exists(self, repo: str) -> bool: ...
    def list_repositories(self, n: int | None, last: str | None) -> list[str]: ...

    # blobs linked into a repository (what GET /v2/<repo>/blobs/<digest> may serve)
    def linked_blob_size(self, repo: str, digest: str) -> int | None: ...
    def any_blob_size(self, digest: str) -> int | None: ...
    def blob_repositories(self, digest: str, limit: int) -> list[str]: ...
    async def link_blob(self, repo: str, digest: str, size: int) -> None: ...
    async def link_blobs(self, links: list[tuple[str, str, int]]) -> None: ...  # all or none
    async def unlink_blob(self, repo: str, digest: str) -> bool: ...

    # manifests and tags
    def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None: ...
    def resolve_tag(self, repo: str, tag: str) -> str | None: ...
    def list_tags(self, repo: str, n: int | None, last: str | None) -> list[str]: ...
    # `precondition` (tags only) raises TagPreconditionFailed when it does not hold
    async def put_manifest(self, record: ManifestRecord, references: list[str],
                           tag: str | None, origin: str = "local",
                           precondition: TagPrecondition | None = None) -> None: ...
    async def delete_manifest(self, repo: str, digest: str, origin: str = "local") -> bool: ...
    async def delete_tag(self, repo: str, tag: str, origin: str = "local",
                         precondition: TagPrecondition | None = None) -> bool: ...
    def referrers(self, repo: str, subject: str, artifact_type: str | None) -> list[Referrer]: ...
    def manifest_digests(self, repo: str) -> list[str]: ...
    async def unlink_all_blobs(self, repo: str) -> int: ...

    # image locks (connreg/locks, docs/locks.md): checked inside the writes above
    def locks(self, repo: str) -> list: ...
    def locked_repositories(self) -> list[str]: ...
    def read_locked(self, repo: str) -> bool: ...
    async def set_lock(self, lock, origin: str = "local") -> None: ...
    async def replace_locks(self, repo: str, locks: list, origin: str = "parent") -> bool: ...
    def blobs_size(self, repo: str, digest: str) -> int: ...

    # change log: written with every manifest/tag change, in the same transaction
    def changes_since(self, cursor: int, limit: int,
                      exclude_origin: str | None = None) -> list[Change]: ...
    def change_bounds(self) -> tuple[int, int]: ...
    async def prune_changes(self, older_than: float, keep_from: int | None = None) -> int: ...
    async def wait_for_change(self, after: int, timeout: float) -> None: ...
    def get_state(self, key: str) -> str | None: ...
    async def set_state(self, key: str, value: str | None) -> None: ...

    # parked outbox entries (sync/parked.py): refused for good by the parent, set aside
    async def park_change(self, entry: ParkedChange) -> None: ...  # insert or replace by seq
    def parked_changes(self, repo: str | None = None, retry_only: bool = False,
                       limit: int | None = None) -> list[ParkedChange]: ...  # in seq order
    def parked_count(self) -> int: ...
    # None: every entry; returns how many were re-queued / dropped
    async def requeue_parked(self, seqs: list[int] | None) -> int: ...
    async def drop_parked(self, seqs: list[int] | None) -> int: ...

    # chunk index (delta transfer); `params` names the chunking parameters used
    def chunk_list(self, digest: str, params: str) -> list[tuple[int, int, str]] | None: ...
    def find_chunk(self, chunk_id: str, params: str) -> tuple[str, int, int] | None: ...
    def chunk_holders(self, chunk_ids: list[str], params: str
                      ) -> list[tuple[str, str, str, int, int]]: ...
    async def put_chunk_list(self, digest: str, params: str,
                             chunks: list[tuple[int, int, str]]) -> None: ...
    async def drop_chunk_list(self, digest: str) -> None: ...

    # upload sessions (the bytes live in the BlobStore under the same id)
    def upload_repo(self, upload_id: str) -> str | None: ...
    # `owner` (who started it) counts toward the caps; UploadSessionLimit beyond one, unless
    # (per owner) one of the owner's sessions idle since `reclaim_idle_before` and not in
    # `keep` can be ended instead: its row goes in the same transaction, its id is returned
    async def create_upload(self, upload_id: str, repo: str, owner: str = "",
                            max_per_owner: int | None = None, max_total: int | None = None,
                            reclaim_idle_before: float | None = None,
                            keep: frozenset[str] = frozenset()) -> str | None: ...
    async def delete_upload(self, upload_id: str) -> None: ...
    async def delete_uploads(self, upload_ids: list[str]) -> None: ...
    def upload_ids(self) -> set[str]: ...
    async def touch_uploads(self, touched: dict[str, float]) -> None: ...  # id → last activity
    def expired_uploads(self, untouched_since: float) -> list[str]: ...

    # garbage collection (gc/): a snapshot to decide on, then deletions that re-check each
    # decision in their own transaction and never enter the change log
    def gc_snapshot(self, outbox_cursor_key: str | None, parent_origin: str) -> GcSnapshot: ...
    async def gc_delete_manifests(self, repo: str, candidates: dict[str, float]) -> list[str]: ...
    async def gc_unlink_blobs(self, repo: str, digests: list[str], cut: float) -> list[str]: ...
    async def gc_delete_blobs(self, digests: list[str], remove) -> list[tuple[str, int, int]]: ...
    async def gc_drop_chunk_lists(self, digests: list[str]) -> int: ...
    async def gc_delete_upload_rows(self, upload_ids: list[str]) -> int: ...
    async def gc_drop_empty_repositories(self, names: list[str]) -> list[str]: ...

    def close(self) -> None: ...
