//! `[[auth]]`: who may publish. Off unless a rule matches the publish's domain and app.

use serde::Deserialize;

/// How a publish URL is signed.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// CSS-compatible: `txSecret = md5(key + StreamName + txTime)`, `txTime` the expiry as hex
    /// Unix seconds.
    Css,
    /// `sign = hex(HMAC-SHA256(key, "{AppName}/{StreamName}:{expires}"))`, `expires` decimal Unix
    /// seconds.
    Hmac,
}

/// `[[auth]]`: publishes to `domain`/`app` (patterns as in `[[rule]]`) must carry a valid
/// signature made with `key`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default = "super::wildcard")]
    pub domain: String,
    #[serde(default = "super::wildcard")]
    pub app: String,
    pub kind: AuthKind,
    /// The signing key, or `env:VAR` to read it from the environment at start and reload.
    pub key: String,
}

impl Auth {
    /// The key, with `env:VAR` resolved.
    pub fn resolved_key(&self) -> Result<String, String> {
        match self.key.strip_prefix("env:") {
            Some(var) => std::env::var(var).map_err(|_| format!("environment variable {var} is not set")),
            None => Ok(self.key.clone()),
        }
    }
}
