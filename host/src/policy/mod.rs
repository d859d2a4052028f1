//! Policy: the decisions a recorder makes about a stream that are not about bytes.
//!
//! Which recording rule applies ([`Policy::select_rule`]), how files are cut
//! ([`Policy::plan`]), where a file is stored ([`Policy::name_file`]) and what a callback
//! server receives ([`Policy::on_file`]). [`Builtin`] is what Reel does by default;
//! WebAssembly plugins ([`Registry`]) may take over any of these decisions, per decision,
//! and fall back to [`Builtin`] whenever they fail. Nothing here is called per frame.
//!
//! The domain types here carry no WebAssembly types; the plugin runtime is in `wasm/`.
//!
//! ```ignore
//! // At start and on every reload (build a new registry, then swap it in):
//! let registry = Registry::new(&config.plugins, &config.policy, &data_dir)?;
//! // Per recording: the template's own chain, or `[policy] plugins`.
//! let policy = registry.policy(template.plugins.as_deref());
//! let rule = policy.select_rule(&stream, &candidates);
//! let key = policy.name_file(&stream, &file);
//! let request = policy.on_file(&stream, &finished_file, &callback.url);
//! ```
//!
//! A plugin decision takes about 20 µs and at most `[policy] deadline` (50 ms). The methods may
//! be called from async code: on a Tokio worker they step off it (`block_in_place`) while the
//! plugin runs, because WASI's host functions block.

mod builtin;
pub mod cli;
mod failures;
mod registry;
mod wasm;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use builtin::{check_name_template, expand, name_with, sanitize, Builtin, FileVars, DEFAULT_NAME_TEMPLATE};
pub use registry::{Registry, CACHE_DIR};
pub use wasm::{LoadError, RuntimeError};

/// The WIT package versions this host can load (`reel:policy@…`).
pub const SUPPORTED_WIT_VERSIONS: &[&str] = &["0.1.0"];

pub use crate::config::Format;

/// A published stream, as the recorder sees it when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamInfo {
    /// The push domain.
    pub domain: String,
    /// `AppName`, e.g. `live`.
    pub app: String,
    /// `StreamName` (Tencent's `StreamID`), without its query.
    pub name: String,
    /// The publisher's query parameters, in order.
    #[serde(default)]
    pub params: Vec<(String, String)>,
    #[serde(default)]
    pub video_codec: Option<String>,
    #[serde(default)]
    pub audio_codec: Option<String>,
    /// When publishing started, ms since the Unix epoch.
    #[serde(default)]
    pub started_at_ms: u64,
}

/// A recording file (for HLS: the playlist).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInfo {
    pub container: Format,
    /// 0, 1, 2, … within one recording session.
    #[serde(default)]
    pub sequence: u32,
    /// Wall-clock time of the first and last media, ms since the Unix epoch.
    pub start_ms: u64,
    pub end_ms: u64,
    /// Bytes written; 0 while naming.
    #[serde(default)]
    pub size: u64,
    /// Media duration; 0 while naming.
    #[serde(default)]
    pub duration_ms: u64,
    /// The storage key; empty while naming.
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub task_id: Option<String>,
    /// A random id drawn for this file (`{RandomID}`); see [`random_id`].
    #[serde(default)]
    pub random_id: String,
}

/// A configured recording rule that matches a stream. An empty pattern or `*` is a wildcard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub rule_id: String,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub template: String,
    /// Higher wins among equally specific rules.
    #[serde(default)]
    pub priority: i32,
}

/// How a recording is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Start a new file after this long (`RecordInterval`).
    pub interval_ms: u64,
    /// Target HLS segment duration.
    pub hls_segment_ms: u32,
    /// A stream back within this window continues the same recording.
    pub resume_window_ms: u32,
}

/// An HTTP POST announcing an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The decisions a recorder delegates. Implementations never fail: a plugin that does falls
/// back to the built-in decision internally.
pub trait Policy: Send + Sync {
    /// Whether this publish is let in: `Err(reason)` refuses it. Runs before the rules.
    fn admit(&self, s: &StreamInfo) -> Result<(), String> {
        let _ = s;
        Ok(())
    }
    /// The `rule_id` of the candidate that records this stream, or `None` to record nothing.
    fn select_rule(&self, s: &StreamInfo, candidates: &[Candidate]) -> Option<String>;
    /// The plan for one container of this stream; `default` comes from the template.
    fn plan(&self, s: &StreamInfo, c: Format, default: Plan) -> Plan;
    /// The storage key of a file: relative, `/`-separated, no `..`, at most 1024 bytes.
    fn name_file(&self, s: &StreamInfo, f: &FileInfo) -> String;
    /// The request announcing a finished file to `callback_url`, or `None` to send nothing.
    fn on_file(&self, s: &StreamInfo, f: &FileInfo, callback_url: &str) -> Option<CallbackRequest>;
    /// Whether a plugin builds the callback requests ([`Policy::on_file`]); without one the
    /// recorder sends its own event JSON.
    fn builds_callbacks(&self) -> bool {
        false
    }
    /// Whether a plugin names the files ([`Policy::name_file`]); without one a template's
    /// `name` pattern applies.
    fn decides_naming(&self) -> bool {
        false
    }
}

/// The decisions, as plugins export them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interface {
    Admission,
    Rules,
    Segmentation,
    Naming,
    Callbacks,
    /// Configuration check at load time; not a decision.
    Setup,
}

impl Interface {
    pub const ALL: [Interface; 6] = [
        Interface::Admission,
        Interface::Rules,
        Interface::Segmentation,
        Interface::Naming,
        Interface::Callbacks,
        Interface::Setup,
    ];

    /// The WIT interface name: `admission`, `rules`, `segmentation`, `naming`, `callbacks`,
    /// `setup`.
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Admission => "admission",
            Interface::Rules => "rules",
            Interface::Segmentation => "segmentation",
            Interface::Naming => "naming",
            Interface::Callbacks => "callbacks",
            Interface::Setup => "setup",
        }
    }

    pub fn parse(s: &str) -> Option<Interface> {
        Interface::ALL.into_iter().find(|i| i.as_str() == s)
    }
}

impl std::fmt::Display for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin's decision was not used (the `reason` label of `reel_plugin_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The guest trapped (panic, unreachable, bad memory access…).
    Trap,
    /// The call ran past its deadline.
    Timeout,
    /// The guest asked for more memory than the cap.
    Memory,
    /// The guest returned `err`.
    Error,
    /// The answer broke a rule (key with `..`, non-HTTP URL, unknown rule id, zero plan…).
    Invalid,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Trap => "trap",
            FailureReason::Timeout => "timeout",
            FailureReason::Memory => "memory",
            FailureReason::Error => "error",
            FailureReason::Invalid => "invalid",
        }
    }
}

/// A failed plugin call: why, and what the guest or the runtime said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        Failure { reason, message: message.into() }
    }
}

/// Errors from loading plugins and from the `reel plugin` tools.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A plugin could not be used; `reason` says why and what to do. The message carries the
    /// reason and its causes (once each), so the reason is not also a `source`.
    #[error("plugin \"{name}\" at {path}: {}", Causes(reason))]
    Load { name: String, path: PathBuf, reason: wasm::LoadError },
    /// `[policy] plugins` (or a template) names a plugin that has no `[plugins.NAME]` section.
    #[error("plugin \"{0}\" is not configured: add a [plugins.{0}] section with its path")]
    UnknownPlugin(String),
    /// A plugin call made with `reel plugin run` failed.
    #[error("plugin \"{plugin}\" {interface}: {reason}: {message}")]
    Call { plugin: String, interface: &'static str, reason: &'static str, message: String },
    /// `[policy]` is invalid; one line per problem, each starting with its key.
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    /// The WebAssembly engine could not start.
    #[error(transparent)]
    Runtime(#[from] wasm::RuntimeError),
    /// Bad input to `reel plugin run`.
    #[error("{0}")]
    Input(String),
}

/// An error followed by each of its causes: `error: cause: cause's cause`.
struct Causes<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

pub use crate::config::{
    de_bytes, de_duration, parse_bytes, Grants, PluginConfig, PolicyConfig, DEADLINE_RANGE, MEMORY_RANGE,
};

/// A fresh random id for [`FileInfo::random_id`]: 16 lower-case hex digits.
pub fn random_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Longest storage key a plugin may return, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Checks a storage key: relative, `/`-separated, no empty/`.`/`..` component, no NUL or
/// backslash, at most [`MAX_KEY_LEN`] bytes.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("key is {} bytes, more than {MAX_KEY_LEN}", key.len()));
    }
    if key.starts_with('/') {
        return Err(format!("key {key:?} is an absolute path"));
    }
    if key.contains('\0') {
        return Err("key contains NUL".into());
    }
    if key.contains('\\') {
        return Err(format!("key {key:?} contains a backslash"));
    }
    if key.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(format!("key {key:?} contains a control character"));
    }
    if let Some(c) = key.split('/').find(|c| c.is_empty() || *c == "." || *c == "..") {
        return Err(format!("key {key:?} has a {:?} component", if c.is_empty() { "empty" } else { c }));
    }
    Ok(())
}

/// Largest callback body a plugin may return, in bytes.
pub const MAX_CALLBACK_BODY: usize = 1 << 20;

/// Most headers a plugin's callback request may have.
pub const MAX_CALLBACK_HEADERS: usize = 64;

/// Checks a callback request: `http://` or `https://` URL with a host, sane headers, a body of
/// at most [`MAX_CALLBACK_BODY`] bytes.
pub fn check_request(r: &CallbackRequest) -> Result<(), String> {
    if r.body.len() > MAX_CALLBACK_BODY {
        return Err(format!("callback body is {} bytes, more than {MAX_CALLBACK_BODY}", r.body.len()));
    }
    if r.headers.len() > MAX_CALLBACK_HEADERS {
        return Err(format!("callback has {} headers, more than {MAX_CALLBACK_HEADERS}", r.headers.len()));
    }
    let rest = r
        .url
        .strip_prefix("http://")
        .or_else(|| r.url.strip_prefix("https://"))
        .ok_or_else(|| format!("callback URL {:?} is not http or https", r.url))?;
    if rest.is_empty() || rest.starts_with('/') || r.url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("callback URL {:?} is malformed", r.url));
    }
    for (k, v) in &r.headers {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if k.is_empty() || !k.bytes().all(token) {
            return Err(format!("header name {k:?} is not a valid HTTP token"));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("header {k:?} has a line break or NUL in its value"));
        }
    }
    Ok(())
}

/// Checks a plan: a positive interval and HLS segment length.
pub fn check_plan(p: &Plan) -> Result<(), String> {
    if p.interval_ms == 0 {
        return Err("interval_ms is 0".into());
    }
    if p.hls_segment_ms == 0 {
        return Err("hls_segment_ms is 0".into());
    }
    Ok(())
}

/// Converts a plugin's TOML configuration to the typed key/values plugins receive: strings,
/// integers, floats and booleans as themselves, datetimes as their TOML text, arrays and
/// tables as JSON text.
pub fn config_values(table: &toml::Table) -> Vec<(String, ConfigValue)> {
    table
        .iter()
        .map(|(k, v)| {
            let v = match v {
                toml::Value::String(s) => ConfigValue::Text(s.clone()),
                toml::Value::Integer(n) => ConfigValue::Integer(*n),
                toml::Value::Float(x) => ConfigValue::Float(*x),
                toml::Value::Boolean(b) => ConfigValue::Boolean(*b),
                toml::Value::Datetime(d) => ConfigValue::Text(d.to_string()),
                other => ConfigValue::Json(serde_json::to_string(other).unwrap_or_default()),
            };
            (k.clone(), v)
        })
        .collect()
}

/// One configuration value as a plugin receives it.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// A TOML array or table, as JSON text.
    Json(String),
}

/// Plugins by name, as `[plugins.NAME]` sections deserialize.
pub type PluginConfigs = BTreeMap<String, PluginConfig>;

#[cfg(test)]
mod tests;
