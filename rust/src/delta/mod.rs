//! Delta transfer: content-defined chunks and compressed chunk batches.
//!
//! - [`chunker`]: FastCDC cut points (gear hash, normalized chunking) and BLAKE3 chunk ids,
//!   over a buffer or streamed from a reader.
//! - [`batch`]: the batch frame (`id | codec | len | payload` per chunk) and zstd helpers.
//! - [`encode_chunks`]: a frame built from byte ranges of blobs in a [`BlobStore`].
//!
//! [`BlobStore::chunks`] chunks a stored blob and [`crate::store::Upload::copy_from`] appends a
//! range of one to an upload; together they assemble a blob from chunks the node already holds.

pub mod batch;
pub mod chunker;

#[cfg(test)]
mod bench;

pub use batch::{
    compress, decode_frame, decompress, FrameEncoder, DEFAULT_LEVEL, DEFAULT_MAX_CHUNK,
};
pub use chunker::{chunk_bytes, chunk_reader, Chunk, ChunkHasher, ChunkParams, Chunker};

use crate::errors::{CoreError, Result};
use crate::store::BlobStore;

/// A frame holding the bytes of each `(digest, offset, length)` range of a stored blob, each
/// compressed at `level` when that shrinks it.
///
/// Errors: [`CoreError::BlobNotFound`] for a missing blob, [`CoreError::OutOfRange`] for a
/// range past its end, [`CoreError::InvalidArgument`] for a bad level or a range over 4 GiB.
pub fn encode_chunks(
    store: &BlobStore,
    items: &[(String, u64, u64)],
    level: i32,
) -> Result<Vec<u8>> {
    let mut enc = FrameEncoder::new(level)?;
    let mut buf = Vec::new();
    for (digest, offset, length) in items {
        let (offset, length) = (*offset, *length);
        if u32::try_from(length).is_err() {
            return Err(CoreError::InvalidArgument(format!(
                "chunk of {length} bytes does not fit a frame entry (u32 length)"
            )));
        }
        let range = store.open_exact_range(digest, offset, length)?;
        buf.resize(range.len(), 0);
        range.read_into(&mut buf)?;
        enc.push(&buf)?;
    }
    Ok(enc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{digest_bytes, Algorithm};

    #[test]
    fn encode_from_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let content: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
        let digest = store.put_bytes(&content, None).unwrap();
        let chunks = chunk_bytes(&content, ChunkParams::default());
        let items: Vec<(String, u64, u64)> = chunks
            .iter()
            .map(|c| (digest.clone(), c.offset, c.length))
            .collect();
        let frame = encode_chunks(&store, &items, 3).unwrap();
        assert!(
            frame.len() < content.len() / 10,
            "compressible: {}",
            frame.len()
        );
        let decoded = decode_frame(&frame, DEFAULT_MAX_CHUNK).unwrap();
        assert_eq!(decoded.len(), chunks.len());
        for ((id, data), c) in decoded.iter().zip(&chunks) {
            assert_eq!(id, &c.id);
            assert_eq!(data.len() as u64, c.length);
        }
        let joined: Vec<u8> = decoded.into_iter().flat_map(|(_, d)| d).collect();
        assert_eq!(joined, content);
        assert!(encode_chunks(&store, &[], 3).unwrap().is_empty());
    }

    #[test]
    fn encode_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = store.put_bytes(b"0123456789", None).unwrap();
        let one = |d: &str, o, l| encode_chunks(&store, &[(d.to_owned(), o, l)], 3);
        assert!(matches!(
            one(&digest, 5, 6),
            Err(CoreError::OutOfRange { size: 10, .. })
        ));
        assert!(matches!(
            one(&digest, 11, 0),
            Err(CoreError::OutOfRange { .. })
        ));
        assert!(one(&digest, 10, 0).is_ok());
        let missing = digest_bytes(b"x", Algorithm::Sha256);
        assert!(matches!(
            one(&missing, 0, 1),
            Err(CoreError::BlobNotFound(_))
        ));
        assert!(matches!(
            encode_chunks(&store, &[], 99),
            Err(CoreError::InvalidArgument(_))
        ));
    }
}
