//! Plain decompression of a gzip member (flate2), for what needs the plaintext but not the
//! reconstruction data: a chunk list, a local copy of an old version, byte ranges of it.

use std::io::{self, Read, Write};

use flate2::read::GzDecoder;

use super::gzip_error;
use crate::delta::{Chunk, ChunkHasher, ChunkParams};
use crate::errors::{CoreError, Result};

const BUFFER: usize = 256 * 1024;

fn inflate_err(e: io::Error) -> CoreError {
    gzip_error(format!("inflating: {e}"))
}

/// Feed the plaintext of `input` to `sink` in pieces; returns its length.
fn each_piece(input: impl Read, mut sink: impl FnMut(&[u8]) -> Result<bool>) -> Result<u64> {
    let mut decoder = GzDecoder::new(io::BufReader::with_capacity(BUFFER, input));
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(inflate_err(e)),
        };
        total += n as u64;
        if !sink(&buf[..n])? {
            return Ok(total);
        }
    }
}

/// The plaintext's length and content-defined chunks.
pub fn plain_chunks(input: impl Read, params: ChunkParams) -> Result<(u64, Vec<Chunk>)> {
    let mut hasher = ChunkHasher::new(params);
    let size = each_piece(input, |piece| {
        hasher.update(piece);
        Ok(true)
    })?;
    Ok((size, hasher.finish()))
}

/// Write the plaintext to `out`; returns its length.
pub fn gunzip_to(input: impl Read, mut out: impl Write) -> Result<u64> {
    let size = each_piece(input, |piece| {
        out.write_all(piece).map_err(|e| gzip_error(format!("writing plaintext: {e}")))?;
        Ok(true)
    })?;
    out.flush().map_err(|e| gzip_error(format!("writing plaintext: {e}")))?;
    Ok(size)
}

/// The bytes of each `(offset, length)` range of the plaintext, in the order asked, in one
/// pass (ranges may repeat; distinct ones must not overlap). The caller bounds their total.
pub fn gunzip_ranges(input: impl Read, ranges: &[(u64, u64)]) -> Result<Vec<Vec<u8>>> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i]);
    order.dedup_by_key(|i| ranges[*i]);
    for pair in order.windows(2) {
        let (a, b) = (ranges[pair[0]], ranges[pair[1]]);
        if a.0 + a.1 > b.0 {
            return Err(CoreError::InvalidArgument("overlapping plaintext ranges".into()));
        }
    }
    let mut found: Vec<Vec<u8>> = vec![Vec::new(); ranges.len()];
    let mut next = 0usize; // position in `order`
    let mut pos = 0u64;
    each_piece(input, |piece| {
        let end = pos + piece.len() as u64;
        while next < order.len() {
            let (offset, length) = ranges[order[next]];
            let slot = &mut found[order[next]];
            let from = offset + slot.len() as u64;
            if from >= end {
                break;
            }
            let upto = (offset + length).min(end);
            slot.extend_from_slice(&piece[(from - pos) as usize..(upto - pos) as usize]);
            if (slot.len() as u64) < length {
                break;
            }
            next += 1;
        }
        pos = end;
        Ok(next < order.len())
    })?;
    if next < order.len() {
        return Err(CoreError::InvalidArgument("plaintext range past the end".into()));
    }
    for (i, range) in ranges.iter().enumerate() {
        if found[i].is_empty() && range.1 > 0 {
            let twin = order.iter().find(|&&j| ranges[j] == *range).copied();
            if let Some(j) = twin {
                found[i] = found[j].clone();
            }
        }
    }
    Ok(found)
}
