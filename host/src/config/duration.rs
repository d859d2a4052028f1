//! Durations written as strings (`"30m"`, `"6s"`, `"500ms"`, `"1h 30m"`).

use serde::{Deserialize, Deserializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }
    pub fn std(self) -> std::time::Duration {
        self.0
    }
}

/// Parses `"30m"`, `"6s"`, `"1h 30m"`, `"500ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::from_millis(0));
    }
    humantime::parse_duration(s)
        .map(Duration)
        .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. \"30m\", \"6s\", \"500ms\""))
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}
