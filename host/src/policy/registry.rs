//! The loaded plugins, and the policy chains built from them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::failures::{decided, failed};
use super::wasm::{CallEnv, Plugin, Runtime};
use super::{
    check_key, check_plan, check_request, config_values, Builtin, CallbackRequest, Candidate, Failure, FailureReason,
    FileInfo, Format, Interface, Plan, PluginConfig, Policy, PolicyConfig, PolicyError, StreamInfo,
};

/// Where compiled plugins are cached, under the data directory.
pub const CACHE_DIR: &str = "plugin-cache";

/// Every configured plugin, compiled and linked once. Reloading is building a new one.
pub struct Registry {
    // Plugins hold the runtime too; keeping it here documents who owns the engine. No plugins,
    // no engine (and no epoch thread, no instance pool).
    _runtime: Option<Runtime>,
    plugins: BTreeMap<String, Arc<Plugin>>,
    default: Arc<Chain>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .field("default", &self.default.names())
            .finish()
    }
}

impl Registry {
    /// Loads every `[plugins.NAME]`, compiling each once (cached by content hash in
    /// `data_dir/plugin-cache/`). The default chain is `policy.plugins`.
    pub fn new(
        plugins: &BTreeMap<String, PluginConfig>,
        policy: &PolicyConfig,
        data_dir: &Path,
    ) -> Result<Registry, PolicyError> {
        Self::build(plugins, policy, Some(&data_dir.join(CACHE_DIR)))
    }

    /// Like [`Registry::new`], compiling without a cache.
    pub fn without_cache(
        plugins: &BTreeMap<String, PluginConfig>,
        policy: &PolicyConfig,
    ) -> Result<Registry, PolicyError> {
        Self::build(plugins, policy, None)
    }

    fn build(
        plugins: &BTreeMap<String, PluginConfig>,
        policy: &PolicyConfig,
        cache: Option<&Path>,
    ) -> Result<Registry, PolicyError> {
        let errors = policy.validate();
        if !errors.is_empty() {
            return Err(PolicyError::Config(errors));
        }
        for name in &policy.plugins {
            if !plugins.contains_key(name) {
                return Err(PolicyError::UnknownPlugin(name.clone()));
            }
        }
        let runtime = match plugins.is_empty() {
            true => None,
            // The engine's memory slots fit the largest cap; each plugin keeps its own.
            false => {
                let largest = plugins.values().filter_map(|p| p.memory).fold(policy.memory, u64::max);
                Some(Runtime::new(policy.deadline, largest).map_err(PolicyError::Runtime)?)
            }
        };
        let mut loaded = BTreeMap::new();
        for (name, cfg) in plugins {
            let Some(runtime) = &runtime else { break };
            let config = config_values(&cfg.config);
            let plugin = runtime
                .load(name, &cfg.path, &config, &cfg.allow, Some(cfg.memory.unwrap_or(policy.memory)), cache)
                .map_err(|reason| PolicyError::Load { name: name.clone(), path: cfg.path.clone(), reason })?;
            tracing::info!(
                plugin = %name,
                path = %cfg.path.display(),
                exports = ?plugin.shape.exports.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
                "loaded policy plugin"
            );
            loaded.insert(name.clone(), Arc::new(plugin));
        }
        if let Some(dir) = cache {
            prune_cache(dir, &loaded);
        }
        let default = Arc::new(Chain { plugins: policy.plugins.iter().map(|n| loaded[n].clone()).collect() });
        Ok(Registry { _runtime: runtime, plugins: loaded, default })
    }

    /// The policy for a recording: `plugin_names` in order (a template's `plugins = [...]`), or
    /// `[policy] plugins` if `None`. For each decision the first plugin exporting it decides;
    /// otherwise, and whenever that plugin fails, [`Builtin`] does.
    pub fn policy(&self, plugin_names: Option<&[String]>) -> Arc<dyn Policy> {
        match plugin_names {
            None => self.default.clone(),
            Some(names) => Arc::new(Chain {
                plugins: names
                    .iter()
                    .filter_map(|n| {
                        let p = self.plugins.get(n).cloned();
                        if p.is_none() {
                            tracing::warn!(plugin = %n, "policy names an unknown plugin; skipping it");
                        }
                        p
                    })
                    .collect(),
            }),
        }
    }

    /// Checks plugin names (e.g. a template's `plugins`) against the loaded plugins.
    pub fn check_names(&self, names: &[String]) -> Result<(), PolicyError> {
        match names.iter().find(|n| !self.plugins.contains_key(*n)) {
            Some(n) => Err(PolicyError::UnknownPlugin(n.clone())),
            None => Ok(()),
        }
    }

    /// Loaded plugin names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plugins.keys().map(String::as_str)
    }

    /// The interfaces plugin `name` exports.
    pub fn exports(&self, name: &str) -> Option<Vec<Interface>> {
        self.plugins.get(name).map(|p| p.shape.exports.clone())
    }

    /// Instantiates plugin `name` once without calling it (for benchmarks).
    #[doc(hidden)]
    pub fn instantiate_only(&self, name: &str) -> Result<(), Failure> {
        self.plugins[name].instantiate_only()
    }

    /// Calls plugin `name`'s `naming` `n` times in one instance; the time the calls took (for
    /// benchmarks: real decisions never share an instance).
    #[doc(hidden)]
    pub fn warm_naming(
        &self,
        name: &str,
        s: &StreamInfo,
        f: &FileInfo,
        n: u32,
    ) -> Result<std::time::Duration, Failure> {
        self.plugins[name].warm_naming(s, f, n)
    }
}

/// Removes compiled plugins no loaded plugin uses (older versions, other wasmtime releases)
/// and interrupted writes.
fn prune_cache(dir: &Path, loaded: &BTreeMap<String, Arc<Plugin>>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let keep: Vec<&str> = loaded.values().filter_map(|p| p.cache_file.as_deref()).collect();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.ends_with(".cwasm") || name.ends_with(".part");
        if ours && !keep.contains(&name.as_ref()) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::debug!(file = %name, "removed unused compiled plugin"),
                Err(e) => {
                    tracing::warn!(file = %name, error = &e as &dyn std::error::Error, "cannot remove unused compiled plugin")
                }
            }
        }
    }
}

/// Plugins in order, then [`Builtin`].
pub(crate) struct Chain {
    plugins: Vec<Arc<Plugin>>,
}

impl Chain {
    fn names(&self) -> Vec<&str> {
        self.plugins.iter().map(|p| p.name.as_str()).collect()
    }

    /// Asks the first plugin exporting `interface`; `None` if none does or it failed.
    fn decide<T>(
        &self,
        interface: Interface,
        call: impl FnOnce(&Plugin, CallEnv) -> Result<T, Failure>,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Option<T> {
        let plugin = self.plugins.iter().find(|p| p.exports(interface))?;
        let answer = call(plugin, CallEnv::now())
            .and_then(|answer| check(&answer).map(|()| answer).map_err(|m| Failure::new(FailureReason::Invalid, m)));
        match answer {
            Ok(answer) => {
                decided(&plugin.name, interface);
                Some(answer)
            }
            Err(failure) => {
                failed(&plugin.name, interface, &failure, &plugin.log);
                None
            }
        }
    }
}

/// Checks a rule choice: `None`, or one of the candidates' ids.
pub(crate) fn check_choice(choice: &Option<String>, candidates: &[Candidate]) -> Result<(), String> {
    match choice {
        Some(id) if !candidates.iter().any(|c| &c.rule_id == id) => {
            Err(format!("chose rule {id:?}, which is not a candidate"))
        }
        _ => Ok(()),
    }
}

impl Policy for Chain {
    /// The first plugin exporting `admission` decides; one that fails refuses (a gate that
    /// fails stays closed), with the failure in the log and the metrics.
    fn admit(&self, s: &StreamInfo) -> Result<(), String> {
        let Some(plugin) = self.plugins.iter().find(|p| p.exports(Interface::Admission)) else { return Ok(()) };
        match plugin.admit(CallEnv::now(), s) {
            Ok(verdict) => {
                decided(&plugin.name, Interface::Admission);
                verdict.map_err(|reason| format!("refused by plugin {}: {reason}", plugin.name))
            }
            Err(failure) => {
                failed(&plugin.name, Interface::Admission, &failure, &plugin.log);
                Err(format!(
                    "the admission plugin {} failed ({}), so the publish is refused",
                    plugin.name,
                    failure.reason.as_str()
                ))
            }
        }
    }

    fn select_rule(&self, s: &StreamInfo, c: &[Candidate]) -> Option<String> {
        self.decide(Interface::Rules, |p, env| p.select(env, s, c), |choice| check_choice(choice, c))
            .unwrap_or_else(|| Builtin.select_rule(s, c))
    }

    fn plan(&self, s: &StreamInfo, c: Format, default: Plan) -> Plan {
        self.decide(Interface::Segmentation, |p, env| p.plan(env, s, c, default), check_plan)
            .unwrap_or_else(|| Builtin.plan(s, c, default))
    }

    fn name_file(&self, s: &StreamInfo, f: &FileInfo) -> String {
        self.decide(Interface::Naming, |p, env| p.name_file(env, s, f), |k| check_key(k))
            .unwrap_or_else(|| Builtin.name_file(s, f))
    }

    fn on_file(&self, s: &StreamInfo, f: &FileInfo, callback_url: &str) -> Option<CallbackRequest> {
        self.decide(
            Interface::Callbacks,
            |p, env| p.on_file(env, s, f, callback_url),
            |r| r.as_ref().map_or(Ok(()), check_request),
        )
        .unwrap_or_else(|| Builtin.on_file(s, f, callback_url))
    }

    fn builds_callbacks(&self) -> bool {
        self.plugins.iter().any(|p| p.exports(Interface::Callbacks))
    }

    fn decides_naming(&self) -> bool {
        self.plugins.iter().any(|p| p.exports(Interface::Naming))
    }
}
