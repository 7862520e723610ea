"""Garbage collection of one node: snapshot, mark (mark.py), sweep.

The sweep carries the plan out in small write transactions, each re-checking its reason
(storage/sqlite_metadata.py, `gc_*`), in this order: manifests, blob links, blob files with
their chunk-index rows, chunk lists of files already gone, upload leftovers. Nothing here
writes the change log: what GC removes is local housekeeping, never sent up or down.

Why a push racing the sweep never ends with a manifest whose blob is gone:
- a link is removed only while no manifest of its repository references the blob, in one
  transaction; a manifest is recorded only if, in its own transaction, every blob it references
  is still linked there (else MANIFEST_BLOB_UNKNOWN and nothing is written);
- a blob file is deleted inside a write transaction that first checks that nothing links or
  references it; a link or a manifest row is written only if, in its transaction, the file
  exists. Transactions are serialized, so either one sees the other's result.
The grace period is what makes ordinary pushes never notice GC at all: a blob uploaded or
linked within it is never collected, so the manifest that follows finds it.

Upload leftovers: a session row whose file is gone, a file in `store/uploads` without a session
row (except `sync-*`, the resumable fetches of sync, which have none by design), and staging
files in `store/tmp`. While the node runs they must also be older than
`max(grace, UPLOAD_LEFTOVER_MIN_AGE)`, since a session's row is written a moment before its
file. Live sessions (row and file) are the upload TTL's business, not GC's.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from connreg import _core
from connreg.gc.mark import GcPlan, StoredBlob, mark
from connreg.registry import Registry

log = logging.getLogger("connreg.gc")
# Blob files deleted per write transaction: short enough that pushes waiting to commit do not
# notice, long enough that a large sweep does not take a transaction per file.
BLOBS_PER_TRANSACTION = 200
LINKS_PER_TRANSACTION = 500
# Manifests deleted per write transaction (a subject and its referrers always share one).
MANIFESTS_PER_TRANSACTION = 1000
# A running node's upload leftovers must be at least this old (rows come just before files).
UPLOAD_LEFTOVER_MIN_AGE = 15 * 60
SYNC_FETCH_PREFIX = "sync-"
MANIFESTS_LISTED = 200  # deleted manifests named in a report


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass
class GcReport:
    dry_run: bool
    grace_seconds: float
    untagged_retention_seconds: float
    started: float = field(default_factory=time.time)
    duration: float = 0.0
    manifests: list[dict] = field(default_factory=list)  # repo, digest, reason (first ones)
    manifest_count: int = 0
    blob_links: int = 0
    blobs: int = 0
    bytes: int = 0
    chunk_rows: int = 0
    repositories: list[str] = field(default_factory=list)  # emptied and forgotten
    upload_rows: int = 0
    upload_files: int = 0
    tmp_files: int = 0
    upload_bytes: int = 0

    def to_json(self) -> dict:
        return {
            "dryRun": self.dry_run, "gracePeriodSeconds": self.grace_seconds,
            "untaggedRetentionSeconds": self.untagged_retention_seconds,
            "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "durationSeconds": round(self.duration, 3),
            "manifests": self.manifest_count, "blobLinks": self.blob_links,
            "blobs": self.blobs, "bytes": self.bytes, "chunkRows": self.chunk_rows,
            "uploadRows": self.upload_rows, "uploadFiles": self.upload_files,
            "tmpFiles": self.tmp_files, "uploadBytes": self.upload_bytes,
            "repositories": self.repositories,
            "deletedManifests": self.manifests,
        }

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (f"{verb} {self.blobs} blob(s) ({size_text(self.bytes)}), "
                f"{self.manifest_count} manifest(s), {self.blob_links} blob link(s), "
                f"{self.chunk_rows} chunk-index row(s), {len(self.repositories)} empty "
                f"repositor{'y' if len(self.repositories) == 1 else 'ies'}, "
                f"{self.upload_rows + self.upload_files} upload leftover(s) and "
                f"{self.tmp_files} staging file(s) ({size_text(self.upload_bytes)}) "
                f"in {self.duration:.2f} s")


def _batches(groups: list[list[str]], size: int) -> list[list[str]]:
    """Consecutive groups packed into batches of about `size`, never splitting a group."""
    batches: list[list[str]] = []
    for group in groups:
        if batches and len(batches[-1]) + len(group) <= size:
            batches[-1].extend(group)
        else:
            batches.append(list(group))
    return batches


def _stored_blobs(blobs) -> dict[str, StoredBlob]:
    """Every blob with its size and mtime, from one listing of the store (files or S3
    objects; blocking: run in a worker thread)."""
    return {digest: StoredBlob(size, mtime) for digest, size, mtime in blobs.list_blobs()}


def _files(directory: Path) -> list[tuple[str, int, float]]:
    """(name, size, mtime) of the regular files in `directory` (blocking)."""
    out = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                out.append((entry.name, st.st_size, st.st_mtime))
        except FileNotFoundError:
            continue
    return out


class GarbageCollector:
    """One node's collector; one run at a time (`collect` waits for a run in progress).

    `outbox_cursor_key`: on a ReadWrite connected registry, the sync state key of its up
    cursor, so manifests not yet pushed up (or parked) are never collected.
    """

    def __init__(self, reg: Registry, outbox_cursor_key: str | None = None,
                 parent_origin: str = "parent"):
        self.reg = reg
        self.outbox_cursor_key = outbox_cursor_key
        self.parent_origin = parent_origin
        self._lock = trio.Lock()
        self.last_report: GcReport | None = None
        # Since start, for /metrics: completed runs (dry runs excluded) and bytes they freed.
        self.runs = 0
        self.freed_bytes = 0

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def collect(self, grace_seconds: float, untagged_retention_seconds: float,
                      dry_run: bool = False, node_running: bool = True) -> GcReport:
        """One mark and sweep. `node_running`: False only for offline GC on a stopped node,
        which may also take upload leftovers however young."""
        # Replicas of a scaled root share the stores: one collects at a time, cluster-wide.
        async with self._lock, self.reg.gc_exclusion():
            report = GcReport(dry_run, grace_seconds, untagged_retention_seconds)
            started = trio.current_time()
            now = time.time()
            snap = await trio.to_thread.run_sync(self.reg.meta.gc_snapshot,
                                                 self.outbox_cursor_key, self.parent_origin)
            stored = await trio.to_thread.run_sync(_stored_blobs, self.reg.blobs)
            plan = await trio.to_thread.run_sync(mark, snap, stored, now, grace_seconds,
                                                 untagged_retention_seconds)
            if dry_run:
                self._report_plan(plan, report)
            else:
                await self._sweep(plan, now - grace_seconds, report)
            upload_age = max(grace_seconds, UPLOAD_LEFTOVER_MIN_AGE) if node_running else 0.0
            await self._sweep_uploads(snap.uploads, now - upload_age, dry_run, report)
            report.duration = trio.current_time() - started
            self.last_report = report
            if not dry_run:
                self.runs += 1
                self.freed_bytes += report.bytes + report.upload_bytes
            log.info("gc%s: %s", " (dry run)" if dry_run else "", report.summary())
            return report

    # --- sweep ---------------------------------------------------------------------------------
    @staticmethod
    def _report_plan(plan: GcPlan, report: GcReport) -> None:
        for repo, manifests in plan.manifests.items():
            for digest in manifests:
                report.manifest_count += 1
                if len(report.manifests) < MANIFESTS_LISTED:
                    report.manifests.append({"repository": repo, "digest": digest,
                                             "reason": plan.reasons[(repo, digest)]})
        report.blob_links = plan.link_count
        report.blobs = len(plan.blobs)
        report.bytes = sum(plan.blobs.values())
        report.chunk_rows = sum(plan.chunk_rows.values()) + sum(plan.orphan_chunk_lists.values())
        report.repositories = plan.repositories

    async def _sweep(self, plan: GcPlan, cut: float, report: GcReport) -> None:
        await self._sweep_manifests(plan, report)
        await self._sweep_blobs(plan, cut, report)

    async def _sweep_manifests(self, plan: GcPlan, report: GcReport) -> None:
        for repo, manifests in plan.manifests.items():
            for batch in _batches(plan.manifest_groups[repo], MANIFESTS_PER_TRANSACTION):
                candidates = {d: manifests[d] for d in batch}
                for digest in await self.reg.meta.gc_delete_manifests(repo, candidates):
                    reason = plan.reasons[(repo, digest)]
                    log.info("gc: deleted manifest %s@%s: %s", repo, digest, reason)
                    report.manifest_count += 1
                    if len(report.manifests) < MANIFESTS_LISTED:
                        report.manifests.append({"repository": repo, "digest": digest,
                                                 "reason": reason})

    async def _sweep_blobs(self, plan: GcPlan, cut: float, report: GcReport) -> None:
        meta = self.reg.meta
        for repo, digests in plan.links.items():
            for i in range(0, len(digests), LINKS_PER_TRANSACTION):
                unlinked = await meta.gc_unlink_blobs(repo, digests[i:i + LINKS_PER_TRANSACTION],
                                                      cut)
                for digest in unlinked:
                    log.debug("gc: unlinked %s from %s: referenced by no manifest there", digest,
                              repo)
                report.blob_links += len(unlinked)
        blobs = self.reg.blobs

        def remove(digest: str) -> int | None:
            # Inside the write transaction: a file written again since the snapshot stays.
            found = blobs.stat(digest)  # (size, mtime), from the file or the S3 object
            if found is None:
                return None
            size, mtime = found
            if mtime >= cut or not blobs.delete(digest):
                return None
            return size

        candidates = list(plan.blobs)
        for i in range(0, len(candidates), BLOBS_PER_TRANSACTION):
            for digest, size, rows in await meta.gc_delete_blobs(
                    candidates[i:i + BLOBS_PER_TRANSACTION], remove):
                log.debug("gc: deleted blob %s (%d bytes, %d chunk rows)", digest, size, rows)
                report.blobs += 1
                report.bytes += size
                report.chunk_rows += rows
        if plan.orphan_chunk_lists:
            report.chunk_rows += await meta.gc_drop_chunk_lists(list(plan.orphan_chunk_lists))
        await self.reg.chunk_index.gzip.prune()  # gzip layers' plaintext lists and recon files
        if plan.repositories:
            report.repositories = await meta.gc_drop_empty_repositories(plan.repositories)
            for repo in report.repositories:
                log.info("gc: forgot repository %s: nothing is left in it", repo)

    async def _sweep_uploads(self, sessions: list[tuple[str, float]], cut: float, dry_run: bool,
                             report: GcReport) -> None:
        blobs = self.reg.blobs
        session_ids = {upload_id for upload_id, _ in sessions}
        fileless = await trio.to_thread.run_sync(  # on S3 each check is a request
            lambda: [upload_id for upload_id, created in sessions
                     if created < cut and not blobs.upload_exists(upload_id)])
        if fileless:
            report.upload_rows += (len(fileless) if dry_run
                                   else await self.reg.meta.gc_delete_upload_rows(fileless))
            log.info("gc: %s %d upload session(s) whose file is gone",
                     "would remove" if dry_run else "removed", len(fileless))
        local = isinstance(getattr(blobs, "unbudgeted", blobs), _core.BlobStore)
        if not local:  # S3: uploads are objects (size not listed: counted as 0), no tmp/
            now = time.time()
            listed = await trio.to_thread.run_sync(blobs.list_uploads)
            uploads = [(upload_id, 0, now - age) for upload_id, age in listed]
        else:
            root = Path(blobs.root)
            uploads = await trio.to_thread.run_sync(_files, root / "uploads")
        for name, size, mtime in uploads:
            if name in session_ids or name.startswith(SYNC_FETCH_PREFIX) or mtime >= cut:
                continue
            if not dry_run:
                try:
                    await trio.to_thread.run_sync(blobs.abort_upload, name)
                except Exception as exc:  # not an upload id (a stray file): leave it
                    log.warning("gc: left %s in store/uploads: %s", name, exc)
                    continue
            log.info("gc: %s upload file %s (%d bytes) that has no session",
                     "would remove" if dry_run else "removed", name, size)
            report.upload_files += 1
            report.upload_bytes += size
        for name, size, mtime in (await trio.to_thread.run_sync(_files, root / "tmp")
                                  if local else []):
            if mtime >= cut:
                continue
            if not dry_run:
                try:
                    os.remove(root / "tmp" / name)
                except FileNotFoundError:
                    continue
                budget = getattr(blobs, "budget", None)  # the disk budget's running total
                if budget is not None:
                    budget.released(size)
            report.tmp_files += 1
            report.upload_bytes += size
