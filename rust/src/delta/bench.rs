//! Throughput measurements, run on demand in release mode:
//! `cargo test --release bench_ -- --ignored --nocapture --test-threads 1`.

use std::time::{Duration, Instant};

use super::chunker::tests::random_bytes;
use super::*;
use crate::digest::{digest_bytes, Algorithm};

const SIZE: usize = 256 << 20;

/// Where benchmark stores live: `$CONNREG_BENCH_DIR` (e.g. /dev/shm) or the system temp dir.
fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("CONNREG_BENCH_DIR") {
        Some(root) => tempfile::tempdir_in(root).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn mbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

/// Best of `n` runs of `f`.
fn best<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut out = None;
    let mut fastest = Duration::MAX;
    for _ in 0..n {
        let t = Instant::now();
        let r = f();
        fastest = fastest.min(t.elapsed());
        out = Some(r);
    }
    (fastest, out.expect("n > 0"))
}

#[test]
#[ignore = "benchmark"]
fn bench_chunking() {
    let data = random_bytes(SIZE, 1);
    let p = ChunkParams::default();
    let (t, chunks) = best(3, || chunk_bytes(&data, p));
    println!(
        "chunk_bytes (FastCDC + BLAKE3), 256 MiB in memory: {:.0} MB/s, {} chunks",
        mbps(SIZE, t),
        chunks.len()
    );
    let (t, _) = best(3, || {
        let mut c = Chunker::new(p);
        let mut rest = &data[..];
        let mut n = 0;
        while let Some(cut) = c.next_cut(rest) {
            rest = &rest[cut..];
            n += 1;
        }
        n
    });
    println!("  cut points only: {:.0} MB/s", mbps(SIZE, t));
    let (t, _) = best(3, || {
        chunks
            .iter()
            .map(|c| blake3::hash(&data[c.offset as usize..(c.offset + c.length) as usize]))
            .fold(0u8, |acc, h| acc ^ h.as_bytes()[0])
    });
    println!("  BLAKE3 per chunk only: {:.0} MB/s", mbps(SIZE, t));
    let dir = bench_dir();
    let store = BlobStore::open(dir.path()).unwrap();
    let digest = store.put_bytes(&data, None).unwrap();
    let (t, from_file) = best(3, || store.chunks(&digest, p).unwrap());
    assert_eq!(from_file, chunks);
    println!(
        "BlobStore::chunks (streamed from a page-cached file): {:.0} MB/s",
        mbps(SIZE, t)
    );
}

#[test]
#[ignore = "benchmark"]
fn bench_assembly() {
    let dir = bench_dir();
    let store = BlobStore::open(dir.path()).unwrap();
    let data = random_bytes(SIZE, 2);
    let t = Instant::now();
    let _ = digest_bytes(&data, Algorithm::Sha256);
    println!(
        "(SHA-256 alone, in memory: {:.0} MB/s)",
        mbps(SIZE, t.elapsed())
    );
    let source = store.put_bytes(&data, None).unwrap();
    let chunks = store.chunks(&source, ChunkParams::default()).unwrap();
    // the target blob: the source's chunks in reverse order (same size, different digest)
    let mut target = Vec::with_capacity(SIZE);
    for c in chunks.iter().rev() {
        target.extend_from_slice(&data[c.offset as usize..(c.offset + c.length) as usize]);
    }
    let expected = digest_bytes(&target, Algorithm::Sha256);
    drop(target);
    for round in 0..5 {
        let up = store.upload(&format!("asm{round}")).unwrap();
        let t = Instant::now();
        for c in chunks.iter().rev() {
            up.copy_from(&source, c.offset, c.length).unwrap();
        }
        let copied = t.elapsed();
        assert_eq!(up.commit(&expected).unwrap(), expected);
        let total = t.elapsed();
        println!(
            "assembly of 256 MiB from {} chunks: copy_from+SHA-256 {:.0} MB/s; \
             with commit (verify + fsync + rename) {:.0} MB/s",
            chunks.len(),
            mbps(SIZE, copied),
            mbps(SIZE, total)
        );
        store.delete(&expected).unwrap();
    }
    // the same assembly in one copy_many call (what the child's fetch does for runs of
    // local chunks): gathered pieces, hashing on a second thread
    let ranges: Vec<(&str, u64, u64)> = chunks
        .iter()
        .rev()
        .map(|c| (source.as_str(), c.offset, c.length))
        .collect();
    for round in 0..5 {
        let up = store.upload(&format!("many{round}")).unwrap();
        let t = Instant::now();
        up.copy_many(&ranges).unwrap();
        let copied = t.elapsed();
        assert_eq!(up.commit(&expected).unwrap(), expected);
        let total = t.elapsed();
        println!(
            "assembly with copy_many: copy+SHA-256 {:.0} MB/s; with commit {:.0} MB/s",
            mbps(SIZE, copied),
            mbps(SIZE, total)
        );
        store.delete(&expected).unwrap();
    }
    // whole-range copies (the pipelined path)
    let up = store.upload("whole").unwrap();
    let t = Instant::now();
    up.copy_from(&source, 0, SIZE as u64).unwrap();
    let copied = t.elapsed();
    up.commit(&source).unwrap();
    println!(
        "one 256 MiB copy_from: {:.0} MB/s (commit deduplicated)",
        mbps(SIZE, copied)
    );
}

#[test]
#[ignore = "benchmark"]
fn bench_frames() {
    let dir = bench_dir();
    let store = BlobStore::open(dir.path()).unwrap();
    let size = 64 << 20;
    let random = random_bytes(size, 3);
    // compressible: words from a small vocabulary, like text or uncompressed tar content
    let words: [&[u8]; 8] = [
        b"layer ",
        b"registry ",
        b"blob ",
        b"chunk ",
        b"digest\n",
        b"sha256 ",
        b"{\"a\": 1} ",
        b"usr/lib/ ",
    ];
    let mut text = Vec::with_capacity(size + 16);
    for (i, r) in random.iter().enumerate() {
        if text.len() >= size {
            break;
        }
        text.extend_from_slice(words[(*r as usize ^ i) % 8]);
    }
    text.truncate(size);
    for (name, content) in [("random", &random), ("text", &text)] {
        let digest = store.put_bytes(content, None).unwrap();
        let items: Vec<(String, u64, u64)> = chunk_bytes(content, ChunkParams::default())
            .iter()
            .map(|c| (digest.clone(), c.offset, c.length))
            .collect();
        for level in [1, 3] {
            let (te, frame) = best(3, || encode_chunks(&store, &items, level).unwrap());
            let (td, decoded) = best(3, || decode_frame(&frame, DEFAULT_MAX_CHUNK).unwrap());
            assert_eq!(decoded.len(), items.len());
            println!(
                "{name} 64 MiB, level {level}: encode {:.0} MB/s, decode+verify {:.0} MB/s, \
                 frame {:.1}% of input",
                mbps(size, te),
                mbps(size, td),
                frame.len() as f64 * 100.0 / size as f64
            );
        }
    }
}
