//! Where recordings go. A [`Storage`] creates files that are written under a temporary name
//! and published under their final key only when complete, so a reader never sees a partial
//! file under a final name. Blocking API: callers run it off the async workers (the blocking
//! pool, or a recorder's writer threads).

pub mod fs;
pub mod s3;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::config;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {path}")]
    Io { op: &'static str, path: String, source: std::io::Error },
    #[error("invalid key {key:?}: {why}")]
    InvalidKey { key: String, why: &'static str },
    /// The object storage refused or failed (`permanent`: wrong credentials, no retry helps).
    #[error("{op} {key}")]
    Remote { op: &'static str, key: String, permanent: bool, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("{0}")]
    Config(String),
    #[error("the spool of storage {storage} is full ({used} of {max} bytes): S3 has been unreachable too long")]
    SpoolFull { storage: String, used: u64, max: u64 },
}

/// A spooled file was uploaded later (or can never be): its catalog entry follows.
#[derive(Clone, Debug)]
pub struct UploadEvent {
    pub storage: String,
    /// The key it was announced under (while spooled).
    pub spooled_key: String,
    /// Where it is now, or why it cannot be uploaded.
    pub result: Result<Stored, String>,
}

/// A file left unfinished: its bytes so far at `path`, what it was in `meta`. Removing it
/// (after recovery) is [`Partial::discard`]; leaving it for recovery by hand without trying
/// again at the next start, [`Partial::forget`].
#[derive(Clone, Debug)]
pub struct Partial {
    pub path: std::path::PathBuf,
    pub meta: Vec<u8>,
    /// Where `meta` was read from when it was not the file's own attribute.
    pub meta_path: Option<std::path::PathBuf>,
}

impl Partial {
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(m) = &self.meta_path {
            let _ = std::fs::remove_file(m);
        }
    }

    /// Drops the description: the file stays, no longer recovered at start.
    pub fn forget(&self) {
        match &self.meta_path {
            Some(m) => {
                let _ = std::fs::remove_file(m);
            }
            None => {
                let _ = fs::attr::remove_at(&self.path, fs::META_ATTR);
            }
        }
    }
}

/// Where an object can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Located {
    File(std::path::PathBuf),
    /// A presigned URL (object storage).
    Url(String),
}

/// Told about [`UploadEvent`]s (from the storage's uploader task).
pub type UploadListener = Arc<dyn Fn(&UploadEvent) + Send + Sync>;

/// How to finalise a file at close: final = `head` ++ written[ranges] ++ `tail`.
/// With no ranges and empty head/tail the written bytes are published as they are.
#[derive(Clone, Debug, Default)]
pub struct Finalize<'a> {
    pub head: &'a [u8],
    pub ranges: &'a [Range<u64>],
    pub tail: &'a [u8],
}

/// A completed file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub size: u64,
    /// Where a user finds it (a path for fs, a URL for object storage).
    pub location: String,
    /// The object's ETag (object storage).
    pub etag: Option<String>,
    /// Kept in the local spool, not yet in the object storage (an [`UploadEvent`] follows).
    pub pending: bool,
}

pub trait Storage: Send + Sync {
    /// Starts a file. `hint` names the temporary object (unique per recording file).
    fn create(&self, hint: &str) -> Result<Box<dyn FileWriter>, StorageError>;
    /// Writes a small object atomically (playlists), replacing one at `key`.
    fn put(&self, key: &str, data: &[u8]) -> Result<Stored, StorageError>;
    /// Removes the object at `key`; removing one that is not there is no error.
    fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Reads a small object whole (playlists); `Ok(None)` when there is none at `key`.
    fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, StorageError>;
    /// Where to read the object at `key` from: a local file, or a URL valid for `valid`.
    fn locate(&self, key: &str, valid: std::time::Duration) -> Result<Option<Located>, StorageError>;
    /// Like [`Storage::create`], keeping `meta` beside the file while it is written, so that
    /// a file a crash left unfinished can be told what it was ([`Storage::partials`]).
    fn create_described(&self, hint: &str, meta: &[u8]) -> Result<Box<dyn FileWriter>, StorageError> {
        let _ = meta;
        self.create(hint)
    }
    /// Files left unfinished (by a crash), with the `meta` they were created with.
    fn partials(&self) -> Vec<Partial> {
        Vec::new()
    }
    /// Registers who hears of later uploads from the spool (object storage only).
    fn on_upload(&self, listener: UploadListener) {
        let _ = listener;
    }
}

pub trait FileWriter: Send + Sync {
    /// Appends the chunks in order.
    fn write(&mut self, chunks: &[Bytes]) -> Result<(), StorageError>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Completes the file under `key` (applying `fin`) and makes it durable.
    fn finish(self: Box<Self>, key: &str, fin: Finalize<'_>) -> Result<Stored, StorageError>;
    /// Gives the file up (nothing was worth keeping).
    fn abort(self: Box<Self>);
    /// For storages wrapping one another.
    fn as_any(&mut self) -> &mut dyn std::any::Any;
    /// The local file being written, when there is one (the fs writer's temporary file).
    fn local_path(&self) -> Option<&std::path::Path> {
        None
    }
    /// A handle reading that local file (the same open file: no path to look up again).
    fn local_file(&self) -> Option<std::io::Result<std::fs::File>> {
        None
    }
}

/// Checks a storage key: relative, no `..`, no empty components, no NUL or backslash.
pub fn check_key(key: &str) -> Result<(), StorageError> {
    let bad = |why| Err(StorageError::InvalidKey { key: key.into(), why });
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("absolute");
    }
    if key.contains('\0') || key.contains('\\') {
        return bad("contains NUL or backslash");
    }
    if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("has an empty, '.' or '..' component");
    }
    Ok(())
}

/// Opens the storage target a config table describes.
/// Opens the storage target a config table describes (`data_dir` holds an S3 target's spool;
/// an S3 target needs the async runtime).
pub fn open(name: &str, cfg: &config::Storage, data_dir: &std::path::Path) -> Result<Arc<dyn Storage>, StorageError> {
    match cfg.kind {
        config::StorageKind::Fs => Ok(Arc::new(fs::FsStorage::new(&cfg.root)?)),
        config::StorageKind::S3 => Ok(Arc::new(s3::S3Storage::open(name, cfg, data_dir)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_checks() {
        assert!(check_key("live/a/b.flv").is_ok());
        for k in ["", "/abs", "a/../b", "a//b", "a\\b", "a\0", "./a"] {
            assert!(check_key(k).is_err(), "{k:?}");
        }
    }
}
