//! FastCDC content-defined chunking with BLAKE3 chunk ids.
//!
//! The algorithm is FastCDC (Xia et al., "FastCDC: a Fast and Efficient Content-Defined
//! Chunking Approach for Data Deduplication", USENIX ATC 2016, and the 2020 TPDS follow-up):
//!
//! - a *gear* rolling hash, `fp = (fp << 1) + GEAR[byte]`, whose top bits depend on the last
//!   64 bytes only, so a cut point depends only on nearby content and boundaries
//!   re-synchronize shortly after an insertion or deletion;
//! - *cut-point skipping*: the first `min_size` bytes of a chunk are not hashed at all;
//! - *normalized chunking* with two masks: between `min_size` and `avg_size` a cut needs
//!   `fp & MASK_S == 0` with `log2(avg) + 2` bits (harder), after `avg_size` only
//!   `log2(avg) - 2` bits (easier), which pulls chunk sizes towards the average; a chunk is cut
//!   unconditionally at `max_size`.
//!
//! The masks test the *top* bits of `fp`, the ones that mix the widest window of input.
//!
//! Chunk boundaries and ids are a wire format shared by every node: [`GEAR`] and the mask
//! construction must never change (the `golden_boundaries` test pins them).

use std::io::{self, Read};

use crate::errors::{CoreError, Result};

/// Default smallest chunk (16 KiB).
pub const DEFAULT_MIN_SIZE: u64 = 16 * 1024;
/// Default target average chunk (64 KiB).
pub const DEFAULT_AVG_SIZE: u64 = 64 * 1024;
/// Default largest chunk (256 KiB).
pub const DEFAULT_MAX_SIZE: u64 = 256 * 1024;

/// Smallest allowed `avg_size`.
const MIN_AVG_SIZE: u64 = 256;

/// Read buffer of [`chunk_reader`]; memory use is this plus the chunk list, whatever the size
/// of the input or `max_size`.
pub const READ_BUFFER: usize = 1 << 20;

/// Normalization level: the masks have `log2(avg) ± NORMALIZATION` bits.
const NORMALIZATION: u32 = 2;

/// The gear table: 256 pseudo-random 64-bit values from splitmix64 with a fixed seed.
/// Part of the wire format (see the module docs).
pub static GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x636f_6e6e_7265_6721; // "connreg!"
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

/// Validated chunk size bounds: `min ≤ avg ≤ max`, `avg` a power of two ≥ 256, and `max` fits
/// a frame entry's u32 length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    min_size: u64,
    avg_size: u64,
    max_size: u64,
    /// Mask before `avg_size` (more bits: cuts are rarer).
    mask_s: u64,
    /// Mask from `avg_size` on (fewer bits: cuts are likelier).
    mask_l: u64,
}

impl ChunkParams {
    /// Check the bounds and derive the masks; [`CoreError::InvalidArgument`] if they are
    /// inconsistent.
    pub fn new(min_size: u64, avg_size: u64, max_size: u64) -> Result<Self> {
        let bad = |why: String| Err(CoreError::InvalidArgument(format!("chunk params: {why}")));
        if !(avg_size.is_power_of_two() && avg_size >= MIN_AVG_SIZE) {
            return bad(format!(
                "avg_size must be a power of two >= {MIN_AVG_SIZE}, got {avg_size}"
            ));
        }
        if !(min_size <= avg_size && avg_size <= max_size) {
            return bad(format!(
                "need min_size <= avg_size <= max_size, got {min_size}, {avg_size}, {max_size}"
            ));
        }
        if max_size > u64::from(u32::MAX) {
            return bad(format!(
                "max_size must be below 4 GiB (frame entries have a u32 length), got {max_size}"
            ));
        }
        let bits = avg_size.trailing_zeros();
        Ok(ChunkParams {
            min_size,
            avg_size,
            max_size,
            mask_s: top_bits(bits + NORMALIZATION),
            mask_l: top_bits(bits - NORMALIZATION),
        })
    }

    pub fn min_size(&self) -> u64 {
        self.min_size
    }

    pub fn avg_size(&self) -> u64 {
        self.avg_size
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }
}

impl Default for ChunkParams {
    /// min 16 KiB, avg 64 KiB, max 256 KiB.
    fn default() -> Self {
        ChunkParams::new(DEFAULT_MIN_SIZE, DEFAULT_AVG_SIZE, DEFAULT_MAX_SIZE)
            .expect("defaults are valid")
    }
}

/// A u64 with its `n` most significant bits set.
const fn top_bits(n: u32) -> u64 {
    !(u64::MAX >> n)
}

/// One chunk of a byte stream: where it is and its BLAKE3 hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chunk {
    pub offset: u64,
    pub length: u64,
    pub id: [u8; 32],
}

impl Chunk {
    /// The id as 64 lowercase hex characters.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// The cut-point finder alone: a streaming FastCDC state machine over successive slices.
///
/// Boundaries depend only on the stream's bytes, never on how it is sliced.
#[derive(Clone, Debug)]
pub struct Chunker {
    params: ChunkParams,
    /// Gear hash since `min_size` bytes into the current chunk.
    fp: u64,
    /// Bytes of the current chunk seen so far.
    len: u64,
}

impl Chunker {
    pub fn new(params: ChunkParams) -> Self {
        Chunker {
            params,
            fp: 0,
            len: 0,
        }
    }

    /// Consume `data` up to and including the next cut point and return how many bytes that
    /// was, or `None` if the current chunk continues past the end of `data` (all consumed).
    pub fn next_cut(&mut self, data: &[u8]) -> Option<usize> {
        let p = self.params;
        let mut i = 0;
        // Cut-point skipping: nothing before min_size can be a boundary.
        if self.len < p.min_size {
            let take = remaining(p.min_size - self.len, data.len());
            i += take;
            self.len += take as u64;
            if self.len < p.min_size {
                return None;
            }
        }
        for (limit, mask) in [(p.avg_size, p.mask_s), (p.max_size, p.mask_l)] {
            if self.len < limit {
                let end = i + remaining(limit - self.len, data.len() - i);
                if let Some(j) = scan(&mut self.fp, &data[i..end], mask) {
                    return Some(self.cut(i + j + 1));
                }
                self.len += (end - i) as u64;
                i = end;
                if self.len < limit {
                    return None;
                }
            }
        }
        // Reached max_size.
        Some(self.cut(i))
    }

    /// Bytes of the chunk in progress.
    pub fn pending(&self) -> u64 {
        self.len
    }

    fn cut(&mut self, at: usize) -> usize {
        self.fp = 0;
        self.len = 0;
        at
    }
}

/// `min(want, available)` with `want` a u64.
#[inline]
fn remaining(want: u64, available: usize) -> usize {
    usize::try_from(want).map_or(available, |w| w.min(available))
}

/// Roll the gear hash over `data`; index of the first byte after which `fp & mask == 0`.
#[inline(always)]
fn scan(fp: &mut u64, data: &[u8], mask: u64) -> Option<usize> {
    let mut h = *fp;
    for (j, &b) in data.iter().enumerate() {
        h = (h << 1).wrapping_add(GEAR[b as usize]);
        if h & mask == 0 {
            *fp = h;
            return Some(j);
        }
    }
    *fp = h;
    None
}

/// Chunker plus a BLAKE3 hasher: feed slices, collect [`Chunk`]s.
pub struct ChunkHasher {
    chunker: Chunker,
    hasher: blake3::Hasher,
    /// Stream offset of the chunk in progress.
    start: u64,
    chunks: Vec<Chunk>,
}

impl ChunkHasher {
    pub fn new(params: ChunkParams) -> Self {
        ChunkHasher {
            chunker: Chunker::new(params),
            hasher: blake3::Hasher::new(),
            start: 0,
            chunks: Vec::new(),
        }
    }

    /// Feed the next slice of the stream.
    pub fn update(&mut self, mut data: &[u8]) {
        while let Some(cut) = self.chunker.next_cut(data) {
            self.hasher.update(&data[..cut]);
            self.emit();
            data = &data[cut..];
        }
        self.hasher.update(data);
    }

    /// The chunks of the whole stream (the last one may be shorter than `min_size`).
    pub fn finish(mut self) -> Vec<Chunk> {
        if self.chunker.pending() > 0 {
            self.emit();
        }
        self.chunks
    }

    fn emit(&mut self) {
        let length = self.hasher.count();
        self.chunks.push(Chunk {
            offset: self.start,
            length,
            id: *self.hasher.finalize().as_bytes(),
        });
        self.start += length;
        self.hasher.reset();
    }
}

/// Chunk an in-memory buffer. Empty input gives no chunks.
pub fn chunk_bytes(data: &[u8], params: ChunkParams) -> Vec<Chunk> {
    let mut ch = ChunkHasher::new(params);
    ch.update(data);
    ch.finish()
}

/// Chunk everything `reader` yields, with a fixed [`READ_BUFFER`] (constant memory).
pub fn chunk_reader<R: Read>(mut reader: R, params: ChunkParams) -> io::Result<Vec<Chunk>> {
    let mut ch = ChunkHasher::new(params);
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ch.update(&buf[..n]);
    }
    Ok(ch.finish())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Deterministic pseudo-random bytes (xorshift64*).
    pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(n);
        out
    }

    fn small() -> ChunkParams {
        ChunkParams::new(1024, 4096, 16384).unwrap()
    }

    fn assert_covers(chunks: &[Chunk], data: &[u8], p: ChunkParams) {
        let mut off = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset, off);
            let last = i + 1 == chunks.len();
            assert!(c.length <= p.max_size(), "chunk {i} too long: {}", c.length);
            assert!(
                last || c.length >= p.min_size(),
                "chunk {i} too short: {}",
                c.length
            );
            assert!(c.length > 0);
            let bytes = &data[c.offset as usize..(c.offset + c.length) as usize];
            assert_eq!(c.id, *blake3::hash(bytes).as_bytes());
            off += c.length;
        }
        assert_eq!(off, data.len() as u64);
    }

    #[test]
    fn params_are_validated() {
        assert!(ChunkParams::new(16384, 65536, 262144).is_ok());
        assert!(ChunkParams::new(0, 256, 256).is_ok());
        for (min, avg, max) in [
            (1, 255, 1000),      // avg too small
            (1, 3000, 10000),    // not a power of two
            (5000, 4096, 10000), // min > avg
            (1, 4096, 4095),     // avg > max
            (1, 4096, 1 << 33),  // max does not fit u32
            (0, 0, 0),
        ] {
            assert!(
                matches!(
                    ChunkParams::new(min, avg, max),
                    Err(CoreError::InvalidArgument(_))
                ),
                "{min} {avg} {max}"
            );
        }
        let d = ChunkParams::default();
        assert_eq!(
            (d.min_size(), d.avg_size(), d.max_size()),
            (16384, 65536, 262144)
        );
        assert_eq!(d.mask_s.count_ones(), 18);
        assert_eq!(d.mask_l.count_ones(), 14);
    }

    #[test]
    fn empty_and_tiny_inputs() {
        assert!(chunk_bytes(b"", ChunkParams::default()).is_empty());
        for n in [1usize, 2, 100, 16383, 16384] {
            let data = random_bytes(n, n as u64);
            let chunks = chunk_bytes(&data, ChunkParams::default());
            assert_eq!(chunks.len(), 1, "{n}");
            assert_eq!((chunks[0].offset, chunks[0].length), (0, n as u64));
            assert_eq!(chunks[0].id_hex(), blake3::hash(&data).to_hex().as_str());
        }
    }

    #[test]
    fn deterministic_and_within_bounds() {
        let data = random_bytes(4 << 20, 7);
        for p in [ChunkParams::default(), small()] {
            let a = chunk_bytes(&data, p);
            let b = chunk_bytes(&data, p);
            assert_eq!(a, b);
            assert_covers(&a, &data, p);
            assert!(a.len() > 4, "{}", a.len());
        }
    }

    #[test]
    fn average_is_near_the_target() {
        let data = random_bytes(32 << 20, 11);
        let chunks = chunk_bytes(&data, ChunkParams::default());
        let avg = data.len() / chunks.len();
        // min-skipping plus normalization put the mean a bit above avg_size
        assert!((48 << 10..=96 << 10).contains(&avg), "mean chunk {avg}");
    }

    #[test]
    fn slicing_does_not_change_boundaries() {
        let data = random_bytes(3 << 20, 3);
        let p = small();
        let whole = chunk_bytes(&data, p);
        for piece in [1usize, 7, 1000, 4096, 65537] {
            let mut ch = ChunkHasher::new(p);
            for s in data.chunks(piece) {
                ch.update(s);
            }
            assert_eq!(ch.finish(), whole, "piece {piece}");
        }
        let read = chunk_reader(&data[..], p).unwrap();
        assert_eq!(read, whole);
    }

    #[test]
    fn zeros_cut_at_max() {
        // gear hash of a constant run never has all top bits zero: every cut is forced
        let data = vec![0u8; 1 << 20];
        let p = ChunkParams::default();
        let chunks = chunk_bytes(&data, p);
        assert_covers(&chunks, &data, p);
        assert!(chunks.iter().all(|c| c.length == p.max_size()));
        assert_eq!(chunks.len(), 4);
    }

    #[test]
    fn min_equals_max_gives_fixed_size() {
        let p = ChunkParams::new(4096, 4096, 4096).unwrap();
        let data = random_bytes(10_000, 1);
        let lens: Vec<u64> = chunk_bytes(&data, p).iter().map(|c| c.length).collect();
        assert_eq!(lens, vec![4096, 4096, 1808]);
    }

    fn shared_fraction(a: &[Chunk], b: &[Chunk]) -> f64 {
        let ids: HashSet<[u8; 32]> = a.iter().map(|c| c.id).collect();
        let shared = b.iter().filter(|c| ids.contains(&c.id)).count();
        shared as f64 / b.len() as f64
    }

    #[test]
    fn boundaries_resynchronize_after_an_insertion() {
        let data = random_bytes(16 << 20, 42);
        let mut edited = data[..100].to_vec();
        edited.extend_from_slice(&random_bytes(1024, 99));
        edited.extend_from_slice(&data[100..]);
        let p = ChunkParams::default();
        let before = chunk_bytes(&data, p);
        let after = chunk_bytes(&edited, p);
        assert_covers(&after, &edited, p);
        let frac = shared_fraction(&before, &after);
        assert!(frac >= 0.9, "only {:.1}% shared", frac * 100.0);
        // in fact only the first chunk or two differ
        let differing = after.len() - (frac * after.len() as f64).round() as usize;
        assert!(differing <= 3, "{differing} new chunks");
    }

    #[test]
    fn boundaries_resynchronize_after_scattered_edits() {
        let data = random_bytes(16 << 20, 5);
        let mut edited = data.clone();
        for k in 0..16 {
            let at = k * (1 << 20) + 12345;
            edited[at] ^= 0xff;
        }
        let p = ChunkParams::default();
        let frac = shared_fraction(&chunk_bytes(&data, p), &chunk_bytes(&edited, p));
        assert!(frac >= 0.9, "only {:.1}% shared", frac * 100.0);
    }

    /// Pins the wire format: if this fails, chunk ids no longer match other nodes.
    #[test]
    fn golden_boundaries() {
        assert_eq!(GEAR[0], 0xad20_6363_de2b_df92, "{:#x}", GEAR[0]);
        let data = random_bytes(1 << 20, 2024);
        let lens: Vec<u64> = chunk_bytes(&data, ChunkParams::default())
            .iter()
            .map(|c| c.length)
            .collect();
        assert_eq!(
            lens,
            [
                70945, 38646, 74361, 75709, 72676, 69675, 66318, 68485, 85069, 75029, 50089, 55534,
                71073, 101683, 68387, 4897
            ]
        );
    }
}
