//! Test fixture: fails on purpose in every interface, as `mode` says:
//! `loop` (never returns), `trap` (panics), `oom` (allocates without end), `traversal`
//! (answers with a path escaping the storage root, a `file:` URL, an unknown rule, a zero plan),
//! `error` (returns `err`), `ok` (behaves like the defaults). Two more modes probe the sandbox
//! through `naming`: `clock` names files `clock/<seconds since the epoch>` after the WASI wall
//! clock, `env` names them `env/<value of REEL_PLUGIN_PROBE>`. `slow` decides like the
//! defaults after spending `delay_ms` (default 40) of monotonic time on every decision (grant
//! it `clocks`).

use reel_plugin::{Candidate, Config, Container, Context, FileInfo, Plan, Request, StreamInfo};

struct Misbehave;

const MODES: [&str; 10] = ["loop", "trap", "oom", "traversal", "error", "ok", "clock", "env", "slow", "hog"];

/// Fails as configured; `Ok(())` means "answer with `bad`", `ok` mode answers normally.
fn misbehave(ctx: &Context) -> Result<bool, String> {
    match ctx.config().text("mode").unwrap_or("ok") {
        "loop" => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "trap" => panic!("misbehaving on purpose"),
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "hog" => {
            // Holds `mb` MiB, then answers normally.
            let mb = ctx.config().integer("mb").unwrap_or(24).clamp(0, 1024) as usize;
            std::hint::black_box(vec![1u8; mb << 20]);
            Ok(false)
        }
        "slow" => {
            let delay = std::time::Duration::from_millis(ctx.config().integer("delay_ms").unwrap_or(40).max(0) as u64);
            let start = std::time::Instant::now();
            while start.elapsed() < delay {
                std::hint::spin_loop();
            }
            Ok(false)
        }
        "traversal" => Ok(true),
        "error" => Err("misbehaving on purpose".into()),
        _ => Ok(false),
    }
}

impl reel_plugin::Setup for Misbehave {
    fn validate(config: Config<'_>) -> Result<(), String> {
        match config.expect_text("mode")? {
            Some(m) if !MODES.contains(&m) => Err(format!("config key `mode` must be one of {MODES:?}, not {m:?}")),
            _ => Ok(()),
        }
    }
}

impl reel_plugin::Rules for Misbehave {
    fn select(ctx: &Context, s: &StreamInfo, c: &[Candidate]) -> Result<Option<String>, String> {
        Ok(if misbehave(ctx)? { Some("no-such-rule".into()) } else { reel_plugin::builtin::select(s, c) })
    }
}

impl reel_plugin::Segmentation for Misbehave {
    fn plan(ctx: &Context, _: &StreamInfo, _: Container, default: Plan) -> Result<Plan, String> {
        Ok(if misbehave(ctx)? { Plan { interval_ms: 0, hls_segment_ms: 0, resume_window_ms: 0 } } else { default })
    }
}

impl reel_plugin::Naming for Misbehave {
    fn name_file(ctx: &Context, s: &StreamInfo, f: &FileInfo) -> Result<String, String> {
        match ctx.config().text("mode") {
            Some("clock") => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                return Ok(format!("clock/{}", now.as_secs()));
            }
            Some("env") => {
                return Ok(format!("env/{}", std::env::var("REEL_PLUGIN_PROBE").unwrap_or_else(|_| "unset".into())))
            }
            _ => {}
        }
        Ok(if misbehave(ctx)? { "../../etc/passwd".into() } else { reel_plugin::builtin::name_file(s, f) })
    }
}

impl reel_plugin::Callbacks for Misbehave {
    fn on_file(ctx: &Context, s: &StreamInfo, f: &FileInfo, url: &str) -> Result<Option<Request>, String> {
        Ok(Some(if misbehave(ctx)? {
            Request { url: "file:///etc/passwd".into(), headers: vec![], body: vec![] }
        } else {
            reel_plugin::builtin::callback(s, f, url)
        }))
    }
}

reel_plugin::export!(Misbehave: rules, segmentation, naming, callbacks, setup);
