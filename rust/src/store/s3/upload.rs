//! An upload session on S3: a multipart upload plus a running SHA-256, continued anywhere.
//!
//! Bytes gather in memory until they fill a part, which is stored at once (`UploadPart`);
//! [`S3Upload::flush`] writes the state object (size, hash state, parts, the tail that is not
//! yet a part) so that any replica can continue from exactly there. Callers flush at the end
//! of every request that wrote (a handle lives for one request); a process killed before it
//! flushed loses only what its client was never told was stored.
//!
//! Commit verifies before anything is visible at the digest key: the running SHA-256 is
//! compared first; then small content is PUT straight to the digest key, larger content is
//! assembled at `uploads/<id>/data` and copied server-side to the digest key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::{ObjectStore, PutPayload};
use sha2::Digest as _;

use super::state::{Part, UploadState};
use super::{block_on, is_not_found, s3_error, Ranged, Shared, READ_PIECE};
use crate::digest::{Algorithm, Digest, Digester};
use crate::errors::{CoreError, Result};

/// One upload session's handle; see the module docs. Calls on one handle are serialized.
#[derive(Debug)]
pub struct S3Upload {
    shared: Arc<Shared>,
    id: String,
    size: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    state: UploadState,
    /// Written since the state object was last stored.
    dirty: bool,
    /// Committed or aborted through this handle.
    closed: bool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("size", &self.state.size)
            .field("parts", &self.state.parts.len())
            .field("dirty", &self.dirty)
            .field("closed", &self.closed)
            .finish()
    }
}

impl S3Upload {
    pub(crate) fn new(shared: Arc<Shared>, id: String, state: UploadState) -> Self {
        S3Upload {
            shared,
            id,
            size: AtomicU64::new(state.size),
            inner: Mutex::new(Inner {
                state,
                dirty: false,
                closed: false,
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes written so far through this handle (flushed or not).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Append `data`; every part it fills is stored before this returns. All or nothing: on
    /// failure the handle is as before. Returns the new size.
    pub fn write(&self, data: &[u8]) -> Result<u64> {
        let mut inner = self.lock_open()?;
        if !data.is_empty() {
            self.append(&mut inner, data)?;
        }
        Ok(self.size())
    }

    /// Store the state object if anything was written since it was last stored, so that any
    /// replica continues from here. Returns the size.
    pub fn flush(&self) -> Result<u64> {
        let mut inner = self.lock_open()?;
        self.flush_locked(&mut inner)?;
        Ok(self.size())
    }

    /// Append `length` bytes of the committed blob `digest` from `offset`.
    pub fn copy_from(&self, digest: &str, offset: u64, length: u64) -> Result<u64> {
        self.copy_many(&[(digest, offset, length)])
    }

    /// Append each `(digest, offset, length)` range of committed blobs, in order (ranged GETs;
    /// S3's UploadPartCopy is not used: parts must line up with the upload's own bytes, and
    /// some S3-compatible servers answer it without copying). Every range is checked before
    /// anything is appended; all or nothing: on failure the handle goes back to the state
    /// stored before the call.
    pub fn copy_many(&self, ranges: &[(&str, u64, u64)]) -> Result<u64> {
        let mut inner = self.lock_open()?;
        let mut keys = Vec::with_capacity(ranges.len());
        for &(digest, offset, length) in ranges {
            let parsed = Digest::parse(digest)?;
            let key = self.shared.blob_key(&parsed);
            let Some((size, _)) = self.shared.head(&key)? else {
                return Err(CoreError::BlobNotFound(digest.to_owned()));
            };
            if !offset.checked_add(length).is_some_and(|end| end <= size) {
                return Err(CoreError::OutOfRange {
                    digest: parsed.to_string(),
                    offset,
                    length,
                    size,
                });
            }
            keys.push((key, offset, length));
        }
        self.flush_locked(&mut inner)?; // the point a failure below goes back to
        let copied = (|| -> Result<()> {
            for (key, offset, length) in &keys {
                let (mut pos, end) = (*offset, offset + length);
                while pos < end {
                    let piece = (end - pos).min(READ_PIECE);
                    let data = match self.shared.get_range(key, pos, Some(pos + piece))? {
                        Ranged::Data(data) if data.len() as u64 == piece => data,
                        _ => {
                            return Err(CoreError::Io {
                                context: format!("S3 GET {key}"),
                                source: std::io::Error::other("the blob changed while copied"),
                            })
                        }
                    };
                    self.append(&mut inner, &data)?;
                    pos += piece;
                }
            }
            Ok(())
        })();
        if let Err(e) = copied {
            match self.shared.load_state(&self.id)? {
                Some(state) => {
                    self.size.store(state.size, Ordering::Release);
                    inner.state = state;
                    inner.dirty = false;
                }
                None => inner.closed = true,
            }
            return Err(e);
        }
        Ok(self.size())
    }

    /// Verify the content against `expected`, then make it the blob at that digest (see the
    /// module docs). On a sha256 mismatch the upload is left as it was (flushed) and nothing
    /// becomes visible. sha512 can only be checked on the assembled object: a mismatch there
    /// ends the upload (it is removed), as no byte can be appended to an assembled object.
    pub fn commit(&self, expected: &str) -> Result<String> {
        let expected = Digest::parse(expected)?;
        let mut guard = self.lock_open()?;
        let inner: &mut Inner = &mut guard;
        let mismatch = |actual: String| CoreError::DigestMismatch {
            expected: expected.to_string(),
            actual: format!("{}:{actual}", expected.algorithm()),
        };
        let multipart = inner.state.multipart.clone();
        let early = match expected.algorithm() {
            Algorithm::Sha256 => Some(hex::encode(inner.state.sha256.clone().finalize())),
            alg if multipart.is_none() => {
                let mut d = Digester::new(alg);
                d.update(&inner.state.tail);
                Some(d.hexdigest())
            }
            _ => None,
        };
        if let Some(actual) = &early {
            if actual != expected.hex() {
                self.flush_locked(inner)?;
                return Err(mismatch(actual.clone()));
            }
        }
        let sh = &self.shared;
        let blob_key = sh.blob_key(&expected);
        if sh.head(&blob_key)?.is_some() {
            self.discard(inner)?; // deduplicated
            return Ok(expected.to_string());
        }
        match &multipart {
            None => sh.put(&blob_key, Bytes::copy_from_slice(&inner.state.tail))?,
            Some(mp) => {
                let data_key = sh.data_key(&self.id);
                let st = &inner.state;
                let mut parts: Vec<PartId> = st
                    .parts
                    .iter()
                    .map(|p| PartId {
                        content_id: p.etag.clone(),
                    })
                    .collect();
                if !st.tail.is_empty() || parts.is_empty() {
                    let payload = PutPayload::from(Bytes::copy_from_slice(&st.tail));
                    let part = block_on(sh.s3.put_part(&data_key, mp, parts.len(), payload))
                        .map_err(|e| s3_error("upload part", &data_key, e))?;
                    parts.push(part);
                }
                let mut verify = early.is_none();
                if let Err(e) = block_on(sh.s3.complete_multipart(&data_key, mp, parts)) {
                    if !is_not_found(&e) {
                        return Err(s3_error("complete multipart", &data_key, e));
                    }
                    // Already completed by an earlier attempt that stopped before the copy:
                    // the assembled object is there; check it before it is used.
                    verify = true;
                }
                if verify {
                    let Some((actual, size)) = sh.hash_object(&data_key, expected.algorithm())?
                    else {
                        inner.closed = true;
                        return Err(CoreError::UploadNotFound(self.id.clone()));
                    };
                    if actual != expected.hex() || size != st.size {
                        self.discard(inner)?;
                        return Err(mismatch(actual));
                    }
                }
                block_on(sh.s3.copy(&data_key, &blob_key))
                    .map_err(|e| s3_error("copy", &data_key, e))?;
            }
        }
        sh.delete(&sh.data_key(&self.id))?;
        sh.delete(&sh.state_key(&self.id))?;
        inner.closed = true;
        Ok(expected.to_string())
    }

    /// Remove the upload (multipart upload, state, data); idempotent.
    pub fn abort(&self) -> Result<()> {
        let mut inner = self.lock();
        self.discard(&mut inner)
    }

    /// Close the handle and remove the upload: the multipart upload this handle knows (it may
    /// have started one not yet flushed) and whatever the stored state names.
    fn discard(&self, inner: &mut Inner) -> Result<()> {
        inner.closed = true;
        if let Some(mp) = inner.state.multipart.take() {
            let data_key = self.shared.data_key(&self.id);
            match block_on(self.shared.s3.abort_multipart(&data_key, &mp)) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(s3_error("abort multipart", &data_key, e)),
            }
        }
        self.shared.remove_upload(&self.id)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        super::super::lock(&self.inner)
    }

    fn lock_open(&self) -> Result<MutexGuard<'_, Inner>> {
        let inner = self.lock();
        if inner.closed {
            return Err(CoreError::UploadNotFound(self.id.clone()));
        }
        Ok(inner)
    }

    fn flush_locked(&self, inner: &mut Inner) -> Result<()> {
        if inner.dirty {
            let key = self.shared.state_key(&self.id);
            self.shared.put(&key, Bytes::from(inner.state.encode()))?;
            inner.dirty = false;
        }
        Ok(())
    }

    /// Hash `data` into the state, store every part it fills (nothing changes on failure).
    fn append(&self, inner: &mut Inner, data: &[u8]) -> Result<()> {
        let part_size = self.shared.part_size;
        let st = &mut inner.state;
        let (tail_before, sha_before) = (st.tail.len(), st.sha256.clone());
        st.tail.extend_from_slice(data);
        st.sha256.update(data);
        let mut stored = Vec::new();
        let mut cursor = 0;
        let uploaded = (|| -> Result<()> {
            while st.tail.len() - cursor >= part_size {
                let data_key = self.shared.data_key(&self.id);
                let mp = match &st.multipart {
                    Some(mp) => mp.clone(),
                    None => {
                        let mp = block_on(self.shared.s3.create_multipart(&data_key))
                            .map_err(|e| s3_error("create multipart", &data_key, e))?;
                        st.multipart = Some(mp.clone());
                        mp
                    }
                };
                let piece = Bytes::copy_from_slice(&st.tail[cursor..cursor + part_size]);
                let index = st.parts.len() + stored.len();
                let part = block_on(self.shared.s3.put_part(&data_key, &mp, index, piece.into()))
                    .map_err(|e| s3_error("upload part", &data_key, e))?;
                stored.push(Part {
                    size: part_size as u64,
                    etag: part.content_id,
                });
                cursor += part_size;
            }
            Ok(())
        })();
        if let Err(e) = uploaded {
            st.tail.truncate(tail_before);
            st.sha256 = sha_before;
            if st.multipart.is_some() {
                inner.dirty = true; // a new multipart id is worth recording (to abort it)
            }
            return Err(e);
        }
        st.parts.extend(stored);
        st.tail.drain(..cursor);
        st.size += data.len() as u64;
        inner.dirty = true;
        self.size.store(st.size, Ordering::Release);
        Ok(())
    }
}
