//! Counting and logging plugin decisions and failures.
//!
//! Metrics (`metrics` crate; the host installs the exporter):
//! - `reel_plugin_decisions_total{plugin, interface}`: answers a plugin gave that were used.
//! - `reel_plugin_failures_total{plugin, interface, reason}`: calls whose answer was replaced by
//!   the built-in decision; `reason` is `trap`, `timeout`, `memory`, `error` or `invalid`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Failure, Interface};

/// At most one failure log line per plugin per this long; the rest are counted.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(60);

/// Rate limit for one plugin's failure log lines.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    /// Milliseconds after [`epoch`] of the last line, plus one (0: never logged).
    last: AtomicU64,
    /// Failures not logged since the last line.
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimiter {
    /// `Some(n)` if a line may be logged now (`n` failures went unlogged before it).
    fn admit(&self) -> Option<u64> {
        self.admit_at(epoch().elapsed().as_millis() as u64 + 1)
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now - last < LOG_EVERY.as_millis() as u64 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

pub(crate) fn decided(plugin: &str, interface: Interface) {
    metrics::counter!("reel_plugin_decisions_total", "plugin" => plugin.to_owned(), "interface" => interface.as_str())
        .increment(1);
}

pub(crate) fn failed(plugin: &str, interface: Interface, failure: &Failure, log: &LogLimiter) {
    metrics::counter!(
        "reel_plugin_failures_total",
        "plugin" => plugin.to_owned(),
        "interface" => interface.as_str(),
        "reason" => failure.reason.as_str()
    )
    .increment(1);
    if let Some(suppressed) = log.admit() {
        tracing::warn!(
            plugin,
            interface = interface.as_str(),
            reason = failure.reason.as_str(),
            suppressed,
            "plugin failed, using the built-in decision: {}",
            failure.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_period() {
        let l = LogLimiter::default();
        assert_eq!(l.admit_at(1_000), Some(0));
        assert_eq!(l.admit_at(2_000), None);
        assert_eq!(l.admit_at(60_999), None);
        assert_eq!(l.admit_at(61_000), Some(2));
        assert_eq!(l.admit_at(61_001), None);
    }
}
