"""Which operations a repository's locks refuse. Pure functions over the lock rows of one
repository, so the metadata store can decide inside the write transaction that changes a tag
or manifest (a lock set meanwhile is never missed), and reads can decide from the same rows.

The attributes combine: an operation on a tag or manifest is allowed only if the repository,
the tag and the manifest the tag points at all allow it (as ACR's repository-level attributes
cover every image in the repository).

Writes the parent sends down (origin "parent") are never refused: the parent enforced its own
locks when the change was made there, and a mirror must follow it.
"""

from __future__ import annotations

from connreg.locks.model import LockRefused, RepositoryLock

EXEMPT_ORIGIN = "parent"


def _find(rows: list[RepositoryLock], tag: str | None = None,
          digest: str | None = None) -> RepositoryLock | None:
    for row in rows:
        if row.tag == tag and row.digest == digest:
            return row
    return None


def _first(candidates, attribute: str) -> RepositoryLock | None:
    return next((c for c in candidates if c is not None and not getattr(c, attribute)), None)


def refuse_write(rows: list[RepositoryLock], repo: str, tag: str | None, digest: str,
                 prev: str | None) -> LockRefused | None:
    """A manifest stored (by digest, or under `tag`, which pointed at `prev`). Called only for
    a change: storing what is already there is no write."""
    if not rows:
        return None
    candidates = [_find(rows)]
    if tag is not None:
        candidates.append(_find(rows, tag=tag))
        if prev is not None and prev != digest:  # moving the tag away from a locked manifest
            candidates.append(_find(rows, digest=prev))
    lock = _first(candidates, "write_enabled")
    if lock is None:
        return None
    what = f"push of {repo}:{tag}" if tag else f"push of {repo}@{digest}"
    return LockRefused("write", lock, what)


def refuse_tag_delete(rows: list[RepositoryLock], repo: str, tag: str,
                      digest: str | None) -> LockRefused | None:
    if not rows:
        return None
    lock = _first([_find(rows), _find(rows, tag=tag),
                   _find(rows, digest=digest) if digest else None], "delete_enabled")
    return LockRefused("delete", lock, f"deletion of tag {repo}:{tag}") if lock else None


def refuse_manifest_delete(rows: list[RepositoryLock], repo: str, digest: str,
                           tags: list[str]) -> LockRefused | None:
    """Deleting a manifest deletes its `tags` too: each of them must allow deletion."""
    if not rows:
        return None
    lock = _first([_find(rows), _find(rows, digest=digest),
                   *(_find(rows, tag=t) for t in tags)], "delete_enabled")
    return LockRefused("delete", lock, f"deletion of {repo}@{digest}") if lock else None


def refuse_blob_delete(rows: list[RepositoryLock], repo: str, digest: str) -> LockRefused | None:
    lock = _first([_find(rows)], "delete_enabled") if rows else None
    return LockRefused("delete", lock, f"deletion of blob {repo}@{digest}") if lock else None


def refuse_read(rows: list[RepositoryLock], repo: str, tag: str | None,
                digest: str | None) -> LockRefused | None:
    """A manifest read by `tag` (resolved to `digest`) or by digest; a blob read passes
    neither and is refused only by a repository-level lock."""
    if not rows:
        return None
    lock = _first([_find(rows), _find(rows, tag=tag) if tag else None,
                   _find(rows, digest=digest) if digest else None], "read_enabled")
    if lock is None:
        return None
    what = f"read of {repo}:{tag}" if tag else f"read of {repo}@{digest}" if digest \
        else f"read of {repo}"
    return LockRefused("read", lock, what)


def attributes(meta, repo: str, tag: str | None = None, digest: str | None = None) -> dict:
    """The effective attributes of a repository, or of one tag or manifest in it (a tag's
    manifest counts too): what `connreg repository show` prints as changeableAttributes."""
    rows = meta.locks(repo)
    if tag is not None and digest is None:
        digest = meta.resolve_tag(repo, tag)
    candidates = [_find(rows)]
    if tag is not None:
        candidates.append(_find(rows, tag=tag))
    if digest is not None:
        candidates.append(_find(rows, digest=digest))
    present = [c for c in candidates if c is not None]
    return {"writeEnabled": all(c.write_enabled for c in present),
            "deleteEnabled": all(c.delete_enabled for c in present),
            "readEnabled": all(c.read_enabled for c in present)}
