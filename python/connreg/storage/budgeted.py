"""The blob store with every write held to the disk budget (a wrapper, like a rate limiter).

`BudgetedBlobStore` wraps the Rust `BlobStore`: writes (`put_bytes`, and `write`/`copy_from`/
`copy_many`/`commit` of its uploads) are checked with `StorageBudget.check` before a byte is
written, and their sizes move the budget's running total; deletes and aborts give it back.
Everything else (reads, listings, new methods) passes through unchanged.

One rule for running out of room, whoever writes (a client's upload, a sync fetch, a child's
chunk plan): the upload is discarded, its file removed, and `StorageFull` raised. A partial
upload would hold the space the node needs to recover, and nothing can finish it while the
disk is full.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from connreg import _core
from connreg.storage.budget import StorageBudget, StorageFull, size_text

T = TypeVar("T")


class BudgetedBlobStore:
    def __init__(self, inner: _core.BlobStore, budget: StorageBudget):
        self._inner = inner
        self.budget = budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"Budgeted({self._inner!r})"

    @property
    def unbudgeted(self) -> _core.BlobStore:
        """The wrapped store itself, for the Rust functions that take a `_core.BlobStore`
        argument (`encode_chunks`); they only read."""
        return self._inner

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> str:
        digest = expected_digest or _core.digest_bytes(data)
        if self._inner.exists(digest):  # verifies, writes nothing
            return self._inner.put_bytes(data, expected_digest)
        self.budget.check(len(data), "this blob")
        try:
            stored = self._inner.put_bytes(data, expected_digest)
        except _core.StorageFull:  # the store removed its staging file
            raise self.budget.out_of_space(f"storing a {size_text(len(data))} blob",
                                           len(data)) from None
        self.budget.added(len(data))
        return stored

    def put_many(self, items: list[tuple[bytes, str]]) -> list[str]:
        """Many small blobs `(bytes, expected digest)` at once (sync's object batches): the
        fsyncs of the batch together where the store can (the local store; one by one
        elsewhere), the new bytes held to the budget as one write. A mismatch stores nothing."""
        put_many = getattr(self._inner, "put_many", None)
        if put_many is None:  # a store without it (S3): each blob as its own put
            return [self.put_bytes(data, digest) for data, digest in items]
        new = {digest: len(data) for data, digest in items if not self._inner.exists(digest)}
        needed = sum(new.values())
        self.budget.check(needed, f"{len(new)} blobs")
        try:
            stored = put_many(items)
        except _core.StorageFull:  # the store removed its staging files
            raise self.budget.out_of_space(f"storing {len(new)} blobs ({size_text(needed)})",
                                           needed) from None
        self.budget.added(needed)
        return stored

    def delete(self, digest: str) -> bool:
        size = self._inner.size(digest)
        removed = self._inner.delete(digest)
        if removed and size:
            self.budget.released(size)
        return removed

    def upload(self, upload_id: str) -> "BudgetedUpload":
        try:
            return BudgetedUpload(self._inner.upload(upload_id), self)
        except _core.StorageFull:  # no room even for the empty file (or no inode left)
            raise self.budget.out_of_space("opening an upload file") from None

    def abort_upload(self, upload_id: str) -> None:
        self.discard_upload(upload_id)

    def discard_upload(self, upload_id: str) -> int:
        """Remove an upload and its file; returns the bytes given back."""
        size = self._inner.upload_size(upload_id) or 0
        self._inner.abort_upload(upload_id)
        if size:
            self.budget.released(size)
        return size

    def purge_stale_uploads(self, max_age_seconds: float) -> int:
        purged = self._inner.purge_stale_uploads(max_age_seconds)
        if purged:
            self.budget.recount()  # the purge does not say how many bytes it removed
        return purged


class BudgetedUpload:
    """An upload whose appends are checked against the budget (see the module docstring)."""

    def __init__(self, inner: _core.Upload, store: BudgetedBlobStore):
        self._inner = inner
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"Budgeted({self._inner!r})"

    @property
    def size(self) -> int:
        return self._inner.size

    def write(self, data: bytes) -> int:
        return self._append(len(data), lambda: self._inner.write(data))

    def copy_from(self, digest: str, offset: int, length: int) -> int:
        return self._append(length, lambda: self._inner.copy_from(digest, offset, length))

    def copy_many(self, ranges: list[tuple[str, int, int]]) -> int:
        return self._append(sum(max(n, 0) for _, _, n in ranges),
                            lambda: self._inner.copy_many(ranges))

    def commit(self, expected_digest: str) -> str:
        size = self._inner.size
        existed = self._store.exists(expected_digest)
        try:
            digest = self._inner.commit(expected_digest)
        except _core.StorageFull:  # fsync or the blob's directory found no room
            removed = self._discard()
            raise self._store.budget.out_of_space(
                f"committing a {size_text(size)} upload; the upload was discarded "
                f"({size_text(removed)} removed)", size) from None
        if existed:  # deduplicated: the upload's file was removed, nothing was added
            self._store.budget.released(size)
        return digest

    def abort(self) -> None:
        self._discard()

    def _append(self, n: int, write: Callable[[], T]) -> T:
        budget = self._store.budget
        held = self._inner.size
        try:
            budget.check(n, "this upload", holding=held)
        except StorageFull as exc:
            if held:  # a stream crossing the budget midway: stop it, give its bytes back
                removed = self._discard()
                exc.message += f"; the upload was discarded ({size_text(removed)} removed)"
            raise
        try:
            result = write()
        except _core.StorageFull:
            removed = self._discard()
            raise budget.out_of_space(
                f"writing an upload; the upload was discarded ({size_text(removed)} removed)",
                n) from None
        budget.added(n)
        return result

    def _discard(self) -> int:
        return self._store.discard_upload(self._inner.upload_id)
