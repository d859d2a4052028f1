//! The composition point: a publish becomes a recording. Each stream gets a task that receives
//! frames over a bounded channel (ingest never waits) and feeds one output per format.
//!
//! Inside, data flows one way: `stream` (the task: naming, storage, callbacks) drives
//! `output` (a format's muxer and pending bytes), which is driven by `segmenter` (the pure rule
//! of where files and HLS segments begin and end). `remux` drives the same segmenter and
//! outputs over a file.

mod events;
mod index;
mod output;
mod playlist;
mod recover;
pub mod remux;
pub mod segmenter;
mod stream;
mod timeline;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::config::{Config, Template};
use crate::media::avc::{AvcConfig, HevcConfig};
use crate::media::{Codec, Frame, FrameKind};
pub use crate::policy::StreamInfo;
use crate::policy::{self, Candidate, Policy, PolicyError, Registry};
pub use crate::storage::Located;
use crate::storage::{self, Storage};

pub use index::{Index, IndexError, IndexRequest};
pub use stream::StreamStats;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("storage {name:?}")]
    Storage { name: String, source: storage::StorageError },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("template.{template}.name: {message}")]
    Name { template: String, message: String },
    #[error("starting the writer threads")]
    Threads(#[source] std::io::Error),
}

/// Longest app or stream name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Checks an app or stream name at publish: 1 to [`MAX_NAME_LEN`] letters, digits, `-`, `_`
/// or `.`, not starting with `.` (names become folders and file names).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("the {what} name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("the {what} name is {} bytes long; at most {MAX_NAME_LEN} are allowed", name.len()));
    }
    if name.starts_with('.') {
        return Err(format!("the {what} name {name:?} starts with '.'"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!(
            "the {what} name {:?} contains {c:?}: use letters, digits, '-', '_' and '.'",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: &'static str,
    pub description: String,
}

/// Identity of a published stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub domain: String,
    pub app: String,
    pub name: String,
}

/// What a reload swaps: configuration, storage targets, plugins, callbacks.
pub struct Runtime {
    pub config: Arc<Config>,
    pub storages: HashMap<String, Arc<dyn Storage>>,
    pub registry: Arc<Registry>,
    /// The default plugin chain (`[policy] plugins`), falling back to the built-in policy.
    pub policy: Arc<dyn Policy>,
}

impl Runtime {
    /// Opens storage and loads plugins.
    pub fn new(config: Config) -> Result<Self, RecordError> {
        for (name, t) in &config.template {
            if let Some(p) = &t.name {
                policy::check_name_template(p)
                    .map_err(|message| RecordError::Name { template: name.clone(), message })?;
            }
        }
        let mut storages = HashMap::new();
        for (name, s) in &config.storage {
            let st = storage::open(name, s, &config.server.data_dir)
                .map_err(|source| RecordError::Storage { name: name.clone(), source })?;
            storages.insert(name.clone(), st);
        }
        let registry = Arc::new(Registry::new(&config.plugins, &config.policy, &config.server.data_dir)?);
        let policy = registry.policy(None);
        Ok(Self { config: Arc::new(config), storages, registry, policy })
    }

    /// The plugin chain deciding for streams of `template`.
    pub fn policy_for(&self, template: &Template) -> Arc<dyn Policy> {
        match &template.plugins {
            Some(names) => self.registry.policy(Some(names)),
            None => self.policy.clone(),
        }
    }

    /// The rules matching `info`, most specific first (exact stream > exact app > exact
    /// domain > wildcard, then higher priority, then the first configured).
    pub fn candidates(&self, info: &StreamInfo) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = self
            .config
            .rule
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                matches(&r.domain, &info.domain) && matches(&r.app, &info.app) && matches(&r.stream, &info.name)
            })
            .map(|(i, r)| Candidate {
                rule_id: i.to_string(),
                domain: r.domain.clone(),
                app: r.app.clone(),
                name: r.stream.clone(),
                template: r.template.clone(),
                priority: r.priority,
            })
            .collect();
        let exact = |p: &str| !p.contains('*');
        candidates.sort_by_key(|c| std::cmp::Reverse((exact(&c.name), exact(&c.app), exact(&c.domain), c.priority)));
        candidates
    }

    /// The rule the policy chooses among `candidates` (its id).
    pub fn choose(&self, info: &StreamInfo, candidates: &[Candidate]) -> Option<String> {
        if candidates.is_empty() {
            return None;
        }
        let mut in_config_order = candidates.to_vec();
        in_config_order.sort_by_key(|c| c.rule_id.parse::<usize>().unwrap_or(usize::MAX));
        self.policy.select_rule(info, &in_config_order)
    }

    /// The template recording `info`, by the rules (most specific, then priority).
    pub fn template_for(&self, info: &StreamInfo) -> Option<(String, Template)> {
        let candidates = self.candidates(info);
        let chosen = self.choose(info, &candidates)?;
        let cand = candidates.iter().find(|c| c.rule_id == chosen)?;
        let t = self.config.template.get(&cand.template)?;
        Some((cand.template.clone(), t.clone()))
    }
}

use crate::config::matches;

/// A recording of a stream: for the rules (`task_id` none) or for a record task.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RecordingOf {
    pub task_id: Option<String>,
    pub template: String,
}

/// Live state of one publish, for the API and duplicate detection.
#[derive(Clone, Debug)]
pub struct ActiveStream {
    pub session_id: String,
    /// The template the rules chose (it may record nothing).
    pub template: Option<String>,
    pub started_at_ms: u64,
    pub stats: Arc<StreamStats>,
    /// Codecs as announced by the stream.
    pub info: StreamInfo,
    /// What records it now: the rules' template and each record task's.
    pub recordings: Vec<RecordingOf>,
    /// Width and height, from the video sequence header.
    pub video: Option<(u32, u32)>,
}

/// Tells a starting publish which record tasks record it (the `tasks` module answers).
pub trait TaskSource: Send + Sync {
    /// `(task id, template)` of every task in its window for `key`.
    fn tasks_for(&self, key: &StreamKey) -> Vec<(String, String)>;
}

/// One recording fed by a publish.
struct Sink {
    of: RecordingOf,
    tx: mpsc::Sender<Msg>,
    overflow: Arc<AtomicBool>,
    /// Started mid-stream: frames flow from the next keyframe (audio-only: the next frame).
    wait_key: bool,
}

/// Fans one publish out to its recordings, and keeps the headers a recording started later
/// begins with. Only the publishing connection pushes; the API attaches and detaches.
struct Hub {
    info: StreamInfo,
    session_id: String,
    stats: Arc<StreamStats>,
    sinks: Vec<Sink>,
    metadata: Option<Frame>,
    video_config: Option<Frame>,
    audio_config: Option<Frame>,
    video: Option<(u32, u32)>,
}

impl Hub {
    fn push(&mut self, frame: Frame) {
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(frame.tag.len() as u64, Ordering::Relaxed);
        match frame.kind {
            FrameKind::Data if frame.is_metadata() => self.metadata = Some(frame.owned()),
            FrameKind::Video if frame.config => {
                self.info.video_codec.get_or_insert_with(|| frame.codec.name().into());
                let p = frame.payload_ref();
                self.video = match frame.codec {
                    Codec::H264 => AvcConfig::parse(p).ok().and_then(|c| c.dimensions()),
                    Codec::Hevc => HevcConfig::parse(p).ok().and_then(|c| c.dimensions()),
                    _ => None,
                };
                self.video_config = Some(frame.owned());
            }
            FrameKind::Audio if frame.config => {
                self.info.audio_codec.get_or_insert_with(|| frame.codec.name().into());
                self.audio_config = Some(frame.owned());
            }
            _ => {}
        }
        let has_video = self.video_config.is_some();
        let (key_frame, sample) =
            (frame.is_sample() && (frame.kind == FrameKind::Video && frame.keyframe || !has_video), frame.is_sample());
        let (app, stream) = (&self.info.app, &self.info.name);
        self.sinks.retain_mut(|s| {
            if s.wait_key && sample {
                if !key_frame {
                    return true;
                }
                s.wait_key = false;
            }
            match s.tx.try_send(Msg::Frame(frame.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::error!(%stream, %app, task = ?s.of.task_id, "recording fell behind its queue; ending it (storage too slow?)");
                    s.overflow.store(true, Ordering::Release);
                    metrics::counter!("reel_recordings_overflowed_total").increment(1);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// The frames of one read of the connection were pushed: each recording writes what waits
    /// for its batch, so the read block those frames are slices of goes once they are written.
    /// (A full queue drops the mark: nothing is lost, the block is held until the next write.)
    fn read_done(&mut self) {
        for s in &self.sinks {
            let _ = s.tx.try_send(Msg::ReadDone);
        }
    }

    fn recordings(&self) -> Vec<RecordingOf> {
        self.sinks.iter().map(|s| s.of.clone()).collect()
    }
}

/// Keeps the catalog's upload state as spooled files reach their object storage, and queues
/// an `upload_failed` event for a refused one.
fn watch_uploads(rt: &Runtime, live: &Arc<RwLock<Arc<Runtime>>>, catalog: Option<&Catalog>) {
    let (Some(catalog), Ok(handle)) = (catalog, tokio::runtime::Handle::try_current()) else { return };
    for st in rt.storages.values() {
        let (catalog, handle, live) = (catalog.clone(), handle.clone(), Arc::downgrade(live));
        st.on_upload(Arc::new(move |ev: &storage::UploadEvent| {
            let (catalog, ev, live) = (catalog.clone(), ev.clone(), live.clone());
            handle.spawn(async move {
                let r = match &ev.result {
                    Ok(stored) => {
                        catalog
                            .set_upload(&ev.storage, &ev.spooled_key, &stored.key, stored.etag.as_deref(), "stored")
                            .await
                    }
                    Err(reason) => {
                        metrics::counter!("reel_upload_failures_total", "storage" => ev.storage.clone()).increment(1);
                        tracing::error!(storage = %ev.storage, key = %ev.spooled_key, "upload refused: {reason}");
                        let r = catalog.set_upload(&ev.storage, &ev.spooled_key, &ev.spooled_key, None, "failed").await;
                        if let Some(live) = live.upgrade() {
                            let config = live.read().unwrap_or_else(|e| e.into_inner()).config.clone();
                            upload_failed(&catalog, &config, &ev.storage, &ev.spooled_key, reason).await;
                        }
                        r
                    }
                };
                if let Err(e) = r {
                    tracing::error!(error = &e as &dyn std::error::Error, "catalog upload state not updated");
                }
            });
        }));
    }
}

/// Queues `upload_failed` for the recording stored at `key`.
async fn upload_failed(catalog: &Catalog, config: &Config, storage: &str, key: &str, reason: &str) {
    let row = catalog.recording_at(storage, key).await.ok().flatten();
    let stream = StreamInfo {
        domain: row.as_ref().map(|r| r.domain.clone()).unwrap_or_default(),
        app: row.as_ref().map(|r| r.app.clone()).unwrap_or_default(),
        name: row.as_ref().map(|r| r.stream.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let mut fields = serde_json::Map::new();
    if let Some(r) = &row {
        fields.insert("recording_id".into(), r.id.clone().into());
        fields.insert("format".into(), r.format.clone().into());
    }
    fields.insert("storage".into(), storage.into());
    fields.insert("key".into(), key.into());
    fields.insert("reason".into(), reason.into());
    let task_id = row.as_ref().and_then(|r| r.task_id.clone());
    let spec = events::Spec { kind: "upload_failed", stream: &stream, task_id: task_id.as_deref(), fields, file: None };
    queue_events(catalog, events::rows(config, &spec, crate::media::time::now_ms())).await;
}

/// Writes `rows` to the outbox; an event the catalog refuses is logged and counted.
async fn queue_events(catalog: &Catalog, rows: Vec<crate::catalog::NewEvent>) {
    if rows.is_empty() {
        return;
    }
    for r in &rows {
        metrics::counter!("reel_events_total", "event" => r.event.clone()).increment(1);
    }
    if let Err(e) = catalog.enqueue_events(&rows).await {
        metrics::counter!("reel_catalog_errors_total").increment(rows.len() as u64);
        tracing::error!(event = %rows[0].event, stream = %rows[0].stream, error = &e as &dyn std::error::Error, "event not queued");
    }
}

/// The storage key of `f`: the template's `name` pattern unless a naming plugin of `policy`
/// decides, else the policy's name.
pub(crate) fn name_file(
    config: &Config,
    template: &str,
    policy: &dyn Policy,
    s: &StreamInfo,
    f: &policy::FileInfo,
) -> String {
    let pattern = config.template.get(template).and_then(|t| t.name.as_deref());
    match pattern {
        Some(p) if !policy.decides_naming() => {
            crate::policy::name_with(p, s, f).unwrap_or_else(|| policy.name_file(s, f))
        }
        _ => policy.name_file(s, f),
    }
}

/// What continues a parked recording: the new publish's frames and identity.
pub(crate) struct Resume {
    pub rx: mpsc::Receiver<Msg>,
    pub info: StreamInfo,
    pub stats: Arc<StreamStats>,
}

/// Which recording a new publish continues: the stream, the task (none: the rules') and the
/// template.
type ParkKey = (StreamKey, Option<String>, String);
/// A parked recording: where its next publish goes, and its overflow flag.
type Parked = (tokio::sync::oneshot::Sender<Resume>, Arc<AtomicBool>);

/// Recordings whose publisher left inside their resume window, waiting for it to come back.
#[derive(Default)]
pub(crate) struct Parking {
    waiting: Mutex<HashMap<ParkKey, Parked>>,
    /// Shutdown: parked recordings end now.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl Parking {
    /// Parks a recording; the receiver yields the publish that continues it.
    pub fn park(&self, key: ParkKey, overflow: Arc<AtomicBool>) -> tokio::sync::oneshot::Receiver<Resume> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&self.waiting).insert(key, (tx, overflow));
        rx
    }

    /// The window passed: forgets a parked recording.
    pub fn unpark(&self, key: &ParkKey) {
        let mut w = lock(&self.waiting);
        if w.get(key).is_some_and(|(tx, _)| tx.is_closed()) {
            w.remove(key);
        }
    }

    /// Ends the parked recordings of task `task_id` now (stopped or ended).
    fn end_task(&self, task_id: &str) -> usize {
        let mut w = lock(&self.waiting);
        let before = w.len();
        w.retain(|(_, t, _), _| t.as_deref() != Some(task_id));
        before - w.len()
    }

    /// Hands a new publish to the recording parked under `key` (its overflow flag comes
    /// back); the publish comes back when there is none.
    fn take(&self, key: &ParkKey, resume: Resume) -> Result<Arc<AtomicBool>, Box<Resume>> {
        let Some((tx, overflow)) = lock(&self.waiting).remove(key) else { return Err(Box::new(resume)) };
        tx.send(resume).map(|()| overflow).map_err(Box::new)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Live {
    template: Option<String>,
    started_at_ms: u64,
    hub: Arc<Mutex<Hub>>,
}

struct Inner {
    parking: Arc<Parking>,
    runtime: Arc<RwLock<Arc<Runtime>>>,
    active: Mutex<BTreeMap<StreamKey, Live>>,
    tracker: TaskTracker,
    next_session: AtomicU64,
    catalog: Option<Catalog>,
    tasks: std::sync::OnceLock<Arc<dyn TaskSource>>,
    /// Where recordings' files are written.
    writers: writer::Writers,
}

/// Entry point of the recording side; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

/// Messages from a connection to its stream task.
pub(crate) enum Msg {
    Frame(Frame),
    /// The frames before it are all one read brought: hold none of them as slices.
    ReadDone,
}

/// Held by the connection that publishes; dropping it ends the recording.
pub struct StreamHandle {
    hub: Arc<Mutex<Hub>>,
    key: StreamKey,
    session_id: String,
    recorder: Recorder,
}

impl StreamHandle {
    /// Queues a frame for each recording without waiting. A recording that falls behind by
    /// more than the configured queue is ended with an error; the publisher goes on.
    pub fn push(&mut self, frame: Frame) {
        lock(&self.hub).push(frame);
    }

    /// Says the frames pushed since the last call are all one read of the connection brought:
    /// what of them waits for a batch is copied, and the read buffer they are slices of is
    /// freed once the read's writes are done instead of being held until the batch is.
    pub fn read_done(&mut self) {
        lock(&self.hub).read_done();
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        lock(&self.hub).sinks.clear();
        let mut active = lock(&self.recorder.inner.active);
        if active.get(&self.key).is_some_and(|a| lock(&a.hub).session_id == self.session_id) {
            active.remove(&self.key);
        }
    }
}

impl Recorder {
    /// A recorder writing what it records into `catalog` (none: files are only announced).
    pub fn new(config: Config, catalog: Option<Catalog>) -> Result<Self, RecordError> {
        let writers = writer::Writers::start(config.server.ingest_threads).map_err(RecordError::Threads)?;
        let rt = Runtime::new(config)?;
        let runtime = Arc::new(RwLock::new(Arc::new(rt)));
        watch_uploads(&runtime.read().unwrap_or_else(|e| e.into_inner()), &runtime, catalog.as_ref());
        Ok(Self {
            inner: Arc::new(Inner {
                parking: Arc::default(),
                runtime,
                active: Mutex::new(BTreeMap::new()),
                tracker: TaskTracker::new(),
                next_session: AtomicU64::new(1),
                catalog,
                tasks: std::sync::OnceLock::new(),
                writers,
            }),
        })
    }

    /// Who says which record tasks record a new publish (set once, at start).
    pub fn set_task_source(&self, source: Arc<dyn TaskSource>) {
        let _ = self.inner.tasks.set(source);
    }

    pub fn catalog(&self) -> Option<&Catalog> {
        self.inner.catalog.as_ref()
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.inner.runtime.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps configuration, plugins and callbacks; recordings in progress keep theirs until
    /// their next file. On error the running configuration stays.
    pub fn reload(&self, config: Config) -> Result<(), RecordError> {
        let runtime = Runtime::new(config)?;
        watch_uploads(&runtime, &self.inner.runtime, self.inner.catalog.as_ref());
        *self.inner.runtime.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(runtime);
        Ok(())
    }

    /// Queues a task's event (`task_completed`, `task_failed`) for the callbacks.
    pub async fn task_event(&self, kind: &'static str, task: &crate::catalog::Task) {
        let Some(catalog) = &self.inner.catalog else { return };
        let stream = StreamInfo {
            domain: task.domain.clone(),
            app: task.app.clone(),
            name: task.stream.clone(),
            ..Default::default()
        };
        let mut fields = serde_json::Map::new();
        fields.insert("template".into(), task.template.clone().into());
        fields.insert("status".into(), task.status.name().into());
        fields.insert("start_time".into(), events::rfc3339(task.start_ms.max(0) as u64).into());
        fields.insert("end_time".into(), events::rfc3339(task.end_ms.max(0) as u64).into());
        if let Some(r) = &task.reason {
            fields.insert("reason".into(), r.clone().into());
        }
        let spec = events::Spec { kind, stream: &stream, task_id: Some(&task.id), fields, file: None };
        let rows = events::rows(&self.runtime().config, &spec, crate::media::time::now_ms());
        queue_events(catalog, rows).await;
    }

    pub fn active(&self) -> Vec<(StreamKey, ActiveStream)> {
        lock(&self.inner.active)
            .iter()
            .map(|(k, v)| {
                let hub = lock(&v.hub);
                let a = ActiveStream {
                    session_id: hub.session_id.clone(),
                    template: v.template.clone(),
                    started_at_ms: v.started_at_ms,
                    stats: hub.stats.clone(),
                    info: hub.info.clone(),
                    recordings: hub.recordings(),
                    video: hub.video,
                };
                (k.clone(), a)
            })
            .collect()
    }

    /// Starts one recording of a live stream with the named template.
    fn start(&self, rt: &Arc<Runtime>, hub: &Hub, of: RecordingOf, wait_key: bool) -> Result<Option<Sink>, String> {
        let template = match rt.config.template.get(&of.template) {
            Some(t) => t.clone(),
            None => return Err(format!("template {:?} is not configured", of.template)),
        };
        if template.formats.is_empty() {
            return Ok(None);
        }
        let (tx, rx) = mpsc::channel(rt.config.server.queue_frames);
        if !wait_key {
            // A publish again inside the resume window continues the recording it left.
            let info = &hub.info;
            let key = (
                StreamKey { domain: info.domain.clone(), app: info.app.clone(), name: info.name.clone() },
                of.task_id.clone(),
                of.template.clone(),
            );
            let resume = Resume { rx, info: info.clone(), stats: hub.stats.clone() };
            match self.inner.parking.take(&key, resume) {
                Ok(overflow) => {
                    tracing::info!(app = %info.app, stream = %info.name, template = %of.template, task = ?of.task_id,
                        session = %hub.session_id, "publish again inside the resume window: the recording goes on");
                    return Ok(Some(Sink { of, tx, overflow, wait_key }));
                }
                Err(back) => return self.start_new(rt, hub, of, template, (tx, back.rx), wait_key),
            }
        }
        self.start_new(rt, hub, of, template, (tx, rx), wait_key)
    }

    fn start_new(
        &self,
        rt: &Arc<Runtime>,
        hub: &Hub,
        of: RecordingOf,
        template: Template,
        (tx, rx): (mpsc::Sender<Msg>, mpsc::Receiver<Msg>),
        wait_key: bool,
    ) -> Result<Option<Sink>, String> {
        if wait_key {
            // Started mid-stream: the headers it would have seen come first.
            for f in hub.metadata.iter().chain(&hub.video_config).chain(&hub.audio_config) {
                let _ = tx.try_send(Msg::Frame(f.clone()));
            }
        }
        let overflow = Arc::new(AtomicBool::new(false));
        let info = &hub.info;
        tracing::info!(domain = %info.domain, app = %info.app, stream = %info.name, template = %of.template,
            task = ?of.task_id, formats = ?template.formats.iter().map(|f| f.name()).collect::<Vec<_>>(),
            session = %hub.session_id, "recording");
        let task = stream::StreamTask::new(
            rt.clone(),
            self.inner.runtime.clone(),
            hub.info.clone(),
            (of.template.clone(), template),
            stream::Ids { session_id: hub.session_id.clone(), task_id: of.task_id.clone() },
            overflow.clone(),
            hub.stats.clone(),
            self.inner.tracker.clone(),
            self.inner.catalog.clone(),
            self.inner.parking.clone(),
            self.inner.writers.queue(),
        );
        self.inner.tracker.spawn(task.run(rx));
        Ok(Some(Sink { of, tx, overflow, wait_key }))
    }

    /// A publisher starts `info`. Returns the handle frames go to, or why it is refused.
    pub fn publish(&self, info: StreamInfo) -> Result<StreamHandle, Reject> {
        for (what, name) in [("app", &info.app), ("stream", &info.name)] {
            if let Err(description) = check_name(what, name) {
                metrics::counter!("reel_publishes_refused_total", "reason" => "name").increment(1);
                return Err(Reject { code: "NetStream.Publish.BadName", description });
            }
        }
        let rt = self.runtime();
        if let Err(why) = rt.policy.admit(&info) {
            metrics::counter!("reel_publishes_refused_total", "reason" => "plugin").increment(1);
            tracing::info!(domain = %info.domain, app = %info.app, stream = %info.name, "publish refused: {why}");
            return Err(Reject {
                code: "NetStream.Publish.BadName",
                description: format!("publish not admitted: {why}"),
            });
        }
        let key = StreamKey { domain: info.domain.clone(), app: info.app.clone(), name: info.name.clone() };
        let session_id = format!(
            "{}-{}",
            crate::media::time::escaped_time(info.started_at_ms),
            self.inner.next_session.fetch_add(1, Ordering::Relaxed)
        );
        let chosen = rt.template_for(&info);
        let started_at_ms = info.started_at_ms;
        let hub = Arc::new(Mutex::new(Hub {
            info,
            session_id: session_id.clone(),
            stats: Arc::new(StreamStats::default()),
            sinks: Vec::new(),
            metadata: None,
            video_config: None,
            audio_config: None,
            video: None,
        }));
        {
            let mut active = lock(&self.inner.active);
            if active.contains_key(&key) {
                return Err(Reject {
                    code: "NetStream.Publish.BadName",
                    description: format!("{}/{} is already being published", key.app, key.name),
                });
            }
            active.insert(
                key.clone(),
                Live { template: chosen.as_ref().map(|(n, _)| n.clone()), started_at_ms, hub: hub.clone() },
            );
        }
        metrics::counter!("reel_publishes_total").increment(1);
        let tasks = self.inner.tasks.get().map(|t| t.tasks_for(&key)).unwrap_or_default();
        let mut h = lock(&hub);
        let of_rule = chosen.map(|(template, _)| RecordingOf { task_id: None, template });
        let of_tasks = tasks.into_iter().map(|(id, template)| RecordingOf { task_id: Some(id), template });
        for of in of_rule.into_iter().chain(of_tasks) {
            match self.start(&rt, &h, of.clone(), false) {
                Ok(Some(sink)) => h.sinks.push(sink),
                Ok(None) => {}
                Err(e) => tracing::error!(stream = %key.name, task = ?of.task_id, "not recording: {e}"),
            }
        }
        if h.sinks.is_empty() {
            tracing::info!(domain = %key.domain, app = %key.app, stream = %key.name, session = %session_id, "publish (not recorded: no rule, task or format)");
        }
        drop(h);
        Ok(StreamHandle { hub, key, session_id, recorder: self.clone() })
    }

    /// Starts recording the live stream `key` for task `task_id` with `template`, from its next
    /// keyframe. `Ok(false)`: it records already, or the template has no formats; an error when
    /// the stream is not live here or the template is unknown.
    pub fn attach_task(&self, key: &StreamKey, task_id: &str, template: &str) -> Result<bool, String> {
        let hub = match lock(&self.inner.active).get(key) {
            Some(l) => l.hub.clone(),
            None => return Err(format!("{}/{} is not live on this node", key.app, key.name)),
        };
        let mut h = lock(&hub);
        if h.sinks.iter().any(|s| s.of.task_id.as_deref() == Some(task_id)) {
            return Ok(false);
        }
        let of = RecordingOf { task_id: Some(task_id.into()), template: template.into() };
        match self.start(&self.runtime(), &h, of, true)? {
            Some(sink) => {
                h.sinks.push(sink);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Ends every recording of task `task_id` (its files close); how many there were.
    pub fn detach_task(&self, task_id: &str) -> usize {
        let hubs: Vec<_> = lock(&self.inner.active).values().map(|l| l.hub.clone()).collect();
        let mut n = 0;
        for hub in hubs {
            let mut h = lock(&hub);
            let before = h.sinks.len();
            h.sinks.retain(|s| s.of.task_id.as_deref() != Some(task_id));
            n += before - h.sinks.len();
        }
        n + self.inner.parking.end_task(task_id)
    }

    /// `(task id, stream)` of every task recording on this node now.
    pub fn task_recordings(&self) -> Vec<(String, StreamKey)> {
        let active = lock(&self.inner.active);
        let mut out = Vec::new();
        for (k, l) in active.iter() {
            for s in &lock(&l.hub).sinks {
                if let Some(id) = &s.of.task_id {
                    out.push((id.clone(), k.clone()));
                }
            }
        }
        out
    }

    /// Removes a recording's objects from storage `storage`: the file, or an HLS playlist
    /// and the segments it lists. Returns how many objects went.
    pub async fn delete_files(&self, storage: &str, key: &str, format: &str) -> Result<usize, String> {
        let rt = self.runtime();
        let st = rt
            .storages
            .get(storage)
            .cloned()
            .ok_or_else(|| format!("storage {storage:?} is not configured any more"))?;
        let (key, hls) = (key.to_string(), format == crate::config::Format::Hls.name());
        let task = tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            if hls {
                // A playlist lists its segments relative to its own folder.
                const MAX_PLAYLIST: u64 = 16 << 20;
                let text = st.get(&key, MAX_PLAYLIST).map_err(|e| e.to_string())?.unwrap_or_default();
                let dir = key.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default();
                for line in String::from_utf8_lossy(&text).lines() {
                    let line = line.trim();
                    if !line.is_empty() && !line.starts_with('#') && !line.contains("://") && !line.starts_with('/') {
                        keys.push(format!("{dir}{line}"));
                    }
                }
            }
            keys.push(key);
            for k in &keys {
                st.delete(k).map_err(|e| format!("deleting {k}: {e}"))?;
            }
            Ok(keys.len())
        });
        task.await.map_err(|e| e.to_string())?
    }

    /// Where the object `key` of storage `storage` can be read (a presigned URL for object
    /// storage lasts `valid`).
    pub async fn locate(
        &self,
        storage: &str,
        key: &str,
        valid: std::time::Duration,
    ) -> Result<Option<storage::Located>, String> {
        let st = self
            .runtime()
            .storages
            .get(storage)
            .cloned()
            .ok_or_else(|| format!("storage {storage:?} is not configured any more"))?;
        let key = key.to_string();
        let r = tokio::task::spawn_blocking(move || st.locate(&key, valid)).await.map_err(|e| e.to_string())?;
        r.map_err(|e| e.to_string())
    }

    /// Waits until every recording has closed its files (after publishers are gone).
    pub async fn drain(&self) {
        // Recordings waiting in their resume window end now.
        self.inner.parking.stopping.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Number of recordings (and file finalisations) still running.
    pub fn running(&self) -> usize {
        self.inner.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_at_publish() {
        assert!(check_name("stream", "cam-1_a.b").is_ok());
        assert!(check_name("stream", &"a".repeat(255)).is_ok());
        let long = check_name("stream", &"a".repeat(10_000)).unwrap_err();
        assert!(long.contains("10000 bytes") && long.contains("255"), "{long}");
        for bad in ["", ".", "..", ".hidden", "a/b", "../../tmp/evil", "a\0b", "%2e%2e%2f", "名前", "a b"] {
            assert!(check_name("stream", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_end_of_a_read_follows_its_frames_to_every_recording() {
        let mut hub = Hub {
            info: StreamInfo::default(),
            session_id: "s".into(),
            stats: Arc::default(),
            sinks: Vec::new(),
            metadata: None,
            video_config: None,
            audio_config: None,
            video: None,
        };
        let mut queues = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = mpsc::channel(4);
            let of = RecordingOf { task_id: None, template: "t".into() };
            hub.sinks.push(Sink { of, tx, overflow: Arc::default(), wait_key: false });
            queues.push(rx);
        }
        let audio = Frame {
            kind: FrameKind::Audio,
            codec: crate::media::Codec::Aac,
            dts: 0,
            cts: 0,
            keyframe: true,
            config: false,
            tag: bytes::Bytes::from_static(&[0xaf, 1, 0x21]),
            payload_offset: 2,
        };
        hub.push(audio.clone());
        hub.push(audio);
        hub.read_done();
        for rx in &mut queues {
            let got: Vec<bool> =
                std::iter::from_fn(|| rx.try_recv().ok()).map(|m| matches!(m, Msg::ReadDone)).collect();
            assert_eq!(got, [false, false, true], "two frames, then the end of their read");
        }
        // A full queue drops the mark, not the recording.
        for _ in 0..5 {
            hub.read_done();
        }
        assert_eq!(hub.sinks.len(), 2);
        assert!(hub.sinks.iter().all(|s| !s.overflow.load(Ordering::Acquire)));
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("*", "x"));
        assert!(matches("live", "live"));
        assert!(!matches("live", "liv"));
        assert!(matches("cam*", "cam12"));
        assert!(matches("*.example.com", "a.example.com"));
    }

    #[test]
    fn most_specific_rule_wins() {
        let cfg = Config::parse(
            r#"
            [storage.l]
            kind = "fs"
            root = "/tmp/reel-rule-test"
            [template.all]
            formats = ["flv"]
            storage = "l"
            [template.none]
            formats = []
            storage = "l"
            [[rule]]
            template = "all"
            [[rule]]
            app = "live"
            stream = "secret"
            template = "none"
            "#,
            "t",
        )
        .unwrap();
        let rt = Runtime::new(cfg).unwrap();
        let mut info =
            StreamInfo { domain: "d".into(), app: "live".into(), name: "secret".into(), ..Default::default() };
        assert_eq!(rt.template_for(&info).unwrap().0, "none");
        info.name = "other".into();
        assert_eq!(rt.template_for(&info).unwrap().0, "all");
    }
}
