//! Python exception classes and the single mapping from [`crate::errors::CoreError`].

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::errors::CoreError as Error;

pyo3::create_exception!(
    connreg._core,
    CoreError,
    PyException,
    "Base class of every error raised by connreg._core; raised directly for I/O failures and invalid upload ids."
);
pyo3::create_exception!(
    connreg._core,
    DigestMismatch,
    CoreError,
    "Content does not hash to the expected digest."
);
pyo3::create_exception!(
    connreg._core,
    InvalidDigest,
    CoreError,
    "A digest string is malformed."
);
pyo3::create_exception!(
    connreg._core,
    UnsupportedAlgorithm,
    CoreError,
    "A hash algorithm that is not supported here."
);
pyo3::create_exception!(connreg._core, BlobNotFound, CoreError, "No such blob.");
pyo3::create_exception!(
    connreg._core,
    UploadNotFound,
    CoreError,
    "No upload with that id."
);
pyo3::create_exception!(
    connreg._core,
    CorruptChunk,
    CoreError,
    "A chunk batch frame is truncated or malformed, or a chunk's bytes do not match its BLAKE3 id."
);

pyo3::create_exception!(
    connreg._core,
    GzipError,
    CoreError,
    "A gzip layer cannot be analysed or recreated exactly (unsupported compressor, corrupt data, wrong plaintext)."
);

pyo3::create_exception!(
    connreg._core,
    StorageFull,
    CoreError,
    "The filesystem is out of space (ENOSPC) or quota (EDQUOT); the write did not happen or was undone."
);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let msg = err.to_string();
        if err.is_storage_full() {
            return StorageFull::new_err(msg);
        }
        match err {
            Error::DigestMismatch { .. } => DigestMismatch::new_err(msg),
            Error::InvalidDigest { .. } => InvalidDigest::new_err(msg),
            Error::UnsupportedAlgorithm(_) => UnsupportedAlgorithm::new_err(msg),
            Error::BlobNotFound(_) => BlobNotFound::new_err(msg),
            Error::UploadNotFound(_) => UploadNotFound::new_err(msg),
            Error::CorruptChunk { .. } => CorruptChunk::new_err(msg),
            Error::Gzip(_) => GzipError::new_err(msg),
            Error::InvalidUploadId(_)
            | Error::OutOfRange { .. }
            | Error::InvalidArgument(_)
            | Error::Compression(_)
            | Error::Io { .. } => CoreError::new_err(msg),
        }
    }
}

/// Add the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CoreError", py.get_type::<CoreError>())?;
    m.add("DigestMismatch", py.get_type::<DigestMismatch>())?;
    m.add("InvalidDigest", py.get_type::<InvalidDigest>())?;
    m.add(
        "UnsupportedAlgorithm",
        py.get_type::<UnsupportedAlgorithm>(),
    )?;
    m.add("BlobNotFound", py.get_type::<BlobNotFound>())?;
    m.add("UploadNotFound", py.get_type::<UploadNotFound>())?;
    m.add("CorruptChunk", py.get_type::<CorruptChunk>())?;
    m.add("StorageFull", py.get_type::<StorageFull>())?;
    m.add("GzipError", py.get_type::<GzipError>())?;
    Ok(())
}
