//! Thin pyo3 wrappers over the pure-Rust [`crate::digest`], [`crate::store`] and
//! [`crate::delta`] layers.
//!
//! Nothing in here holds logic worth testing on its own: each method converts arguments,
//! calls into Rust (releasing the GIL through [`without_gil`] where there is I/O or bulk
//! hashing) and converts the result or error back.

pub(crate) mod delta;
pub(crate) mod digest;
pub(crate) mod exceptions;
pub(crate) mod gzip;
pub(crate) mod s3;
pub(crate) mod store;

use pyo3::marker::Ungil;
use pyo3::Python;

/// Inputs larger than this are hashed with the GIL released.
pub(crate) const GIL_RELEASE_THRESHOLD: usize = 64 * 1024;

/// The one place this crate releases the GIL (detaches from the interpreter).
///
/// Use it around anything that blocks on the filesystem (opening, reading, writing, fsync,
/// rename) or hashes more than [`GIL_RELEASE_THRESHOLD`] bytes, so other Python threads (trio's
/// worker threads in particular) keep running. The closure must not touch Python objects; borrowed
/// `&[u8]` from a `bytes` argument is fine, since `bytes` is immutable and the caller's reference
/// keeps it alive for the duration of the call.
pub(crate) fn without_gil<T, F>(py: Python<'_>, f: F) -> T
where
    F: Ungil + FnOnce() -> T,
    T: Ungil,
{
    py.detach(f)
}
