//! The crate's one error type.
//!
//! Plain Rust: nothing here knows about Python. `crate::py::exceptions` maps each variant to a
//! Python exception class in a single `impl From<CoreError> for PyErr`.

use std::io;
use std::path::Path;

/// Longest slice of caller-supplied text echoed back in an error message.
const MAX_ECHO: usize = 80;

/// Linux errno values for "no space left on device" and "disk quota exceeded" (EDQUOT has no
/// io::ErrorKind before Rust 1.85, above this crate's minimum).
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// Everything that can go wrong in the digest, store and delta layers.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Content does not hash to the digest the caller expected.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },

    /// A digest string is not `<algorithm>:<encoded>` with a valid encoding for its algorithm.
    #[error("invalid digest {value:?}: {reason}")]
    InvalidDigest { value: String, reason: &'static str },

    /// A hash algorithm this crate does not implement (or that is not allowed where it was used).
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),

    /// No committed blob has this digest.
    #[error("blob not found: {0}")]
    BlobNotFound(String),

    /// No upload has this id (never created, aborted, committed or purged).
    #[error("upload not found: {0}")]
    UploadNotFound(String),

    /// An upload id outside `[A-Za-z0-9_-]{1,128}`.
    #[error("invalid upload id {0:?}: must match [A-Za-z0-9_-]{{1,128}}")]
    InvalidUploadId(String),

    /// A byte range that does not lie within a blob (`offset + length > size`).
    #[error("range {offset}+{length} is out of bounds for {digest} ({size} bytes)")]
    OutOfRange {
        digest: String,
        offset: u64,
        length: u64,
        size: u64,
    },

    /// A caller-supplied setting outside its allowed values (chunking parameters, a zstd
    /// level, a chunk too large for a frame entry).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An entry of a chunk batch frame is truncated, malformed, does not decompress, or its
    /// bytes do not hash (BLAKE3) to its id. `entry` is its 0-based position in the frame.
    #[error("corrupt chunk frame: entry {entry}: {reason}")]
    CorruptChunk { entry: usize, reason: String },

    /// zstd failed to compress, or the input to a plain decompression is not valid zstd or
    /// decompresses to more than allowed.
    #[error("zstd: {0}")]
    Compression(String),

    /// A gzip layer this crate cannot analyse or recreate exactly (not a single gzip member,
    /// a compressor preflate cannot model, corrupt reconstruction data, a plaintext that does
    /// not match it).
    #[error("gzip: {0}")]
    Gzip(String),

    /// An I/O failure; `context` names the operation and path, `source` is the OS error.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Result alias used throughout the crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    pub(crate) fn invalid_digest(value: &str, reason: &'static str) -> Self {
        CoreError::InvalidDigest {
            value: echo(value),
            reason,
        }
    }

    pub(crate) fn unsupported(value: &str) -> Self {
        CoreError::UnsupportedAlgorithm(echo(value))
    }

    pub(crate) fn invalid_upload_id(value: &str) -> Self {
        CoreError::InvalidUploadId(echo(value))
    }

    /// Whether this is the filesystem running out of room (ENOSPC) or the user's disk quota
    /// (EDQUOT): the caller can free space and retry, unlike other I/O failures.
    pub fn is_storage_full(&self) -> bool {
        match self {
            CoreError::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull
                    || matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT))
            }
            _ => false,
        }
    }

    /// An I/O error on `path` while doing `what` (e.g. "open", "rename").
    pub(crate) fn io(what: &str, path: &Path, source: io::Error) -> Self {
        CoreError::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }
}

/// Caller-supplied text, cut short so a hostile value cannot bloat logs or responses.
fn echo(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHO) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    }
}

/// Attach an operation and path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| CoreError::io(what, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_truncated_in_messages() {
        let err = CoreError::invalid_digest(&"x".repeat(10_000), "too long");
        let msg = err.to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains("..."));
    }

    #[test]
    fn out_of_space_is_recognised() {
        let full = CoreError::io(
            "write",
            Path::new("/x"),
            io::Error::from_raw_os_error(ENOSPC),
        );
        let quota = CoreError::io(
            "write",
            Path::new("/x"),
            io::Error::from_raw_os_error(EDQUOT),
        );
        let other = CoreError::io("write", Path::new("/x"), io::Error::from_raw_os_error(5));
        assert!(full.is_storage_full() && quota.is_storage_full());
        assert!(!other.is_storage_full());
        assert!(!CoreError::BlobNotFound("x".into()).is_storage_full());
    }

    #[test]
    fn io_errors_name_the_path_and_os_error() {
        let err = CoreError::io(
            "open",
            Path::new("/nowhere/x"),
            io::Error::from(io::ErrorKind::NotFound),
        );
        let msg = err.to_string();
        assert!(msg.starts_with("open /nowhere/x: "), "{msg}");
    }
}
