//! `[plugins.NAME]` and `[policy]`: WebAssembly policy plugins, their grants and per-call
//! limits. The policy room reads these; they live here so the configuration depends on no
//! other part of the host.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `[plugins.NAME]`: one plugin component and its configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component (`.wasm`, built for `wasm32-wasip2`).
    pub path: PathBuf,
    /// Passed to the plugin as typed key/values (tables and arrays as JSON text).
    #[serde(default)]
    pub config: toml::Table,
    /// Capabilities beyond the default none.
    #[serde(default)]
    pub allow: Grants,
    /// Its own linear-memory cap instead of `[policy] memory` (interpreted runtimes, Python
    /// and JavaScript, start with 10–20 MiB: give them 64 MiB).
    #[serde(default, deserialize_with = "de_opt_bytes")]
    pub memory: Option<u64>,
}

fn de_opt_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_bytes(d).map(Some)
}

/// What an operator may grant a plugin. Filesystem and network access are never granted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Real wall and monotonic clocks; without it both read as the Unix epoch. Plugins get the
    /// current time in every call anyway.
    #[serde(default)]
    pub clocks: bool,
    /// The plugin's stdout and stderr go to the log, a line at a time, tagged with the plugin
    /// and rate-limited (for debugging); otherwise they are discarded.
    #[serde(default)]
    pub stderr: bool,
    /// Environment variables passed through from Reel's environment, by name.
    #[serde(default)]
    pub env: Vec<String>,
}

/// `[policy]`: which plugins decide by default, and the limits every call runs under.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Plugin names, first first: for each decision, the first that exports it decides.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// Wall-clock budget of one plugin call (`"50ms"`).
    #[serde(default = "default_deadline", deserialize_with = "de_duration")]
    pub deadline: Duration,
    /// Linear-memory cap of one plugin instance (`"16MiB"`).
    #[serde(default = "default_memory", deserialize_with = "de_bytes")]
    pub memory: u64,
}

/// Bounds of `[policy] memory`: enough for a Rust plugin to start, and little enough that 256
/// pooled slots of it stay a modest address-space reservation.
pub const MEMORY_RANGE: std::ops::RangeInclusive<u64> = (2 << 20)..=(1 << 30);

/// Bounds of `[policy] deadline`.
pub const DEADLINE_RANGE: std::ops::RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_secs(10);

impl PolicyConfig {
    /// Reports every problem with its key (`policy.memory`, …).
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !MEMORY_RANGE.contains(&self.memory) {
            errors.push(format!(
                "policy.memory: {} bytes is outside {} MiB to {} MiB",
                self.memory,
                MEMORY_RANGE.start() >> 20,
                MEMORY_RANGE.end() >> 20
            ));
        }
        if !DEADLINE_RANGE.contains(&self.deadline) {
            errors.push(format!("policy.deadline: {:?} is outside 1ms to 10s", self.deadline));
        }
        let mut seen = Vec::new();
        for name in &self.plugins {
            if seen.contains(&name) {
                errors.push(format!("policy.plugins: \"{name}\" is listed twice"));
            }
            seen.push(name);
        }
        errors
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { plugins: Vec::new(), deadline: default_deadline(), memory: default_memory() }
    }
}

fn default_deadline() -> Duration {
    Duration::from_millis(50)
}

fn default_memory() -> u64 {
    16 << 20
}

/// Deserializes a duration string such as `"50ms"` or `"5s"`.
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e} (write e.g. \"50ms\", \"5s\")")))
}

/// Deserializes a byte size such as `"16MiB"`, `"512KiB"`, `"1GiB"`, or a plain integer.
pub fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(s) => parse_bytes(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid size {s:?} (write e.g. \"16MiB\", \"512KiB\")"))),
    }
}

/// `"16MiB"` → 16777216. Units: B, KiB, MiB, GiB (binary), KB, MB, GB (decimal).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}
