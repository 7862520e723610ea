//! Gzip layers moved as their uncompressed content plus the small data that recreates the
//! exact compressed bytes (docs/delta.md, "Gzip layers").
//!
//! - [`header`]: the gzip member header (RFC 1952), kept verbatim.
//! - [`recon`]: the reconstruction file: header, per-segment preflate corrections, trailer.
//! - [`analyse`]: gzip → reconstruction file + chunk list of the plaintext (preflate-rs),
//!   streaming, one plaintext segment (about 1 MiB) in memory at a time.
//! - [`recreate`]: plaintext + reconstruction file → the exact gzip bytes, streaming.
//! - [`inflate`]: plain decompression (flate2) for chunk lists and plaintext ranges.

pub mod analyse;
pub mod header;
pub mod inflate;
pub mod recon;
pub mod recreate;

pub use analyse::{analyse, Analysis};
pub use inflate::{gunzip_ranges, gunzip_to, plain_chunks};
pub use recreate::recreate;

use crate::errors::CoreError;

pub(crate) fn gzip_error(what: impl std::fmt::Display) -> CoreError {
    CoreError::Gzip(what.to_string())
}

#[cfg(test)]
mod tests;
