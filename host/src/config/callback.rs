//! `[[callback]]`: HTTP endpoints told about recording events.

use std::time::Duration;

use serde::Deserialize;

use super::plugins::de_duration;

/// The event sent when a recording file is finished and stored.
pub const EVENT_FILE_CREATED: &str = "file_created";
/// The earlier name of `file_created`, still accepted in `events`.
pub const EVENT_RECORD_FILE: &str = "record_file";
/// An HLS segment stored; sent only to callbacks that name it in `events`.
pub const EVENT_SEGMENT_CREATED: &str = "segment_created";

/// The events a `[[callback]]` can subscribe to.
pub const EVENTS: &[&str] = &[
    "record_started",
    EVENT_FILE_CREATED,
    EVENT_SEGMENT_CREATED,
    "record_ended",
    "record_failed",
    "upload_failed",
    "task_completed",
    "task_failed",
    EVENT_RECORD_FILE,
];

/// `[[callback]]`: where to announce events.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// `http://` or `https://` URL; a plugin exporting `callbacks` receives it and may change it.
    pub url: String,
    /// Events to send (see [`EVENTS`]); all but `segment_created` if unset.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Budget of one attempt, connect to last body byte (`"5s"`).
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Attempts after the first one fails before the event is given up on; unset: retried
    /// until `[events] max_age`.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Only streams of this domain (a `[[rule]]` pattern: `*`, `cam*`, `*.example.com`).
    #[serde(default = "super::wildcard")]
    pub domain: String,
    /// Only streams of this app (a pattern as for `domain`).
    #[serde(default = "super::wildcard")]
    pub app: String,
    /// When set, each request carries `X-Reel-Signature: sha256=<hex HMAC-SHA256(secret, body)>`
    /// (`env:VAR` reads it from the environment).
    #[serde(default)]
    pub secret: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl CallbackConfig {
    /// Whether this callback subscribes to `event` (`record_file` names `file_created`;
    /// `segment_created`, one per HLS segment, only when named).
    pub fn wants(&self, event: &str) -> bool {
        match &self.events {
            None => event != EVENT_SEGMENT_CREATED,
            Some(e) => e.iter().any(|x| x == event || (x == EVENT_RECORD_FILE && event == EVENT_FILE_CREATED)),
        }
    }

    /// Whether this callback is for streams of `domain`/`app`.
    pub fn covers(&self, domain: &str, app: &str) -> bool {
        super::matches(&self.domain, domain) && super::matches(&self.app, app)
    }

    /// The signing secret with `env:VAR` resolved.
    pub fn resolved_secret(&self) -> Result<Option<String>, String> {
        match &self.secret {
            None => Ok(None),
            Some(v) => match v.strip_prefix("env:") {
                Some(var) => std::env::var(var).map(Some).map_err(|_| format!("environment variable {var} is not set")),
                None => Ok(Some(v.clone())),
            },
        }
    }

    /// Reports every problem with its key (`callback[i].url`, …).
    pub fn validate(&self, index: usize) -> Vec<String> {
        let mut errors = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            errors.push(format!("callback[{index}].url: {:?} is not an http:// or https:// URL", self.url));
        }
        for e in self.events.iter().flatten() {
            if !EVENTS.contains(&e.as_str()) {
                errors.push(format!("callback[{index}].events: unknown event {e:?} (known: {})", EVENTS.join(", ")));
            }
        }
        match self.resolved_secret() {
            Err(e) => errors.push(format!("callback[{index}].secret: {e}")),
            Ok(Some(s)) if s.is_empty() => errors.push(format!("callback[{index}].secret must not be empty")),
            _ => {}
        }
        if self.timeout.is_zero() {
            errors.push(format!("callback[{index}].timeout: must be more than 0"));
        }
        errors
    }
}

/// `[events]`: how the outbox delivers events to the callbacks.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// An event not delivered within this long after it happened is given up on (`failed`).
    #[serde(default = "default_max_age", deserialize_with = "de_duration")]
    pub max_age: Duration,
    /// Wait before the first retry; each next one doubles it (with jitter), up to `max_backoff`.
    #[serde(default = "default_backoff", deserialize_with = "de_duration")]
    pub backoff: Duration,
    #[serde(default = "default_max_backoff", deserialize_with = "de_duration")]
    pub max_backoff: Duration,
    /// Requests in flight at once, per node.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Delivered events stay listed this long, then are forgotten (failed ones stay).
    #[serde(default = "default_keep_delivered", deserialize_with = "de_duration")]
    pub keep_delivered: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_age: default_max_age(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            concurrency: default_concurrency(),
            keep_delivered: default_keep_delivered(),
        }
    }
}

fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_backoff() -> Duration {
    Duration::from_secs(1)
}

/// An endpoint down for long is probed every 15–30 s: once it is back, what waited for it goes
/// within 30 s.
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

fn default_concurrency() -> usize {
    16
}

fn default_keep_delivered() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

impl EventsConfig {
    /// Reports every problem with its key.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.max_age.is_zero() {
            errors.push("events.max_age: must be more than 0".into());
        }
        if self.backoff.is_zero() {
            errors.push("events.backoff: must be more than 0".into());
        }
        if self.max_backoff < self.backoff {
            errors.push("events.max_backoff: must not be less than events.backoff".into());
        }
        if !(1..=256).contains(&self.concurrency) {
            errors.push("events.concurrency: must be 1 to 256".into());
        }
        errors
    }
}
