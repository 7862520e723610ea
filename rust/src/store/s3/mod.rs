//! The blob store on S3-compatible object storage (see `docs/storage.md`).
//!
//! Key layout under `s3://<bucket>/<prefix>`:
//! ```text
//! <prefix>/blobs/<alg>/<first two hex>/<hex>   committed blobs: verified, immutable
//! <prefix>/uploads/<upload_id>/state           an upload session (see `state.rs`)
//! <prefix>/uploads/<upload_id>/data            its multipart upload, assembled only at commit
//! ```
//! A key under `blobs/` is only ever written with content already verified against its
//! digest: small content by one PUT (atomic in S3), an assembled multipart upload by a
//! server-side copy once its hash matched. Nothing is kept in object metadata and nothing
//! about an upload lives only in one process: any replica can continue it.
//!
//! Calls block the calling thread on a process-wide tokio runtime ([`runtime`]); Python runs
//! them in worker threads with the GIL released.

mod state;
mod upload;

use std::io::{self, Read};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig};

pub use upload::S3Upload;

use super::upload::validate_upload_id;
use crate::delta::{chunk_reader, Chunk, ChunkParams, FrameEncoder};
use crate::digest::{Algorithm, Digest, Digester};
use crate::errors::{CoreError, Result};
use state::{UploadState, SIZE_PREFIX};

/// Default size of every multipart part but the last (S3's minimum is 5 MiB).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// S3 refuses parts below 5 MiB (except the last); a smaller setting is only for tests
/// against servers that allow it.
pub const MIN_PART_SIZE: usize = 1 << 10;
/// Bytes fetched per ranged GET when streaming a blob through this process.
const READ_PIECE: u64 = 8 << 20;

/// Where and how to reach the store; see [`S3BlobStore::open`].
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000`; `None`: AWS S3 for `region`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Plain http to a non-loopback endpoint (loopback is always allowed).
    pub allow_http: bool,
    /// `None`: [`DEFAULT_PART_SIZE`].
    pub part_size: Option<usize>,
}

/// Content-addressed blob store in one bucket (and an optional key prefix).
#[derive(Debug)]
pub struct S3BlobStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    s3: AmazonS3,
    /// For ranged GETs (see [`Shared::get_range`]).
    http: reqwest::Client,
    bucket: String,
    /// `""` or `"a/b/"`: prepended to every key.
    prefix: String,
    part_size: usize,
}

/// The one tokio runtime every S3 call runs on: two workers, enough for a blocking client
/// (the concurrency comes from the Python worker threads that call in).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("connreg-s3")
            .enable_all()
            .build()
            .expect("a tokio runtime can be built")
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// An S3 failure as the crate's I/O error: the operation and key, and the store's message
/// (request errors name the URL, never credentials).
pub(crate) fn s3_error(what: &str, key: &Key, err: object_store::Error) -> CoreError {
    CoreError::Io {
        context: format!("S3 {what} {key}"),
        source: io::Error::other(err),
    }
}

fn is_not_found(err: &object_store::Error) -> bool {
    matches!(err, object_store::Error::NotFound { .. })
}

impl S3BlobStore {
    /// Open the store at `url` (`s3://BUCKET` or `s3://BUCKET/PREFIX`).
    ///
    /// Credentials come from `options`, else from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
    /// and `AWS_SESSION_TOKEN`; the region from `AWS_REGION` / `AWS_DEFAULT_REGION` (default
    /// `us-east-1`). Static credentials are required: the instance-metadata fallback is never
    /// used. Requests are path-style; plain http only to a loopback endpoint unless
    /// `allow_http`. Nothing is sent to the store here.
    pub fn open(url: &str, options: S3Options) -> Result<Self> {
        let (bucket, prefix) = parse_url(url)?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let access = options.access_key_id.or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret = options
            .secret_access_key
            .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let (Some(access), Some(secret)) = (access, secret) else {
            return Err(CoreError::InvalidArgument(
                "S3 blob store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            ));
        };
        let region = options
            .region
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let part_size = options.part_size.unwrap_or(DEFAULT_PART_SIZE);
        if part_size < MIN_PART_SIZE {
            return Err(CoreError::InvalidArgument(format!(
                "S3 part size {part_size} is below {MIN_PART_SIZE} bytes"
            )));
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(region)
            .with_access_key_id(access)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(false)
            // 5xx (and 429/408) are retried with exponential backoff: some S3-compatible
            // servers answer 500 on a rare race that a second attempt does not meet.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 8,
                retry_timeout: Duration::from_secs(60),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300)),
            );
        if let Some(token) = options.session_token.or_else(|| env("AWS_SESSION_TOKEN")) {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &options.endpoint {
            let insecure = endpoint.starts_with("http://");
            if insecure && !options.allow_http && !is_loopback_url(endpoint) {
                return Err(CoreError::InvalidArgument(format!(
                    "S3 endpoint {endpoint}: plain http is only allowed to a loopback address"
                )));
            }
            builder = builder.with_endpoint(endpoint).with_allow_http(insecure);
        }
        let s3 = builder
            .build()
            .map_err(|e| CoreError::InvalidArgument(format!("S3 blob store {url}: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| CoreError::InvalidArgument(format!("S3 HTTP client: {e}")))?;
        Ok(S3BlobStore {
            shared: Arc::new(Shared {
                s3,
                http,
                bucket,
                prefix,
                part_size,
            }),
        })
    }

    /// `s3://bucket/prefix`, as given (normalised).
    pub fn url(&self) -> String {
        let sh = &self.shared;
        format!("s3://{}/{}", sh.bucket, sh.prefix.trim_end_matches('/'))
            .trim_end_matches('/')
            .to_owned()
    }

    pub fn part_size(&self) -> usize {
        self.shared.part_size
    }

    /// The key of the blob with `digest` (whether or not it exists).
    pub fn key_for(&self, digest: &str) -> Result<String> {
        Ok(self.shared.blob_key(&Digest::parse(digest)?).to_string())
    }

    pub fn exists(&self, digest: &str) -> Result<bool> {
        Ok(self.size(digest)?.is_some())
    }

    pub fn size(&self, digest: &str) -> Result<Option<u64>> {
        Ok(self.stat(digest)?.map(|(size, _)| size))
    }

    /// Size and last-modified time of the blob, or `None` if it is not in the store.
    pub fn stat(&self, digest: &str) -> Result<Option<(u64, SystemTime)>> {
        let key = self.shared.blob_key(&Digest::parse(digest)?);
        self.shared.head(&key)
    }

    /// Store small, complete content and return its digest; verified before anything is sent
    /// (one PUT: S3 makes an object visible whole or not at all).
    pub fn put_bytes(&self, data: &[u8], expected: Option<&str>) -> Result<String> {
        let digest = match expected {
            Some(e) => {
                let expected = Digest::parse(e)?;
                let mut d = Digester::new(expected.algorithm());
                d.update(data);
                let actual = d.hexdigest();
                if actual != expected.hex() {
                    return Err(CoreError::DigestMismatch {
                        expected: expected.to_string(),
                        actual: format!("{}:{actual}", expected.algorithm()),
                    });
                }
                expected
            }
            None => {
                let mut d = Digester::new(Algorithm::Sha256);
                d.update(data);
                Digest::from_parts(Algorithm::Sha256, d.hexdigest())
            }
        };
        let key = self.shared.blob_key(&digest);
        if self.shared.head(&key)?.is_none() {
            self.shared.put(&key, Bytes::copy_from_slice(data))?;
        }
        Ok(digest.to_string())
    }

    /// The blob, or `length` bytes of it from `offset`, clamped like a slice.
    pub fn read(&self, digest: &str, offset: u64, length: Option<u64>) -> Result<Vec<u8>> {
        let key = self.shared.blob_key(&Digest::parse(digest)?);
        if length == Some(0) {
            return match self.shared.head(&key)? {
                Some(_) => Ok(Vec::new()),
                None => Err(CoreError::BlobNotFound(digest.to_owned())),
            };
        }
        let end = length.map(|n| offset.saturating_add(n));
        match self.shared.get_range(&key, offset, end)? {
            Ranged::Data(bytes) => Ok(bytes.to_vec()),
            Ranged::NotFound => Err(CoreError::BlobNotFound(digest.to_owned())),
            // A range starting at or past the end is refused (416); a slice gives b"".
            Ranged::Unsatisfiable => match self.shared.head(&key)? {
                None => Err(CoreError::BlobNotFound(digest.to_owned())),
                Some(_) => Ok(Vec::new()),
            },
        }
    }

    /// Exactly `length` bytes from `offset`; [`CoreError::OutOfRange`] past the end.
    pub fn read_exact(&self, digest: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let parsed = Digest::parse(digest)?;
        let data = self.read(digest, offset, Some(length))?;
        if (data.len() as u64) < length {
            return Err(CoreError::OutOfRange {
                digest: parsed.to_string(),
                offset,
                length,
                size: self.size(digest)?.unwrap_or(0),
            });
        }
        Ok(data)
    }

    /// The blob's content-defined chunks, streamed (constant memory).
    pub fn chunks(&self, digest: &str, params: ChunkParams) -> Result<Vec<Chunk>> {
        let key = self.shared.blob_key(&Digest::parse(digest)?);
        let stream = match block_on(self.shared.s3.get(&key)) {
            Ok(got) => got.into_stream(),
            Err(e) if is_not_found(&e) => return Err(CoreError::BlobNotFound(digest.to_owned())),
            Err(e) => return Err(s3_error("GET", &key, e)),
        };
        chunk_reader(StreamReader::new(stream), params).map_err(|e| CoreError::Io {
            context: format!("S3 GET {key}"),
            source: e,
        })
    }

    /// A chunk batch frame of `(digest, offset, length)` ranges (see
    /// [`crate::delta::encode_chunks`]), each range read with one ranged GET.
    pub fn encode_chunks(&self, items: &[(String, u64, u64)], level: i32) -> Result<Vec<u8>> {
        let mut enc = FrameEncoder::new(level)?;
        for (digest, offset, length) in items {
            if u32::try_from(*length).is_err() {
                return Err(CoreError::InvalidArgument(format!(
                    "chunk of {length} bytes does not fit a frame entry (u32 length)"
                )));
            }
            enc.push(&self.read_exact(digest, *offset, *length)?)?;
        }
        Ok(enc.finish())
    }

    /// Remove a blob; whether it existed.
    pub fn delete(&self, digest: &str) -> Result<bool> {
        let key = self.shared.blob_key(&Digest::parse(digest)?);
        if self.shared.head(&key)?.is_none() {
            return Ok(false);
        }
        self.shared.delete(&key)?;
        Ok(true)
    }

    /// Every committed blob's digest, sorted; keys that are not blob keys are ignored.
    pub fn list_digests(&self) -> Result<Vec<String>> {
        Ok(self.list_blobs()?.into_iter().map(|(d, _, _)| d).collect())
    }

    /// Every committed blob with its size and last-modified time, sorted by digest (one
    /// listing, for garbage collection).
    pub fn list_blobs(&self) -> Result<Vec<(String, u64, SystemTime)>> {
        let base = format!("{}blobs/", self.shared.prefix);
        let mut out = Vec::new();
        for meta in self.shared.list(&base)? {
            let key = meta.location.to_string();
            let Some(rest) = key.strip_prefix(&base) else {
                continue;
            };
            let mut parts = rest.split('/');
            let (Some(alg), Some(two), Some(hex), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !hex.starts_with(two) || two.len() != 2 {
                continue;
            }
            if let Ok(d) = Digest::parse(&format!("{alg}:{hex}")) {
                out.push((d.to_string(), meta.size, meta.last_modified.into()));
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Open the upload `id`, creating it (an empty state object) if absent. The handle
    /// starts from the state stored in the bucket, whichever replica wrote it.
    pub fn upload(&self, id: &str) -> Result<S3Upload> {
        validate_upload_id(id)?;
        let key = self.shared.state_key(id);
        let state = match self.shared.load_state(id)? {
            Some(state) => state,
            None => {
                let fresh = UploadState::empty();
                self.shared.put(&key, Bytes::from(fresh.encode()))?;
                fresh
            }
        };
        Ok(S3Upload::new(Arc::clone(&self.shared), id.to_owned(), state))
    }

    pub fn upload_exists(&self, id: &str) -> Result<bool> {
        validate_upload_id(id)?;
        Ok(self.shared.head(&self.shared.state_key(id))?.is_some())
    }

    /// Bytes stored so far for upload `id` (as last flushed), or `None` if there is none.
    pub fn upload_size(&self, id: &str) -> Result<Option<u64>> {
        validate_upload_id(id)?;
        let key = self.shared.state_key(id);
        match self.shared.get_range(&key, 0, Some(SIZE_PREFIX))? {
            Ranged::Data(prefix) => UploadState::decode_size(&prefix)
                .map(Some)
                .ok_or_else(|| corrupt_state(&key)),
            Ranged::NotFound => Ok(None),
            Ranged::Unsatisfiable => Err(corrupt_state(&key)),
        }
    }

    /// Remove upload `id`: its multipart upload, its state and any assembled data
    /// (idempotent).
    pub fn abort_upload(&self, id: &str) -> Result<()> {
        validate_upload_id(id)?;
        self.shared.remove_upload(id)
    }

    /// Ids of the uploads in the bucket, each with the time since its state was last written.
    pub fn list_uploads(&self) -> Result<Vec<(String, Duration)>> {
        let base = format!("{}uploads/", self.shared.prefix);
        let now = SystemTime::now();
        let mut out = Vec::new();
        for meta in self.shared.list(&base)? {
            let key = meta.location.to_string();
            let Some(id) = key
                .strip_prefix(&base)
                .and_then(|rest| rest.strip_suffix("/state"))
            else {
                continue;
            };
            if validate_upload_id(id).is_err() {
                continue;
            }
            let modified: SystemTime = meta.last_modified.into();
            out.push((
                id.to_owned(),
                now.duration_since(modified).unwrap_or(Duration::ZERO),
            ));
        }
        Ok(out)
    }

    /// Remove uploads whose state was last written at least `max_age` ago; how many.
    /// (A multipart upload whose state was never written, after a crash, is not seen here:
    /// docs/storage.md recommends the bucket rule that aborts incomplete multipart uploads.)
    pub fn purge_stale_uploads(&self, max_age: Duration) -> Result<usize> {
        let mut purged = 0;
        for (id, age) in self.list_uploads()? {
            if age >= max_age {
                self.shared.remove_upload(&id)?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// A URL that GETs the blob without credentials for `expires_in` (presigned, SigV4).
    /// Only meaningful to clients that can reach the store's endpoint.
    pub fn presigned_url(&self, digest: &str, expires_in: Duration) -> Result<String> {
        let key = self.shared.blob_key(&Digest::parse(digest)?);
        block_on(self.shared.s3.signed_url(http::Method::GET, &key, expires_in))
            .map(|url| url.to_string())
            .map_err(|e| s3_error("presign", &key, e))
    }
}

/// What a ranged GET found.
pub(crate) enum Ranged {
    Data(Bytes),
    NotFound,
    /// The range starts at or past the end (416).
    Unsatisfiable,
}

/// Attempts of one ranged GET, and the first back-off (doubled each time, at most 5 s): the
/// same policy object_store applies to everything else.
const RANGE_ATTEMPTS: u32 = 8;
const RANGE_BACKOFF: Duration = Duration::from_millis(50);

fn corrupt_state(key: &Key) -> CoreError {
    CoreError::Io {
        context: format!("S3 GET {key}"),
        source: io::Error::new(io::ErrorKind::InvalidData, "not an upload state object"),
    }
}

impl Shared {
    fn blob_key(&self, digest: &Digest) -> Key {
        let hex = digest.hex();
        Key::from(format!(
            "{}blobs/{}/{}/{}",
            self.prefix,
            digest.algorithm(),
            &hex[..2],
            hex
        ))
    }

    fn state_key(&self, id: &str) -> Key {
        Key::from(format!("{}uploads/{id}/state", self.prefix))
    }

    fn data_key(&self, id: &str) -> Key {
        Key::from(format!("{}uploads/{id}/data", self.prefix))
    }

    fn head(&self, key: &Key) -> Result<Option<(u64, SystemTime)>> {
        match block_on(self.s3.head(key)) {
            Ok(meta) => Ok(Some((meta.size, meta.last_modified.into()))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(s3_error("HEAD", key, e)),
        }
    }

    /// Bytes `start..end` (to the end when `None`) of `key`, clamped to the object's size.
    ///
    /// A presigned GET with a `Range` header: object_store refuses a 200 carrying a
    /// Content-Range, which is how rclone answers. Accepted: 206, or 200 with a Content-Range
    /// that starts at `start`, or a plain 200 with the whole object (a server that ignores
    /// Range: sliced here). 5xx, 429 and 408 are retried with backoff. Errors name the key,
    /// never the signed URL.
    pub(crate) fn get_range(&self, key: &Key, start: u64, end: Option<u64>) -> Result<Ranged> {
        use reqwest::{header, StatusCode};
        let url = block_on(self.s3.signed_url(http::Method::GET, key, Duration::from_secs(600)))
            .map_err(|e| s3_error("presign", key, e))?;
        let range = match end {
            Some(e) if e <= start => return Ok(Ranged::Data(Bytes::new())),
            Some(e) => format!("bytes={start}-{}", e - 1),
            None => format!("bytes={start}-"),
        };
        let failed = |what: String| CoreError::Io {
            context: format!("S3 GET {key}"),
            source: io::Error::other(what),
        };
        let mut backoff = RANGE_BACKOFF;
        for attempt in 1..=RANGE_ATTEMPTS {
            let answer = block_on(async {
                let resp = self
                    .http
                    .get(url.clone())
                    .header(header::RANGE, &range)
                    .send()
                    .await?;
                let status = resp.status();
                let content_range = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, content_range, body))
            });
            let retry = match answer {
                Ok((status, content_range, body)) if status.is_success() => {
                    let starts_at = content_range.as_deref().and_then(|v| {
                        v.strip_prefix("bytes ")?.split('-').next()?.parse::<u64>().ok()
                    });
                    return match (status, starts_at) {
                        (_, Some(s)) if s == start => Ok(Ranged::Data(body)),
                        (StatusCode::OK, None) => {
                            // the whole object: slice it here
                            let len = body.len() as u64;
                            if start >= len {
                                return Ok(Ranged::Unsatisfiable);
                            }
                            let stop = end.map_or(len, |e| e.min(len));
                            Ok(Ranged::Data(body.slice(start as usize..stop as usize)))
                        }
                        _ => Err(failed(format!(
                            "asked for {range}, got {status} with Content-Range {content_range:?}"
                        ))),
                    };
                }
                Ok((StatusCode::NOT_FOUND, _, _)) => return Ok(Ranged::NotFound),
                Ok((StatusCode::RANGE_NOT_SATISFIABLE, _, _)) => return Ok(Ranged::Unsatisfiable),
                Ok((status, _, _))
                    if status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT =>
                {
                    format!("answered {status}")
                }
                Ok((status, _, _)) => return Err(failed(format!("answered {status}"))),
                Err(e) => e.without_url().to_string(),
            };
            if attempt == RANGE_ATTEMPTS {
                return Err(failed(format!("{retry} ({attempt} attempts)")));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        unreachable!("the last attempt returns")
    }

    fn put(&self, key: &Key, data: Bytes) -> Result<()> {
        block_on(self.s3.put(key, PutPayload::from_bytes(data)))
            .map(drop)
            .map_err(|e| s3_error("PUT", key, e))
    }

    /// Delete `key`; absent already is fine.
    fn delete(&self, key: &Key) -> Result<()> {
        match block_on(self.s3.delete(key)) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(s3_error("DELETE", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let key = Key::from(prefix.trim_end_matches('/'));
        block_on(async {
            let mut stream = self.s3.list(Some(&key));
            let mut out = Vec::new();
            while let Some(meta) = stream.next().await {
                out.push(meta?);
            }
            Ok(out)
        })
        .map_err(|e| s3_error("LIST", &key, e))
    }

    fn get_bytes(&self, key: &Key) -> Result<Option<Bytes>> {
        match block_on(async { self.s3.get(key).await?.bytes().await }) {
            Ok(b) => Ok(Some(b)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(s3_error("GET", key, e)),
        }
    }

    pub(crate) fn load_state(&self, id: &str) -> Result<Option<UploadState>> {
        let key = self.state_key(id);
        match self.get_bytes(&key)? {
            None => Ok(None),
            Some(data) => UploadState::decode(&data)
                .map(Some)
                .ok_or_else(|| corrupt_state(&key)),
        }
    }

    pub(crate) fn remove_upload(&self, id: &str) -> Result<()> {
        let data_key = self.data_key(id);
        if let Some(state) = self.load_state(id)? {
            if let Some(mp) = &state.multipart {
                match block_on(object_store::multipart::MultipartStore::abort_multipart(
                    &self.s3, &data_key, mp,
                )) {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(s3_error("abort multipart", &data_key, e)),
                }
            }
        }
        self.delete(&data_key)?;
        self.delete(&self.state_key(id))
    }

    /// Hash the object at `key` with `algorithm`, streaming it; (hex, size).
    fn hash_object(&self, key: &Key, algorithm: Algorithm) -> Result<Option<(String, u64)>> {
        let stream = match block_on(self.s3.get(key)) {
            Ok(got) => got.into_stream(),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(s3_error("GET", key, e)),
        };
        let mut reader = StreamReader::new(stream);
        let mut d = Digester::new(algorithm);
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| CoreError::Io {
                context: format!("S3 GET {key}"),
                source: e,
            })?;
            if n == 0 {
                break;
            }
            d.update(&buf[..n]);
            size += n as u64;
        }
        Ok(Some((d.hexdigest(), size)))
    }
}

/// A blocking [`Read`] over an object's byte stream.
struct StreamReader {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    current: Bytes,
}

impl StreamReader {
    fn new(stream: BoxStream<'static, object_store::Result<Bytes>>) -> Self {
        StreamReader {
            stream,
            current: Bytes::new(),
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// `s3://bucket[/prefix]` → (bucket, `""` or `"prefix/"`).
fn parse_url(url: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        CoreError::InvalidArgument(format!(
            "blob store URL {:?}: {why} (expected s3://BUCKET[/PREFIX])",
            url.chars().take(200).collect::<String>()
        ))
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(bad("bucket names are 3-63 of a-z 0-9 . -"));
    }
    let prefix = prefix.trim_matches('/');
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !prefix.is_empty() && !prefix.split('/').all(segment_ok) {
        return Err(bad("prefix segments are of A-Z a-z 0-9 - _ ."));
    }
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_owned(), prefix))
}

/// Whether an `http://host[:port]/…` URL names a loopback host.
fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("s3://bkt").unwrap(), ("bkt".into(), "".into()));
        assert_eq!(
            parse_url("s3://bkt/a/b/").unwrap(),
            ("bkt".into(), "a/b/".into())
        );
        for bad in ["bkt", "s3://", "s3://B", "s3://bkt/a//b", "s3://bkt/../x", "s3://b k"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback() {
        assert!(is_loopback_url("http://127.0.0.1:9000"));
        assert!(is_loopback_url("http://localhost:9000/"));
        assert!(is_loopback_url("http://[::1]:9000"));
        assert!(!is_loopback_url("http://10.0.0.1:9000"));
        assert!(!is_loopback_url("http://minio:9000"));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let opts = |endpoint: &str| S3Options {
            endpoint: Some(endpoint.into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..S3Options::default()
        };
        assert!(S3BlobStore::open("s3://bkt", opts("http://127.0.0.1:1")).is_ok());
        assert!(S3BlobStore::open("s3://bkt", opts("http://192.0.2.1:1")).is_err());
        let mut allowed = opts("http://192.0.2.1:1");
        allowed.allow_http = true;
        assert!(S3BlobStore::open("s3://bkt", allowed).is_ok());
    }
}
