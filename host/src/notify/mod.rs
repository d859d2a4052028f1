//! Callback delivery: HTTP POSTs announcing finished files, with a timeout and retries.
//!
//! The policy builds each request ([`crate::policy::Policy::on_file`]: the built-in JSON or a
//! plugin's signed request); a [`Notifier`] queues it in an [`Outbox`] and a Tokio worker
//! delivers it, retrying with exponential backoff (1 s, 2 s, 4 s by default) on transport
//! errors, 5xx, 408 and 429. Other 4xx answers are final. The queue is in memory
//! ([`MemoryOutbox`]) for now; a durable outbox implements the same trait.
//!
//! Metrics: `reel_callbacks_total{result="delivered"|"failed"|"dropped"}` and
//! `reel_callback_attempts_total`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::policy::{CallbackRequest, FileInfo, Policy, StreamInfo};

pub use crate::config::{CallbackConfig, EVENTS, EVENT_RECORD_FILE};

/// Errors from queueing a callback.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("callback queue is full ({0} pending); dropping the callback")]
    QueueFull(usize),
    #[error("callback notifier is shut down")]
    Closed,
}

/// One callback to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Assigned by the outbox.
    pub id: u64,
    pub request: CallbackRequest,
    pub timeout: Duration,
    pub retries: u32,
}

/// Where deliveries wait. The in-memory [`MemoryOutbox`] loses them on restart; a durable one
/// (SQLite) stores them on [`Outbox::push`] and forgets them on [`Outbox::finish`].
pub trait Outbox: Send + Sync + 'static {
    /// Queues a delivery (its `id` is assigned here).
    fn push(&self, delivery: Delivery) -> Result<u64, NotifyError>;
    /// Takes the next delivery to attempt, if any.
    fn pop(&self) -> Option<Delivery>;
    /// The delivery `id` was delivered (`true`) or given up on (`false`).
    fn finish(&self, id: u64, delivered: bool);
    /// Deliveries waiting.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A bounded in-memory queue.
#[derive(Debug)]
pub struct MemoryOutbox {
    queue: Mutex<VecDeque<Delivery>>,
    capacity: usize,
    next_id: AtomicU64,
}

impl MemoryOutbox {
    /// Holds at most `capacity` waiting deliveries; more are refused.
    pub fn new(capacity: usize) -> MemoryOutbox {
        MemoryOutbox { queue: Mutex::new(VecDeque::new()), capacity, next_id: AtomicU64::new(1) }
    }
}

impl Outbox for MemoryOutbox {
    fn push(&self, mut delivery: Delivery) -> Result<u64, NotifyError> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.capacity {
            return Err(NotifyError::QueueFull(q.len()));
        }
        delivery.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = delivery.id;
        q.push_back(delivery);
        Ok(id)
    }

    fn pop(&self) -> Option<Delivery> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    fn finish(&self, _id: u64, _delivered: bool) {}

    fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Tuning that rarely needs changing; tests shorten the backoff.
#[derive(Clone, Debug)]
pub struct NotifierOptions {
    /// Wait before the first retry; doubles for each next one (1 s, 2 s, 4 s).
    pub backoff: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        NotifierOptions { backoff: Duration::from_secs(1), concurrency: 8 }
    }
}

/// Most response-body bytes read (and discarded) so the connection can be reused.
const MAX_RESPONSE_BODY: u64 = 64 * 1024;

struct Shared {
    outbox: Arc<dyn Outbox>,
    wake: Notify,
    closed: AtomicBool,
    /// Deliveries taken from the outbox and not finished.
    in_flight: AtomicUsize,
    agent: ureq::Agent,
    options: NotifierOptions,
}

/// Queues callbacks and delivers them from a Tokio task. Dropping it stops the worker: attempts
/// in flight go on, queued deliveries stay in the outbox (a durable one sends them after a
/// restart). [`Notifier::drain`] waits for the queue to empty first.
pub struct Notifier {
    shared: Arc<Shared>,
    callbacks: Vec<CallbackConfig>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("callbacks", &self.callbacks)
            .field("pending", &self.shared.outbox.len())
            .finish()
    }
}

impl Notifier {
    /// Starts the delivery worker on the current Tokio runtime (panics outside one).
    pub fn new(callbacks: Vec<CallbackConfig>, outbox: Arc<dyn Outbox>, options: NotifierOptions) -> Notifier {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("reel/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let shared = Arc::new(Shared {
            outbox,
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            agent,
            options,
        });
        tokio::spawn(worker(shared.clone()));
        // Deliveries left by a previous run (durable outboxes).
        shared.wake.notify_one();
        Notifier { shared, callbacks }
    }

    /// The configured callbacks.
    pub fn callbacks(&self) -> &[CallbackConfig] {
        &self.callbacks
    }

    /// Announces a finished file to every callback subscribed to `record_file`, with the
    /// request `policy` builds for it. Returns how many were queued.
    pub fn file_finished(&self, policy: &dyn Policy, s: &StreamInfo, f: &FileInfo) -> usize {
        let mut queued = 0;
        for cb in self.callbacks.iter().filter(|cb| cb.wants(EVENT_RECORD_FILE) && cb.covers(&s.domain, &s.app)) {
            if let Some(mut request) = policy.on_file(s, f, &cb.url) {
                sign(&mut request, cb);
                match self.send(request, cb.timeout, cb.retries) {
                    Ok(_) => queued += 1,
                    Err(e) => {
                        tracing::warn!(url = %cb.url, key = %f.key, error = &e as &dyn std::error::Error, "callback not queued")
                    }
                }
            }
        }
        queued
    }

    /// Queues one request.
    pub fn send(&self, request: CallbackRequest, timeout: Duration, retries: u32) -> Result<u64, NotifyError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(NotifyError::Closed);
        }
        let r = self.shared.outbox.push(Delivery { id: 0, request, timeout, retries });
        match &r {
            Ok(_) => self.shared.wake.notify_one(),
            Err(_) => metrics::counter!("reel_callbacks_total", "result" => "dropped").increment(1),
        }
        r
    }

    /// Deliveries waiting (not counting those in flight).
    pub fn pending(&self) -> usize {
        self.shared.outbox.len()
    }

    /// Deliveries being attempted (or waiting to retry) right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Waits until nothing is queued or in flight, or `timeout` passes (for a graceful
    /// shutdown). Returns whether everything was delivered or given up on.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.pending() == 0 && self.in_flight() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

async fn worker(shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.options.concurrency.max(1)));
    loop {
        if shared.closed.load(Ordering::Relaxed) {
            return;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        // Counted before it leaves the outbox, so `drain` never sees it in neither place.
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let Some(delivery) = shared.outbox.pop() else {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            shared.wake.notified().await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let delivered = deliver(&shared, &delivery).await;
            shared.outbox.finish(delivery.id, delivered);
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Attempts a delivery until it succeeds, fails for good, or runs out of retries.
async fn deliver(shared: &Arc<Shared>, d: &Delivery) -> bool {
    let mut backoff = shared.options.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        metrics::counter!("reel_callback_attempts_total").increment(1);
        let (agent, request, timeout) = (shared.agent.clone(), d.request.clone(), d.timeout);
        let outcome = tokio::task::spawn_blocking(move || post(&agent, &request, timeout))
            .await
            .unwrap_or_else(|e| Outcome::Retry(format!("delivery task failed: {e}")));
        match outcome {
            Outcome::Delivered => {
                metrics::counter!("reel_callbacks_total", "result" => "delivered").increment(1);
                return true;
            }
            Outcome::Retry(why) if attempt <= d.retries => {
                tracing::debug!(url = %d.request.url, attempt, "callback attempt failed, retrying in {backoff:?}: {why}");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            Outcome::Retry(why) | Outcome::Fail(why) => {
                metrics::counter!("reel_callbacks_total", "result" => "failed").increment(1);
                tracing::warn!(url = %d.request.url, attempts = attempt, "callback not delivered: {why}");
                return false;
            }
        }
    }
}

/// Adds `X-Reel-Event-Id` (the same on every attempt, so a receiver can drop repeats) and,
/// with a secret, `X-Reel-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
fn sign(request: &mut CallbackRequest, cb: &CallbackConfig) {
    use hmac::{Hmac, Mac};
    request.headers.push(("X-Reel-Event-Id".into(), format!("{:016x}", fastrand::u64(..))));
    if let Ok(Some(secret)) = cb.resolved_secret() {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(&request.body);
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        request.headers.push(("X-Reel-Signature".into(), format!("sha256={hex}")));
    }
}

enum Outcome {
    Delivered,
    /// Worth trying again.
    Retry(String),
    /// Trying again would not help.
    Fail(String),
}

/// One blocking POST.
fn post(agent: &ureq::Agent, r: &CallbackRequest, timeout: Duration) -> Outcome {
    let mut req = agent.post(&r.url);
    for (k, v) in &r.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.config().timeout_global(Some(timeout)).build();
    match req.send(&r.body[..]) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let _ = resp.body_mut().with_config().limit(MAX_RESPONSE_BODY).read_to_vec();
            match status {
                200..=299 => Outcome::Delivered,
                408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}")),
                _ => Outcome::Fail(format!("HTTP {status}")),
            }
        }
        Err(e) => match e {
            ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::RequireHttpsOnly(_) => {
                Outcome::Fail(e.to_string())
            }
            e => Outcome::Retry(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests;
