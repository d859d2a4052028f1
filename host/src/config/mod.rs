//! The TOML configuration: types (unknown keys are errors), defaults in one place, and
//! `validate()` reporting every problem with the key it is about.

mod auth;
mod callback;
mod catalog;
mod duration;
mod plugins;

pub use auth::{Auth, AuthKind};
pub use callback::{
    CallbackConfig, EventsConfig, EVENTS, EVENT_FILE_CREATED, EVENT_RECORD_FILE, EVENT_SEGMENT_CREATED,
};
pub use catalog::CatalogConfig;
pub use duration::{parse_duration, Duration};
pub use plugins::{
    de_bytes, de_duration, parse_bytes, Grants, PluginConfig, PolicyConfig, DEADLINE_RANGE, MEMORY_RANGE,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The configuration used when no file is given: record every stream to `./recordings` as FLV.
pub const DEFAULT_TOML: &str = r#"
[server]
rtmp_listen = "127.0.0.1:1935"
http_listen = "127.0.0.1:8080"
data_dir = "reel-data"

[storage.local]
kind = "fs"
root = "recordings"

[template.default]
formats = ["flv"]
interval = "30m"
storage = "local"

[[rule]]
domain = "*"
app = "*"
stream = "*"
template = "default"
"#;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub storage: BTreeMap<String, Storage>,
    #[serde(default)]
    pub template: BTreeMap<String, Template>,
    #[serde(default)]
    pub rule: Vec<Rule>,
    /// `[plugins.NAME]`: WebAssembly policy plugins.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `[policy]`: the default plugin chain and per-call limits.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[[callback]]`: HTTP endpoints told about recording events.
    #[serde(default)]
    pub callback: Vec<CallbackConfig>,
    /// `[events]`: how events reach the callbacks (retries, max age).
    #[serde(default)]
    pub events: EventsConfig,
    /// `[[auth]]`: signed publish URLs, per domain and app (off when none matches).
    #[serde(default)]
    pub auth: Vec<Auth>,
    /// `[catalog]`: where recordings and record tasks are kept.
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// `[pull]`: how pull tasks fetch their sources.
    #[serde(default)]
    pub pull: PullConfig,
}

/// `[pull]`: retries and deadlines of pull tasks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// Tries after a failed connect or a dropped source before the task fails (a source that
    /// delivered media and then dropped starts a fresh count).
    #[serde(default = "default_pull_retries")]
    pub retries: u32,
    /// Wait before the first retry; doubles for each next one (1 s, 2 s, 4 s).
    #[serde(default = "default_pull_backoff")]
    pub backoff: Duration,
    /// Connecting, and everything up to the first media (RTMP play, the HTTP answer's head).
    #[serde(default = "default_pull_connect_timeout")]
    pub connect_timeout: Duration,
    /// A source that sends nothing for this long has dropped.
    #[serde(default = "default_pull_read_timeout")]
    pub read_timeout: Duration,
}

impl Default for PullConfig {
    fn default() -> Self {
        Self {
            retries: default_pull_retries(),
            backoff: default_pull_backoff(),
            connect_timeout: default_pull_connect_timeout(),
            read_timeout: default_pull_read_timeout(),
        }
    }
}

fn default_pull_retries() -> u32 {
    3
}
fn default_pull_backoff() -> Duration {
    Duration::from_millis(1000)
}
fn default_pull_connect_timeout() -> Duration {
    Duration::from_millis(5000)
}
fn default_pull_read_timeout() -> Duration {
    Duration::from_millis(10_000)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_rtmp_listen")]
    pub rtmp_listen: String,
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Frames a recording may queue before it is declared too slow (per stream).
    #[serde(default = "default_queue_frames")]
    pub queue_frames: usize,
    /// Largest buffered bytes per open file before they go to the recording's writer thread
    /// (a publisher's reads on the beat, [`READ_BEAT_MS`], go at each read's end anyway).
    #[serde(default = "default_flush_bytes")]
    pub flush_bytes: usize,
    /// Longest time written data may wait in memory before a flush.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: Duration,
    /// Disconnect a publisher that sends nothing for this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// An RTMP client must complete the handshake within this long after connecting.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// Longest a write to a peer may wait (a peer that stops reading is disconnected).
    #[serde(default = "default_write_timeout")]
    pub write_timeout: Duration,
    /// RTMP connections at once; more are closed as they arrive.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Threads that run RTMP connections and the recordings they feed (0: one per CPU).
    #[serde(default)]
    pub ingest_threads: usize,
    /// Bytes of RTMP messages being reassembled at once, over all connections (each message is
    /// at most 8 MiB); a connection whose next message does not fit is closed.
    #[serde(default = "default_max_reassembly_bytes", deserialize_with = "plugins::de_bytes")]
    pub max_reassembly_bytes: u64,
    /// An HTTP client must send a request's headers within this long.
    #[serde(default = "default_http_header_timeout")]
    pub http_header_timeout: Duration,
    /// HTTP connections at once; more are closed as they arrive.
    #[serde(default = "default_max_http_connections")]
    pub max_http_connections: usize,
    /// On SIGTERM: longest wait for connections, files and callbacks to finish before exiting.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Duration,
    /// When set, every HTTP request but `/healthz`, `/readyz` and `/metrics` needs
    /// `Authorization: Bearer <token>` (`env:VAR` reads it from the environment).
    #[serde(default)]
    pub api_token: Option<String>,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            rtmp_listen: default_rtmp_listen(),
            http_listen: default_http_listen(),
            data_dir: default_data_dir(),
            queue_frames: default_queue_frames(),
            flush_bytes: default_flush_bytes(),
            flush_interval: default_flush_interval(),
            idle_timeout: default_idle_timeout(),
            handshake_timeout: default_handshake_timeout(),
            write_timeout: default_write_timeout(),
            max_connections: default_max_connections(),
            ingest_threads: 0,
            max_reassembly_bytes: default_max_reassembly_bytes(),
            http_header_timeout: default_http_header_timeout(),
            max_http_connections: default_max_http_connections(),
            shutdown_timeout: default_shutdown_timeout(),
            api_token: None,
        }
    }
}

fn default_rtmp_listen() -> String {
    "127.0.0.1:1935".into()
}
fn default_http_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_data_dir() -> PathBuf {
    "reel-data".into()
}
fn default_queue_frames() -> usize {
    4096
}
fn default_flush_bytes() -> usize {
    16 * 1024
}
fn default_flush_interval() -> Duration {
    Duration::from_millis(1000)
}
fn default_idle_timeout() -> Duration {
    Duration::from_millis(30_000)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_millis(5_000)
}
fn default_write_timeout() -> Duration {
    Duration::from_millis(10_000)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_reassembly_bytes() -> u64 {
    256 << 20
}
fn default_http_header_timeout() -> Duration {
    Duration::from_millis(5_000)
}
fn default_max_http_connections() -> usize {
    256
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_millis(30_000)
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Fs,
    /// Any S3-compatible object storage (AWS, MinIO, Ceph RGW, SeaweedFS, COS, OSS).
    S3,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub kind: StorageKind,
    /// fs: directory files are written under (relative to the working directory).
    #[serde(default)]
    pub root: PathBuf,
    /// s3: `http(s)://host:port` of the S3 API (default: AWS for `region`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// s3: the bucket.
    #[serde(default)]
    pub bucket: String,
    /// s3: the region (default `us-east-1`).
    #[serde(default = "default_region")]
    pub region: String,
    /// s3: credentials; `env:VAR` reads one from the environment.
    #[serde(default)]
    pub access_key: String,
    #[serde(default)]
    pub secret_key: String,
    /// s3: `http(s)://endpoint/bucket/key` (true, what most S3-compatible servers want) or
    /// `http(s)://bucket.endpoint/key`.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// s3: prepended to every key (e.g. `"recordings/"`).
    #[serde(default)]
    pub prefix: String,
    /// s3: local disk held for data not yet uploaded (S3 unreachable or slow), under
    /// `data_dir/spool/NAME`; when full, recordings to this storage end with an error.
    #[serde(default = "default_spool_max", deserialize_with = "plugins::de_bytes")]
    pub spool_max_bytes: u64,
    /// s3: longest wait for one request (an upload part, a playlist); a slower object storage
    /// is treated as down and files go to the spool until it answers again.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// s3: FLV and AAC files stream into a multipart upload as they grow, in parts of this
    /// size (at least 5 MiB, as S3 requires), so they are complete in the bucket seconds after
    /// they close; `"0"` uploads each file whole at close.
    #[serde(default = "default_part_size", deserialize_with = "plugins::de_bytes")]
    pub part_size: u64,
    /// s3: sign each request's body hash (SigV4 signed payload: every byte hashed with
    /// SHA-256 before it is sent). Default: only over `http://`; over `https://` TLS protects
    /// the body and requests say `UNSIGNED-PAYLOAD`, as the AWS SDKs do.
    #[serde(default)]
    pub sign_payload: Option<bool>,
}

fn default_part_size() -> u64 {
    8 << 20
}

fn default_request_timeout() -> Duration {
    Duration::from_millis(30_000)
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_true() -> bool {
    true
}
fn default_spool_max() -> u64 {
    10 << 30
}

impl Storage {
    /// A credential with `env:VAR` resolved.
    pub fn secret(value: &str) -> Result<String, String> {
        match value.strip_prefix("env:") {
            Some(var) => std::env::var(var).map_err(|_| format!("environment variable {var} is not set")),
            None => Ok(value.to_string()),
        }
    }

    fn validate(&self, name: &str) -> Vec<String> {
        let mut p = Vec::new();
        match self.kind {
            StorageKind::Fs => {
                if self.root.as_os_str().is_empty() {
                    p.push(format!("storage.{name}.root is missing: where should files go?"));
                }
            }
            StorageKind::S3 => {
                if self.bucket.is_empty() {
                    p.push(format!("storage.{name}.bucket is missing"));
                }
                for (key, v) in [("access_key", &self.access_key), ("secret_key", &self.secret_key)] {
                    match Self::secret(v) {
                        Err(e) => p.push(format!("storage.{name}.{key}: {e}")),
                        Ok(v) if v.is_empty() => p.push(format!("storage.{name}.{key} is missing")),
                        Ok(_) => {}
                    }
                }
                if let Some(e) = &self.endpoint {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        p.push(format!("storage.{name}.endpoint = {e:?} must start with http:// or https://"));
                    }
                }
                if self.part_size != 0 && self.part_size < 5 << 20 {
                    p.push(format!("storage.{name}.part_size must be 0 or at least 5MiB"));
                }
                if self.request_timeout.as_millis() < 100 {
                    p.push(format!("storage.{name}.request_timeout must be at least 100ms"));
                }
                if self.prefix.starts_with('/') || self.prefix.contains("..") {
                    p.push(format!("storage.{name}.prefix must be relative, without '..'"));
                }
            }
        }
        p
    }
}

/// A recording format: the one list of them, shared by templates, plugins and muxers.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Flv,
    /// MPEG-TS segments plus an `.m3u8` playlist.
    Hls,
    Mp4,
    /// Audio-only ADTS AAC.
    Aac,
}

impl Format {
    /// `flv`, `hls`, `mp4`, `aac`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Flv => "flv",
            Format::Hls => "hls",
            Format::Mp4 => "mp4",
            Format::Aac => "aac",
        }
    }
    /// The file extension: `flv`, `m3u8`, `mp4`, `aac`.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Hls => "m3u8",
            other => other.name(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Formats to record; empty disables recording for the streams bound to this template.
    pub formats: Vec<Format>,
    /// File length (RecordInterval): a new file at the first keyframe at or after it.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// HLS segment length, cut at the first keyframe at or after it.
    #[serde(default = "default_hls_segment")]
    pub hls_segment: Duration,
    /// Storage target name (a `[storage.NAME]` table); not needed when `formats` is empty.
    #[serde(default)]
    pub storage: String,
    /// Plugin chain for streams of this template, instead of `[policy] plugins`.
    #[serde(default)]
    pub plugins: Option<Vec<String>>,
    /// Recordings made with this template are deleted (files and catalog rows) this long after
    /// they end; `"0"` (the default) keeps them forever.
    #[serde(default = "keep_forever")]
    pub retention: Duration,
    /// A stream published again within this long after its publisher left (unpublish or a
    /// dropped connection) continues the same recording: the HLS playlist goes on after an
    /// `#EXT-X-DISCONTINUITY`, FLV, MP4 and AAC files go on when the codec configuration is
    /// unchanged. `"0"` (the default) ends the recording with the publish. At most 30 min.
    #[serde(default = "keep_forever")]
    pub resume_window: Duration,
    /// The storage key of each file with the seeds' variables (`{AppName}/{StreamName}/{Date}/
    /// {EscapedStartTime}.{ext}`; `.{ext}` is added when absent); a naming plugin decides
    /// instead when the template's chain has one. Unset: the built-in name.
    #[serde(default)]
    pub name: Option<String>,
    /// HLS: a new playlist this often (ApsaraVideo's m3u8 recording cycle); `"0"` (the
    /// default): one playlist per publish.
    #[serde(default = "keep_forever")]
    pub hls_interval: Duration,
    /// HLS: keep `{AppName}/{StreamName}/{Date}.m3u8`, a VOD index over the day's (UTC)
    /// segments of the stream, rewritten as each playlist closes.
    #[serde(default)]
    pub daily_index: bool,
}

/// Longest `resume_window`.
pub const MAX_RESUME_WINDOW_MS: u64 = 30 * 60 * 1000;

/// How often a publishing connection is read (ingest reads all the connections of a thread on
/// a shared beat): each read brings about this much of a stream's media, and its recordings
/// write it at the read's end.
pub const READ_BEAT_MS: u64 = 200;

fn keep_forever() -> Duration {
    Duration::from_millis(0)
}

fn default_interval() -> Duration {
    Duration::from_millis(30 * 60 * 1000)
}
fn default_hls_segment() -> Duration {
    Duration::from_millis(6000)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default = "wildcard")]
    pub domain: String,
    #[serde(default = "wildcard")]
    pub app: String,
    #[serde(default = "wildcard")]
    pub stream: String,
    pub template: String,
    /// Higher wins among rules equally specific.
    #[serde(default)]
    pub priority: i32,
}

/// Whether `value` matches a `[[rule]]`/`[[auth]]` pattern: `*` matches anything; a pattern may
/// also end in `*` (prefix) or start with `*` (suffix); otherwise it is the value itself.
pub fn matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(p) = pattern.strip_suffix('*') {
        return value.starts_with(p);
    }
    if let Some(p) = pattern.strip_prefix('*') {
        return value.ends_with(p);
    }
    pattern == value
}

pub(crate) fn wildcard() -> String {
    "*".into()
}

/// A configuration problem, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { origin: String, problems: Vec<String> },
}

impl Config {
    /// The built-in configuration (no file given).
    pub fn embedded() -> Self {
        Self::parse(DEFAULT_TOML, "embedded default config").expect("embedded config is valid")
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates. Errors name the key and line.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { origin: origin.into(), message: describe(text, &e) })?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid { origin: origin.into(), problems })
        }
    }

    /// Every cross-reference and value problem, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (field, addr) in
            [("server.rtmp_listen", &self.server.rtmp_listen), ("server.http_listen", &self.server.http_listen)]
        {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                p.push(format!("{field} = {addr:?} is not an address like \"127.0.0.1:1935\""));
            }
        }
        for (key, d) in [
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.handshake_timeout", self.server.handshake_timeout),
            ("server.write_timeout", self.server.write_timeout),
            ("server.http_header_timeout", self.server.http_header_timeout),
            ("server.shutdown_timeout", self.server.shutdown_timeout),
        ] {
            if d.as_millis() == 0 {
                p.push(format!("{key} must be more than 0"));
            }
        }
        for (key, n) in [
            ("server.max_connections", self.server.max_connections),
            ("server.max_http_connections", self.server.max_http_connections),
        ] {
            if n == 0 {
                p.push(format!("{key} must be at least 1"));
            }
        }
        for (i, a) in self.auth.iter().enumerate() {
            if let Err(e) = a.resolved_key() {
                p.push(format!("auth[{i}].key: {e}"));
            } else if a.resolved_key().is_ok_and(|k| k.is_empty()) {
                p.push(format!("auth[{i}].key must not be empty"));
            }
        }
        if let Some(t) = &self.server.api_token {
            match t.strip_prefix("env:").map(std::env::var) {
                Some(Err(_)) => p.push(format!("server.api_token: environment variable {} is not set", &t[4..])),
                Some(Ok(v)) if v.is_empty() => p.push("server.api_token must not be empty".into()),
                None if t.is_empty() => p.push("server.api_token must not be empty".into()),
                _ => {}
            }
        }
        if self.server.max_reassembly_bytes < 8 << 20 {
            p.push("server.max_reassembly_bytes must be at least 8MiB (one RTMP message)".into());
        }
        if self.server.queue_frames < 16 {
            p.push("server.queue_frames must be at least 16".into());
        }
        for (name, t) in &self.template {
            if !t.formats.is_empty() && t.storage.is_empty() {
                p.push(format!(
                    "template.{name}.storage is missing: a template with formats needs a [storage.NAME] to write to"
                ));
            } else if !t.formats.is_empty() && !self.storage.contains_key(&t.storage) {
                p.push(format!(
                    "template.{name}.storage = {:?} names no [storage.{}] table (defined: {})",
                    t.storage,
                    t.storage,
                    list(self.storage.keys())
                ));
            }
            if t.hls_interval.as_millis() != 0 && t.hls_interval.as_millis() < 1000 {
                p.push(format!("template.{name}.hls_interval must be 0 or at least 1s"));
            }
            if t.resume_window.as_millis() > MAX_RESUME_WINDOW_MS {
                p.push(format!("template.{name}.resume_window must be at most 30m"));
            }
            if t.interval.as_millis() < 1000 {
                p.push(format!("template.{name}.interval must be at least 1s"));
            }
            if t.hls_segment.as_millis() < 1000 {
                p.push(format!("template.{name}.hls_segment must be at least 1s"));
            }
            let mut seen = std::collections::HashSet::new();
            for f in &t.formats {
                if !seen.insert(f) {
                    p.push(format!("template.{name}.formats lists {:?} twice", f.name()));
                }
            }
        }
        p.extend(self.policy.validate());
        p.extend(self.catalog.validate());
        for (name, st) in &self.storage {
            p.extend(st.validate(name));
        }
        for name in &self.policy.plugins {
            if !self.plugins.contains_key(name) {
                p.push(format!(
                    "policy.plugins names {name:?}, which has no [plugins.{name}] table (defined: {})",
                    list(self.plugins.keys())
                ));
            }
        }
        for (tname, t) in &self.template {
            for name in t.plugins.iter().flatten() {
                if !self.plugins.contains_key(name) {
                    p.push(format!(
                        "template.{tname}.plugins names {name:?}, which has no [plugins.{name}] table (defined: {})",
                        list(self.plugins.keys())
                    ));
                }
            }
        }
        for (i, cb) in self.callback.iter().enumerate() {
            p.extend(cb.validate(i));
        }
        p.extend(self.events.validate());
        for (name, plugin) in &self.plugins {
            if let Some(m) = plugin.memory.filter(|m| !MEMORY_RANGE.contains(m)) {
                p.push(format!(
                    "plugins.{name}.memory: {m} bytes is outside {} MiB to {} MiB",
                    MEMORY_RANGE.start() >> 20,
                    MEMORY_RANGE.end() >> 20
                ));
            }
        }
        for (i, r) in self.rule.iter().enumerate() {
            if !self.template.contains_key(&r.template) {
                p.push(format!(
                    "rule[{i}].template = {:?} names no [template.{}] table (defined: {})",
                    r.template,
                    r.template,
                    list(self.template.keys())
                ));
            }
            for (k, v) in [("domain", &r.domain), ("app", &r.app), ("stream", &r.stream)] {
                if v.is_empty() {
                    p.push(format!("rule[{i}].{k} is empty: use \"*\" for any"));
                }
            }
        }
        p
    }
}

fn list<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<_> = keys.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Renders a TOML error with its line and column.
fn describe(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let col = span.start - text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1) + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim_end();
            format!("line {line}, column {col}: {}\n    {line} | {src}", e.message())
        }
        None => e.message().to_string(),
    }
}

impl Server {
    /// The API token, with `env:VAR` resolved (checked by `validate`).
    pub fn api_token(&self) -> Option<String> {
        self.api_token.as_ref().map(|t| match t.strip_prefix("env:") {
            Some(var) => std::env::var(var).unwrap_or_default(),
            None => t.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_is_valid() {
        let c = Config::embedded();
        assert_eq!(c.template["default"].formats, vec![Format::Flv]);
        assert_eq!(c.template["default"].interval.as_millis(), 1_800_000);
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../reel.example.toml");
        Config::parse(text, "reel.example.toml").unwrap();
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "[server]\nrtmp_listen = \"127.0.0.1:1935\"\nbogus = 1\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_duration_names_line() {
        let text = "[storage.l]\nkind=\"fs\"\nroot=\"r\"\n[template.t]\nformats=[\"flv\"]\nstorage=\"l\"\ninterval = \"30 parsecs\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("line 7"), "{e}");
        assert!(e.contains("30 parsecs"), "{e}");
    }

    #[test]
    fn missing_template_is_reported_with_key() {
        let text = "[[rule]]\ntemplate = \"nope\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("rule[0].template"), "{e}");
        assert!(e.contains("nope"), "{e}");
    }
}
