//! Delivery from the catalog's outbox: every queued event is POSTed to its callback until it is
//! delivered, fails for good, or is older than `[events] max_age`.
//!
//! The recorder writes each event (the exact request: URL, headers with `X-Reel-Event-Id` and
//! the signature, body) into the catalog before anything is sent; a [`Deliverer`] claims due
//! events with a lease, so in a fleet one node attempts an event at a time, and a node that dies
//! mid-attempt leaves it to the next after the lease. Delivery is at least once: a receiver
//! drops repeats by the event id.
//!
//! - A 2xx delivers. A 4xx other than 408 and 429 is a permanent failure (kept, listed, and
//!   retried by hand through the API); so is a URL that cannot be requested at all.
//! - Anything else (refused or reset connections, timeouts, 5xx, 408, 429) is retried with
//!   exponential backoff and full jitter (`backoff` doubling up to `max_backoff`, each wait drawn
//!   from its upper half). The backoff is per endpoint: while an endpoint is down its events wait
//!   together instead of each probing it; when it answers again they are all due at once.
//!
//! Metrics: `reel_callbacks_total{result="delivered"|"failed"}`, `reel_callback_attempts_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, Event, EventOutcome};
use crate::config::EventsConfig;

/// Tuning of delivery; `[events]` sets most of it.
#[derive(Clone, Debug)]
pub struct Options {
    /// Wait before the first retry of an endpoint; doubles for each next one.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// How long a claimed event is this node's alone (longer than any one attempt).
    pub lease: Duration,
    /// How often the outbox is read when nothing wakes the deliverer (events other nodes queued,
    /// retries coming due).
    pub poll: Duration,
    /// Delivered events are forgotten after this long.
    pub keep_delivered: Duration,
}

impl From<&EventsConfig> for Options {
    fn from(c: &EventsConfig) -> Self {
        Options {
            backoff: c.backoff,
            max_backoff: c.max_backoff,
            concurrency: c.concurrency,
            lease: Duration::from_secs(120),
            poll: Duration::from_millis(500),
            keep_delivered: c.keep_delivered,
        }
    }
}

/// Most response-body bytes read (and discarded) so the connection can be reused.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// How often delivered events past `keep_delivered` are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// An endpoint that failed: how often in a row, when it may be tried again, and whether one
/// event is trying it now (the others wait for that probe: a half-open circuit).
#[derive(Clone, Copy, Debug)]
struct Down {
    failures: u32,
    until_ms: i64,
    probing: bool,
}

struct Shared {
    catalog: Catalog,
    client: reqwest::Client,
    options: Options,
    in_flight: AtomicUsize,
    down: Mutex<HashMap<String, Down>>,
    stop: CancellationToken,
    /// Outcomes of attempts, written to the catalog in batches by one writer task.
    outcomes: tokio::sync::mpsc::Sender<EventOutcome>,
}

/// Outcomes written in one transaction at most.
const OUTCOME_BATCH: usize = 256;

/// Writes attempt outcomes as they come, many per transaction. One that cannot be written
/// leaves its event leased: it is attempted again when the lease ends (at least once).
async fn write_outcomes(catalog: Catalog, mut rx: tokio::sync::mpsc::Receiver<EventOutcome>) {
    let mut batch = Vec::with_capacity(OUTCOME_BATCH);
    while rx.recv_many(&mut batch, OUTCOME_BATCH).await > 0 {
        if let Err(e) = catalog.finish_events(&batch).await {
            tracing::error!(
                events = batch.len(),
                error = &e as &dyn std::error::Error,
                "event outcomes not saved (the events will be tried again)"
            );
        }
        batch.clear();
    }
}

/// Sends the outbox's events from a Tokio task; cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    shared: Arc<Shared>,
}

/// The HTTP client every outgoing request of the host uses: no redirects, rustls with the
/// system's roots, connection reuse.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("reel/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("the TLS backend initialises")
}

impl Deliverer {
    /// Starts delivering on the current Tokio runtime (panics outside one). Events left by an
    /// earlier run are sent first.
    /// `client` is the node's HTTP client ([`http_client`]).
    pub fn start(catalog: Catalog, options: Options, client: reqwest::Client) -> Deliverer {
        let (outcomes, rx) = tokio::sync::mpsc::channel(4 * OUTCOME_BATCH);
        tokio::spawn(write_outcomes(catalog.clone(), rx));
        let shared = Arc::new(Shared {
            outcomes,
            catalog,
            client,
            options,
            in_flight: AtomicUsize::new(0),
            down: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        });
        tokio::spawn(run(shared.clone()));
        Deliverer { shared }
    }

    /// Attempts in progress.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) until no event is due and none is being attempted: for a
    /// graceful shutdown, after the last files were announced. Events waiting for a retry stay
    /// in the outbox for the next start. Returns whether it got there.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let due = self.shared.catalog.count_due_events(now_ms()).await.unwrap_or(0);
            if due == 0 && self.in_flight() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops claiming events; attempts in progress finish (their lease ends otherwise).
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

async fn run(shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.options.concurrency.max(1)));
    let mut next_prune = tokio::time::Instant::now();
    let mut failing = false;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        if tokio::time::Instant::now() >= next_prune {
            next_prune += PRUNE_EVERY;
            let before = now_ms() - shared.options.keep_delivered.as_millis() as i64;
            match shared.catalog.prune_events(before).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(events = n, "forgot delivered events"),
                Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "cannot prune delivered events"),
            }
        }
        // Claim only what can start now: a claimed event is leased, and other nodes skip it.
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shared.stop.cancelled() => return,
        };
        let free = 1 + slots.available_permits();
        let now = now_ms();
        let claimed =
            shared.catalog.claim_events(now, now + shared.options.lease.as_millis() as i64, free as u32).await;
        let events = match claimed {
            Ok(events) => {
                failing = false;
                events
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = &e as &dyn std::error::Error, "cannot read the event outbox; retrying");
                }
                failing = true;
                Vec::new()
            }
        };
        if events.is_empty() {
            drop(first);
            let wait = if failing { shared.options.poll } else { idle_wait(&shared).await };
            tokio::select! {
                _ = shared.catalog.events_queued() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shared.stop.cancelled() => return,
            }
            continue;
        }
        let mut permit = Some(first);
        for ev in events {
            let p = match permit.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let shared = shared.clone();
            tokio::spawn(async move {
                attempt(&shared, ev).await;
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(p);
            });
        }
    }
}

/// How long the deliverer may sleep with nothing to claim. A fleet's catalog (PostgreSQL) is
/// read every `poll`: other nodes queue events and let leases lapse. A node alone on its SQLite
/// catalog is told of every change that makes an event due sooner (queued, retried, given back,
/// an attempt to be repeated), so it sleeps until the earliest pending event is due, at most
/// [`IDLE_POLL_MAX`]: an idle node does not read its outbox twice a second.
async fn idle_wait(shared: &Shared) -> Duration {
    let poll = shared.options.poll;
    if shared.catalog.backend() != crate::catalog::Backend::Sqlite {
        return poll;
    }
    match shared.catalog.next_event_due().await {
        Ok(Some(due)) => {
            Duration::from_millis((due - now_ms()).max(0) as u64).clamp(poll.min(IDLE_POLL_MAX), IDLE_POLL_MAX)
        }
        Ok(None) => IDLE_POLL_MAX,
        Err(_) => poll,
    }
}

/// The longest an idle single node leaves its outbox unread.
const IDLE_POLL_MAX: Duration = Duration::from_secs(10);

/// What one POST came to.
enum Outcome {
    Delivered(u16),
    /// Worth trying again (the status, when there was an answer).
    Retry(String, Option<u16>),
    /// Trying again would not help.
    Fail(String, Option<u16>),
}

/// The wait before the next try of an endpoint that failed `failures` times in a row: the
/// backoff doubled per failure, capped, drawn from its upper half.
fn backoff(o: &Options, failures: u32) -> Duration {
    let base = o.backoff.saturating_mul(1u32.checked_shl(failures.saturating_sub(1).min(20)).unwrap_or(u32::MAX));
    let d = base.min(o.max_backoff);
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

/// Attempts one claimed event and records the outcome.
async fn attempt(shared: &Shared, ev: Event) {
    let catalog = &shared.catalog;
    let now = now_ms();
    let record = |r: Result<(), crate::catalog::CatalogError>| {
        if let Err(e) = r {
            tracing::error!(event = %ev.id, error = &e as &dyn std::error::Error, "event state not saved (it will be tried again)");
        }
    };
    let finish = |o: EventOutcome| async {
        if shared.outcomes.send(o).await.is_err() {
            tracing::error!(event = %ev.id, "event outcome not saved: the writer stopped (it will be tried again)");
        }
    };
    if ev.expires_ms <= now {
        let why = format!("not delivered within the max age{}", last_error(&ev));
        metrics::counter!("reel_callbacks_total", "result" => "failed").increment(1);
        tracing::warn!(event = %ev.id, url = %ev.url, "{why}");
        finish(EventOutcome::Failed { id: ev.id.clone(), at_ms: now, error: why, status: ev.last_status }).await;
        return;
    }
    // A resting endpoint: the event waits with the others; one probes it when the rest ends.
    let wait = {
        let mut map = shared.down.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&ev.url) {
            Some(d) if d.until_ms > now => Some(d.until_ms),
            Some(d) if d.probing => Some(now + shared.options.backoff.as_millis() as i64),
            Some(d) => {
                d.probing = true;
                None
            }
            None => None,
        }
    };
    if let Some(until) = wait {
        record(catalog.release_event(&ev.id, until).await);
        return;
    }
    metrics::counter!("reel_callback_attempts_total").increment(1);
    match post(&shared.client, &ev).await {
        Outcome::Delivered(status) => {
            metrics::counter!("reel_callbacks_total", "result" => "delivered").increment(1);
            finish(EventOutcome::Delivered { id: ev.id.clone(), at_ms: now_ms(), status }).await;
            answered(shared, &ev).await;
        }
        Outcome::Retry(why, status) => {
            let failures = {
                let mut map = shared.down.lock().unwrap_or_else(|e| e.into_inner());
                let d = map.entry(ev.url.clone()).or_insert(Down { failures: 0, until_ms: 0, probing: false });
                d.failures += 1;
                d.probing = false;
                d.until_ms = now_ms() + backoff(&shared.options, d.failures).as_millis() as i64;
                *d
            };
            let attempts = ev.attempts + 1;
            let out_of_attempts = ev.max_attempts > 0 && attempts >= ev.max_attempts;
            if out_of_attempts || failures.until_ms >= ev.expires_ms {
                metrics::counter!("reel_callbacks_total", "result" => "failed").increment(1);
                tracing::warn!(event = %ev.id, url = %ev.url, attempts, "callback not delivered: {why}");
                finish(EventOutcome::Failed { id: ev.id.clone(), at_ms: now_ms(), error: why, status }).await;
            } else {
                tracing::debug!(event = %ev.id, url = %ev.url, attempts, "callback attempt failed, next at {}: {why}", failures.until_ms);
                let next_ms = failures.until_ms;
                finish(EventOutcome::Retry { id: ev.id.clone(), at_ms: now_ms(), next_ms, error: why, status }).await;
            }
            if let Err(e) = catalog.defer_events(&ev.url, now_ms(), failures.until_ms).await {
                tracing::warn!(error = &e as &dyn std::error::Error, "cannot defer waiting events");
            }
        }
        Outcome::Fail(why, status) => {
            metrics::counter!("reel_callbacks_total", "result" => "failed").increment(1);
            tracing::warn!(event = %ev.id, url = %ev.url, "callback refused for good: {why}");
            finish(EventOutcome::Failed { id: ev.id.clone(), at_ms: now_ms(), error: why, status }).await;
            if status.is_some() {
                // It answered: whatever this event's fault, the endpoint is up.
                answered(shared, &ev).await;
            }
        }
    }
}

/// The endpoint of `ev` answered: if it had been failing, what waits for it is due now.
async fn answered(shared: &Shared, ev: &Event) {
    let was_down = shared.down.lock().unwrap_or_else(|e| e.into_inner()).remove(&ev.url).is_some();
    if was_down || ev.attempts > 0 {
        match shared.catalog.hurry_events(&ev.url, now_ms()).await {
            Ok(n) if n > 0 => tracing::info!(url = %ev.url, events = n, "callback endpoint answers again"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "cannot hurry waiting events"),
        }
    }
}

fn last_error(ev: &Event) -> String {
    ev.last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
}

/// One POST with the event's stored request, within its timeout.
async fn post(client: &reqwest::Client, ev: &Event) -> Outcome {
    let mut req = client.post(&ev.url).timeout(Duration::from_millis(ev.timeout_ms.max(1) as u64));
    for (k, v) in &ev.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = match req.body(ev.body.clone()).send().await {
        Ok(r) => r,
        Err(e) if e.is_builder() => return Outcome::Fail(error_text(&e), None),
        Err(e) => return Outcome::Retry(error_text(&e), None),
    };
    let status = resp.status().as_u16();
    // Read a little of the answer so the connection is reused; a long one is cut off.
    let mut resp = resp;
    let mut read = 0;
    while read < MAX_RESPONSE_BODY {
        match resp.chunk().await {
            Ok(Some(c)) => read += c.len(),
            _ => break,
        }
    }
    match status {
        200..=299 => Outcome::Delivered(status),
        408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}"), Some(status)),
        _ => Outcome::Fail(format!("HTTP {status}"), Some(status)),
    }
}

/// A client error with its causes (reqwest's own text is often only "error sending request").
fn error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
