//! The reconstruction file of a gzip layer: everything besides the plaintext that recreating
//! the exact gzip bytes needs, written and read as a stream.
//!
//! ```text
//! file    := "CRGZ1" | header_len (u32 LE) | header bytes | segment* | end
//! segment := 'S' | plain_len (u32 LE) | corrections_len (u32 LE) | corrections
//! end     := 'E' | trailer_len (u32 LE) | trailer | plain_size (u64 LE) | gzip_size (u64 LE)
//! ```
//!
//! A segment is the preflate corrections for the deflate blocks that produce the next
//! `plain_len` bytes of plaintext; the trailer is the CRC-32/ISIZE and anything after the
//! member. Every length is bounded on read, so a corrupt file cannot make a reader allocate
//! more than [`MAX_SEGMENT_PLAIN`] + [`MAX_CORRECTIONS`].

use std::io::{self, Read, Write};

use super::gzip_error;
use super::header::MAX_HEADER;
use crate::errors::{CoreError, Result};

pub const MAGIC: &[u8; 5] = b"CRGZ1";
/// Plaintext of one segment at most (the analyser aims at 1 MiB; one deflate block can hold
/// more, up to 258 bytes per symbol).
pub const MAX_SEGMENT_PLAIN: usize = 32 * 1024 * 1024;
pub const MAX_CORRECTIONS: usize = 32 * 1024 * 1024;
pub const MAX_TRAILER: usize = 64 * 1024;

const SEGMENT: u8 = b'S';
const END: u8 = b'E';

fn io_err(e: io::Error) -> CoreError {
    gzip_error(format!("reconstruction data: {e}"))
}

pub struct ReconWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> ReconWriter<W> {
    pub fn new(mut out: W, header: &[u8]) -> Result<Self> {
        let len = u32::try_from(header.len()).map_err(|_| gzip_error("header too long"))?;
        out.write_all(MAGIC).map_err(io_err)?;
        out.write_all(&len.to_le_bytes()).map_err(io_err)?;
        out.write_all(header).map_err(io_err)?;
        Ok(ReconWriter {
            out,
            written: (MAGIC.len() + 4 + header.len()) as u64,
        })
    }

    pub fn segment(&mut self, plain_len: usize, corrections: &[u8]) -> Result<()> {
        if plain_len > MAX_SEGMENT_PLAIN || corrections.len() > MAX_CORRECTIONS {
            return Err(gzip_error("segment over the reconstruction file's limits"));
        }
        self.out.write_all(&[SEGMENT]).map_err(io_err)?;
        self.out.write_all(&(plain_len as u32).to_le_bytes()).map_err(io_err)?;
        self.out.write_all(&(corrections.len() as u32).to_le_bytes()).map_err(io_err)?;
        self.out.write_all(corrections).map_err(io_err)?;
        self.written += 9 + corrections.len() as u64;
        Ok(())
    }

    /// Write the end record; returns the writer and the file's size.
    pub fn finish(mut self, trailer: &[u8], plain_size: u64, gzip_size: u64) -> Result<(W, u64)> {
        if trailer.len() > MAX_TRAILER {
            return Err(gzip_error("trailer over the reconstruction file's limit"));
        }
        self.out.write_all(&[END]).map_err(io_err)?;
        self.out.write_all(&(trailer.len() as u32).to_le_bytes()).map_err(io_err)?;
        self.out.write_all(trailer).map_err(io_err)?;
        self.out.write_all(&plain_size.to_le_bytes()).map_err(io_err)?;
        self.out.write_all(&gzip_size.to_le_bytes()).map_err(io_err)?;
        self.out.flush().map_err(io_err)?;
        self.written += 5 + trailer.len() as u64 + 16;
        Ok((self.out, self.written))
    }
}

pub enum Item {
    Segment { plain_len: usize, corrections: Vec<u8> },
    End { trailer: Vec<u8>, plain_size: u64, gzip_size: u64 },
}

pub struct ReconReader<R: Read> {
    inp: R,
}

fn read_u32<R: Read>(inp: &mut R) -> Result<u32> {
    let mut b = [0u8; 4];
    inp.read_exact(&mut b).map_err(io_err)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64<R: Read>(inp: &mut R) -> Result<u64> {
    let mut b = [0u8; 8];
    inp.read_exact(&mut b).map_err(io_err)?;
    Ok(u64::from_le_bytes(b))
}

fn read_vec<R: Read>(inp: &mut R, len: usize, max: usize, what: &str) -> Result<Vec<u8>> {
    if len > max {
        return Err(gzip_error(format!("reconstruction data: {what} of {len} bytes")));
    }
    let mut v = vec![0u8; len];
    inp.read_exact(&mut v).map_err(io_err)?;
    Ok(v)
}

impl<R: Read> ReconReader<R> {
    /// Open a reconstruction stream; returns the reader and the gzip header bytes.
    pub fn new(mut inp: R) -> Result<(Self, Vec<u8>)> {
        let mut magic = [0u8; 5];
        inp.read_exact(&mut magic).map_err(io_err)?;
        if &magic != MAGIC {
            return Err(gzip_error("reconstruction data: unknown format"));
        }
        let len = read_u32(&mut inp)? as usize;
        let header = read_vec(&mut inp, len, MAX_HEADER, "header")?;
        Ok((ReconReader { inp }, header))
    }

    pub fn next_item(&mut self) -> Result<Item> {
        let mut kind = [0u8; 1];
        self.inp.read_exact(&mut kind).map_err(io_err)?;
        match kind[0] {
            SEGMENT => {
                let plain_len = read_u32(&mut self.inp)? as usize;
                if plain_len > MAX_SEGMENT_PLAIN {
                    return Err(gzip_error("reconstruction data: segment too long"));
                }
                let n = read_u32(&mut self.inp)? as usize;
                let corrections = read_vec(&mut self.inp, n, MAX_CORRECTIONS, "corrections")?;
                Ok(Item::Segment { plain_len, corrections })
            }
            END => {
                let n = read_u32(&mut self.inp)? as usize;
                let trailer = read_vec(&mut self.inp, n, MAX_TRAILER, "trailer")?;
                let plain_size = read_u64(&mut self.inp)?;
                let gzip_size = read_u64(&mut self.inp)?;
                Ok(Item::End { trailer, plain_size, gzip_size })
            }
            other => Err(gzip_error(format!("reconstruction data: unknown record 0x{other:02x}"))),
        }
    }
}
