//! UTC calendar time from milliseconds since the Unix epoch. Plain `std` only.
//!
//! The host compiles this very file as part of `media::time` (with `#[path]`), so file names
//! and path variables are formatted by one implementation on both sides of the plugin boundary.

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

/// Converts milliseconds since the Unix epoch to UTC (Howard Hinnant's civil-from-days).
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

/// `2026-11-22-13-05-09`: UTC, safe in file names and object keys (`{EscapedStartTime}`).
pub fn escaped_time(ms: u64) -> String {
    let c = civil(ms);
    format!("{:04}-{:02}-{:02}-{:02}-{:02}-{:02}", c.year, c.month, c.day, c.hour, c.minute, c.second)
}
