//! Alibaba Cloud ApsaraVideo Live conventions: `OssObjectPrefix` naming, rule precedence
//! stream > app > domain, and the recording callback signed with `ALI-LIVE-SIGNATURE`.
//!
//! ```toml
//! [plugins.aliyun]
//! path = "plugins/aliyun_oss.wasm"
//! config = { key = "auth-key", object_prefix = "record/{AppName}/{StreamName}/{EscapedStartTime}_{EscapedEndTime}" }
//! ```
//!
//! | key                  | default                                                          |
//! |----------------------|------------------------------------------------------------------|
//! | `object_prefix`      | `record/{AppName}/{StreamName}/{EscapedStartTime}_{EscapedEndTime}` |
//! | `object_prefix_flv`, `_hls`, `_mp4`, `_aac` | `object_prefix`, for that format          |
//! | `key`                | required for callbacks: `ALI-LIVE-SIGNATURE = md5(host\|timestamp\|key)` |
//!
//! The extension (`.flv`, `.m3u8`, `.mp4`, `.aac`) is appended to the expanded prefix.

use reel_plugin::{is_wildcard, Candidate, Config, Context, FileInfo, Json, Request, StreamInfo};

/// ApsaraVideo Live's default storage path.
pub const OBJECT_PREFIX: &str = "record/{AppName}/{StreamName}/{EscapedStartTime}_{EscapedEndTime}";

struct AliyunOss;

impl reel_plugin::Setup for AliyunOss {
    fn validate(config: Config<'_>) -> Result<(), String> {
        for key in
            ["object_prefix", "object_prefix_flv", "object_prefix_hls", "object_prefix_mp4", "object_prefix_aac", "key"]
        {
            config.expect_text(key)?;
        }
        Ok(())
    }
}

impl reel_plugin::Rules for AliyunOss {
    /// Stream-level configuration beats app-level beats domain-level; priorities play no part,
    /// and among equals the first configured wins.
    fn select(_: &Context, _: &StreamInfo, candidates: &[Candidate]) -> Result<Option<String>, String> {
        let level = |c: &Candidate| match (!is_wildcard(&c.name), !is_wildcard(&c.app), !is_wildcard(&c.domain)) {
            (true, _, _) => 3,
            (false, true, _) => 2,
            (false, false, true) => 1,
            _ => 0,
        };
        let mut best: Option<&Candidate> = None;
        for c in candidates {
            if best.is_none_or(|b| level(c) > level(b)) {
                best = Some(c);
            }
        }
        Ok(best.map(|c| c.rule_id.clone()))
    }
}

impl reel_plugin::Naming for AliyunOss {
    fn name_file(ctx: &Context, s: &StreamInfo, f: &FileInfo) -> Result<String, String> {
        let config = ctx.config();
        let prefix = config
            .text(&format!("object_prefix_{}", f.container.as_str()))
            .or(config.text("object_prefix"))
            .unwrap_or(OBJECT_PREFIX);
        let name = reel_plugin::expand(prefix, s, f);
        Ok(format!("{}.{}", name.trim_start_matches('/'), f.container.ext()))
    }
}

impl reel_plugin::Callbacks for AliyunOss {
    fn on_file(ctx: &Context, s: &StreamInfo, f: &FileInfo, url: &str) -> Result<Option<Request>, String> {
        let key = ctx
            .config()
            .text("key")
            .ok_or("config key `key` is not set: callbacks are signed with md5(host|timestamp|key)")?;
        let host = url_host(url).ok_or_else(|| format!("callback URL `{url}` has no host"))?;
        let timestamp = ctx.now_secs();
        let signature = reel_plugin::md5_hex(format!("{host}|{timestamp}|{key}").as_bytes());
        let body = Json::new()
            .str("domain", &s.domain)
            .str("app", &s.app)
            .str("stream", &s.name)
            .str("uri", &f.key)
            .raw("duration", &format!("{}.{:03}", f.duration_ms / 1000, f.duration_ms % 1000))
            .int("start_time", f.start_ms / 1000)
            .int("stop_time", f.end_ms / 1000)
            .finish();
        Ok(Some(Request {
            url: url.to_owned(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("ALI-LIVE-TIMESTAMP".into(), timestamp.to_string()),
                ("ALI-LIVE-SIGNATURE".into(), signature),
            ],
            body: body.into_bytes(),
        }))
    }
}

/// The host of an `http(s)://` URL, without port or user info.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') { host.split_inclusive(']').next()? } else { host.split(':').next()? };
    (!host.is_empty()).then_some(host)
}

reel_plugin::export!(AliyunOss: rules, naming, callbacks, setup);

#[cfg(test)]
mod tests {
    use super::*;
    use reel_plugin::{Container, Naming};

    #[test]
    fn finds_the_callback_host() {
        assert_eq!(url_host("http://callback.example.com:8080/live?a=b"), Some("callback.example.com"));
        assert_eq!(url_host("https://user:pw@example.com/x"), Some("example.com"));
        assert_eq!(url_host("http://[::1]:80/"), Some("[::1]"));
        assert_eq!(url_host("http:///x"), None);
        assert_eq!(url_host("nope"), None);
    }

    #[test]
    fn names_like_oss_object_prefix() {
        let ctx = Context { now_ms: 0, nonce: 0, config: vec![] };
        let s = StreamInfo {
            domain: "d".into(),
            app: "live".into(),
            name: "cam".into(),
            params: vec![],
            video_codec: None,
            audio_codec: None,
            started_at_ms: 0,
        };
        let f = FileInfo {
            container: Container::Mp4,
            sequence: 0,
            start_ms: 0,
            end_ms: 61_000,
            size: 0,
            duration_ms: 0,
            key: String::new(),
            session_id: String::new(),
            task_id: None,
            random_id: String::new(),
        };
        let key = <AliyunOss as Naming>::name_file(&ctx, &s, &f).unwrap();
        assert_eq!(key, "record/live/cam/1970-01-01-00-00-00_1970-01-01-00-01-01.mp4");
    }
}
