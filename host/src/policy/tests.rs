//! Tests that load the plugins in `plugins/`, built for wasm32-wasip2 on first use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use super::*;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// The built example plugins (`plugins/target/wasm32-wasip2/release`).
fn plugins_dir() -> &'static Path {
    reel_test_support::plugins::dir()
}

macro_rules! fixtures {
    () => {
        plugins_dir()
    };
}

fn plugin(dir: &Path, file: &str, config: &str) -> PluginConfig {
    PluginConfig {
        path: dir.join(format!("{file}.wasm")),
        config: toml::from_str(config).unwrap(),
        allow: Grants::default(),
        memory: None,
    }
}

/// A registry of `plugins` (name, file, TOML config) whose default chain is all of them in order.
fn registry(dir: &Path, plugins: &[(&str, &str, &str)]) -> Result<Registry, PolicyError> {
    registry_with(dir, plugins, PolicyConfig::default())
}

fn registry_with(dir: &Path, plugins: &[(&str, &str, &str)], policy: PolicyConfig) -> Result<Registry, PolicyError> {
    let configs: BTreeMap<_, _> = plugins.iter().map(|(n, f, c)| (n.to_string(), plugin(dir, f, c))).collect();
    let policy = PolicyConfig { plugins: plugins.iter().map(|(n, _, _)| n.to_string()).collect(), ..policy };
    Registry::without_cache(&configs, &policy)
}

fn stream() -> StreamInfo {
    StreamInfo {
        domain: "push.example.com".into(),
        app: "live".into(),
        name: "cam1".into(),
        params: vec![("txSecret".into(), "abc".into()), ("txTime".into(), "5F0".into())],
        video_codec: Some("h264".into()),
        audio_codec: Some("aac".into()),
        started_at_ms: 1_795_352_700_000,
    }
}

fn file(container: Format) -> FileInfo {
    FileInfo {
        container,
        sequence: 3,
        start_ms: 1_795_352_709_120, // 2026-11-22T13:05:09.120Z
        end_ms: 1_795_354_509_000,   // 2026-11-22T13:35:09Z
        size: 10_485_760,
        duration_ms: 1_799_880,
        key: "live/cam1/a.flv".into(),
        session_id: "s-1".into(),
        task_id: Some("task-9".into()),
        random_id: "9f2c4e1a7b3d5c60".into(),
    }
}

fn candidates() -> Vec<Candidate> {
    let c = |id: &str, d: &str, a: &str, n: &str, p: i32| Candidate {
        rule_id: id.into(),
        domain: d.into(),
        app: a.into(),
        name: n.into(),
        template: format!("t-{id}"),
        priority: p,
    };
    vec![
        c("domain", "push.example.com", "*", "*", 9),
        c("app", "", "live", "", 0),
        c("stream", "*", "*", "cam1", 0),
        c("app-hi", "", "live", "", 5),
    ]
}

fn plan() -> Plan {
    Plan { interval_ms: 1_800_000, hls_segment_ms: 2_000, resume_window_ms: 180_000 }
}

fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn header<'a>(r: &'a CallbackRequest, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// A metrics recorder for one thread (`metrics::with_local_recorder`).

#[derive(Default)]
struct Counters(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

fn render(key: &Key) -> String {
    let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Counters {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let key = format!("{name}{{{}}}", labels.join(","));
        self.0.lock().unwrap().get(&key).map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let c = self.0.lock().unwrap().entry(render(key)).or_default().clone();
        Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("reel-policy-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// Checks and tools

#[test]
fn check_describes_every_shipped_plugin() {
    let dir = fixtures!();
    for (file, exports) in [
        ("tencent_css", "naming, callbacks, setup"),
        ("aliyun_oss", "rules, naming, callbacks, setup"),
        ("mps", "segmentation, naming, callbacks, setup"),
        ("misbehave", "rules, segmentation, naming, callbacks, setup"),
        ("defaults", "rules, segmentation, naming, callbacks, setup"),
    ] {
        let out = cli::check(&dir.join(format!("{file}.wasm")), None).unwrap();
        assert!(out.contains("reel:policy@0.1.0, supported"), "{out}");
        assert!(out.contains(&format!("exports: {exports}\n")), "{file}: {out}");
        assert!(!out.contains("wasi:filesystem"), "{out}");
    }
}

#[test]
fn a_plugin_importing_the_filesystem_and_sockets_loads_and_can_reach_nothing() {
    let dir = fixtures!();
    let out = cli::check(&dir.join("wants_files.wasm"), None).unwrap();
    assert!(out.contains("wasi:filesystem/preopens@") && out.contains("wasi:sockets/"), "{out}");
    let r = registry(dir, &[("spy", "wants_files", "")]).unwrap();
    let (s, f) = (stream(), file(Format::Flv));
    // Reading /etc/passwd, listing /, resolving a name and connecting all fail: the built-in
    // decision stands, and the failure is counted.
    let counters = Counters::default();
    let key = metrics::with_local_recorder(&counters, || r.policy(None).name_file(&s, &f));
    assert_eq!(key, Builtin.name_file(&s, &f));
    let labels = [("plugin", "spy"), ("interface", "naming"), ("reason", "error")];
    assert_eq!(counters.get("reel_plugin_failures_total", &labels), 1);
}

#[test]
fn a_plugin_gets_its_own_memory_cap() {
    let dir = fixtures!();
    // Both hold 24 MiB: over `[policy] memory` (16 MiB), within the big one's own 48 MiB.
    let mut configs = BTreeMap::new();
    for (name, memory) in [("small", None), ("big", Some(48u64 << 20))] {
        let mut p = plugin(dir, "misbehave", "mode = \"hog\"\nmb = 24");
        p.memory = memory;
        configs.insert(name.to_string(), p);
    }
    let r = Registry::without_cache(&configs, &PolicyConfig::default()).unwrap();
    let (s, f) = (stream(), file(Format::Flv));
    let counters = Counters::default();
    metrics::with_local_recorder(&counters, || {
        for name in ["small", "big"] {
            r.policy(Some(&[name.to_string()])).name_file(&s, &f);
        }
    });
    let failed =
        |p| counters.get("reel_plugin_failures_total", &[("plugin", p), ("interface", "naming"), ("reason", "memory")]);
    assert_eq!((failed("small"), failed("big")), (1, 0));
    assert_eq!(counters.get("reel_plugin_decisions_total", &[("plugin", "big"), ("interface", "naming")]), 1);
}

#[test]
fn check_refuses_an_unknown_wit_version() {
    let dir = fixtures!();
    let err = cli::check(&dir.join("future_version.wasm"), None).unwrap_err().to_string();
    assert!(err.ends_with("exports WIT version 0.2.0, host supports 0.1.0"), "{err}");
}

#[test]
fn check_refuses_what_is_not_a_component() {
    let dir = scratch_dir("notcomponent");
    let core = dir.join("core.wasm");
    // The smallest core module: magic and version 1.
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = cli::check(&core, None).unwrap_err().to_string();
    assert!(err.contains("not a component but a core WebAssembly module"), "{err}");
    let text = dir.join("text.wasm");
    std::fs::write(&text, b"(module)").unwrap();
    assert!(cli::check(&text, None).unwrap_err().to_string().ends_with("not a WebAssembly file"));
    let missing = cli::check(&dir.join("missing.wasm"), None).unwrap_err().to_string();
    assert!(missing.contains("cannot read it"), "{missing}");
}

#[test]
fn run_makes_one_decision_as_json() {
    let dir = fixtures!();
    let input = serde_json::json!({
        "now_ms": 1_795_352_709_120u64,
        "stream": stream(),
        "file": file(Format::Flv),
        "callback_url": "https://cb.example.com/css",
    })
    .to_string();
    let tencent = dir.join("tencent_css.wasm");
    let config: toml::Table = toml::from_str(r#"key = "k""#).unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&cli::run(&tencent, "naming", &input, config.clone(), None).unwrap()).unwrap();
    assert_eq!(out["key"], "cam1_2026-11-22-13-05-09_2026-11-22-13-35-09.flv");
    let out: serde_json::Value =
        serde_json::from_str(&cli::run(&tencent, "callbacks", &input, config, None).unwrap()).unwrap();
    let body: serde_json::Value = serde_json::from_str(out["request"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["t"], 1_795_352_709 + 600);
    assert_eq!(out["request"]["url"], "https://cb.example.com/css");

    let err = cli::run(&tencent, "rules", &input, toml::Table::new(), None).unwrap_err().to_string();
    assert!(err.contains("does not export `rules`"), "{err}");
    let err = cli::run(&tencent, "nope", &input, toml::Table::new(), None).unwrap_err().to_string();
    assert!(err.contains("unknown interface"), "{err}");
    let err = cli::run(&tencent, "naming", "{\"stream\": 1}", toml::Table::new(), None).unwrap_err().to_string();
    assert!(err.contains("invalid input JSON"), "{err}");

    let gate = dir.join("token_gate.wasm");
    let config: toml::Table = toml::from_str(r#"token = "abc""#).unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&cli::run(&gate, "admission", &input, config.clone(), None).unwrap()).unwrap();
    assert_eq!(
        (out["admit"].as_bool(), out["reason"].as_str()),
        (Some(false), Some("add `?token=…` to the stream name"))
    );
    let with_token =
        serde_json::json!({ "stream": StreamInfo { params: vec![("token".into(), "abc".into())], ..stream() } });
    let out: serde_json::Value =
        serde_json::from_str(&cli::run(&gate, "admission", &with_token.to_string(), config, None).unwrap()).unwrap();
    assert_eq!(out, serde_json::json!({ "interface": "admission", "admit": true }));

    let misbehave = dir.join("misbehave.wasm");
    let trap: toml::Table = toml::from_str(r#"mode = "trap""#).unwrap();
    let err = cli::run(&misbehave, "naming", &input, trap, None).unwrap_err().to_string();
    assert!(err.starts_with("plugin \"misbehave\" naming: trap: "), "{err}");
    let traversal: toml::Table = toml::from_str(r#"mode = "traversal""#).unwrap();
    let err = cli::run(&misbehave, "naming", &input, traversal, None).unwrap_err().to_string();
    assert!(err.contains("invalid") && err.contains("\"..\" component"), "{err}");
    let bad: toml::Table = toml::from_str(r#"mode = "sideways""#).unwrap();
    let err = cli::run(&misbehave, "setup", "", bad, None).unwrap_err().to_string();
    assert!(err.contains("rejects its configuration: config key `mode` must be one of"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The shipped plugins

#[test]
fn sdk_defaults_decide_exactly_as_the_builtin() {
    let dir = fixtures!();
    let r = registry(dir, &[("defaults", "defaults", "")]).unwrap();
    let p = r.policy(None);
    let odd = StreamInfo { app: "..".into(), name: "a/b\\c\u{1}\"d".into(), domain: "".into(), ..stream() };
    for s in [stream(), odd] {
        assert_eq!(p.select_rule(&s, &candidates()), Builtin.select_rule(&s, &candidates()));
        assert_eq!(p.select_rule(&s, &[]), None);
        assert_eq!(p.plan(&s, Format::Hls, plan()), plan());
        for c in [Format::Flv, Format::Hls, Format::Mp4, Format::Aac] {
            let mut f = file(c);
            f.task_id = None;
            assert_eq!(p.name_file(&s, &f), Builtin.name_file(&s, &f));
            assert_eq!(p.on_file(&s, &f, "http://cb/"), Builtin.on_file(&s, &f, "http://cb/"));
        }
    }
    assert_eq!(Builtin.select_rule(&stream(), &candidates()).as_deref(), Some("stream"));
    // Under its domain's folder (a host name); without one for an IP address.
    assert_eq!(
        Builtin.name_file(&stream(), &file(Format::Hls)),
        "push.example.com/live/cam1/2026-11-22-13-05-09_2026-11-22-13-35-09.m3u8"
    );
    let by_ip = StreamInfo { domain: "192.0.2.7".into(), ..stream() };
    assert_eq!(Builtin.name_file(&by_ip, &file(Format::Hls)), "live/cam1/2026-11-22-13-05-09_2026-11-22-13-35-09.m3u8");
}

#[test]
fn tencent_css_names_files_like_vod_file_name() {
    let dir = fixtures!();
    let r = registry(dir, &[("tencent", "tencent_css", r#"key = "k""#)]).unwrap();
    let p = r.policy(None);
    assert_eq!(p.name_file(&stream(), &file(Format::Flv)), "cam1_2026-11-22-13-05-09_2026-11-22-13-35-09.flv");
    assert_eq!(p.name_file(&stream(), &file(Format::Hls)), "cam1_2026-11-22-13-05-09_2026-11-22-13-35-09.m3u8");

    let custom = r#"
key = "k"
vod_file_name = "{StreamID}-{StartYear}{StartMonth}{StartDay}-{Sequence}-{RandomID}"
cos_path = "/{Domain}/{AppName}/"
"#;
    let r = registry(dir, &[("tencent", "tencent_css", custom)]).unwrap();
    assert_eq!(
        r.policy(None).name_file(&stream(), &file(Format::Mp4)),
        "push.example.com/live/cam1-20261122-3-9f2c4e1a7b3d5c60.mp4"
    );
}

#[test]
fn tencent_css_callback_is_signed_with_the_key() {
    let dir = fixtures!();
    let config = r#"
key = "s3cret"
video_url_prefix = "https://bucket.cos.ap-guangzhou.myqcloud.com/"
"#;
    let r = registry(dir, &[("tencent", "tencent_css", config)]).unwrap();
    let before = crate::media::time::now_ms() / 1000;
    let req = r.policy(None).on_file(&stream(), &file(Format::Flv), "https://cb.example.com/css?x=1").unwrap();
    let after = crate::media::time::now_ms() / 1000;
    assert_eq!(req.url, "https://cb.example.com/css?x=1");
    assert_eq!(header(&req, "content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    let t = body["t"].as_u64().unwrap();
    assert!((before + 600..=after + 600).contains(&t), "t = now + 600 s: {t}");
    assert_eq!(body["sign"], md5_hex(format!("s3cret{t}").as_bytes()));
    assert_eq!(body["event_type"], 100);
    assert_eq!(body["stream_id"], "cam1");
    assert_eq!(body["channel_id"], "cam1");
    assert_eq!(body["app"], "push.example.com");
    assert_eq!(body["appname"], "live");
    assert_eq!(body["file_format"], "flv");
    assert_eq!(body["file_size"], 10_485_760);
    assert_eq!(body["duration"], 1800);
    assert_eq!(body["start_time"], 1_795_352_709);
    assert_eq!(body["end_time"], 1_795_354_509);
    assert_eq!(body["video_url"], "https://bucket.cos.ap-guangzhou.myqcloud.com/live/cam1/a.flv");
    assert_eq!(body["stream_param"], "txSecret=abc&txTime=5F0");
    assert_eq!(body["task_id"], "task-9");
}

#[test]
fn tencent_css_without_a_key_falls_back_to_the_builtin_callback() {
    let dir = fixtures!();
    let counters = Counters::default();
    let r = registry(dir, &[("tencent", "tencent_css", "")]).unwrap();
    let req =
        metrics::with_local_recorder(&counters, || r.policy(None).on_file(&stream(), &file(Format::Flv), "http://cb/"));
    assert_eq!(req, Builtin.on_file(&stream(), &file(Format::Flv), "http://cb/"));
    let labels = [("plugin", "tencent"), ("interface", "callbacks"), ("reason", "error")];
    assert_eq!(counters.get("reel_plugin_failures_total", &labels), 1);
}

#[test]
fn aliyun_oss_names_ranks_and_signs() {
    let dir = fixtures!();
    let r = registry(dir, &[("aliyun", "aliyun_oss", r#"key = "alilive""#)]).unwrap();
    let p = r.policy(None);
    assert_eq!(
        p.name_file(&stream(), &file(Format::Flv)),
        "record/live/cam1/2026-11-22-13-05-09_2026-11-22-13-35-09.flv"
    );
    assert_eq!(
        p.name_file(&stream(), &file(Format::Hls)),
        "record/live/cam1/2026-11-22-13-05-09_2026-11-22-13-35-09.m3u8"
    );

    // Stream > app > domain; priorities play no part, the first configured wins among equals.
    let c = candidates();
    assert_eq!(p.select_rule(&stream(), &c).as_deref(), Some("stream"));
    assert_eq!(p.select_rule(&stream(), &c[..2]).as_deref(), Some("app"));
    assert_eq!(Builtin.select_rule(&stream(), &[c[1].clone(), c[3].clone()]).as_deref(), Some("app-hi"));
    assert_eq!(p.select_rule(&stream(), &[c[1].clone(), c[3].clone()]).as_deref(), Some("app"));
    assert_eq!(p.select_rule(&stream(), &c[..1]).as_deref(), Some("domain"));

    let before = crate::media::time::now_ms() / 1000;
    let req = p.on_file(&stream(), &file(Format::Flv), "http://callback.example.com:8080/live/record?a=b").unwrap();
    let after = crate::media::time::now_ms() / 1000;
    let ts: u64 = header(&req, "ALI-LIVE-TIMESTAMP").unwrap().parse().unwrap();
    assert!((before..=after).contains(&ts));
    assert_eq!(
        header(&req, "ALI-LIVE-SIGNATURE").unwrap(),
        md5_hex(format!("callback.example.com|{ts}|alilive").as_bytes())
    );
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "domain": "push.example.com", "app": "live", "stream": "cam1", "uri": "live/cam1/a.flv",
            "duration": 1799.88, "start_time": 1_795_352_709u64, "stop_time": 1_795_354_509u64,
        })
    );

    let per_format = r#"
key = "k"
object_prefix = "rec/{AppName}/{StreamName}/{EscapedStartTime}"
object_prefix_hls = "hls/{AppName}/{StreamName}/{Sequence}"
"#;
    let r = registry(dir, &[("aliyun", "aliyun_oss", per_format)]).unwrap();
    assert_eq!(r.policy(None).name_file(&stream(), &file(Format::Mp4)), "rec/live/cam1/2026-11-22-13-05-09.mp4");
    assert_eq!(r.policy(None).name_file(&stream(), &file(Format::Hls)), "hls/live/cam1/3.m3u8");
}

#[test]
fn mps_names_carry_a_fresh_random_part() {
    let dir = fixtures!();
    let r = registry(dir, &[("mps", "mps", "")]).unwrap();
    let p = r.policy(None);
    let (s, f) = (stream(), file(Format::Mp4));
    let a = p.name_file(&s, &f);
    let b = p.name_file(&s, &f);
    assert_ne!(a, b, "two calls with the same input differ");
    for key in [&a, &b] {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 4, "{key}");
        assert_eq!(&parts[..2], ["live", "cam1"]);
        assert_eq!(parts[2].len(), 8);
        assert!(parts[2].bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{key}");
        assert_eq!(parts[3], "2026-11-22-13-05-09_3.mp4");
    }
    assert_eq!(p.plan(&s, Format::Hls, plan()).hls_segment_ms, 5_000);
    assert_eq!(p.plan(&s, Format::Flv, plan()), plan());

    let r = registry(dir, &[("mps", "mps", "path = \"out/{rand}/{StreamName}\"\nrand_length = 12")]).unwrap();
    let key = r.policy(None).name_file(&s, &f);
    assert!(key.starts_with("out/") && key.ends_with("/cam1.mp4") && key.len() == "out//cam1.mp4".len() + 12, "{key}");

    let err = registry(dir, &[("mps", "mps", r#"path = "out/{StreamName}""#)]).unwrap_err().to_string();
    assert!(err.contains("rejects its configuration: config key `path` must keep `{rand}`"), "{err}");
}

#[test]
fn the_first_plugin_exporting_a_decision_makes_it() {
    let dir = fixtures!();
    let r = registry(
        dir,
        &[
            ("mps", "mps", r#"key = "k""#),
            ("tencent", "tencent_css", r#"key = "k""#),
            ("aliyun", "aliyun_oss", r#"key = "k""#),
        ],
    )
    .unwrap();
    let (s, f) = (stream(), file(Format::Flv));
    // Default chain: mps names and calls back, aliyun picks rules.
    let p = r.policy(None);
    assert!(p.name_file(&s, &f).starts_with("live/cam1/"));
    assert!(String::from_utf8(p.on_file(&s, &f, "http://cb/").unwrap().body).unwrap().contains("\"LiveRecordResult\""));
    assert_eq!(p.select_rule(&s, &[candidates()[1].clone(), candidates()[3].clone()]).as_deref(), Some("app"));
    // tencent first: it calls back.
    let p = r.policy(Some(&["tencent".to_string(), "mps".to_string()]));
    assert!(String::from_utf8(p.on_file(&s, &f, "http://cb/").unwrap().body).unwrap().contains("\"event_type\":100"));
    // A template's own list.
    let p = r.policy(Some(&["aliyun".to_string(), "tencent".to_string()]));
    assert!(p.name_file(&s, &f).starts_with("record/live/cam1/"));
    assert!(header(&p.on_file(&s, &f, "http://cb/").unwrap(), "ALI-LIVE-SIGNATURE").is_some());
    // No plugins at all: the builtin.
    let p = r.policy(Some(&[]));
    assert_eq!(p.name_file(&s, &f), Builtin.name_file(&s, &f));
    assert!(r.check_names(&["tencent".into()]).is_ok());
    assert!(matches!(r.check_names(&["nope".into()]), Err(PolicyError::UnknownPlugin(n)) if n == "nope"));
}

// ---------------------------------------------------------------------------------------------
// Failures fall back to the builtin

/// Runs every decision against `misbehave` in `mode` and checks each fell back to the builtin
/// and was counted with `reason`.
fn misbehaves(mode: &str, reason: &str) {
    let dir = fixtures!();
    // Tests run in parallel on few cores: give modes other than `loop` room, so that a slow
    // machine does not turn their failure into a timeout.
    let deadline = if mode == "loop" { Duration::from_millis(50) } else { Duration::from_secs(5) };
    let limits = PolicyConfig { deadline, ..Default::default() };
    let r = registry_with(dir, &[("misbehave", "misbehave", &format!("mode = {mode:?}"))], limits).unwrap();
    let p = r.policy(None);
    let (s, f, c) = (stream(), file(Format::Flv), candidates());
    let counters = Counters::default();
    metrics::with_local_recorder(&counters, || {
        assert_eq!(p.select_rule(&s, &c), Builtin.select_rule(&s, &c));
        assert_eq!(p.plan(&s, Format::Hls, plan()), plan());
        assert_eq!(p.name_file(&s, &f), Builtin.name_file(&s, &f));
        assert_eq!(p.on_file(&s, &f, "http://cb/"), Builtin.on_file(&s, &f, "http://cb/"));
    });
    for interface in ["rules", "segmentation", "naming", "callbacks"] {
        let labels = [("plugin", "misbehave"), ("interface", interface), ("reason", reason)];
        assert_eq!(
            counters.get("reel_plugin_failures_total", &labels),
            1,
            "{mode}: {interface}: {:?}",
            counters.0.lock().unwrap().keys()
        );
        assert_eq!(
            counters.get("reel_plugin_decisions_total", &[("plugin", "misbehave"), ("interface", interface)]),
            0
        );
    }
}

#[test]
fn a_trap_falls_back_to_the_builtin() {
    misbehaves("trap", "trap");
}

#[test]
fn running_out_of_memory_falls_back_to_the_builtin() {
    misbehaves("oom", "memory");
}

#[test]
fn an_endless_loop_falls_back_to_the_builtin() {
    misbehaves("loop", "timeout");
}

#[test]
fn an_escaping_path_or_bad_url_falls_back_to_the_builtin() {
    misbehaves("traversal", "invalid");
}

#[test]
fn a_guest_error_falls_back_to_the_builtin() {
    misbehaves("error", "error");
}

#[test]
fn well_behaved_answers_are_counted_as_decisions() {
    let dir = fixtures!();
    let r = registry(dir, &[("misbehave", "misbehave", r#"mode = "ok""#)]).unwrap();
    let counters = Counters::default();
    metrics::with_local_recorder(&counters, || r.policy(None).name_file(&stream(), &file(Format::Flv)));
    assert_eq!(counters.get("reel_plugin_decisions_total", &[("plugin", "misbehave"), ("interface", "naming")]), 1);
}

#[test]
fn the_deadline_cuts_a_loop_within_100ms() {
    let dir = fixtures!();
    let r = registry(dir, &[("misbehave", "misbehave", r#"mode = "loop""#)]).unwrap();
    let p = r.policy(None);
    let (s, f) = (stream(), file(Format::Flv));
    let started = Instant::now();
    assert_eq!(p.name_file(&s, &f), Builtin.name_file(&s, &f));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(30) && took < Duration::from_millis(100), "took {took:?}");
}

#[test]
fn a_tighter_deadline_and_memory_cap_apply() {
    let dir = fixtures!();
    let configs = BTreeMap::from([("m".to_string(), plugin(dir, "misbehave", r#"mode = "loop""#))]);
    let policy: PolicyConfig = toml::from_str("plugins = [\"m\"]\ndeadline = \"200ms\"\nmemory = \"4MiB\"").unwrap();
    assert_eq!((policy.deadline, policy.memory), (Duration::from_millis(200), 4 << 20));
    let r = Registry::without_cache(&configs, &policy).unwrap();
    let started = Instant::now();
    r.policy(None).name_file(&stream(), &file(Format::Flv));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(180) && took < Duration::from_secs(1), "took {took:?}");

    // Limits out of bounds are configuration errors.
    let bad =
        PolicyConfig { memory: 64 << 10, deadline: Duration::from_secs(60), plugins: vec!["m".into(), "m".into()] };
    let err = Registry::without_cache(&configs, &bad).unwrap_err().to_string();
    assert_eq!(
        err,
        "policy.memory: 65536 bytes is outside 2 MiB to 1024 MiB\n\
         policy.deadline: 60s is outside 1ms to 10s\n\
         policy.plugins: \"m\" is listed twice"
    );
}

#[test]
fn a_plugin_that_rejects_its_config_is_refused_at_load() {
    let dir = fixtures!();
    let err = registry(dir, &[("misbehave", "misbehave", r#"mode = "sideways""#)]).unwrap_err().to_string();
    assert!(err.starts_with("plugin \"misbehave\" at "), "{err}");
    assert!(err.contains("rejects its configuration: config key `mode` must be one of"), "{err}");
    let err = registry(dir, &[("t", "tencent_css", "key = 5")]).unwrap_err().to_string();
    assert!(err.contains("config key `key` must be a string"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Loading and configuration

#[test]
fn compiled_plugins_are_cached_by_content_hash() {
    let dir = fixtures!();
    let data = scratch_dir("cache");
    let configs = BTreeMap::from([
        ("a".to_string(), plugin(dir, "tencent_css", "")),
        ("b".to_string(), plugin(dir, "tencent_css", r#"key = "other""#)),
        ("c".to_string(), plugin(dir, "mps", "")),
    ]);
    let policy = PolicyConfig::default();
    let cached = || {
        let mut files: Vec<_> =
            std::fs::read_dir(data.join("plugin-cache")).unwrap().map(|e| e.unwrap().file_name()).collect();
        files.sort();
        files
    };
    let first = Registry::new(&configs, &policy, &data).unwrap();
    let files = cached();
    assert_eq!(files.len(), 2, "one per distinct component: {files:?}");
    assert!(files.iter().all(|f| f.to_string_lossy().ends_with(".cwasm") && f.len() == 64 + 6));
    drop(first);
    // Loaded again from the cache, and it still decides.
    let again = Registry::new(&configs, &policy, &data).unwrap();
    assert_eq!(cached(), files);
    assert!(again.policy(Some(&["c".into()])).name_file(&stream(), &file(Format::Flv)).starts_with("live/cam1/"));
    // A damaged cache entry is recompiled.
    for f in &files {
        std::fs::write(data.join("plugin-cache").join(f), b"garbage").unwrap();
    }
    let repaired = Registry::new(&configs, &policy, &data).unwrap();
    assert!(repaired.exports("a").unwrap().contains(&Interface::Naming));
    assert!(std::fs::metadata(data.join("plugin-cache").join(&files[0])).unwrap().len() > 1000);
    // Entries no plugin uses any more are removed.
    std::fs::write(data.join("plugin-cache").join("0123.cwasm"), b"old").unwrap();
    std::fs::write(data.join("plugin-cache").join("0123.cwasm.1f.part"), b"interrupted").unwrap();
    std::fs::write(data.join("plugin-cache").join("README"), b"not ours").unwrap();
    let only_mps = BTreeMap::from([("c".to_string(), plugin(dir, "mps", ""))]);
    drop(Registry::new(&only_mps, &policy, &data).unwrap());
    let mut left = cached();
    left.retain(|f| f != "README");
    assert_eq!(left.len(), 1, "{left:?}");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn registry_errors_name_the_plugin_and_the_problem() {
    let dir = fixtures!();
    let configs = BTreeMap::from([("x".to_string(), plugin(dir, "future_version", ""))]);
    let err = Registry::without_cache(&configs, &PolicyConfig::default()).unwrap_err().to_string();
    assert!(
        err.starts_with("plugin \"x\" at ") && err.contains("future_version.wasm: exports WIT version 0.2.0"),
        "{err}"
    );
    let policy = PolicyConfig { plugins: vec!["y".into()], ..Default::default() };
    let err = Registry::without_cache(&BTreeMap::new(), &policy).unwrap_err().to_string();
    assert_eq!(err, "plugin \"y\" is not configured: add a [plugins.y] section with its path");
}

#[test]
fn config_types_parse_with_defaults_and_refuse_unknown_keys() {
    let p: PolicyConfig = toml::from_str("").unwrap();
    assert_eq!(p, PolicyConfig { plugins: vec![], deadline: Duration::from_millis(50), memory: 16 << 20 });
    let p: PolicyConfig = toml::from_str("plugins = [\"a\"]\ndeadline = \"1s\"\nmemory = 1048576").unwrap();
    assert_eq!((p.deadline, p.memory), (Duration::from_secs(1), 1 << 20));
    assert!(toml::from_str::<PolicyConfig>("deadline = \"soon\"")
        .unwrap_err()
        .to_string()
        .contains("invalid duration"));
    assert!(toml::from_str::<PolicyConfig>("memory = \"lots\"").unwrap_err().to_string().contains("invalid size"));
    assert!(toml::from_str::<PolicyConfig>("plugin = []").is_err());

    let c: PluginConfig = toml::from_str(
        r#"
path = "plugins/x.wasm"
config = { key = "k", n = 3, f = 1.5, on = true, list = [1, 2], table = { a = "b" } }
allow = { clocks = true, env = ["TZ"] }
"#,
    )
    .unwrap();
    assert_eq!(c.allow, Grants { clocks: true, stderr: false, env: vec!["TZ".into()] });
    let values = config_values(&c.config);
    let get = |k: &str| values.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("key"), ConfigValue::Text("k".into()));
    assert_eq!(get("n"), ConfigValue::Integer(3));
    assert_eq!(get("f"), ConfigValue::Float(1.5));
    assert_eq!(get("on"), ConfigValue::Boolean(true));
    assert_eq!(get("list"), ConfigValue::Json("[1,2]".into()));
    assert_eq!(get("table"), ConfigValue::Json(r#"{"a":"b"}"#.into()));
    assert!(toml::from_str::<PluginConfig>("path = \"x\"\nallow = { filesystem = true }").is_err());
    assert_eq!(parse_bytes("16MiB"), Some(16 << 20));
    assert_eq!(parse_bytes("512 KiB"), Some(512 << 10));
    assert_eq!(parse_bytes("2GB"), Some(2_000_000_000));
    assert_eq!(parse_bytes("MiB"), None);
}

#[test]
fn keys_must_stay_inside_the_storage_root() {
    for ok in ["a", "live/cam1/x.flv", "a/b.c/..d/e..", "ünï/çødé"] {
        assert_eq!(check_key(ok), Ok(()), "{ok}");
    }
    let long = "a".repeat(MAX_KEY_LEN + 1);
    for bad in ["", "/abs", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\0b", "a\nb", long.as_str()] {
        assert!(check_key(bad).is_err(), "{bad:?}");
    }
    assert!(check_key(&"a".repeat(MAX_KEY_LEN)).is_ok());
}

#[test]
fn callback_requests_must_be_http() {
    let r = |url: &str, headers: Vec<(&str, &str)>| CallbackRequest {
        url: url.into(),
        headers: headers.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        body: vec![],
    };
    assert!(check_request(&r("https://x.example/cb", vec![("X-A", "1")])).is_ok());
    assert!(check_request(&r("http://127.0.0.1:8080/", vec![])).is_ok());
    for bad in ["file:///etc/passwd", "ftp://x/", "http://", "https:///x", "http://a b/", "gopher://x"] {
        assert!(check_request(&r(bad, vec![])).is_err(), "{bad}");
    }
    assert!(check_request(&r("http://x/", vec![("Bad Name", "v")])).is_err());
    assert!(check_request(&r("http://x/", vec![("X", "v\r\nInjected: 1")])).is_err());
    let big = CallbackRequest { body: vec![b' '; MAX_CALLBACK_BODY + 1], ..r("http://x/", vec![]) };
    assert!(check_request(&big).unwrap_err().contains("callback body is"));
    let many = r("http://x/", vec![("X", "1"); MAX_CALLBACK_HEADERS + 1]);
    assert!(check_request(&many).is_err());
}

#[test]
fn expand_is_exposed_with_cloud_variables() {
    let (s, f) = (stream(), file(Format::Aac));
    let vars = FileVars::of(&s, &f);
    assert_eq!(
        expand(
            "{Domain}/{AppName}/{StreamID}/{EndYear}{EndMonth}{EndDay}-{EndHour}{EndMinute}{EndSecond}.{ext}?{Unknown}",
            |n| vars.get(n)
        ),
        "push.example.com/live/cam1/20261122-133509.aac?{Unknown}"
    );
    assert_eq!(crate::media::time::escaped_time(f.start_ms), vars.get("EscapedStartTime").unwrap());
}

#[test]
fn plugins_get_no_clock_or_environment_unless_granted() {
    let dir = fixtures!();
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var("REEL_PLUGIN_PROBE", "visible") };
    let (s, f) = (stream(), file(Format::Flv));
    let name = |mode: &str, allow: Grants| {
        let mut cfg = plugin(dir, "misbehave", &format!("mode = {mode:?}"));
        cfg.allow = allow;
        let configs = BTreeMap::from([("m".to_string(), cfg)]);
        let policy = PolicyConfig { plugins: vec!["m".into()], ..Default::default() };
        Registry::without_cache(&configs, &policy).unwrap().policy(None).name_file(&s, &f)
    };
    assert_eq!(name("clock", Grants::default()), "clock/0");
    assert_eq!(name("env", Grants::default()), "env/unset");
    let now = crate::media::time::now_ms() / 1000;
    let granted: u64 = name("clock", Grants { clocks: true, ..Default::default() })[6..].parse().unwrap();
    assert!((now..now + 5).contains(&granted));
    assert_eq!(name("env", Grants { env: vec!["REEL_PLUGIN_PROBE".into()], ..Default::default() }), "env/visible");
}

#[test]
fn decisions_can_be_made_from_many_threads() {
    let dir = fixtures!();
    let r = registry(dir, &[("mps", "mps", "")]).unwrap();
    let p = r.policy(None);
    let keys: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                scope.spawn(move || (0..25).map(|_| p.name_file(&stream(), &file(Format::Flv))).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(keys.len(), 200);
    let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), 200, "every name has its own random part");
    assert!(keys.iter().all(|k| k.starts_with("live/cam1/") && k.ends_with(".flv")));
}

/// A trapping Rust guest writes its panic message to stderr, a WASI call that blocks on a
/// future: on a Tokio worker that must not panic the host.
#[tokio::test(flavor = "current_thread")]
async fn decisions_work_inside_a_current_thread_runtime() {
    let dir = fixtures!();
    let r = registry(dir, &[("misbehave", "misbehave", r#"mode = "trap""#)]).unwrap();
    let (s, f) = (stream(), file(Format::Flv));
    assert_eq!(r.policy(None).name_file(&s, &f), Builtin.name_file(&s, &f));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_work_inside_multi_thread_runtime_tasks() {
    let dir = fixtures!();
    let r = registry(dir, &[("misbehave", "misbehave", r#"mode = "trap""#)]).unwrap();
    let p = r.policy(None);
    let (s, f) = (stream(), file(Format::Flv));
    let expected = Builtin.name_file(&s, &f);
    let task = tokio::spawn(async move { p.name_file(&s, &f) });
    assert_eq!(task.await.unwrap(), expected);
    let p = r.policy(None);
    let blocking = tokio::task::spawn_blocking(move || p.name_file(&stream(), &file(Format::Flv)));
    assert_eq!(blocking.await.unwrap(), expected);
}

#[test]
fn without_plugins_the_builtin_decides() {
    let data = scratch_dir("empty");
    let r = Registry::new(&BTreeMap::new(), &PolicyConfig::default(), &data).unwrap();
    let (s, f) = (stream(), file(Format::Hls));
    assert_eq!(r.policy(None).name_file(&s, &f), Builtin.name_file(&s, &f));
    assert_eq!(r.policy(Some(&["ghost".into()])).select_rule(&s, &candidates()).as_deref(), Some("stream"));
    assert_eq!(r.names().count(), 0);
    assert!(!data.join("plugin-cache").exists());
}

#[test]
fn check_refuses_exports_with_the_wrong_types() {
    let dir = fixtures!();
    let err = cli::check(&dir.join("wrong_shape.wasm"), None).unwrap_err().to_string();
    assert!(err.contains("exports `naming` with types that do not match reel:policy@0.1.0"), "{err}");
}

#[test]
fn registries_and_policies_can_be_shared_across_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Registry>();
    shared::<Arc<dyn Policy>>();
}

#[test]
fn token_gate_admits_the_right_token_and_refuses_with_a_reason() {
    let dir = fixtures!();
    let r = registry(dir, &[("gate", "token_gate", r#"token = "s3cret""#), ("tencent", "tencent_css", r#"key = "k""#)])
        .unwrap();
    let p = r.policy(None);
    let with = |params: &[(&str, &str)]| StreamInfo {
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..stream()
    };
    assert_eq!(p.admit(&with(&[("a", "1"), ("token", "s3cret")])), Ok(()));
    let wrong = p.admit(&with(&[("token", "guess")])).unwrap_err();
    assert!(wrong.contains("gate") && wrong.contains("does not match"), "{wrong}");
    let missing = p.admit(&with(&[])).unwrap_err();
    assert!(missing.contains("?token="), "{missing}");
    // The other decisions are the next plugins' as before.
    assert!(p.name_file(&stream(), &file(Format::Flv)).starts_with("cam1_"));
    // Without an admission plugin every publish is admitted; without a token the gate is
    // refused at load.
    assert_eq!(
        registry(dir, &[("tencent", "tencent_css", r#"key = "k""#)]).unwrap().policy(None).admit(&with(&[])),
        Ok(())
    );
    let Err(e) = registry(dir, &[("gate", "token_gate", "")]) else { panic!("refused without a token") };
    let e = e.to_string();
    assert!(e.contains("token"), "{e}");
}
