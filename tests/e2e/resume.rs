//! Continuity across reconnects: a stream published again inside its template's
//! `resume_window` continues its recording (one playlist with one discontinuity, one FLV and
//! one MP4 holding both publishes), and one published after the window starts anew.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// A callback endpoint on 127.0.0.1 that answers 200 and keeps each event body.
fn endpoint() -> (String, Arc<Mutex<Vec<Value>>>) {
    let (url, rx) = http_receiver("/cb", |_| 200);
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for r in rx {
            if let Ok(v) = serde_json::from_slice(&r.body) {
                g.lock().unwrap().push(v);
            }
        }
    });
    (url, got)
}

fn duration_s(path: &Path) -> f64 {
    let o = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0.0)
}

#[test]
fn a_publish_again_inside_the_window_continues_the_recording() {
    let src = fixture("resume", 4, true, true);
    let (url, events) = endpoint();
    let config = format!(
        r#"
[storage.local]
kind = "fs"
root = "recordings"
[template.default]
formats = ["hls", "flv", "mp4"]
hls_segment = "2s"
resume_window = "4s"
storage = "local"
[[rule]]
template = "default"
[[callback]]
url = "{url}"
events = ["file_created"]
"#
    );
    let reel = Reel::start("resume", &config);
    ffmpeg_publish(&src, &reel.url("live", "cam"), false);
    std::thread::sleep(Duration::from_millis(1500));
    ffmpeg_publish(&src, &reel.url("live", "cam"), false);
    let dir = reel.recordings().join("live/cam");
    // Nothing is final inside the window.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(files(&dir, "flv").is_empty() && files(&dir, "mp4").is_empty(), "{:?}", files(&dir, ""));
    let (playlist, text) = crate::formats::final_playlist(&dir);
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY").count(), 1, "{text}");
    let segments: Vec<&str> = text.lines().filter(|l| l.ends_with(".ts")).collect();
    let numbers: Vec<String> = segments.iter().map(|s| s[s.len() - 8..s.len() - 3].to_string()).collect();
    let want: Vec<String> = (0..segments.len()).map(|i| format!("{i:05}")).collect();
    assert_eq!(numbers, want, "numbering goes on: {text}");
    let (flv, _) = wait_files(&dir, "flv", 1, Duration::from_secs(10));
    let (mp4, _) = wait_files(&dir, "mp4", 1, Duration::from_secs(10));
    assert_eq!((flv.len(), mp4.len()), (1, 1), "one file per format: {:?}", files(&dir, ""));
    let frames = packets(&src, "v").len();
    for f in [&flv[0], &mp4[0], &playlist] {
        assert_eq!(decode_errors(f), "", "{}", f.display());
        assert_eq!(packets(f, "v").len(), 2 * frames, "both publishes' frames in {}", f.display());
        let d = duration_s(f);
        assert!((d - 8.0).abs() < 0.5, "{}: {d} s, two 4 s publishes back to back", f.display());
    }
    // Timestamps follow on: no frame goes back in time, and the pause is not in the timeline
    // (the new publish starts one frame after the latest frame of any track).
    let dts: Vec<i64> = packets(&flv[0], "v").iter().map(|p| p.dts).collect();
    assert!(dts.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 250), "video dts continuous: {dts:?}");
    // One callback per file, after the window.
    std::thread::sleep(Duration::from_millis(1500));
    let got = events.lock().unwrap().clone();
    let mut per_format: BTreeMap<String, usize> = BTreeMap::new();
    for e in &got {
        *per_format.entry(e["format"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    assert_eq!(per_format, BTreeMap::from([("flv".into(), 1), ("hls".into(), 1), ("mp4".into(), 1)]), "{got:#?}");

    // MP4 and the playlist play in Chromium through both publishes.
    let rel = |p: &Path| format!("/{}", p.strip_prefix(&reel.dir).unwrap().display());
    let results = crate::browser::play_in_chromium(&reel.dir, &[("mp4", rel(&mp4[0])), ("hls", rel(&playlist))]);
    for r in results.as_array().unwrap() {
        assert!(r.get("failure").is_none() && r.get("error").is_none(), "plays: {r}");
        assert!((r["duration"].as_f64().unwrap() - 8.0).abs() < 0.5, "{r}");
        assert!(r["seeked_to"].as_f64().unwrap() > 5.0, "seeks into the second publish: {r}");
    }

    // After the window: a new recording.
    ffmpeg_publish(&src, &reel.url("live", "cam"), false);
    let (flv, _) = wait_files(&dir, "flv", 2, Duration::from_secs(15));
    assert_eq!(flv.len(), 2);
    let newest = flv.iter().max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap()).unwrap();
    assert!((duration_s(newest) - 4.0).abs() < 0.5);
}

#[test]
fn a_dropped_connection_and_a_publish_again_continue_the_recording() {
    let src = fixture("resume-drop", 6, true, true);
    let reel = Reel::start(
        "resume-drop",
        "[storage.local]\nkind = \"fs\"\nroot = \"recordings\"\n[template.default]\nformats = [\"hls\", \"flv\"]\nhls_segment = \"2s\"\nresume_window = \"3s\"\nstorage = \"local\"\n[[rule]]\ntemplate = \"default\"\n",
    );
    // The publisher's connection dies mid-stream (killed, no unpublish).
    let mut ffmpeg = ffmpeg_publisher(&src, &reel.url("live", "drop"));
    std::thread::sleep(Duration::from_millis(3500));
    ffmpeg.kill().unwrap();
    ffmpeg.wait().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    ffmpeg_publish(&src, &reel.url("live", "drop"), false);
    let dir = reel.recordings().join("live/drop");
    let (playlist, text) = crate::formats::final_playlist(&dir);
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY").count(), 1, "{text}");
    let (flv, _) = wait_files(&dir, "flv", 1, Duration::from_secs(10));
    assert_eq!(flv.len(), 1, "{:?}", files(&dir, "flv"));
    for f in [&flv[0], &playlist] {
        assert_eq!(decode_errors(f), "", "{}", f.display());
        let frames = packets(f, "v").len();
        assert!(frames > packets(&src, "v").len(), "{}: {frames} frames, more than one publish", f.display());
    }
}

#[test]
fn a_crash_inside_the_resume_window_keeps_the_recording_recoverable() {
    let src = fixture("resume-crash", 4, true, true);
    let config = "[storage.local]\nkind = \"fs\"\nroot = \"recordings\"\n[template.default]\nformats = [\"hls\", \"flv\"]\nhls_segment = \"2s\"\nresume_window = \"10m\"\nstorage = \"local\"\n[[rule]]\ntemplate = \"default\"\n";
    let mut reel = Reel::start("resume-crash", config);
    ffmpeg_publish(&src, &reel.url("live", "cam"), false);
    // Parked: nothing final yet. Then the node dies.
    std::thread::sleep(Duration::from_millis(1500));
    let dir = reel.recordings().join("live/cam");
    assert!(files(&dir, "flv").is_empty(), "{}", reel.log_text());
    reel.child.take().unwrap().kill().unwrap();
    let root = reel.dir.clone();
    drop(reel);
    // The next start finishes both files.
    let reel = Reel::start_in(root, config);
    let (flv, _) = wait_files(&dir, "flv", 1, Duration::from_secs(10));
    assert_eq!(flv.len(), 1, "{}", reel.log_text());
    assert_eq!(decode_errors(&flv[0]), "");
    assert_eq!(packets(&flv[0], "v").len(), packets(&src, "v").len(), "the whole publish");
    let (playlist, text) = crate::formats::final_playlist(&dir);
    assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
    assert_eq!(decode_errors(&playlist), "");
    assert!(reel.log_text().contains("recovered an unfinished file"));
}
