//! `gzip_analyse`, `gzip_recreate`, `gzip_recreate_file`, `gzip_plain_chunks`,
//! `gunzip_to_file`, `gunzip_ranges`, `gunzip_frame`: thin wrappers over [`crate::gzip`],
//! each running with the GIL released (they read and write whole layers).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::delta::{chunk_tuples, params_or_default, PyChunkParams};
use super::store::PyUpload;
use super::without_gil;
use crate::delta::{self, FrameEncoder};
use crate::errors::{CoreError, IoContext, Result};
use crate::gzip;

const READ_BUFFER: usize = 256 * 1024;

fn open(path: &str) -> Result<BufReader<File>> {
    let p = Path::new(path);
    Ok(BufReader::with_capacity(READ_BUFFER, File::open(p).ctx("open", p)?))
}

fn create(path: &str) -> Result<BufWriter<File>> {
    let p = Path::new(path);
    Ok(BufWriter::with_capacity(READ_BUFFER, File::create(p).ctx("create", p)?))
}

type Chunks = Vec<(u64, u64, String)>;

/// Analyse the gzip file at `gzip_path`, writing its reconstruction data to `recon_path`:
/// `(plain_size, gzip_size, recon_size, segments, plaintext chunks)`. Raises `GzipError` for
/// a layer that cannot be recreated exactly.
#[pyfunction]
#[pyo3(signature = (gzip_path, recon_path, params = None))]
fn gzip_analyse(
    py: Python<'_>,
    gzip_path: &str,
    recon_path: &str,
    params: Option<PyRef<'_, PyChunkParams>>,
) -> PyResult<(u64, u64, u64, usize, Chunks)> {
    let params = params_or_default(params.as_deref());
    let a = without_gil(py, || -> Result<gzip::Analysis> {
        let mut out = create(recon_path)?;
        let a = gzip::analyse(open(gzip_path)?, &mut out, params)?;
        let file = out.into_inner().map_err(|e| CoreError::io("write", Path::new(recon_path), e.into_error()))?;
        file.sync_all().ctx("fsync", Path::new(recon_path))?;
        Ok(a)
    })?;
    Ok((a.plain_size, a.gzip_size, a.recon_size, a.segments, chunk_tuples(a.chunks)))
}

/// Recreate a gzip layer from `plain_path` and `recon_path`, appending it to `upload`;
/// returns the bytes appended. The caller commits the upload, which verifies the digest.
#[pyfunction]
fn gzip_recreate(py: Python<'_>, recon_path: &str, plain_path: &str, upload: PyRef<'_, PyUpload>) -> PyResult<u64> {
    let upload = upload.inner();
    Ok(without_gil(py, || {
        gzip::recreate(open(recon_path)?, open(plain_path)?, |bytes| upload.write(bytes).map(|_| ()))
    })?)
}

/// Recreate a gzip layer into a plain file (benchmarks, tools); returns its size.
#[pyfunction]
fn gzip_recreate_file(py: Python<'_>, recon_path: &str, plain_path: &str, out_path: &str) -> PyResult<u64> {
    Ok(without_gil(py, || {
        let mut out = create(out_path)?;
        let n = gzip::recreate(open(recon_path)?, open(plain_path)?, |bytes| {
            out.write_all(bytes).ctx("write", Path::new(out_path))
        })?;
        out.flush().ctx("write", Path::new(out_path))?;
        Ok::<u64, CoreError>(n)
    })?)
}

/// `(plain_size, chunks)` of the plaintext of a gzip file (inflate only, no analysis).
#[pyfunction]
#[pyo3(signature = (gzip_path, params = None))]
fn gzip_plain_chunks(
    py: Python<'_>,
    gzip_path: &str,
    params: Option<PyRef<'_, PyChunkParams>>,
) -> PyResult<(u64, Chunks)> {
    let params = params_or_default(params.as_deref());
    let (size, chunks) = without_gil(py, || gzip::plain_chunks(open(gzip_path)?, params))?;
    Ok((size, chunk_tuples(chunks)))
}

/// Write the plaintext of a gzip file to `out_path`; returns its length.
#[pyfunction]
fn gunzip_to_file(py: Python<'_>, gzip_path: &str, out_path: &str) -> PyResult<u64> {
    Ok(without_gil(py, || -> Result<u64> {
        let mut out = create(out_path)?;
        let n = gzip::gunzip_to(open(gzip_path)?, &mut out)?;
        let file = out.into_inner().map_err(|e| CoreError::io("write", Path::new(out_path), e.into_error()))?;
        file.sync_all().ctx("fsync", Path::new(out_path))?;
        Ok(n)
    })?)
}

/// The bytes of each `(offset, length)` range of a gzip file's plaintext, in the order asked.
#[pyfunction]
fn gunzip_ranges<'py>(py: Python<'py>, gzip_path: &str, ranges: Vec<(u64, u64)>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let found = without_gil(py, || gzip::gunzip_ranges(open(gzip_path)?, &ranges))?;
    Ok(found.iter().map(|b| PyBytes::new(py, b)).collect())
}

/// A chunk batch frame (as `encode_chunks`) of `(offset, length)` ranges of a gzip file's
/// plaintext, each compressed at `level` when that shrinks it.
#[pyfunction]
#[pyo3(signature = (gzip_path, ranges, level = delta::DEFAULT_LEVEL))]
fn gunzip_frame<'py>(py: Python<'py>, gzip_path: &str, ranges: Vec<(u64, u64)>, level: i32) -> PyResult<Bound<'py, PyBytes>> {
    let frame = without_gil(py, || -> Result<Vec<u8>> {
        let found = gzip::gunzip_ranges(open(gzip_path)?, &ranges)?;
        let mut enc = FrameEncoder::new(level)?;
        for bytes in &found {
            enc.push(bytes)?;
        }
        Ok(enc.finish())
    })?;
    Ok(PyBytes::new(py, &frame))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gzip_analyse, m)?)?;
    m.add_function(wrap_pyfunction!(gzip_recreate, m)?)?;
    m.add_function(wrap_pyfunction!(gzip_recreate_file, m)?)?;
    m.add_function(wrap_pyfunction!(gzip_plain_chunks, m)?)?;
    m.add_function(wrap_pyfunction!(gunzip_to_file, m)?)?;
    m.add_function(wrap_pyfunction!(gunzip_ranges, m)?)?;
    m.add_function(wrap_pyfunction!(gunzip_frame, m)?)?;
    Ok(())
}
