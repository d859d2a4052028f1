//! One task per recorded publish: receives frames, feeds the outputs (one per format), and
//! acts on what they report: it names files (policy), stores them and announces them
//! (notify). Bytes go to the recording's writer thread ([`super::writer`]) as they come;
//! closing a file runs on the blocking pool as its own tracked task, after the writes queued
//! before it, so the stream never waits for it; HLS segments and playlists are stored in order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::task::TaskTracker;

use serde_json::{Map, Value};

use super::events::{self, file_fields};
use super::output::{rebase_playlist, relative_uri, segment_key, Body, Event, Output};
use super::playlist::LiveText;
use super::segmenter::Piece;
use super::timeline::Timeline;
use super::writer::WriteQueue;
use super::{queue_events, Msg, Parking, Resume, Runtime, StreamKey};
use crate::catalog::{new_id, Catalog, NewEvent, Recording};
use crate::config::{Format, Template};
use crate::media::time::now_ms;
use crate::media::{Frame, FrameKind};
use crate::mux::hls::{LivePlaylist, Playlist, Segment};
use crate::mux::Rewrite;
use crate::policy::{random_id, FileInfo, Plan, Policy, StreamInfo};
use crate::storage::{FileWriter, Finalize, Storage, StorageError, Stored};

/// Frames taken off the queue at a time.
const RECV_BATCH: usize = 16;

/// Counters of one publish, readable while it runs.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

/// Who a stream is and what decides for it; cloned into the tasks that close files.
#[derive(Clone)]
struct Ctx {
    rt: Arc<Runtime>,
    template_name: String,
    task_id: Option<String>,
    catalog: Option<Catalog>,
    tracker: TaskTracker,
    /// Decides naming and callbacks for this stream's files (the template's plugin chain).
    policy: Arc<dyn Policy>,
    info: StreamInfo,
    session_id: String,
    stats: Arc<StreamStats>,
}

impl Ctx {
    /// What an unfinished file is, kept beside it for recovery after a crash
    /// ([`super::recover`]).
    fn describe(
        &self,
        format: Format,
        seq: u32,
        start_ms: u64,
        playlist: Option<super::recover::PlaylistMeta>,
    ) -> Vec<u8> {
        let meta = super::recover::Meta {
            domain: self.info.domain.clone(),
            app: self.info.app.clone(),
            stream: self.info.name.clone(),
            params: self.info.params.clone(),
            session_id: self.session_id.clone(),
            task_id: self.task_id.clone(),
            template: self.template_name.clone(),
            format,
            seq,
            start_ms,
            video_codec: self.info.video_codec.clone(),
            audio_codec: self.info.audio_codec.clone(),
            playlist,
        };
        serde_json::to_vec(&meta).unwrap_or_default()
    }

    /// The start of this recording's temporary file names: app and stream (cut to 40 bytes
    /// each, so that a 255-byte name still makes a valid file name), the publish and the task.
    fn stem(&self) -> String {
        let cut = |s: &str| s.get(..40).unwrap_or(s).to_string();
        let task = self.task_id.as_ref().map(|t| format!("-task-{t}")).unwrap_or_default();
        format!("{}-{}-{}{task}", cut(&self.info.app), cut(&self.info.name), self.session_id)
    }

    fn file_info(&self, format: Format, seq: u32, start_ms: u64, end_ms: u64) -> FileInfo {
        FileInfo {
            container: format,
            sequence: seq,
            start_ms,
            end_ms,
            size: 0,
            duration_ms: 0,
            key: String::new(),
            session_id: self.session_id.clone(),
            task_id: self.task_id.clone(),
            random_id: random_id(),
        }
    }

    /// The storage key of `fi` (the template's `name`, a naming plugin, or the built-in name).
    fn key(&self, fi: &FileInfo) -> String {
        super::name_file(&self.rt.config, &self.template_name, &*self.policy, &self.info, fi)
    }

    /// The outbox rows of an event about this recording.
    fn event(&self, kind: &'static str, mut fields: Map<String, Value>, file: Option<&FileInfo>) -> Vec<NewEvent> {
        fields.entry("session_id").or_insert_with(|| self.session_id.clone().into());
        fields.entry("template").or_insert_with(|| self.template_name.clone().into());
        let spec = events::Spec {
            kind,
            stream: &self.info,
            task_id: self.task_id.as_deref(),
            fields,
            file: file.map(|f| (&*self.policy as &dyn Policy, f)),
        };
        events::rows(&self.rt.config, &spec, now_ms())
    }

    /// Queues an event about this recording (in a tracked task: shutdown waits for it).
    fn emit(&self, kind: &'static str, fields: Map<String, Value>) {
        let rows = self.event(kind, fields, None);
        if let (false, Some(catalog)) = (rows.is_empty(), self.catalog.clone()) {
            self.tracker.spawn(async move { queue_events(&catalog, rows).await });
        }
    }

    /// Queues `record_failed`: data was lost (`reason`); the recording may go on.
    fn failed(&self, format: Format, reason: String) {
        let mut fields = Map::new();
        fields.insert("format".into(), format.name().into());
        fields.insert("reason".into(), reason.into());
        self.emit("record_failed", fields);
    }

    /// Counts, logs, catalogs and announces a stored file.
    fn announce(&self, mut fi: FileInfo, stored: &Stored, failed: bool, piece: &Piece, storage: &str) {
        self.stats.files.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("reel_files_total", "format" => fi.container.name()).increment(1);
        metrics::counter!("reel_file_bytes_total", "format" => fi.container.name()).increment(stored.size);
        fi.size = stored.size;
        fi.key = stored.key.clone();
        tracing::info!(app = %self.info.app, stream = %self.info.name, format = fi.container.name(), file = %stored.location,
            bytes = stored.size, duration_s = fi.duration_ms as f64 / 1000.0, failed, "file closed");
        let id = new_id();
        let fields = file_fields(&fi, storage, &stored.location, self.catalog.is_some().then_some(id.as_str()));
        let events = self.event(crate::config::EVENT_FILE_CREATED, fields, Some(&fi));
        if let Some(catalog) = &self.catalog {
            let row = Recording {
                id,
                domain: self.info.domain.clone(),
                app: self.info.app.clone(),
                stream: self.info.name.clone(),
                format: fi.container.name().into(),
                storage: storage.into(),
                key: stored.key.clone(),
                size: stored.size,
                duration_ms: fi.duration_ms,
                first_ts_ms: piece.first_dts,
                last_ts_ms: piece.last_dts,
                start_ms: fi.start_ms as i64,
                end_ms: fi.end_ms as i64,
                session_id: self.session_id.clone(),
                task_id: self.task_id.clone(),
                template: self.template_name.clone(),
                node_id: catalog.node_id().into(),
                video_codec: self.info.video_codec.clone(),
                audio_codec: self.info.audio_codec.clone(),
                failed,
                etag: stored.etag.clone(),
                upload_state: if stored.pending { "spooled" } else { "stored" }.into(),
            };
            let catalog = catalog.clone();
            let daily_index = fi.container == Format::Hls
                && self.rt.config.template.get(&self.template_name).is_some_and(|t| t.daily_index);
            let daily = daily_index.then(|| self.rt.clone());
            self.tracker.spawn(async move {
                if let Err(e) = catalog.insert_recording_in_burst(&row).await {
                    metrics::counter!("reel_catalog_errors_total").increment(1);
                    tracing::error!(key = %row.key, error = &e as &dyn std::error::Error, "recording not catalogued");
                }
                queue_events(&catalog, events).await;
                if let Some(rt) = daily {
                    super::index::daily(&catalog, &rt, &row.domain, &row.app, &row.stream, row.start_ms as u64).await;
                }
            });
        }
    }
}

/// A recording's identity: the publish it belongs to and the task it records for.
pub(crate) struct Ids {
    pub session_id: String,
    pub task_id: Option<String>,
}

/// How the writer thread creates a file at its first batch: storage, temporary name hint,
/// description for recovery.
type Create = (Arc<dyn Storage>, String, Vec<u8>);

/// An open file (or HLS segment) while the writer thread writes it: created there at its first
/// batch, written there, and taken back to be closed once the writes before the close ran.
#[derive(Default)]
struct LiveFile(Mutex<Written>);

#[derive(Default)]
struct Written {
    writer: Option<Box<dyn FileWriter>>,
    /// The first failure, as the `record_failed` reason; nothing is written after it.
    failure: Option<String>,
    /// The failure was logged and announced.
    reported: bool,
}

impl LiveFile {
    fn state(&self) -> std::sync::MutexGuard<'_, Written> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On the writer thread: creates the file if it is new, then appends `chunks`.
    fn write(&self, chunks: &[bytes::Bytes], create: Option<Create>) {
        let mut s = self.state();
        if s.failure.is_some() {
            return;
        }
        if s.writer.is_none() {
            let Some((storage, hint, meta)) = create else { return };
            match storage.create_described(&hint, &meta) {
                Ok(w) => s.writer = Some(w),
                Err(e) => {
                    s.failure = Some(format!("cannot create file: {}", chain(&e)));
                    return;
                }
            }
        }
        if let Some(Err(e)) = s.writer.as_mut().map(|w| w.write(chunks)) {
            s.failure = Some(format!("write failed, the file ends here: {}", chain(&e)));
        }
    }

    /// A failure nobody reported yet (the caller reports it).
    fn unreported(&self) -> Option<String> {
        let mut s = self.state();
        if s.reported {
            return None;
        }
        s.reported = s.failure.is_some();
        s.failure.clone()
    }

    /// Takes the writer back, with whether a write failed and the failure nobody reported yet.
    fn take(&self) -> (Option<Box<dyn FileWriter>>, bool, Option<String>) {
        let unreported = self.unreported();
        let mut s = self.state();
        (s.writer.take(), s.failure.is_some(), unreported)
    }
}

/// Hands a live file's writer back to `body` to be closed (after the writes queued before):
/// a failure marks the body failed and, if nobody reported it yet, is reported now.
fn take_back(file: Option<Arc<LiveFile>>, body: &mut Body, ctx: &Ctx, format: Format) {
    let Some(file) = file else { return };
    let (writer, failed, unreported) = file.take();
    body.writer = writer;
    body.write_failed |= failed;
    if let Some(why) = unreported {
        tracing::error!(stream = %ctx.info.name, format = format.name(), "{why}");
        ctx.failed(format, why);
    }
}

/// One output and the storage its files go to.
struct Slot {
    out: Output,
    /// Its open file or segment, once its first batch went to the writer thread.
    file: Option<Arc<LiveFile>>,
    storage: Arc<dyn Storage>,
    storage_name: String,
    /// Wall-clock start of the open file (HLS: playlist).
    file_start_ms: u64,
    /// Sequence number of the open file (HLS: playlist).
    file_seq: u32,
    /// Frames a muxer refused so far (logged sparingly).
    skipped: u64,
}

pub(crate) struct StreamTask {
    ctx: Ctx,
    /// The recorder's current runtime: a reload reaches this recording at its next cut.
    live: Arc<RwLock<Arc<Runtime>>>,
    tracker: TaskTracker,
    slots: Vec<Slot>,
    events: Vec<Event>,
    overflow: Arc<AtomicBool>,
    /// Temporary files created, for unique names.
    created: u64,
    /// Where it waits for its publisher to come back, and for how long at most.
    parking: Arc<Parking>,
    resume_window_ms: u64,
    /// Where a resumed publish's frames go.
    timeline: Timeline,
    /// Where its files are written.
    queue: WriteQueue,
}

impl StreamTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rt: Arc<Runtime>,
        live: Arc<RwLock<Arc<Runtime>>>,
        info: StreamInfo,
        (template_name, template): (String, Template),
        ids: Ids,
        overflow: Arc<AtomicBool>,
        stats: Arc<StreamStats>,
        tracker: TaskTracker,
        catalog: Option<Catalog>,
        parking: Arc<Parking>,
        queue: WriteQueue,
    ) -> Self {
        let storage = rt.storages.get(&template.storage).cloned();
        let policy = rt.policy_for(&template);
        let mut slots = Vec::with_capacity(template.formats.len());
        let mut resume_window_ms = 0u64;
        if let Some(storage) = storage {
            let default = Plan {
                interval_ms: template.interval.as_millis(),
                hls_segment_ms: template.hls_segment.as_millis().min(u64::from(u32::MAX)) as u32,
                resume_window_ms: template.resume_window.as_millis().min(u64::from(u32::MAX)) as u32,
            };
            for &format in &template.formats {
                // Segmentation is a policy decision, made once per stream and format.
                // HLS cuts playlists by its own cycle (none by default).
                let default = match format {
                    Format::Hls => Plan { interval_ms: template.hls_interval.as_millis(), ..default },
                    _ => default,
                };
                let plan = policy.plan(&info, format, default);
                resume_window_ms =
                    resume_window_ms.max(u64::from(plan.resume_window_ms).min(crate::config::MAX_RESUME_WINDOW_MS));
                let server = &rt.config.server;
                // A recording writes at the end of each read of its publisher too.
                let every_ms = server.flush_interval.as_millis().min(crate::config::READ_BEAT_MS);
                let out = Output::new(format, plan.interval_ms, u64::from(plan.hls_segment_ms))
                    .drained(every_ms, server.flush_bytes as u64);
                slots.push(Slot {
                    out,
                    file: None,
                    storage: storage.clone(),
                    storage_name: template.storage.clone(),
                    file_start_ms: 0,
                    file_seq: 0,
                    skipped: 0,
                });
            }
        } else {
            tracing::error!(storage = %template.storage, "template names a storage that is not configured; not recording");
        }
        let ctx = Ctx {
            rt,
            template_name,
            task_id: ids.task_id,
            catalog,
            tracker: tracker.clone(),
            policy,
            info,
            session_id: ids.session_id,
            stats,
        };
        Self {
            ctx,
            live,
            tracker,
            slots,
            events: Vec::new(),
            overflow,
            created: 0,
            parking,
            resume_window_ms,
            timeline: Timeline::default(),
            queue,
        }
    }

    /// Where this recording parks: its stream, task and template.
    fn park_key(&self) -> (StreamKey, Option<String>, String) {
        let i = &self.ctx.info;
        (
            StreamKey { domain: i.domain.clone(), app: i.app.clone(), name: i.name.clone() },
            self.ctx.task_id.clone(),
            self.ctx.template_name.clone(),
        )
    }

    /// The publisher left: inside a resume window, closes the open HLS segment, writes what is
    /// pending, and waits for the same stream to be published again. Returns its frames, or
    /// `None` when the window passes (or the node shuts down).
    async fn wait_for_resume(&mut self) -> Option<mpsc::Receiver<Msg>> {
        if self.resume_window_ms == 0 || self.slots.is_empty() || self.parking.stopping.is_cancelled() {
            return None;
        }
        let key = self.park_key();
        let back = self.parking.park(key.clone(), self.overflow.clone());
        let now = now_ms();
        for i in 0..self.slots.len() {
            let mut events = std::mem::take(&mut self.events);
            self.slots[i].out.pause(now, &mut events);
            self.handle(i, &mut events, false).await;
            self.events = events;
        }
        self.flush().await;
        // An open HLS playlist has no file being written while it waits: a described empty one
        // stands for it, so a crash meanwhile still ends and names the playlist at the next start.
        let mut markers = Vec::new();
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            let Some(hls) = slot.out.hls.as_ref() else { continue };
            let Some(key) = hls.live_key.clone() else { continue };
            let playlist = super::recover::PlaylistMeta {
                key,
                seq: slot.file_seq,
                start_ms: slot.file_start_ms,
                target_secs: hls.playlist.target_duration(),
            };
            let meta = self.ctx.describe(Format::Hls, hls.playlist.len() as u32, now, Some(playlist));
            let (storage, hint) = (slot.storage.clone(), self.hint(Format::Hls));
            match tokio::task::spawn_blocking(move || storage.create_described(&hint, &meta)).await {
                Ok(Ok(w)) => markers.push(w),
                Ok(Err(e)) => {
                    tracing::warn!(error = &e as &dyn std::error::Error, "no recovery marker for a waiting playlist")
                }
                Err(e) => {
                    tracing::warn!(error = &e as &dyn std::error::Error, "no recovery marker for a waiting playlist")
                }
            }
        }
        tracing::info!(app = %self.ctx.info.app, stream = %self.ctx.info.name, task = ?self.ctx.task_id,
            window_s = self.resume_window_ms / 1000, "publisher gone; the recording waits for it to come back");
        let window = std::time::Duration::from_millis(self.resume_window_ms);
        let resumed = tokio::select! {
            r = back => r.ok(),
            _ = tokio::time::sleep(window) => None,
            _ = self.parking.stopping.cancelled() => None,
        };
        if !markers.is_empty() {
            self.tracker.spawn_blocking(move || markers.into_iter().for_each(|w| w.abort()));
        }
        let Some(Resume { rx, info, stats }) = resumed else {
            self.parking.unpark(&key);
            return None;
        };
        // The new publish's parameters and counters; the files and their names go on.
        self.ctx.info.params = info.params;
        self.ctx.stats = stats;
        for s in &mut self.slots {
            s.out.resume();
        }
        self.timeline.resume();
        Some(rx)
    }

    pub async fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let started = Instant::now();
        let mut fields = Map::new();
        fields.insert("formats".into(), self.slots.iter().map(|s| Value::from(s.out.format.name())).collect());
        self.ctx.emit("record_started", fields);
        let mut rx = Some(rx);
        while let Some(r) = rx.take() {
            self.receive(r).await;
            if !self.overflow.load(Ordering::Acquire) {
                rx = self.wait_for_resume().await;
            }
        }
        self.end(started).await;
    }

    /// Records one publish's frames until its publisher leaves.
    async fn receive(&mut self, mut rx: mpsc::Receiver<Msg>) {
        let server = &self.ctx.rt.config.server;
        let flush_every = server.flush_interval.std();
        let flush_bytes = server.flush_bytes;
        let mut next_flush = Instant::now() + flush_every;
        let mut batch = Vec::with_capacity(RECV_BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, RECV_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let now = now_ms();
                    let mut read_done = false;
                    for msg in batch.drain(..) {
                        match msg {
                            Msg::Frame(f) => {
                                let f = self.timeline.place(f);
                                self.on_frame(f, now).await;
                            }
                            Msg::ReadDone => read_done = true,
                        }
                    }
                    if self.overflow.load(Ordering::Acquire) {
                        break;
                    }
                    // One file over its batch size writes every file's batch: one hand-off.
                    // So does a file or segment just opened: its partial, which tells recovery
                    // what it is (an HLS segment names its live playlist), exists at once, not
                    // up to a batch later, and a crash at any moment leaves it recoverable.
                    // So does the end of a read (a beat of the stream's media,
                    // `config::READ_BEAT_MS`): its frames are written from their read block,
                    // not copied out of it to wait for a batch, and the block goes once written.
                    let due = |s: &Slot| {
                        let n = s.out.pending_bytes();
                        n > 0 && (n >= flush_bytes || s.file.is_none())
                    };
                    if read_done || self.slots.iter().any(due) {
                        self.flush().await;
                        next_flush = Instant::now() + flush_every;
                    }
                }
                _ = sleep_until(next_flush) => {
                    self.flush().await;
                    next_flush = Instant::now() + flush_every;
                }
            }
        }
    }

    /// The recording ends: its files close, are stored and announced.
    async fn end(mut self, started: Instant) {
        let failed = self.overflow.load(Ordering::Acquire);
        if failed {
            for s in &self.slots {
                self.ctx
                    .failed(s.out.format, "the recording fell behind its queue (storage too slow?) and ended".into());
            }
        }
        let now = now_ms();
        for i in 0..self.slots.len() {
            let mut events = std::mem::take(&mut self.events);
            self.slots[i].out.finish(now, &mut events);
            self.handle(i, &mut events, failed).await;
            self.events = events;
        }
        // The recording's last closes do not wait out the writer thread's pause (a cut's do).
        self.queue.wake();
        let s = &self.ctx.stats;
        tracing::info!(
            app = %self.ctx.info.app, stream = %self.ctx.info.name, session = %self.ctx.session_id,
            duration_s = started.elapsed().as_secs_f64(), frames = s.frames.load(Ordering::Relaxed),
            bytes = s.bytes.load(Ordering::Relaxed), files = s.files.load(Ordering::Relaxed),
            task = ?self.ctx.task_id, error = failed, "recording ended"
        );
        let mut fields = Map::new();
        fields.insert("duration_ms".into(), (started.elapsed().as_millis() as u64).into());
        fields.insert("frames".into(), s.frames.load(Ordering::Relaxed).into());
        fields.insert("bytes".into(), s.bytes.load(Ordering::Relaxed).into());
        fields.insert("files".into(), s.files.load(Ordering::Relaxed).into());
        fields.insert("failed".into(), failed.into());
        self.ctx.emit("record_ended", fields);
    }

    async fn on_frame(&mut self, f: Frame, now: u64) {
        let ctx = &mut self.ctx;
        match f.kind {
            FrameKind::Video => {
                ctx.info.video_codec.get_or_insert_with(|| f.codec.name().into());
            }
            FrameKind::Audio => {
                ctx.info.audio_codec.get_or_insert_with(|| f.codec.name().into());
            }
            FrameKind::Data => {}
        }
        // Kept frames (sequence headers, metadata) must not pin the block they arrived in.
        let f = if f.config || f.kind == FrameKind::Data { f.owned() } else { f };
        let cut_point = f.is_sample() && f.keyframe && (f.kind == FrameKind::Video || !self.timeline.has_video());
        if cut_point {
            // Files opened from here on follow the latest reload (naming, callbacks).
            let rt = self.live.read().unwrap_or_else(|e| e.into_inner()).clone();
            if !Arc::ptr_eq(&rt, &ctx.rt) {
                if let Some(t) = rt.config.template.get(&ctx.template_name) {
                    ctx.policy = rt.policy_for(t);
                }
                ctx.rt = rt;
            }
        }
        for i in 0..self.slots.len() {
            let mut events = std::mem::take(&mut self.events);
            self.slots[i].out.push(&f, now, &mut events);
            if !events.is_empty() {
                self.handle(i, &mut events, false).await;
            }
            self.events = events;
        }
    }

    fn hint(&mut self, format: Format) -> String {
        self.created += 1;
        format!("{}-{}.{}", self.ctx.stem(), self.created, format.extension())
    }

    /// Hands the pending bytes of every open file (each created at its first batch) to the
    /// writer thread, in one job: one hand-off per stream, not one per format, and no wait.
    async fn flush(&mut self) {
        for i in 0..self.slots.len() {
            // What a muxer holds for its framing (an MP4 fragment) goes with this write.
            let mut events = std::mem::take(&mut self.events);
            self.slots[i].out.drain(&mut events);
            if !events.is_empty() {
                self.handle(i, &mut events, false).await;
            }
            self.events = events;
        }
        let mut jobs: Vec<(Arc<LiveFile>, crate::mux::Chunks, Option<Create>)> = Vec::new();
        let mut bytes = 0;
        for i in 0..self.slots.len() {
            self.check_failure(i);
            let format = self.slots[i].out.format;
            let Some(body) = &mut self.slots[i].out.body else { continue };
            if body.write_failed {
                // Storage failed: what comes after is not written (the file keeps what it has).
                body.take_pending();
                continue;
            }
            if body.pending.is_empty() {
                continue;
            }
            let create = if self.slots[i].file.is_none() {
                let hint = self.hint(format);
                let slot = &self.slots[i];
                let Some(body) = &slot.out.body else { continue };
                let playlist =
                    slot.out.hls.as_ref().and_then(|h| h.live_key.clone()).map(|key| super::recover::PlaylistMeta {
                        key,
                        seq: slot.file_seq,
                        start_ms: slot.file_start_ms,
                        target_secs: slot.out.hls.as_ref().map_or(0, |h| h.playlist.target_duration()),
                    });
                Some((slot.storage.clone(), hint, self.ctx.describe(format, body.seq, body.opened_ms, playlist)))
            } else {
                None
            };
            let slot = &mut self.slots[i];
            let Some(body) = &mut slot.out.body else { continue };
            bytes += body.pending_bytes;
            let file = slot.file.get_or_insert_with(Default::default).clone();
            jobs.push((file, body.take_pending(), create));
        }
        if jobs.is_empty() {
            return;
        }
        self.queue
            .submit(bytes, move || {
                for (file, chunks, create) in jobs {
                    file.write(&chunks, create);
                }
            })
            .await;
    }

    /// Reports a failure the writer thread met on slot `i`'s file since the last look: the
    /// file ends at its last whole write.
    fn check_failure(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let Some(why) = slot.file.as_ref().and_then(|f| f.unreported()) else { return };
        if let Some(body) = &mut slot.out.body {
            body.write_failed = true;
        }
        tracing::error!(stream = %self.ctx.info.name, format = slot.out.format.name(), "{why}");
        self.ctx.failed(slot.out.format, why);
    }

    async fn handle(&mut self, i: usize, events: &mut Vec<Event>, failed: bool) {
        // A segment that ends its playlist's file: the final playlist stored next lists it.
        let file_ends = events.iter().position(|e| matches!(e, Event::File { .. }));
        for (at, ev) in events.drain(..).enumerate() {
            let format = self.slots[i].out.format;
            match ev {
                Event::Opened { seq } => {
                    let now = now_ms();
                    self.slots[i].file_start_ms = now;
                    self.slots[i].file_seq = seq;
                    if self.slots[i].out.hls.is_some() {
                        // While recording, the playlist sits at the name its start gives, and
                        // its lines in a file of their own.
                        let fi = self.ctx.file_info(Format::Hls, seq, now, now);
                        let key = self.ctx.key(&fi);
                        self.created += 1;
                        let lines = self.ctx.rt.config.server.data_dir.join(super::playlist::PLAYLIST_DIR);
                        let lines = lines.join(format!("{}-{}.m3u8", self.ctx.stem(), self.created));
                        if let Some(hls) = &mut self.slots[i].out.hls {
                            hls.live_key = Some(key);
                            hls.playlist = LivePlaylist::new(hls.playlist.target_duration());
                            hls.text = Some(LiveText::new(lines));
                            hls.bytes = 0;
                        }
                    }
                }
                Event::Segment { piece, body, discontinuity } => {
                    let hint = self.hint(Format::Hls);
                    let last = file_ends.is_some_and(|f| at < f);
                    self.store_segment(i, piece, body, discontinuity, hint, last).await;
                }
                Event::File { piece, body, rewrite, failed: mux_failed } => {
                    if format == Format::Hls {
                        self.close_playlist(i, piece).await;
                    } else {
                        let hint = self.hint(format);
                        self.close_file(i, piece, body, rewrite, failed || mux_failed, hint);
                    }
                }
                Event::Disabled(e, writer) => {
                    let file = self.slots[i].file.take();
                    if writer.is_some() || file.is_some() {
                        self.after_writes(move || {
                            let taken = file.and_then(|f| f.take().0);
                            writer.into_iter().chain(taken).for_each(|w| w.abort());
                        });
                    }
                    tracing::warn!(format = format.name(), stream = %self.ctx.info.name, "skipping format for this stream: {e}");
                }
                Event::Skipped(e) => {
                    // One line per bad frame would flood the log: the 1st, 2nd, 4th, 8th…
                    let slot = &mut self.slots[i];
                    slot.skipped += 1;
                    if slot.skipped.is_power_of_two() {
                        tracing::warn!(format = format.name(), stream = %self.ctx.info.name, skipped = slot.skipped,
                            error = &e as &dyn std::error::Error, "frame not written");
                    }
                }
            }
        }
    }

    /// Finalises, names, stores and announces a closed file, in a tracked blocking task that
    /// starts once the writes queued before it ran.
    fn close_file(&mut self, i: usize, piece: Piece, body: Body, rewrite: Option<Rewrite>, failed: bool, hint: String) {
        let file = self.slots[i].file.take();
        let slot = &self.slots[i];
        let (storage, ctx, format, start_ms, storage_name) =
            (slot.storage.clone(), self.ctx.clone(), slot.out.format, body.opened_ms, slot.storage_name.clone());
        let end_ms = now_ms();
        let closing =
            Closing { file, piece, body, rewrite, failed, hint, storage, storage_name, start_ms, end_ms, format };
        self.after_writes(move || finish_file(closing, ctx));
    }

    /// Runs `f` on the blocking pool, as a tracked task, once the writes queued so far ran:
    /// the writer thread hands it over after them (no task waits for a barrier, no wake-up
    /// back). Tracked from now: shutdown waits for it while it is still in the queue.
    fn after_writes(&self, f: impl FnOnce() + Send + 'static) {
        let (tracker, handle, queued) = (self.tracker.clone(), tokio::runtime::Handle::current(), self.tracker.token());
        self.queue.then(move || {
            tracker.spawn_blocking_on(f, &handle);
            drop(queued);
        });
    }

    /// Stores a closed HLS segment under its playlist's name and rewrites the playlist, unless
    /// the segment is its file's `last`: then the final playlist, stored next, is the one that
    /// lists it (one storing of the playlist at each cut, not two). All of it is one blocking
    /// job, queued behind the segment's writes ([`Self::after_writes`]): the stream waits for
    /// its result (segments and playlists are stored in order) but wakes no thread to get there.
    async fn store_segment(
        &mut self,
        i: usize,
        piece: Piece,
        body: Body,
        discontinuity: bool,
        hint: String,
        last: bool,
    ) {
        let file = self.slots[i].file.take();
        let slot = &mut self.slots[i];
        let Some(hls) = &mut slot.out.hls else { return };
        let Some(live) = hls.live_key.clone() else { return };
        let opened_ms = body.opened_ms;
        let job = SegmentJob {
            file,
            body,
            ctx: self.ctx.clone(),
            storage: slot.storage.clone(),
            live,
            reserve: hls.playlist.is_empty().then(|| hls.playlist.header()),
            hint,
            piece,
            discontinuity,
            playlist: hls.playlist.clone(),
            text: if last { None } else { hls.text.clone() },
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_writes(move || {
            let _ = tx.send(job.run());
        });
        let stream = self.ctx.info.name.clone();
        let done = match rx.await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::error!(%stream, error = &e as &dyn std::error::Error, "HLS segment lost");
                self.ctx.failed(Format::Hls, format!("HLS segment {} lost: {}", piece.seq, chain(&e)));
                return;
            }
            Err(_) => {
                tracing::error!(%stream, "HLS segment task did not run");
                return;
            }
        };
        let slot = &mut self.slots[i];
        let Some(hls) = &mut slot.out.hls else { return };
        let SegmentStored { live, stored, playlist, text } = done;
        hls.live_key = Some(live.clone());
        hls.bytes += stored.size;
        hls.playlist = playlist;
        if let Some(text) = text {
            hls.text = Some(text);
        }
        let mut fields = Map::new();
        fields.insert("storage".into(), slot.storage_name.clone().into());
        fields.insert("key".into(), stored.key.clone().into());
        fields.insert("url".into(), stored.location.clone().into());
        fields.insert("playlist".into(), live.into());
        fields.insert("sequence".into(), piece.seq.into());
        fields.insert("size".into(), stored.size.into());
        fields.insert("duration_ms".into(), piece.duration_ms.into());
        fields.insert("start_time".into(), events::rfc3339(opened_ms).into());
        self.ctx.emit(crate::config::EVENT_SEGMENT_CREATED, fields);
    }

    /// The playlist is complete: it gets its final name (with its real end time), the live one
    /// goes, and it is announced.
    async fn close_playlist(&mut self, i: usize, piece: Piece) {
        let slot = &mut self.slots[i];
        let Some(hls) = &mut slot.out.hls else { return };
        let Some(live) = hls.live_key.take() else { return };
        let Some(text) = hls.text.take() else { return };
        if hls.playlist.is_empty() {
            self.tracker.spawn_blocking(move || text.remove());
            return;
        }
        let mut fi = self.ctx.file_info(Format::Hls, piece.seq, slot.file_start_ms, now_ms());
        fi.duration_ms = piece.duration_ms;
        fi.size = hls.bytes;
        let key = self.ctx.key(&fi);
        let (header, lines) = (hls.playlist.header(), hls.playlist.take_lines());
        let storage = slot.storage.clone();
        let storage_name = slot.storage_name.clone();
        let hint = format!("{}.m3u8", self.ctx.stem());
        let ctx = self.ctx.clone();
        let res = tokio::task::spawn_blocking(move || {
            let body = text.text(&header, &lines);
            // The text is read: its file goes whatever happens next (the live playlist stored so
            // far stays where it is if the final one cannot be stored).
            text.remove();
            let body = body.map_err(|e| format!("reading its lines: {e}"))?;
            let playlist = Playlist::parse(&String::from_utf8_lossy(&body))
                .map_err(|e| format!("its text is not a playlist (the live one stays): {e}"))?;
            let mut playlist = rebase_playlist(&playlist, &live, &key);
            playlist.ended = true;
            let stored = if key == live {
                storage.put(&key, playlist.render().as_bytes())
            } else {
                // A taken key gets a suffix in the same folder: the URIs stay right.
                storage.create(&hint).and_then(|mut w| {
                    w.write(&[playlist.render().into()])?;
                    w.finish(&key, Finalize::default())
                })
            }
            .map_err(|e| chain(&e))?;
            if stored.key != live {
                // The final playlist is stored: a live one left behind is not worth failing it.
                if let Err(e) = storage.delete(&live) {
                    tracing::warn!(key = %live, error = &e as &dyn std::error::Error, "live playlist not removed");
                }
            }
            Ok::<_, String>(stored)
        })
        .await;
        match res {
            Ok(Ok(stored)) => {
                tracing::debug!(segments = hls.playlist.len(), "playlist closed");
                ctx.announce(fi, &Stored { size: hls.bytes, ..stored }, false, &piece, &storage_name);
            }
            Ok(Err(e)) => tracing::error!(stream = %ctx.info.name, "closing HLS playlist: {e}"),
            Err(e) => {
                tracing::error!(stream = %ctx.info.name, error = &e as &dyn std::error::Error, "playlist task failed")
            }
        }
    }
}

/// A closed HLS segment on its way to storage, with its playlist ([`StreamTask::store_segment`]).
struct SegmentJob {
    file: Option<Arc<LiveFile>>,
    body: Body,
    ctx: Ctx,
    storage: Arc<dyn Storage>,
    /// The live playlist's key, and its header when this segment is its first (its name is
    /// reserved then: another recording may hold it).
    live: String,
    reserve: Option<String>,
    hint: String,
    piece: Piece,
    discontinuity: bool,
    /// The recording's playlist, given back with the segment in it.
    playlist: LivePlaylist,
    /// Where its lines are kept, when the playlist is stored anew after this segment.
    text: Option<LiveText>,
}

/// A stored segment, and its playlist as it now stands.
struct SegmentStored {
    live: String,
    stored: Stored,
    playlist: LivePlaylist,
    text: Option<LiveText>,
}

impl SegmentJob {
    /// Stores the segment, then (unless it is its file's last) appends its lines to the
    /// playlist's file and stores the playlist anew from it; lines the file could not take stay
    /// in memory until it can. A playlist that cannot be stored is logged: the segment is.
    fn run(self) -> Result<SegmentStored, StorageError> {
        let SegmentJob { file, mut body, ctx, storage, live, reserve, hint, piece, discontinuity, mut playlist, text } =
            self;
        take_back(file, &mut body, &ctx, Format::Hls);
        let live = match reserve {
            Some(text) => {
                let mut w = storage.create(&format!("{hint}.m3u8"))?;
                w.write(&[text.into()])?;
                w.finish(&live, Finalize::default())?.key
            }
            None => live,
        };
        let mut w = match body.writer.take() {
            Some(w) => w,
            None => storage.create(&hint)?,
        };
        if !body.write_failed {
            w.write(&body.pending)?;
        }
        let stored = w.finish(&segment_key(&live, piece.seq), Finalize::default())?;
        playlist.push(&Segment {
            uri: relative_uri(&live, &stored.key),
            duration_secs: piece.duration_ms as f64 / 1000.0,
            program_date_time_ms: Some(body.opened_ms),
            discontinuity,
        });
        let text = text.map(|mut text| {
            let stream = &ctx.info.name;
            let mut lines = playlist.take_lines();
            if let Err(e) = text.append(&mut lines) {
                tracing::error!(%stream, error = &e as &dyn std::error::Error, "keeping the HLS playlist's lines (held in memory meanwhile)");
            }
            let put = text
                .text(&playlist.header(), &lines)
                .map_err(|source| StorageError::Io { op: "read", path: text.path().display().to_string(), source })
                .and_then(|body| storage.put(&live, &body));
            if let Err(e) = put {
                tracing::error!(%stream, error = &e as &dyn std::error::Error, "writing HLS playlist");
            }
            playlist.give_back(lines);
            text
        });
        Ok(SegmentStored { live, stored, playlist, text })
    }
}

/// A closed file on its way to storage ([`StreamTask::close_file`]).
struct Closing {
    file: Option<Arc<LiveFile>>,
    piece: Piece,
    body: Body,
    rewrite: Option<Rewrite>,
    failed: bool,
    hint: String,
    storage: Arc<dyn Storage>,
    storage_name: String,
    start_ms: u64,
    end_ms: u64,
    format: Format,
}

/// Finalises, names, stores and announces a closed file (on the blocking pool, after the
/// writes queued before the close).
fn finish_file(c: Closing, ctx: Ctx) {
    let Closing { file, piece, mut body, rewrite, failed, hint, storage, storage_name, start_ms, end_ms, format } = c;
    take_back(file, &mut body, &ctx, format);
    if piece.samples == 0 || (body.write_failed && body.writer.is_none()) {
        // Nothing, or nothing stored (the file could not be created): no file, not an empty one.
        if let Some(w) = body.writer.take() {
            w.abort();
        }
        return;
    }
    let stream = &ctx.info.name;
    let mut w = match body.writer.take() {
        Some(w) => w,
        None => match storage.create(&hint) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(%stream, error = &e as &dyn std::error::Error, "cannot create file");
                ctx.failed(format, format!("cannot create file: {}", chain(&e)));
                return;
            }
        },
    };
    // A file whose writing failed keeps what it has: its index would describe frames
    // that are not there. An MP4 gets the index of the fragments it does have, as
    // recovery after a crash would make it.
    let mut rewrite = if body.write_failed { None } else { rewrite };
    if !body.write_failed {
        if let Err(e) = w.write(&body.pending) {
            tracing::error!(%stream, error = &e as &dyn std::error::Error, "write failed at close");
            rewrite = None;
            body.write_failed = true;
        }
    }
    // An MP4 whose index was not kept in memory (or whose writing failed) gets it from the
    // fragments in its file: only their boxes are read, through a small window (`Window`).
    let from_file = rewrite.as_ref().is_some_and(|r| r.from_file);
    // A complete file names its last `moof`, and each `moof` the one before it: one read per
    // `moof`. One whose writing failed is read from the start, box by box.
    let last_moof = rewrite.as_ref().and_then(|r| r.last_moof).filter(|_| !body.write_failed);
    if format == Format::Mp4 && (body.write_failed || from_file) {
        let read = w.local_file().map(|f| {
            f.map_err(crate::mux::mp4::RecoverError::Io).and_then(|f| match last_moof {
                Some(at) => crate::mux::mp4::recover_chain(Window::new(f), at),
                None => crate::mux::mp4::recover_from(Window::new(f)),
            })
        });
        match read {
            Some(Ok(Some(rw))) => rewrite = Some(rw),
            other => {
                let why = match other {
                    Some(Err(e)) => chain(&e),
                    None => "the file is not local".into(),
                    _ => "no complete fragment".into(),
                };
                let what = if body.write_failed { "whose writing failed" } else { "just written" };
                tracing::error!(%stream, format = format.name(), "the MP4 {what} holds nothing playable ({why}): removed");
                if !body.write_failed {
                    ctx.failed(format, format!("the MP4 file could not be finished: {why}"));
                }
                w.abort();
                return;
            }
        }
    }
    let mut fi = ctx.file_info(format, piece.seq, start_ms, end_ms);
    fi.duration_ms = piece.duration_ms;
    fi.size = w.written();
    let key = ctx.key(&fi);
    let Rewrite { head, ranges, tail, .. } = rewrite.unwrap_or_default();
    match w.finish(&key, Finalize { head: &head, ranges: &ranges, tail: &tail }) {
        Ok(stored) => ctx.announce(fi, &stored, failed, &piece, &storage_name),
        Err(e) => {
            metrics::counter!("reel_file_errors_total", "format" => format.name()).increment(1);
            tracing::error!(%stream, format = format.name(), %key, error = &e as &dyn std::error::Error, "closing file failed");
            ctx.failed(format, format!("closing {key} failed: {}", chain(&e)));
        }
    }
}

/// A file read through a window of [`Window::LEN`] bytes: a read inside the window costs no
/// system call, one outside it reads the window at that offset (`pread`), and a seek only
/// moves the position. Reading the boxes of an MP4's fragments (a few hundred bytes each, a
/// fragment's media between them) is then one read per fragment, instead of a seek and a read
/// per box, and no more of the media is copied than the rest of the window.
struct Window {
    file: std::fs::File,
    buf: Box<[u8]>,
    /// Bytes of `buf` read, the file offset of `buf[0]`, and the position.
    filled: usize,
    at: u64,
    pos: u64,
}

impl Window {
    /// A recording's `moof` in its `free` box, with where the one before it is: 1–1.5 KB for
    /// a second of 25–30 fps video with AAC (one `moof` a fragment, after its writes), about
    /// twice that at 60 fps; one read then covers the box, the `moof` and the link. Most of a
    /// read's cost is the copy out of the page cache, so the window is no larger than that; a
    /// larger `moof` is more reads.
    const LEN: usize = 2048;

    fn new(file: std::fs::File) -> Self {
        Self { file, buf: vec![0; Self::LEN].into_boxed_slice(), filled: 0, at: 0, pos: 0 }
    }
}

impl std::io::Read for Window {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let inside = self.pos >= self.at && self.pos < self.at + self.filled as u64;
        if !inside {
            if out.len() >= Self::LEN {
                // Larger than a window: straight into the caller's buffer.
                let n = self.file.read_at(out, self.pos)?;
                self.pos += n as u64;
                return Ok(n);
            }
            self.filled = self.file.read_at(&mut self.buf, self.pos)?;
            self.at = self.pos;
            if self.filled == 0 {
                return Ok(0);
            }
        }
        let from = (self.pos - self.at) as usize;
        let n = out.len().min(self.filled - from);
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Window {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            std::io::SeekFrom::Start(p) => p,
            std::io::SeekFrom::End(d) => self.file.metadata()?.len().saturating_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

/// An error and its sources, `: `-separated (for event reasons).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};

    use super::Window;

    #[test]
    fn a_window_reads_what_the_file_holds_wherever_it_seeks() {
        let dir = reel_test_support::ffmpeg::scratch_dir("window");
        let path = dir.join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut w = Window::new(std::fs::File::open(&path).unwrap());
        let at = |w: &mut Window, pos: u64, len: usize| {
            w.seek(SeekFrom::Start(pos)).unwrap();
            let mut b = vec![0; len];
            w.read_exact(&mut b).unwrap();
            assert_eq!(b, data[pos as usize..pos as usize + len], "{len} bytes at {pos}");
        };
        // Inside one window, across its end, backwards, larger than a window, at the end.
        for (pos, len) in [
            (0, 8),
            (8, 300),
            (2_044, 16),
            (5, 8),
            (40_000, 40_000),
            (99_992, 8),
            (2_048, 2_048),
            (4_090, 16),
            (8_000, 300),
        ] {
            at(&mut w, pos, len);
        }
        assert_eq!(w.seek(SeekFrom::End(-8)).unwrap(), 99_992);
        w.seek(SeekFrom::Start(100_000)).unwrap();
        assert_eq!(w.read(&mut [0; 8]).unwrap(), 0, "nothing past the end");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
