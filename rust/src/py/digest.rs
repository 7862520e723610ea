//! `Digester`, `digest_bytes`, `validate_digest`.

use pyo3::prelude::*;

use super::{without_gil, GIL_RELEASE_THRESHOLD};
use crate::digest::{self, Algorithm, Digester};

/// Streaming hash (sha256, sha512 or blake3).
#[pyclass(name = "Digester", module = "connreg._core")]
pub(crate) struct PyDigester {
    inner: Digester,
}

#[pymethods]
impl PyDigester {
    #[new]
    #[pyo3(signature = (algorithm = "sha256"))]
    fn new(algorithm: &str) -> PyResult<Self> {
        Ok(PyDigester {
            inner: Digester::new(Algorithm::parse(algorithm)?),
        })
    }

    /// Feed bytes; the GIL is released for buffers over 64 KiB.
    fn update(&mut self, py: Python<'_>, data: &[u8]) {
        let inner = &mut self.inner;
        if data.len() > GIL_RELEASE_THRESHOLD {
            without_gil(py, || inner.update(data));
        } else {
            inner.update(data);
        }
    }

    fn hexdigest(&self) -> String {
        self.inner.hexdigest()
    }

    fn digest(&self) -> String {
        self.inner.digest()
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.inner.algorithm().name()
    }

    fn __repr__(&self) -> String {
        format!("Digester({:?})", self.inner.algorithm().name())
    }
}

/// `"<algorithm>:<hex>"` of `data`.
#[pyfunction]
#[pyo3(signature = (data, algorithm = "sha256"))]
pub(crate) fn digest_bytes(py: Python<'_>, data: &[u8], algorithm: &str) -> PyResult<String> {
    let algorithm = Algorithm::parse(algorithm)?;
    Ok(if data.len() > GIL_RELEASE_THRESHOLD {
        without_gil(py, || digest::digest_bytes(data, algorithm))
    } else {
        digest::digest_bytes(data, algorithm)
    })
}

/// Split a valid OCI digest into `(algorithm, hex)`.
#[pyfunction]
pub(crate) fn validate_digest(s: &str) -> PyResult<(String, String)> {
    Ok(digest::validate_digest(s)?)
}
