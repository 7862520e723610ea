//! Analyse a gzip member once: its plaintext (cut into content-defined chunks) and the
//! reconstruction file that turns that plaintext back into exactly these bytes.
//!
//! preflate-rs parses the deflate stream a piece at a time, estimates the compressor's
//! parameters from the first piece and records, per piece, where a re-deflate with those
//! parameters would differ from the original (the corrections). Pieces are sized to give
//! about [`TARGET_SEGMENT`] of plaintext; only one piece, its plaintext and the 32 KiB window
//! are in memory at a time. Each piece is recompressed and compared as it is analysed
//! (`verify_compression`), so a reconstruction file is only ever written for a stream it
//! recreates exactly.

use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use preflate_rs::{ExitCode, PreflateConfig, PreflateStreamProcessor};

use super::gzip_error;
use super::header::{header_len, MAX_HEADER};
use super::recon::{ReconWriter, MAX_SEGMENT_PLAIN, MAX_TRAILER};
use crate::delta::{Chunk, ChunkHasher, ChunkParams};
use crate::errors::{CoreError, Result};

/// Plaintext per segment the analyser aims at.
pub const TARGET_SEGMENT: usize = 1024 * 1024;
const MIN_PIECE: usize = 16 * 1024;
const MAX_PIECE: usize = 4 * 1024 * 1024;
/// A single deflate block longer than this (compressed) is refused rather than buffered.
const MAX_BLOCK: usize = 64 * 1024 * 1024;
/// preflate counts plaintext positions in 32 bits.
pub const MAX_PLAIN: u64 = (i32::MAX as u64) - (MAX_SEGMENT_PLAIN as u64);
/// Hash-chain lookups preflate may assume the compressor did (zlib -9 uses 4096).
const MAX_CHAIN: u32 = 4096;

/// What [`analyse`] found.
#[derive(Debug)]
pub struct Analysis {
    pub plain_size: u64,
    pub gzip_size: u64,
    pub recon_size: u64,
    pub segments: usize,
    pub chunks: Vec<Chunk>,
}

fn read_err(e: io::Error) -> CoreError {
    gzip_error(format!("reading the layer: {e}"))
}

/// Read up to `n` more bytes of `input` onto `buf`; returns how many arrived (0 at the end).
fn fill(input: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> Result<usize> {
    let start = buf.len();
    buf.resize(start + n, 0);
    let mut got = 0;
    while got < n {
        match input.read(&mut buf[start + got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                buf.truncate(start + got);
                return Err(read_err(e));
            }
        }
    }
    buf.truncate(start + got);
    Ok(got)
}

/// Analyse the gzip member `input`, writing its reconstruction file to `recon` and cutting
/// its plaintext into chunks with `params`. Fails with [`CoreError::Gzip`] for anything it
/// cannot recreate exactly: not gzip, a compressor preflate cannot model, a truncated or
/// corrupt stream, a CRC that does not match.
pub fn analyse(input: impl Read, recon: impl Write, params: ChunkParams) -> Result<Analysis> {
    analyse_in_segments(input, recon, params, TARGET_SEGMENT)
}

/// [`analyse`] aiming at `target` bytes of plaintext per segment.
pub fn analyse_in_segments(
    mut input: impl Read,
    recon: impl Write,
    params: ChunkParams,
    target: usize,
) -> Result<Analysis> {
    let mut pending: Vec<u8> = Vec::new();
    let header = loop {
        if let Some(n) = header_len(&pending)? {
            break n;
        }
        if pending.len() >= MAX_HEADER || fill(&mut input, &mut pending, 4096)? == 0 {
            return Err(gzip_error("truncated or oversized gzip header"));
        }
    };
    let mut writer = ReconWriter::new(recon, &pending[..header])?;
    pending.drain(..header);
    let mut consumed = header as u64;

    let config = PreflateConfig {
        max_chain_length: MAX_CHAIN,
        plain_text_limit: MAX_SEGMENT_PLAIN,
        verify_compression: true,
    };
    let mut stream = PreflateStreamProcessor::new(&config);
    let mut chunker = ChunkHasher::new(params);
    let mut crc = crc32fast::Hasher::new();
    let mut plain_size = 0u64;
    let mut segments = 0usize;
    let mut want = 256 * 1024;
    let mut eof = false;
    while !stream.is_done() {
        if pending.len() < want && !eof {
            let need = want - pending.len();
            eof = fill(&mut input, &mut pending, need)? < need;
        }
        let piece = &pending[..pending.len().min(want)];
        // A stream preflate cannot model can make it panic: that is a layer we do not
        // handle, not a reason to unwind into Python.
        let step = catch_unwind(AssertUnwindSafe(|| stream.decompress(piece)))
            .map_err(|_| gzip_error("preflate failed on this deflate stream"))?;
        match step {
            Ok(result) => {
                let text = stream.plain_text().text();
                if result.compressed_size == 0 && text.is_empty() {
                    want = grow(want, pending.len(), eof)?;
                    continue;
                }
                writer.segment(text.len(), &result.corrections)?;
                chunker.update(text);
                crc.update(text);
                plain_size += text.len() as u64;
                if plain_size > MAX_PLAIN {
                    return Err(gzip_error("plaintext over 2 GiB is not supported"));
                }
                let ratio_piece = target as u64 * result.compressed_size.max(1) as u64
                    / (text.len().max(1) as u64);
                want = (ratio_piece as usize).clamp(MIN_PIECE, MAX_PIECE);
                pending.drain(..result.compressed_size);
                consumed += result.compressed_size as u64;
                segments += 1;
                stream.shrink_to_dictionary();
            }
            Err(e) if e.exit_code() == ExitCode::ShortRead => {
                want = grow(want, pending.len(), eof)?;
            }
            Err(e) => return Err(gzip_error(format!("preflate: {e}"))),
        }
    }
    // The trailer: CRC-32 and ISIZE, plus whatever follows the member (kept verbatim).
    while fill(&mut input, &mut pending, 4096)? > 0 {
        if pending.len() > MAX_TRAILER {
            return Err(gzip_error("more than one gzip member, or data after the member"));
        }
    }
    if pending.len() < 8 {
        return Err(gzip_error("truncated gzip trailer"));
    }
    let want_crc = u32::from_le_bytes(pending[0..4].try_into().unwrap());
    let want_isize = u32::from_le_bytes(pending[4..8].try_into().unwrap());
    if want_crc != crc.finalize() || want_isize != plain_size as u32 {
        return Err(gzip_error("gzip trailer does not match the content (CRC-32 or size)"));
    }
    let gzip_size = consumed + pending.len() as u64;
    let (_, recon_size) = writer.finish(&pending, plain_size, gzip_size)?;
    Ok(Analysis {
        plain_size,
        gzip_size,
        recon_size,
        segments,
        chunks: chunker.finish(),
    })
}

/// The next piece size after a short read: twice as much, if there is more to read.
fn grow(want: usize, have: usize, eof: bool) -> Result<usize> {
    if eof && want >= have {
        return Err(gzip_error("deflate stream is truncated"));
    }
    if want >= MAX_BLOCK {
        return Err(gzip_error("deflate block too large"));
    }
    Ok(want * 2)
}
