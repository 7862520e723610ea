"""Native core of connreg (Rust, built by maturin): digests and the blob store.

Typed twin of ``docs/core-api.md``; change both together. Every method that touches the
filesystem releases the GIL, so the blocking calls are meant to be run in worker threads
(``trio.to_thread.run_sync``).
"""

import os
from typing import Self, final

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "CoreError",
    "DigestMismatch",
    "Digester",
    "InvalidDigest",
    "UnsupportedAlgorithm",
    "Upload",
    "UploadNotFound",
    "digest_bytes",
    "validate_digest",
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

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes:
        """The blob, or ``length`` bytes of it from ``offset`` (to the end when ``None``).

        Clamped like a slice: a range past the end is cut short, an offset at or past the end
        gives ``b""``. Reads with the GIL released.

        Raises:
            BlobNotFound: the blob is not in the store.
        """

    def delete(self, digest: str) -> bool:
        """Remove the blob; ``True`` if it existed."""

    def list_digests(self) -> list[str]:
        """Every committed blob's digest, sorted (for garbage collection)."""

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
