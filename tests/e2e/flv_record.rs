//! RTMP push → FLV recording: packet identity, seekable metadata, interval cuts, shutdown.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use reel::media::amf0::Value;
use reel::media::flv::{FileReader, TAG_SCRIPT, TAG_VIDEO};

use crate::common::*;

/// Asserts that `recorded` files together hold exactly the packets of `src` for stream `map`.
fn assert_same_packets(src: &std::path::Path, recorded: &[std::path::PathBuf], map: &str) {
    let want = packets(src, map);
    let got: Vec<Packet> = recorded.iter().flat_map(|f| packets(f, map)).collect();
    assert!(!want.is_empty(), "source has {map} packets");
    assert_eq!(got.len(), want.len(), "{map} packet count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!((g.dts, g.pts, g.size, &g.hash), (w.dts, w.pts, w.size, &w.hash), "{map} packet {i}");
    }
}

fn metadata(path: &std::path::Path) -> Value {
    let mut r = FileReader::new(Bytes::from(std::fs::read(path).unwrap())).unwrap();
    let t = r.next_tag().unwrap().expect("a first tag");
    assert_eq!(t.tag_type, TAG_SCRIPT, "onMetaData comes first");
    let vals = reel::media::amf0::decode_all(&t.body).unwrap();
    assert_eq!(vals[0], Value::String("onMetaData".into()));
    vals[1].clone()
}

#[test]
fn ffmpeg_push_records_packet_identical_seekable_flv() {
    let src = fixture("av", 6, true, true);
    let reel = Reel::start("ffmpeg-push", BASE_CONFIG);
    ffmpeg_publish(&src, &reel.url("live", "mystream"), true);
    let dir = reel.recordings().join("live/mystream");
    let (found, waited) = wait_files(&dir, "flv", 1, Duration::from_secs(10));
    assert_eq!(found.len(), 1, "one file: {}", reel.log_text());
    assert!(waited <= Duration::from_secs(2), "file closed {waited:?} after the push ended");
    let file = &found[0];
    let name = file.file_name().unwrap().to_str().unwrap();
    // {EscapedStartTime}_{EscapedEndTime}.flv, UTC, e.g. 2026-11-22-13-05-09_2026-11-22-13-05-15.flv
    assert_eq!(name.len(), "2026-11-22-13-05-09_2026-11-22-13-05-15.flv".len(), "{name}");
    assert!(name.chars().all(|c| c.is_ascii_digit() || "-_.flv".contains(c)), "{name}");

    assert_same_packets(&src, &found, "v");
    assert_same_packets(&src, &found, "a");
    assert_eq!(decode_errors(file), "");

    let md = metadata(file);
    let size = std::fs::metadata(file).unwrap().len() as f64;
    assert_eq!(md.get("filesize").and_then(Value::as_f64), Some(size));
    let duration = md.get("duration").and_then(Value::as_f64).unwrap();
    assert!((duration - 6.0).abs() < 0.1, "duration {duration}");
    let kf = md.get("keyframes").expect("keyframe index");
    let Some(Value::StrictArray(pos)) = kf.get("filepositions") else { panic!("filepositions") };
    let Some(Value::StrictArray(times)) = kf.get("times") else { panic!("times") };
    assert_eq!(pos.len(), 3, "a keyframe every 2 s over 6 s");
    assert_eq!(times.len(), 3);
    let data = std::fs::read(file).unwrap();
    for p in pos {
        let p = p.as_f64().unwrap() as usize;
        assert_eq!(data[p], TAG_VIDEO);
        assert_eq!(data[p + 11] >> 4, 1, "filepositions point at keyframes");
    }
    assert!(reel.log_text().contains("file closed"));
}

#[test]
fn interval_cuts_on_keyframes_and_loses_nothing() {
    let src = fixture("av", 12, true, true);
    let config = BASE_CONFIG.replace("interval = \"30m\"", "interval = \"4s\"");
    let reel = Reel::start("interval", &config);
    ffmpeg_publish(&src, &reel.url("live", "cut"), false);
    let dir = reel.recordings().join("live/cut");
    let (found, _) = wait_files(&dir, "flv", 3, Duration::from_secs(10));
    assert_eq!(found.len(), 3, "12 s at 4 s intervals: {:?}\n{}", found, reel.log_text());
    // Names carry wall-clock times; order files by their first packet instead.
    let mut found = found;
    found.sort_by_key(|f| packets(f, "v").first().map(|p| p.dts));
    for f in &found {
        let flags = video_key_flags(f);
        assert!(flags.first().copied().unwrap_or(false), "{} starts with a keyframe", f.display());
        assert_eq!(decode_errors(f), "", "{}", f.display());
    }
    assert_same_packets(&src, &found, "v");
    assert_same_packets(&src, &found, "a");
}

#[test]
fn audio_only_stream_is_recorded() {
    let src = fixture("a", 5, true, false);
    let reel = Reel::start("audio-only", BASE_CONFIG);
    ffmpeg_publish(&src, &reel.url("radio", "one"), false);
    let (found, _) = wait_files(&reel.recordings().join("radio/one"), "flv", 1, Duration::from_secs(10));
    assert_eq!(found.len(), 1, "{}", reel.log_text());
    assert_same_packets(&src, &found, "a");
}

#[test]
fn sigterm_finishes_open_files() {
    let src = fixture("av", 20, true, true);
    let mut reel = Reel::start("sigterm", BASE_CONFIG);
    let mut publisher = ffmpeg_publisher(&src, &reel.url("live", "term"));
    std::thread::sleep(Duration::from_secs(4));
    let status = reel.stop();
    let _ = publisher.kill();
    let _ = publisher.wait();
    assert!(status.success(), "clean exit: {status:?}\n{}", reel.log_text());
    let found = files(&reel.recordings().join("live/term"), "flv");
    assert_eq!(found.len(), 1, "{}", reel.log_text());
    assert_eq!(decode_errors(&found[0]), "");
    let n = packets(&found[0], "v").len();
    assert!(n >= 50, "about 4 s of video recorded, got {n} frames");
    let md = metadata(&found[0]);
    assert!(md.get("duration").and_then(Value::as_f64).unwrap() > 2.0);
    assert!(files(&reel.recordings().join(".partial"), "part").is_empty(), "no partial file left");
}

#[test]
fn librtmp_client_records_identically() {
    assert!(have("gst-launch-1.0"), "GStreamer's rtmpsink is needed: tests/run installs it");
    let src = fixture("av", 6, true, true);
    let reel = Reel::start("librtmp", BASE_CONFIG);
    // rtmpsink is GStreamer's librtmp-based sink; flvdemux/flvmux pass the payloads through.
    let pipeline = format!(
        "filesrc location={} ! flvdemux name=d d.video ! queue ! flvmux name=m streamable=true ! rtmpsink location={} d.audio ! queue ! aacparse ! m.",
        src.display(),
        reel.url("live", "gst")
    );
    let out = Command::new("gst-launch-1.0").arg("-q").args(pipeline.split(' ')).output().unwrap();
    assert!(out.status.success(), "gst-launch failed: {}", String::from_utf8_lossy(&out.stderr));
    let (found, _) = wait_files(&reel.recordings().join("live/gst"), "flv", 1, Duration::from_secs(10));
    assert_eq!(found.len(), 1, "{}", reel.log_text());
    // Payloads are identical; flvmux rewrites timestamps of its own, so compare hashes.
    let want: Vec<String> = packets(&src, "v").into_iter().map(|p| p.hash).collect();
    let got: Vec<String> = packets(&found[0], "v").into_iter().map(|p| p.hash).collect();
    assert_eq!(got, want);
    assert_eq!(decode_errors(&found[0]), "");
}
