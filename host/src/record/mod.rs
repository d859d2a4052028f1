//! The composition point: a publish becomes a recording. Each stream gets a task that receives
//! frames over a bounded channel (ingest never waits) and feeds one output per format.
//!
//! Inside, data flows one way: `stream` (the task: naming, storage, callbacks) drives
//! `output` (a format's muxer and pending bytes), which is driven by `segmenter` (the pure rule
//! of where files and HLS segments begin and end). `remux` drives the same segmenter and
//! outputs over a file.

mod output;
pub mod remux;
pub mod segmenter;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Template};
use crate::media::Frame;
use crate::notify::{MemoryOutbox, Notifier, NotifierOptions, Outbox};
use crate::policy::{Candidate, Policy, PolicyError, Registry, StreamInfo};
use crate::storage::{self, Storage};

pub use stream::StreamStats;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("storage {name:?}")]
    Storage { name: String, source: storage::StorageError },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Callbacks waiting in memory at most (a full queue drops new ones, counted in metrics).
const OUTBOX_CAPACITY: usize = 10_000;

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
    /// Sends `[[callback]]`s; none when no callback is configured.
    pub notifier: Option<Arc<Notifier>>,
}

impl Runtime {
    /// Opens storage, loads plugins and (inside a Tokio runtime, when callbacks are
    /// configured) starts the callback sender, with its own in-memory queue.
    pub fn new(config: Config) -> Result<Self, RecordError> {
        Self::with_outbox(config, Arc::new(MemoryOutbox::new(OUTBOX_CAPACITY)))
    }

    /// Like [`Runtime::new`], delivering callbacks from `outbox` (kept across reloads).
    pub fn with_outbox(config: Config, outbox: Arc<dyn Outbox>) -> Result<Self, RecordError> {
        let mut storages = HashMap::new();
        for (name, s) in &config.storage {
            let st = storage::open(name, s).map_err(|source| RecordError::Storage { name: name.clone(), source })?;
            storages.insert(name.clone(), st);
        }
        let registry = Arc::new(Registry::new(&config.plugins, &config.policy, &config.server.data_dir)?);
        let policy = registry.policy(None);
        let notifier = (!config.callback.is_empty())
            .then(|| Arc::new(Notifier::new(config.callback.clone(), outbox, NotifierOptions::default())));
        Ok(Self { config: Arc::new(config), storages, registry, policy, notifier })
    }

    /// The plugin chain deciding for streams of `template`.
    pub fn policy_for(&self, template: &Template) -> Arc<dyn Policy> {
        match &template.plugins {
            Some(names) => self.registry.policy(Some(names)),
            None => self.policy.clone(),
        }
    }

    /// The template recording `info`, by the rules (most specific, then priority).
    pub fn template_for(&self, info: &StreamInfo) -> Option<(String, Template)> {
        let candidates: Vec<Candidate> = self
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
        if candidates.is_empty() {
            return None;
        }
        let chosen = self.policy.select_rule(info, &candidates)?;
        let cand = candidates.iter().find(|c| c.rule_id == chosen)?;
        let t = self.config.template.get(&cand.template)?;
        Some((cand.template.clone(), t.clone()))
    }
}

use crate::config::matches;

/// Live state of one publish, for the API and duplicate detection.
#[derive(Clone, Debug)]
pub struct ActiveStream {
    pub session_id: String,
    pub template: Option<String>,
    pub started_at_ms: u64,
    pub stats: Arc<StreamStats>,
}

struct Inner {
    outbox: Arc<dyn Outbox>,
    runtime: Arc<RwLock<Arc<Runtime>>>,
    active: Mutex<BTreeMap<StreamKey, ActiveStream>>,
    tracker: TaskTracker,
    next_session: AtomicU64,
}

/// Entry point of the recording side; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

/// Messages from a connection to its stream task.
pub(crate) enum Msg {
    Frame(Frame),
}

/// Held by the connection that publishes; dropping it ends the recording.
pub struct StreamHandle {
    tx: Option<mpsc::Sender<Msg>>,
    overflow: Arc<AtomicBool>,
    key: StreamKey,
    session_id: String,
    recorder: Recorder,
}

impl StreamHandle {
    /// Queues a frame for the recording without waiting. When the recording falls behind by
    /// more than the configured queue, it is ended with an error; the publisher goes on.
    pub fn push(&mut self, frame: Frame) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Frame(frame)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::error!(stream = %self.key.name, app = %self.key.app, "recording fell behind its queue; ending it (storage too slow?)");
                self.overflow.store(true, Ordering::Release);
                metrics::counter!("reel_recordings_overflowed_total").increment(1);
                self.tx = None;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.tx = None,
        }
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.tx = None;
        let mut active = self.recorder.inner.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.get(&self.key).is_some_and(|a| a.session_id == self.session_id) {
            active.remove(&self.key);
        }
    }
}

impl Recorder {
    pub fn new(config: Config) -> Result<Self, RecordError> {
        let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::new(OUTBOX_CAPACITY));
        let runtime = Runtime::with_outbox(config, outbox.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                outbox,
                runtime: Arc::new(RwLock::new(Arc::new(runtime))),
                active: Mutex::new(BTreeMap::new()),
                tracker: TaskTracker::new(),
                next_session: AtomicU64::new(1),
            }),
        })
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.inner.runtime.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps configuration, plugins and callbacks; recordings in progress keep theirs until
    /// their next file. On error the running configuration stays.
    pub fn reload(&self, config: Config) -> Result<(), RecordError> {
        let runtime = Runtime::with_outbox(config, self.inner.outbox.clone())?;
        *self.inner.runtime.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(runtime);
        Ok(())
    }

    /// Waits (up to `timeout`) for queued callbacks to be delivered.
    pub async fn drain_callbacks(&self, timeout: std::time::Duration) -> bool {
        match self.runtime().notifier.clone() {
            Some(n) => n.drain(timeout).await,
            None => true,
        }
    }

    pub fn active(&self) -> Vec<(StreamKey, ActiveStream)> {
        self.inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A publisher starts `info`. Returns the handle frames go to, or why it is refused.
    pub fn publish(&self, info: StreamInfo) -> Result<StreamHandle, Reject> {
        for (what, name) in [("app", &info.app), ("stream", &info.name)] {
            if let Err(description) = check_name(what, name) {
                metrics::counter!("reel_publishes_refused_total", "reason" => "name").increment(1);
                return Err(Reject { code: "NetStream.Publish.BadName", description });
            }
        }
        let key = StreamKey { domain: info.domain.clone(), app: info.app.clone(), name: info.name.clone() };
        let rt = self.runtime();
        let session_id = format!(
            "{}-{}",
            crate::media::time::escaped_time(info.started_at_ms),
            self.inner.next_session.fetch_add(1, Ordering::Relaxed)
        );
        let chosen = rt.template_for(&info);
        let stats = Arc::new(StreamStats::default());
        {
            let mut active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
            if active.contains_key(&key) {
                return Err(Reject {
                    code: "NetStream.Publish.BadName",
                    description: format!("{}/{} is already being published", key.app, key.name),
                });
            }
            active.insert(
                key.clone(),
                ActiveStream {
                    session_id: session_id.clone(),
                    template: chosen.as_ref().map(|(n, _)| n.clone()),
                    started_at_ms: info.started_at_ms,
                    stats: stats.clone(),
                },
            );
        }
        let overflow = Arc::new(AtomicBool::new(false));
        metrics::counter!("reel_publishes_total").increment(1);
        let tx = match chosen {
            Some((tname, template)) if !template.formats.is_empty() => {
                let (tx, rx) = mpsc::channel(rt.config.server.queue_frames);
                tracing::info!(domain = %info.domain, app = %info.app, stream = %info.name, template = %tname,
                    formats = ?template.formats.iter().map(|f| f.name()).collect::<Vec<_>>(), session = %session_id, "publish");
                let task = stream::StreamTask::new(
                    rt,
                    self.inner.runtime.clone(),
                    info,
                    (tname, template),
                    session_id.clone(),
                    overflow.clone(),
                    stats,
                    self.inner.tracker.clone(),
                );
                self.inner.tracker.spawn(task.run(rx));
                Some(tx)
            }
            _ => {
                tracing::info!(domain = %info.domain, app = %info.app, stream = %info.name, session = %session_id, "publish (not recorded: no rule or no formats)");
                None
            }
        };
        Ok(StreamHandle { tx, overflow, key, session_id, recorder: self.clone() })
    }

    /// Waits until every recording has closed its files (after publishers are gone).
    pub async fn drain(&self) {
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
