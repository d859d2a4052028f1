//! Guest SDK for Reel policy plugins.
//!
//! A plugin is a `cdylib` built for `wasm32-wasip2`. Implement the traits for the decisions you
//! want to make (every method defaults to what Reel does without plugins), then export them:
//!
//! ```ignore
//! use reel_plugin::{Context, FileInfo, Naming, StreamInfo};
//!
//! struct ByDay;
//!
//! impl Naming for ByDay {
//!     fn name_file(ctx: &Context, s: &StreamInfo, f: &FileInfo) -> Result<String, String> {
//!         let template = ctx.config().text("template").unwrap_or("{AppName}/{StartYear}{StartMonth}{StartDay}/{StreamName}-{Sequence}.{ext}");
//!         Ok(reel_plugin::expand(template, s, f))
//!     }
//! }
//!
//! reel_plugin::export!(ByDay: naming);
//! ```
//!
//! Only the listed interfaces are exported; Reel uses the next plugin in the chain, or its
//! built-in policy, for the others. Plugins get no clock, filesystem, network or environment:
//! [`Context`] carries the host's time, fresh random bits and the plugin's configuration.

extern crate self as reel_plugin;

mod shared;
mod time;

pub use shared::{
    is_wildcard, most_specific, safe_component, unknown_variables, FileVars, Json, DEFAULT_NAME_TEMPLATE,
    NAME_VARIABLES,
};
pub use time::{civil, escaped_time, Civil};

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// Bindings generated from `wit/policy.wit`, one world per exported interface so that a plugin
/// exports only what it lists in [`export!`].
#[doc(hidden)]
pub mod __wit {
    pub mod types {
        wit_bindgen::generate!({
            path: "../wit",
            inline: "package reel:sdk; world types { import reel:policy/types@0.1.0; }",
            generate_unused_types: true,
            generate_all,
            runtime_path: "::reel_plugin::__private::wit_bindgen::rt",
            additional_derives: [PartialEq],
        });
    }
    pub mod admission {
        wit_bindgen::generate!({
            path: "../wit",
            inline: "package reel:sdk; world admission { export reel:policy/admission@0.1.0; }",
            with: { "reel:policy/types@0.1.0": crate::__wit::types::reel::policy::types },
            pub_export_macro: true,
            runtime_path: "::reel_plugin::__private::wit_bindgen::rt",
        });
    }
    pub mod rules {
        wit_bindgen::generate!({
            path: "../wit",
            inline: "package reel:sdk; world rules { export reel:policy/rules@0.1.0; }",
            with: { "reel:policy/types@0.1.0": crate::__wit::types::reel::policy::types },
            pub_export_macro: true,
            default_bindings_module: "::reel_plugin::__wit::rules",
            runtime_path: "::reel_plugin::__private::wit_bindgen::rt",
            additional_derives: [PartialEq],
        });
    }
    pub mod segmentation {
        wit_bindgen::generate!({
            path: "../wit",
            inline: "package reel:sdk; world segmentation { export reel:policy/segmentation@0.1.0; }",
            with: { "reel:policy/types@0.1.0": crate::__wit::types::reel::policy::types },
            pub_export_macro: true,
            default_bindings_module: "::reel_plugin::__wit::segmentation",
            runtime_path: "::reel_plugin::__private::wit_bindgen::rt",
            additional_derives: [PartialEq],
        });
    }
    pub mod naming {
        wit_bindgen::generate!({
            path: "../wit",
            inline: "package reel:sdk; world naming { export reel:policy/naming@0.1.0; }",
            with: { "reel:policy/types@0.1.0": crate::__wit::types::reel::policy::types },
            pub_export_macro: true,
            default_bindings_module: "::reel_plugin::__wit::naming",
            runtime_path: "::reel_plugin::__private::wit_bindgen::rt",
        });
    }
    pub mod callbacks {
        wit_bindgen::generate!({
            path: "../wit",
            inline: "package reel:sdk; world callbacks { export reel:policy/callbacks@0.1.0; }",
            with: { "reel:policy/types@0.1.0": crate::__wit::types::reel::policy::types },
            pub_export_macro: true,
            default_bindings_module: "::reel_plugin::__wit::callbacks",
            runtime_path: "::reel_plugin::__private::wit_bindgen::rt",
            additional_derives: [PartialEq],
        });
    }
    pub mod setup {
        wit_bindgen::generate!({
            path: "../wit",
            inline: "package reel:sdk; world setup { export reel:policy/setup@0.1.0; }",
            with: { "reel:policy/types@0.1.0": crate::__wit::types::reel::policy::types },
            pub_export_macro: true,
            default_bindings_module: "::reel_plugin::__wit::setup",
            runtime_path: "::reel_plugin::__private::wit_bindgen::rt",
        });
    }
}

use __wit::admission::exports::reel::policy::admission as wit_admission;
use __wit::callbacks::exports::reel::policy::callbacks as wit_callbacks;
use __wit::naming::exports::reel::policy::naming as wit_naming;
use __wit::rules::exports::reel::policy::rules as wit_rules;
use __wit::segmentation::exports::reel::policy::segmentation as wit_segmentation;
use __wit::setup::exports::reel::policy::setup as wit_setup;

pub use __wit::types::reel::policy::types::{Container, Context, FileInfo, StreamInfo, Value};
pub use wit_admission::Verdict;
pub use wit_callbacks::Request;
pub use wit_rules::Candidate;
pub use wit_segmentation::Plan;

/// Lets a publish in or refuses it (tokens in the stream's query, allow lists), after Reel's own
/// checks and before the rules. An `Err` refuses the publish too: a gate that fails stays
/// closed.
pub trait Admission {
    /// Default: admit.
    fn admit(ctx: &Context, s: &StreamInfo) -> Result<Verdict, String> {
        let _ = (ctx, s);
        Ok(Verdict::Admit)
    }
}

/// Chooses which matching recording rule applies to a stream.
pub trait Rules {
    /// Returns the `rule_id` of the chosen candidate, or `None` to record nothing.
    /// Default: [`builtin::select`].
    fn select(ctx: &Context, s: &StreamInfo, candidates: &[Candidate]) -> Result<Option<String>, String> {
        let _ = ctx;
        Ok(builtin::select(s, candidates))
    }
}

/// Sets file interval, HLS segment length and resume window per stream and container.
pub trait Segmentation {
    /// Default: the template's plan, unchanged.
    fn plan(ctx: &Context, s: &StreamInfo, container: Container, default: Plan) -> Result<Plan, String> {
        let _ = (ctx, s, container);
        Ok(default)
    }
}

/// Names the storage key of a file.
pub trait Naming {
    /// A relative key with `/` separators (no `..`, no leading `/`, at most 1024 bytes).
    /// Default: [`builtin::name_file`].
    fn name_file(ctx: &Context, s: &StreamInfo, f: &FileInfo) -> Result<String, String> {
        let _ = ctx;
        Ok(builtin::name_file(s, f))
    }
}

/// Builds the HTTP request announcing a finished file.
pub trait Callbacks {
    /// `url` is the configured callback URL; `None` sends nothing.
    /// Default: [`builtin::callback`].
    fn on_file(ctx: &Context, s: &StreamInfo, f: &FileInfo, url: &str) -> Result<Option<Request>, String> {
        let _ = ctx;
        Ok(Some(builtin::callback(s, f, url)))
    }
}

/// Checks the configuration once, when Reel loads the plugin.
pub trait Setup {
    /// An error refuses the plugin at load time; name the key and what is wrong with it.
    fn validate(config: Config<'_>) -> Result<(), String> {
        let _ = config;
        Ok(())
    }
}

impl<T: Admission> wit_admission::Guest for T {
    fn admit(ctx: Context, s: StreamInfo) -> Result<Verdict, String> {
        <T as Admission>::admit(&ctx, &s)
    }
}

impl<T: Rules> wit_rules::Guest for T {
    fn select(ctx: Context, s: StreamInfo, candidates: Vec<Candidate>) -> Result<Option<String>, String> {
        <T as Rules>::select(&ctx, &s, &candidates)
    }
}

impl<T: Segmentation> wit_segmentation::Guest for T {
    fn plan_for(ctx: Context, s: StreamInfo, c: Container, default: Plan) -> Result<Plan, String> {
        <T as Segmentation>::plan(&ctx, &s, c, default)
    }
}

impl<T: Naming> wit_naming::Guest for T {
    fn name_file(ctx: Context, s: StreamInfo, f: FileInfo) -> Result<String, String> {
        <T as Naming>::name_file(&ctx, &s, &f)
    }
}

impl<T: Callbacks> wit_callbacks::Guest for T {
    fn on_file(ctx: Context, s: StreamInfo, f: FileInfo, url: String) -> Result<Option<Request>, String> {
        <T as Callbacks>::on_file(&ctx, &s, &f, &url)
    }
}

impl<T: Setup> wit_setup::Guest for T {
    fn validate(config: Vec<(String, Value)>) -> Result<(), String> {
        <T as Setup>::validate(Config(&config))
    }
}

/// Exports a type's implementations of the listed interfaces:
/// `reel_plugin::export!(MyPlugin: naming, callbacks);`
///
/// Interfaces: `admission` ([`Admission`]), `rules` ([`Rules`]), `segmentation` ([`Segmentation`]), `naming` ([`Naming`]),
/// `callbacks` ([`Callbacks`]), `setup` ([`Setup`]). Use it once per plugin.
#[macro_export]
macro_rules! export {
    ($ty:ident : $($interface:ident),+ $(,)?) => {
        $( $crate::__export_interface!($interface $ty); )+
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_interface {
    (admission $ty:ident) => { $crate::__wit::admission::export!($ty with_types_in $crate::__wit::admission); };
    (rules $ty:ident) => { $crate::__wit::rules::export!($ty with_types_in $crate::__wit::rules); };
    (segmentation $ty:ident) => { $crate::__wit::segmentation::export!($ty with_types_in $crate::__wit::segmentation); };
    (naming $ty:ident) => { $crate::__wit::naming::export!($ty with_types_in $crate::__wit::naming); };
    (callbacks $ty:ident) => { $crate::__wit::callbacks::export!($ty with_types_in $crate::__wit::callbacks); };
    (setup $ty:ident) => { $crate::__wit::setup::export!($ty with_types_in $crate::__wit::setup); };
    ($other:ident $ty:ident) => {
        compile_error!(concat!(
            "reel_plugin::export!: unknown interface `", stringify!($other),
            "`; expected admission, rules, segmentation, naming, callbacks or setup"
        ));
    };
}

/// The plugin's configuration: the `config` table of `[plugins.NAME]`, in order.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a>(pub &'a [(String, Value)]);

impl<'a> Config<'a> {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// A string value (`None` if unset or not a string).
    pub fn text(&self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    /// An integer value (`None` if unset or not an integer).
    pub fn integer(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }
    /// A boolean value (`None` if unset or not a boolean).
    pub fn boolean(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }
    /// Checks that `key`, if set, is a string; for [`Setup::validate`].
    pub fn expect_text(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s)),
            Some(_) => Err(format!("config key `{key}` must be a string")),
        }
    }
    /// Like [`Config::expect_text`], but the key must be set.
    pub fn require_text(&self, key: &str) -> Result<&'a str, String> {
        self.expect_text(key)?.ok_or_else(|| format!("config key `{key}` is required"))
    }
}

impl Context {
    /// The plugin's configuration.
    pub fn config(&self) -> Config<'_> {
        Config(&self.config)
    }
    /// The host's wall clock in whole seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        self.now_ms / 1000
    }
}

impl Container {
    /// The file extension Reel uses: `flv`, `m3u8`, `mp4`, `aac`.
    pub fn ext(self) -> &'static str {
        match self {
            Container::Flv => "flv",
            Container::Hls => "m3u8",
            Container::Mp4 => "mp4",
            Container::Aac => "aac",
        }
    }
    /// The format's name: `flv`, `hls`, `mp4`, `aac`.
    pub fn as_str(self) -> &'static str {
        match self {
            Container::Flv => "flv",
            Container::Hls => "hls",
            Container::Mp4 => "mp4",
            Container::Aac => "aac",
        }
    }
}

/// The path variables of a file (see [`FileVars`]).
pub fn file_vars<'a>(s: &'a StreamInfo, f: &'a FileInfo) -> FileVars<'a> {
    FileVars {
        domain: &s.domain,
        app: &s.app,
        stream: &s.name,
        sequence: f.sequence,
        start_ms: f.start_ms,
        end_ms: f.end_ms,
        random_id: &f.random_id,
        ext: f.container.ext(),
        task_id: f.task_id.as_deref().unwrap_or(""),
    }
}

/// Expands `{Var}` path variables ([`FileVars`]) in `template`; unknown variables stay as written.
pub fn expand(template: &str, s: &StreamInfo, f: &FileInfo) -> String {
    let vars = file_vars(s, f);
    shared::expand(template, |name| vars.get(name))
}

/// Like [`expand`], with your own variables looked up first.
pub fn expand_with(template: &str, s: &StreamInfo, f: &FileInfo, extra: impl Fn(&str) -> Option<String>) -> String {
    let vars = file_vars(s, f);
    shared::expand(template, |name| extra(name).or_else(|| vars.get(name)))
}

/// Expands `{Var}` variables with a lookup of your own; unknown variables stay as written.
pub fn expand_vars(template: &str, vars: impl Fn(&str) -> Option<String>) -> String {
    shared::expand(template, vars)
}

/// Lower-case hex MD5 of `data`, as callback signatures use.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(data);
    let mut out = String::with_capacity(32);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// `n` lower-case alphanumeric characters drawn from `seed` (e.g. [`Context::nonce`]).
pub fn random_string(seed: u64, n: usize) -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    // SplitMix64: good enough to spread a 64-bit seed over a short name.
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            char::from(ALPHABET[(z % 36) as usize])
        })
        .collect()
}

/// What Reel decides without plugins; the trait defaults call these.
pub mod builtin {
    use super::*;

    /// The most specific candidate (exact stream > exact app > exact domain > wildcard), then
    /// the higher priority, then the first configured.
    pub fn select(_s: &StreamInfo, candidates: &[Candidate]) -> Option<String> {
        let i =
            most_specific(candidates.iter().map(|c| (c.domain.as_str(), c.app.as_str(), c.name.as_str(), c.priority)))?;
        Some(candidates[i].rule_id.clone())
    }

    /// `{AppName}/{StreamName}/{EscapedStartTime}_{EscapedEndTime}.{ext}`, with the app and
    /// stream names made safe by [`safe_component`].
    pub fn name_file(s: &StreamInfo, f: &FileInfo) -> String {
        shared::default_name(&file_vars(s, f))
    }

    /// A JSON POST to `url` with the stream and file fields (`"event": "record_file"`).
    pub fn callback(s: &StreamInfo, f: &FileInfo, url: &str) -> Request {
        let body = shared::default_callback_body(
            &file_vars(s, f),
            f.container.as_str(),
            &f.key,
            f.size,
            f.duration_ms,
            &f.session_id,
            f.task_id.as_deref(),
        );
        Request {
            url: url.to_owned(),
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_the_rfc_vectors() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn random_strings_differ_by_seed() {
        let a = random_string(1, 12);
        assert_eq!(a.len(), 12);
        assert_ne!(a, random_string(2, 12));
        assert_eq!(a, random_string(1, 12));
    }
}
