//! The catalog: what was recorded and the record tasks, in SQLite (the embedded default, a file
//! in `data_dir`) or PostgreSQL (a fleet sharing one database). All of Reel's SQL is here.
//!
//! One dialect serves both: `$N` parameters, `TEXT` and `BIGINT` columns, times as Unix
//! milliseconds. Migrations are checked in (`migrations/`), versioned, and applied at start
//! (on PostgreSQL under an advisory lock, so nodes starting together apply them once).

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

use crate::config::CatalogConfig;

mod outbox;
pub use outbox::{Event, EventOutcome, EventQuery, EventStatus, NewEvent};

/// The migrations, in order; a released one is never edited (its checksum is checked).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "recordings and tasks", include_str!("migrations/0001_recordings_and_tasks.sql")),
    (2, "uploads", include_str!("migrations/0002_uploads.sql")),
    (3, "events", include_str!("migrations/0003_events.sql")),
    (4, "pull tasks", include_str!("migrations/0004_pull_tasks.sql")),
];

/// Longest wait for a database connection (a down PostgreSQL fails requests, not the node).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most rows one listing returns.
pub const MAX_PAGE: u32 = 1000;
/// Rows a listing returns when it names no `limit`.
pub const DEFAULT_PAGE: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot open the catalog at {url}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot create {path}")]
    Dir { path: String, source: std::io::Error },
    #[error("cannot apply the catalog's migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("catalog query failed")]
    Query(#[from] sqlx::Error),
    #[error("invalid cursor {0:?}")]
    Cursor(String),
    #[error("the catalog did not answer within {} s", QUERY_TIMEOUT.as_secs())]
    Timeout(#[from] tokio::time::error::Elapsed),
    #[error("the insert of this row with others failed: {0}")]
    Group(String),
}

/// Longest a query may take: a hung database fails the request instead of holding it (and
/// the scheduler, and shutdown) forever.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A catalog operation with [`QUERY_TIMEOUT`].
trait Deadline: Future + Sized {
    fn within(self) -> tokio::time::Timeout<Self> {
        tokio::time::timeout(QUERY_TIMEOUT, self)
    }
}

impl<F: Future> Deadline for F {}

/// Which database a catalog speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Recordings and record tasks, shared by every part of the node; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
    backend: Backend,
    node_id: String,
    /// Woken when this node queues events, so delivery starts at once.
    outbox_wake: std::sync::Arc<tokio::sync::Notify>,
    /// Recordings waiting to be inserted together ([`Catalog::insert_recording`]).
    group: std::sync::Arc<Group>,
}

/// Group commit of recordings: the rows of files closed while an insert runs wait here and go
/// in the next one, all in one statement. A burst of closes (streams that started together
/// and are cut together, every publisher of a node leaving at once) then costs the database a
/// few statements and commits, not one each, and the burst does not queue row by row.
#[derive(Default)]
struct Group {
    waiting: std::sync::Mutex<Vec<Waiting>>,
    /// Held by the caller inserting a group, the others queue behind it; when the last group
    /// statement started.
    turn: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Insert statements run (tests: fewer than the rows when files close together).
    statements: std::sync::atomic::AtomicU64,
    /// Statements that waited for a burst's rows (tests: a lone row does not).
    lingered: std::sync::atomic::AtomicU64,
}

/// A row waiting for its group, and where its outcome goes.
type Waiting = (Recording, tokio::sync::oneshot::Sender<Result<(), CatalogError>>);

/// Under a burst ([`Catalog::insert_recording_in_burst`]), a group statement starts at most
/// this long after the one before: the rows of the files closing meanwhile go in it, not each in
/// a statement of its own (files of streams cut together close over a second or two, one every
/// ~10 ms at 50 streams, each insert done before the next comes: grouping only what queued
/// during an insert left one statement, and two thread wake-ups, per row). A row with no
/// statement in the last [`GROUP_LINGER`] goes in at once.
const GROUP_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// Most rows in one insert statement (22 parameters each: under SQLite's 32,766 and
/// PostgreSQL's 65,535).
const GROUP_ROWS: usize = 256;

/// One stored file (an HLS recording is its playlist; its segments are not rows).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Recording {
    pub id: String,
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub format: String,
    pub storage: String,
    pub key: String,
    pub size: u64,
    pub duration_ms: u64,
    /// First and last decoding timestamps in the file, in the stream's own milliseconds.
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    /// Wall-clock start and end, Unix milliseconds.
    pub start_ms: i64,
    pub end_ms: i64,
    pub session_id: String,
    pub task_id: Option<String>,
    pub template: String,
    pub node_id: String,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    /// The file ended at an error (it is complete and playable up to there).
    pub failed: bool,
    /// The object's ETag (object storage).
    pub etag: Option<String>,
    /// `stored`, `spooled` (waiting for the object storage) or `failed` (refused for good).
    pub upload_state: String,
}

/// A listing's filters; `None` matches anything.
#[derive(Clone, Debug, Default)]
pub struct RecordingQuery {
    pub domain: Option<String>,
    pub app: Option<String>,
    pub stream: Option<String>,
    pub format: Option<String>,
    pub task_id: Option<String>,
    /// Recordings that overlap `[from_ms, to_ms]`.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// One page of a listing, newest first; `next` continues it.
#[derive(Clone, Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Where a record task stands. `Scheduled`, `Waiting` and `Recording` are active.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Its window has not begun.
    Scheduled,
    /// In its window, no publisher.
    Waiting,
    /// In its window, recording on `node_id`.
    Recording,
    /// Its window ended.
    Completed,
    /// Stopped through the API.
    Stopped,
    /// Could not record (`reason`).
    Failed,
}

impl TaskStatus {
    pub const ACTIVE: [TaskStatus; 3] = [TaskStatus::Scheduled, TaskStatus::Waiting, TaskStatus::Recording];

    pub fn name(self) -> &'static str {
        match self {
            TaskStatus::Scheduled => "scheduled",
            TaskStatus::Waiting => "waiting",
            TaskStatus::Recording => "recording",
            TaskStatus::Completed => "completed",
            TaskStatus::Stopped => "stopped",
            TaskStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            TaskStatus::Scheduled,
            TaskStatus::Waiting,
            TaskStatus::Recording,
            TaskStatus::Completed,
            TaskStatus::Stopped,
            TaskStatus::Failed,
        ]
        .into_iter()
        .find(|t| t.name() == s)
    }

    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }
}

/// A record task: record `domain/app/stream` with `template` from `start_ms` to `end_ms`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    /// `*` records the stream under any domain.
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub template: String,
    pub note: Option<String>,
    pub status: TaskStatus,
    pub reason: Option<String>,
    /// The node recording it (while `recording`) or that last did.
    pub node_id: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// A pull task's source (`rtmp://…`, `http(s)://…`); `None` for a record task.
    pub url: Option<String>,
}

/// A task listing's filters.
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    /// `Some(true)`: pull tasks only; `Some(false)`: record tasks only.
    pub pull: Option<bool>,
    pub domain: Option<String>,
    pub app: Option<String>,
    pub stream: Option<String>,
    pub status: Option<TaskStatus>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// The checked-in migrations, embedded in the binary.
#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, what, sql)| {
                    Migration::new(version, Cow::Borrowed(what), MigrationType::Simple, Cow::Borrowed(sql), false)
                })
                .collect())
        })
    }
}

/// A URL fit for logs: the password is hidden.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.into(),
        },
        _ => url.into(),
    }
}

/// A random id: 16 hex digits.
pub fn new_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Bound parameters of a query built at run time.
enum Arg {
    I(i64),
    S(String),
}

/// SQL assembled from optional filters, with its parameters numbered as they are added.
struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    fn new(text: &str) -> Self {
        Self { text: text.into(), args: Vec::new() }
    }
    /// Appends `clause` with each `?` replaced by the next parameter number.
    fn push(&mut self, clause: &str, args: impl IntoIterator<Item = Arg>) -> &mut Self {
        let mut n = self.args.len();
        for part in clause.split_inclusive('?') {
            match part.strip_suffix('?') {
                Some(p) => {
                    n += 1;
                    self.text.push_str(p);
                    self.text.push_str(&format!("${n}"));
                }
                None => self.text.push_str(part),
            }
        }
        self.args.extend(args);
        self
    }
    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::I(i) => q.bind(*i),
                Arg::S(s) => q.bind(s.as_str()),
            };
        }
        q
    }
}

/// `start_ms.id` of the last row of a page: where the next one continues.
fn cursor_of(start_ms: i64, id: &str) -> String {
    format!("{start_ms}.{id}")
}

fn parse_cursor(c: &str) -> Result<(i64, String), CatalogError> {
    let (t, id) = c.split_once('.').ok_or_else(|| CatalogError::Cursor(c.into()))?;
    let t = t.parse().map_err(|_| CatalogError::Cursor(c.into()))?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CatalogError::Cursor(c.into()));
    }
    Ok((t, id.into()))
}

fn recording_from(r: &AnyRow) -> Result<Recording, sqlx::Error> {
    Ok(Recording {
        id: r.try_get("id")?,
        domain: r.try_get("domain")?,
        app: r.try_get("app")?,
        stream: r.try_get("stream")?,
        format: r.try_get("format")?,
        storage: r.try_get("storage")?,
        key: r.try_get("object_key")?,
        size: r.try_get::<i64, _>("size")?.max(0) as u64,
        duration_ms: r.try_get::<i64, _>("duration_ms")?.max(0) as u64,
        first_ts_ms: r.try_get("first_ts_ms")?,
        last_ts_ms: r.try_get("last_ts_ms")?,
        start_ms: r.try_get("start_ms")?,
        end_ms: r.try_get("end_ms")?,
        session_id: r.try_get("session_id")?,
        task_id: r.try_get("task_id")?,
        template: r.try_get("template")?,
        node_id: r.try_get("node_id")?,
        video_codec: r.try_get("video_codec")?,
        audio_codec: r.try_get("audio_codec")?,
        failed: r.try_get::<i64, _>("failed")? != 0,
        etag: r.try_get("etag")?,
        upload_state: r.try_get("upload_state")?,
    })
}

fn task_from(r: &AnyRow) -> Result<Task, sqlx::Error> {
    let status: String = r.try_get("status")?;
    Ok(Task {
        id: r.try_get("id")?,
        domain: r.try_get("domain")?,
        app: r.try_get("app")?,
        stream: r.try_get("stream")?,
        start_ms: r.try_get("start_ms")?,
        end_ms: r.try_get("end_ms")?,
        template: r.try_get("template")?,
        note: r.try_get("note")?,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown task status {status:?}").into()))?,
        reason: r.try_get("reason")?,
        node_id: r.try_get("node_id")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        url: r.try_get("source_url")?,
    })
}

const RECORDING_COLUMNS: &str = "id, domain, app, stream, format, storage, object_key, size, duration_ms, \
     first_ts_ms, last_ts_ms, start_ms, end_ms, session_id, task_id, template, node_id, video_codec, audio_codec, failed, etag, upload_state";
const TASK_COLUMNS: &str = "id, domain, app, stream, start_ms, end_ms, template, note, status, reason, node_id, \
     created_ms, updated_ms, source_url";

/// The statement that adds recordings, up to its `VALUES` ([`insert_sql`] adds the rows).
const INSERT_RECORDING: &str = "INSERT INTO recordings (id, domain, app, stream, format, storage, object_key, \
     size, duration_ms, first_ts_ms, last_ts_ms, start_ms, end_ms, session_id, task_id, template, node_id, \
     video_codec, audio_codec, failed, etag, upload_state) VALUES ";
/// Columns of a recording row ([`INSERT_RECORDING`], [`bind_recording`]).
const RECORDING_PARAMS: usize = 22;

/// `INSERT_RECORDING` with `rows` tuples of placeholders (`$1` … `$22`, `$23` …).
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(INSERT_RECORDING);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..RECORDING_PARAMS {
            let sep = if col == 0 { "" } else { ", " };
            sql.push_str(&format!("{sep}${}", row * RECORDING_PARAMS + col + 1));
        }
        sql.push(')');
    }
    sql
}

/// `sql` (from [`insert_sql`] for `rows.len()` rows) with the rows bound.
fn insert<'q>(sql: &'q str, rows: &'q [Recording]) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    rows.iter().fold(sqlx::query(sql), bind_recording)
}

fn bind_recording<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    r: &'q Recording,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&r.id)
        .bind(&r.domain)
        .bind(&r.app)
        .bind(&r.stream)
        .bind(&r.format)
        .bind(&r.storage)
        .bind(&r.key)
        .bind(r.size.min(i64::MAX as u64) as i64)
        .bind(r.duration_ms.min(i64::MAX as u64) as i64)
        .bind(r.first_ts_ms)
        .bind(r.last_ts_ms)
        .bind(r.start_ms)
        .bind(r.end_ms)
        .bind(&r.session_id)
        .bind(r.task_id.as_deref())
        .bind(&r.template)
        .bind(&r.node_id)
        .bind(r.video_codec.as_deref())
        .bind(r.audio_codec.as_deref())
        .bind(i64::from(r.failed))
        .bind(r.etag.as_deref())
        .bind(&r.upload_state)
}

impl Catalog {
    /// Opens (creating when needed) the catalog `config` names, the SQLite file in `data_dir`
    /// by default, and applies pending migrations.
    pub async fn open(config: &CatalogConfig, data_dir: &Path, node_id: String) -> Result<Self, CatalogError> {
        sqlx::any::install_default_drivers();
        let url = match config.resolved_url().map_err(|e| CatalogError::Open {
            url: "catalog.url".into(),
            source: sqlx::Error::Configuration(e.into()),
        })? {
            Some(u) => u,
            None => {
                std::fs::create_dir_all(data_dir)
                    .map_err(|source| CatalogError::Dir { path: data_dir.display().to_string(), source })?;
                format!("sqlite://{}?mode=rwc", data_dir.join("reel.db").display())
            }
        };
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections.unwrap_or(8))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Readers beside one writer, durable at each commit's checkpoint, and a
                        // writer waits for another instead of failing.
                        for pragma in
                            ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", "PRAGMA busy_timeout = 5000"]
                        {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| CatalogError::Open { url: redact(&url), source })?;
        let migrator = Migrator::new(Embedded).await.map_err(CatalogError::Migrate)?;
        migrator.run(&pool).await.map_err(CatalogError::Migrate)?;
        tracing::info!(catalog = %redact(&url), node = %node_id, "catalog open");
        Ok(Self { pool, backend, node_id, outbox_wake: Default::default(), group: Default::default() })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This node's name, as recorded in rows it writes.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").fetch_one(&self.pool).within().await.is_ok_and(|r| r.is_ok())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// One page of `sql` (its filters pushed; it selects `created_ms` and `id`), newest created
    /// first, continuing after `cursor`.
    async fn created_page<T>(
        &self,
        mut sql: Sql,
        cursor: Option<&str>,
        limit: u32,
        row: fn(&AnyRow) -> Result<T, sqlx::Error>,
        created: fn(&T) -> (i64, String),
    ) -> Result<Page<T>, CatalogError> {
        if let Some(c) = cursor {
            let (t, id) = parse_cursor(c)?;
            sql.push(" AND (created_ms < ? OR (created_ms = ? AND id < ?))", [Arg::I(t), Arg::I(t), Arg::S(id)]);
        }
        let limit = limit.clamp(1, MAX_PAGE);
        sql.push(" ORDER BY created_ms DESC, id DESC LIMIT ?", [Arg::I(i64::from(limit) + 1)]);
        let rows = sql.query().fetch_all(&self.pool).within().await??;
        let mut items = rows.iter().map(row).collect::<Result<Vec<_>, _>>()?;
        let next = (items.len() > limit as usize).then(|| {
            items.truncate(limit as usize);
            let (t, id) = created(items.last().expect("a full page"));
            cursor_of(t, &id)
        });
        Ok(Page { items, next })
    }

    // ---- recordings ----

    /// Inserts a recording, with those of the files closed while the insert before it ran
    /// (group commit: one statement for all of them). Returns once its row is in; a group
    /// that fails is inserted row by row, so that one bad row does not lose the others.
    pub async fn insert_recording(&self, r: &Recording) -> Result<(), CatalogError> {
        self.insert_grouped(r, std::time::Duration::ZERO).await
    }

    /// [`Catalog::insert_recording`] for rows that come in bursts spread over a second or two
    /// (the files of streams cut together): within [`GROUP_LINGER`] of the last statement, the
    /// row waits for the end of that span, and the rows come meanwhile go in its statement.
    pub async fn insert_recording_in_burst(&self, r: &Recording) -> Result<(), CatalogError> {
        self.insert_grouped(r, GROUP_LINGER).await
    }

    async fn insert_grouped(&self, r: &Recording, linger: std::time::Duration) -> Result<(), CatalogError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.group.waiting.lock().unwrap_or_else(|e| e.into_inner()).push((r.clone(), done));
        {
            let mut turn = self.group.turn.lock().await;
            // Drained, not taken: the list keeps its room for the next burst, and the rows
            // taken are one allocation of their size (not a list grown row by row each burst).
            let taken = || self.group.waiting.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect::<Vec<_>>();
            let (last, now) = (*turn, std::time::Instant::now());
            let wait = last.map_or(std::time::Duration::ZERO, |t| (t + linger).saturating_duration_since(now));
            if !wait.is_zero() && !self.group.waiting.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                // A burst: the rows of the files closing meanwhile join this one's statement.
                self.group.lingered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
            // Everything queued meanwhile, this row included unless the group before took it.
            let mut rows = taken();
            if !rows.is_empty() {
                *turn = Some(std::time::Instant::now());
            }
            while !rows.is_empty() {
                let rest = rows.split_off(rows.len().min(GROUP_ROWS));
                self.insert_group(rows).await;
                rows = rest;
            }
        }
        // The group that took this row answered it (a dropped answer: that insert was cancelled).
        result.await.unwrap_or_else(|_| Err(CatalogError::Group("its insert was cancelled".into())))
    }

    async fn insert_group(&self, group: Vec<Waiting>) {
        let (rows, answers): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let sql = insert_sql(rows.len());
        self.group.statements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let res = match insert(&sql, &rows).execute(&self.pool).within().await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(CatalogError::Query(e)),
            Err(t) => Err(CatalogError::Timeout(t)),
        };
        match res {
            Ok(()) => answers.into_iter().for_each(|a| drop(a.send(Ok(())))),
            // Refused (not timed out: then the rows may be in): each row on its own.
            Err(CatalogError::Query(_)) if rows.len() > 1 => {
                let one = insert_sql(1);
                for (r, a) in rows.iter().zip(answers) {
                    let res = match insert(&one, std::slice::from_ref(r)).execute(&self.pool).within().await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(CatalogError::Query(e)),
                        Err(t) => Err(CatalogError::Timeout(t)),
                    };
                    let _ = a.send(res);
                }
            }
            Err(e) => {
                let why = e.to_string();
                let mut answers = answers.into_iter();
                if let Some(first) = answers.next() {
                    let _ = first.send(Err(e));
                }
                answers.for_each(|a| drop(a.send(Err(CatalogError::Group(why.clone())))));
            }
        }
    }

    /// Inserts many rows in one transaction (benchmarks, imports).
    pub async fn insert_recordings(&self, rows: &[Recording]) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().within().await??;
        let sql = insert_sql(1);
        for r in rows {
            insert(&sql, std::slice::from_ref(r)).execute(&mut *tx).within().await??;
        }
        tx.commit().within().await??;
        Ok(())
    }

    /// Recordings matching `q`, newest first (by wall-clock start), one page.
    pub async fn recordings(&self, q: &RecordingQuery) -> Result<Page<Recording>, CatalogError> {
        let mut sql = Sql::new(&format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE 1 = 1"));
        for (col, v) in [
            ("app", &q.app),
            ("stream", &q.stream),
            ("domain", &q.domain),
            ("format", &q.format),
            ("task_id", &q.task_id),
        ] {
            if let Some(v) = v {
                sql.push(&format!(" AND {col} = ?"), [Arg::S(v.clone())]);
            }
        }
        if let Some(to) = q.to_ms {
            sql.push(" AND start_ms <= ?", [Arg::I(to)]);
        }
        if let Some(from) = q.from_ms {
            sql.push(" AND end_ms >= ?", [Arg::I(from)]);
        }
        if let Some(c) = &q.cursor {
            let (t, id) = parse_cursor(c)?;
            sql.push(" AND (start_ms < ? OR (start_ms = ? AND id < ?))", [Arg::I(t), Arg::I(t), Arg::S(id)]);
        }
        let limit = q.limit.clamp(1, MAX_PAGE);
        sql.push(" ORDER BY start_ms DESC, id DESC LIMIT ?", [Arg::I(i64::from(limit) + 1)]);
        let rows = sql.query().fetch_all(&self.pool).within().await??;
        let mut items = rows.iter().map(recording_from).collect::<Result<Vec<_>, _>>()?;
        let next = (items.len() > limit as usize).then(|| {
            items.truncate(limit as usize);
            let last = items.last().expect("a full page");
            cursor_of(last.start_ms, &last.id)
        });
        Ok(Page { items, next })
    }

    pub async fn recording(&self, id: &str) -> Result<Option<Recording>, CatalogError> {
        let row = sqlx::query(&format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .within()
            .await??;
        Ok(row.as_ref().map(recording_from).transpose()?)
    }

    /// The recording stored at `key` in `storage`.
    pub async fn recording_at(&self, storage: &str, key: &str) -> Result<Option<Recording>, CatalogError> {
        let row =
            sqlx::query(&format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE storage = $1 AND object_key = $2"))
                .bind(storage)
                .bind(key)
                .fetch_optional(&self.pool)
                .within()
                .await??;
        Ok(row.as_ref().map(recording_from).transpose()?)
    }

    /// A spooled object reached its storage (possibly under another key) or was refused.
    pub async fn set_upload(
        &self,
        storage: &str,
        spooled_key: &str,
        key: &str,
        etag: Option<&str>,
        state: &str,
    ) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "UPDATE recordings SET object_key = $1, etag = COALESCE($2, etag), upload_state = $3 \
             WHERE storage = $4 AND object_key = $5",
        )
        .bind(key)
        .bind(etag)
        .bind(state)
        .bind(storage)
        .bind(spooled_key)
        .execute(&self.pool)
        .within()
        .await??;
        Ok(r.rows_affected() > 0)
    }

    /// Recordings of `template` that started before `before_ms`, oldest first, at most `limit`
    /// (retention).
    pub async fn expired(&self, template: &str, before_ms: i64, limit: u32) -> Result<Vec<Recording>, CatalogError> {
        let rows = sqlx::query(&format!(
            "SELECT {RECORDING_COLUMNS} FROM recordings WHERE template = $1 AND end_ms < $2 ORDER BY end_ms LIMIT $3"
        ))
        .bind(template)
        .bind(before_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .within()
        .await??;
        Ok(rows.iter().map(recording_from).collect::<Result<Vec<_>, _>>()?)
    }

    /// Removes a recording's row; whether there was one.
    pub async fn delete_recording(&self, id: &str) -> Result<bool, CatalogError> {
        let r = sqlx::query("DELETE FROM recordings WHERE id = $1").bind(id).execute(&self.pool).within().await??;
        Ok(r.rows_affected() > 0)
    }

    // ---- record tasks ----

    pub async fn insert_task(&self, t: &Task) -> Result<(), CatalogError> {
        sqlx::query(&format!(
            "INSERT INTO record_tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&t.id)
        .bind(&t.domain)
        .bind(&t.app)
        .bind(&t.stream)
        .bind(t.start_ms)
        .bind(t.end_ms)
        .bind(&t.template)
        .bind(t.note.as_deref())
        .bind(t.status.name())
        .bind(t.reason.as_deref())
        .bind(t.node_id.as_deref())
        .bind(t.created_ms)
        .bind(t.updated_ms)
        .bind(t.url.as_deref())
        .execute(&self.pool)
        .within()
        .await??;
        Ok(())
    }

    pub async fn task(&self, id: &str) -> Result<Option<Task>, CatalogError> {
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM record_tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .within()
            .await??;
        Ok(row.as_ref().map(task_from).transpose()?)
    }

    /// Tasks matching `q`, newest created first, one page.
    pub async fn tasks(&self, q: &TaskQuery) -> Result<Page<Task>, CatalogError> {
        let mut sql = Sql::new(&format!("SELECT {TASK_COLUMNS} FROM record_tasks WHERE 1 = 1"));
        match q.pull {
            Some(true) => sql.push(" AND source_url IS NOT NULL", []),
            Some(false) => sql.push(" AND source_url IS NULL", []),
            None => &mut sql,
        };
        for (col, v) in [("app", &q.app), ("stream", &q.stream), ("domain", &q.domain)] {
            if let Some(v) = v {
                sql.push(&format!(" AND {col} = ?"), [Arg::S(v.clone())]);
            }
        }
        if let Some(s) = q.status {
            sql.push(" AND status = ?", [Arg::S(s.name().into())]);
        }
        self.created_page(sql, q.cursor.as_deref(), q.limit, task_from, |t| (t.created_ms, t.id.clone())).await
    }

    /// Every task still `scheduled`, `waiting` or `recording`.
    pub async fn active_tasks(&self) -> Result<Vec<Task>, CatalogError> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM record_tasks WHERE status IN ('scheduled', 'waiting', 'recording') \
             ORDER BY created_ms, id"
        ))
        .fetch_all(&self.pool)
        .within()
        .await??;
        Ok(rows.iter().map(task_from).collect::<Result<Vec<_>, _>>()?)
    }

    /// Active tasks on one stream (any domain pattern) whose window ends after `now_ms`.
    pub async fn count_active_tasks(&self, app: &str, stream: &str) -> Result<u64, CatalogError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM record_tasks WHERE app = $1 AND stream = $2 \
             AND status IN ('scheduled', 'waiting', 'recording')",
        )
        .bind(app)
        .bind(stream)
        .fetch_one(&self.pool)
        .within()
        .await??;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// Moves an active task to `status` (with `reason`); false when it was no longer active (a
    /// task stopped, completed or failed stays so: nodes racing agree on the first word).
    pub async fn set_task_status(
        &self,
        id: &str,
        status: TaskStatus,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, CatalogError> {
        let node = (status == TaskStatus::Recording).then_some(self.node_id.as_str());
        let r = sqlx::query(
            "UPDATE record_tasks SET status = $1, reason = COALESCE($2, reason), node_id = COALESCE($3, node_id), \
             updated_ms = $4 WHERE id = $5 AND status IN ('scheduled', 'waiting', 'recording') AND status <> $1",
        )
        .bind(status.name())
        .bind(reason)
        .bind(node)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .within()
        .await??;
        Ok(r.rows_affected() > 0)
    }

    /// This node still records task `id` (a heartbeat; it also takes the task over from a node
    /// that stopped recording it).
    pub async fn touch_task(&self, id: &str, now_ms: i64) -> Result<bool, CatalogError> {
        let r =
            sqlx::query("UPDATE record_tasks SET updated_ms = $1, node_id = $2 WHERE id = $3 AND status = 'recording'")
                .bind(now_ms)
                .bind(&self.node_id)
                .bind(id)
                .execute(&self.pool)
                .within()
                .await??;
        Ok(r.rows_affected() > 0)
    }

    pub async fn delete_task(&self, id: &str) -> Result<bool, CatalogError> {
        let r = sqlx::query("DELETE FROM record_tasks WHERE id = $1").bind(id).execute(&self.pool).within().await??;
        Ok(r.rows_affected() > 0)
    }

    /// Takes or renews this node's lease on an active pull task until `until_ms`: granted when
    /// no other node holds an unexpired one. Returns whether this node holds it now.
    pub async fn lease_task(&self, id: &str, now_ms: i64, until_ms: i64) -> Result<bool, CatalogError> {
        let r = sqlx::query(
            "UPDATE record_tasks SET lease_node = $2, lease_until_ms = $4 WHERE id = $1 \
             AND status IN ('scheduled', 'waiting', 'recording') AND (lease_node = $2 OR lease_until_ms <= $3)",
        )
        .bind(id)
        .bind(&self.node_id)
        .bind(now_ms)
        .bind(until_ms)
        .execute(&self.pool)
        .within()
        .await??;
        Ok(r.rows_affected() > 0)
    }

    /// Gives up this node's lease on a task (another node may take it at once).
    pub async fn release_task(&self, id: &str) -> Result<(), CatalogError> {
        sqlx::query("UPDATE record_tasks SET lease_until_ms = 0 WHERE id = $1 AND lease_node = $2")
            .bind(id)
            .bind(&self.node_id)
            .execute(&self.pool)
            .within()
            .await??;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
