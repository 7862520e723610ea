//! `BlobStore` and `Upload`.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::delta::{chunk_tuples, params_or_default, PyChunkParams};
use super::without_gil;
use crate::errors::CoreError;
use crate::store::{BlobStore, Upload};

/// Content-addressed, deduplicated, crash-safe blob store.
#[pyclass(name = "BlobStore", module = "connreg._core", frozen)]
pub(crate) struct PyBlobStore {
    inner: BlobStore,
}

impl PyBlobStore {
    pub(crate) fn inner(&self) -> &BlobStore {
        &self.inner
    }
}

#[pymethods]
impl PyBlobStore {
    #[new]
    fn new(py: Python<'_>, root: PathBuf) -> PyResult<Self> {
        Ok(PyBlobStore {
            inner: without_gil(py, || BlobStore::open(root))?,
        })
    }

    #[pyo3(signature = (digest, params = None))]
    fn chunks(
        &self,
        py: Python<'_>,
        digest: &str,
        params: Option<PyRef<'_, PyChunkParams>>,
    ) -> PyResult<Vec<(u64, u64, String)>> {
        let params = params_or_default(params.as_deref());
        let chunks = without_gil(py, || self.inner.chunks(digest, params))?;
        Ok(chunk_tuples(chunks))
    }

    #[getter]
    fn root(&self) -> String {
        self.inner.root().to_string_lossy().into_owned()
    }

    fn path_for(&self, digest: &str) -> PyResult<String> {
        Ok(self.inner.path_for(digest)?.to_string_lossy().into_owned())
    }

    fn exists(&self, py: Python<'_>, digest: &str) -> PyResult<bool> {
        Ok(without_gil(py, || self.inner.exists(digest))?)
    }

    fn size(&self, py: Python<'_>, digest: &str) -> PyResult<Option<u64>> {
        Ok(without_gil(py, || self.inner.size(digest))?)
    }

    #[pyo3(signature = (data, expected_digest = None))]
    fn put_bytes(
        &self,
        py: Python<'_>,
        data: &[u8],
        expected_digest: Option<&str>,
    ) -> PyResult<String> {
        Ok(without_gil(py, || {
            self.inner.put_bytes(data, expected_digest)
        })?)
    }

    /// Many small blobs `[(bytes, expected digest), …]` in one call, their fsyncs together
    /// (`BlobStore::put_many`); the digests, in order.
    fn put_many(&self, py: Python<'_>, items: Vec<(Vec<u8>, String)>) -> PyResult<Vec<String>> {
        Ok(without_gil(py, || {
            let refs: Vec<(&[u8], &str)> = items
                .iter()
                .map(|(d, e)| (d.as_slice(), e.as_str()))
                .collect();
            self.inner.put_many(&refs)
        })?)
    }

    #[pyo3(signature = (digest, offset = 0, length = None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        digest: &str,
        offset: u64,
        length: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let range = without_gil(py, || self.inner.open_range(digest, offset, length))?;
        // Fill the new bytes object in place, without the GIL: nothing else can see it yet.
        PyBytes::new_with(py, range.len(), |buf| {
            Ok(without_gil(py, || range.read_into(buf))?)
        })
    }

    /// `(size, mtime)` of the blob's file, or `None` (as `S3BlobStore.stat`).
    fn stat(&self, py: Python<'_>, digest: &str) -> PyResult<Option<(u64, f64)>> {
        let path = self.inner.path_for(digest)?;
        Ok(without_gil(py, || stat_file(&path))?)
    }

    /// `(digest, size, mtime)` of every committed blob, sorted (as `S3BlobStore.list_blobs`).
    fn list_blobs(&self, py: Python<'_>) -> PyResult<Vec<(String, u64, f64)>> {
        Ok(without_gil(py, || -> crate::errors::Result<_> {
            let mut out = Vec::new();
            for digest in self.inner.list_digests()? {
                if let Some((size, mtime)) = stat_file(&self.inner.path_for(&digest)?)? {
                    out.push((digest, size, mtime)); // else: deleted while listing
                }
            }
            Ok(out)
        })?)
    }

    fn delete(&self, py: Python<'_>, digest: &str) -> PyResult<bool> {
        Ok(without_gil(py, || self.inner.delete(digest))?)
    }

    fn list_digests(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(without_gil(py, || self.inner.list_digests())?)
    }

    fn upload(&self, py: Python<'_>, upload_id: &str) -> PyResult<PyUpload> {
        Ok(PyUpload {
            inner: without_gil(py, || self.inner.upload(upload_id))?,
        })
    }

    fn upload_exists(&self, py: Python<'_>, upload_id: &str) -> PyResult<bool> {
        Ok(without_gil(py, || self.inner.upload_exists(upload_id))?)
    }

    fn upload_size(&self, py: Python<'_>, upload_id: &str) -> PyResult<Option<u64>> {
        Ok(without_gil(py, || self.inner.upload_size(upload_id))?)
    }

    fn abort_upload(&self, py: Python<'_>, upload_id: &str) -> PyResult<()> {
        Ok(without_gil(py, || self.inner.abort_upload(upload_id))?)
    }

    fn purge_stale_uploads(&self, py: Python<'_>, max_age_seconds: f64) -> PyResult<usize> {
        // negative or NaN: everything is stale; too large for a Duration: nothing is
        let max_age =
            Duration::try_from_secs_f64(max_age_seconds.max(0.0)).unwrap_or(Duration::MAX);
        Ok(without_gil(py, || self.inner.purge_stale_uploads(max_age))?)
    }

    fn release_idle_uploads(&self, py: Python<'_>, idle_seconds: f64, max_open: usize) -> usize {
        // negative or NaN: every idle upload; too large for a Duration: none by age
        let idle = Duration::try_from_secs_f64(idle_seconds.max(0.0)).unwrap_or(Duration::MAX);
        without_gil(py, || self.inner.release_idle_uploads(idle, max_open))
    }

    fn list_uploads(&self, py: Python<'_>) -> PyResult<Vec<(String, f64)>> {
        let found = without_gil(py, || self.inner.list_uploads())?;
        Ok(found
            .into_iter()
            .map(|(id, age)| (id, age.as_secs_f64()))
            .collect())
    }

    fn __repr__(&self) -> String {
        format!("BlobStore({:?})", self.inner.root().display().to_string())
    }
}

/// An in-progress upload; safe to use from worker threads.
#[pyclass(name = "Upload", module = "connreg._core", frozen)]
pub(crate) struct PyUpload {
    inner: Upload,
}

impl PyUpload {
    pub(crate) fn inner(&self) -> &Upload {
        &self.inner
    }
}

#[pymethods]
impl PyUpload {
    #[getter]
    fn upload_id(&self) -> &str {
        self.inner.id()
    }

    #[getter]
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<u64> {
        Ok(without_gil(py, || self.inner.write(data))?)
    }

    fn copy_from(&self, py: Python<'_>, digest: &str, offset: i64, length: i64) -> PyResult<u64> {
        // i64 so that a negative offset or length is a CoreError, not an OverflowError
        let (Ok(off), Ok(len)) = (u64::try_from(offset), u64::try_from(length)) else {
            return Err(CoreError::InvalidArgument(format!(
                "copy_from: offset and length must be >= 0, got {offset}, {length}"
            ))
            .into());
        };
        Ok(without_gil(py, || self.inner.copy_from(digest, off, len))?)
    }

    fn copy_many(&self, py: Python<'_>, ranges: Vec<(String, i64, i64)>) -> PyResult<u64> {
        let mut checked = Vec::with_capacity(ranges.len());
        for (digest, offset, length) in &ranges {
            let (Ok(off), Ok(len)) = (u64::try_from(*offset), u64::try_from(*length)) else {
                return Err(CoreError::InvalidArgument(format!(
                    "copy_many: offsets and lengths must be >= 0, got {offset}, {length}"
                ))
                .into());
            };
            checked.push((digest.as_str(), off, len));
        }
        Ok(without_gil(py, || self.inner.copy_many(&checked))?)
    }

    fn commit(&self, py: Python<'_>, expected_digest: &str) -> PyResult<String> {
        Ok(without_gil(py, || self.inner.commit(expected_digest))?)
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        Ok(without_gil(py, || self.inner.abort())?)
    }

    fn release(&self) -> bool {
        self.inner.release()
    }

    /// The bytes are in the file after every write already: returns the size (the S3 upload
    /// stores its state here; callers flush once a request has written).
    fn flush(&self) -> u64 {
        self.inner.size()
    }

    fn __repr__(&self) -> String {
        format!("Upload({:?}, size={})", self.inner.id(), self.inner.size())
    }
}

/// `(size, mtime as seconds since the epoch)` of a file, `None` if it does not exist.
fn stat_file(path: &std::path::Path) -> crate::errors::Result<Option<(u64, f64)>> {
    use crate::errors::IoContext;
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mtime = meta.modified().ctx("stat", path)?;
            let secs = mtime
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            Ok(Some((meta.len(), secs)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx("stat", path),
    }
}
