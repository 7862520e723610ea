//! Native core of connreg, imported from Python as `connreg._core`.
//!
//! This file only wires modules together; see `docs/core-api.md` for the Python contract.
//! - [`errors`]: the crate's error type (pure Rust).
//! - [`digest`]: algorithms, streaming digesters, OCI digest validation (pure Rust).
//! - [`store`]: the content-addressed blob store and uploads (pure Rust).
//! - [`delta`]: FastCDC chunking, BLAKE3 chunk ids, zstd chunk batch frames (pure Rust).
//! - [`gzip`]: gzip layers as plaintext + preflate reconstruction data (pure Rust).
//! - `py`: thin pyo3 wrappers, the GIL choke point and the Python exception mapping.

pub mod delta;
pub mod digest;
pub mod errors;
pub mod gzip;
pub mod store;

mod py;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::exceptions::register(m)?;
    m.add_class::<py::digest::PyDigester>()?;
    m.add_class::<py::store::PyBlobStore>()?;
    m.add_class::<py::store::PyUpload>()?;
    m.add_class::<py::s3::PyS3BlobStore>()?;
    m.add_class::<py::s3::PyS3Upload>()?;
    m.add_class::<py::delta::PyChunkParams>()?;
    m.add_function(wrap_pyfunction!(py::digest::digest_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(py::digest::validate_digest, m)?)?;
    m.add_function(wrap_pyfunction!(py::delta::chunk_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(py::delta::encode_chunks, m)?)?;
    m.add_function(wrap_pyfunction!(py::delta::decode_chunks, m)?)?;
    m.add_function(wrap_pyfunction!(py::delta::zstd_compress, m)?)?;
    m.add_function(wrap_pyfunction!(py::delta::zstd_decompress, m)?)?;
    py::gzip::register(m)?;
    Ok(())
}
