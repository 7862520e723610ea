use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::fsutil::{
    check_range, fsync_dir, metadata_if_exists, open_blob, publish, remove_if_exists,
};
use super::layout::Layout;
use super::lock;
use super::upload::{validate_upload_id, FileUse, Registry, Upload};
use crate::delta::{chunk_reader, Chunk, ChunkParams};
use crate::digest::{Algorithm, Digest, Digester};
use crate::errors::{CoreError, IoContext, Result};

/// Content-addressed, deduplicated, crash-safe blob store rooted at one directory.
///
/// Cheap to share between threads (`&self` everywhere). Open [`Upload`]s are cached per id so
/// that reopening an upload in the same process does not re-read its bytes; only a fresh
/// process (or another `BlobStore` on the same root) rebuilds the hash state from disk. A cached
/// upload need not hold a file descriptor: [`Self::release_idle_uploads`] closes idle ones.
#[derive(Debug)]
pub struct BlobStore {
    layout: Arc<Layout>,
    uploads: Arc<Registry>,
}

/// An open, bounds-checked byte range of a committed blob; see [`BlobStore::open_range`].
#[derive(Debug)]
pub struct BlobRange {
    file: File,
    path: PathBuf,
    offset: u64,
    len: usize,
}

impl BlobRange {
    fn new(file: File, path: PathBuf, offset: u64, len: u64) -> Result<Self> {
        let len = usize::try_from(len).map_err(|_| {
            CoreError::io(
                "read",
                &path,
                io::Error::other("range does not fit in memory"),
            )
        })?;
        Ok(BlobRange {
            file,
            path,
            offset,
            len,
        })
    }

    /// Number of bytes in the range.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fill `buf` (exactly [`Self::len`] bytes) with the range.
    pub fn read_into(&self, buf: &mut [u8]) -> Result<()> {
        assert_eq!(
            buf.len(),
            self.len,
            "buffer must be exactly the range length"
        );
        self.file
            .read_exact_at(buf, self.offset)
            .ctx("read", &self.path)
    }
}

impl BlobStore {
    /// Open the store at `root`, creating its directories if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let layout = Layout::new(root.into());
        layout.create()?;
        Ok(BlobStore {
            layout: Arc::new(layout),
            uploads: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn path_for(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.layout.blob_path(&Digest::parse(digest)?))
    }

    pub fn exists(&self, digest: &str) -> Result<bool> {
        Ok(self.size(digest)?.is_some())
    }

    /// Size in bytes of the blob, or `None` if it is not in the store.
    pub fn size(&self, digest: &str) -> Result<Option<u64>> {
        let path = self.path_for(digest)?;
        Ok(metadata_if_exists(&path)?.map(|m| m.len()))
    }

    /// Store a small blob atomically and return its digest.
    ///
    /// Hashes with sha256 when `expected` is `None`; otherwise with the expected digest's
    /// algorithm, failing with [`CoreError::DigestMismatch`] if the content does not match.
    /// Verifies even when the blob already exists (then nothing is written).
    pub fn put_bytes(&self, data: &[u8], expected: Option<&str>) -> Result<String> {
        let digest = match expected {
            Some(e) => {
                let expected = Digest::parse(e)?;
                let actual = hex_of(data, expected.algorithm());
                if actual != expected.hex() {
                    return Err(CoreError::DigestMismatch {
                        expected: expected.to_string(),
                        actual: format!("{}:{actual}", expected.algorithm()),
                    });
                }
                expected
            }
            None => Digest::from_parts(Algorithm::Sha256, hex_of(data, Algorithm::Sha256)),
        };
        if metadata_if_exists(&self.layout.blob_path(&digest))?.is_some() {
            return Ok(digest.to_string());
        }
        let tmp = self.layout.new_tmp_path();
        let staged = write_durably(&tmp, data).and_then(|()| publish(&self.layout, &tmp, &digest));
        if let Err(e) = staged {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(digest.to_string())
    }

    /// Store many small blobs with their expected digests, in one call: what
    /// [`Self::put_bytes`] does for each, with the fsyncs of the batch done together.
    ///
    /// Every blob is verified first (a mismatch fails the call before anything is written).
    /// Then the new ones are written to staging files, the files fsynced (several threads at
    /// once: the filesystem joins their journal commits), renamed into place, and each blob
    /// directory touched fsynced once. So, as with `put_bytes`, a blob path only ever appears
    /// for verified, durable bytes, and every rename is durable when this returns. On an error
    /// the staging files are removed; blobs already renamed stay (complete, unreferenced).
    /// Returns the digests, in order.
    pub fn put_many(&self, items: &[(&[u8], &str)]) -> Result<Vec<String>> {
        let mut digests = Vec::with_capacity(items.len());
        for (data, expected) in items {
            let expected = Digest::parse(expected)?;
            let actual = hex_of(data, expected.algorithm());
            if actual != expected.hex() {
                return Err(CoreError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: format!("{}:{actual}", expected.algorithm()),
                });
            }
            digests.push(expected);
        }
        let mut staged: Vec<(PathBuf, &Digest)> = Vec::new();
        let result = self.stage_and_publish(items, &digests, &mut staged);
        if result.is_err() {
            for (tmp, _) in &staged {
                let _ = fs::remove_file(tmp);
            }
        }
        result.map(|()| digests.iter().map(|d| d.to_string()).collect())
    }

    fn stage_and_publish<'a>(
        &self,
        items: &[(&[u8], &str)],
        digests: &'a [Digest],
        staged: &mut Vec<(PathBuf, &'a Digest)>,
    ) -> Result<()> {
        let mut files = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for ((data, _), digest) in items.iter().zip(digests) {
            if !seen.insert(digest.to_string())
                || metadata_if_exists(&self.layout.blob_path(digest))?.is_some()
            {
                continue; // stored already (or earlier in this batch)
            }
            let tmp = self.layout.new_tmp_path();
            let mut f = File::create_new(&tmp).ctx("create", &tmp)?;
            staged.push((tmp.clone(), digest));
            f.write_all(data).ctx("write", &tmp)?;
            files.push((f, tmp));
        }
        in_parallel(&files, |(f, path)| f.sync_all().ctx("fsync", path))?;
        drop(files);
        let mut dirs: Vec<PathBuf> = Vec::new();
        while let Some((tmp, digest)) = staged.pop() {
            let dst = self.layout.blob_path(digest);
            let dir = dst
                .parent()
                .expect("blob paths have a parent")
                .to_path_buf();
            let moved = if dir.is_dir() {
                fs::rename(&tmp, &dst).ctx("rename into", &dst)
            } else {
                publish(&self.layout, &tmp, digest) // creates the directory durably
            };
            if let Err(e) = moved {
                staged.push((tmp, digest));
                return Err(e);
            }
            dirs.push(dir);
        }
        dirs.sort();
        dirs.dedup();
        in_parallel(&dirs, |dir| fsync_dir(dir))
    }

    /// Open `length` bytes (to the end when `None`) from `offset` of a blob, clamped to the
    /// blob's size like a Python slice (an offset past the end gives an empty range).
    ///
    /// Errors with [`CoreError::BlobNotFound`] if the blob is missing.
    pub fn open_range(&self, digest: &str, offset: u64, length: Option<u64>) -> Result<BlobRange> {
        let (file, path, size) = open_blob(&self.layout, &Digest::parse(digest)?)?;
        let available = size.saturating_sub(offset);
        let len = length.map_or(available, |l| l.min(available));
        BlobRange::new(file, path, offset.min(size), len)
    }

    /// Open exactly `length` bytes from `offset` of a blob, without clamping.
    ///
    /// Errors with [`CoreError::BlobNotFound`] if the blob is missing and
    /// [`CoreError::OutOfRange`] if `offset + length` passes its end.
    pub fn open_exact_range(&self, digest: &str, offset: u64, length: u64) -> Result<BlobRange> {
        let digest = Digest::parse(digest)?;
        let (file, path, size) = open_blob(&self.layout, &digest)?;
        check_range(&digest, offset, length, size)?;
        BlobRange::new(file, path, offset, length)
    }

    /// Read a blob, or a range of it; see [`Self::open_range`].
    pub fn read(&self, digest: &str, offset: u64, length: Option<u64>) -> Result<Vec<u8>> {
        let range = self.open_range(digest, offset, length)?;
        let mut buf = vec![0u8; range.len()];
        range.read_into(&mut buf)?;
        Ok(buf)
    }

    /// The content-defined chunks of a blob (see [`crate::delta::chunker`]), streaming the file
    /// through a fixed buffer. Errors with [`CoreError::BlobNotFound`] if the blob is missing.
    pub fn chunks(&self, digest: &str, params: ChunkParams) -> Result<Vec<Chunk>> {
        let range = self.open_range(digest, 0, None)?;
        chunk_reader(&range.file, params).ctx("read", &range.path)
    }

    /// Remove a blob. Returns whether it existed.
    pub fn delete(&self, digest: &str) -> Result<bool> {
        remove_if_exists(&self.path_for(digest)?)
    }

    /// Every committed blob's digest, sorted. Stray files that are not well-formed blob paths
    /// are ignored.
    pub fn list_digests(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for alg in Algorithm::OCI {
            let alg_dir = self.layout.alg_dir(alg);
            for prefix in read_dir_names(&alg_dir)? {
                if prefix.len() != 2 {
                    continue;
                }
                for name in read_dir_names(&alg_dir.join(&prefix))? {
                    if !name.starts_with(&prefix) {
                        continue;
                    }
                    if let Ok(d) = Digest::parse(&format!("{alg}:{name}")) {
                        out.push(d.to_string());
                    }
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Open the upload `id`, creating it if absent. See [`Upload`].
    pub fn upload(&self, id: &str) -> Result<Upload> {
        validate_upload_id(id)?;
        if let Some(existing) = self.cached_upload(id) {
            return Ok(existing);
        }
        // Open (and possibly re-hash) outside the registry lock, then publish unless another
        // thread won the race, in which case use theirs.
        let fresh = Upload::open(
            Arc::clone(&self.layout),
            Arc::downgrade(&self.uploads),
            id.to_owned(),
        )?;
        let mut map = lock(&self.uploads);
        match map.get(id) {
            Some(u) if !u.is_closed() => Ok(u.clone()),
            _ => {
                map.insert(id.to_owned(), fresh.clone());
                Ok(fresh)
            }
        }
    }

    pub fn upload_exists(&self, id: &str) -> Result<bool> {
        Ok(self.upload_size(id)?.is_some())
    }

    /// Bytes on disk for upload `id`, or `None` if there is no such upload.
    pub fn upload_size(&self, id: &str) -> Result<Option<u64>> {
        validate_upload_id(id)?;
        Ok(metadata_if_exists(&self.layout.upload_path(id))?.map(|m| m.len()))
    }

    /// Remove upload `id` (idempotent). Open [`Upload`] handles to it fail from then on.
    pub fn abort_upload(&self, id: &str) -> Result<()> {
        validate_upload_id(id)?;
        let cached = lock(&self.uploads).remove(id);
        if let Some(upload) = cached {
            upload.abort()?;
        }
        remove_if_exists(&self.layout.upload_path(id)).map(drop)
    }

    /// Remove uploads whose file was last modified at least `max_age` ago; returns how many.
    ///
    /// Also sweeps `tmp/` files (left by a crash during `put_bytes`) of the same age; those
    /// are not counted.
    pub fn purge_stale_uploads(&self, max_age: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let is_stale = |path: &Path| -> Result<bool> {
            let Some(meta) = metadata_if_exists(path)? else {
                return Ok(false);
            };
            let modified = meta.modified().ctx("stat", path)?;
            Ok(now.duration_since(modified).unwrap_or(Duration::ZERO) >= max_age)
        };
        let mut purged = 0;
        for id in read_dir_names(self.layout.uploads_dir())? {
            if validate_upload_id(&id).is_err() || !is_stale(&self.layout.upload_path(&id))? {
                continue;
            }
            self.abort_upload(&id)?;
            purged += 1;
        }
        for name in read_dir_names(self.layout.tmp_dir())? {
            let path = self.layout.tmp_dir().join(name);
            if is_stale(&path)? {
                remove_if_exists(&path)?;
            }
        }
        Ok(purged)
    }

    /// Close the file descriptors of idle cached uploads, keeping their hash state (see
    /// [`Upload::release`]): every upload unused for `idle` or longer, then the least recently
    /// used ones until at most `max_open` remain open. An upload in use right now is never
    /// touched (so more than `max_open` may stay open while that many are busy). Returns how
    /// many descriptors were closed.
    pub fn release_idle_uploads(&self, idle: Duration, max_open: usize) -> usize {
        let cached: Vec<Upload> = lock(&self.uploads).values().cloned().collect();
        let (mut open, mut released) = (0, 0);
        let mut recent: Vec<(Duration, Upload)> = Vec::new();
        for upload in cached {
            match upload.file_use() {
                FileUse::NotOpen => {}
                FileUse::Idle(for_) if for_ >= idle && upload.release() => released += 1,
                FileUse::Idle(for_) => {
                    open += 1;
                    recent.push((for_, upload));
                }
                FileUse::Busy => open += 1,
            }
        }
        if open > max_open {
            recent.sort_by(|a, b| b.0.cmp(&a.0)); // longest idle first
            for (_, upload) in recent {
                if open <= max_open {
                    break;
                }
                if upload.release() {
                    open -= 1;
                    released += 1;
                }
            }
        }
        released
    }

    /// Ids of the uploads on disk, each with the time since its file was last modified.
    pub fn list_uploads(&self) -> Result<Vec<(String, Duration)>> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        for id in read_dir_names(self.layout.uploads_dir())? {
            if validate_upload_id(&id).is_err() {
                continue;
            }
            let path = self.layout.upload_path(&id);
            if let Some(meta) = metadata_if_exists(&path)? {
                let modified = meta.modified().ctx("stat", &path)?;
                out.push((id, now.duration_since(modified).unwrap_or(Duration::ZERO)));
            }
        }
        Ok(out)
    }

    fn cached_upload(&self, id: &str) -> Option<Upload> {
        lock(&self.uploads)
            .get(id)
            .filter(|u| !u.is_closed())
            .cloned()
    }
}

fn hex_of(data: &[u8], algorithm: Algorithm) -> String {
    let mut d = Digester::new(algorithm);
    d.update(data);
    d.hexdigest()
}

/// Threads that fsync at once in [`BlobStore::put_many`].
const SYNC_THREADS: usize = 8;

/// Run `f` over `items` on up to [`SYNC_THREADS`] threads; the first error, if any.
fn in_parallel<T: Sync>(items: &[T], f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    if items.len() <= 1 {
        return items.iter().try_for_each(&f);
    }
    let per = items.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|part| scope.spawn(|| part.iter().try_for_each(&f)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("fsync thread panicked"))
            .collect::<Result<Vec<()>>>()
            .map(|_| ())
    })
}

/// Create `path` (must not exist), write `data`, fsync.
fn write_durably(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create_new(path).ctx("create", path)?;
    f.write_all(data).ctx("write", path)?;
    f.sync_all().ctx("fsync", path)
}

/// File names in `dir` (empty if `dir` does not exist); non-UTF-8 names are skipped.
fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("list", dir),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.ctx("list", dir)?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}
