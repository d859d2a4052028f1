//! `reel plugin check FILE.wasm` and `reel plugin run FILE.wasm --interface NAME --input FILE`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::registry::check_choice;
use super::wasm::{CallEnv, Plugin, Runtime};
use super::{
    check_key, check_plan, check_request, config_values, Candidate, Failure, FileInfo, Format, Grants, Interface, Plan,
    PolicyConfig, PolicyError, StreamInfo,
};

fn plugin_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn load(path: &Path, config: &toml::Table, cache: Option<&Path>) -> Result<Plugin, PolicyError> {
    let defaults = PolicyConfig::default();
    let runtime = Runtime::new(defaults.deadline, defaults.memory).map_err(PolicyError::Runtime)?;
    let name = plugin_name(path);
    if let Some(dir) = cache {
        // A cache that cannot be made only costs a compile.
        let _ = std::fs::create_dir_all(dir);
    }
    runtime
        .load(&name, path, &config_values(config), &Grants::default(), None, cache)
        .map_err(|reason| PolicyError::Load { name, path: path.to_owned(), reason })
}

/// Loads the component at `path` as Reel would (no configuration, default limits) and
/// describes it:
///
/// ```text
/// plugin tencent_css (77.9 KiB): reel:policy@0.1.0, supported
/// exports: naming, callbacks, setup
/// imports: reel:policy/types@0.1.0, wasi:cli/environment@0.2.6, …
/// ```
///
/// Errors say why the host cannot use it (not a component, an unsupported WIT version, an
/// import that is not granted such as `wasi:filesystem`, a trap while starting, …). A plugin
/// with a `setup` export that requires configuration fails here; use [`run`] with its config.
///
/// With `cache` (`DATA_DIR/plugin-cache`, the directory `reel serve` compiles into), a compiled
/// plugin is reused and a new one kept, so a check also precompiles for `serve`.
pub fn check(path: &Path, cache: Option<&Path>) -> Result<String, PolicyError> {
    let p = load(path, &toml::Table::new(), cache)?;
    Ok(format!(
        "plugin {} ({:.1} KiB): reel:policy@{}, supported\nexports: {}\nimports: {}\n",
        p.name,
        p.size as f64 / 1024.0,
        p.shape.version,
        p.shape.exports.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", "),
        p.shape.imports.join(", "),
    ))
}

/// The input of [`run`], as JSON. Which fields an interface needs:
///
/// | interface      | fields                                    |
/// |----------------|-------------------------------------------|
/// | `admission`    | `stream`                                  |
/// | `rules`        | `stream`, `candidates`                    |
/// | `segmentation` | `stream`, `container`, `default`          |
/// | `naming`       | `stream`, `file`                          |
/// | `callbacks`    | `stream`, `file`, `callback_url`          |
/// | `setup`        | none (checks the config)                  |
///
/// ```json
/// {
///   "now_ms": 1795352709120,
///   "nonce": 42,
///   "stream": { "domain": "push.example.com", "app": "live", "name": "cam1",
///               "params": [["txSecret", "abc"]], "video_codec": "h264", "audio_codec": "aac",
///               "started_at_ms": 1795352700000 },
///   "file": { "container": "flv", "sequence": 0, "start_ms": 1795352709120, "end_ms": 1795354509000,
///             "size": 10485760, "duration_ms": 1799880, "key": "live/cam1/a.flv",
///             "session_id": "s-1", "task_id": null, "random_id": "9f2c4e1a7b3d5c60" },
///   "candidates": [ { "rule_id": "r1", "domain": "", "app": "live", "name": "", "template": "t1", "priority": 0 } ],
///   "container": "hls",
///   "default": { "interval_ms": 1800000, "hls_segment_ms": 6000, "resume_window_ms": 180000 },
///   "callback_url": "https://example.com/record"
/// }
/// ```
///
/// `now_ms` defaults to the current time and `nonce` to a random number; `stream` fields
/// other than `domain`, `app` and `name` may be left out, and so may `file` fields other than
/// `container`, `start_ms` and `end_ms`. Containers are `flv`, `hls`, `mp4`, `aac`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    #[serde(default)]
    pub now_ms: Option<u64>,
    #[serde(default)]
    pub nonce: Option<u64>,
    #[serde(default)]
    pub stream: Option<StreamInfo>,
    #[serde(default)]
    pub file: Option<FileInfo>,
    #[serde(default)]
    pub candidates: Option<Vec<Candidate>>,
    #[serde(default)]
    pub container: Option<Format>,
    #[serde(default)]
    pub default: Option<Plan>,
    #[serde(default)]
    pub callback_url: Option<String>,
}

#[derive(Serialize)]
struct Request<'a> {
    url: &'a str,
    headers: &'a [(String, String)],
    /// The body as text when it is UTF-8 …
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    /// … otherwise as bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_bytes: Option<&'a [u8]>,
}

/// Makes one decision with the plugin at `path` and returns the answer as JSON, e.g.
/// `{"interface":"naming","key":"live/cam1/….flv"}`, `{"interface":"rules","rule_id":"r1"}`,
/// `{"interface":"segmentation","plan":{…}}`, `{"interface":"admission","admit":false,"reason":"…"}`,
/// `{"interface":"callbacks","request":{"url":…,"headers":[[…]],"body":"…"}}` (`body_bytes` if
/// the body is not UTF-8; `"request":null` if the plugin sends nothing), or
/// `{"interface":"setup","ok":true}`.
///
/// `input_json` is described at [`RunInput`]; `config` is what `[plugins.NAME] config` would
/// hold. Unlike the recorder, a failing call is an error here (with the reason: trap, timeout,
/// memory, error or invalid) rather than a silent fallback to the built-in decision.
pub fn run(
    path: &Path,
    interface: &str,
    input_json: &str,
    config: toml::Table,
    cache: Option<&Path>,
) -> Result<String, PolicyError> {
    let interface = Interface::parse(interface).ok_or_else(|| {
        PolicyError::Input(format!(
            "unknown interface {interface:?}: expected admission, rules, segmentation, naming, callbacks or setup"
        ))
    })?;
    let input: RunInput = if input_json.trim().is_empty() && interface == Interface::Setup {
        RunInput::default()
    } else {
        serde_json::from_str(input_json).map_err(|e| PolicyError::Input(format!("invalid input JSON: {e}")))?
    };
    // Loading runs `setup` with the config, if the plugin exports it.
    let p = load(path, &config, cache)?;
    if !p.exports(interface) {
        return Err(PolicyError::Input(format!(
            "plugin {} does not export `{interface}` (it exports {})",
            p.name,
            p.shape.exports.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let defaults = CallEnv::now();
    let env = CallEnv { now_ms: input.now_ms.unwrap_or(defaults.now_ms), nonce: input.nonce.unwrap_or(defaults.nonce) };
    let need = |field: &str| PolicyError::Input(format!("interface `{interface}` needs `{field}` in the input"));
    let fail = |f: Failure| PolicyError::Call {
        plugin: p.name.clone(),
        interface: interface.as_str(),
        reason: f.reason.as_str(),
        message: f.message,
    };
    let invalid = |m: String| fail(Failure::new(super::FailureReason::Invalid, m));
    let stream = || input.stream.as_ref().ok_or_else(|| need("stream"));
    let file = || input.file.as_ref().ok_or_else(|| need("file"));
    let out = match interface {
        Interface::Setup => serde_json::json!({ "interface": "setup", "ok": true }),
        Interface::Admission => match p.admit(env, stream()?).map_err(fail)? {
            Ok(()) => serde_json::json!({ "interface": "admission", "admit": true }),
            Err(reason) => serde_json::json!({ "interface": "admission", "admit": false, "reason": reason }),
        },
        Interface::Rules => {
            let c = input.candidates.as_deref().ok_or_else(|| need("candidates"))?;
            let choice = p.select(env, stream()?, c).map_err(fail)?;
            check_choice(&choice, c).map_err(invalid)?;
            serde_json::json!({ "interface": "rules", "rule_id": choice })
        }
        Interface::Segmentation => {
            let c = input.container.ok_or_else(|| need("container"))?;
            let d = input.default.ok_or_else(|| need("default"))?;
            let plan = p.plan(env, stream()?, c, d).map_err(fail)?;
            check_plan(&plan).map_err(invalid)?;
            serde_json::json!({ "interface": "segmentation", "plan": plan })
        }
        Interface::Naming => {
            let key = p.name_file(env, stream()?, file()?).map_err(fail)?;
            check_key(&key).map_err(invalid)?;
            serde_json::json!({ "interface": "naming", "key": key })
        }
        Interface::Callbacks => {
            let url = input.callback_url.as_deref().ok_or_else(|| need("callback_url"))?;
            let r = p.on_file(env, stream()?, file()?, url).map_err(fail)?;
            if let Some(r) = &r {
                check_request(r).map_err(invalid)?;
            }
            let request = r.as_ref().map(|r| {
                let text = std::str::from_utf8(&r.body).ok();
                Request {
                    url: &r.url,
                    headers: &r.headers,
                    body: text,
                    body_bytes: text.is_none().then_some(r.body.as_slice()),
                }
            });
            serde_json::json!({ "interface": "callbacks", "request": request })
        }
    };
    Ok(out.to_string())
}
