//! `reel bench publish` against a running Reel: every frame the bench reports sent is in the
//! recording.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use reel::media::flv::{FileReader, TAG_AUDIO, TAG_VIDEO};

use crate::common::*;

/// Audio and video tags in an FLV file.
fn av_tags(path: &std::path::Path) -> u64 {
    let mut r = FileReader::new(Bytes::from(std::fs::read(path).unwrap())).unwrap();
    let mut n = 0;
    while let Some(t) = r.next_tag().unwrap() {
        n += u64::from(matches!(t.tag_type, TAG_AUDIO | TAG_VIDEO));
    }
    n
}

#[test]
fn bench_publish_frames_all_recorded() {
    // 2 s of media looped over 3 s: the loop join is recorded too.
    let src = fixture("av", 2, true, true);
    let reel = Reel::start("bench-publish", BASE_CONFIG);
    let out = run(Command::new(REEL)
        .args([
            "bench",
            "publish",
            "--url",
            &reel.url("live", "bench_{n}"),
            "--streams",
            "3",
            "--duration",
            "3s",
            "--ramp",
            "300ms",
            "--input",
        ])
        .arg(&src));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(report["streams"], 3, "{line}");
    assert_eq!(report["published"], 3, "{line}");
    assert_eq!(report["errors"].as_array().unwrap().len(), 0, "{line}");
    let per_stream: Vec<u64> =
        report["frames_per_stream"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    // 25 fps video and ~43 audio frames/s over 3 s, plus two sequence headers.
    for &n in &per_stream {
        assert!((180..=240).contains(&n), "{n} frames in 3 s: {line}");
    }
    for (i, &sent) in per_stream.iter().enumerate() {
        let dir = reel.recordings().join(format!("live/bench_{i}"));
        let (found, _) = wait_files(&dir, "flv", 1, Duration::from_secs(10));
        assert_eq!(found.len(), 1, "stream {i}: {}", reel.log_text());
        assert_eq!(av_tags(&found[0]), sent, "stream {i}: frames recorded = frames sent");
        assert_eq!(decode_errors(&found[0]), "", "stream {i}");
    }
}
