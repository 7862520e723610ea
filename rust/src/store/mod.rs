//! A content-addressed, deduplicated, crash-safe blob store.
//!
//! On-disk layout under the store root (the one place it is drawn; `layout.rs` computes it):
//! ```text
//! <root>/blobs/<alg>/<first two hex>/<hex>   committed blobs: verified, fsynced, immutable
//! <root>/uploads/<upload_id>                 in-progress upload bytes (append-only)
//! <root>/tmp/<unique>                        staging for put_bytes
//! ```
//! A blob path is only ever created by `rename(2)` of a fully written, verified and fsynced
//! file, followed by an fsync of the blob's directory. A crash at any moment therefore leaves
//! at most a stray upload or tmp file, never a partial blob at a digest path.

mod blob_store;
mod fsutil;
mod layout;
pub mod s3;
mod upload;

pub use blob_store::{BlobRange, BlobStore};
pub use upload::{validate_upload_id, Upload};

/// Lock a mutex, ignoring poisoning: every guarded state here is re-validated against the
/// filesystem before use, so a panic in another thread cannot leave it dangerously stale.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
