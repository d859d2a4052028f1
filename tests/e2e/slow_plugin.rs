//! A plugin that takes 40 ms per decision must not stall anyone else: while streams recorded
//! through it publish, a healthy stream beside them records packet-identical and `/healthz`
//! keeps answering.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// One `GET path`: the answer, and how long it took from connect to its end.
fn get(port: u16, path: &str) -> (String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    (answer, t.elapsed())
}

fn healthz(port: u16) -> Duration {
    get(port, "/healthz").1
}

#[test]
fn a_slow_plugin_stalls_no_other_stream_and_no_http_request() {
    let plugin = crate::plugins::plugins_dir().join("misbehave.wasm");
    let config = format!(
        r#"
[storage.local]
kind = "fs"
root = "recordings"

[policy]
# Room for 40 ms of work on a machine busy with nine publishers: this test is about stalls,
# not deadlines.
deadline = "250ms"

[plugins.slow]
path = "{}"
config = {{ mode = "slow", delay_ms = 40 }}
allow = {{ clocks = true }}

[template.slow]
formats = ["flv", "hls", "mp4"]
interval = "1s"
hls_segment = "1s"
storage = "local"
plugins = ["slow"]

[template.healthy]
formats = ["flv"]
storage = "local"

[[rule]]
app = "slow"
template = "slow"

[[rule]]
app = "live"
template = "healthy"
"#,
        plugin.display()
    );
    let reel = Reel::start("slow-plugin", &config);
    let src = fixture("av", 6, true, true);

    // Poll /healthz every 10 ms for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, port) = (stop.clone(), reel.http_port);
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                worst = worst.max(healthz(port));
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (worst, n)
        })
    };
    // Eight streams through the slow plugin (every file, segment playlist and plan decided
    // by it: 1 s files in three formats), and the healthy stream, all in real time.
    let slow: Vec<_> = (0..8)
        .map(|i| {
            let (src, url) = (src.clone(), reel.url("slow", &format!("s{i}")));
            std::thread::spawn(move || ffmpeg_publish(&src, &url, true))
        })
        .collect();
    let metrics = {
        let port = reel.http_port;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            get(port, "/metrics").0
        })
    };
    ffmpeg_publish(&src, &reel.url("live", "healthy"), true);
    let metrics = metrics.join().unwrap();
    let active = metrics.lines().find_map(|l| l.strip_prefix("reel_streams_active ")).expect("a gauge of streams");
    assert_eq!(active.trim(), "9", "nine publishers mid-run");
    for t in slow {
        t.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (worst, polls) = poller.join().unwrap();
    eprintln!("slow plugin: worst /healthz latency {:.1} ms over {polls} requests", worst.as_secs_f64() * 1e3);

    let dir = reel.recordings().join("live/healthy");
    let (flv, _) = wait_files(&dir, "flv", 1, Duration::from_secs(10));
    assert_eq!(flv.len(), 1, "{}", reel.log_text());
    assert_eq!(packets(&flv[0], "v"), packets(&src, "v"), "healthy video packet-identical");
    assert_eq!(packets(&flv[0], "a"), packets(&src, "a"), "healthy audio packet-identical");
    // The slow streams were recorded too, named by the plugin (its defaults).
    let slow_files = files(&reel.recordings().join("slow"), "flv");
    assert!(slow_files.len() >= 8 * 3, "files cut at every 2 s keyframe, 8 streams of 6 s: {slow_files:?}");
    assert!(!reel.log_text().contains("timeout"), "no decision hit its deadline: {}", reel.log_text());
    assert!(polls > 50, "{polls} health checks");
    assert!(worst < Duration::from_millis(500), "worst /healthz latency {worst:?}");
}
