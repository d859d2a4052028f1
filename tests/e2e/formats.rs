//! Every recording format from one ingest: FLV, HLS (TS + m3u8), MP4, AAC.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

fn config(formats: &str, interval: &str, segment: &str) -> String {
    format!(
        "[storage.local]\nkind = \"fs\"\nroot = \"recordings\"\n[template.default]\nformats = {formats}\ninterval = \"{interval}\"\nhls_segment = \"{segment}\"\nstorage = \"local\"\n[[rule]]\ntemplate = \"default\"\n"
    )
}

fn hashes(v: Vec<Packet>) -> Vec<String> {
    v.into_iter().map(|p| p.hash).collect()
}

fn playlist(dir: &Path) -> PathBuf {
    let (found, _) = wait_files(dir, "m3u8", 1, Duration::from_secs(10));
    assert_eq!(found.len(), 1, "one playlist per publish: {found:?}");
    found[0].clone()
}

/// Waits until the playlist is final (ENDLIST written at unpublish).
fn wait_endlist(p: &Path) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        if text.contains("#EXT-X-ENDLIST") || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hls_and_aac_recordings_decode_identically() {
    let src = fixture("av", 12, true, true);
    let reel = Reel::start("hls-aac", &config("[\"hls\", \"aac\"]", "30m", "4s"));
    ffmpeg_publish(&src, &reel.url("live", "fmt"), false);
    let dir = reel.recordings().join("live/fmt");
    let pl = playlist(&dir);
    let text = wait_endlist(&pl);
    assert!(text.starts_with("#EXTM3U"), "{text}");
    for tag in ["#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:4", "#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-PROGRAM-DATE-TIME:", "#EXT-X-ENDLIST"] {
        assert!(text.contains(tag), "{tag} in\n{text}");
    }
    let segments: Vec<&str> = text.lines().filter(|l| l.ends_with(".ts")).collect();
    assert_eq!(segments.len(), 3, "12 s in 4 s segments:\n{text}");
    for s in &segments {
        let seg = pl.parent().unwrap().join(s);
        assert!(video_key_flags(&seg)[0], "segment {s} starts with a keyframe");
    }
    assert_eq!(decode_errors(&pl), "");
    assert_eq!(hashes(decoded(&pl, "v")), hashes(decoded(&src, "v")), "decoded video identical");
    assert_eq!(hashes(decoded(&pl, "a")), hashes(decoded(&src, "a")), "decoded audio identical");

    let (aac, _) = wait_files(&dir, "aac", 1, Duration::from_secs(10));
    assert_eq!(aac.len(), 1, "{}", reel.log_text());
    assert_eq!(decode_errors(&aac[0]), "");
    assert_eq!(hashes(decoded(&aac[0], "a")), hashes(decoded(&src, "a")), "decoded AAC identical");
}

#[test]
fn all_formats_cut_on_keyframes_and_add_up() {
    let src = fixture("av", 12, true, true);
    let reel = Reel::start("all-formats", &config("[\"flv\", \"hls\", \"mp4\", \"aac\"]", "4s", "2s"));
    ffmpeg_publish(&src, &reel.url("live", "all"), false);
    let dir = reel.recordings().join("live/all");
    let pl = playlist(&dir);
    wait_endlist(&pl);
    let (flv, _) = wait_files(&dir, "flv", 3, Duration::from_secs(10));
    assert_eq!(flv.len(), 3, "{}", reel.log_text());
    let mut flv = flv;
    flv.sort_by_key(|f| packets(f, "v").first().map(|p| p.dts));
    let mut all = Vec::new();
    for f in &flv {
        assert!(video_key_flags(f)[0], "{} starts with a keyframe", f.display());
        all.extend(packets(f, "v"));
    }
    assert_eq!(hashes(all), hashes(packets(&src, "v")), "FLV files add up to the source");
    let (aac, _) = wait_files(&dir, "aac", 3, Duration::from_secs(10));
    assert_eq!(aac.len(), 3, "AAC files follow the same interval");
    let mut decoded_audio = 0;
    for f in &aac {
        decoded_audio += packets(f, "a").len();
    }
    assert_eq!(decoded_audio, packets(&src, "a").len(), "AAC frames add up to the source");
    assert_eq!(hashes(decoded(&pl, "v")), hashes(decoded(&src, "v")));
}
