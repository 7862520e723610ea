"""Gzip layers as their plaintext: chunk lists of the uncompressed content and, once analysed,
the reconstruction data that recreates the exact gzip bytes (docs/delta.md "Gzip layers").

Every node indexes the plaintext of the gzip layers it stores (inflate + FastCDC: about a
second per 200 MB), so a child finds which old layer holds most of a new one's content. A
node with `gzip_analysis` on also analyses each layer once with preflate (Rust
`gzip_analyse`) so its children can recreate the layer from its change: that is seconds of
CPU per layer, done in the background on one dedicated thread at the lowest priority, never on
a client's request path.

On disk, beside the store: `gzip-layers/index.sqlite` (layer states and plaintext chunk lists)
and `gzip-layers/<hex>.recon` (reconstruction files). The index is a cache: losing it only
means layers are indexed again.

Off (nothing indexed, every gzip endpoint answers "not analysed", layers go by their
compressed chunks) where it cannot work: blobs on S3 (the Rust inflate/analysis reads files)
and the replicas of a scaled root (`metadata_url`): the index, reconstruction files and staged
plaintexts are per node, while the requests of one transfer reach any replica
(docs/scaling.md "Known limits").
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Callable

import trio

from connreg import _core
from connreg.delta.index import params_key

log = logging.getLogger("connreg.delta")
GZIP_MAGIC = b"\x1f\x8b\x08"
# The plaintext chunk lists are kept apart from the compressed ones (same chunking parameters,
# another key), so the two kinds of lists never mix.
KEY_PREFIX = "gunzip+"
QUIET_SECONDS = 1.0
# Plaintext chunks are finer than the blobs' (64 KiB): a rebuilt layer's edits are small and
# scattered (a changed file each), and each costs about one chunk; the list of a 200 MB tar is
# then ~12,500 entries (~1 MB of JSON), still well under the bytes saved.
PLAIN_PARAMS = _core.ChunkParams(4096, 16384, 65536)
IDS_PER_QUERY = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    digest TEXT PRIMARY KEY,
    params TEXT NOT NULL,
    plain_size INTEGER NOT NULL,
    state TEXT NOT NULL,          -- 'plain' (chunk list only), 'analysed', 'failed' (see why)
    recon_size INTEGER,
    why TEXT
);
CREATE TABLE IF NOT EXISTS plain_chunks (
    digest TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    PRIMARY KEY (digest, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS plain_chunks_by_id ON plain_chunks (chunk_id);
"""


class _LowPriorityWorker:
    """One thread at the lowest CPU priority (nice 19) for preflate analysis: trio's worker
    threads are shared and reused, so they must not be reniced."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # not permitted here: run at normal priority
            pass
        while True:
            fn, done = self._jobs.get()
            try:
                done(("ok", fn()))
            except BaseException as exc:  # handed back to the awaiting task
                done(("error", exc))

    async def run(self, fn: Callable):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gzip-analysis", daemon=True)
            self._thread.start()
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel(1)
        self._jobs.put((fn, lambda result: token.run_sync_soon(send.send_nowait, result)))
        kind, value = await receive.receive()
        if kind == "error":
            raise value
        return value


class GzipLayers:
    def __init__(self, blobs, data_dir: Path, settings):
        self.blobs = blobs
        local_files = isinstance(getattr(blobs, "unbudgeted", blobs), _core.BlobStore)
        self.enabled = local_files and not settings.metadata_url
        if not self.enabled:
            log.info("gzip-layer delta is off on this node (%s): gzip layers travel by their "
                     "compressed chunks", "a scaled root's replica" if settings.metadata_url
                     else "blobs without local files")
        self.params = PLAIN_PARAMS
        self.key = KEY_PREFIX + params_key(PLAIN_PARAMS)
        self.analysis = settings.gzip_analysis
        self.threshold = settings.delta_threshold_bytes
        self.dir = Path(data_dir) / "gzip-layers"
        (self.dir / "work").mkdir(parents=True, exist_ok=True)  # staged plaintexts
        self._db = sqlite3.connect(self.dir / "index.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._pending: dict[str, None] = {}
        self._wake = trio.Event()
        self._last = float("-inf")
        self._worker = _LowPriorityWorker()

    # --- queries ---------------------------------------------------------------------------
    def _rows(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def recon_path(self, digest: str) -> Path:
        return self.dir / (digest.split(":", 1)[1] + ".recon")

    def state(self, digest: str) -> tuple[str, int, int | None] | None:
        """(state, plain size, recon size) of an indexed layer with the current parameters."""
        rows = self._rows("SELECT state, plain_size, recon_size FROM layers"
                          " WHERE digest = ? AND params = ?", (digest, self.key))
        return tuple(rows[0]) if rows else None

    def analysed(self, digest: str) -> tuple[int, int] | None:
        """(plain size, recon size) when the layer's reconstruction file is ready."""
        st = self.state(digest)
        if st is None or st[0] != "analysed" or not self.recon_path(digest).exists():
            return None
        return st[1], st[2]

    def plain_chunks(self, digest: str) -> list[tuple[int, int, str]]:
        return [tuple(r) for r in self._rows(
            "SELECT offset, length, chunk_id FROM plain_chunks WHERE digest = ? ORDER BY offset",
            (digest,))]

    def best_base(self, chunk_ids: list[str], exclude: str,
                  may_use: Callable[[str], bool] | None = None) -> tuple[str, int] | None:
        """The stored layer whose plaintext holds the most bytes of these chunks, and how many
        bytes: the likely previous version of the layer they come from."""
        held: dict[str, int] = {}
        ids = list(dict.fromkeys(chunk_ids))
        for start in range(0, len(ids), IDS_PER_QUERY):
            part = ids[start:start + IDS_PER_QUERY]
            marks = ",".join("?" * len(part))
            for digest, length in self._rows(
                    "SELECT c.digest, c.length FROM plain_chunks c JOIN layers l"
                    " ON l.digest = c.digest WHERE l.params = ? AND c.digest != ?"
                    f" AND c.chunk_id IN ({marks}) GROUP BY c.digest, c.chunk_id",
                    (self.key, exclude, *part)):
                held[digest] = held.get(digest, 0) + length
        for digest, size in sorted(held.items(), key=lambda kv: -kv[1]):
            if self.blobs.exists(digest) and (may_use is None or may_use(digest)):
                return digest, size
        return None

    def any_layer(self) -> bool:
        """Whether any gzip layer is indexed here (else no layer can be a previous version)."""
        return bool(self._rows("SELECT 1 FROM layers WHERE params = ? LIMIT 1", (self.key,)))

    def analysis_pending(self, digest: str) -> bool:
        """Whether this gzip layer is still waiting for (or in) its analysis."""
        return self.analysis and digest in self._pending and self.is_gzip(digest)

    # --- recording -------------------------------------------------------------------------
    def _record(self, digest: str, plain_size: int, chunks, state: str,
                recon_size: int | None = None, why: str | None = None) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            if chunks is not None:
                self._db.execute("DELETE FROM plain_chunks WHERE digest = ?", (digest,))
                self._db.executemany(
                    "INSERT OR IGNORE INTO plain_chunks (digest, offset, length, chunk_id)"
                    " VALUES (?, ?, ?, ?)", [(digest, o, n, c) for o, n, c in chunks])
            self._db.execute(
                "INSERT OR REPLACE INTO layers (digest, params, plain_size, state, recon_size, why)"
                " VALUES (?, ?, ?, ?, ?, ?)", (digest, self.key, plain_size, state, recon_size, why))

    async def record_analysed(self, digest: str, plain_size: int, chunks, recon_file: Path) -> None:
        """A layer recreated from a parent's data: its list and reconstruction file are known."""
        os.replace(recon_file, self.recon_path(digest))
        await trio.to_thread.run_sync(self._record, digest, plain_size, chunks, "analysed",
                                      self.recon_path(digest).stat().st_size)

    async def forget(self, digest: str) -> None:
        def fn():
            with self._lock, self._db:
                self._db.execute("DELETE FROM plain_chunks WHERE digest = ?", (digest,))
                self._db.execute("DELETE FROM layers WHERE digest = ?", (digest,))
            self.recon_path(digest).unlink(missing_ok=True)
        await trio.to_thread.run_sync(fn)

    async def prune(self) -> int:
        """Forget layers whose blob is gone (after GC): index rows and reconstruction files."""
        gone = [d for (d,) in self._rows("SELECT digest FROM layers") if not self.blobs.exists(d)]
        for digest in gone:
            await self.forget(digest)
        return len(gone)

    # --- background indexing and analysis -------------------------------------------------
    def is_gzip(self, digest: str) -> bool:
        if not self.enabled:
            return False  # never handled as a gzip layer here (no store read either)
        size = self.blobs.size(digest) or 0
        return size >= self.threshold and bytes(self.blobs.read(digest, 0, 3)) == GZIP_MAGIC

    def schedule(self, digest: str) -> None:
        if not self.enabled:
            return
        self._pending[digest] = None
        self._last = trio.current_time()
        self._wake.set()

    async def catch_up(self) -> None:
        """Index (plaintext chunk lists only) every layer still waiting: a fetch is about to
        look for a previous version. Analysis stays in the background."""
        for digest in list(self._pending):
            await self._index(digest, analyse=False)

    async def _index(self, digest: str, analyse: bool) -> None:
        try:
            if not self.blobs.exists(digest) or not self.is_gzip(digest):
                self._pending.pop(digest, None)
                return
            st = self.state(digest)
            if st is None:
                path = self.blobs.path_for(digest)
                size, chunks = await trio.to_thread.run_sync(_core.gzip_plain_chunks, path,
                                                             self.params)
                await trio.to_thread.run_sync(self._record, digest, size, chunks, "plain")
                st = ("plain", size, None)
            if not analyse:
                return  # stays pending for the analysis
            if st[0] == "plain" and self.analysis:
                await self._analyse(digest)
        except Exception as exc:  # a blob deleted meanwhile, a read error: log and go on
            log.warning("indexing gzip layer %s failed: %s", digest[:19], exc)
        self._pending.pop(digest, None)

    async def _analyse(self, digest: str) -> None:
        path = self.blobs.path_for(digest)
        tmp = self.recon_path(digest).with_suffix(".recon.tmp")
        start = trio.current_time()
        try:
            plain, gz, recon, segments, chunks = await self._worker.run(
                lambda: _core.gzip_analyse(path, str(tmp), self.params))
        except _core.GzipError as exc:
            tmp.unlink(missing_ok=True)
            log.info("gzip layer %s cannot be recreated exactly (%s): it goes by chunks",
                     digest[:19], exc)
            st = self.state(digest)
            await trio.to_thread.run_sync(self._record, digest, st[1] if st else 0, None,
                                          "failed", None, str(exc)[:500])
            return
        os.replace(tmp, self.recon_path(digest))
        await trio.to_thread.run_sync(self._record, digest, plain, chunks, "analysed", recon)
        log.info("analysed gzip layer %s: %d bytes, plaintext %d, reconstruction data %d "
                 "(%d segments) in %.1f s", digest[:19], gz, plain, recon, segments,
                 trio.current_time() - start)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Background indexer and analyser, owned by the app's nursery (via ChunkIndex.run)."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while (quiet := trio.current_time() - self._last) < QUIET_SECONDS:
                await trio.sleep(QUIET_SECONDS - quiet)
            while self._pending:
                await self._index(next(iter(self._pending)), analyse=True)
