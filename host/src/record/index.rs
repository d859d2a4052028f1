//! Index files: one VOD playlist over the stored HLS segments of a stream in a time range
//! (ApsaraVideo's `CreateLiveStreamRecordIndexFiles`), across publishes.
//!
//! The recorded playlists are the index of their segments: the catalog finds those of the
//! stream that overlap the range, each is read back from its storage, and the segments that
//! overlap the range (by `#EXT-X-PROGRAM-DATE-TIME`, else by the playlist's start plus the
//! durations before them) are listed, oldest first, with `#EXT-X-DISCONTINUITY` where one
//! playlist (one publish) gives way to the next, then `#EXT-X-ENDLIST`. The index is stored
//! beside them, in the same storage, with URIs relative to itself; a taken key gets a suffix.

use super::output::{relative_uri, resolve};
use super::{Recorder, Runtime};
use crate::catalog::{Catalog, CatalogError, RecordingQuery, MAX_PAGE};
use crate::config::Format;
use crate::mux::hls::{Playlist, Segment};
use crate::storage::{Finalize, StorageError};

/// Longest recorded playlist read back (a 24 h publish of 2 s segments is about 7 MB).
const MAX_PLAYLIST: u64 = 16 << 20;
/// Most playlists one index reads.
const MAX_PLAYLISTS: usize = 10_000;
/// Longest range one index covers (its segments are listed in memory while it is written).
pub const MAX_INDEX_RANGE_MS: i64 = 31 * 24 * 3600 * 1000;

/// What to index.
#[derive(Clone, Debug)]
pub struct IndexRequest {
    pub domain: Option<String>,
    pub app: String,
    pub stream: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// The index's key; by default `{app}/{stream}/index_{start}_{end}.m3u8` (UTC).
    pub name: Option<String>,
}

/// A written index.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Index {
    pub storage: String,
    pub key: String,
    /// Where a user finds it (a path, or a URL).
    pub url: String,
    pub segments: usize,
    pub discontinuities: usize,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{0}")]
    Invalid(String),
    #[error("an index covers at most 31 days (end_time - start_time)")]
    Range,
    #[error("no HLS segments of {app}/{stream} were recorded between {from} and {to}")]
    Empty { app: String, stream: String, from: String, to: String },
    #[error("there is no catalog")]
    NoCatalog,
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("storage {0:?} is not configured any more")]
    NoStorage(String),
    #[error("storage")]
    Storage(#[from] StorageError),
}

/// An index key a user gave: relative, `/`-separated, no `..`, ending in `.m3u8`.
fn check_name(name: &str) -> Result<String, IndexError> {
    let bad = |why: &str| IndexError::Invalid(format!("name {name:?} {why}"));
    if name.is_empty() || name.len() > 1024 {
        return Err(bad("must be 1 to 1024 bytes"));
    }
    if name.starts_with('/') || name.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(bad("must be a relative key without empty, '.' or '..' parts"));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("must not hold control characters or '\\'"));
    }
    Ok(if name.ends_with(".m3u8") { name.to_string() } else { format!("{name}.m3u8") })
}

/// `2026-12-05-08-00-00`, UTC.
fn escaped(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string().trim_end_matches('Z').replace(['T', ':'], "-")
}

impl Recorder {
    /// Writes the index `req` asks for (a taken name gets a suffix).
    pub async fn write_index(&self, req: &IndexRequest) -> Result<Index, IndexError> {
        let catalog = self.catalog().ok_or(IndexError::NoCatalog)?;
        build(catalog, &self.runtime(), req, false).await
    }
}

/// The UTC day of `ms`: its start and end, and its `{Date}`.
fn day_of(ms: u64) -> (i64, i64, String) {
    let start = (ms / 86_400_000 * 86_400_000) as i64;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(start as u64);
    (start, start + 86_400_000, humantime::format_rfc3339_seconds(t).to_string()[..10].to_string())
}

/// Rewrites the stream's daily index `{AppName}/{StreamName}/{Date}.m3u8` over every HLS
/// segment it recorded that UTC day (a template's `daily_index`), after a playlist of it closed.
pub(crate) async fn daily(catalog: &Catalog, rt: &Runtime, domain: &str, app: &str, stream: &str, at_ms: u64) {
    let (start_ms, end_ms, date) = day_of(at_ms);
    let req = IndexRequest {
        domain: Some(domain.into()),
        app: app.into(),
        stream: stream.into(),
        start_ms,
        end_ms,
        name: Some(format!("{app}/{stream}/{date}.m3u8")),
    };
    if let Err(e) = build(catalog, rt, &req, true).await {
        tracing::warn!(%app, %stream, %date, error = &e as &dyn std::error::Error, "daily index not written");
    }
}

/// Writes an index; `replace`: over one at the same key (a daily index), else beside it.
async fn build(catalog: &Catalog, rt: &Runtime, req: &IndexRequest, replace: bool) -> Result<Index, IndexError> {
    if req.end_ms <= req.start_ms {
        return Err(IndexError::Invalid("end_time must be after start_time".into()));
    }
    if req.end_ms - req.start_ms > MAX_INDEX_RANGE_MS {
        return Err(IndexError::Range);
    }
    let key = match &req.name {
        Some(n) => check_name(n)?,
        None => format!("{}/{}/index_{}_{}.m3u8", req.app, req.stream, escaped(req.start_ms), escaped(req.end_ms)),
    };
    let mut rows = Vec::new();
    let mut q = RecordingQuery {
        domain: req.domain.clone(),
        app: Some(req.app.clone()),
        stream: Some(req.stream.clone()),
        format: Some(Format::Hls.name().into()),
        from_ms: Some(req.start_ms),
        to_ms: Some(req.end_ms),
        task_id: None,
        limit: MAX_PAGE,
        cursor: None,
    };
    loop {
        let page = catalog.recordings(&q).await?;
        rows.extend(page.items.into_iter().filter(|r| r.upload_state != "failed"));
        match page.next {
            Some(c) if rows.len() < MAX_PLAYLISTS => q.cursor = Some(c),
            _ => break,
        }
    }
    let empty = || IndexError::Empty {
        app: req.app.clone(),
        stream: req.stream.clone(),
        from: super::events::rfc3339(req.start_ms.max(0) as u64),
        to: super::events::rfc3339(req.end_ms.max(0) as u64),
    };
    rows.sort_by_key(|r| (r.start_ms, r.id.clone()));
    // One storage holds the index: that of the first playlist; others' are left out.
    let storage_name = rows.first().ok_or_else(empty)?.storage.clone();
    rows.retain(|r| r.storage == storage_name);
    let storage = rt.storages.get(&storage_name).cloned().ok_or_else(|| IndexError::NoStorage(storage_name.clone()))?;
    let (from, to) = (req.start_ms.max(0) as u64, req.end_ms.max(0) as u64);
    let index_key = key.clone();
    let built = tokio::task::spawn_blocking(move || {
        let mut index = Playlist::new(1);
        let mut discontinuities = 0;
        for r in &rows {
            let Some(text) = storage.get(&r.key, MAX_PLAYLIST)? else {
                tracing::warn!(key = %r.key, "a catalogued playlist is missing; left out of the index");
                continue;
            };
            let Ok(pl) = Playlist::parse(&String::from_utf8_lossy(&text)) else {
                tracing::warn!(key = %r.key, "a catalogued playlist does not parse; left out of the index");
                continue;
            };
            let mut t = r.start_ms.max(0) as u64;
            let mut first = true;
            for s in &pl.segments {
                let start = s.program_date_time_ms.unwrap_or(t);
                let end = start + (s.duration_secs * 1000.0).round().max(0.0) as u64;
                t = end;
                if end <= from || start >= to {
                    continue;
                }
                // A new publish (or a break inside one) is a discontinuity.
                let discontinuity = !index.segments.is_empty() && (first || s.discontinuity);
                discontinuities += usize::from(discontinuity);
                first = false;
                index.segments.push(Segment {
                    uri: relative_uri(&index_key, &resolve(&r.key, &s.uri)),
                    duration_secs: s.duration_secs,
                    program_date_time_ms: Some(start),
                    discontinuity,
                });
            }
        }
        if index.segments.is_empty() {
            return Ok(None);
        }
        index.ended = true;
        let stored = if replace {
            storage.put(&index_key, index.render().as_bytes())?
        } else {
            let mut w = storage.create(&format!("index-{}.m3u8", crate::catalog::new_id()))?;
            w.write(&[index.render().into()])?;
            w.finish(&index_key, Finalize::default())?
        };
        let duration_ms = (index.duration_secs() * 1000.0).round() as u64;
        Ok::<_, StorageError>(Some((stored, index.segments.len(), discontinuities, duration_ms)))
    })
    .await
    .map_err(|e| IndexError::Invalid(format!("index task failed: {e}")))??;
    let (stored, segments, discontinuities, duration_ms) = built.ok_or_else(empty)?;
    tracing::info!(storage = %storage_name, key = %stored.key, segments, discontinuities, "index written");
    Ok(Index { storage: storage_name, key: stored.key, url: stored.location, segments, discontinuities, duration_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_completed() {
        assert_eq!(check_name("vod/day1").unwrap(), "vod/day1.m3u8");
        assert_eq!(check_name("a.m3u8").unwrap(), "a.m3u8");
        for bad in ["", "/abs.m3u8", "a/../b", "a//b", "./a", "a\nb", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(escaped(1_795_352_709_120), "2026-11-22-13-05-09");
    }
}
