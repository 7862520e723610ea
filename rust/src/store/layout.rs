//! Path arithmetic for the on-disk layout drawn in [`super`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::fsutil::fsync_dir;
use crate::digest::{Algorithm, Digest};
use crate::errors::{IoContext, Result};

#[derive(Debug)]
pub(crate) struct Layout {
    root: PathBuf,
    blobs: PathBuf,
    uploads: PathBuf,
    tmp: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: PathBuf) -> Self {
        Layout {
            blobs: root.join("blobs"),
            uploads: root.join("uploads"),
            tmp: root.join("tmp"),
            root,
        }
    }

    /// Create every fixed directory (idempotent) and make their entries durable.
    pub(crate) fn create(&self) -> Result<()> {
        for alg in Algorithm::OCI {
            let dir = self.alg_dir(alg);
            std::fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        }
        for dir in [&self.uploads, &self.tmp] {
            std::fs::create_dir_all(dir).ctx("create directory", dir)?;
        }
        for dir in [&self.blobs, &self.root] {
            fsync_dir(dir)?;
        }
        Ok(())
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn alg_dir(&self, alg: Algorithm) -> PathBuf {
        self.blobs.join(alg.name())
    }

    /// `<root>/blobs/<alg>/<first two hex>/<hex>`.
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.alg_dir(digest.algorithm()).join(&hex[..2]).join(hex)
    }

    pub(crate) fn uploads_dir(&self) -> &Path {
        &self.uploads
    }

    /// `<root>/uploads/<id>`; `id` must already be validated.
    pub(crate) fn upload_path(&self, id: &str) -> PathBuf {
        self.uploads.join(id)
    }

    pub(crate) fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// A fresh, unique path in `tmp/` (process id, per-process counter and clock).
    pub(crate) fn new_tmp_path(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.tmp
            .join(format!("put-{}-{n}-{nanos}", std::process::id()))
    }
}
