"""Native core of connreg (Rust, built by maturin): digests, the blob store and delta transfer.

Typed twin of ``docs/core-api.md``; change both together. Every method that touches the
filesystem releases the GIL, so the blocking calls are meant to be run in worker threads
(``trio.to_thread.run_sync``).
"""

import os
from typing import Self, final

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "ChunkParams",
    "CoreError",
    "CorruptChunk",
    "DigestMismatch",
    "Digester",
    "InvalidDigest",
    "S3BlobStore",
    "S3Upload",
    "StorageFull",
    "UnsupportedAlgorithm",
    "Upload",
    "UploadNotFound",
    "chunk_bytes",
    "decode_chunks",
    "digest_bytes",
    "encode_chunks",
    "validate_digest",
    "zstd_compress",
    "zstd_decompress",
]

# --- exceptions -------------------------------------------------------------------------------

class CoreError(Exception):
    """Base class of every error raised by this module.

    Raised directly for I/O failures (the message names the operation, the path and the OS
    error, never file contents) and for malformed upload ids.
    """

class DigestMismatch(CoreError):
    """Content does not hash to the expected digest."""

class InvalidDigest(CoreError):
    """A digest string is malformed: not ``<alg>:<hex>``, or the hex is not the algorithm's
    length (64 for sha256, 128 for sha512) in lowercase."""

class UnsupportedAlgorithm(CoreError):
    """An algorithm other than sha256, sha512 or blake3 (blake3 is also refused where an OCI
    digest is required)."""

class BlobNotFound(CoreError):
    """No blob with that digest is in the store."""

class UploadNotFound(CoreError):
    """No upload with that id (never created, or already committed, aborted or purged)."""

class StorageFull(CoreError):
    """The filesystem ran out of space (ENOSPC) or the disk quota (EDQUOT) while writing.

    What the failing call wrote is not visible: ``put_bytes`` removed its staging file; an
    :class:`Upload` may hold part of the data (abort it to give the space back).
    """

class CorruptChunk(CoreError):
    """A chunk batch frame (see :func:`decode_chunks`) is truncated or malformed, an entry does
    not decompress within the size limit, or a chunk's bytes do not hash (BLAKE3) to its id.

    The message names the 0-based entry and, once its header is readable, the chunk id.
    """

class GzipError(CoreError):
    """A gzip layer cannot be analysed or recreated exactly: not a single gzip member, a
    compressor preflate cannot model, corrupt reconstruction data, or a plaintext that does not
    match it (docs/delta.md "Gzip layers")."""

# --- digests ----------------------------------------------------------------------------------

@final
class Digester:
    """Streaming hash.

    >>> d = Digester("sha256")
    >>> d.update(b"abc")
    >>> d.digest()
    'sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """

    def __new__(cls, algorithm: str = "sha256") -> Self:
        """Start a hash with ``"sha256"``, ``"sha512"`` or ``"blake3"``.

        Raises:
            UnsupportedAlgorithm: for any other name.
        """

    @property
    def algorithm(self) -> str:
        """The algorithm name, e.g. ``"sha256"``."""

    def update(self, data: bytes) -> None:
        """Feed more bytes. The GIL is released for buffers over 64 KiB."""

    def hexdigest(self) -> str:
        """Lowercase hex of everything fed so far (the state is not consumed)."""

    def digest(self) -> str:
        """``"<algorithm>:<hex>"`` of everything fed so far (the state is not consumed)."""

def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """``"<algorithm>:<hex>"`` of ``data``; the GIL is released for inputs over 64 KiB.

    Raises:
        UnsupportedAlgorithm: unless ``algorithm`` is sha256, sha512 or blake3.
    """

def validate_digest(s: str) -> tuple[str, str]:
    """Split a valid OCI digest into ``(algorithm, hex)``.

    Accepts only ``sha256:<64 lowercase hex>`` and ``sha512:<128 lowercase hex>``.

    Raises:
        InvalidDigest: the string breaks the OCI digest grammar, or its hex is the wrong
            length or not lowercase.
        UnsupportedAlgorithm: a well-formed digest whose algorithm is not sha256 or sha512
            (``blake3`` included).
    """

# --- blob store -------------------------------------------------------------------------------

@final
class BlobStore:
    """Content-addressed, deduplicated, crash-safe store under ``root``::

        <root>/blobs/<alg>/<first two hex>/<hex>   committed blobs (immutable, fsynced)
        <root>/uploads/<upload_id>                 in-progress upload bytes (append-only)
        <root>/tmp/                                staging for put_bytes

    A blob path exists only for verified, fsynced content; a crash at any moment leaves at
    most a stray upload or tmp file. Safe to share between threads.

    Every method taking a ``digest`` raises :class:`InvalidDigest` or
    :class:`UnsupportedAlgorithm` if it is not a valid sha256/sha512 digest, and every method
    taking an ``upload_id`` raises :class:`CoreError` unless it matches
    ``[A-Za-z0-9_-]{1,128}``.
    """

    def __new__(cls, root: str | os.PathLike[str]) -> Self:
        """Open the store at ``root``, creating its directories if needed.

        Raises:
            CoreError: the directories cannot be created.
        """

    @property
    def root(self) -> str:
        """The store's root directory, as given."""

    def path_for(self, digest: str) -> str:
        """Where the blob lives (whether or not it exists)."""

    def exists(self, digest: str) -> bool:
        """Whether the blob is in the store."""

    def size(self, digest: str) -> int | None:
        """The blob's size in bytes, or ``None`` if it is not in the store."""

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> str:
        """Store a small blob (e.g. a manifest) atomically and return its digest.

        Hashes with sha256 when ``expected_digest`` is ``None``, else with its algorithm and
        verifies. A no-op (after verifying) if the blob already exists.

        Raises:
            DigestMismatch: ``data`` does not hash to ``expected_digest``.
        """

    def put_many(self, items: list[tuple[bytes, str]]) -> list[str]:
        """Store many small blobs ``(bytes, expected digest)`` in one call, their fsyncs done
        together (sync's object batches); returns the digests in order.

        Every blob is verified before anything is written; each becomes visible only once
        its bytes are durable, and all renames are durable when this returns. On an error
        the staging files are removed (blobs already renamed stay, complete).

        Raises:
            DigestMismatch: one of them does not hash to its digest (nothing written).
            StorageFull: the filesystem ran out of room.
        """

    def chunks(
        self, digest: str, params: ChunkParams | None = None
    ) -> list[tuple[int, int, str]]:
        """The blob's content-defined chunks: ``(offset, length, blake3 hex)`` for each, in
        order, covering the blob exactly (``[]`` for an empty blob).

        The same as :func:`chunk_bytes` on the blob's bytes, but streamed from the file through
        a fixed 1 MiB buffer (constant memory) with the GIL released. ``params`` defaults to
        ``ChunkParams()``.

        Raises:
            BlobNotFound: the blob is not in the store.
        """

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes:
        """The blob, or ``length`` bytes of it from ``offset`` (to the end when ``None``).

        Clamped like a slice: a range past the end is cut short, an offset at or past the end
        gives ``b""``. Reads with the GIL released.

        Raises:
            BlobNotFound: the blob is not in the store.
        """

    def delete(self, digest: str) -> bool:
        """Remove the blob; ``True`` if it existed."""

    def stat(self, digest: str) -> tuple[int, float] | None:
        """``(size, mtime)`` of the blob's file, or ``None`` if it is not in the store."""

    def list_digests(self) -> list[str]:
        """Every committed blob's digest, sorted (for garbage collection)."""

    def list_blobs(self) -> list[tuple[str, int, float]]:
        """``(digest, size, mtime)`` of every committed blob, sorted by digest (garbage
        collection; one listing on either store)."""

    def upload(self, upload_id: str) -> Upload:
        """Open the upload ``upload_id``, creating it if absent.

        Reopening continues at the stored size: after a restart the running hash is rebuilt by
        re-reading the bytes on disk; within one process, handles for the same id share one
        state and nothing is re-read.
        """

    def upload_exists(self, upload_id: str) -> bool:
        """Whether an upload with that id has a file on disk."""

    def upload_size(self, upload_id: str) -> int | None:
        """Bytes stored so far for the upload, or ``None`` if there is no such upload."""

    def abort_upload(self, upload_id: str) -> None:
        """Remove the upload's file (idempotent). Open handles to it raise
        :class:`UploadNotFound` from then on."""

    def purge_stale_uploads(self, max_age_seconds: float) -> int:
        """Remove uploads whose file was last modified at least ``max_age_seconds`` ago.

        Returns how many uploads were removed. Also sweeps leftover ``tmp/`` files of the same
        age (not counted).
        """

    def release_idle_uploads(self, idle_seconds: float, max_open: int) -> int:
        """Close the file descriptors of idle open uploads, keeping their running hash (see
        :meth:`Upload.release`): every upload unused for ``idle_seconds`` or longer, then the
        least recently used until at most ``max_open`` remain open. An upload in use right now
        is never touched. Returns how many descriptors were closed; never raises."""

    def list_uploads(self) -> list[tuple[str, float]]:
        """``(upload_id, seconds since its file was last modified)`` for every upload on disk,
        in no particular order."""

@final
class Upload:
    """An in-progress upload: append-only bytes plus a running sha256.

    Obtained from :meth:`BlobStore.upload`. Usable from any thread; calls on one upload are
    serialized. After :meth:`commit` or :meth:`abort` every call raises
    :class:`UploadNotFound`.
    """

    @property
    def upload_id(self) -> str:
        """The id this upload was opened with."""

    @property
    def size(self) -> int:
        """Bytes written so far."""

    def write(self, data: bytes) -> int:
        """Append ``data`` and return the new size.

        The bytes reach the file before this returns (no fsync per write; :meth:`commit`
        fsyncs). Releases the GIL.

        Raises:
            UploadNotFound: the upload was committed, aborted or purged.
        """

    def copy_from(self, digest: str, offset: int, length: int) -> int:
        """Append ``length`` bytes of the stored blob ``digest`` from ``offset`` (a chunk this
        node already holds) and return the new size.

        The running sha256 covers the copied bytes exactly like :meth:`write`, so
        :meth:`commit` verifies the assembled content as usual. All or nothing: on failure the
        upload keeps its previous size. Releases the GIL.

        Raises:
            BlobNotFound: the source blob is not in the store.
            CoreError: ``offset + length`` is past the end of the source, or either is
                negative.
            InvalidDigest, UnsupportedAlgorithm: ``digest`` is not a valid sha256/sha512
                digest.
            UploadNotFound: the upload was committed, aborted or purged.
        """

    def copy_many(self, ranges: list[tuple[str, int, int]]) -> int:
        """Append each ``(digest, offset, length)`` range of committed blobs, in order, and
        return the new size: :meth:`copy_from` for many ranges in one call.

        The ranges are gathered into 256 KiB pieces, each written and then hashed on a second
        thread while the next is read and written (about SHA-256 speed instead of read + hash
        + write in series). Every source is opened and every range checked before anything is
        appended; all or nothing, like :meth:`copy_from`. Releases the GIL.

        Raises:
            BlobNotFound: a source blob is not in the store.
            CoreError: a range passes the end of its blob, or a value is negative.
            InvalidDigest, UnsupportedAlgorithm: a digest is not valid.
            UploadNotFound: the upload was committed, aborted or removed.
        """

    def commit(self, expected_digest: str) -> str:
        """Verify the content against ``expected_digest`` (sha256 or sha512), fsync it,
        atomically rename it to its blob path, fsync the directory and return the digest.

        If the blob already exists the upload is discarded (dedup). Releases the GIL.

        Raises:
            DigestMismatch: the content hashes to something else; the upload is left as it
                was (the client may retry or cancel) and no blob becomes visible.
            InvalidDigest, UnsupportedAlgorithm: ``expected_digest`` is not a valid
                sha256/sha512 digest; the upload is left as it was.
            UploadNotFound: the upload was committed, aborted or purged.
        """

    def abort(self) -> None:
        """Remove the upload's file (idempotent)."""

    def release(self) -> bool:
        """Close the file descriptor, keeping the upload and its running hash: the next write,
        copy or commit reopens the file and, if it is unchanged, continues without re-reading
        it. ``False`` (nothing done) if no descriptor is open or a call is running on the
        upload right now; never waits."""

    def flush(self) -> int:
        """Nothing to do (every write is already in the file); returns the size. Callers flush
        after each request that wrote, for :class:`S3Upload`'s sake."""

# --- blob store on S3-compatible object storage (docs/storage.md) -----------------------------

@final
class S3BlobStore:
    """The blob store on S3-compatible object storage, with :class:`BlobStore`'s methods::

        <prefix>/blobs/<alg>/<first two hex>/<hex>   committed blobs (verified, immutable)
        <prefix>/uploads/<upload_id>/state           an upload session's state
        <prefix>/uploads/<upload_id>/data            its multipart upload, assembled at commit

    Every method is a blocking request to the store (retrying 5xx with backoff) with the GIL
    released: call them from worker threads. Errors from the store raise :class:`CoreError`
    naming the operation and key (never credentials). Differences from :class:`BlobStore`:
    ``path_for`` raises (no local file), ``release_idle_uploads`` returns 0, and uploads must be
    flushed (:meth:`S3Upload.flush`).
    """

    def __new__(
        cls,
        url: str,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        allow_http: bool = False,
        part_size: int | None = None,
    ) -> Self:
        """Open ``url`` (``s3://BUCKET[/PREFIX]``); nothing is sent yet.

        ``endpoint`` defaults to ``CONNREG_S3_ENDPOINT`` (else AWS S3), credentials to
        ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, the region to
        ``AWS_REGION``/``AWS_DEFAULT_REGION``/``us-east-1``. Requests are path-style; plain
        http only to a loopback endpoint unless ``allow_http``. ``part_size`` (default 8 MiB)
        is the size of every multipart part but the last.

        Raises:
            CoreError: a malformed URL, no credentials, http to a non-loopback endpoint.
        """

    @property
    def root(self) -> str:
        """The ``s3://`` URL (where :attr:`BlobStore.root` is a directory)."""

    @property
    def url(self) -> str: ...
    @property
    def part_size(self) -> int: ...
    def path_for(self, digest: str) -> str:
        """Always raises :class:`CoreError`: there is no local file."""

    def key_for(self, digest: str) -> str:
        """The object key of the blob (whether or not it exists)."""

    def exists(self, digest: str) -> bool: ...
    def size(self, digest: str) -> int | None: ...
    def stat(self, digest: str) -> tuple[int, float] | None:
        """``(size, last-modified)`` of the object, or ``None``."""

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> str:
        """As :meth:`BlobStore.put_bytes`: verified in memory, then one PUT."""

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes:
        """As :meth:`BlobStore.read` (one ranged GET; clamped like a slice)."""

    def chunks(
        self, digest: str, params: ChunkParams | None = None
    ) -> list[tuple[int, int, str]]:
        """As :meth:`BlobStore.chunks`, streaming the object."""

    def delete(self, digest: str) -> bool: ...
    def list_digests(self) -> list[str]: ...
    def list_blobs(self) -> list[tuple[str, int, float]]: ...
    def upload(self, upload_id: str) -> S3Upload:
        """Open the upload, creating its state object if absent; the handle starts from the
        state stored in the bucket (whichever replica wrote it)."""

    def upload_exists(self, upload_id: str) -> bool: ...
    def upload_size(self, upload_id: str) -> int | None:
        """The size as last flushed, or ``None``."""

    def abort_upload(self, upload_id: str) -> None:
        """Abort its multipart upload and remove its objects (idempotent)."""

    def purge_stale_uploads(self, max_age_seconds: float) -> int: ...
    def release_idle_uploads(self, idle_seconds: float, max_open: int) -> int:
        """Always 0: no descriptors are held."""

    def list_uploads(self) -> list[tuple[str, float]]: ...
    def presigned_url(self, digest: str, expires_seconds: float = 300.0) -> str:
        """A presigned (SigV4) GET URL of the blob, valid ``expires_seconds`` (1 s .. 7 days),
        for clients that can reach the endpoint (``blob_redirect``)."""

@final
class S3Upload:
    """An upload session on S3: a multipart upload plus a running sha256.

    Writes gather in memory until they fill a part, which is stored at once; :meth:`flush`
    stores the session's state (size, hash state, parts, tail) so any replica continues it.
    Calls on one handle are serialized; after commit or abort they raise
    :class:`UploadNotFound`.
    """

    @property
    def upload_id(self) -> str: ...
    @property
    def size(self) -> int:
        """Bytes written through this handle so far (flushed or not)."""

    def write(self, data: bytes) -> int:
        """Append; every part filled is stored before this returns. All or nothing. An empty
        write does nothing."""

    def flush(self) -> int:
        """Store the state object if anything was written since; returns the size."""

    def copy_from(self, digest: str, offset: int, length: int) -> int: ...
    def copy_many(self, ranges: list[tuple[str, int, int]]) -> int:
        """As :meth:`Upload.copy_many` (ranged GETs, appended like writes); all or nothing."""

    def commit(self, expected_digest: str) -> str:
        """Verify, then make the blob visible at its digest key (one PUT, or assemble and
        copy server-side). A sha256 mismatch leaves the upload as it was (flushed); a sha512
        mismatch of a multi-part upload ends it."""

    def abort(self) -> None: ...
    def release(self) -> bool:
        """Always ``False``: no descriptor is held."""

# --- delta transfer ---------------------------------------------------------------------------

@final
class ChunkParams:
    """FastCDC chunk size bounds, in bytes.

    Chunks are cut by a gear rolling hash with normalized chunking: never shorter than
    ``min_size`` (except the last chunk of a stream), never longer than ``max_size``, about
    ``avg_size`` on average (a little more, because of the skipped minimum). Boundaries depend
    only on nearby content, so an insertion or deletion changes only the chunks around it.
    Equal params compare equal.
    """

    def __new__(
        cls, min_size: int = 16384, avg_size: int = 65536, max_size: int = 262144
    ) -> Self:
        """Validate the bounds.

        Raises:
            CoreError: unless ``0 <= min_size <= avg_size <= max_size < 2**32`` and
                ``avg_size`` is a power of two ``>= 256``.
        """

    @property
    def min_size(self) -> int:
        """Smallest chunk (except the last)."""

    @property
    def avg_size(self) -> int:
        """Target average chunk (a power of two)."""

    @property
    def max_size(self) -> int:
        """Largest chunk; a chunk is cut here unconditionally."""

def chunk_bytes(data: bytes, params: ChunkParams | None = None) -> list[tuple[int, int, str]]:
    """``(offset, length, blake3 hex)`` for every content-defined chunk of ``data``, in order,
    covering it exactly; ``[]`` for empty data, one chunk for data shorter than ``min_size``.

    ``params`` defaults to ``ChunkParams()``. The GIL is released for inputs over 64 KiB.
    """

def encode_chunks(
    store: BlobStore | S3BlobStore, items: list[tuple[str, int, int]], level: int = 3
) -> bytes:
    """A batch frame holding the bytes of each ``(digest, offset, length)`` of a stored blob.

    For each item, in order: ``id`` (32 raw bytes, BLAKE3 of the bytes) | ``codec`` (1 byte:
    0 = raw, 1 = zstd) | payload length (u32 little-endian) | payload. A chunk is zstd-compressed
    at ``level`` only when that makes it strictly smaller; otherwise it is stored raw (already
    compressed data costs nothing extra). Releases the GIL.

    Raises:
        BlobNotFound: a blob is not in the store.
        CoreError: a range passes the end of its blob, a length does not fit in a u32, or
            ``level`` is outside zstd's range (about -131072..=22; 0 means zstd's default).
        InvalidDigest, UnsupportedAlgorithm: a digest is not a valid sha256/sha512 digest.
    """

def decode_chunks(frame: bytes, max_chunk: int = 16777216) -> list[tuple[str, bytes]]:
    """``(blake3 hex, data)`` for each entry of a frame made by :func:`encode_chunks`, each
    verified: BLAKE3 of the data equals the entry's id. ``b""`` decodes to ``[]``. Releases
    the GIL.

    Raises:
        CorruptChunk: the frame is truncated or malformed (short header, payload past the end,
            unknown codec), an entry is over ``max_chunk`` bytes (raw, or once decompressed),
            a zstd payload does not decompress, or a chunk does not match its id. The message
            names the entry.
    """

def zstd_compress(data: bytes, level: int = 3) -> bytes:
    """``data`` as one zstd frame (its content size recorded). Releases the GIL.

    Raises:
        CoreError: ``level`` is outside zstd's range.
    """

def zstd_decompress(data: bytes, max_size: int) -> bytes:
    """Decompress zstd ``data`` (one or more frames) of at most ``max_size`` bytes once
    decompressed. Releases the GIL.

    Raises:
        CoreError: ``data`` is not valid zstd, or it decompresses to more than ``max_size``.
    """

# --- gzip layers (docs/delta.md "Gzip layers"); every function releases the GIL ---------------

def gzip_analyse(gzip_path: str, recon_path: str, params: ChunkParams | None = None
                 ) -> tuple[int, int, int, int, list[tuple[int, int, str]]]:
    """Analyse a gzip file with preflate, writing its reconstruction file: ``(plain_size,
    gzip_size, recon_size, segments, plaintext chunks)``. Raises :class:`GzipError`."""

def gzip_recreate(recon_path: str, plain_path: str, upload: Upload) -> int:
    """Recreate the gzip layer from its plaintext file and reconstruction file, appending it
    to ``upload`` (whose commit verifies the digest); returns the bytes appended."""

def gzip_recreate_file(recon_path: str, plain_path: str, out_path: str) -> int:
    """As :func:`gzip_recreate`, into a plain file."""

def gzip_plain_chunks(gzip_path: str, params: ChunkParams | None = None
                      ) -> tuple[int, list[tuple[int, int, str]]]:
    """``(plain_size, chunks)`` of a gzip file's plaintext (inflate only)."""

def gunzip_to_file(gzip_path: str, out_path: str) -> int:
    """Write a gzip file's plaintext to ``out_path``; returns its length."""

def gunzip_ranges(gzip_path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each ``(offset, length)`` of the plaintext, in the order asked (one
    inflate pass; ranges may repeat, distinct ones must not overlap)."""

def gunzip_frame(gzip_path: str, ranges: list[tuple[int, int]], level: int = 3) -> bytes:
    """:func:`gunzip_ranges` as a chunk batch frame (as :func:`encode_chunks`)."""
