//! `[catalog]`: where recordings and record tasks are kept.

use serde::Deserialize;

/// `[catalog]`. Without a `url`, an SQLite file `reel.db` in `server.data_dir` (no set-up).
/// With `url = "postgres://user:password@host:port/db"` (`env:VAR` reads it from the
/// environment), several Reel nodes share one catalog: tasks created on one node record on the
/// node the stream lands on.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// `sqlite://PATH` or `postgres://…`; default `sqlite://<data_dir>/reel.db`.
    #[serde(default)]
    pub url: Option<String>,
    /// Connections to the database at most (default 8).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// This node's name in recordings and task leases (default: the host name).
    #[serde(default)]
    pub node_id: Option<String>,
}

impl CatalogConfig {
    /// The URL with `env:VAR` resolved; `None` means the embedded SQLite file.
    pub fn resolved_url(&self) -> Result<Option<String>, String> {
        match &self.url {
            None => Ok(None),
            Some(u) => match u.strip_prefix("env:") {
                Some(var) => std::env::var(var).map(Some).map_err(|_| format!("environment variable {var} is not set")),
                None => Ok(Some(u.clone())),
            },
        }
    }

    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        match self.resolved_url() {
            Err(e) => p.push(format!("catalog.url: {e}")),
            Ok(Some(u))
                if !(u.starts_with("sqlite:") || u.starts_with("postgres://") || u.starts_with("postgresql://")) =>
            {
                p.push("catalog.url must start with sqlite:, postgres:// or postgresql://".into())
            }
            _ => {}
        }
        if self.max_connections == Some(0) {
            p.push("catalog.max_connections must be at least 1".into());
        }
        if let Some(n) = &self.node_id {
            if n.is_empty() || n.len() > 64 {
                p.push("catalog.node_id must be 1 to 64 characters".into());
            }
        }
        p
    }
}
