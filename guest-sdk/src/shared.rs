//! Pure helpers shared by the guest SDK and the host's built-in policy.
//!
//! The host compiles this very file (`host/src/policy/builtin.rs` includes it with `#[path]`), so
//! a plugin that keeps a default decides exactly as the host would without it. Plain `std` only.
//!
//! Times are formatted by `super::time`: each includer provides it, as `guest-sdk/src/time.rs`
//! (the SDK's own module; in the host, `media::time`, which compiles that same file).

use std::fmt::Write as _;

use super::time::{civil, escaped_time};

/// The built-in storage key: `{AppName}/{StreamName}/{EscapedStartTime}_{EscapedEndTime}.{ext}`.
pub const DEFAULT_NAME_TEMPLATE: &str = "{AppName}/{StreamName}/{EscapedStartTime}_{EscapedEndTime}.{ext}";

/// Expands `{Name}` variables in `template` with `vars`; a variable `vars` does not know, and
/// any brace that does not enclose a plain name, is left as written.
///
/// ```text
/// expand("{AppName}/{StreamName}/{Nope}", ..)  ->  "live/cam1/{Nope}"
/// ```
pub fn expand(template: &str, vars: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find(['}', '{']);
        match close {
            Some(end) if after.as_bytes()[end] == b'}' && is_var_name(&after[..end]) => {
                match vars(&after[..end]) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&rest[open..open + end + 2]),
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_var_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The path variables of a recording file, as the cloud consoles name them.
///
/// `{Domain}` `{AppName}` `{StreamName}` (alias `{StreamID}`) `{Sequence}` `{RandomID}` `{ext}`
/// `{EscapedStartTime}` `{EscapedEndTime}` (`2026-11-22-13-05-09`, UTC), and the parts
/// `{StartYear}` `{StartMonth}` `{StartDay}` `{StartHour}` `{StartMinute}` `{StartSecond}`,
/// `{EndYear}` … `{EndSecond}` (zero-padded, UTC), `{StartMillisecond}` `{EndMillisecond}`
/// (3 digits). `{StartTime}`/`{EndTime}` and `{UnixTimestamp}` (the start) are Unix seconds;
/// `{Date}` is the start's `2026-11-22`; `{TaskId}` the record task's id (empty without one).
#[derive(Clone, Copy, Debug)]
pub struct FileVars<'a> {
    pub domain: &'a str,
    pub app: &'a str,
    pub stream: &'a str,
    pub sequence: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub random_id: &'a str,
    /// `flv`, `m3u8`, `mp4` or `aac`.
    pub ext: &'a str,
    /// The record task's id; empty when the rules record the stream.
    pub task_id: &'a str,
}

/// Every variable a name template may use.
pub const NAME_VARIABLES: &[&str] = &[
    "Domain",
    "AppName",
    "StreamName",
    "StreamID",
    "Sequence",
    "RandomID",
    "ext",
    "TaskId",
    "Date",
    "UnixTimestamp",
    "EscapedStartTime",
    "EscapedEndTime",
    "StartTime",
    "EndTime",
    "StartYear",
    "StartMonth",
    "StartDay",
    "StartHour",
    "StartMinute",
    "StartSecond",
    "StartMillisecond",
    "EndYear",
    "EndMonth",
    "EndDay",
    "EndHour",
    "EndMinute",
    "EndSecond",
    "EndMillisecond",
];

/// The `{Name}` variables of `template` that [`FileVars`] does not know, in order.
pub fn unknown_variables(template: &str) -> Vec<String> {
    let unknown = std::cell::RefCell::new(Vec::<String>::new());
    expand(template, |n| {
        let mut u = unknown.borrow_mut();
        if !NAME_VARIABLES.contains(&n) && !u.iter().any(|x| x == n) {
            u.push(n.to_string());
        }
        Some(String::new())
    });
    unknown.into_inner()
}

impl FileVars<'_> {
    /// The value of one variable, or `None` if it is not one of ours.
    pub fn get(&self, name: &str) -> Option<String> {
        let time_part = |ms: u64, part: &str| -> Option<String> {
            let c = civil(ms);
            Some(match part {
                "Year" => format!("{:04}", c.year),
                "Month" => format!("{:02}", c.month),
                "Day" => format!("{:02}", c.day),
                "Hour" => format!("{:02}", c.hour),
                "Minute" => format!("{:02}", c.minute),
                "Second" => format!("{:02}", c.second),
                "Time" => (ms / 1000).to_string(),
                "Millisecond" => format!("{:03}", c.millis),
                _ => return None,
            })
        };
        match name {
            "Domain" => Some(self.domain.to_owned()),
            "AppName" => Some(self.app.to_owned()),
            "StreamName" | "StreamID" => Some(self.stream.to_owned()),
            "Sequence" => Some(self.sequence.to_string()),
            "RandomID" => Some(self.random_id.to_owned()),
            "ext" => Some(self.ext.to_owned()),
            "EscapedStartTime" => Some(escaped_time(self.start_ms)),
            "EscapedEndTime" => Some(escaped_time(self.end_ms)),
            "TaskId" => Some(self.task_id.to_owned()),
            "UnixTimestamp" => Some((self.start_ms / 1000).to_string()),
            "Date" => {
                let c = civil(self.start_ms);
                Some(format!("{:04}-{:02}-{:02}", c.year, c.month, c.day))
            }
            _ => {
                if let Some(part) = name.strip_prefix("Start") {
                    time_part(self.start_ms, part)
                } else if let Some(part) = name.strip_prefix("End") {
                    time_part(self.end_ms, part)
                } else {
                    None
                }
            }
        }
    }
}

/// Makes a publisher-chosen name safe as one path component: characters other than letters,
/// digits and `-_.@` become `_`, and a name that is empty or only dots becomes `_`.
pub fn safe_component(s: &str) -> std::borrow::Cow<'_, str> {
    let ok = |c: char| c.is_alphanumeric() || "-_.@".contains(c);
    if s.is_empty() || s.chars().all(|c| c == '.') {
        return "_".into();
    }
    if s.chars().all(ok) {
        s.into()
    } else {
        s.chars().map(|c| if ok(c) { c } else { '_' }).collect::<String>().into()
    }
}

/// The built-in storage key of a file: [`DEFAULT_NAME_TEMPLATE`], under a `{Domain}/` folder
/// when the stream was published to a host name (so that one app/stream under two domains
/// never shares a folder); a stream published to an IP address, or with no domain, has no
/// such folder. Publisher-chosen names are made safe by [`safe_component`].
pub fn default_name(v: &FileVars<'_>) -> String {
    let (domain, app, stream) = (safe_component(v.domain), safe_component(v.app), safe_component(v.stream));
    let safe = FileVars { domain: &domain, app: &app, stream: &stream, ..*v };
    let key = expand(DEFAULT_NAME_TEMPLATE, |n| safe.get(n));
    if is_host_name(v.domain) {
        format!("{domain}/{key}")
    } else {
        key
    }
}

/// Whether a stream's domain is a host name (not empty, not an IP address).
pub fn is_host_name(domain: &str) -> bool {
    let bare = domain.trim_start_matches('[').trim_end_matches(']');
    !domain.is_empty() && bare.parse::<std::net::IpAddr>().is_err()
}

/// True for a rule pattern that matches anything: empty (Tencent) or `*` (Aliyun).
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.is_empty() || pattern == "*"
}

/// Picks among matching rules: the most specific (exact stream, then exact app, then exact
/// domain, then wildcards), then the higher priority, then the first in configuration order.
/// Items are `(domain, app, name, priority)`; returns the index of the winner.
pub fn most_specific<'a>(candidates: impl IntoIterator<Item = (&'a str, &'a str, &'a str, i32)>) -> Option<usize> {
    let mut best: Option<(usize, (bool, bool, bool, i32))> = None;
    for (i, (domain, app, name, priority)) in candidates.into_iter().enumerate() {
        let rank = (!is_wildcard(name), !is_wildcard(app), !is_wildcard(domain), priority);
        if best.is_none_or(|(_, b)| rank > b) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, _)| i)
}

/// Builds a flat JSON object, in insertion order.
#[derive(Debug)]
pub struct Json(String);

impl Default for Json {
    fn default() -> Self {
        Self::new()
    }
}

impl Json {
    pub fn new() -> Self {
        Json(String::from("{"))
    }
    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        push_json_str(&mut self.0, k);
        self.0.push(':');
    }
    /// A string member.
    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        push_json_str(&mut self.0, v);
        self
    }
    /// A string member, or `null`.
    pub fn opt_str(mut self, k: &str, v: Option<&str>) -> Self {
        self.key(k);
        match v {
            Some(v) => push_json_str(&mut self.0, v),
            None => self.0.push_str("null"),
        }
        self
    }
    /// An integer member.
    pub fn int(mut self, k: &str, v: impl Into<i128>) -> Self {
        self.key(k);
        let _ = write!(self.0, "{}", v.into());
        self
    }
    /// A member whose value is already JSON text.
    pub fn raw(mut self, k: &str, json: &str) -> Self {
        self.key(k);
        self.0.push_str(json);
        self
    }
    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The built-in callback body: `{"event":"record_file","domain":…,"task_id":…}`.
#[allow(clippy::too_many_arguments)]
pub fn default_callback_body(
    v: &FileVars<'_>,
    container: &str,
    key: &str,
    size: u64,
    duration_ms: u64,
    session_id: &str,
    task_id: Option<&str>,
) -> String {
    Json::new()
        .str("event", "record_file")
        .str("domain", v.domain)
        .str("app", v.app)
        .str("stream", v.stream)
        .str("container", container)
        .str("key", key)
        .int("size", size)
        .int("duration_ms", duration_ms)
        .int("start_ms", v.start_ms)
        .int("end_ms", v.end_ms)
        .int("sequence", v.sequence)
        .str("session_id", session_id)
        .opt_str("task_id", task_id)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> FileVars<'static> {
        FileVars {
            domain: "push.example.com",
            app: "live",
            stream: "cam1",
            sequence: 7,
            start_ms: 1_795_352_709_120, // 2026-11-22T13:05:09.120Z
            end_ms: 1_795_354_509_000,   // 2026-11-22T13:35:09Z
            random_id: "r4nd",
            ext: "flv",
            task_id: "t1",
        }
    }

    #[test]
    fn expands_the_default_template() {
        let v = vars();
        assert_eq!(
            expand(DEFAULT_NAME_TEMPLATE, |n| v.get(n)),
            "live/cam1/2026-11-22-13-05-09_2026-11-22-13-35-09.flv"
        );
    }

    #[test]
    fn expands_parts_and_aliases() {
        let v = vars();
        let t = "{Domain}/{StreamID}_{StartYear}{StartMonth}{StartDay}{StartHour}{StartMinute}{StartSecond}_{EndHour}{EndMinute}-{Sequence}-{RandomID}-{StartTime}";
        assert_eq!(expand(t, |n| v.get(n)), "push.example.com/cam1_20261122130509_1335-7-r4nd-1795352709");
    }

    #[test]
    fn expands_the_task_date_and_milliseconds() {
        let v = vars();
        let t = "{Date}/{TaskId}/{UnixTimestamp}.{StartMillisecond}-{EndMillisecond}";
        assert_eq!(expand(t, |n| v.get(n)), "2026-11-22/t1/1795352709.120-000");
        for name in NAME_VARIABLES {
            assert!(v.get(name).is_some(), "{name}");
        }
        assert_eq!(unknown_variables("{AppName}/{Nope}/{Date}/{Nope}/{x"), ["Nope"]);
    }

    #[test]
    fn leaves_unknown_and_malformed_braces() {
        let v = vars();
        assert_eq!(expand("{Nope}/{AppName", |n| v.get(n)), "{Nope}/{AppName");
        assert_eq!(expand("{{AppName}}", |n| v.get(n)), "{live}");
        assert_eq!(expand("{}{ AppName}x{", |n| v.get(n)), "{}{ AppName}x{");
        assert_eq!(expand("ünï{AppName}çødé", |n| v.get(n)), "ünïliveçødé");
    }

    #[test]
    fn default_names_stay_inside_the_root() {
        let v = FileVars { app: "..", stream: "a/../../b", domain: "", ..vars() };
        assert_eq!(default_name(&v), "_/a_.._.._b/2026-11-22-13-05-09_2026-11-22-13-35-09.flv");
        let v = FileVars { app: "", stream: "Kamera 1 ü@x\\y", domain: "10.0.0.7", ..vars() };
        assert_eq!(default_name(&v), "_/Kamera_1_ü@x_y/2026-11-22-13-05-09_2026-11-22-13-35-09.flv");
        let v = FileVars { domain: "../..", ..vars() };
        assert!(default_name(&v).split('/').all(|c| c != ".." && c != "."), "{}", default_name(&v));
    }

    #[test]
    fn default_names_keep_domains_apart() {
        let at = |domain| default_name(&FileVars { domain, ..vars() });
        assert_eq!(at("push.example.com"), "push.example.com/live/cam1/2026-11-22-13-05-09_2026-11-22-13-35-09.flv");
        assert_eq!(at("localhost"), "localhost/live/cam1/2026-11-22-13-05-09_2026-11-22-13-35-09.flv");
        for no_folder in ["", "127.0.0.1", "::1", "[::1]"] {
            assert_eq!(at(no_folder), "live/cam1/2026-11-22-13-05-09_2026-11-22-13-35-09.flv", "{no_folder:?}");
        }
    }

    #[test]
    fn picks_the_most_specific_rule() {
        let c =
            [("*", "*", "*", 9), ("d", "", "", 0), ("d", "live", "", 0), ("", "", "cam1", 0), ("d", "live", "*", 5)];
        assert_eq!(most_specific(c), Some(3));
        assert_eq!(most_specific(c[..3].iter().copied()), Some(2));
        assert_eq!(most_specific([("", "a", "", 1), ("", "a", "", 2), ("", "a", "", 2)]), Some(1));
        assert_eq!(most_specific(std::iter::empty()), None);
    }

    #[test]
    fn writes_json() {
        let j = Json::new().str("a", "q\"\\\n\u{1}").int("n", -3i64).opt_str("t", None).raw("r", "[1]").finish();
        assert_eq!(j, r#"{"a":"q\"\\\n\u0001","n":-3,"t":null,"r":[1]}"#);
    }
}
