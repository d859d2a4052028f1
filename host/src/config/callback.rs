//! `[[callback]]`: HTTP endpoints told about recording events.

use std::time::Duration;

use serde::Deserialize;

use super::plugins::de_duration;

/// The event sent when a recording file is finished.
pub const EVENT_RECORD_FILE: &str = "record_file";

/// The events a `[[callback]]` can subscribe to.
pub const EVENTS: &[&str] = &[EVENT_RECORD_FILE];

/// `[[callback]]`: where to announce events.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// `http://` or `https://` URL; a plugin exporting `callbacks` receives it and may change it.
    pub url: String,
    /// Events to send (`record_file`); all if unset.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Budget of one attempt, connect to last body byte (`"5s"`).
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Attempts after the first one fails.
    #[serde(default = "default_retries")]
    pub retries: u32,
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

fn default_retries() -> u32 {
    3
}

impl CallbackConfig {
    /// Whether this callback subscribes to `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.as_ref().is_none_or(|e| e.iter().any(|x| x == event))
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
