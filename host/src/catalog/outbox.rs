//! The outbox: events waiting for (or done with) delivery to the callbacks.
//!
//! A row is one event for one callback: the exact request (URL, headers, body) to send, written
//! before any attempt. A deliverer claims due rows with a lease (one node attempts a row at a
//! time, also in a fleet), then records the outcome: `delivered`, `failed` (a permanent answer,
//! too many attempts, or past `expires_ms`), or back to `pending` with its next attempt time.

use base64::Engine;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Arg, Backend, Catalog, CatalogError, Deadline, Page, Sql};

/// Where an event stands.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Pending,
    Delivered,
    Failed,
}

impl EventStatus {
    pub fn name(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Delivered => "delivered",
            EventStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [EventStatus::Pending, EventStatus::Delivered, EventStatus::Failed].into_iter().find(|v| v.name() == s)
    }
}

/// An event to queue: what to send and until when to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub id: String,
    /// `file_created`, `record_started`, …
    pub event: String,
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub task_id: Option<String>,
    pub created_ms: i64,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Budget of one attempt.
    pub timeout_ms: i64,
    /// Attempts before giving up (0: until `expires_ms`).
    pub max_attempts: u32,
    /// No attempt starts after this.
    pub expires_ms: i64,
}

/// A queued event and how its delivery went.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub event: String,
    pub domain: String,
    pub app: String,
    pub stream: String,
    pub task_id: Option<String>,
    pub created_ms: i64,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body as sent; shown as text when it is UTF-8 (`body_base64` false), else base64.
    #[serde(skip)]
    pub body: Vec<u8>,
    pub timeout_ms: i64,
    pub max_attempts: u32,
    pub status: EventStatus,
    pub attempts: u32,
    pub next_ms: i64,
    pub expires_ms: i64,
    pub last_error: Option<String>,
    /// The HTTP status of the last answer, if there was one.
    pub last_status: Option<u16>,
    /// When it was delivered or given up on.
    pub finished_ms: Option<i64>,
    pub node_id: String,
}

/// How an attempt at an event ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    Delivered {
        id: String,
        at_ms: i64,
        status: u16,
    },
    /// Tried again at `next_ms`.
    Retry {
        id: String,
        at_ms: i64,
        next_ms: i64,
        error: String,
        status: Option<u16>,
    },
    /// Given up on for good.
    Failed {
        id: String,
        at_ms: i64,
        error: String,
        status: Option<u16>,
    },
}

/// An events listing's filters.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub status: Option<EventStatus>,
    pub event: Option<String>,
    pub limit: u32,
    pub cursor: Option<String>,
}

const EVENT_COLUMNS: &str = "id, event, domain, app, stream, task_id, created_ms, url, headers, body, body_base64, \
     timeout_ms, max_attempts, status, attempts, next_ms, expires_ms, last_error, last_status, finished_ms, node_id";

fn event_from(r: &AnyRow) -> Result<Event, sqlx::Error> {
    let status: String = r.try_get("status")?;
    let headers: String = r.try_get("headers")?;
    let body: String = r.try_get("body")?;
    let body = if r.try_get::<i64, _>("body_base64")? != 0 {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| sqlx::Error::Decode(format!("event body: {e}").into()))?
    } else {
        body.into_bytes()
    };
    Ok(Event {
        id: r.try_get("id")?,
        event: r.try_get("event")?,
        domain: r.try_get("domain")?,
        app: r.try_get("app")?,
        stream: r.try_get("stream")?,
        task_id: r.try_get("task_id")?,
        created_ms: r.try_get("created_ms")?,
        url: r.try_get("url")?,
        headers: serde_json::from_str(&headers)
            .map_err(|e| sqlx::Error::Decode(format!("event headers: {e}").into()))?,
        body,
        timeout_ms: r.try_get("timeout_ms")?,
        max_attempts: r.try_get::<i64, _>("max_attempts")?.clamp(0, i64::from(u32::MAX)) as u32,
        status: EventStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown event status {status:?}").into()))?,
        attempts: r.try_get::<i64, _>("attempts")?.clamp(0, i64::from(u32::MAX)) as u32,
        next_ms: r.try_get("next_ms")?,
        expires_ms: r.try_get("expires_ms")?,
        last_error: r.try_get("last_error")?,
        last_status: r.try_get::<Option<i64>, _>("last_status")?.map(|s| s.clamp(0, 999) as u16),
        finished_ms: r.try_get("finished_ms")?,
        node_id: r.try_get("node_id")?,
    })
}

/// Most characters of an error kept on a row.
const MAX_ERROR: usize = 500;

fn short(error: &str) -> &str {
    match error.char_indices().nth(MAX_ERROR) {
        Some((i, _)) => &error[..i],
        None => error,
    }
}

impl Catalog {
    /// Queues `events` (one transaction) and wakes this node's deliverer.
    pub async fn enqueue_events(&self, events: &[NewEvent]) -> Result<(), CatalogError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().within().await??;
        for e in events {
            let (body, b64) = match std::str::from_utf8(&e.body) {
                Ok(s) => (s.to_owned(), 0i64),
                Err(_) => (base64::engine::general_purpose::STANDARD.encode(&e.body), 1),
            };
            let headers = serde_json::to_string(&e.headers).unwrap_or_else(|_| "[]".into());
            sqlx::query(
                "INSERT INTO events (id, event, domain, app, stream, task_id, created_ms, url, headers, body, \
                 body_base64, timeout_ms, max_attempts, status, attempts, next_ms, expires_ms, node_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending', 0, $14, $15, $16)",
            )
            .bind(&e.id)
            .bind(&e.event)
            .bind(&e.domain)
            .bind(&e.app)
            .bind(&e.stream)
            .bind(e.task_id.as_deref())
            .bind(e.created_ms)
            .bind(&e.url)
            .bind(headers)
            .bind(body)
            .bind(b64)
            .bind(e.timeout_ms)
            .bind(i64::from(e.max_attempts))
            .bind(e.created_ms)
            .bind(e.expires_ms)
            .bind(&self.node_id)
            .execute(&mut *tx)
            .within()
            .await??;
        }
        tx.commit().within().await??;
        self.outbox_wake.notify_one();
        Ok(())
    }

    /// Resolves when this node queues an event (or was already told so since the last wait).
    pub async fn events_queued(&self) {
        self.outbox_wake.notified().await
    }

    /// Leases up to `limit` pending events due at `now_ms` to this node until `lease_until_ms`,
    /// oldest due first. A row leased by a node is not claimed by another until its lease ends.
    pub async fn claim_events(&self, now_ms: i64, lease_until_ms: i64, limit: u32) -> Result<Vec<Event>, CatalogError> {
        // PostgreSQL: rows another node is claiming are skipped, not waited for (SQLite has one
        // writer at a time). The outer conditions are checked again on the locked rows.
        let skip_locked = if self.backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let rows = sqlx::query(&format!(
            "UPDATE events SET lease_node = $1, lease_until_ms = $2 \
             WHERE status = 'pending' AND next_ms <= $3 AND lease_until_ms <= $3 AND id IN \
             (SELECT id FROM events WHERE status = 'pending' AND next_ms <= $3 AND lease_until_ms <= $3 \
              ORDER BY next_ms LIMIT $4{skip_locked}) RETURNING {EVENT_COLUMNS}"
        ))
        .bind(&self.node_id)
        .bind(lease_until_ms)
        .bind(now_ms)
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .within()
        .await??;
        let mut events = rows.iter().map(event_from).collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| e.next_ms);
        Ok(events)
    }

    /// Records an attempt that delivered `id`.
    pub async fn event_delivered(&self, id: &str, now_ms: i64, status: u16) -> Result<(), CatalogError> {
        self.finish_events(&[EventOutcome::Delivered { id: id.into(), at_ms: now_ms, status }]).await
    }

    /// Records a failed attempt of `id`: tried again at `next_ms`, or, with `next_ms` `None`,
    /// failed for good.
    pub async fn event_attempt_failed(
        &self,
        id: &str,
        now_ms: i64,
        next_ms: Option<i64>,
        error: &str,
        status: Option<u16>,
    ) -> Result<(), CatalogError> {
        let outcome = match next_ms {
            Some(next_ms) => EventOutcome::Retry { id: id.into(), at_ms: now_ms, next_ms, error: error.into(), status },
            None => EventOutcome::Failed { id: id.into(), at_ms: now_ms, error: error.into(), status },
        };
        self.finish_events(&[outcome]).await
    }

    /// Records the outcomes of attempts, in one transaction (a deliverer batches them).
    pub async fn finish_events(&self, outcomes: &[EventOutcome]) -> Result<(), CatalogError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().within().await??;
        for o in outcomes {
            let q = match o {
                EventOutcome::Delivered { id, at_ms, status } => sqlx::query(
                    "UPDATE events SET status = 'delivered', attempts = attempts + 1, finished_ms = $2, \
                     last_status = $3, last_error = NULL, lease_node = NULL, lease_until_ms = 0 WHERE id = $1",
                )
                .bind(id.as_str())
                .bind(*at_ms)
                .bind(i64::from(*status)),
                EventOutcome::Retry { id, next_ms, error, status, .. } => sqlx::query(
                    "UPDATE events SET attempts = attempts + 1, next_ms = $2, last_error = $3, last_status = $4, \
                     lease_node = NULL, lease_until_ms = 0 WHERE id = $1",
                )
                .bind(id.as_str())
                .bind(*next_ms)
                .bind(short(error))
                .bind(status.map(i64::from)),
                EventOutcome::Failed { id, at_ms, error, status } => sqlx::query(
                    "UPDATE events SET status = 'failed', attempts = attempts + 1, finished_ms = $2, \
                     last_error = $3, last_status = $4, lease_node = NULL, lease_until_ms = 0 WHERE id = $1",
                )
                .bind(id.as_str())
                .bind(*at_ms)
                .bind(short(error))
                .bind(status.map(i64::from)),
            };
            q.execute(&mut *tx).within().await??;
        }
        tx.commit().within().await??;
        if outcomes.iter().any(|o| matches!(o, EventOutcome::Retry { .. })) {
            // A retry is due later: the deliverer sleeping until the earliest due event looks again.
            self.outbox_wake.notify_one();
        }
        Ok(())
    }

    /// Gives a claimed event back unattempted, due at `next_ms`.
    pub async fn release_event(&self, id: &str, next_ms: i64) -> Result<(), CatalogError> {
        sqlx::query("UPDATE events SET next_ms = $2, lease_node = NULL, lease_until_ms = 0 WHERE id = $1")
            .bind(id)
            .bind(next_ms)
            .execute(&self.pool)
            .within()
            .await??;
        self.outbox_wake.notify_one();
        Ok(())
    }

    /// When the earliest pending event can be claimed (its next attempt, or the end of the lease
    /// a node holds on it), in ms since the epoch; `None` when nothing is pending.
    pub async fn next_event_due(&self) -> Result<Option<i64>, CatalogError> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN lease_until_ms > next_ms THEN lease_until_ms ELSE next_ms END) AS due \
             FROM events WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .within()
        .await??;
        Ok(row.try_get::<Option<i64>, _>("due")?)
    }

    /// Pending events due at `now_ms` (claimed or not).
    pub async fn count_due_events(&self, now_ms: i64) -> Result<u64, CatalogError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE status = 'pending' AND next_ms <= $1")
            .bind(now_ms)
            .fetch_one(&self.pool)
            .within()
            .await??;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// Moves the next attempt of every pending event for `url` to no earlier than `next_ms`
    /// (the endpoint is down: one event probes it, the others wait). Returns how many moved.
    pub async fn defer_events(&self, url: &str, now_ms: i64, next_ms: i64) -> Result<u64, CatalogError> {
        let r = sqlx::query(
            "UPDATE events SET next_ms = $3 WHERE url = $1 AND status = 'pending' AND next_ms < $3 \
             AND lease_until_ms <= $2",
        )
        .bind(url)
        .bind(now_ms)
        .bind(next_ms)
        .execute(&self.pool)
        .within()
        .await??;
        Ok(r.rows_affected())
    }

    /// Makes every pending event for `url` due now (the endpoint answered again). Returns how many.
    pub async fn hurry_events(&self, url: &str, now_ms: i64) -> Result<u64, CatalogError> {
        let r = sqlx::query("UPDATE events SET next_ms = $2 WHERE url = $1 AND status = 'pending' AND next_ms > $2")
            .bind(url)
            .bind(now_ms)
            .execute(&self.pool)
            .within()
            .await??;
        if r.rows_affected() > 0 {
            self.outbox_wake.notify_one();
        }
        Ok(r.rows_affected())
    }

    /// Puts a failed (or pending) event back in the queue, due now, with a new deadline.
    /// `None` if there is no such event; `Some(false)` if it was already delivered.
    pub async fn retry_event(&self, id: &str, now_ms: i64, expires_ms: i64) -> Result<Option<bool>, CatalogError> {
        let r = sqlx::query(
            "UPDATE events SET status = 'pending', next_ms = $2, expires_ms = $3, finished_ms = NULL, \
             lease_node = NULL, lease_until_ms = 0, max_attempts = CASE WHEN max_attempts = 0 THEN 0 \
             ELSE attempts + max_attempts END WHERE id = $1 AND status <> 'delivered'",
        )
        .bind(id)
        .bind(now_ms)
        .bind(expires_ms)
        .execute(&self.pool)
        .within()
        .await??;
        if r.rows_affected() > 0 {
            self.outbox_wake.notify_one();
            return Ok(Some(true));
        }
        Ok(self.event(id).await?.map(|_| false))
    }

    pub async fn event(&self, id: &str) -> Result<Option<Event>, CatalogError> {
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .within()
            .await??;
        Ok(row.as_ref().map(event_from).transpose()?)
    }

    /// Events matching `q`, newest first, one page.
    pub async fn events(&self, q: &EventQuery) -> Result<Page<Event>, CatalogError> {
        let mut sql = Sql::new(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1"));
        if let Some(s) = q.status {
            sql.push(" AND status = ?", [Arg::S(s.name().into())]);
        }
        if let Some(e) = &q.event {
            sql.push(" AND event = ?", [Arg::S(e.clone())]);
        }
        self.created_page(sql, q.cursor.as_deref(), q.limit, event_from, |e| (e.created_ms, e.id.clone())).await
    }

    /// How many events have `status`.
    pub async fn count_events(&self, status: EventStatus) -> Result<u64, CatalogError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE status = $1")
            .bind(status.name())
            .fetch_one(&self.pool)
            .within()
            .await??;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// Forgets delivered events finished before `before_ms` (failed ones stay to be seen and
    /// retried). Returns how many went.
    pub async fn prune_events(&self, before_ms: i64) -> Result<u64, CatalogError> {
        let r = sqlx::query("DELETE FROM events WHERE status = 'delivered' AND finished_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .within()
            .await??;
        Ok(r.rows_affected())
    }
}
