//! The one object that carries an S3 upload session between requests and replicas.
//!
//! `<prefix>/uploads/<id>/state` holds everything needed to continue the upload anywhere:
//! its size, the serialized SHA-256 state of every byte so far, the multipart upload id and
//! the parts already stored, and the tail (bytes not yet a full part). Nothing is kept in
//! object metadata (some S3-compatible servers keep that only in memory), so the layout is
//! a binary header followed by the tail:
//!
//! ```text
//! magic "CRUPLD01" | size u64 | header length u32 | sha256 state (u16 length + bytes)
//! | multipart id (u16 length + bytes, empty: none yet) | parts count u32
//! | per part: size u64, etag (u16 length + bytes) | tail bytes (to the end of the object)
//! ```
//! Integers are little-endian. The first 16 bytes alone give the size (a ranged GET).

use sha2::digest::common::hazmat::SerializableState;
use sha2::Sha256;

pub(crate) const MAGIC: &[u8; 8] = b"CRUPLD01";
/// Bytes of the state object that hold the magic and the size.
pub(crate) const SIZE_PREFIX: u64 = 16;

/// One stored part of the multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub size: u64,
    pub etag: String,
}

/// The upload as the bucket knows it (see the module docs).
#[derive(Clone)]
pub(crate) struct UploadState {
    pub size: u64,
    pub sha256: Sha256,
    pub multipart: Option<String>,
    pub parts: Vec<Part>,
    pub tail: Vec<u8>,
}

impl UploadState {
    pub(crate) fn empty() -> Self {
        UploadState {
            size: 0,
            sha256: Sha256::default(),
            multipart: None,
            parts: Vec::new(),
            tail: Vec::new(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut header = Vec::new();
        put_short(&mut header, &self.sha256.serialize());
        put_short(
            &mut header,
            self.multipart.as_deref().unwrap_or("").as_bytes(),
        );
        header.extend_from_slice(&(self.parts.len() as u32).to_le_bytes());
        for part in &self.parts {
            header.extend_from_slice(&part.size.to_le_bytes());
            put_short(&mut header, part.etag.as_bytes());
        }
        let mut out = Vec::with_capacity(20 + header.len() + self.tail.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.tail);
        out
    }

    /// Parse a state object; `None` if it is malformed or inconsistent (never panics).
    pub(crate) fn decode(data: &[u8]) -> Option<Self> {
        let mut r = Reader(data);
        if r.take(8)? != MAGIC {
            return None;
        }
        let size = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let header_len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let mut h = Reader(r.take(header_len)?);
        let sha256 = Sha256::deserialize(h.short()?.try_into().ok()?).ok()?;
        let multipart = match h.short()? {
            [] => None,
            id => Some(String::from_utf8(id.to_vec()).ok()?),
        };
        let count = u32::from_le_bytes(h.take(4)?.try_into().ok()?) as usize;
        let mut parts = Vec::with_capacity(count.min(10_000));
        for _ in 0..count {
            let size = u64::from_le_bytes(h.take(8)?.try_into().ok()?);
            let etag = String::from_utf8(h.short()?.to_vec()).ok()?;
            parts.push(Part { size, etag });
        }
        let tail = r.0.to_vec();
        let stored: u64 = parts.iter().map(|p| p.size).sum::<u64>() + tail.len() as u64;
        if stored != size || (multipart.is_none() && !parts.is_empty()) {
            return None;
        }
        Some(UploadState {
            size,
            sha256,
            multipart,
            parts,
            tail,
        })
    }

    /// The size recorded in the first [`SIZE_PREFIX`] bytes of a state object.
    pub(crate) fn decode_size(prefix: &[u8]) -> Option<u64> {
        if prefix.len() < SIZE_PREFIX as usize || &prefix[..8] != MAGIC {
            return None;
        }
        Some(u64::from_le_bytes(prefix[8..16].try_into().ok()?))
    }
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("state fields are short");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn short(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn round_trip_continues_the_hash() {
        let mut st = UploadState::empty();
        st.sha256.update(b"hello ");
        st.size = 6;
        st.multipart = Some("mp-1".into());
        st.parts.push(Part {
            size: 4,
            etag: "\"e1\"".into(),
        });
        st.tail = b"lo".to_vec();
        let mut back = UploadState::decode(&st.encode()).expect("decodes");
        assert_eq!(back.size, 6);
        assert_eq!(back.multipart.as_deref(), Some("mp-1"));
        assert_eq!(back.parts, st.parts);
        assert_eq!(back.tail, b"lo");
        back.sha256.update(b"world");
        assert_eq!(
            hex::encode(back.sha256.finalize()),
            hex::encode(Sha256::digest(b"hello world"))
        );
        assert_eq!(UploadState::decode_size(&st.encode()[..16]), Some(6));
    }

    #[test]
    fn malformed_states_are_refused() {
        let st = UploadState::empty().encode();
        assert!(UploadState::decode(&st).is_some());
        assert!(UploadState::decode(&st[..st.len() - 1]).is_none());
        assert!(UploadState::decode(b"CRUPLD01").is_none());
        assert!(UploadState::decode(b"").is_none());
        let mut wrong_size = st.clone();
        wrong_size[8] = 5; // claims 5 bytes, holds none
        assert!(UploadState::decode(&wrong_size).is_none());
    }
}
