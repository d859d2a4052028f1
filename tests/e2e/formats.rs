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

/// The publish's one playlist once it is final: `#EXT-X-ENDLIST` written, under its final name.
pub(crate) fn final_playlist(dir: &Path) -> (PathBuf, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = files(dir, "m3u8");
        if let [one] = &found[..] {
            let text = std::fs::read_to_string(one).unwrap_or_default();
            if text.contains("#EXT-X-ENDLIST") {
                return (one.clone(), text);
            }
        }
        assert!(std::time::Instant::now() < deadline, "one final playlist in {}: {found:?}", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hls_and_aac_recordings_decode_identically() {
    let src = fixture("av", 12, true, true);
    let reel = Reel::start("hls-aac", &config("[\"hls\", \"aac\"]", "30m", "4s"));
    ffmpeg_publish(&src, &reel.url("live", "fmt"), false);
    let dir = reel.recordings().join("live/fmt");
    let (pl, text) = final_playlist(&dir);
    assert!(text.starts_with("#EXTM3U"), "{text}");
    for tag in [
        "#EXT-X-VERSION:3",
        "#EXT-X-TARGETDURATION:4",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
        "#EXT-X-PROGRAM-DATE-TIME:",
        "#EXT-X-ENDLIST",
    ] {
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
    let (pl, _) = final_playlist(&dir);
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

    let (mp4, _) = wait_files(&dir, "mp4", 3, Duration::from_secs(10));
    assert_eq!(mp4.len(), 3, "MP4 files follow the same interval: {}", reel.log_text());
    // MP4 timelines start at zero: order files by where their first packet is in the source.
    let source_v = hashes(packets(&src, "v"));
    let mut mp4 = mp4;
    mp4.sort_by_key(|f| packets(f, "v").first().and_then(|p| source_v.iter().position(|h| *h == p.hash)));
    let mut all = Vec::new();
    for f in &mp4 {
        assert_eq!(decode_errors(f), "", "{}", f.display());
        assert!(video_key_flags(f)[0], "{} starts with a keyframe", f.display());
        assert!(moov_before_mdat(f), "{} is faststart", f.display());
        all.extend(packets(f, "v"));
    }
    assert_eq!(hashes(all), hashes(packets(&src, "v")), "MP4 files add up to the source");
    let audio: Vec<String> = mp4.iter().flat_map(|f| hashes(packets(f, "a"))).collect();
    assert_eq!(audio, hashes(packets(&src, "a")), "MP4 audio adds up to the source");
}

/// Top-level boxes: `moov` comes before `mdat`.
fn moov_before_mdat(path: &Path) -> bool {
    let data = std::fs::read(path).unwrap();
    let mut pos = 0usize;
    let mut order = Vec::new();
    while pos + 8 <= data.len() {
        let mut size = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as u64;
        let kind = String::from_utf8_lossy(&data[pos + 4..pos + 8]).to_string();
        if size == 1 {
            size = u64::from_be_bytes(data[pos + 8..pos + 16].try_into().unwrap());
        }
        order.push(kind);
        if size < 8 {
            break;
        }
        pos += size as usize;
    }
    let moov = order.iter().position(|k| k == "moov");
    let mdat = order.iter().position(|k| k == "mdat");
    matches!((moov, mdat), (Some(a), Some(b)) if a < b)
}

#[test]
fn sigkill_loses_at_most_two_seconds_of_mp4() {
    let src = fixture("av", 20, true, true);
    let mut reel = Reel::start("sigkill-mp4", &config("[\"mp4\", \"flv\"]", "30m", "6s"));
    let mut publisher = ffmpeg_publisher(&src, &reel.url("live", "crash"));
    std::thread::sleep(Duration::from_secs(6));
    let mut child = reel.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_after = 6.0;
    let _ = publisher.kill();
    let _ = publisher.wait();
    let partial = reel.recordings().join(".partial");
    for ext in ["mp4", "flv"] {
        let parts: Vec<PathBuf> = std::fs::read_dir(&partial)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(&format!(".{ext}.part")))
            .collect();
        assert_eq!(parts.len(), 1, "{ext} partial file left by the crash: {parts:?}");
        let out = reel.dir.join(format!("recovered.{ext}"));
        run(std::process::Command::new(REEL).arg("recover").arg(&parts[0]).arg("-o").arg(&out));
        assert_eq!(decode_errors(&out), "", "recovered {ext} decodes cleanly");
        let got = packets(&out, "v");
        let want = packets(&src, "v");
        // The publisher ran ~6 s at real time; everything but the last 2 s must be there.
        let seconds = got.len() as f64 / 25.0;
        assert!(seconds >= killed_after - 2.0 - 1.0, "{ext}: recovered {seconds:.2} s of ~{killed_after} s");
        assert_eq!(
            hashes(got.clone()),
            hashes(want[..got.len()].to_vec()),
            "{ext}: recovered packets are the source's"
        );
    }
}

/// Video tags of the complete tags at the start of an FLV file being written.
fn flv_video_tags(bytes: &[u8]) -> usize {
    let (mut at, mut video) = (13, 0);
    while at + 11 <= bytes.len() {
        let size = u32::from_be_bytes([0, bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if at + 11 + size + 4 > bytes.len() {
            break;
        }
        video += usize::from(bytes[at] & 0x1f == 9);
        at += 11 + size + 4;
    }
    video
}

/// Each read of the publisher's connection (a beat, 200 ms of media) is written at its end,
/// however large the batch and long the flush interval are set: its frames are not copied out
/// of their read buffer to wait for the batch.
#[test]
fn each_read_is_written_at_its_end_whatever_the_batch_settings() {
    let src = fixture("av", 20, true, true);
    let batch = "flush_bytes = 67108864\nflush_interval = \"60s\"\n";
    let mut reel = Reel::start("read-written", &format!("{batch}{}", config("[\"flv\"]", "30m", "6s")));
    let mut publisher = ffmpeg_publisher(&src, &reel.url("live", "beat"));
    std::thread::sleep(Duration::from_secs(6));
    let parts = files(&reel.recordings().join(".partial"), "part");
    let written = parts.first().map(|p| std::fs::read(p).unwrap()).unwrap_or_default();
    let _ = publisher.kill();
    let _ = publisher.wait();
    assert_eq!(parts.len(), 1, "one FLV being written: {parts:?}\n{}", reel.log_text());
    // ~6 s were sent at real time (25 frames a second): all but the last beats are written
    // (3 s: room for ffmpeg's start on a loaded machine; a batch would hold all but the first).
    let frames = flv_video_tags(&written);
    assert!(frames >= 3 * 25, "{frames} video frames written after 6 s of publishing");
    assert!(reel.stop().success());
}

/// `{EscapedStartTime}_{EscapedEndTime}` of a built-in name, as Unix seconds.
fn name_times(p: &Path) -> (i64, i64) {
    let stem = p.file_stem().unwrap().to_str().unwrap();
    let secs = |t: &str| {
        let n: Vec<i64> = t.split('-').map(|x| x.parse().unwrap()).collect();
        // Days from the civil date (proleptic Gregorian), enough for an ordering and a difference.
        let (y, m, d) = if n[1] <= 2 { (n[0] - 1, n[1] + 9, n[2]) } else { (n[0], n[1] - 3, n[2]) };
        let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + d;
        days * 86400 + n[3] * 3600 + n[4] * 60 + n[5]
    };
    let (start, end) = stem.split_at(stem.len() / 2);
    (secs(start), secs(&end[1..]))
}

#[test]
fn hls_playlist_gets_its_final_name_with_the_real_end_time_at_close() {
    let src = fixture("av", 6, true, true);
    let reel = Reel::start("hls-name", &config("[\"hls\"]", "30m", "2s"));
    let url = reel.url("live", "named");
    let publisher = std::thread::spawn(move || ffmpeg_publish(&src, &url, true));
    let dir = reel.recordings().join("live/named");
    // While recording: one playlist at a name that does not change, whose end is its start.
    let (live, _) = wait_files(&dir, "m3u8", 1, Duration::from_secs(10));
    assert_eq!(live.len(), 1, "{}", reel.log_text());
    let (s, e) = name_times(&live[0]);
    assert_eq!(s, e, "live name {}", live[0].display());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(files(&dir, "m3u8"), live, "the live playlist keeps its name while it grows");
    publisher.join().unwrap();
    let (pl, text) = final_playlist(&dir);
    assert_ne!(pl, live[0], "renamed at close");
    let (s2, e2) = name_times(&pl);
    assert_eq!(s2, s);
    assert!(e2 - s2 >= 4, "a 6 s publish ends 4+ s after it starts: {}", pl.display());
    // Its segments are where it says.
    let segs: Vec<&str> = text.lines().filter(|l| l.ends_with(".ts")).collect();
    assert_eq!(segs.len(), 3, "{text}");
    for seg in &segs {
        assert!(pl.parent().unwrap().join(seg).exists(), "{seg}");
    }
    assert_eq!(decode_errors(&pl), "");
}

/// While a playlist records, its segments' lines are kept in a file of their own under
/// `data_dir/playlists/`, not in memory: the stored live playlist is its header followed by that
/// file. The file goes when the playlist closes; one a crash left goes at the next start.
#[test]
fn hls_playlist_lines_are_kept_in_a_file_while_it_records() {
    let dir = test_dir("hls-lines");
    let lines_dir = dir.join("reel-data/playlists");
    std::fs::create_dir_all(&lines_dir).unwrap();
    let stale = lines_dir.join("left-by-a-crash.m3u8");
    std::fs::write(&stale, "#EXTINF:2.000,\nx.ts\n").unwrap();
    let src = fixture("av", 10, true, true);
    let reel = Reel::start_in(dir.clone(), &config("[\"hls\"]", "30m", "2s"));
    assert!(!stale.exists(), "cleared at start");
    let url = reel.url("live", "lines");
    let publisher = std::thread::spawn(move || ffmpeg_publish(&src, &url, true));
    let rec = reel.recordings().join("live/lines");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (lines, live) = loop {
        // Read the file, then the playlist (stored after the file took its lines): the same
        // segments unless one came in between.
        let lines = files(&lines_dir, "m3u8").first().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        let live = files(&rec, "m3u8").first().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        if lines.matches("#EXTINF").count() >= 2 && live.ends_with(&lines) {
            break (lines, live);
        }
        assert!(std::time::Instant::now() < deadline, "lines {lines:?}\nlive {live:?}\n{}", reel.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    let header = &live[..live.len() - lines.len()];
    assert!(header.starts_with("#EXTM3U\n") && !header.contains("#EXTINF"), "{live}");
    assert!(lines.starts_with("#EXT-X-PROGRAM-DATE-TIME:") && lines.ends_with(".ts\n"), "{lines}");
    publisher.join().unwrap();
    let (pl, text) = final_playlist(&rec);
    assert_eq!(text.matches("#EXTINF").count(), 5, "10 s in 2 s segments:\n{text}");
    assert!(text.contains(&lines.lines().next().unwrap().to_string()), "the same lines, final: {text}");
    assert_eq!(files(&lines_dir, "m3u8"), Vec::<PathBuf>::new(), "the lines' file goes at close");
    assert_eq!(decode_errors(&pl), "");
}

/// An MP4 is finished where it was written: the file published under its name is the one the
/// recording wrote into (same inode), its moov first, every packet the source's.
#[test]
fn mp4_closes_in_place_without_copying_its_body() {
    use std::os::unix::fs::MetadataExt;
    let src = fixture("av", 6, true, true);
    let reel = Reel::start("mp4-in-place", &config("[\"mp4\"]", "30s", "6s"));
    let url = reel.url("live", "inplace");
    let publisher = std::thread::spawn({
        let src = src.clone();
        move || ffmpeg_publish(&src, &url, true)
    });
    let partial = reel.recordings().join(".partial");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let inode = loop {
        let found = std::fs::read_dir(&partial).into_iter().flatten().flatten().find(|e| {
            e.file_name().to_string_lossy().ends_with(".mp4.part") && e.metadata().is_ok_and(|m| m.len() > 0)
        });
        if let Some(m) = found.and_then(|e| e.metadata().ok()) {
            break m.ino();
        }
        assert!(std::time::Instant::now() < deadline, "no MP4 being written: {}", reel.log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    publisher.join().unwrap();
    let (mp4, _) = wait_files(&reel.recordings().join("live/inplace"), "mp4", 1, Duration::from_secs(10));
    assert_eq!(mp4.len(), 1, "{}", reel.log_text());
    assert_eq!(std::fs::metadata(&mp4[0]).unwrap().ino(), inode, "the written file, not a copy");
    assert!(moov_before_mdat(&mp4[0]));
    assert_eq!(decode_errors(&mp4[0]), "");
    assert_eq!(hashes(packets(&mp4[0], "v")), hashes(packets(&src, "v")));
    assert_eq!(hashes(packets(&mp4[0], "a")), hashes(packets(&src, "a")));
}
