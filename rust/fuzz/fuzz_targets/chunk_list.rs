//! Chunk lists (`chunk_bytes` / `chunk_reader` under any `ChunkParams`): parameters that are
//! refused never reach the chunker; accepted ones cut any input into contiguous chunks within
//! the size bounds whose ids are their BLAKE3, the same however the input is fed.
#![no_main]

use std::io::Read;

use _core::delta::{chunk_bytes, chunk_reader, ChunkHasher, ChunkParams};
use libfuzzer_sys::fuzz_target;

/// Hands out the input in pieces of the sizes the fuzzer chose.
struct Dribble<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self
            .sizes
            .get(self.turn % self.sizes.len().max(1))
            .copied()
            .unwrap_or(255);
        self.turn += 1;
        let n = (1 + want as usize).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((ctl, body)) = data.split_first_chunk::<6>() else {
        return;
    };
    // Small sizes so short inputs hold many chunks; ChunkParams::new decides what is valid.
    let min = u64::from(u16::from_le_bytes([ctl[0], ctl[1]])) % 2048;
    let avg = 1u64 << (ctl[2] % 13);
    let max = avg + u64::from(u16::from_le_bytes([ctl[3], ctl[4]])) % 4096;
    let Ok(params) = ChunkParams::new(min, avg, max) else {
        return;
    };
    let chunks = chunk_bytes(body, params);
    let mut at = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.offset, at, "chunks are not contiguous");
        assert!(
            c.length > 0 && c.length <= max,
            "chunk of {} bytes",
            c.length
        );
        if i + 1 < chunks.len() {
            assert!(c.length >= min.max(1), "inner chunk shorter than min_size");
        }
        let bytes = &body[c.offset as usize..(c.offset + c.length) as usize];
        assert_eq!(blake3::hash(bytes).as_bytes(), &c.id);
        at += c.length;
    }
    assert_eq!(at, body.len() as u64, "chunks do not cover the input");

    // The input's own bytes double as the read sizes.
    let dribble = Dribble {
        data: body,
        sizes: body,
        turn: usize::from(ctl[5]),
    };
    let read = chunk_reader(dribble, params).unwrap();
    assert_eq!(read, chunks, "chunk_reader differs from chunk_bytes");
    let mut hasher = ChunkHasher::new(params);
    for part in body.chunks(1 + usize::from(ctl[5])) {
        hasher.update(part);
    }
    assert_eq!(
        hasher.finish(),
        chunks,
        "ChunkHasher differs when fed in parts"
    );
});
