//! Media Processing Service conventions: every output path carries a random string, so two
//! tasks recording the same stream never overwrite each other; HLS segments of 5–10 s.
//!
//! ```toml
//! [plugins.mps]
//! path = "plugins/mps.wasm"
//! config = { path = "{AppName}/{StreamName}/{rand}/{StartYear}{StartMonth}{StartDay}-{Sequence}", rand_length = 8 }
//! ```
//!
//! `{rand}` is drawn fresh for every file; `validate` refuses a `path` without `{rand}` or
//! `{RandomID}`. The extension is appended.
//!
//! Callbacks are MPS's live-stream processing notification for a recorded file:
//! `{"NotificationType": "LiveRecordResult", "TaskId", "LiveRecordResultInfo": {"RecordOver",
//! "FileResults": [{"Url", "Size", "Duration", "StartTime", "EndTime", "Container"}]},
//! "SessionId", "SessionContext", "Timestamp", "Sign"}` with `Sign = md5(key + Timestamp)`
//! (config `key`, required for callbacks; `Timestamp` is the expiry, now + `sign_ttl`, 600 s).

use reel_plugin::{Config, Container, Context, FileInfo, Json, Plan, Request, StreamInfo};

pub const PATH: &str = "{AppName}/{StreamName}/{rand}/{StartYear}-{StartMonth}-{StartDay}-{StartHour}-{StartMinute}-{StartSecond}_{Sequence}";
const RAND_LENGTH: i64 = 8;
/// MPS's advice for HLS recordings that play back smoothly.
const HLS_SEGMENT_MS: std::ops::RangeInclusive<u32> = 5_000..=10_000;

struct Mps;

impl reel_plugin::Setup for Mps {
    fn validate(config: Config<'_>) -> Result<(), String> {
        if let Some(path) = config.expect_text("path")? {
            if !path.contains("{rand}") && !path.contains("{RandomID}") {
                return Err(
                    "config key `path` must keep `{rand}`: without it, tasks overwrite each other's files".into()
                );
            }
        }
        match config.get("rand_length") {
            None => Ok(()),
            Some(_) if config.integer("rand_length").is_some_and(|n| (4..=32).contains(&n)) => Ok(()),
            Some(_) => Err("config key `rand_length` must be an integer from 4 to 32".into()),
        }
    }
}

impl reel_plugin::Naming for Mps {
    fn name_file(ctx: &Context, s: &StreamInfo, f: &FileInfo) -> Result<String, String> {
        let config = ctx.config();
        let n = config.integer("rand_length").unwrap_or(RAND_LENGTH).clamp(4, 32) as usize;
        let rand = reel_plugin::random_string(ctx.nonce, n);
        let path = reel_plugin::expand_with(config.text("path").unwrap_or(PATH), s, f, |v| {
            (v == "rand").then(|| rand.clone())
        });
        Ok(format!("{}.{}", path.trim_start_matches('/'), f.container.ext()))
    }
}

impl reel_plugin::Segmentation for Mps {
    fn plan(_: &Context, _: &StreamInfo, c: Container, default: Plan) -> Result<Plan, String> {
        let mut plan = default;
        if c == Container::Hls {
            plan.hls_segment_ms = plan.hls_segment_ms.clamp(*HLS_SEGMENT_MS.start(), *HLS_SEGMENT_MS.end());
        }
        Ok(plan)
    }
}

impl reel_plugin::Callbacks for Mps {
    fn on_file(ctx: &Context, s: &StreamInfo, f: &FileInfo, url: &str) -> Result<Option<Request>, String> {
        let config = ctx.config();
        let key =
            config.text("key").ok_or("config key `key` is not set: MPS notifications are signed with md5(key + Timestamp)")?;
        let ttl = config.integer("sign_ttl").filter(|t| *t > 0).unwrap_or(600) as u64;
        let t = ctx.now_secs() + ttl;
        let sign = reel_plugin::md5_hex(format!("{key}{t}").as_bytes());
        let file_url = format!("{}{}", config.text("url_prefix").unwrap_or(""), f.key);
        let file = Json::new()
            .str("Url", &file_url)
            .int("Size", f.size)
            .int("Duration", f.duration_ms.div_ceil(1000))
            .int("StartTime", f.start_ms / 1000)
            .int("EndTime", f.end_ms / 1000)
            .str("Container", f.container.ext())
            .finish();
        let info = Json::new().raw("RecordOver", "true").raw("FileResults", &format!("[{file}]")).finish();
        let task = f.task_id.as_deref().unwrap_or(&f.session_id);
        let body = Json::new()
            .str("NotificationType", "LiveRecordResult")
            .str("TaskId", task)
            .raw("LiveRecordResultInfo", &info)
            .str("SessionId", &f.session_id)
            .str("SessionContext", &format!("{}/{}", s.app, s.name))
            .int("Timestamp", t)
            .str("Sign", &sign)
            .finish();
        Ok(Some(Request {
            url: url.to_owned(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into_bytes(),
        }))
    }
}

reel_plugin::export!(Mps: naming, segmentation, callbacks, setup);
