//! Chunk batch frames (`decode_frame`, what `decode_chunks` runs on every batch a node
//! receives): arbitrary bytes must give an error, never a panic or an entry whose bytes do not
//! hash to its id or exceed the cap; a frame the encoder built must decode to what went in,
//! and one damaged anywhere must decode to the original or fail.
#![no_main]

use _core::delta::{decode_frame, FrameEncoder};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer reaches the "over the cap" paths with short inputs.
const MAX_CHUNK: usize = 4096;

fn check_decoded(frame: &[u8], max_chunk: usize) -> Option<Vec<([u8; 32], Vec<u8>)>> {
    let entries = decode_frame(frame, max_chunk).ok()?;
    for (id, data) in &entries {
        assert!(
            data.len() <= max_chunk,
            "entry of {} bytes over the cap",
            data.len()
        );
        assert_eq!(
            blake3::hash(data).as_bytes(),
            id,
            "entry does not hash to its id"
        );
    }
    Some(entries)
}

fuzz_target!(|data: &[u8]| {
    // 1. The input as a frame off the wire.
    if let Some(entries) = check_decoded(data, MAX_CHUNK) {
        // What decodes re-encodes into a frame that decodes to the same entries.
        let mut enc = FrameEncoder::new(1).unwrap();
        for (id, bytes) in &entries {
            enc.push_with_id(id, bytes).unwrap();
        }
        assert_eq!(decode_frame(&enc.finish(), MAX_CHUNK).unwrap(), entries);
    }

    // 2. A well-formed frame built from the input, then damaged at one byte.
    let Some((ctl, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let piece = 1 + ctl[0] as usize * 16;
    let level = i32::from(ctl[1] % 4);
    let mut enc = FrameEncoder::new(level).unwrap();
    let pieces: Vec<&[u8]> = body.chunks(piece).collect();
    for p in &pieces {
        enc.push(p).unwrap();
    }
    let mut frame = enc.finish();
    let decoded = check_decoded(&frame, MAX_CHUNK).expect("an encoder's frame decodes");
    assert_eq!(decoded.len(), pieces.len());
    for ((_, got), want) in decoded.iter().zip(&pieces) {
        assert_eq!(got.as_slice(), *want);
    }
    if frame.is_empty() {
        return;
    }
    let at = usize::from(u16::from_le_bytes([ctl[2], ctl[3]])) % frame.len();
    frame[at] ^= ctl[3] | 1;
    check_decoded(&frame, MAX_CHUNK);
    // Truncated anywhere: an error unless the cut falls between entries.
    check_decoded(&frame[..at], MAX_CHUNK);
});
