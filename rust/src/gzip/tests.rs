use std::io::{Cursor, Write};
use std::process::{Command, Stdio};

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

use super::*;
use crate::delta::{chunk_bytes, ChunkParams};
use crate::errors::CoreError;

/// Text-like content (a tar of small files compresses like this): words from a small
/// vocabulary, pseudo-random, with repeats the matcher finds.
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "usr", "lib", "share", "doc", "copyright", "bin", "etc", "the", "and", "for", "debian",
        "package", "version", "license", "GNU", "0.9.8", "\n", "  ", "x86_64", "linux",
    ];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let w = words[(state >> 33) as usize % words.len()];
        out.extend_from_slice(w.as_bytes());
        out.push(if (state >> 20) & 7 == 0 { b'/' } else { b' ' });
        if (state >> 40) & 63 == 0 {
            out.extend_from_slice(&state.to_le_bytes()); // some noise
        }
    }
    out.truncate(len);
    out
}

/// A gzip member made by zlib (Python's `gzip` module), as Python tools and Jib make layers.
fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut child = Command::new("python3")
        .args(["-c", &format!("import gzip,sys; sys.stdout.buffer.write(gzip.compress(sys.stdin.buffer.read(), {level}, mtime=0))")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 makes the zlib test layers");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// The same with flate2 (miniz_oxide: another deflate implementation).
fn gzip_miniz(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::new(level));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn analyse_bytes(gz: &[u8]) -> Result<(Analysis, Vec<u8>), CoreError> {
    let mut recon = Vec::new();
    let a = analyse(Cursor::new(gz), &mut recon, ChunkParams::default())?;
    Ok((a, recon))
}

fn recreate_bytes(recon: &[u8], plain: &[u8]) -> Result<Vec<u8>, CoreError> {
    let mut out = Vec::new();
    recreate(Cursor::new(recon), Cursor::new(plain), |b| {
        out.extend_from_slice(b);
        Ok(())
    })?;
    Ok(out)
}

#[test]
fn round_trips_exactly_at_every_level() {
    let plain = sample(3 * 1024 * 1024 + 123, 11);
    for level in [1, 6, 9] {
        let gz = gzip(&plain, level);
        let (a, recon) = analyse_bytes(&gz).unwrap_or_else(|e| panic!("level {level}: {e}"));
        assert_eq!(a.plain_size, plain.len() as u64);
        assert_eq!(a.gzip_size, gz.len() as u64);
        assert!(a.segments >= 2, "level {level}: {} segments", a.segments);
        assert!(recon.len() < gz.len() / 10, "level {level}: recon {} of {}", recon.len(), gz.len());
        assert_eq!(recreate_bytes(&recon, &plain).unwrap(), gz, "level {level}");
    }
}

#[test]
fn header_fields_and_trailing_bytes_are_kept_verbatim() {
    let plain = sample(200_000, 2);
    let mut enc = GzBuilder::new()
        .filename("layer.tar")
        .comment("made here")
        .mtime(1_700_000_000)
        .write(Vec::new(), Compression::new(6));
    enc.write_all(&plain).unwrap();
    let mut gz = enc.finish().unwrap();
    gz.extend_from_slice(&[0u8; 7]); // padding some tools leave after the member
    let (a, recon) = analyse_bytes(&gz).unwrap();
    assert_eq!(a.gzip_size, gz.len() as u64);
    assert_eq!(recreate_bytes(&recon, &plain).unwrap(), gz);
}

#[test]
fn chunk_lists_agree_between_analysis_and_plain_inflate() {
    let plain = sample(1_500_000, 3);
    let gz = gzip(&plain, 6);
    let (a, _) = analyse_bytes(&gz).unwrap();
    let (size, chunks) = plain_chunks(Cursor::new(&gz), ChunkParams::default()).unwrap();
    let direct = chunk_bytes(&plain, ChunkParams::default());
    assert_eq!(size, plain.len() as u64);
    assert_eq!(a.chunks, direct);
    assert_eq!(chunks, direct);
}

#[test]
fn wrong_plaintext_does_not_recreate_the_layer() {
    let plain = sample(1_200_000, 4);
    let gz = gzip(&plain, 6);
    let (_, recon) = analyse_bytes(&gz).unwrap();
    let mut other = plain.clone();
    other[700_000] ^= 0x55;
    match recreate_bytes(&recon, &other) {
        Ok(out) => assert_ne!(out, gz),
        Err(CoreError::Gzip(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
    }
    assert!(matches!(recreate_bytes(&recon, &plain[..plain.len() - 1]), Err(CoreError::Gzip(_))));
    let mut longer = plain.clone();
    longer.push(b'x');
    assert!(matches!(recreate_bytes(&recon, &longer), Err(CoreError::Gzip(_))));
}

#[test]
fn corrupt_reconstruction_data_is_an_error_or_other_bytes() {
    let plain = sample(1_200_000, 5);
    let gz = gzip(&plain, 6);
    let (_, recon) = analyse_bytes(&gz).unwrap();
    for at in [0, 7, recon.len() / 2, recon.len() - 3] {
        let mut bad = recon.clone();
        bad[at] ^= 0xA5;
        match recreate_bytes(&bad, &plain) {
            Ok(out) => assert_ne!(out, gz, "flip at {at}"),
            Err(CoreError::Gzip(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(matches!(recreate_bytes(&recon[..recon.len() - 5], &plain), Err(CoreError::Gzip(_))));
}

#[test]
fn refuses_what_is_not_a_whole_gzip_member() {
    let plain = sample(300_000, 6);
    let gz = gzip(&plain, 6);
    assert!(matches!(analyse_bytes(b"plain tar bytes"), Err(CoreError::Gzip(_))));
    assert!(matches!(analyse_bytes(&gz[..gz.len() / 2]), Err(CoreError::Gzip(_))));
    let mut bad_crc = gz.clone();
    let n = bad_crc.len();
    bad_crc[n - 6] ^= 1;
    assert!(matches!(analyse_bytes(&bad_crc), Err(CoreError::Gzip(_))));
    let mut two = gz.clone(); // a second member longer than the trailer limit
    two.extend_from_slice(&gzip(&sample(400_000, 7), 0));
    assert!(matches!(analyse_bytes(&two), Err(CoreError::Gzip(_))));
}

#[test]
fn other_deflate_implementations_recreate_exactly_or_fail_cleanly() {
    let plain = sample(1_000_000, 9);
    for level in [1, 6, 9] {
        let gz = gzip_miniz(&plain, level);
        if let Ok((_, recon)) = analyse_bytes(&gz) {
            assert_eq!(recreate_bytes(&recon, &plain).unwrap(), gz, "miniz level {level}");
        }
    }
}

#[test]
fn header_length_with_optional_fields() {
    let mut h = vec![0x1f, 0x8b, 8, 0x04 | 0x08, 0, 0, 0, 0, 0, 3, 2, 0, b'a', b'b', b'n', 0];
    assert_eq!(header::header_len(&h).unwrap(), Some(16));
    assert_eq!(header::header_len(&h[..13]).unwrap(), None);
    h[3] |= 0x80;
    assert!(header::header_len(&h).is_err());
    assert!(header::header_len(b"\x1f\x8b\x07").is_err());
}

#[test]
fn plaintext_ranges_in_the_order_asked() {
    let plain = sample(900_000, 8);
    let gz = gzip(&plain, 6);
    let ranges = [(600_000u64, 1000u64), (5, 10), (600_000, 1000), (899_990, 10), (300_000, 0)];
    let got = gunzip_ranges(Cursor::new(&gz), &ranges).unwrap();
    for (r, bytes) in ranges.iter().zip(&got) {
        assert_eq!(&bytes[..], &plain[r.0 as usize..(r.0 + r.1) as usize]);
    }
    assert!(gunzip_ranges(Cursor::new(&gz), &[(899_995, 10)]).is_err());
    assert!(gunzip_ranges(Cursor::new(&gz), &[(0, 10), (5, 10)]).is_err());
    let mut out = Vec::new();
    assert_eq!(gunzip_to(Cursor::new(&gz), &mut out).unwrap(), plain.len() as u64);
    assert_eq!(out, plain);
}

/// preflate-rs 0.7.6 cannot model every zlib stream (it fails on libc.so.6 at level 6 with
/// `MatchNotFound`): such layers must fail analysis cleanly (and go by chunks), never
/// produce a reconstruction file that recreates other bytes.
#[test]
fn real_files_round_trip_exactly_or_fail_cleanly() {
    for path in ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/bash"] {
        let Ok(data) = std::fs::read(path) else { continue };
        let gz = gzip(&data, 6);
        match analyse_bytes(&gz) {
            Ok((_, recon)) => assert_eq!(recreate_bytes(&recon, &data).unwrap(), gz, "{path}"),
            Err(CoreError::Gzip(_)) => {}
            Err(e) => panic!("{path}: {e}"),
        }
    }
}

/// A gzip member made by Go's `compress/gzip` at its default level, as docker, containerd
/// and BuildKit make layers; None where `go` is not installed.
fn gzip_go(data: &[u8]) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("gz.go");
    std::fs::write(&src, "package main\nimport (\"compress/gzip\"; \"io\"; \"os\")\nfunc main() { w := gzip.NewWriter(os.Stdout); if _, err := io.Copy(w, os.Stdin); err != nil { panic(err) }; if err := w.Close(); err != nil { panic(err) } }\n").unwrap();
    let exe = dir.path().join("gz");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(&src)
        .env("GOCACHE", dir.path().join("cache"))
        .env("GO111MODULE", "off")
        .status()
        .ok()?;
    assert!(built.success(), "go build failed");
    let mut child = Command::new(&exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    Some(out.stdout)
}

/// Go's encoder writes blocks whose distance tree is a single one-bit code; the vendored
/// preflate-rs (rust/vendor/preflate-rs/PATCH.md) accepts them. preflate's model of Go's
/// matcher is still not exact everywhere (`MatchNotFound` on some content): such a layer must
/// fail cleanly, never for the tree, and never recreate other bytes.
#[test]
fn go_made_layers_round_trip_exactly_or_fail_cleanly() {
    let mut inputs = vec![sample(2 * 1024 * 1024, 12)];
    if let Ok(bash) = std::fs::read("/usr/bin/bash") {
        inputs.push(bash);
    }
    for plain in inputs {
        let Some(gz) = gzip_go(&plain) else {
            eprintln!("skipped: `go` is not installed");
            return;
        };
        match analyse_bytes(&gz) {
            Ok((_, recon)) => assert_eq!(recreate_bytes(&recon, &plain).unwrap(), gz),
            Err(CoreError::Gzip(why)) => assert!(!why.contains("Huffman code lengths"), "{why}"),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_single_one_bit_code_is_a_valid_tree() {
    // a dynamic block whose distance tree has one code of length 1 (what Go writes)
    let plain = b"abcabcabcabcabcabcabcabcabcabcabcabc".repeat(1000);
    if let Some(gz) = gzip_go(&plain) {
        let (_, recon) = analyse_bytes(&gz).unwrap();
        assert_eq!(recreate_bytes(&recon, &plain).unwrap(), gz);
    }
}
