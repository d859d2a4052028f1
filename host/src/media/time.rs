//! Wall-clock helpers: milliseconds since the Unix epoch and the filename-safe UTC form
//! used in recording names (`2026-11-22-13-05-09`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

/// Converts epoch milliseconds to UTC (Howard Hinnant's days-from-civil inverse).
pub fn civil(ms: u64) -> Civil {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil { year, month, day, hour: sod / 3600, minute: sod / 60 % 60, second: sod % 60, millis: (ms % 1000) as u32 }
}

/// `2026-11-22-13-05-09`: UTC, safe in file names and object keys.
pub fn escaped(ms: u64) -> String {
    let c = civil(ms);
    format!("{:04}-{:02}-{:02}-{:02}-{:02}-{:02}", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// RFC 3339 with milliseconds, UTC (`2026-11-22T13:05:09.120Z`), as HLS PROGRAM-DATE-TIME wants.
pub fn rfc3339_ms(ms: u64) -> String {
    let c = civil(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(escaped(0), "1970-01-01-00-00-00");
        // 2026-11-22T13:05:09.120Z
        assert_eq!(escaped(1_795_352_709_120), "2026-11-22-13-05-09");
        assert_eq!(rfc3339_ms(1_795_352_709_120), "2026-11-22T13:05:09.120Z");
        assert_eq!(escaped(951_782_400_000), "2000-02-29-00-00-00");
    }
}
