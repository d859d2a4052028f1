//! S3-compatible object storage, with a local spool.
//!
//! A file is written to the spool (`data_dir/spool/NAME/`, the fs writer: `.partial`, fsync,
//! rename) and finalised there; at close it is uploaded under its key — in 8 MiB parts through a
//! multipart upload when larger than one part — and then removed from the spool. An object
//! appears in the bucket only complete (a multipart upload is invisible until completed).
//!
//! When S3 is unreachable, slow or failing, the finished file stays in the spool under its key
//! and the spool's uploader sends it when S3 answers again, oldest first, also after a restart
//! (the spool is a plain folder tree: a file at `spool/NAME/KEY` is an upload owed). Wrong
//! credentials (401/403) are reported as a permanent failure for that file, not retried until
//! the next start. The spool is bounded by `spool_max_bytes`: past it, new files are refused
//! and the recordings writing them end with an error.
//!
//! Keys are never overwritten: an existing object makes the upload take `stem_N.ext`.
//!
//! **Upload while recording.** An FLV, MP4 or AAC file also streams into a multipart upload as
//! it grows (`part_size`, 8 MiB): part 2 onwards as each fills, read back from the spool file,
//! with up to two parts in flight (a slow link falls behind, never blocks the recording).
//! Part 1 — the file's first `part_size` bytes, which hold FLV's `onMetaData` or MP4's `moov`,
//! written in place at close into room reserved for them (at most 4 MiB) — waits for the
//! close, then goes with the remaining tail (an MP4 `moov` that outgrew its room): parts may be
//! uploaded in any order. The name is only known at close (it holds the end time), so the
//! upload goes to a temporary key (`PREFIX.uploading/…`), completed at close and copied
//! server-side to the final key, then removed: the object appears under its key complete.
//! Anything that fails on the way (a part, the completion, the copy, a file that ends up
//! laid out anew) falls back to uploading the spooled file whole, with the spool's guarantees.
//! Temporary uploads of a crashed node are left to the bucket's lifecycle rule
//! (`AbortIncompleteMultipartUpload`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig};

use super::fs::{FsStorage, PARTIAL_DIR};
use super::{check_key, FileWriter, Finalize, Located, Storage, StorageError, Stored, UploadEvent, UploadListener};
use crate::config;

/// Uploads in parts of this size (S3 wants ≥ 5 MiB but the last).
const PART_BYTES: usize = 8 << 20;
/// Parts in flight at once per upload.
const PARTS_IN_FLIGHT: usize = 4;
/// Spooled files the uploader sends at once.
const FILES_IN_FLIGHT: usize = 4;
/// Longest wait for a connection (the request itself: `request_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the spool is looked at; after failures the wait doubles up to the maximum.
const SPOOL_POLL: Duration = Duration::from_secs(1);
const SPOOL_POLL_MAX: Duration = Duration::from_secs(30);
/// The uploader leaves files this fresh to the close that is uploading them.
const SPOOL_SETTLE: Duration = Duration::from_secs(5);

pub struct S3Storage {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    store: AmazonS3,
    prefix: String,
    /// Where the objects are, for users: `endpoint/bucket/`.
    base_url: String,
    spool: FsStorage,
    spool_max: u64,
    rt: tokio::runtime::Handle,
    listener: Mutex<Option<UploadListener>>,
    /// Keys whose upload failed for good (wrong credentials): left until the next start.
    refused: Mutex<HashSet<String>>,
    /// The object storage failed (unreachable, slow, 5xx): closes spool at once instead of
    /// waiting on it, until the uploader gets through again.
    down: std::sync::atomic::AtomicBool,
    /// Parts of uploads while recording (0: files upload whole at close).
    part_size: u64,
    /// Someone listens for uploads from the spool: the uploader may start (what a restart left
    /// in the spool goes at once, not after the first poll, and no upload goes unannounced).
    listening: tokio::sync::Notify,
}

/// Parts of one upload while recording in flight at once.
const STREAM_PARTS_IN_FLIGHT: usize = 2;

/// Spool files being uploaded now, over every storage of the process (a reload makes a new
/// storage on the same spool while the old one may still be uploading).
fn in_flight() -> &'static Mutex<HashSet<PathBuf>> {
    static SET: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    SET.get_or_init(Default::default)
}

fn s3_err(op: &'static str, key: &str, e: object_store::Error) -> StorageError {
    StorageError::Remote { op, key: key.into(), permanent: is_permanent(&e), source: Box::new(e) }
}

/// Wrong credentials or a refused bucket: retrying will not help.
fn is_permanent(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
}

impl S3Storage {
    pub fn open(name: &str, cfg: &config::Storage, data_dir: &Path) -> Result<Self, StorageError> {
        let access = config::Storage::secret(&cfg.access_key).map_err(StorageError::Config)?;
        let secret = config::Storage::secret(&cfg.secret_key).map_err(StorageError::Config)?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(access)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_unsigned_payload(
                !cfg.sign_payload.unwrap_or_else(|| cfg.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
            )
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(cfg.request_timeout.std())
                    .with_connect_timeout(CONNECT_TIMEOUT.min(cfg.request_timeout.std()))
                    .with_allow_http(cfg.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: cfg.request_timeout.std(),
            });
        let base_url = match &cfg.endpoint {
            Some(e) => {
                b = b.with_endpoint(e.trim_end_matches('/'));
                format!("{}/{}/", e.trim_end_matches('/'), cfg.bucket)
            }
            None => format!("https://{}.s3.{}.amazonaws.com/", cfg.bucket, cfg.region),
        };
        let store = b.build().map_err(|e| StorageError::Config(format!("storage {name}: {e}")))?;
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| StorageError::Config("S3 storage needs the async runtime".into()))?;
        let spool = FsStorage::new(&data_dir.join("spool").join(name))?;
        let inner = Arc::new(Inner {
            name: name.into(),
            store,
            prefix: cfg.prefix.clone(),
            base_url,
            spool,
            spool_max: cfg.spool_max_bytes,
            rt: rt.clone(),
            listener: Mutex::new(None),
            refused: Mutex::new(HashSet::new()),
            down: std::sync::atomic::AtomicBool::new(false),
            part_size: cfg.part_size,
            listening: tokio::sync::Notify::new(),
        });
        rt.spawn(drain_spool(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }
}

impl Inner {
    fn path(&self, key: &str) -> Result<ObjPath, StorageError> {
        ObjPath::parse(format!("{}{key}", self.prefix))
            .map_err(|_| StorageError::InvalidKey { key: key.into(), why: "not a valid object path" })
    }

    fn tell(&self, ev: UploadEvent) {
        let l = self.listener.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(l) = l {
            l(&ev);
        }
    }

    /// Bytes waiting in the spool (finished and being written).
    fn spooled_bytes(&self) -> u64 {
        fn walk(d: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(d) else { return 0 };
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(self.spool.root())
    }

    /// A key not taken in the bucket: `key`, else `stem_1.ext`, `stem_2.ext`…
    async fn free_key(&self, key: &str) -> Result<String, StorageError> {
        let (stem, ext) = match key.rfind('.') {
            Some(i) if !key[i..].contains('/') => (&key[..i], &key[i..]),
            _ => (key, ""),
        };
        for n in 0..1000 {
            let k = if n == 0 { key.to_string() } else { format!("{stem}_{n}{ext}") };
            match self.store.head(&self.path(&k)?).await {
                Err(object_store::Error::NotFound { .. }) => return Ok(k),
                Ok(_) => continue,
                Err(e) => return Err(s3_err("check", &k, e)),
            }
        }
        Err(StorageError::InvalidKey { key: key.into(), why: "too many objects with this name" })
    }

    /// Uploads the spooled file `local` under `key` (or a free variant); returns the key used
    /// and the ETag. The spool file is removed once the object is complete.
    async fn upload(&self, local: &Path, key: &str) -> Result<(String, u64, Option<String>), StorageError> {
        let key = self.free_key(key).await?;
        let path = self.path(&key)?;
        // File reads run on the blocking pool (`read_range`): this runs on the runtime's workers.
        let io = |op| move |source| StorageError::Io { op, path: local.display().to_string(), source };
        let size = tokio::fs::metadata(local).await.map_err(io("stat"))?.len();
        let result = if size <= PART_BYTES as u64 {
            let data = read_range(local, 0, size).await.map_err(io("read"))?;
            self.store.put(&path, PutPayload::from(data)).await.map_err(|e| s3_err("upload", &key, e))?
        } else {
            let id = self.store.create_multipart(&path).await.map_err(|e| s3_err("start upload", &key, e))?;
            let parts = match self.put_parts(&path, &id, local, size, &key).await {
                Ok(parts) => parts,
                Err(e) => {
                    let _ = self.store.abort_multipart(&path, &id).await;
                    return Err(e);
                }
            };
            self.store.complete_multipart(&path, &id, parts).await.map_err(|e| s3_err("complete upload", &key, e))?
        };
        let _ = tokio::fs::remove_file(local).await;
        Ok((key, size, result.e_tag))
    }

    /// Sends the `PART_BYTES` parts of the spooled file `local` to the multipart upload `id`,
    /// [`PARTS_IN_FLIGHT`] at once, each read from the spool as it goes.
    async fn put_parts(
        &self,
        path: &ObjPath,
        id: &str,
        local: &Path,
        size: u64,
        key: &str,
    ) -> Result<Vec<PartId>, StorageError> {
        let part = PART_BYTES as u64;
        let n = size.div_ceil(part) as usize;
        let mut parts: Vec<Option<PartId>> = vec![None; n];
        let mut running = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while next < n && running.len() < PARTS_IN_FLIGHT {
                let (store, path, id, local) = (self.store.clone(), path.clone(), id.to_string(), local.to_path_buf());
                let (index, from) = (next, next as u64 * part);
                running.spawn(async move {
                    let data = read_range(&local, from, part.min(size - from))
                        .await
                        .map_err(|e| object_store::Error::Generic { store: "spool", source: Box::new(e) })?;
                    store.put_part(&path, &id, index, PutPayload::from(data)).await.map(|p| (index, p))
                });
                next += 1;
            }
            match running.join_next().await {
                None => break,
                Some(Ok(Ok((index, p)))) => parts[index] = Some(p),
                Some(Ok(Err(e))) => return Err(s3_err("upload part", key, e)),
                Some(Err(e)) => {
                    let e = object_store::Error::Generic { store: "S3", source: Box::new(e) };
                    return Err(s3_err("upload part", key, e));
                }
            }
        }
        Ok(parts.into_iter().map(|p| p.expect("every part sent")).collect())
    }

    fn stored(&self, key: String, size: u64, etag: Option<String>, pending: bool) -> Stored {
        let location = format!("{}{}{key}", self.base_url, self.prefix);
        Stored { key, size, location, etag, pending }
    }

    fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_down(&self, down: bool) {
        let was = self.down.swap(down, std::sync::atomic::Ordering::Relaxed);
        if was != down {
            if down {
                tracing::warn!(storage = %self.name, "object storage unreachable or failing: files wait in the spool");
            } else {
                tracing::info!(storage = %self.name, "object storage answers again: uploading the spool");
            }
        }
    }

    /// Uploads a finished spool file now, or leaves it for the uploader.
    fn send(&self, local: &Path, key: &str, size: u64) -> Stored {
        if self.is_down() {
            return self.stored(key.into(), size, None, true);
        }
        let claimed = in_flight().lock().unwrap_or_else(|e| e.into_inner()).insert(local.to_path_buf());
        if !claimed {
            return self.stored(key.into(), size, None, true);
        }
        let r = self.rt.block_on(self.upload(local, key));
        in_flight().lock().unwrap_or_else(|e| e.into_inner()).remove(local);
        match r {
            Ok((key, size, etag)) => self.stored(key, size, etag, false),
            Err(e) => {
                let permanent = matches!(e, StorageError::Remote { permanent: true, .. });
                if !permanent {
                    self.set_down(true);
                }
                tracing::warn!(storage = %self.name, %key, permanent, error = &e as &dyn std::error::Error,
                    "upload failed; the file waits in the spool");
                // The uploader tries it again shortly (after the file's catalog entry exists)
                // and reports a refusal then.
                self.stored(key.into(), size, None, true)
            }
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s = format!("{s}: {x}");
        src = x.source();
    }
    s
}

/// Spooled files (key relative to the spool root), oldest first.
fn spooled(root: &Path) -> Vec<(SystemTime, PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    if p.file_name().is_some_and(|n| n != PARTIAL_DIR) {
                        stack.push(p);
                    }
                }
                Ok(_) => {
                    let Ok(rel) = p.strip_prefix(root) else { continue };
                    let Some(key) = rel.to_str().map(str::to_string) else { continue };
                    // A playlist being replaced is written as `NAME.m3u8.tmp` first.
                    if key.ends_with(".tmp") || check_key(&key).is_err() {
                        continue;
                    }
                    let mtime = e.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                    if mtime.elapsed().is_ok_and(|age| age < SPOOL_SETTLE) {
                        continue;
                    }
                    out.push((mtime, p, key));
                }
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// The spool's uploader: sends what is owed, oldest first, while the storage lives.
async fn drain_spool(inner: Weak<Inner>) {
    // The first look: once a listener is registered (at once, at start-up), or after one poll.
    let first = match inner.upgrade() {
        Some(s) => tokio::time::timeout(SPOOL_POLL, async move { s.listening.notified().await }),
        None => return,
    };
    let _ = first.await;
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        let Some(s) = inner.upgrade() else { return };
        let root = s.spool.root().to_path_buf();
        let files = tokio::task::spawn_blocking(move || spooled(&root)).await.unwrap_or_default();
        let mut failed = false;
        let mut running = tokio::task::JoinSet::new();
        let mut files = files.into_iter().peekable();
        loop {
            // Oldest first, a few at a time; a playlist only once everything before it is up
            // (it names those segments); after a failure nothing new starts.
            while running.len() < FILES_IN_FLIGHT && !failed {
                let playlist = files.peek().is_some_and(|(_, _, k)| k.ends_with(".m3u8"));
                if playlist && !running.is_empty() {
                    break;
                }
                let Some((_, local, key)) = files.next() else { break };
                if s.refused.lock().unwrap_or_else(|e| e.into_inner()).contains(&key) {
                    continue;
                }
                if !in_flight().lock().unwrap_or_else(|e| e.into_inner()).insert(local.clone()) {
                    continue;
                }
                let s = s.clone();
                running.spawn(async move {
                    let r = s.upload(&local, &key).await;
                    in_flight().lock().unwrap_or_else(|e| e.into_inner()).remove(&local);
                    (key, r)
                });
            }
            let Some(done) = running.join_next().await else { break };
            let Ok((key, r)) = done else { continue };
            match r {
                Ok((stored_key, size, etag)) => {
                    s.set_down(false);
                    tracing::info!(storage = %s.name, key = %stored_key, bytes = size, "spooled file uploaded");
                    metrics::counter!("reel_spool_uploaded_total").increment(1);
                    s.tell(UploadEvent {
                        storage: s.name.clone(),
                        spooled_key: key,
                        result: Ok(s.stored(stored_key, size, etag, false)),
                    });
                }
                Err(e) => {
                    let permanent = matches!(e, StorageError::Remote { permanent: true, .. });
                    tracing::warn!(storage = %s.name, %key, permanent, error = &e as &dyn std::error::Error, "spool upload failed");
                    if permanent {
                        s.refused.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone());
                        s.tell(UploadEvent {
                            storage: s.name.clone(),
                            spooled_key: key,
                            result: Err(format!("storage {}: {}", s.name, chain(&e))),
                        });
                    } else {
                        // S3 is down: try again later, in order.
                        s.set_down(true);
                        failed = true;
                    }
                }
            }
        }
        wait = if failed { (wait * 2).min(SPOOL_POLL_MAX) } else { SPOOL_POLL };
    }
}

impl Storage for S3Storage {
    fn create(&self, hint: &str) -> Result<Box<dyn FileWriter>, StorageError> {
        let used = self.inner.spooled_bytes();
        if used >= self.inner.spool_max {
            metrics::counter!("reel_spool_full_total").increment(1);
            return Err(StorageError::SpoolFull { storage: self.inner.name.clone(), used, max: self.inner.spool_max });
        }
        let local = self.inner.spool.create(hint)?;
        Ok(Box::new(S3File::new(local, self.inner.clone(), hint)))
    }

    fn create_described(&self, hint: &str, meta: &[u8]) -> Result<Box<dyn FileWriter>, StorageError> {
        let used = self.inner.spooled_bytes();
        if used >= self.inner.spool_max {
            metrics::counter!("reel_spool_full_total").increment(1);
            return Err(StorageError::SpoolFull { storage: self.inner.name.clone(), used, max: self.inner.spool_max });
        }
        let local = self.inner.spool.create_described(hint, meta)?;
        Ok(Box::new(S3File::new(local, self.inner.clone(), hint)))
    }

    fn partials(&self) -> Vec<super::Partial> {
        self.inner.spool.partials()
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<Stored, StorageError> {
        let path = self.inner.path(key)?;
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        let r = if self.inner.is_down() {
            Err(object_store::Error::Generic { store: "S3", source: "the object storage is down".into() })
        } else {
            self.inner.rt.block_on(self.inner.store.put(&path, payload))
        };
        match r {
            Ok(r) => {
                // A spooled older revision must not overwrite this one later.
                let _ = self.inner.spool.delete(key);
                Ok(self.inner.stored(key.into(), data.len() as u64, r.e_tag, false))
            }
            Err(e) => {
                if !self.inner.is_down() && !is_permanent(&e) {
                    self.inner.set_down(true);
                }
                tracing::debug!(storage = %self.inner.name, %key, error = &e as &dyn std::error::Error, "put failed; spooled");
                let local = self.inner.spool.put(key, data)?;
                Ok(self.inner.stored(local.key, data.len() as u64, None, true))
            }
        }
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.spool.delete(key)?;
        match self.inner.rt.block_on(self.inner.store.delete(&self.inner.path(key)?)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err("delete", key, e)),
        }
    }

    fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(local) = self.inner.spool.get(key, max_bytes)? {
            return Ok(Some(local));
        }
        let path = self.inner.path(key)?;
        let r = self.inner.rt.block_on(async {
            // Only the first `max_bytes` are read (the fs storage's `get` does the same).
            let size = self.inner.store.head(&path).await?.size;
            if size == 0 {
                return Ok(Bytes::new());
            }
            self.inner.store.get_range(&path, 0..size.min(max_bytes)).await
        });
        match r {
            Ok(b) => Ok(Some(b[..b.len().min(max_bytes as usize)].to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err("get", key, e)),
        }
    }

    fn locate(&self, key: &str, valid: Duration) -> Result<Option<Located>, StorageError> {
        use object_store::signer::Signer;
        if let Some(Located::File(p)) = self.inner.spool.locate(key, valid)? {
            return Ok(Some(Located::File(p)));
        }
        let path = self.inner.path(key)?;
        let url = self
            .inner
            .rt
            .block_on(self.inner.store.signed_url(http::Method::GET, &path, valid))
            .map_err(|e| s3_err("sign", key, e))?;
        Ok(Some(Located::Url(url.to_string())))
    }

    fn on_upload(&self, listener: UploadListener) {
        *self.inner.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener);
        self.inner.listening.notify_one();
    }
}

struct S3File {
    local: Box<dyn FileWriter>,
    inner: Arc<Inner>,
    /// The upload while recording, if this file streams.
    stream: Option<Streaming>,
}

/// A multipart upload that follows a file as it is written.
struct Streaming {
    /// The temporary key it goes to.
    temp: ObjPath,
    /// The upload's id, once the first part's task created it.
    id: Arc<tokio::sync::OnceCell<String>>,
    part: u64,
    /// Where the next part starts (part 1, `[0, part)`, waits for the close).
    next: u64,
    /// Parts sent, by index (1 = the second part).
    sent: Vec<(usize, tokio::task::JoinHandle<Result<PartId, object_store::Error>>)>,
    /// A part failed: the file uploads whole at close.
    failed: bool,
}

impl S3File {
    fn new(local: Box<dyn FileWriter>, inner: Arc<Inner>, hint: &str) -> Self {
        let streams = inner.part_size >= 5 << 20 && !inner.is_down();
        let stream = streams.then(|| Streaming {
            temp: ObjPath::from(format!("{}.uploading/{:016x}-{hint}", inner.prefix, fastrand::u64(..))),
            id: Arc::default(),
            part: inner.part_size,
            next: inner.part_size,
            sent: Vec::new(),
            failed: false,
        });
        S3File { local, inner, stream }
    }

    /// Sends the parts the file has filled since the last write (at most
    /// [`STREAM_PARTS_IN_FLIGHT`] in flight; the rest wait for a later write or the close).
    fn stream_parts(&mut self) {
        let Some(st) = &mut self.stream else { return };
        if st.failed {
            return;
        }
        let Some(path) = self.local.local_path().map(Path::to_path_buf) else { return };
        let written = self.local.written();
        while st.next + st.part <= written {
            if st.sent.iter().filter(|(_, h)| !h.is_finished()).count() >= STREAM_PARTS_IN_FLIGHT {
                return;
            }
            let (index, from, len) = ((st.next / st.part) as usize, st.next, st.part);
            st.next += st.part;
            let (inner, temp, path, cell) = (self.inner.clone(), st.temp.clone(), path.clone(), st.id.clone());
            let handle = self.inner.rt.spawn(async move {
                let id = cell.get_or_try_init(|| inner.store.create_multipart(&temp)).await?.clone();
                let data = read_range(&path, from, len)
                    .await
                    .map_err(|e| object_store::Error::Generic { store: "spool", source: Box::new(e) })?;
                let r = inner.store.put_part(&temp, &id, index, PutPayload::from(data)).await;
                if r.is_ok() {
                    metrics::counter!("reel_upload_parts_streamed_total").increment(1);
                }
                r
            });
            st.sent.push((index, handle));
        }
    }

    /// Completes the upload while recording of the finished spool file `local` under `key` (or
    /// a free variant). `Err` leaves the file to the whole-file upload.
    async fn complete(
        inner: &Inner,
        mut st: Streaming,
        local: &Path,
        key: &str,
    ) -> Result<(String, u64, Option<String>), String> {
        let size = tokio::fs::metadata(local).await.map_err(|e| e.to_string())?.len();
        let mut parts: Vec<Option<PartId>> = vec![None; size.div_ceil(st.part) as usize];
        for (index, h) in st.sent.drain(..) {
            let part = h.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            *parts.get_mut(index).ok_or("the file shrank")? = Some(part);
        }
        let id = st.id.get().cloned().ok_or("nothing streamed")?;
        // The head (part 1, rewritten in place at close) and whatever was not sent yet.
        let mut missing: Vec<usize> = parts.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(i, _)| i).collect();
        missing.sort_unstable();
        for index in missing {
            let from = index as u64 * st.part;
            let data = read_range(local, from, st.part.min(size - from)).await.map_err(|e| e.to_string())?;
            parts[index] = Some(
                inner.store.put_part(&st.temp, &id, index, PutPayload::from(data)).await.map_err(|e| e.to_string())?,
            );
        }
        let parts: Vec<PartId> = parts.into_iter().map(|p| p.expect("every part sent")).collect();
        inner.store.complete_multipart(&st.temp, &id, parts).await.map_err(|e| e.to_string())?;
        let key = inner.free_key(key).await.map_err(|e| e.to_string())?;
        let to = inner.path(&key).map_err(|e| e.to_string())?;
        let copied = inner.store.copy(&st.temp, &to).await.map_err(|e| e.to_string());
        if let Err(e) = inner.store.delete(&st.temp).await {
            tracing::warn!(storage = %inner.name, error = &e as &dyn std::error::Error, "temporary upload not removed");
        }
        copied?;
        let etag = inner.store.head(&to).await.ok().and_then(|m| m.e_tag);
        let _ = tokio::fs::remove_file(local).await;
        Ok((key, size, etag))
    }
}

/// `len` bytes of `path` from `from` (a part of a spooled file), mapped from the page cache on
/// the blocking pool (populated there, so sending it never waits on the disk). No buffer is
/// filled: a fresh multi-megabyte buffer per part cost the kernel a page clear per 4 KiB, a
/// third of the upload path's CPU (`perf` in `bench/s3.sh`).
async fn read_range(path: &Path, from: u64, len: u64) -> std::io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)?;
        if f.metadata()?.len() < from + len {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the spooled file is shorter"));
        }
        // SAFETY: read-only and private. The range is written and final: a spool file only
        // grows, and the one truncation (a failed write, back to its last whole write) never
        // goes below what was written before, so no page of the mapping goes away.
        let map = unsafe { memmap2::MmapOptions::new().offset(from).len(len as usize).populate().map(&f)? };
        Ok(Bytes::from_owner(map))
    })
    .await
    .map_err(std::io::Error::other)?
}

impl FileWriter for S3File {
    fn write(&mut self, chunks: &[Bytes]) -> Result<(), StorageError> {
        self.local.write(chunks)?;
        self.stream_parts();
        Ok(())
    }

    fn written(&self) -> u64 {
        self.local.written()
    }

    fn finish(self: Box<Self>, key: &str, fin: Finalize<'_>) -> Result<Stored, StorageError> {
        let S3File { local, inner, stream } = *self;
        let written = local.written();
        // Written in place (FLV's reserved onMetaData, AAC as is): what streamed is the file.
        let in_place = (fin.head.is_empty() && fin.ranges.is_empty())
            || matches!(fin.ranges, [r] if r.start == fin.head.len() as u64 && r.end == written);
        // Finished in the spool first (under the key, or a free variant of it there).
        let spooled = local.finish(key, fin)?;
        let path = inner.spool.root().join(&spooled.key);
        if let Some(st) = stream.filter(|st| !st.sent.is_empty()) {
            let temp = st.temp.clone();
            let cell = st.id.clone();
            if in_place && !st.failed && !inner.is_down() {
                let claimed = in_flight().lock().unwrap_or_else(|e| e.into_inner()).insert(path.clone());
                if claimed {
                    let r = inner.rt.block_on(S3File::complete(&inner, st, &path, &spooled.key));
                    in_flight().lock().unwrap_or_else(|e| e.into_inner()).remove(&path);
                    match r {
                        Ok((key, size, etag)) => return Ok(inner.stored(key, size, etag, false)),
                        Err(e) => {
                            tracing::warn!(storage = %inner.name, key = %spooled.key, "upload while recording not completed, uploading the file whole: {e}")
                        }
                    }
                }
            }
            // Given up: the parts go (once the ones in flight ended), the file uploads whole.
            let store = inner.store.clone();
            inner.rt.spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(id) = cell.get() {
                    let _ = store.abort_multipart(&temp, id).await;
                }
            });
        }
        Ok(inner.send(&path, &spooled.key, spooled.size))
    }

    fn abort(self: Box<Self>) {
        let S3File { local, inner, stream } = *self;
        if let Some(Streaming { temp, id, sent, .. }) = stream.filter(|st| !st.sent.is_empty()) {
            let store = inner.store.clone();
            inner.rt.spawn(async move {
                for (_, h) in sent {
                    let _ = h.await;
                }
                if let Some(id) = id.get() {
                    let _ = store.abort_multipart(&temp, id).await;
                }
            });
        }
        local.abort();
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }

    /// The spool file: what was written is there whole (parts stream from it).
    fn local_path(&self) -> Option<&std::path::Path> {
        self.local.local_path()
    }

    fn local_file(&self) -> Option<std::io::Result<std::fs::File>> {
        self.local.local_file()
    }
}
