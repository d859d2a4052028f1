//! Wall-clock helpers: milliseconds since the Unix epoch and the filename-safe UTC form
//! used in recording names (`2026-11-22-13-05-09`).

use std::time::{SystemTime, UNIX_EPOCH};

// Calendar conversion is the guest SDK's source, so the built-in policy and plugins format
// path variables alike (`policy::builtin` uses this module for the SDK's shared code).
#[path = "../../../guest-sdk/src/time.rs"]
mod utc;

pub use utc::{civil, escaped_time, Civil};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 with milliseconds, UTC (`2026-11-22T13:05:09.120Z`), as HLS PROGRAM-DATE-TIME wants.
pub fn rfc3339_ms(ms: u64) -> String {
    let c = civil(ms);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(escaped_time(0), "1970-01-01-00-00-00");
        // 2026-11-22T13:05:09.120Z
        assert_eq!(escaped_time(1_795_352_709_120), "2026-11-22-13-05-09");
        assert_eq!(rfc3339_ms(1_795_352_709_120), "2026-11-22T13:05:09.120Z");
        assert_eq!(escaped_time(951_782_400_000), "2000-02-29-00-00-00");
    }
}
