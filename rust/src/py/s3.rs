//! `S3BlobStore` and `S3Upload`: the same Python-facing methods as `BlobStore` and `Upload`
//! (plus `flush`, `stat`, `list_blobs`, `presigned_url`), so the Python layers take either.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::delta::{chunk_tuples, params_or_default, PyChunkParams};
use super::without_gil;
use crate::errors::CoreError;
use crate::store::s3::{S3BlobStore, S3Options, S3Upload};

/// Seconds since the epoch, as Python's `os.stat().st_mtime`.
fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A non-negative, finite number of seconds (negative or NaN: zero; too large: the maximum).
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// Content-addressed blob store on S3-compatible object storage.
#[pyclass(name = "S3BlobStore", module = "connreg._core", frozen)]
pub(crate) struct PyS3BlobStore {
    inner: S3BlobStore,
}

impl PyS3BlobStore {
    pub(crate) fn inner(&self) -> &S3BlobStore {
        &self.inner
    }
}

#[pymethods]
impl PyS3BlobStore {
    #[new]
    #[pyo3(signature = (url, endpoint = None, region = None, access_key_id = None,
                        secret_access_key = None, session_token = None, allow_http = false,
                        part_size = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: &str,
        endpoint: Option<String>,
        region: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        session_token: Option<String>,
        allow_http: bool,
        part_size: Option<usize>,
    ) -> PyResult<Self> {
        let endpoint = endpoint.or_else(|| {
            std::env::var("CONNREG_S3_ENDPOINT")
                .ok()
                .filter(|v| !v.is_empty())
        });
        let options = S3Options {
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            allow_http,
            part_size,
        };
        Ok(PyS3BlobStore {
            inner: S3BlobStore::open(url, options)?,
        })
    }

    /// `s3://bucket[/prefix]`: stands where `BlobStore.root` is a directory.
    #[getter]
    fn root(&self) -> String {
        self.inner.url()
    }

    #[getter]
    fn url(&self) -> String {
        self.inner.url()
    }

    #[getter]
    fn part_size(&self) -> usize {
        self.inner.part_size()
    }

    /// There is no local file: always raises (use `read`, `key_for` or `presigned_url`).
    fn path_for(&self, digest: &str) -> PyResult<String> {
        let key = self.inner.key_for(digest)?;
        Err(CoreError::InvalidArgument(format!(
            "S3BlobStore keeps {digest} at key {key}, not in a local file: use read() or presigned_url()"
        ))
        .into())
    }

    fn key_for(&self, digest: &str) -> PyResult<String> {
        Ok(self.inner.key_for(digest)?)
    }

    fn exists(&self, py: Python<'_>, digest: &str) -> PyResult<bool> {
        Ok(without_gil(py, || self.inner.exists(digest))?)
    }

    fn size(&self, py: Python<'_>, digest: &str) -> PyResult<Option<u64>> {
        Ok(without_gil(py, || self.inner.size(digest))?)
    }

    fn stat(&self, py: Python<'_>, digest: &str) -> PyResult<Option<(u64, f64)>> {
        let found = without_gil(py, || self.inner.stat(digest))?;
        Ok(found.map(|(size, modified)| (size, epoch_seconds(modified))))
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

    #[pyo3(signature = (digest, offset = 0, length = None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        digest: &str,
        offset: u64,
        length: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = without_gil(py, || self.inner.read(digest, offset, length))?;
        Ok(PyBytes::new(py, &data))
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

    fn delete(&self, py: Python<'_>, digest: &str) -> PyResult<bool> {
        Ok(without_gil(py, || self.inner.delete(digest))?)
    }

    fn list_digests(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(without_gil(py, || self.inner.list_digests())?)
    }

    fn list_blobs(&self, py: Python<'_>) -> PyResult<Vec<(String, u64, f64)>> {
        let found = without_gil(py, || self.inner.list_blobs())?;
        Ok(found
            .into_iter()
            .map(|(d, size, modified)| (d, size, epoch_seconds(modified)))
            .collect())
    }

    fn upload(&self, py: Python<'_>, upload_id: &str) -> PyResult<PyS3Upload> {
        Ok(PyS3Upload {
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
        let max_age = seconds(max_age_seconds);
        Ok(without_gil(py, || self.inner.purge_stale_uploads(max_age))?)
    }

    /// Nothing to release: a handle holds no descriptor between calls. Always 0.
    #[allow(unused_variables)]
    fn release_idle_uploads(&self, idle_seconds: f64, max_open: usize) -> usize {
        0
    }

    fn list_uploads(&self, py: Python<'_>) -> PyResult<Vec<(String, f64)>> {
        let found = without_gil(py, || self.inner.list_uploads())?;
        Ok(found
            .into_iter()
            .map(|(id, age)| (id, age.as_secs_f64()))
            .collect())
    }

    #[pyo3(signature = (digest, expires_seconds = 300.0))]
    fn presigned_url(&self, py: Python<'_>, digest: &str, expires_seconds: f64) -> PyResult<String> {
        // SigV4 caps a presigned URL at 7 days
        let expires = seconds(expires_seconds).clamp(Duration::from_secs(1), Duration::from_secs(604_800));
        Ok(without_gil(py, || self.inner.presigned_url(digest, expires))?)
    }

    fn __repr__(&self) -> String {
        format!("S3BlobStore({:?})", self.inner.url())
    }
}

/// An upload session on S3; safe to use from worker threads.
#[pyclass(name = "S3Upload", module = "connreg._core", frozen)]
pub(crate) struct PyS3Upload {
    inner: S3Upload,
}

#[pymethods]
impl PyS3Upload {
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

    fn flush(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(without_gil(py, || self.inner.flush())?)
    }

    fn copy_from(&self, py: Python<'_>, digest: &str, offset: i64, length: i64) -> PyResult<u64> {
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

    /// Nothing to release (no descriptor is held). Always `False`.
    fn release(&self) -> bool {
        false
    }

    fn __repr__(&self) -> String {
        format!("S3Upload({:?}, size={})", self.inner.id(), self.inner.size())
    }
}
