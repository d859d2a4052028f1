//! `reel remux`: the recorder's muxers over a file, checked against the source with ffmpeg.

use std::process::Command;

use crate::common::*;

fn remux(src: &std::path::Path, format: &str, out: &std::path::Path) {
    run(Command::new(REEL).arg("remux").arg(src).args(["-f", format, "-o"]).arg(out).args(["--segment", "2s"]));
}

fn hashes(v: Vec<Packet>) -> Vec<String> {
    v.into_iter().map(|p| p.hash).collect()
}

#[test]
fn remux_flv_is_packet_identical() {
    let src = fixture("av", 6, true, true);
    let dir = test_dir("remux-flv");
    let out = dir.join("out.flv");
    remux(&src, "flv", &out);
    assert_eq!(decode_errors(&out), "");
    assert_eq!(packets(&out, "v"), packets(&src, "v"));
    assert_eq!(packets(&out, "a"), packets(&src, "a"));
}

#[test]
fn remux_hls_and_aac_decode_identically() {
    let src = fixture("av", 6, true, true);
    let dir = test_dir("remux-hls");
    let pl = dir.join("out.m3u8");
    remux(&src, "hls", &pl);
    let text = std::fs::read_to_string(&pl).unwrap();
    assert_eq!(text.lines().filter(|l| l.ends_with(".ts")).count(), 3, "{text}");
    assert!(text.contains("#EXT-X-ENDLIST"));
    assert_eq!(decode_errors(&pl), "");
    assert_eq!(hashes(decoded(&pl, "v")), hashes(decoded(&src, "v")));
    assert_eq!(hashes(decoded(&pl, "a")), hashes(decoded(&src, "a")));

    let aac = dir.join("out.aac");
    remux(&src, "aac", &aac);
    assert_eq!(decode_errors(&aac), "");
    assert_eq!(hashes(decoded(&aac, "a")), hashes(decoded(&src, "a")));
}

#[test]
fn remux_mp4_is_packet_identical_and_faststart() {
    let src = fixture("av", 6, true, true);
    let dir = test_dir("remux-mp4");
    let out = dir.join("out.mp4");
    remux(&src, "mp4", &out);
    assert_eq!(decode_errors(&out), "");
    assert_eq!(hashes(packets(&out, "v")), hashes(packets(&src, "v")));
    assert_eq!(hashes(packets(&out, "a")), hashes(packets(&src, "a")));
    let data = std::fs::read(&out).unwrap();
    assert_eq!(&data[4..8], b"ftyp");
    let ftyp = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
    assert_eq!(&data[ftyp + 4..ftyp + 8], b"moov", "moov right after ftyp (faststart)");
}

#[test]
fn remux_of_a_missing_file_is_a_clear_error() {
    let out = Command::new(REEL).args(["remux", "/nonexistent.flv", "-f", "flv", "-o", "/tmp/x.flv"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.flv"));
}

#[test]
fn remux_names_segments_like_the_live_recorder_and_leaves_no_scratch_folder() {
    let src = fixture("av", 6, true, true);
    let dir = test_dir("remux-names");
    let pl = dir.join("out.m3u8");
    remux(&src, "hls", &pl);
    let text = std::fs::read_to_string(&pl).unwrap();
    let segs: Vec<&str> = text.lines().filter(|l| l.ends_with(".ts")).collect();
    assert_eq!(segs, ["out_00000.ts", "out_00001.ts", "out_00002.ts"], "{text}");
    for f in ["flv", "mp4"] {
        remux(&src, f, &dir.join(format!("out.{f}")));
    }
    assert!(!dir.join(".partial").exists(), "no scratch folder left beside the outputs");
}

#[test]
fn remux_refuses_an_existing_output_unless_asked_to_replace_it() {
    let src = fixture("av", 6, true, true);
    let dir = test_dir("remux-exists");
    for (format, name) in [("flv", "out.flv"), ("hls", "out.m3u8")] {
        let out = dir.join(name);
        remux(&src, format, &out);
        let before = std::fs::read(&out).unwrap();
        let again = Command::new(REEL).arg("remux").arg(&src).args(["-f", format, "-o"]).arg(&out).output().unwrap();
        assert!(!again.status.success(), "{format}: a second remux onto {name} must fail");
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(err.contains(&out.display().to_string()) && err.contains("-y"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), before, "{format}: the existing file is untouched");
        run(Command::new(REEL).arg("remux").arg(&src).args(["-f", format, "-y", "--segment", "2s", "-o"]).arg(&out));
        assert_eq!(decode_errors(&out), "");
    }
    // Only the outputs and the segments of the one playlist: nothing suffixed `_1`.
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["out.flv", "out.m3u8", "out_00000.ts", "out_00001.ts", "out_00002.ts"]);
}
