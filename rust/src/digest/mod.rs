//! Hash algorithms, streaming digesters and OCI digest strings.
//!
//! - [`Algorithm`]: the algorithms this crate hashes with (sha256, sha512, blake3).
//! - [`Digester`]: a streaming hasher for one algorithm.
//! - [`Digest`]: a validated OCI digest (`sha256:<64 hex>` or `sha512:<128 hex>`).

mod algorithm;
mod digester;
mod reference;

pub use algorithm::Algorithm;
pub use digester::{digest_bytes, Digester};
pub use reference::{validate_digest, Digest};
