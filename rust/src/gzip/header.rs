//! The header of a gzip member (RFC 1952 §2.3), parsed only to find where deflate data
//! starts: the bytes themselves are kept verbatim in the reconstruction file.

use super::gzip_error;
use crate::errors::Result;

/// ID1, ID2, CM=8 (deflate).
pub const MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
/// A header longer than this (huge FEXTRA/FNAME/FCOMMENT) is refused: layers never have one.
pub const MAX_HEADER: usize = 64 * 1024;

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xE0;

/// Whether `data` starts like a gzip member with deflate compression.
pub fn is_gzip(data: &[u8]) -> bool {
    data.len() >= MAGIC.len() && data[..MAGIC.len()] == MAGIC
}

/// Length of the member header at the start of `data`; `None` when `data` ends inside it.
pub fn header_len(data: &[u8]) -> Result<Option<usize>> {
    let have = data.len().min(MAGIC.len());
    if data[..have] != MAGIC[..have] {
        return Err(gzip_error("not a gzip member with deflate compression"));
    }
    if data.len() < 10 {
        return Ok(None);
    }
    let flags = data[3];
    if flags & RESERVED != 0 {
        return Err(gzip_error("gzip header has reserved flags set"));
    }
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        if data.len() < pos + 2 {
            return Ok(None);
        }
        pos += 2 + u16::from_le_bytes([data[pos], data[pos + 1]]) as usize;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match data.get(pos..).and_then(|rest| rest.iter().position(|&b| b == 0)) {
                Some(zero) => pos += zero + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        pos += 2;
    }
    Ok((pos <= data.len()).then_some(pos))
}
