//! Recovery at start: files a crash (SIGKILL, power loss) left unfinished are finished, stored
//! under the names they would have had, catalogued and announced.
//!
//! While a file is written its storage keeps a description beside it ([`Meta`], written when
//! the file is created). At start every storage lists what is left ([`Storage::partials`]); an
//! FLV gets its index rebuilt (a torn last tag is dropped), a fragmented MP4 becomes a
//! faststart MP4 of every complete fragment, an ADTS AAC file is kept as written. Its end is
//! the time of its last write. An unfinished HLS segment is cut to whole TS packets and stored
//! as its playlist's last segment; the playlist gets `#EXT-X-ENDLIST` and its final name. (A
//! crash between two segments, before the next one wrote anything, leaves the playlist as it
//! was, without `#EXT-X-ENDLIST`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::output::{rebase_playlist, relative_uri, segment_key};
use super::{Recorder, Runtime};
use crate::catalog::{new_id, Recording};
use crate::config::Format;
use crate::mux::hls::{Playlist, Segment};
use crate::policy::{random_id, FileInfo, StreamInfo};
use crate::storage::{Finalize, Partial, Storage};

/// What an unfinished file is (JSON beside it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub domain: String,
    pub app: String,
    pub stream: String,
    #[serde(default)]
    pub params: Vec<(String, String)>,
    pub session_id: String,
    pub task_id: Option<String>,
    pub template: String,
    pub format: Format,
    pub seq: u32,
    pub start_ms: u64,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    /// An HLS segment's playlist.
    #[serde(default)]
    pub playlist: Option<PlaylistMeta>,
}

impl Meta {
    /// What the policy names and announces: a file of this stream, size still unknown.
    fn file_info(&self, container: Format, sequence: u32, start_ms: u64, end_ms: u64, duration_ms: u64) -> FileInfo {
        FileInfo {
            container,
            sequence,
            start_ms,
            end_ms,
            size: 0,
            duration_ms,
            key: String::new(),
            session_id: self.session_id.clone(),
            task_id: self.task_id.clone(),
            random_id: random_id(),
        }
    }

    fn stream_info(&self, started_at_ms: u64) -> StreamInfo {
        StreamInfo {
            domain: self.domain.clone(),
            app: self.app.clone(),
            name: self.stream.clone(),
            params: self.params.clone(),
            video_codec: self.video_codec.clone(),
            audio_codec: self.audio_codec.clone(),
            started_at_ms,
        }
    }
}

/// The plugin chain that names and announces files of `template` (the default one when the
/// template is gone from the configuration).
fn policy_of(rt: &Runtime, template: &str) -> Arc<dyn crate::policy::Policy> {
    match rt.config.template.get(template) {
        Some(t) => rt.policy_for(t),
        None => rt.policy.clone(),
    }
}

/// Stores `data` under `key` (or a free variant of it).
fn store(storage: &Arc<dyn Storage>, ext: &str, data: Vec<u8>, key: &str) -> Result<crate::storage::Stored, String> {
    let mut w = storage.create(&format!("recovered-{}.{ext}", std::process::id())).map_err(|e| e.to_string())?;
    w.write(&[data.into()]).map_err(|e| e.to_string())?;
    w.finish(key, Finalize::default()).map_err(|e| e.to_string())
}

/// The playlist an HLS segment belongs to, as it was when the segment opened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlaylistMeta {
    /// Its key while recording (its segments' keys follow from it).
    pub key: String,
    pub seq: u32,
    pub start_ms: u64,
    pub target_secs: u64,
}

/// One recovered file, ready to catalog and announce.
struct Recovered {
    meta: Meta,
    info: StreamInfo,
    file: FileInfo,
    storage: String,
    /// Where a user finds it (a path, or a URL).
    location: String,
}

fn mtime_ms(path: &Path) -> Option<u64> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// Finishes one file; `Ok(None)` when there was nothing to keep.
fn recover_one(rt: &Runtime, name: &str, storage: &Arc<dyn Storage>, p: &Partial) -> Result<Option<Recovered>, String> {
    let meta: Meta = serde_json::from_slice(&p.meta).map_err(|e| format!("unreadable description: {e}"))?;
    let end_ms = mtime_ms(&p.path).unwrap_or(meta.start_ms).max(meta.start_ms);
    let mut scratch: Option<PathBuf> = None;
    let source = match meta.format {
        Format::Hls => return recover_hls(rt, name, storage, p, meta, end_ms),
        Format::Aac => p.path.clone(),
        Format::Flv | Format::Mp4 => {
            let out = p.path.with_extension(format!("recovered.{}", meta.format.extension()));
            super::remux::recover(&p.path, &out).map_err(|e| {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(x) = src {
                    s = format!("{s}: {x}");
                    src = x.source();
                }
                s
            })?;
            scratch = Some(out.clone());
            out
        }
    };
    let data = std::fs::read(&source).map_err(|e| format!("reading {}: {e}", source.display()))?;
    if data.is_empty() {
        return Ok(None);
    }
    let info = meta.stream_info(meta.start_ms);
    let mut file = meta.file_info(meta.format, meta.seq, meta.start_ms, end_ms, end_ms - meta.start_ms);
    file.size = data.len() as u64;
    let policy = policy_of(rt, &meta.template);
    let key = super::name_file(&rt.config, &meta.template, &*policy, &info, &file);
    let stored = store(storage, meta.format.extension(), data, &key)?;
    if let Some(s) = scratch {
        let _ = std::fs::remove_file(s);
    }
    file.key = stored.key.clone();
    file.size = stored.size;
    tracing::info!(storage = %name, key = %stored.key, bytes = stored.size, from = %p.path.display(), "recovered an unfinished file");
    Ok(Some(Recovered { meta, info, file, storage: name.to_string(), location: stored.location }))
}

/// An unfinished HLS segment: cut to whole TS packets, stored as the playlist's next segment;
/// the playlist gets it, `#EXT-X-ENDLIST` and its final name.
fn recover_hls(
    rt: &Runtime,
    name: &str,
    storage: &Arc<dyn Storage>,
    p: &Partial,
    meta: Meta,
    end_ms: u64,
) -> Result<Option<Recovered>, String> {
    let pl = meta.playlist.clone().ok_or("an HLS segment without its playlist")?;
    let mut data = std::fs::read(&p.path).map_err(|e| format!("reading {}: {e}", p.path.display()))?;
    data.truncate(data.len() / 188 * 188);
    let mut playlist = match storage.get(&pl.key, 16 << 20).map_err(|e| e.to_string())? {
        Some(text) => Playlist::parse(&String::from_utf8_lossy(&text)).map_err(|e| e.to_string())?,
        None => Playlist::new(pl.target_secs),
    };
    let mut bytes = 0;
    if !data.is_empty() {
        let seg = store(storage, "ts", data, &segment_key(&pl.key, meta.seq))?;
        bytes += seg.size;
        // Its length is what the wall clock saw, within the playlist's target.
        let wall = end_ms.saturating_sub(meta.start_ms) as f64 / 1000.0;
        let target = pl.target_secs.max(playlist.target_duration) as f64;
        playlist.segments.push(Segment {
            uri: relative_uri(&pl.key, &seg.key),
            duration_secs: if target > 0.0 { wall.min(target) } else { wall },
            program_date_time_ms: Some(meta.start_ms),
            discontinuity: false,
        });
    }
    if playlist.segments.is_empty() {
        return Ok(None);
    }
    let info = meta.stream_info(pl.start_ms);
    let duration_ms = (playlist.duration_secs() * 1000.0) as u64;
    let mut file = meta.file_info(Format::Hls, pl.seq, pl.start_ms, end_ms, duration_ms);
    let policy = policy_of(rt, &meta.template);
    let key = super::name_file(&rt.config, &meta.template, &*policy, &info, &file);
    let mut done = rebase_playlist(&playlist, &pl.key, &key);
    done.ended = true;
    let stored = store(storage, "m3u8", done.render().into_bytes(), &key)?;
    if stored.key != pl.key {
        if let Err(e) = storage.delete(&pl.key) {
            tracing::warn!(key = %pl.key, error = &e as &dyn std::error::Error, "live playlist not removed");
        }
    }
    file.key = stored.key.clone();
    file.size = bytes + stored.size;
    tracing::info!(storage = %name, key = %stored.key, segments = done.segments.len(), from = %p.path.display(), "recovered an unfinished file");
    Ok(Some(Recovered { meta, info, file, storage: name.to_string(), location: stored.location }))
}

impl Recorder {
    /// Finishes, stores, catalogues and announces every file a crash left unfinished, on every
    /// storage; returns how many were recovered. Run at start, before publishers arrive.
    pub async fn recover_partials(&self) -> usize {
        let rt = self.runtime();
        let mut recovered = 0;
        // Live playlists' lines a crash left: their stored playlists are what is recovered.
        let data_dir = rt.config.server.data_dir.clone();
        let _ = tokio::task::spawn_blocking(move || super::playlist::clear(&data_dir)).await;
        for (name, storage) in &rt.storages {
            let (rt2, name2, st) = (rt.clone(), name.clone(), storage.clone());
            let done = tokio::task::spawn_blocking(move || {
                let mut done = Vec::new();
                for p in st.partials() {
                    match recover_one(&rt2, &name2, &st, &p) {
                        Ok(r) => {
                            p.discard();
                            done.extend(r);
                        }
                        Err(e) => {
                            // Kept for `reel recover` by hand; not tried again at every start.
                            tracing::error!(file = %p.path.display(), "cannot recover: {e}");
                            p.forget();
                        }
                    }
                }
                done
            })
            .await
            .unwrap_or_default();
            for r in done {
                recovered += 1;
                metrics::counter!("reel_files_recovered_total").increment(1);
                if let Some(catalog) = self.catalog() {
                    let id = new_id();
                    let policy = policy_of(&rt, &r.meta.template);
                    let mut fields = super::events::file_fields(&r.file, &r.storage, &r.location, Some(&id));
                    fields.insert("template".into(), r.meta.template.clone().into());
                    fields.insert("recovered".into(), true.into());
                    let spec = super::events::Spec {
                        kind: crate::config::EVENT_FILE_CREATED,
                        stream: &r.info,
                        task_id: r.meta.task_id.as_deref(),
                        fields,
                        file: Some((&*policy, &r.file)),
                    };
                    let events = super::events::rows(&rt.config, &spec, crate::media::time::now_ms());
                    let row = Recording {
                        id,
                        domain: r.meta.domain.clone(),
                        app: r.meta.app.clone(),
                        stream: r.meta.stream.clone(),
                        format: r.meta.format.name().into(),
                        storage: r.storage.clone(),
                        key: r.file.key.clone(),
                        size: r.file.size,
                        duration_ms: r.file.duration_ms,
                        first_ts_ms: 0,
                        last_ts_ms: r.file.duration_ms as i64,
                        start_ms: r.file.start_ms as i64,
                        end_ms: r.file.end_ms as i64,
                        session_id: r.meta.session_id.clone(),
                        task_id: r.meta.task_id.clone(),
                        template: r.meta.template.clone(),
                        node_id: catalog.node_id().into(),
                        video_codec: r.meta.video_codec.clone(),
                        audio_codec: r.meta.audio_codec.clone(),
                        failed: true,
                        etag: None,
                        upload_state: "stored".into(),
                    };
                    if let Err(e) = catalog.insert_recording(&row).await {
                        tracing::error!(key = %row.key, error = &e as &dyn std::error::Error, "recovered file not catalogued");
                    }
                    super::queue_events(catalog, events).await;
                }
            }
        }
        if recovered > 0 {
            tracing::info!(files = recovered, "recovered files left unfinished by the last run");
        }
        recovered
    }
}
