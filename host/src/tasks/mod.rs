//! Record tasks: "record this stream from then to then with that template", created through
//! the API, kept in the catalog, and carried out by whichever node the stream is published to.
//!
//! A scheduler loop on every node reads the active tasks from the catalog every
//! [`REFRESH`] (so a task created or stopped on one node of a fleet reaches the others within
//! that time), starts the recordings of tasks whose window has begun on streams live here,
//! ends them at `end_time` or when stopped, and keeps each task's status. A publish that starts
//! inside a task's window is recorded from its first frame (the recorder asks [`Tasks`] through
//! [`TaskSource`]); a stream already live when its window opens is recorded from its next
//! keyframe.

mod pull;
pub mod retention;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::{new_id, Catalog, CatalogError, Page, Task, TaskQuery, TaskStatus};
use crate::config::matches;
use crate::record::{check_name, Recorder, StreamKey, TaskSource};

/// How often each node reads the active tasks (the delay for a task created or stopped on
/// another node of a fleet, and the precision of `end_time`).
pub const REFRESH: Duration = Duration::from_millis(500);
/// How often a node alone on its SQLite catalog with no active task reads the tasks (a task
/// created through it wakes it at once).
pub const IDLE_REFRESH: Duration = Duration::from_secs(10);
/// A node recording a task says so this often ([`Catalog::touch_task`])…
pub const HEARTBEAT_MS: i64 = 5_000;
/// …and a `recording` task not heard of for this long is `waiting` again (its node died).
pub const STALE_MS: i64 = 15_000;
/// Longest window of one task.
pub const MAX_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// Latest start accepted, from now.
pub const MAX_LEAD_MS: i64 = 30 * 24 * 3600 * 1000;
/// Active (scheduled, waiting or recording) tasks on one app/stream at most.
pub const MAX_ACTIVE_PER_STREAM: u64 = 16;
/// Longest `note`, in bytes.
pub const MAX_NOTE_LEN: usize = 1024;
/// Longest pull source URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Why a task request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A field is wrong (HTTP 400).
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    /// The request conflicts with the state (HTTP 409).
    #[error("{message}")]
    Conflict { field: Option<&'static str>, message: String },
    #[error("no record task {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> TaskError {
    TaskError::Invalid { field, message: message.into() }
}

/// A task as asked for; times in Unix milliseconds.
#[derive(Clone, Debug, Default)]
pub struct NewTask {
    pub domain: Option<String>,
    pub app: String,
    pub stream: String,
    /// None: now.
    pub start_ms: Option<i64>,
    pub end_ms: i64,
    pub template: String,
    pub note: Option<String>,
    /// A pull task's source: `rtmp://…` or `http(s)://…` (HTTP-FLV).
    pub url: Option<String>,
}

struct Inner {
    catalog: Catalog,
    recorder: Recorder,
    /// The active tasks, as last read (and as changed here since).
    cache: RwLock<Vec<Task>>,
    /// Wakes the scheduler early (a task was created or stopped here).
    wake: tokio::sync::Notify,
    /// The pull tasks this node pulls, each with what stops it.
    pullers: std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>,
    /// The HTTP client pull sources use (set at start; a default one otherwise).
    http: std::sync::OnceLock<reqwest::Client>,
}

/// The record tasks of this node's catalog; cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    since.as_millis().min(i64::MAX as u128) as i64
}

fn stream_of(t: &Task, key: &StreamKey) -> bool {
    t.app == key.app && t.stream == key.name && matches(&t.domain, &key.domain)
}

impl TaskSource for Tasks {
    fn tasks_for(&self, key: &StreamKey) -> Vec<(String, String)> {
        let now = now_ms();
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        cache
            .iter()
            .filter(|t| t.start_ms <= now && now < t.end_ms && stream_of(t, key))
            .map(|t| (t.id.clone(), t.template.clone()))
            .collect()
    }
}

impl Tasks {
    /// Reads the active tasks and registers with the recorder, so that publishes starting
    /// from now on are recorded for their tasks. Run [`Tasks::run`] to carry them out.
    pub async fn start(catalog: Catalog, recorder: Recorder) -> Result<Self, CatalogError> {
        let active = catalog.active_tasks().await?;
        let tasks = Tasks {
            inner: Arc::new(Inner {
                catalog,
                recorder,
                cache: RwLock::new(active),
                wake: Default::default(),
                pullers: Default::default(),
                http: Default::default(),
            }),
        };
        tasks.inner.recorder.set_task_source(Arc::new(tasks.clone()));
        Ok(tasks)
    }

    /// The active tasks (any window) on stream `key`, as last read.
    pub fn active_for(&self, key: &StreamKey) -> Vec<Task> {
        let now = now_ms();
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.iter().filter(|t| stream_of(t, key)).cloned().map(|t| present(t, now)).collect()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The HTTP client pull tasks read HTTP-FLV with (the one the node's callbacks use).
    pub fn set_http_client(&self, client: reqwest::Client) {
        let _ = self.inner.http.set(client);
    }

    fn http_client(&self) -> reqwest::Client {
        self.inner.http.get_or_init(reqwest::Client::new).clone()
    }

    /// Checks and stores a new task; it starts recording at once when its window has begun
    /// and its stream is live here.
    pub async fn create(&self, n: NewTask) -> Result<Task, TaskError> {
        let now = now_ms();
        let domain = match n.domain.as_deref() {
            None | Some("") => "*".to_string(),
            Some(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if d.len() > 253 || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*:".contains(&b)) {
                    return Err(invalid("domain", format!("domain {d:?} is not a host name")));
                }
                d
            }
        };
        check_name("app", &n.app).map_err(|m| invalid("app", m))?;
        check_name("stream", &n.stream).map_err(|m| invalid("stream", m))?;
        let start_ms = n.start_ms.unwrap_or(now).max(0);
        if n.end_ms <= now {
            return Err(invalid("end_time", "end_time is in the past"));
        }
        if n.end_ms <= start_ms {
            return Err(invalid("end_time", "end_time must be after start_time"));
        }
        if n.end_ms - start_ms > MAX_WINDOW_MS {
            return Err(invalid("end_time", "a record task lasts at most 24 hours (end_time - start_time)"));
        }
        if start_ms - now > MAX_LEAD_MS {
            return Err(invalid("start_time", "start_time is more than 30 days ahead"));
        }
        if let Some(url) = &n.url {
            if url.len() > MAX_URL_LEN {
                return Err(invalid("url", format!("url is longer than {MAX_URL_LEN} bytes")));
            }
            crate::ingest::pull::check_url(url).map_err(|e| invalid("url", e.to_string()))?;
        }
        if n.note.as_ref().is_some_and(|s| s.len() > MAX_NOTE_LEN) {
            return Err(invalid("note", format!("note is longer than {MAX_NOTE_LEN} bytes")));
        }
        let rt = self.inner.recorder.runtime();
        if !rt.config.template.contains_key(&n.template) {
            let known: Vec<_> = rt.config.template.keys().cloned().collect();
            return Err(invalid(
                "template",
                format!("template {:?} is not configured (configured: {})", n.template, known.join(", ")),
            ));
        }
        let active = self.inner.catalog.count_active_tasks(&n.app, &n.stream).await?;
        if active >= MAX_ACTIVE_PER_STREAM {
            return Err(TaskError::Conflict {
                field: Some("stream"),
                message: format!(
                    "{}/{} has {active} active record tasks; at most {MAX_ACTIVE_PER_STREAM} are allowed",
                    n.app, n.stream
                ),
            });
        }
        let task = Task {
            id: new_id(),
            domain,
            app: n.app,
            stream: n.stream,
            start_ms,
            end_ms: n.end_ms,
            template: n.template,
            note: n.note,
            status: if start_ms <= now { TaskStatus::Waiting } else { TaskStatus::Scheduled },
            reason: None,
            node_id: None,
            created_ms: now,
            updated_ms: now,
            url: n.url,
        };
        self.inner.catalog.insert_task(&task).await?;
        self.inner.cache.write().unwrap_or_else(|e| e.into_inner()).push(task.clone());
        self.inner.wake.notify_one();
        tracing::info!(task = %task.id, app = %task.app, stream = %task.stream, template = %task.template,
            start_ms = task.start_ms, end_ms = task.end_ms, "record task created");
        self.tick().await;
        self.get(&task.id).await
    }

    /// A task as stored, with `scheduled` shown as `waiting` once its window has begun.
    pub async fn get(&self, id: &str) -> Result<Task, TaskError> {
        match self.inner.catalog.task(id).await? {
            Some(t) => Ok(present(t, now_ms())),
            None => Err(TaskError::NotFound(id.into())),
        }
    }

    pub async fn list(&self, q: &TaskQuery) -> Result<Page<Task>, TaskError> {
        let now = now_ms();
        let mut page = self.inner.catalog.tasks(q).await?;
        page.items = page.items.into_iter().map(|t| present(t, now)).collect();
        Ok(page)
    }

    /// Stops a task: its files close now and it never records again. Stopping a stopped task
    /// is not an error; stopping one that completed or failed is a conflict.
    pub async fn stop(&self, id: &str) -> Result<Task, TaskError> {
        let t = self.inner.catalog.task(id).await?.ok_or_else(|| TaskError::NotFound(id.into()))?;
        if t.status.is_active() {
            self.inner
                .catalog
                .set_task_status(id, TaskStatus::Stopped, Some("stopped through the API"), now_ms())
                .await?;
        }
        self.forget(id);
        let t = self.get(id).await?;
        match t.status {
            TaskStatus::Stopped => Ok(t),
            other => Err(TaskError::Conflict {
                field: None,
                message: format!("record task {id} is already {}", other.name()),
            }),
        }
    }

    /// Stops (when active) and removes a task; its recordings stay.
    pub async fn delete(&self, id: &str) -> Result<(), TaskError> {
        self.inner.catalog.set_task_status(id, TaskStatus::Stopped, Some("deleted"), now_ms()).await?;
        self.forget(id);
        if self.inner.catalog.delete_task(id).await? {
            Ok(())
        } else {
            Err(TaskError::NotFound(id.into()))
        }
    }

    /// Drops a task from the cache and ends its recordings here.
    fn forget(&self, id: &str) {
        self.inner.cache.write().unwrap_or_else(|e| e.into_inner()).retain(|t| t.id != id);
        self.stop_puller(id);
        let n = self.inner.recorder.detach_task(id);
        if n > 0 {
            tracing::info!(task = %id, recordings = n, "record task ended");
        }
        self.inner.wake.notify_one();
    }

    /// Carries out the tasks until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.refresh()) => {}
                _ = self.inner.wake.notified() => {}
                _ = shutdown.cancelled() => {
                    self.stop_pullers().await;
                    return;
                }
            }
            match self.inner.catalog.active_tasks().await {
                Ok(active) => *self.inner.cache.write().unwrap_or_else(|e| e.into_inner()) = active,
                Err(e) => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "cannot read record tasks; using the last list"
                    )
                }
            }
            self.tick().await;
        }
    }

    /// How long until the next round. A node alone on its SQLite catalog with no active task has
    /// nothing to look at: tasks are created through this node, which wakes the loop
    /// ([`Tasks::create`]). A fleet's nodes, or any node with a task to carry out, look every
    /// [`REFRESH`].
    fn refresh(&self) -> Duration {
        let idle = self.inner.cache.read().unwrap_or_else(|e| e.into_inner()).is_empty();
        if idle && self.inner.catalog.backend() == crate::catalog::Backend::Sqlite {
            IDLE_REFRESH
        } else {
            REFRESH
        }
    }

    /// One round: start, end and account for every active task against the live streams.
    async fn tick(&self) {
        let now = now_ms();
        let recorder = &self.inner.recorder;
        let catalog = &self.inner.catalog;
        let tasks = self.inner.cache.read().unwrap_or_else(|e| e.into_inner()).clone();
        self.pull_round(&tasks, now).await;
        let live: Vec<StreamKey> = recorder.active().into_iter().map(|(k, _)| k).collect();
        let recording = recorder.task_recordings();
        // Recordings of tasks no longer active (stopped or deleted on another node).
        for (id, _) in &recording {
            if !tasks.iter().any(|t| &t.id == id) {
                recorder.detach_task(id);
            }
        }
        for t in &tasks {
            let result = if now >= t.end_ms {
                recorder.detach_task(&t.id);
                match catalog.set_task_status(&t.id, TaskStatus::Completed, None, now).await {
                    Ok(true) => {
                        tracing::info!(task = %t.id, "record task completed");
                        let done = Task { status: TaskStatus::Completed, updated_ms: now, ..t.clone() };
                        recorder.task_event("task_completed", &done).await;
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                }
            } else if now >= t.start_ms {
                let mut failure = None;
                for key in live.iter().filter(|k| stream_of(t, k)) {
                    match recorder.attach_task(key, &t.id, &t.template) {
                        Ok(_) => {}
                        Err(e) if recorder.runtime().config.template.contains_key(&t.template) => {
                            tracing::debug!(task = %t.id, "not attached: {e}")
                        }
                        Err(e) => failure = Some(e),
                    }
                }
                // Recording here: a recording of it runs (a template without formats has none).
                let here = recorder.task_recordings().iter().any(|(id, _)| id == &t.id);
                if let Some(reason) = failure {
                    recorder.detach_task(&t.id);
                    tracing::error!(task = %t.id, "record task failed: {reason}");
                    match catalog.set_task_status(&t.id, TaskStatus::Failed, Some(&reason), now).await {
                        Ok(true) => {
                            let failed =
                                Task { status: TaskStatus::Failed, reason: Some(reason), updated_ms: now, ..t.clone() };
                            recorder.task_event("task_failed", &failed).await;
                            Ok(())
                        }
                        Ok(false) => Ok(()),
                        Err(e) => Err(e),
                    }
                } else if here && t.status != TaskStatus::Recording {
                    catalog.set_task_status(&t.id, TaskStatus::Recording, None, now).await.map(|_| ())
                } else if here
                    && (now - t.updated_ms >= HEARTBEAT_MS || t.node_id.as_deref() != Some(catalog.node_id()))
                {
                    // Still recording here: said again, so other nodes know this node lives.
                    catalog.touch_task(&t.id, now).await.map(|_| ())
                } else if !here
                    && (t.status == TaskStatus::Scheduled
                        || t.status == TaskStatus::Recording
                            && (t.node_id.as_deref() == Some(catalog.node_id()) || now - t.updated_ms > STALE_MS))
                {
                    catalog.set_task_status(&t.id, TaskStatus::Waiting, None, now).await.map(|_| ())
                } else {
                    Ok(())
                }
            } else {
                Ok(())
            };
            if let Err(e) = result {
                tracing::warn!(task = %t.id, error = &e as &dyn std::error::Error, "cannot update record task");
            }
        }
    }
}

/// What a reader sees: a scheduled task whose window has begun is waiting for its publisher.
fn present(mut t: Task, now: i64) -> Task {
    if t.status == TaskStatus::Scheduled && now >= t.start_ms {
        t.status = TaskStatus::Waiting;
    }
    t
}
