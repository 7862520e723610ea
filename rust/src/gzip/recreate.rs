//! Recreate the exact bytes of a gzip member from its plaintext and reconstruction file,
//! streaming: one segment of plaintext (about 1 MiB) and its output in memory at a time.

use std::io::{self, Cursor, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};

use preflate_rs::RecreateStreamProcessor;

use super::gzip_error;
use super::recon::{Item, ReconReader};
use crate::errors::Result;

/// Read `recon` and `plain` and hand every piece of the recreated gzip member to `out`, in
/// order; returns the number of bytes produced. The caller verifies the digest of what `out`
/// received: a wrong plaintext or corrupt reconstruction data either fails here
/// ([`crate::errors::CoreError::Gzip`]) or produces other bytes.
pub fn recreate(
    recon: impl Read,
    mut plain: impl Read,
    mut out: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let (mut reader, header) = ReconReader::new(recon)?;
    out(&header)?;
    let mut written = header.len() as u64;
    let mut stream = RecreateStreamProcessor::new();
    let mut buf = Vec::new();
    let mut plain_seen = 0u64;
    loop {
        match reader.next_item()? {
            Item::Segment { plain_len, corrections } => {
                buf.resize(plain_len, 0);
                plain.read_exact(&mut buf).map_err(|e| {
                    gzip_error(format!("plaintext ends before the reconstruction data: {e}"))
                })?;
                // Corrupt corrections can make preflate index out of bounds: a panic here is
                // bad input, not a bug of ours, and must not unwind into Python.
                let (bytes, _) = catch_unwind(AssertUnwindSafe(|| {
                    stream.recompress(&mut Cursor::new(&buf), &corrections)
                }))
                .map_err(|_| gzip_error("preflate failed on the reconstruction data"))?
                .map_err(|e| gzip_error(format!("preflate: {e}")))?;
                out(&bytes)?;
                written += bytes.len() as u64;
                plain_seen += plain_len as u64;
            }
            Item::End { trailer, plain_size, gzip_size } => {
                let mut extra = [0u8; 1];
                let more = loop {
                    match plain.read(&mut extra) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(gzip_error(format!("reading plaintext: {e}"))),
                    }
                };
                if plain_seen != plain_size || more != 0 {
                    return Err(gzip_error("plaintext length does not match the reconstruction data"));
                }
                out(&trailer)?;
                written += trailer.len() as u64;
                if written != gzip_size {
                    return Err(gzip_error("recreated size does not match the reconstruction data"));
                }
                return Ok(written);
            }
        }
    }
}
