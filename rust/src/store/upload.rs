use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use super::fsutil::{
    check_range, hash_file, metadata_if_exists, open_blob, publish, remove_if_exists,
};
use super::layout::Layout;
use super::lock;
use crate::digest::{Algorithm, Digest, Digester};
use crate::errors::{CoreError, IoContext, Result};

/// Open uploads of one [`super::BlobStore`], by id.
pub(crate) type Registry = Mutex<HashMap<String, Upload>>;

/// Writes at least this large hash on a second thread, in parallel with the write itself.
const PARALLEL_HASH_MIN: usize = 256 * 1024;

/// Piece size of [`Upload::copy_from`].
const COPY_PIECE: usize = 1 << 20;

/// [`Upload::copy_many`] gathers ranges into pieces of this size (small enough to stay in the
/// CPU cache between the write and the hash) and keeps this many pieces in flight.
const GATHER_PIECE: usize = 256 * 1024;
const GATHER_BUFFERS: usize = 6;

/// Longest accepted upload id.
const MAX_ID_LEN: usize = 128;

/// Check an upload id against `[A-Za-z0-9_-]{1,128}`.
pub fn validate_upload_id(id: &str) -> Result<()> {
    let ok = (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid_upload_id(id))
    }
}

/// An in-progress upload: an append-only file under `uploads/` plus a running sha256.
///
/// A cheap, cloneable handle; clones (and every `BlobStore::upload` call for the same id in
/// this process) share one state. All methods take `&self` and serialize on an internal mutex,
/// so an `Upload` may be used from any thread.
///
/// Before each write or commit the handle checks that its open file is still the one at the
/// upload path and that the on-disk size matches what it has hashed; if another process or
/// store instance changed the file, the hash state is rebuilt from disk, and if the file is
/// gone the call fails with [`CoreError::UploadNotFound`].
///
/// [`Self::release`] closes the file descriptor of an idle upload but keeps the running hash:
/// the next write or commit reopens the file and, if it is still the same file of the same
/// size, continues without re-reading a byte.
#[derive(Clone, Debug)]
pub struct Upload {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    id: String,
    path: PathBuf,
    layout: Arc<Layout>,
    registry: Weak<Registry>,
    /// Bytes hashed so far; readable without taking `state`.
    size: AtomicU64,
    /// Set once committed or aborted; readable without taking `state`.
    closed: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Append-mode read/write handle to `path`; `None` after close or release.
    file: Option<File>,
    /// After [`Upload::release`]: (device, inode) of the file `sha256` covers, so that the
    /// reopen can tell whether the hash state still applies. `None` whenever `file` is open.
    released: Option<(u64, u64)>,
    sha256: Digester,
    /// When a write, copy or commit last started; what idle release goes by.
    last_used: Instant,
}

impl State {
    fn opened(file: File, sha256: Digester) -> Self {
        State {
            file: Some(file),
            released: None,
            sha256,
            last_used: Instant::now(),
        }
    }
}

/// Whether an upload's file descriptor is open, as seen by [`super::BlobStore::release_idle_uploads`].
#[derive(Debug)]
pub(crate) enum FileUse {
    /// A call is running on the upload right now.
    Busy,
    /// No descriptor is open (released, closed, or dropped after a failed write).
    NotOpen,
    /// Open and unused for this long.
    Idle(Duration),
}

impl Upload {
    /// Open (creating if absent) the upload file and hash what it already holds.
    pub(crate) fn open(layout: Arc<Layout>, registry: Weak<Registry>, id: String) -> Result<Self> {
        validate_upload_id(&id)?;
        let path = layout.upload_path(&id);
        let (file, sha256, size) = open_and_hash(&path)?;
        Ok(Upload {
            shared: Arc::new(Shared {
                id,
                path,
                layout,
                registry,
                size: AtomicU64::new(size),
                closed: AtomicBool::new(false),
                state: Mutex::new(State::opened(file, sha256)),
            }),
        })
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.shared.size.load(Ordering::Acquire)
    }

    /// Whether this upload has been committed or aborted.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Append `data`; returns the new size. The bytes are in the file (page cache) on return;
    /// durability comes from the fsync in [`Self::commit`].
    ///
    /// Buffers of 256 KiB or more are hashed on a second thread while the
    /// write system call copies them into the page cache.
    pub fn write(&self, data: &[u8]) -> Result<u64> {
        let mut st = self.lock();
        self.resync(&mut st)?;
        let State {
            file: slot, sha256, ..
        } = &mut *st;
        let file = slot.as_mut().expect("resync leaves a file open");
        let written = if data.len() >= PARALLEL_HASH_MIN {
            std::thread::scope(|s| {
                let hasher = s.spawn(|| sha256.update(data));
                let written = file.write_all(data);
                hasher.join().expect("hashing does not panic");
                written
            })
        } else {
            sha256.update(data);
            file.write_all(data)
        };
        if let Err(e) = written {
            // The hash now covers bytes that may not (all) be in the file: drop the handle so
            // the next call reopens and rebuilds the hash from what actually reached the disk.
            *slot = None;
            return Err(e).ctx("write", &self.shared.path);
        }
        let size = self.size() + data.len() as u64;
        self.shared.size.store(size, Ordering::Release);
        Ok(size)
    }

    /// Append `length` bytes of the committed blob `digest` from `offset` (a chunk this node
    /// already holds) and return the new size. The running sha256 covers them like written
    /// bytes, so [`Self::commit`] verifies the assembled content as usual.
    ///
    /// All or nothing: if the copy fails part-way the upload is truncated back to its previous
    /// size and hash state. Errors: [`CoreError::BlobNotFound`] if the source is missing,
    /// [`CoreError::OutOfRange`] if `offset + length` passes its end.
    pub fn copy_from(&self, digest: &str, offset: u64, length: u64) -> Result<u64> {
        let source = Digest::parse(digest)?;
        let (src, src_path, src_size) = open_blob(&self.shared.layout, &source)?;
        check_range(&source, offset, length, src_size)?;
        self.append_all_or_nothing(length, |file, path, sha256| {
            copy_range((&src, &src_path), offset, length, (file, path), sha256)
        })
    }

    /// Append several `(digest, offset, length)` ranges of committed blobs, in order, and
    /// return the new size: assembling a blob from the many chunks a node already holds in one
    /// call instead of one per chunk.
    ///
    /// The ranges are gathered into 256 KiB pieces; each piece is written, then hashed on a
    /// second thread while the next one is read and written, so the copy runs at about the
    /// speed of SHA-256 rather than read + hash + write in series. Every source is opened and
    /// every range checked before the first byte is appended; like [`Self::copy_from`] the
    /// call is all or nothing.
    pub fn copy_many(&self, ranges: &[(&str, u64, u64)]) -> Result<u64> {
        let mut sources: Vec<(File, PathBuf)> = Vec::new();
        let mut plan: Vec<(usize, u64, u64)> = Vec::with_capacity(ranges.len());
        let mut last: Option<(&str, u64)> = None; // consecutive ranges of one blob share a handle
        let mut total: u64 = 0;
        for &(digest, offset, length) in ranges {
            let size = match last {
                Some((d, size)) if d == digest => size,
                _ => {
                    let (file, path, size) =
                        open_blob(&self.shared.layout, &Digest::parse(digest)?)?;
                    sources.push((file, path));
                    last = Some((digest, size));
                    size
                }
            };
            check_range(&Digest::parse(digest)?, offset, length, size)?;
            if length > 0 {
                plan.push((sources.len() - 1, offset, length));
                total += length;
            }
        }
        self.append_all_or_nothing(total, |file, path, sha256| {
            gather_copy(&sources, &plan, (file, path), sha256)
        })
    }

    /// Run `append` (which writes `length` bytes to the file and hashes them) under the lock;
    /// if it fails, truncate the file and restore the hash state, so the upload is as before.
    fn append_all_or_nothing(
        &self,
        length: u64,
        append: impl FnOnce(&mut File, &Path, &mut Digester) -> Result<()>,
    ) -> Result<u64> {
        let mut st = self.lock();
        self.resync(&mut st)?;
        let before = self.size();
        let State {
            file: slot, sha256, ..
        } = &mut *st;
        let file = slot.as_mut().expect("resync leaves a file open");
        let saved = sha256.clone();
        if let Err(e) = append(file, &self.shared.path, sha256) {
            *sha256 = saved;
            if file.set_len(before).is_err() {
                *slot = None; // unknown content: the next call reopens and rehashes from disk
            }
            return Err(e);
        }
        let size = before + length;
        self.shared.size.store(size, Ordering::Release);
        Ok(size)
    }

    /// Verify the content against `expected`, then make it the blob at that digest.
    ///
    /// sha256 uses the running hash; sha512 re-reads the file. On mismatch returns
    /// [`CoreError::DigestMismatch`] and leaves the upload as it was. On success (or if the
    /// blob already exists, in which case the upload is discarded) the upload is closed and
    /// the canonical digest string is returned.
    pub fn commit(&self, expected: &str) -> Result<String> {
        let expected = Digest::parse(expected)?;
        let mut st = self.lock();
        self.resync(&mut st)?;
        let path = &self.shared.path;
        let actual = match expected.algorithm() {
            Algorithm::Sha256 => st.sha256.hexdigest(),
            alg => {
                let file = st.file.as_ref().expect("resync leaves a file open");
                hash_file(file, alg, path)?.0.hexdigest()
            }
        };
        if actual != expected.hex() {
            return Err(CoreError::DigestMismatch {
                expected: expected.to_string(),
                actual: format!("{}:{actual}", expected.algorithm()),
            });
        }
        let layout = &self.shared.layout;
        if metadata_if_exists(&layout.blob_path(&expected))?.is_some() {
            remove_if_exists(path)?;
        } else {
            let file = st.file.as_ref().expect("resync leaves a file open");
            file.sync_all().ctx("fsync", path)?;
            publish(layout, path, &expected)?;
        }
        self.close(&mut st);
        Ok(expected.to_string())
    }

    /// Remove the upload's file and close it. A no-op on a handle that is already closed
    /// (committed or aborted), so a stale handle never removes a newer upload with the same id.
    pub fn abort(&self) -> Result<()> {
        let mut st = self.lock();
        if self.is_closed() {
            return Ok(());
        }
        self.close(&mut st);
        remove_if_exists(&self.shared.path).map(drop)
    }

    /// Close the file descriptor but keep the upload and its running hash; the next write or
    /// commit reopens the file lazily. Returns whether a descriptor was closed: `false` if
    /// none is open or a call is running on the upload right now (never waits for it).
    pub fn release(&self) -> bool {
        let Some(mut st) = self.try_lock() else {
            return false;
        };
        let Some(file) = st.file.take() else {
            return false;
        };
        // If the file cannot even be stat'ed, forget the hash: the reopen rebuilds it.
        st.released = file.metadata().ok().map(|m| file_identity(&m));
        true
    }

    /// See [`FileUse`]; never waits for a running call.
    pub(crate) fn file_use(&self) -> FileUse {
        match self.try_lock() {
            None => FileUse::Busy,
            Some(st) if st.file.is_none() => FileUse::NotOpen,
            Some(st) => FileUse::Idle(st.last_used.elapsed()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    fn try_lock(&self) -> Option<MutexGuard<'_, State>> {
        match self.shared.state.try_lock() {
            Ok(st) => Some(st),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()), // as in `lock`
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Make `st` agree with the file at the upload path (see the type's docs).
    fn resync(&self, st: &mut State) -> Result<()> {
        if self.is_closed() {
            return Err(CoreError::UploadNotFound(self.shared.id.clone()));
        }
        st.last_used = Instant::now();
        let path = &self.shared.path;
        let Some(on_disk) = metadata_if_exists(path)? else {
            self.close(st);
            return Err(CoreError::UploadNotFound(self.shared.id.clone()));
        };
        if let Some(identity) = st.released {
            // Released while idle: reopen; if it is still the file the hash covers, the checks
            // below keep the hash state (the common case: nothing re-read).
            if identity == file_identity(&on_disk) {
                match OpenOptions::new().read(true).append(true).open(path) {
                    Ok(file) => st.file = Some(file),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.close(st);
                        return Err(CoreError::UploadNotFound(self.shared.id.clone()));
                    }
                    // e.g. out of descriptors: `released` stays, so a later call retries cheaply
                    Err(e) => return Err(e).ctx("open", path),
                }
            }
            st.released = None;
        }
        let same_file = match &st.file {
            Some(f) => file_identity(&f.metadata().ctx("stat", path)?) == file_identity(&on_disk),
            None => false,
        };
        if !same_file {
            let (file, sha256, size) = open_and_hash(path)?;
            *st = State::opened(file, sha256);
            self.shared.size.store(size, Ordering::Release);
        } else if on_disk.len() != self.size() {
            let file = st.file.as_ref().expect("checked above");
            let (sha256, size) = hash_file(file, Algorithm::Sha256, path)?;
            st.sha256 = sha256;
            self.shared.size.store(size, Ordering::Release);
        }
        Ok(())
    }

    /// Mark closed, drop the file handle and leave the store's registry.
    fn close(&self, st: &mut State) {
        self.shared.closed.store(true, Ordering::Release);
        st.file = None;
        st.released = None;
        if let Some(registry) = self.shared.registry.upgrade() {
            let mut map = lock(&registry);
            if map
                .get(&self.shared.id)
                .is_some_and(|u| Arc::ptr_eq(&u.shared, &self.shared))
            {
                map.remove(&self.shared.id);
            }
        }
    }
}

/// Copy `length` bytes of `src` from `offset` to the end of `dst`, hashing them into `sha256`.
///
/// Pipelined through two buffers: while one piece is hashed on a second thread, it is also
/// written and the next piece is read.
fn copy_range(
    (src, src_path): (&File, &Path),
    offset: u64,
    length: u64,
    (dst, dst_path): (&mut File, &Path),
    sha256: &mut Digester,
) -> Result<()> {
    let piece = |pos: u64| (offset + length - pos).min(COPY_PIECE as u64) as usize;
    let first = piece(offset);
    if first < PARALLEL_HASH_MIN {
        // one small piece (the common case: a single chunk): no thread, one buffer
        let mut buf = vec![0u8; first];
        src.read_exact_at(&mut buf, offset).ctx("read", src_path)?;
        sha256.update(&buf);
        return dst.write_all(&buf).ctx("write", dst_path);
    }
    let mut cur = vec![0u8; COPY_PIECE];
    let mut next = vec![0u8; COPY_PIECE];
    src.read_exact_at(&mut cur[..first], offset)
        .ctx("read", src_path)?;
    let mut pos = offset + first as u64;
    let mut cur_len = first;
    while cur_len > 0 {
        let next_len = piece(pos);
        let data = &cur[..cur_len];
        let next_buf = &mut next[..next_len];
        let (written, read) = std::thread::scope(|s| {
            let hasher = s.spawn(|| sha256.update(data));
            let written = dst.write_all(data);
            let read = match written {
                Ok(()) => src.read_exact_at(next_buf, pos),
                Err(_) => Ok(()),
            };
            hasher.join().expect("hashing does not panic");
            (written, read)
        });
        written.ctx("write", dst_path)?;
        read.ctx("read", src_path)?;
        std::mem::swap(&mut cur, &mut next);
        pos += next_len as u64;
        cur_len = next_len;
    }
    Ok(())
}

/// Append the `plan` ranges (source index, offset, length) to `dst`, hashing into `sha256`
/// on a second thread: buffers circulate main (read, write) → hasher → main.
fn gather_copy(
    sources: &[(File, PathBuf)],
    plan: &[(usize, u64, u64)],
    (dst, dst_path): (&mut File, &Path),
    sha256: &mut Digester,
) -> Result<()> {
    use std::sync::mpsc;
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(GATHER_BUFFERS);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..GATHER_BUFFERS {
        empty_tx
            .send(vec![0u8; GATHER_PIECE])
            .expect("receiver is alive");
    }
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            for (buf, n) in full_rx {
                sha256.update(&buf[..n]);
                if empty_tx.send(buf).is_err() {
                    break;
                }
            }
        });
        let copied = (|| -> Result<()> {
            // The hasher returns every buffer it gets, so one is always on its way back.
            let next = || empty_rx.recv().expect("the hasher returns its buffers");
            let mut buf = next();
            let mut fill = 0;
            for &(src, offset, length) in plan {
                let (file, path) = &sources[src];
                let (mut pos, end) = (offset, offset + length);
                while pos < end {
                    let take = (GATHER_PIECE - fill).min((end - pos) as usize);
                    file.read_exact_at(&mut buf[fill..fill + take], pos)
                        .ctx("read", path)?;
                    fill += take;
                    pos += take as u64;
                    if fill == GATHER_PIECE {
                        dst.write_all(&buf).ctx("write", dst_path)?;
                        full_tx.send((buf, fill)).expect("the hasher is alive");
                        buf = next();
                        fill = 0;
                    }
                }
            }
            if fill > 0 {
                dst.write_all(&buf[..fill]).ctx("write", dst_path)?;
                full_tx.send((buf, fill)).expect("the hasher is alive");
            }
            Ok(())
        })();
        drop(full_tx); // ends the hasher's loop once it has hashed everything sent
        hasher.join().expect("hashing does not panic");
        copied
    })
}

/// What identifies a file across opens: (device, inode).
fn file_identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Open `path` for append (creating it) and hash its current content with sha256.
fn open_and_hash(path: &Path) -> Result<(File, Digester, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .ctx("open", path)?;
    let (sha256, size) = hash_file(&file, Algorithm::Sha256, path)?;
    Ok((file, sha256, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids() {
        for ok in [
            "a",
            "A-z_09",
            &"x".repeat(128),
            "550e8400-e29b-41d4-a716-446655440000",
        ] {
            assert!(validate_upload_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "..", ".", "a b", "ü", &"x".repeat(129), "a\0b"] {
            assert!(
                matches!(validate_upload_id(bad), Err(CoreError::InvalidUploadId(_))),
                "{bad:?}"
            );
        }
    }
}
