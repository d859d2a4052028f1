//! The built-in policy: what Reel decides when no plugin does, and whenever a plugin fails.

use super::{CallbackRequest, Candidate, FileInfo, Format, Plan, Policy, StreamInfo};

// The path-template expander, time formatting and rule ranking are the guest SDK's own source,
// so a plugin keeping an SDK default decides byte for byte as this built-in policy does. The
// shared file formats times with `super::time`: here `media::time`, built from the SDK's
// `time.rs`.
use crate::media::time;

#[allow(dead_code)]
#[path = "../../../guest-sdk/src/shared.rs"]
mod shared;

pub use shared::{expand, FileVars, DEFAULT_NAME_TEMPLATE};

/// Makes a publisher-chosen name safe as one path component: characters other than letters,
/// digits and `-_.@` become `_`; an empty or all-dots name becomes `_`.
pub fn sanitize(s: &str) -> String {
    shared::safe_component(s).into_owned()
}

/// Today's defaults: the most specific rule, the template's plan,
/// `{AppName}/{StreamName}/{EscapedStartTime}_{EscapedEndTime}.{ext}`, and a JSON callback.
#[derive(Clone, Copy, Debug, Default)]
pub struct Builtin;

/// The key of `f` under a template's `name` pattern: the publisher-chosen names made safe as
/// for the default name, `.{ext}` added when the pattern names no `{ext}`. `None` when the
/// result is not a valid key (the default name is used then).
pub fn name_with(pattern: &str, s: &StreamInfo, f: &FileInfo) -> Option<String> {
    let v = FileVars::of(s, f);
    let (domain, app, stream) = (sanitize(v.domain), sanitize(v.app), sanitize(v.stream));
    let safe = FileVars { domain: &domain, app: &app, stream: &stream, ..v };
    let mut key = expand(pattern, |n| safe.get(n));
    if !pattern.contains("{ext}") {
        key.push('.');
        key.push_str(safe.ext);
    }
    super::check_key(&key).ok().map(|()| key)
}

/// Checks a template's `name` pattern: every `{Variable}` must be one of
/// [`shared::NAME_VARIABLES`].
pub fn check_name_template(pattern: &str) -> Result<(), String> {
    let unknown = shared::unknown_variables(pattern);
    if pattern.trim().is_empty() {
        return Err("is empty".into());
    }
    match unknown.first() {
        None => Ok(()),
        Some(u) => Err(format!("unknown variable {{{u}}} (known: {})", shared::NAME_VARIABLES.join(", "))),
    }
}

impl FileVars<'_> {
    /// The path variables of `f`, a file of stream `s`.
    pub fn of<'a>(s: &'a StreamInfo, f: &'a FileInfo) -> FileVars<'a> {
        FileVars {
            domain: &s.domain,
            app: &s.app,
            stream: &s.name,
            sequence: f.sequence,
            start_ms: f.start_ms,
            end_ms: f.end_ms,
            random_id: &f.random_id,
            ext: f.container.extension(),
            task_id: f.task_id.as_deref().unwrap_or(""),
        }
    }
}

impl Policy for Builtin {
    /// Exact stream > exact app > exact domain > wildcard, then higher priority, then the
    /// first configured.
    fn select_rule(&self, _s: &StreamInfo, candidates: &[Candidate]) -> Option<String> {
        let i = shared::most_specific(
            candidates.iter().map(|c| (c.domain.as_str(), c.app.as_str(), c.name.as_str(), c.priority)),
        )?;
        Some(candidates[i].rule_id.clone())
    }

    fn plan(&self, _s: &StreamInfo, _c: Format, default: Plan) -> Plan {
        default
    }

    /// [`DEFAULT_NAME_TEMPLATE`], with the app and stream names passed through [`sanitize`].
    fn name_file(&self, s: &StreamInfo, f: &FileInfo) -> String {
        shared::default_name(&FileVars::of(s, f))
    }

    /// `{"event":"record_file","domain":…,"app":…,"stream":…,"container":…,"key":…,"size":…,
    /// "duration_ms":…,"start_ms":…,"end_ms":…,"sequence":…,"session_id":…,"task_id":…}`
    fn on_file(&self, s: &StreamInfo, f: &FileInfo, callback_url: &str) -> Option<CallbackRequest> {
        let body = shared::default_callback_body(
            &FileVars::of(s, f),
            f.container.name(),
            &f.key,
            f.size,
            f.duration_ms,
            &f.session_id,
            f.task_id.as_deref(),
        );
        Some(CallbackRequest {
            url: callback_url.to_owned(),
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.into_bytes(),
        })
    }
}
