//! Index files: one VOD playlist over the HLS segments two publishes recorded, played start to
//! end by ffmpeg and by hls.js in Chromium.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[test]
fn an_index_over_two_publishes_plays_in_ffmpeg_and_chromium() {
    let src = fixture("index", 6, true, true);
    let reel = Reel::start(
        "index",
        "[storage.local]\nkind = \"fs\"\nroot = \"recordings\"\n[template.default]\nformats = [\"hls\"]\nhls_segment = \"2s\"\ndaily_index = true\nstorage = \"local\"\n[[rule]]\ntemplate = \"default\"\n",
    );
    let t0 = unix_now() - 1;
    for _ in 0..2 {
        ffmpeg_publish(&src, &reel.url("live", "cam"), false);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let rows = wait_for(&reel, "/v1/recordings?app=live&stream=cam&format=hls", Duration::from_secs(15), |v| {
        v["recordings"].as_array().unwrap().len() == 2
    });
    let t1 = unix_now() + 1;

    // The template's daily index: both publishes of the day, rewritten as each playlist closed.
    let start = std::time::UNIX_EPOCH + Duration::from_millis(rows["recordings"][1]["start_ms"].as_u64().unwrap());
    let date = humantime::format_rfc3339_seconds(start).to_string()[..10].to_string();
    let daily = reel.recordings().join(format!("live/cam/{date}.m3u8"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&daily).unwrap_or_default();
        if text.matches("#EXT-X-DISCONTINUITY").count() == 1 {
            assert!(text.ends_with("#EXT-X-ENDLIST\n") && text.matches(".ts").count() == 6, "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "daily index {}: {text}", daily.display());
        std::thread::sleep(Duration::from_millis(100));
    }

    let (status, v) = reel.api(
        "POST",
        "/v1/recordings/index",
        Some(&json!({"app": "live", "stream": "cam", "start_time": t0, "end_time": t1, "name": "vod/both"})),
    );
    assert_eq!(status, 201, "{v:#}\n{}", reel.log_text());
    assert_eq!(v["key"], "vod/both.m3u8");
    assert_eq!(v["discontinuities"], 1, "{v:#}");
    let path = std::path::PathBuf::from(v["url"].as_str().unwrap());
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY").count(), 1, "{text}");
    assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("../live/cam/")), "URIs relative to the index: {text}");
    let duration: f64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .map(|l| l.trim_end_matches(',').parse::<f64>().unwrap())
        .sum();
    assert!((duration - 12.0).abs() < 0.3, "{duration} s listed: {text}");
    // ffmpeg decodes it start to end. Its HLS input marks timestamp discontinuities and the CLI
    // bridges those larger than `dts_delta_threshold` (10 s by default; here the publishes'
    // clocks both start at 0, seconds apart, so it is told 1 s). It bridges with one offset for
    // all streams, which lands audio a few ms behind itself: each stream is decoded alone.
    for map in ["0:v", "0:a"] {
        let o = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-dts_delta_threshold", "1", "-i"])
            .arg(&path)
            .args(["-map", map, "-f", "null", "-"])
            .output()
            .unwrap();
        assert!(o.status.success() && o.stderr.is_empty(), "{map}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // ffmpeg reads both publishes: all their video frames.
    assert_eq!(packets(&path, "v").len(), 2 * packets(&src, "v").len());

    // The same name again gets a suffix; the default name is per range.
    let (status, again) = reel.api(
        "POST",
        "/v1/recordings/index",
        Some(&json!({"app": "live", "stream": "cam", "start_time": t0, "end_time": t1, "name": "vod/both"})),
    );
    assert_eq!(status, 201);
    assert_ne!(again["key"], v["key"]);
    let (status, dflt) = reel.api(
        "POST",
        "/v1/recordings/index",
        Some(&json!({"app": "live", "stream": "cam", "start_time": t0, "end_time": t1})),
    );
    assert_eq!(status, 201, "{dflt}");
    assert!(dflt["key"].as_str().unwrap().starts_with("live/cam/index_"), "{dflt}");

    // Nothing in the range: a 404 that says so.
    let (status, e) = reel.api(
        "POST",
        "/v1/recordings/index",
        Some(&json!({"app": "live", "stream": "cam", "start_time": t0 - 7200, "end_time": t0 - 3600})),
    );
    assert_eq!(status, 404, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("no HLS segments of live/cam"), "{e}");
    let (status, e) = reel.api(
        "POST",
        "/v1/recordings/index",
        Some(&json!({"app": "live", "stream": "cam", "start_time": t0, "end_time": t1, "name": "../x"})),
    );
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("name")), "{e}");
    let (status, e) = reel.api(
        "POST",
        "/v1/recordings/index",
        Some(&json!({"app": "live", "stream": "cam", "start_time": t0 - 40 * 86400, "end_time": t1})),
    );
    assert_eq!((status, e["error"]["field"].as_str()), (400, Some("end_time")), "{e}");

    // hls.js in Chromium plays it through the break and seeks near its end.
    let rel = format!("/{}", path.strip_prefix(&reel.dir).unwrap().display());
    let results = crate::browser::play_in_chromium(&reel.dir, &[("hls", rel)]);
    let r = &results[0];
    assert!(r.get("failure").is_none() && r.get("error").is_none(), "plays: {r}");
    assert_eq!(r["fatal"].as_array().map(Vec::len), Some(0), "no fatal player error: {r}");
    assert!((r["duration"].as_f64().unwrap() - 12.0).abs() < 0.5, "{r}");
    assert!(r["seeked_to"].as_f64().unwrap() > 9.0, "seeks into the second publish: {r}");
}
