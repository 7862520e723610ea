//! `ChunkParams`, `chunk_bytes`, `encode_chunks`, `decode_chunks`, `zstd_compress`,
//! `zstd_decompress` (`BlobStore.chunks` and `Upload.copy_from` live with their classes).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::s3::PyS3BlobStore;
use super::store::PyBlobStore;
use super::{without_gil, GIL_RELEASE_THRESHOLD};
use crate::delta::{self, Chunk, ChunkParams};
use crate::errors::CoreError;

/// FastCDC chunk size bounds (min ≤ avg ≤ max, avg a power of two ≥ 256).
#[pyclass(name = "ChunkParams", module = "connreg._core", frozen, eq)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct PyChunkParams {
    pub(crate) inner: ChunkParams,
}

#[pymethods]
impl PyChunkParams {
    #[new]
    #[pyo3(signature = (min_size = 16384, avg_size = 65536, max_size = 262144))]
    fn new(min_size: i64, avg_size: i64, max_size: i64) -> PyResult<Self> {
        // i64 so that negative sizes are a CoreError like any other bad value
        let size = |v: i64| {
            u64::try_from(v).map_err(|_| {
                CoreError::InvalidArgument(format!("chunk params: sizes must be >= 0, got {v}"))
            })
        };
        Ok(PyChunkParams {
            inner: ChunkParams::new(size(min_size)?, size(avg_size)?, size(max_size)?)?,
        })
    }

    #[getter]
    fn min_size(&self) -> u64 {
        self.inner.min_size()
    }

    #[getter]
    fn avg_size(&self) -> u64 {
        self.inner.avg_size()
    }

    #[getter]
    fn max_size(&self) -> u64 {
        self.inner.max_size()
    }

    fn __repr__(&self) -> String {
        format!(
            "ChunkParams(min_size={}, avg_size={}, max_size={})",
            self.inner.min_size(),
            self.inner.avg_size(),
            self.inner.max_size()
        )
    }
}

/// The Rust params for an optional Python argument (defaults when `None`).
pub(crate) fn params_or_default(params: Option<&PyChunkParams>) -> ChunkParams {
    params.map_or_else(ChunkParams::default, |p| p.inner)
}

/// `(offset, length, blake3 hex)` tuples, as Python sees chunks.
pub(crate) fn chunk_tuples(chunks: Vec<Chunk>) -> Vec<(u64, u64, String)> {
    chunks
        .into_iter()
        .map(|c| (c.offset, c.length, c.id_hex()))
        .collect()
}

/// `(offset, length, blake3 hex)` for every chunk of `data`.
#[pyfunction]
#[pyo3(signature = (data, params = None))]
pub(crate) fn chunk_bytes(
    py: Python<'_>,
    data: &[u8],
    params: Option<PyRef<'_, PyChunkParams>>,
) -> Vec<(u64, u64, String)> {
    let params = params_or_default(params.as_deref());
    let chunks = if data.len() > GIL_RELEASE_THRESHOLD {
        without_gil(py, || delta::chunk_bytes(data, params))
    } else {
        delta::chunk_bytes(data, params)
    };
    chunk_tuples(chunks)
}

/// A batch frame with the bytes of each `(digest, offset, length)`.
#[pyfunction]
#[pyo3(signature = (store, items, level = delta::DEFAULT_LEVEL))]
pub(crate) fn encode_chunks<'py>(
    py: Python<'py>,
    store: &Bound<'py, PyAny>,
    items: Vec<(String, u64, u64)>,
    level: i32,
) -> PyResult<Bound<'py, PyBytes>> {
    // either store: the filesystem one reads its files, the S3 one does ranged GETs
    let frame = if let Ok(s3) = store.cast::<PyS3BlobStore>() {
        let s3 = s3.get().inner();
        without_gil(py, || s3.encode_chunks(&items, level))?
    } else {
        let fs = store.cast::<PyBlobStore>()?.get();
        let fs = fs.inner();
        without_gil(py, || delta::encode_chunks(fs, &items, level))?
    };
    Ok(PyBytes::new(py, &frame))
}

/// `(blake3 hex, data)` for each entry of a batch frame, verified.
#[pyfunction]
#[pyo3(signature = (frame, max_chunk = delta::DEFAULT_MAX_CHUNK))]
pub(crate) fn decode_chunks<'py>(
    py: Python<'py>,
    frame: &[u8],
    max_chunk: usize,
) -> PyResult<Vec<(String, Bound<'py, PyBytes>)>> {
    let entries = without_gil(py, || delta::decode_frame(frame, max_chunk))?;
    Ok(entries
        .into_iter()
        .map(|(id, data)| (hex::encode(id), PyBytes::new(py, &data)))
        .collect())
}

/// zstd-compress `data`.
#[pyfunction]
#[pyo3(signature = (data, level = delta::DEFAULT_LEVEL))]
pub(crate) fn zstd_compress<'py>(
    py: Python<'py>,
    data: &[u8],
    level: i32,
) -> PyResult<Bound<'py, PyBytes>> {
    let out = without_gil(py, || delta::compress(data, level))?;
    Ok(PyBytes::new(py, &out))
}

/// Decompress zstd `data` of at most `max_size` decompressed bytes.
#[pyfunction]
pub(crate) fn zstd_decompress<'py>(
    py: Python<'py>,
    data: &[u8],
    max_size: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let out = without_gil(py, || delta::decompress(data, max_size))?;
    Ok(PyBytes::new(py, &out))
}
