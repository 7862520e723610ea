//! Small filesystem helpers: durable directories, atomic publication, whole-file hashing.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::layout::Layout;
use crate::digest::{Algorithm, Digest, Digester};
use crate::errors::{CoreError, IoContext, Result};

/// Chunk size for re-reading files to hash them.
const HASH_CHUNK: usize = 1 << 20;

/// fsync a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

/// Hash a whole file from offset 0 to EOF with positional reads (the file's cursor is left
/// alone, so this is safe on append-mode handles). Returns the digester and the bytes read.
pub(crate) fn hash_file(file: &File, algorithm: Algorithm, path: &Path) -> Result<(Digester, u64)> {
    let mut digester = Digester::new(algorithm);
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut offset = 0u64;
    loop {
        let n = match file.read_at(&mut buf, offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).ctx("read", path),
        };
        digester.update(&buf[..n]);
        offset += n as u64;
    }
    Ok((digester, offset))
}

/// Atomically move the fully written and fsynced file `src` to the blob path of `digest`,
/// then fsync the blob's directory. Creates (durably) the `<first two hex>` directory if needed.
pub(crate) fn publish(layout: &Layout, src: &Path, digest: &Digest) -> Result<()> {
    let dst = layout.blob_path(digest);
    let dir = dst.parent().expect("blob paths have a parent");
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(&layout.alg_dir(digest.algorithm()))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // someone removed blobs/<alg>: recreate the whole chain
            fs::create_dir_all(dir).ctx("create directory", dir)?;
            fsync_dir(&layout.alg_dir(digest.algorithm()))?;
            fsync_dir(
                layout
                    .alg_dir(digest.algorithm())
                    .parent()
                    .expect("has parent"),
            )?;
        }
        Err(e) => return Err(e).ctx("create directory", dir),
    }
    fs::rename(src, &dst).ctx("rename into", &dst)?;
    fsync_dir(dir)
}

/// Open the committed blob `digest`: its file, path and size.
/// [`CoreError::BlobNotFound`] if it is not in the store.
pub(crate) fn open_blob(layout: &Layout, digest: &Digest) -> Result<(File, PathBuf, u64)> {
    let path = layout.blob_path(digest);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CoreError::BlobNotFound(digest.to_string()))
        }
        Err(e) => return Err(e).ctx("open", &path),
    };
    let size = file.metadata().ctx("stat", &path)?.len();
    Ok((file, path, size))
}

/// [`CoreError::OutOfRange`] unless `offset + length <= size`.
pub(crate) fn check_range(digest: &Digest, offset: u64, length: u64, size: u64) -> Result<()> {
    if offset.checked_add(length).is_some_and(|end| end <= size) {
        Ok(())
    } else {
        Err(CoreError::OutOfRange {
            digest: digest.to_string(),
            offset,
            length,
            size,
        })
    }
}

/// `fs::remove_file`, treating "already gone" as success. Returns whether it removed anything.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).ctx("remove", path),
    }
}

/// `fs::metadata`, with "does not exist" as `None`.
pub(crate) fn metadata_if_exists(path: &Path) -> Result<Option<fs::Metadata>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx("stat", path),
    }
}
