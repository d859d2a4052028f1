//! Tencent Cloud CSS conventions: files named like `VodFileName`, and the CSS recording
//! callback (`event_type` 100) signed with the callback key.
//!
//! ```toml
//! [plugins.tencent]
//! path = "plugins/tencent_css.wasm"
//! config = { key = "callback-key", vod_file_name = "{StreamID}_{StartYear}{StartMonth}{StartDay}", cos_path = "{Domain}/{AppName}", video_url_prefix = "https://bucket.cos.ap-guangzhou.myqcloud.com/" }
//! ```
//!
//! | key                | default                                                  |
//! |--------------------|----------------------------------------------------------|
//! | `vod_file_name`    | `{StreamID}_{StartYear}-…-{StartSecond}_{EndYear}-…-{EndSecond}` |
//! | `cos_path`         | none: files at the root of the storage prefix            |
//! | `key`              | required for callbacks: `sign = md5(key + t)`            |
//! | `video_url_prefix` | none: `video_url` is the storage key                     |
//! | `sign_ttl`         | 600 seconds: `t = now + sign_ttl`                        |

use reel_plugin::{Config, Context, FileInfo, Json, Request, StreamInfo};

/// CSS's default `VodFileName`.
pub const VOD_FILE_NAME: &str = "{StreamID}_{StartYear}-{StartMonth}-{StartDay}-{StartHour}-{StartMinute}-{StartSecond}_{EndYear}-{EndMonth}-{EndDay}-{EndHour}-{EndMinute}-{EndSecond}";

/// CSS's "new recording file" event.
const EVENT_RECORD_FILE: i64 = 100;

struct TencentCss;

impl reel_plugin::Setup for TencentCss {
    fn validate(config: Config<'_>) -> Result<(), String> {
        for key in ["vod_file_name", "cos_path", "key", "video_url_prefix"] {
            config.expect_text(key)?;
        }
        match config.get("sign_ttl") {
            None => Ok(()),
            Some(_) if config.integer("sign_ttl").is_some_and(|t| t > 0) => Ok(()),
            Some(_) => Err("config key `sign_ttl` must be a positive integer (seconds)".into()),
        }
    }
}

impl reel_plugin::Naming for TencentCss {
    fn name_file(ctx: &Context, s: &StreamInfo, f: &FileInfo) -> Result<String, String> {
        let config = ctx.config();
        let name = reel_plugin::expand(config.text("vod_file_name").unwrap_or(VOD_FILE_NAME), s, f);
        let dir = config.text("cos_path").map(|p| reel_plugin::expand(p, s, f)).unwrap_or_default();
        let dir = dir.trim_matches('/');
        let ext = f.container.ext();
        Ok(if dir.is_empty() { format!("{name}.{ext}") } else { format!("{dir}/{name}.{ext}") })
    }
}

impl reel_plugin::Callbacks for TencentCss {
    fn on_file(ctx: &Context, s: &StreamInfo, f: &FileInfo, url: &str) -> Result<Option<Request>, String> {
        let config = ctx.config();
        let key =
            config.text("key").ok_or("config key `key` is not set: CSS callbacks are signed with md5(key + t)")?;
        let ttl = config.integer("sign_ttl").filter(|t| *t > 0).unwrap_or(600) as u64;
        let t = ctx.now_secs() + ttl;
        let sign = reel_plugin::md5_hex(format!("{key}{t}").as_bytes());
        let video_url = format!("{}{}", config.text("video_url_prefix").unwrap_or(""), f.key);
        let stream_param = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let mut body = Json::new()
            .int("event_type", EVENT_RECORD_FILE)
            .str("stream_id", &s.name)
            .str("channel_id", &s.name)
            .str("app", &s.domain)
            .str("appname", &s.app)
            .str("file_format", f.container.as_str())
            .int("file_size", f.size)
            .int("duration", f.duration_ms.div_ceil(1000))
            .int("start_time", f.start_ms / 1000)
            .int("end_time", f.end_ms / 1000)
            .str("video_url", &video_url)
            .str("file_id", &f.random_id)
            .str("stream_param", &stream_param);
        if let Some(task) = &f.task_id {
            body = body.str("task_id", task);
        }
        let body = body.int("t", t).str("sign", &sign).finish();
        Ok(Some(Request {
            url: url.to_owned(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into_bytes(),
        }))
    }
}

reel_plugin::export!(TencentCss: naming, callbacks, setup);
