//! zstd decompression with a size cap (`decompress`, the `zstd_decompress` of compressed
//! request bodies and chunks): arbitrary input never panics and never yields more than the
//! cap; compressed data comes back unchanged, a cap one byte short of it is refused, and a
//! compressed frame damaged anywhere decodes within the cap or fails.
//!
//! The zstd C library itself is not instrumented (cargo-fuzz instruments Rust code only), so
//! the fuzzer cannot steer by coverage inside it: the damaged real frames below are what take
//! its mutations deep into the decoder.
#![no_main]

use _core::delta::{compress, decompress};
use libfuzzer_sys::fuzz_target;

fn capped(data: &[u8], cap: usize) -> Option<Vec<u8>> {
    let out = decompress(data, cap).ok()?;
    assert!(
        out.len() <= cap,
        "{} bytes out under a cap of {cap}",
        out.len()
    );
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((ctl, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let cap = usize::from(u16::from_le_bytes([ctl[0], ctl[1]]));
    capped(body, cap);

    let level = i32::from(ctl[2] % 8) - 1; // includes a negative (fast) level
    let packed = compress(body, level).unwrap();
    assert_eq!(capped(&packed, body.len()).unwrap(), body);
    if !body.is_empty() {
        assert!(
            decompress(&packed, body.len() - 1).is_err(),
            "cap not enforced"
        );
    }

    // Two frames back to back decode to both inputs, under a cap that counts both.
    let mut two = packed.clone();
    two.extend_from_slice(&packed);
    assert_eq!(capped(&two, 2 * body.len()).unwrap(), [body, body].concat());
    if !body.is_empty() {
        assert!(
            decompress(&two, 2 * body.len() - 1).is_err(),
            "cap not enforced over frames"
        );
    }

    // One damaged byte: the original, something else within the cap, or an error.
    let mut damaged = packed;
    let at = usize::from(ctl[3]) * 7 % damaged.len();
    damaged[at] ^= ctl[0] | 1;
    capped(&damaged, cap.max(body.len()));
});
