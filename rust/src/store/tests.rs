//! Behavioural tests of the store against a real temporary directory.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::digest::{digest_bytes, Algorithm};
use crate::errors::CoreError;

fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    (dir, store)
}

fn sha256(data: &[u8]) -> String {
    digest_bytes(data, Algorithm::Sha256)
}

fn sha512(data: &[u8]) -> String {
    digest_bytes(data, Algorithm::Sha512)
}

fn data(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[test]
fn layout_is_created_and_paths_follow_it() {
    let (dir, store) = store();
    for sub in ["blobs/sha256", "blobs/sha512", "uploads", "tmp"] {
        assert!(dir.path().join(sub).is_dir(), "{sub}");
    }
    let d = sha256(b"x");
    let hex = &d["sha256:".len()..];
    assert_eq!(
        store.path_for(&d).unwrap(),
        dir.path().join("blobs/sha256").join(&hex[..2]).join(hex)
    );
    assert!(matches!(
        store.path_for("sha256:nope"),
        Err(CoreError::InvalidDigest { .. })
    ));
}

#[test]
fn put_bytes_read_exists_size_delete() {
    let (_dir, store) = store();
    let body = b"{\"schemaVersion\":2}";
    let d = store.put_bytes(body, None).unwrap();
    assert_eq!(d, sha256(body));
    assert!(store.exists(&d).unwrap());
    assert_eq!(store.size(&d).unwrap(), Some(body.len() as u64));
    assert_eq!(store.read(&d, 0, None).unwrap(), body);
    // idempotent, and verifies against an explicit digest
    assert_eq!(store.put_bytes(body, Some(&d)).unwrap(), d);
    let d512 = store.put_bytes(body, Some(&sha512(body))).unwrap();
    assert_eq!(d512, sha512(body));
    assert_eq!(store.read(&d512, 0, None).unwrap(), body);
    assert_eq!(store.list_digests().unwrap(), {
        let mut v = vec![d.clone(), d512.clone()];
        v.sort();
        v
    });
    assert!(store.delete(&d).unwrap());
    assert!(!store.delete(&d).unwrap());
    assert!(!store.exists(&d).unwrap());
    assert_eq!(store.size(&d).unwrap(), None);
    assert!(matches!(
        store.read(&d, 0, None),
        Err(CoreError::BlobNotFound(_))
    ));
}

#[test]
fn put_bytes_mismatch_stores_nothing() {
    let (dir, store) = store();
    let wrong = sha256(b"other");
    let err = store.put_bytes(b"content", Some(&wrong)).unwrap_err();
    assert!(matches!(err, CoreError::DigestMismatch { .. }), "{err}");
    assert!(!store.exists(&wrong).unwrap());
    assert!(!store.exists(&sha256(b"content")).unwrap());
    assert!(files_under(dir.path()).is_empty());
    // existing blob + wrong bytes still fails verification
    let d = store.put_bytes(b"content", None).unwrap();
    assert!(matches!(
        store.put_bytes(b"tampered", Some(&d)),
        Err(CoreError::DigestMismatch { .. })
    ));
    assert!(matches!(
        store.put_bytes(b"x", Some(&format!("blake3:{}", "0".repeat(64)))),
        Err(CoreError::UnsupportedAlgorithm(_))
    ));
}

#[test]
fn put_many_stores_every_blob_once_and_a_mismatch_stores_nothing() {
    let (dir, store) = store();
    let blobs: Vec<Vec<u8>> = (1..40).map(|i| data(i * 1000)).collect();
    let existing = store.put_bytes(&blobs[0], None).unwrap();
    let wrong = sha256(b"other");
    let mut items: Vec<(&[u8], String)> = blobs.iter().map(|b| (&b[..], sha256(b))).collect();
    items.push((&blobs[1][..], sha256(&blobs[1]))); // the same blob twice in one batch
    items.push((&blobs[2][..], wrong.clone()));
    let refs: Vec<(&[u8], &str)> = items.iter().map(|(b, d)| (*b, d.as_str())).collect();
    let err = store.put_many(&refs).unwrap_err();
    assert!(matches!(err, CoreError::DigestMismatch { .. }), "{err}");
    assert_eq!(store.list_digests().unwrap(), vec![existing.clone()]);
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    let stored = store.put_many(&refs[..refs.len() - 1]).unwrap();
    assert_eq!(
        stored,
        refs[..refs.len() - 1]
            .iter()
            .map(|(_, d)| d.to_string())
            .collect::<Vec<_>>()
    );
    for blob in &blobs {
        assert_eq!(store.read(&sha256(blob), 0, None).unwrap(), *blob);
    }
    assert_eq!(store.list_digests().unwrap().len(), blobs.len());
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    assert_eq!(store.put_many(&[]).unwrap(), Vec::<String>::new());
}

#[test]
fn range_reads_clamp_like_slices() {
    let (_dir, store) = store();
    let body = data(10_000);
    let d = store.put_bytes(&body, None).unwrap();
    assert_eq!(store.read(&d, 0, None).unwrap(), body);
    assert_eq!(store.read(&d, 100, Some(50)).unwrap(), &body[100..150]);
    assert_eq!(store.read(&d, 9_990, None).unwrap(), &body[9_990..]);
    assert_eq!(store.read(&d, 9_990, Some(100)).unwrap(), &body[9_990..]);
    assert_eq!(store.read(&d, 0, Some(0)).unwrap(), b"");
    assert_eq!(store.read(&d, 10_000, None).unwrap(), b"");
    assert_eq!(store.read(&d, 50_000, Some(10)).unwrap(), b"");
    assert_eq!(store.open_range(&d, 5, Some(7)).unwrap().len(), 7);
}

#[test]
fn upload_write_commit() {
    let (dir, store) = store();
    let body = data(3 << 20 | 12345);
    let up = store.upload("u1").unwrap();
    assert_eq!(up.size(), 0);
    assert!(store.upload_exists("u1").unwrap());
    let mut expected_size = 0;
    for chunk in body.chunks(1 << 20) {
        expected_size += chunk.len() as u64;
        assert_eq!(up.write(chunk).unwrap(), expected_size);
    }
    assert_eq!(store.upload_size("u1").unwrap(), Some(body.len() as u64));
    let d = up.commit(&sha256(&body)).unwrap();
    assert_eq!(d, sha256(&body));
    assert_eq!(store.read(&d, 0, None).unwrap(), body);
    assert!(!store.upload_exists("u1").unwrap());
    assert!(up.is_closed());
    assert!(matches!(
        up.write(b"more"),
        Err(CoreError::UploadNotFound(_))
    ));
    assert!(matches!(up.commit(&d), Err(CoreError::UploadNotFound(_))));
    assert!(files_under(&dir.path().join("uploads")).is_empty());
    assert!(files_under(&dir.path().join("tmp")).is_empty());
}

#[test]
fn upload_commit_sha512() {
    let (_dir, store) = store();
    let body = data(1_500_000);
    let up = store.upload("u512").unwrap();
    up.write(&body[..1000]).unwrap();
    up.write(&body[1000..]).unwrap();
    // a wrong sha512 is rejected, the right one accepted
    assert!(matches!(
        up.commit(&sha512(b"nope")),
        Err(CoreError::DigestMismatch { .. })
    ));
    let d = up.commit(&sha512(&body)).unwrap();
    assert_eq!(d, sha512(&body));
    assert_eq!(store.read(&d, 0, None).unwrap(), body);
    assert_eq!(store.list_digests().unwrap(), vec![d]);
}

#[test]
fn empty_upload_commits_to_empty_blob() {
    let (_dir, store) = store();
    let up = store.upload("empty").unwrap();
    let d = up.commit(&sha256(b"")).unwrap();
    assert_eq!(store.size(&d).unwrap(), Some(0));
    assert_eq!(store.read(&d, 0, None).unwrap(), b"");
}

#[test]
fn mismatch_leaves_nothing_visible_and_upload_intact() {
    let (dir, store) = store();
    let up = store.upload("mm").unwrap();
    up.write(b"hello ").unwrap();
    let wrong = sha256(b"goodbye");
    let err = up.commit(&wrong).unwrap_err();
    assert!(matches!(err, CoreError::DigestMismatch { .. }), "{err}");
    assert!(!store.exists(&wrong).unwrap());
    assert!(!store.exists(&sha256(b"hello ")).unwrap());
    assert!(store.list_digests().unwrap().is_empty());
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    // the upload is untouched: the client can keep going and commit correctly
    assert_eq!(store.upload_size("mm").unwrap(), Some(6));
    up.write(b"world").unwrap();
    let d = up.commit(&sha256(b"hello world")).unwrap();
    assert_eq!(store.read(&d, 0, None).unwrap(), b"hello world");
}

#[test]
fn invalid_digests_on_commit() {
    let (_dir, store) = store();
    let up = store.upload("bad").unwrap();
    up.write(b"x").unwrap();
    assert!(matches!(
        up.commit("sha256:abc"),
        Err(CoreError::InvalidDigest { .. })
    ));
    assert!(matches!(
        up.commit(&format!("blake3:{}", "a".repeat(64))),
        Err(CoreError::UnsupportedAlgorithm(_))
    ));
    assert_eq!(up.size(), 1);
    assert!(store.upload_exists("bad").unwrap());
}

#[test]
fn dedup_discards_the_second_upload() {
    let (dir, store) = store();
    let body = data(100_000);
    let d = sha256(&body);
    let a = store.upload("a").unwrap();
    let b = store.upload("b").unwrap();
    a.write(&body).unwrap();
    b.write(&body).unwrap();
    assert_eq!(a.commit(&d).unwrap(), d);
    let ino_before = fs::metadata(store.path_for(&d).unwrap()).unwrap();
    assert_eq!(b.commit(&d).unwrap(), d);
    let ino_after = fs::metadata(store.path_for(&d).unwrap()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        ino_before.ino(),
        ino_after.ino(),
        "existing blob must not be replaced"
    );
    assert!(!store.upload_exists("b").unwrap());
    assert!(files_under(&dir.path().join("uploads")).is_empty());
    assert_eq!(store.list_digests().unwrap(), vec![d]);
}

#[test]
fn crash_before_commit_leaves_only_the_upload_file() {
    let dir = tempfile::tempdir().unwrap();
    let body = data(2 << 20);
    {
        let store = BlobStore::open(dir.path()).unwrap();
        let up = store.upload("crashy").unwrap();
        up.write(&body[..1 << 20]).unwrap();
        // simulated crash: the process goes away without commit or abort
    }
    // also a put_bytes that died after staging
    fs::write(dir.path().join("tmp/put-1-2-3"), b"partial").unwrap();

    let store = BlobStore::open(dir.path()).unwrap();
    assert!(store.list_digests().unwrap().is_empty());
    assert!(!store.exists(&sha256(&body)).unwrap());
    assert!(!store.exists(&sha256(&body[..1 << 20])).unwrap());
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    assert_eq!(store.upload_size("crashy").unwrap(), Some(1 << 20));
}

#[test]
fn reopen_after_restart_continues_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let body = data(5 << 20);
    {
        let store = BlobStore::open(dir.path()).unwrap();
        let up = store.upload("resume").unwrap();
        up.write(&body[..3_333_333]).unwrap();
    }
    let store = BlobStore::open(dir.path()).unwrap();
    let up = store.upload("resume").unwrap();
    assert_eq!(up.size(), 3_333_333);
    assert_eq!(up.write(&body[3_333_333..]).unwrap(), body.len() as u64);
    assert_eq!(up.commit(&sha256(&body)).unwrap(), sha256(&body));
    assert_eq!(store.read(&sha256(&body), 0, None).unwrap(), body);
}

#[test]
fn reopening_in_process_shares_state() {
    let (_dir, store) = store();
    let a = store.upload("same").unwrap();
    a.write(b"abc").unwrap();
    let b = store.upload("same").unwrap();
    assert_eq!(b.size(), 3);
    b.write(b"def").unwrap();
    assert_eq!(a.size(), 6);
    assert_eq!(a.commit(&sha256(b"abcdef")).unwrap(), sha256(b"abcdef"));
    assert!(b.is_closed());
    // a new upload with the same id starts afresh
    let c = store.upload("same").unwrap();
    assert_eq!(c.size(), 0);
    assert!(!c.is_closed());
}

#[test]
fn other_store_instance_writes_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let s1 = BlobStore::open(dir.path()).unwrap();
    let s2 = BlobStore::open(dir.path()).unwrap();
    let u1 = s1.upload("shared").unwrap();
    u1.write(b"one,").unwrap();
    let u2 = s2.upload("shared").unwrap();
    assert_eq!(u2.size(), 4);
    u2.write(b"two,").unwrap();
    // u1's hash state is stale; it must resync from disk before appending
    assert_eq!(u1.write(b"three").unwrap(), 13);
    assert_eq!(
        u1.commit(&sha256(b"one,two,three")).unwrap(),
        sha256(b"one,two,three")
    );
    assert!(matches!(u2.write(b"x"), Err(CoreError::UploadNotFound(_))));
}

#[test]
fn abort_is_idempotent_and_invalidates_handles() {
    let (_dir, store) = store();
    let up = store.upload("gone").unwrap();
    up.write(b"data").unwrap();
    store.abort_upload("gone").unwrap();
    store.abort_upload("gone").unwrap();
    assert!(!store.upload_exists("gone").unwrap());
    assert_eq!(store.upload_size("gone").unwrap(), None);
    assert!(matches!(up.write(b"x"), Err(CoreError::UploadNotFound(_))));
    assert!(matches!(
        up.commit(&sha256(b"data")),
        Err(CoreError::UploadNotFound(_))
    ));
    up.abort().unwrap();

    let up = store.upload("gone2").unwrap();
    up.abort().unwrap();
    up.abort().unwrap();
    assert!(!store.upload_exists("gone2").unwrap());
    store.abort_upload("never-existed").unwrap();

    // a stale handle (committed) must not remove a newer upload that reuses the id
    let old = store.upload("reused").unwrap();
    old.commit(&sha256(b"")).unwrap();
    let new = store.upload("reused").unwrap();
    new.write(b"new").unwrap();
    old.abort().unwrap();
    assert_eq!(store.upload_size("reused").unwrap(), Some(3));
}

#[test]
fn upload_file_removed_behind_our_back() {
    let (dir, store) = store();
    let up = store.upload("ext").unwrap();
    up.write(b"abc").unwrap();
    fs::remove_file(dir.path().join("uploads/ext")).unwrap();
    assert!(matches!(up.write(b"x"), Err(CoreError::UploadNotFound(_))));
    assert!(store.upload("ext").unwrap().size() == 0);
}

#[test]
fn invalid_upload_ids() {
    let (_dir, store) = store();
    for bad in ["", "../escape", "a/b", "white space", &"x".repeat(129)] {
        assert!(
            matches!(store.upload(bad), Err(CoreError::InvalidUploadId(_))),
            "{bad:?}"
        );
        assert!(matches!(
            store.upload_exists(bad),
            Err(CoreError::InvalidUploadId(_))
        ));
        assert!(matches!(
            store.upload_size(bad),
            Err(CoreError::InvalidUploadId(_))
        ));
        assert!(matches!(
            store.abort_upload(bad),
            Err(CoreError::InvalidUploadId(_))
        ));
    }
}

#[test]
fn invalid_digests_everywhere() {
    let (_dir, store) = store();
    for bad in [
        "",
        "sha256",
        "sha256:xyz",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ] {
        assert!(store.exists(bad).is_err(), "{bad}");
        assert!(store.size(bad).is_err());
        assert!(store.read(bad, 0, None).is_err());
        assert!(store.delete(bad).is_err());
        assert!(store.put_bytes(b"", Some(bad)).is_err());
    }
}

#[test]
fn list_digests_ignores_strays() {
    let (dir, store) = store();
    let d = store.put_bytes(b"real", None).unwrap();
    let blobs = dir.path().join("blobs/sha256");
    fs::create_dir_all(blobs.join("zz")).unwrap();
    fs::write(blobs.join("zz/not-a-digest"), b"").unwrap();
    // right shape, wrong prefix directory
    let hex = &sha256(b"elsewhere")["sha256:".len()..];
    fs::write(
        blobs
            .join(&d["sha256:".len().."sha256:".len() + 2])
            .join(hex),
        b"",
    )
    .unwrap();
    assert_eq!(store.list_digests().unwrap(), vec![d]);
}

#[test]
fn purge_stale_uploads_by_age() {
    let (dir, store) = store();
    let old = store.upload("old").unwrap();
    old.write(b"old bytes").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let fresh = store.upload("fresh").unwrap();
    fresh.write(b"fresh bytes").unwrap();
    fs::write(dir.path().join("tmp/put-stray"), b"partial").unwrap();

    assert_eq!(
        store
            .purge_stale_uploads(Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert!(store.upload_exists("old").unwrap());

    // back-date "old" and the tmp stray by two hours
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for p in ["uploads/old", "tmp/put-stray"] {
        let f = fs::File::options()
            .write(true)
            .open(dir.path().join(p))
            .unwrap();
        f.set_modified(two_hours_ago).unwrap();
    }
    assert_eq!(
        store
            .purge_stale_uploads(Duration::from_secs(3600))
            .unwrap(),
        1
    );
    assert!(!store.upload_exists("old").unwrap());
    assert!(store.upload_exists("fresh").unwrap());
    assert!(!dir.path().join("tmp/put-stray").exists());
    assert!(matches!(old.write(b"x"), Err(CoreError::UploadNotFound(_))));

    assert_eq!(store.purge_stale_uploads(Duration::ZERO).unwrap(), 1);
    assert!(!store.upload_exists("fresh").unwrap());
}

#[test]
fn uploads_are_usable_from_many_threads() {
    let (_dir, store) = store();
    let store = std::sync::Arc::new(store);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let store = std::sync::Arc::clone(&store);
            std::thread::spawn(move || {
                let body = data(200_000 + i * 7);
                let up = store.upload(&format!("t{i}")).unwrap();
                for chunk in body.chunks(65_536) {
                    up.write(chunk).unwrap();
                }
                up.commit(&sha256(&body)).unwrap()
            })
        })
        .collect();
    let mut digests: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    digests.sort();
    assert_eq!(store.list_digests().unwrap(), digests);
}

#[test]
fn concurrent_writers_to_one_upload_serialize() {
    let (dir, store) = store();
    let up = store.upload("shared").unwrap();
    std::thread::scope(|s| {
        for i in 0..4u8 {
            let up = up.clone();
            s.spawn(move || {
                for _ in 0..100 {
                    up.write(&[i; 1000]).unwrap();
                }
            });
        }
    });
    assert_eq!(up.size(), 400_000);
    let on_disk = fs::read(dir.path().join("uploads/shared")).unwrap();
    assert_eq!(up.commit(&sha256(&on_disk)).unwrap(), sha256(&on_disk));
}

// --- chunks and copy_from (delta transfer) ---------------------------------------------------

use crate::delta::{chunk_bytes, ChunkParams};

fn commit_bytes(store: &BlobStore, bytes: &[u8]) -> String {
    store.put_bytes(bytes, None).unwrap()
}

#[test]
fn chunks_of_a_stored_blob_match_in_memory_chunking() {
    let (_dir, store) = store();
    // larger than the 1 MiB read buffer, so cuts straddle reads
    let content = data(3 << 20);
    let digest = commit_bytes(&store, &content);
    for params in [
        ChunkParams::default(),
        ChunkParams::new(512, 2048, 8192).unwrap(),
    ] {
        assert_eq!(
            store.chunks(&digest, params).unwrap(),
            chunk_bytes(&content, params)
        );
    }
    let empty = commit_bytes(&store, b"");
    assert!(store
        .chunks(&empty, ChunkParams::default())
        .unwrap()
        .is_empty());
    let missing = sha256(b"nope");
    assert!(matches!(
        store.chunks(&missing, ChunkParams::default()),
        Err(CoreError::BlobNotFound(_))
    ));
}

#[test]
fn copy_from_write_commit_gives_the_right_digest() {
    let (_dir, store) = store();
    let a = data(700_000);
    let b: Vec<u8> = data(900_000).into_iter().rev().collect();
    let da = commit_bytes(&store, &a);
    let db = commit_bytes(&store, &b);

    // assemble: a[100..200_100] + "new" + b[..] (large, pipelined) + a[..0] (empty) + a tail
    let mut expected = a[100..200_100].to_vec();
    expected.extend_from_slice(b"new bytes");
    expected.extend_from_slice(&b);
    expected.extend_from_slice(&a[699_990..]);

    let up = store.upload("assemble").unwrap();
    assert_eq!(up.copy_from(&da, 100, 200_000).unwrap(), 200_000);
    up.write(b"new bytes").unwrap();
    up.copy_from(&db, 0, b.len() as u64).unwrap();
    up.copy_from(&da, 0, 0).unwrap();
    assert_eq!(
        up.copy_from(&da, 699_990, 10).unwrap(),
        expected.len() as u64
    );
    assert_eq!(up.size(), expected.len() as u64);
    let digest = sha256(&expected);
    assert_eq!(up.commit(&digest).unwrap(), digest);
    assert_eq!(store.read(&digest, 0, None).unwrap(), expected);
}

#[test]
fn copy_from_survives_reopen_and_sha512_commit() {
    let (dir, store) = store();
    let a = data(300_000);
    let da = commit_bytes(&store, &a);
    store
        .upload("u")
        .unwrap()
        .copy_from(&da, 0, 150_000)
        .unwrap();
    // a fresh store instance rebuilds the hash from disk and keeps appending
    let again = BlobStore::open(dir.path()).unwrap();
    let up = again.upload("u").unwrap();
    assert_eq!(up.size(), 150_000);
    up.copy_from(&da, 150_000, 150_000).unwrap();
    assert_eq!(up.commit(&sha512(&a)).unwrap(), sha512(&a));
}

#[test]
fn copy_from_errors_leave_the_upload_unchanged() {
    let (_dir, store) = store();
    let a = data(1000);
    let da = commit_bytes(&store, &a);
    let up = store.upload("u").unwrap();
    up.write(b"head").unwrap();
    for (offset, length) in [(0, 1001), (1000, 1), (1001, 0), (999, 2), (u64::MAX, 2)] {
        assert!(
            matches!(
                up.copy_from(&da, offset, length),
                Err(CoreError::OutOfRange { size: 1000, .. })
            ),
            "{offset}+{length}"
        );
    }
    assert_eq!(up.copy_from(&da, 1000, 0).unwrap(), 4);
    assert!(matches!(
        up.copy_from(&sha256(b"missing"), 0, 1),
        Err(CoreError::BlobNotFound(_))
    ));
    assert!(matches!(
        up.copy_from("sha256:zz", 0, 1),
        Err(CoreError::InvalidDigest { .. })
    ));
    assert_eq!(up.size(), 4);
    assert_eq!(up.commit(&sha256(b"head")).unwrap(), sha256(b"head"));
    // and on a closed upload
    assert!(matches!(
        up.copy_from(&da, 0, 1),
        Err(CoreError::UploadNotFound(_))
    ));
}

#[test]
fn copy_many_equals_copy_from_in_order() {
    let (_dir, store) = store();
    let a = data(900_000);
    let b: Vec<u8> = data(700_000).into_iter().rev().collect();
    let (da, db) = (commit_bytes(&store, &a), commit_bytes(&store, &b));
    // many small ranges (crossing the 256 KiB gather pieces), empty ones, a large one, and
    // alternating sources
    let mut ranges: Vec<(&str, u64, u64)> = Vec::new();
    let mut expected = b"head".to_vec();
    for i in 0..40u64 {
        let (d, src) = if i % 3 == 0 { (&db, &b) } else { (&da, &a) };
        let (off, len) = ((i * 17_011) % 600_000, 1_000 + (i * 7_919) % 60_000);
        ranges.push((d.as_str(), off, len));
        expected.extend_from_slice(&src[off as usize..(off + len) as usize]);
    }
    ranges.push((da.as_str(), 5, 0));
    ranges.push((db.as_str(), 0, b.len() as u64));
    expected.extend_from_slice(&b);
    let up = store.upload("many").unwrap();
    up.write(b"head").unwrap();
    assert_eq!(up.copy_many(&ranges).unwrap(), expected.len() as u64);
    assert_eq!(up.copy_many(&[]).unwrap(), expected.len() as u64);
    let digest = sha256(&expected);
    assert_eq!(up.commit(&digest).unwrap(), digest);
    assert_eq!(store.read(&digest, 0, None).unwrap(), expected);
}

#[test]
fn copy_many_is_all_or_nothing() {
    let (_dir, store) = store();
    let a = data(300_000);
    let da = commit_bytes(&store, &a);
    let up = store.upload("u").unwrap();
    up.write(b"head").unwrap();
    let missing = sha256(b"missing");
    let bad: [&[(&str, u64, u64)]; 3] = [
        &[(da.as_str(), 0, 100_000), (da.as_str(), 299_999, 2)],
        &[(da.as_str(), 0, 100_000), (missing.as_str(), 0, 1)],
        &[(da.as_str(), 0, 100_000), ("sha256:zz", 0, 1)],
    ];
    for ranges in bad {
        assert!(up.copy_many(ranges).is_err());
        assert_eq!(up.size(), 4);
    }
    // still usable, and the hash state was not disturbed
    up.copy_many(&[(da.as_str(), 10, 20)]).unwrap();
    let mut expected = b"head".to_vec();
    expected.extend_from_slice(&a[10..30]);
    assert_eq!(up.commit(&sha256(&expected)).unwrap(), sha256(&expected));
}

/// Descriptors this process holds on files under `dir`.
fn open_files_under(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

#[test]
fn released_upload_reopens_with_its_hash_state() {
    let (dir, store) = store();
    let uploads = dir.path().join("uploads");
    let up = store.upload("idle").unwrap();
    up.write(b"first half, ").unwrap();
    assert_eq!(open_files_under(&uploads), 1);
    assert!(up.release());
    assert!(!up.release(), "nothing left to release");
    assert_eq!(open_files_under(&uploads), 0);
    // the store hands out the same (released) upload; writing reopens it lazily
    let again = store.upload("idle").unwrap();
    assert_eq!(again.size(), 12);
    again.write(b"second half").unwrap();
    assert_eq!(open_files_under(&uploads), 1);
    let body = b"first half, second half";
    assert_eq!(up.commit(&sha256(body)).unwrap(), sha256(body));
    assert_eq!(store.read(&sha256(body), 0, None).unwrap(), body);
    assert_eq!(open_files_under(&uploads), 0);
}

#[test]
fn released_upload_notices_a_replaced_or_removed_file() {
    let (dir, store) = store();
    let up = store.upload("swapped").unwrap();
    up.write(b"old content").unwrap();
    assert!(up.release());
    // another file now sits at the path: the hash is rebuilt from it, not kept
    let path = dir.path().join("uploads/swapped");
    fs::remove_file(&path).unwrap();
    fs::write(&path, b"new").unwrap();
    up.write(b"!").unwrap();
    assert_eq!(up.size(), 4);
    assert_eq!(up.commit(&sha256(b"new!")).unwrap(), sha256(b"new!"));

    let gone = store.upload("gone").unwrap();
    gone.write(b"abc").unwrap();
    assert!(gone.release());
    fs::remove_file(dir.path().join("uploads/gone")).unwrap();
    assert!(matches!(
        gone.write(b"x"),
        Err(CoreError::UploadNotFound(_))
    ));

    // aborting a released upload removes it like any other
    let dropped = store.upload("dropped").unwrap();
    dropped.write(b"abc").unwrap();
    assert!(dropped.release());
    store.abort_upload("dropped").unwrap();
    assert!(!store.upload_exists("dropped").unwrap());
    assert!(matches!(
        dropped.write(b"x"),
        Err(CoreError::UploadNotFound(_))
    ));
}

#[test]
fn release_idle_uploads_by_age_then_least_recently_used() {
    let (dir, store) = store();
    let uploads = dir.path().join("uploads");
    let ids: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    for id in &ids {
        store.upload(id).unwrap().write(id.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(5)); // distinct last-use times
    }
    assert_eq!(open_files_under(&uploads), 6);
    // nothing idle for an hour: only the cap applies, the oldest go first
    assert_eq!(store.release_idle_uploads(Duration::from_secs(3600), 4), 2);
    assert_eq!(open_files_under(&uploads), 4);
    assert!(
        !store.upload("u0").unwrap().release(),
        "u0 was released first"
    );
    assert!(!store.upload("u1").unwrap().release());
    // everything idle for at least zero seconds
    assert_eq!(store.release_idle_uploads(Duration::ZERO, 100), 4);
    assert_eq!(open_files_under(&uploads), 0);
    // every upload still commits its full content
    for id in &ids {
        let up = store.upload(id).unwrap();
        up.write(b"+").unwrap();
        let body = format!("{id}+");
        assert_eq!(
            up.commit(&sha256(body.as_bytes())).unwrap(),
            sha256(body.as_bytes())
        );
    }
    assert_eq!(store.list_uploads().unwrap(), vec![]);
}

#[test]
fn list_uploads_names_ids_with_age() {
    let (dir, store) = store();
    store.upload("a").unwrap().write(b"x").unwrap();
    fs::write(dir.path().join("uploads/not valid!"), b"").unwrap();
    let listed = store.list_uploads().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "a");
    assert!(listed[0].1 < Duration::from_secs(60));
}
