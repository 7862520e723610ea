//! Chunk batch frames and the zstd helpers.
//!
//! A frame is a plain concatenation of entries, one per chunk:
//! ```text
//! id (32 bytes, BLAKE3 of the chunk) | codec (1 byte: 0 raw, 1 zstd) | len (u32 LE) | payload
//! ```
//! A chunk is stored zstd-compressed only when that makes it strictly smaller; otherwise raw
//! (already compressed layers cost nothing but a failed attempt).

use crate::errors::{CoreError, Result};

/// Bytes before each entry's payload.
pub const ENTRY_HEADER: usize = 32 + 1 + 4;

/// Default `max_chunk` for [`decode_frame`] (16 MiB).
pub const DEFAULT_MAX_CHUNK: usize = 16 << 20;

/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 3;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// Check a zstd level against the linked library's range.
fn check_level(level: i32) -> Result<()> {
    let range = zstd::compression_level_range();
    if range.contains(&level) {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "zstd level must be in {}..={}, got {level}",
            range.start(),
            range.end()
        )))
    }
}

/// Builds a frame entry by entry, reusing one zstd context and one scratch buffer.
pub struct FrameEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
    out: Vec<u8>,
}

impl FrameEncoder {
    /// An empty frame whose entries are compressed at `level` (zstd's range, 0 = its default).
    pub fn new(level: i32) -> Result<Self> {
        check_level(level)?;
        let compressor = zstd::bulk::Compressor::new(level).map_err(zstd_error)?;
        Ok(FrameEncoder {
            compressor,
            scratch: Vec::new(),
            out: Vec::new(),
        })
    }

    /// Append one chunk; its id is BLAKE3 of `data`.
    pub fn push(&mut self, data: &[u8]) -> Result<()> {
        let id = blake3::hash(data);
        self.push_with_id(id.as_bytes(), data)
    }

    /// Append one chunk whose BLAKE3 id the caller already knows.
    pub fn push_with_id(&mut self, id: &[u8; 32], data: &[u8]) -> Result<()> {
        if u32::try_from(data.len()).is_err() {
            return Err(CoreError::InvalidArgument(format!(
                "chunk of {} bytes does not fit a frame entry (u32 length)",
                data.len()
            )));
        }
        // Compress into a buffer one byte shorter than the input: if zstd cannot fit, the
        // chunk does not shrink and goes raw.
        let compressed = match data.len().checked_sub(1) {
            Some(room) if room > 0 => {
                if self.scratch.len() < room {
                    self.scratch.resize(room, 0);
                }
                self.compressor
                    .compress_to_buffer(data, &mut self.scratch[..room])
                    .ok()
            }
            _ => None,
        };
        let (codec, payload) = match compressed {
            Some(n) => (CODEC_ZSTD, &self.scratch[..n]),
            None => (CODEC_RAW, data),
        };
        self.out.reserve(ENTRY_HEADER + payload.len());
        self.out.extend_from_slice(id);
        self.out.push(codec);
        self.out
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.out.extend_from_slice(payload);
        Ok(())
    }

    /// The frame so far.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// Parse a frame: `(id, data)` per entry, each verified against its BLAKE3 id.
///
/// Raw payloads longer than `max_chunk`, and zstd payloads that would decompress to more,
/// are rejected. Any defect is a [`CoreError::CorruptChunk`] naming the entry.
pub fn decode_frame(frame: &[u8], max_chunk: usize) -> Result<Vec<([u8; 32], Vec<u8>)>> {
    let mut decompressor = zstd::bulk::Decompressor::new().map_err(zstd_error)?;
    let mut out = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        let entry = out.len();
        let corrupt = |reason: String| CoreError::CorruptChunk { entry, reason };
        if rest.len() < ENTRY_HEADER {
            return Err(corrupt(format!(
                "truncated header ({} of {ENTRY_HEADER} bytes)",
                rest.len()
            )));
        }
        let (header, tail) = rest.split_at(ENTRY_HEADER);
        let id: [u8; 32] = header[..32].try_into().expect("32 bytes");
        let codec = header[32];
        let len = u32::from_le_bytes(header[33..].try_into().expect("4 bytes")) as usize;
        let hex_id = hex::encode(id);
        if tail.len() < len {
            return Err(corrupt(format!(
                "chunk {hex_id}: truncated payload ({} of {len} bytes)",
                tail.len()
            )));
        }
        let (payload, tail) = tail.split_at(len);
        let data = match codec {
            CODEC_RAW if len > max_chunk => {
                return Err(corrupt(format!(
                    "chunk {hex_id}: {len} bytes exceed max_chunk {max_chunk}"
                )))
            }
            CODEC_RAW => payload.to_vec(),
            CODEC_ZSTD => decompressor
                .decompress(payload, max_chunk)
                .map_err(|e| corrupt(format!("chunk {hex_id}: zstd: {e}")))?,
            other => return Err(corrupt(format!("chunk {hex_id}: unknown codec {other}"))),
        };
        if blake3::hash(&data).as_bytes() != &id {
            return Err(corrupt(format!(
                "chunk {hex_id}: content does not match its BLAKE3 id"
            )));
        }
        out.push((id, data));
        rest = tail;
    }
    Ok(out)
}

/// zstd-compress `data` at `level` (one frame, content size recorded).
pub fn compress(data: &[u8], level: i32) -> Result<Vec<u8>> {
    check_level(level)?;
    zstd::bulk::compress(data, level).map_err(zstd_error)
}

/// Decompress zstd `data` (one or more frames) that must expand to at most `max_size` bytes.
pub fn decompress(data: &[u8], max_size: usize) -> Result<Vec<u8>> {
    zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress(data, max_size))
        .map_err(zstd_error)
}

fn zstd_error(e: std::io::Error) -> CoreError {
    CoreError::Compression(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::chunker::tests::random_bytes;

    fn text(n: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog; "
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()
    }

    fn frame_of(chunks: &[&[u8]], level: i32) -> Vec<u8> {
        let mut enc = FrameEncoder::new(level).unwrap();
        for c in chunks {
            enc.push(c).unwrap();
        }
        enc.finish()
    }

    #[test]
    fn round_trip_and_codec_choice() {
        let compressible = text(100_000);
        let random = random_bytes(70_000, 1);
        let chunks: [&[u8]; 4] = [&compressible, &random, b"", b"x"];
        let frame = frame_of(&chunks, 3);
        // compressible went zstd and shrank; the others raw at full length
        let first_len = u32::from_le_bytes(frame[33..37].try_into().unwrap()) as usize;
        assert_eq!(frame[32], CODEC_ZSTD);
        assert!(first_len < 1000, "{first_len}");
        let second = ENTRY_HEADER + first_len;
        assert_eq!(frame[second + 32], CODEC_RAW);
        let expected_len = 4 * ENTRY_HEADER + first_len + random.len() + 1;
        assert_eq!(frame.len(), expected_len);

        let decoded = decode_frame(&frame, DEFAULT_MAX_CHUNK).unwrap();
        assert_eq!(decoded.len(), 4);
        for ((id, data), original) in decoded.iter().zip(chunks) {
            assert_eq!(data.as_slice(), original);
            assert_eq!(id, blake3::hash(original).as_bytes());
        }
        assert!(decode_frame(b"", 1).unwrap().is_empty());
    }

    #[test]
    fn levels() {
        let data = text(50_000);
        for level in [-5, 1, 3, 19] {
            let frame = frame_of(&[&data], level);
            assert_eq!(decode_frame(&frame, 1 << 20).unwrap()[0].1, data);
        }
        for bad in [23, 1000, i32::MIN] {
            assert!(matches!(
                FrameEncoder::new(bad),
                Err(CoreError::InvalidArgument(_))
            ));
            assert!(matches!(
                compress(b"x", bad),
                Err(CoreError::InvalidArgument(_))
            ));
        }
    }

    fn assert_corrupt(frame: &[u8], max: usize, entry: usize, needle: &str) {
        match decode_frame(frame, max) {
            Err(CoreError::CorruptChunk { entry: e, reason }) => {
                assert_eq!(e, entry, "{reason}");
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
            }
            other => panic!("expected CorruptChunk, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_frames_are_detected() {
        let a = text(20_000);
        let b = random_bytes(20_000, 2);
        let frame = frame_of(&[&a, &b], 3);
        let first_end =
            ENTRY_HEADER + u32::from_le_bytes(frame[33..37].try_into().unwrap()) as usize;

        // every truncation point is caught, and names the entry it hits
        for cut in (1..frame.len())
            .step_by(997)
            .chain([frame.len() - 1, 36, first_end + 1])
        {
            let entry = usize::from(cut > first_end);
            assert_corrupt(&frame[..cut], 1 << 20, entry, "truncated");
        }
        // a flipped payload bit in a raw entry: hash mismatch
        let mut bad = frame.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_corrupt(&bad, 1 << 20, 1, "BLAKE3");
        // a flipped bit in the zstd payload: zstd error or hash mismatch, entry 0 either way
        let mut bad = frame.clone();
        bad[ENTRY_HEADER + 20] ^= 0x10;
        assert!(matches!(
            decode_frame(&bad, 1 << 20),
            Err(CoreError::CorruptChunk { entry: 0, .. })
        ));
        // a wrong id
        let mut bad = frame.clone();
        bad[first_end] ^= 1;
        assert_corrupt(&bad, 1 << 20, 1, "BLAKE3");
        // unknown codec
        let mut bad = frame.clone();
        bad[32] = 7;
        assert_corrupt(&bad, 1 << 20, 0, "codec");
        // length field pointing past the end
        let mut bad = frame.clone();
        bad[first_end + 33..first_end + 37].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_corrupt(&bad, 1 << 20, 1, "truncated");
        // trailing garbage shorter than a header
        let mut bad = frame.clone();
        bad.extend_from_slice(b"junk");
        assert_corrupt(&bad, 1 << 20, 2, "header");
        // max_chunk enforced for both codecs
        assert_corrupt(&frame, 19_999, 0, "zstd");
        let raw_only = frame_of(&[&b], 3);
        assert_corrupt(&raw_only, 19_999, 0, "max_chunk");
        assert!(decode_frame(&frame, 20_000).is_ok());
    }

    #[test]
    fn plain_helpers() {
        let data = text(300_000);
        let z = compress(&data, 3).unwrap();
        assert!(z.len() < data.len() / 10);
        assert_eq!(decompress(&z, data.len()).unwrap(), data);
        assert!(matches!(
            decompress(&z, data.len() - 1),
            Err(CoreError::Compression(_))
        ));
        assert!(matches!(
            decompress(b"not zstd", 100),
            Err(CoreError::Compression(_))
        ));
        assert_eq!(decompress(&compress(b"", 3).unwrap(), 0).unwrap(), b"");
    }
}
