//! `reel-bench publish` (the load generator, its own crate) against a running Reel: every frame
//! the bench reports sent is in the recording.

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

/// The load generator, built (once) beside the `reel` binary with the same profile.
fn reel_bench() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let reel = std::path::Path::new(REEL);
        let profile = reel.parent().unwrap().file_name().unwrap().to_str().unwrap().to_string();
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--quiet", "-p", "reel-bench"]);
        if profile == "release" {
            cargo.arg("--release");
        }
        run(&mut cargo);
        reel.with_file_name("reel-bench")
    })
}

#[test]
fn bench_publish_frames_all_recorded() {
    // 2 s of media looped over 3 s: the loop join is recorded too.
    let src = fixture("av", 2, true, true);
    let reel = Reel::start("bench-publish", BASE_CONFIG);
    let out = run(Command::new(reel_bench())
        .args([
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
