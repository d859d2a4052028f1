//! Policy plugins end to end: a pushed stream named and announced by `tencent-css`, and
//! misbehaving plugins that never stop a recording.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use md5::{Digest, Md5};

use crate::common::*;

/// The built example plugins (`plugins/target/wasm32-wasip2/release`).
pub(crate) fn plugins_dir() -> &'static Path {
    reel_test_support::plugins::dir()
}

/// A callback endpoint on 127.0.0.1: answers 200 and hands over (request head, body).
fn http_listener() -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    let (url, rx) = http_receiver("/record-callback", |_| 200);
    let (tx, out) = mpsc::channel();
    std::thread::spawn(move || {
        for r in rx {
            if tx.send((r.head, r.body)).is_err() {
                return;
            }
        }
    });
    (url, out)
}

fn http_get(port: u16, path: &str) -> String {
    let (_, head, body) = http_raw(port, path, "");
    format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&body))
}

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tencent_css_names_files_and_sends_a_signed_callback() {
    let dir = plugins_dir();
    let (url, rx) = http_listener();
    let config = format!(
        r#"
[storage.local]
kind = "fs"
root = "recordings"
[template.default]
formats = ["flv"]
storage = "local"
[[rule]]
template = "default"
[plugins.css]
path = "{}"
config = {{ key = "s3cret" }}
[policy]
plugins = ["css"]
[[callback]]
url = "{url}"
events = ["file_created"]
"#,
        dir.join("tencent_css.wasm").display()
    );
    let reel = Reel::start("tencent-css", &config);
    let src = fixture("av", 6, true, true);
    ffmpeg_publish(&src, &reel.url("live", "cssstream"), false);

    let (head, body) =
        rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no callback: {}", reel.log_text()));
    assert!(head.starts_with("POST /record-callback"), "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["event_type"], 100, "{v}");
    assert_eq!(v["stream_id"], "cssstream");
    assert_eq!(v["appname"], "live");
    assert_eq!(v["file_format"], "flv");
    let t = v["t"].as_i64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((t - now - 600).abs() < 60, "t is now + 600 s: {t} vs {now}");
    assert_eq!(v["sign"].as_str().unwrap(), md5_hex(format!("s3cret{t}").as_bytes()), "sign = md5(key + t)");

    // VodFileName: {StreamID}_{Start...}_{End...}, at the storage root.
    let key = v["video_url"].as_str().unwrap();
    assert!(key.starts_with("cssstream_") && key.ends_with(".flv"), "{key}");
    assert_eq!(key.len(), "cssstream_2026-11-22-13-05-09_2026-11-22-13-05-15.flv".len(), "{key}");
    let file = reel.recordings().join(key);
    let size = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).len();
    assert_eq!(v["file_size"].as_u64(), Some(size), "file_size is the file's");
    assert_eq!(packets(&file, "v").len(), packets(&src, "v").len());
}

#[test]
fn mps_names_files_and_sends_its_own_signed_notification() {
    let dir = plugins_dir();
    let (url, rx) = http_listener();
    let config = format!(
        r#"
[storage.local]
kind = "fs"
root = "recordings"
[template.default]
formats = ["mp4"]
storage = "local"
[[rule]]
template = "default"
[plugins.mps]
path = "{}"
config = {{ key = "k3y", url_prefix = "https://vod.example.com/" }}
[policy]
plugins = ["mps"]
[[callback]]
url = "{url}"
events = ["file_created"]
"#,
        dir.join("mps.wasm").display()
    );
    let reel = Reel::start("mps-callback", &config);
    let src = fixture("av", 4, true, true);
    ffmpeg_publish(&src, &reel.url("live", "mpsstream"), false);
    let (head, body) =
        rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no callback: {}", reel.log_text()));
    assert!(head.starts_with("POST /record-callback"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-reel-event-id:"), "the outbox's id rides along: {head}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["NotificationType"], "LiveRecordResult", "{v}");
    assert_eq!(v["SessionContext"], "live/mpsstream");
    let t = v["Timestamp"].as_i64().unwrap();
    assert_eq!(v["Sign"].as_str().unwrap(), md5_hex(format!("k3y{t}").as_bytes()), "Sign = md5(key + Timestamp)");
    let file = &v["LiveRecordResultInfo"]["FileResults"][0];
    let key = file["Url"].as_str().unwrap().strip_prefix("https://vod.example.com/").unwrap();
    // Named by the plugin: {AppName}/{StreamName}/{rand}/…
    assert!(key.starts_with("live/mpsstream/") && key.ends_with("_0.mp4"), "{key}");
    let size = std::fs::metadata(reel.recordings().join(key)).unwrap().len();
    assert_eq!(file["Size"].as_u64(), Some(size));
    assert_eq!(file["Container"], "mp4");
}

#[test]
fn misbehaving_plugins_fall_back_and_are_counted() {
    let dir = plugins_dir();
    let src = fixture("av", 4, true, true);
    for (mode, reason) in [("loop", "timeout"), ("trap", "trap"), ("oom", "memory"), ("traversal", "invalid")] {
        let config = format!(
            r#"
[storage.local]
kind = "fs"
root = "recordings"
[template.default]
formats = ["flv", "mp4"]
storage = "local"
[[rule]]
template = "default"
[plugins.bad]
path = "{}"
config = {{ mode = "{mode}" }}
[policy]
plugins = ["bad"]
"#,
            dir.join("misbehave.wasm").display()
        );
        let reel = Reel::start(&format!("misbehave-{mode}"), &config);
        ffmpeg_publish(&src, &reel.url("live", "bad"), false);
        // Named by the built-in fallback: APP/STREAM/{start}_{end}.ext
        let out = reel.recordings().join("live/bad");
        let (flv, _) = wait_files(&out, "flv", 1, Duration::from_secs(20));
        let (mp4, _) = wait_files(&out, "mp4", 1, Duration::from_secs(20));
        assert_eq!((flv.len(), mp4.len()), (1, 1), "mode {mode}: {}", reel.log_text());
        assert_eq!(packets(&flv[0], "v"), packets(&src, "v"), "mode {mode}: complete recording");
        assert_eq!(decode_errors(&mp4[0]), "", "mode {mode}");
        let metrics = http_get(reel.http_port, "/metrics");
        let line = metrics
            .lines()
            .find(|l| l.starts_with("reel_plugin_failures_total") && l.contains(&format!("reason=\"{reason}\"")))
            .unwrap_or_else(|| panic!("mode {mode}: no failure counted with reason {reason}:\n{metrics}"));
        assert!(line.contains("plugin=\"bad\""), "{line}");
    }
}

fn http_post(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn reload_swaps_plugins_for_new_recordings() {
    let dir = plugins_dir();
    let reel = Reel::start("reload", BASE_CONFIG);
    let src = fixture("av", 4, true, true);
    ffmpeg_publish(&src, &reel.url("live", "before"), false);
    let (before, _) = wait_files(&reel.recordings().join("live/before"), "flv", 1, Duration::from_secs(10));
    assert_eq!(before.len(), 1, "built-in naming before the reload");

    // A broken config is refused and the running one stays.
    let path = reel.dir.join("reel.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{original}\n[policy]\nplugins = [\"missing\"]\n")).unwrap();
    let resp = http_post(reel.http_port, "/v1/reload");
    assert!(resp.starts_with("HTTP/1.1 400") && resp.contains("missing"), "{resp}");

    let with_plugin = format!(
        "{original}\n[plugins.mps]\npath = \"{}\"\n[policy]\nplugins = [\"mps\"]\n",
        dir.join("mps.wasm").display()
    );
    std::fs::write(&path, with_plugin).unwrap();
    let resp = http_post(reel.http_port, "/v1/reload");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    ffmpeg_publish(&src, &reel.url("live", "after"), false);
    std::thread::sleep(Duration::from_secs(1));
    let all = files(&reel.recordings(), "flv");
    assert_eq!(all.len(), 2, "{all:?}\n{}", reel.log_text());
    let after = all.iter().find(|p| !p.starts_with(reel.recordings().join("live/before"))).unwrap();
    // mps: {AppName}/{StreamName}/{rand}/{StartYear}-...-{StartSecond}_{Sequence}
    let rel = after.strip_prefix(reel.recordings()).unwrap();
    let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    assert_eq!(parts.len(), 4, "named by the mps plugin now: {}", rel.display());
    assert_eq!((parts[0].as_str(), parts[1].as_str()), ("live", "after"));
    // The first file of a publish is {Sequence} 0, as the WIT contract says.
    assert!(parts[3].ends_with("_0.flv"), "{}", rel.display());
    assert_eq!(packets(after, "v").len(), packets(&src, "v").len());
}

#[test]
fn a_plugin_cannot_read_files_or_open_sockets_and_its_output_is_logged_when_granted() {
    let dir = plugins_dir();
    let config = format!(
        r#"
[storage.local]
kind = "fs"
root = "recordings"
[template.spied]
formats = ["flv"]
storage = "local"
plugins = ["spy"]
[template.loud]
formats = ["flv"]
storage = "local"
plugins = ["loud"]
[[rule]]
app = "spy"
template = "spied"
[[rule]]
app = "loud"
template = "loud"
[plugins.spy]
path = "{}"
[plugins.loud]
path = "{}"
config = {{ mode = "trap" }}
allow = {{ stderr = true }}
memory = "32MiB"
"#,
        dir.join("wants_files.wasm").display(),
        dir.join("misbehave.wasm").display()
    );
    let reel = Reel::start("plugin-sandbox", &config);
    let src = fixture("av", 3, true, true);
    ffmpeg_publish(&src, &reel.url("spy", "cam"), false);
    ffmpeg_publish(&src, &reel.url("loud", "cam"), false);
    // Both record, under the built-in names: the plugins' decisions failed and fell back.
    for app in ["spy", "loud"] {
        let (f, _) = wait_files(&reel.recordings().join(format!("{app}/cam")), "flv", 1, Duration::from_secs(10));
        assert_eq!(f.len(), 1, "{app}: {}", reel.log_text());
        assert_eq!(packets(&f[0], "v").len(), packets(&src, "v").len());
    }
    let log = reel.log_text();
    // Reading /etc/passwd, listing /, resolving a name and connecting to 127.0.0.1 all failed.
    let failure = log
        .lines()
        .find(|l| l.contains("plugin=\"spy\"") && l.contains("read /etc/passwd"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(failure.contains("connect 127.0.0.1:80"), "{failure}");
    // The trapping plugin's panic message reached the log, tagged with it.
    assert!(
        log.lines().any(|l| l.contains("misbehaving on purpose") && l.contains("plugin=\"loud\" stream=\"stderr\"")),
        "{log}"
    );
}

/// Builds the example plugin `plugins/{example}` with its `build.sh`, precompiles it into a
/// fresh data_dir's cache, and records a stream it names: `live/cam/{8 random}/{start}_0.flv`.
/// Returns Reel's log.
fn example_plugin_names_a_real_recording(example: &str, wasm_name: &str) -> String {
    let dir = test_dir(&format!("plugin-{example}"));
    let wasm = dir.join(wasm_name);
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/{example}/build.sh"));
    run(std::process::Command::new("bash").arg(&build).arg(&wasm));
    // Compiled once into the data_dir's cache, as a fleet would before starting (a first load
    // of an interpreter compiles for seconds).
    let out = std::process::Command::new(REEL)
        .args(["plugin", "check", "--data-dir"])
        .arg(dir.join("reel-data"))
        .arg(&wasm)
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && check.contains("exports: naming\n"),
        "{check}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = format!(
        r#"
{BASE_CONFIG}
[plugins.script]
path = "{}"
memory = "64MiB"
allow = {{ stderr = true }}
[policy]
plugins = ["script"]
"#,
        wasm.display()
    );
    let reel = Reel::start_in(dir, &config);
    let src = fixture("av", 3, true, true);
    ffmpeg_publish(&src, &reel.url("live", "cam"), false);
    let (flv, _) = wait_files(&reel.recordings().join("live/cam"), "flv", 1, Duration::from_secs(15));
    assert_eq!(flv.len(), 1, "{}", reel.log_text());
    let rel = flv[0].strip_prefix(reel.recordings()).unwrap().to_string_lossy().into_owned();
    let parts: Vec<&str> = rel.split('/').collect();
    assert_eq!((parts.len(), parts[2].len()), (4, 8), "named by the plugin: {rel}\n{}", reel.log_text());
    assert!(parts[3].ends_with("_0.flv"), "{rel}");
    assert_eq!(packets(&flv[0], "v").len(), packets(&src, "v").len());
    reel.log_text()
}

#[test]
fn a_python_plugin_names_a_real_recording() {
    let log = example_plugin_names_a_real_recording("python-mps", "python_mps.wasm");
    // Its print() reached the log, tagged.
    assert!(
        log.lines().any(|l| l.contains("naming live/cam file 0") && l.contains("plugin=\"script\" stream=\"stdout\"")),
        "{log}"
    );
}

#[test]
fn a_javascript_plugin_names_a_real_recording() {
    example_plugin_names_a_real_recording("js-mps", "js_mps.wasm");
}
