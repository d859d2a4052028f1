//! Recordings judged by strict validators, not only by players: tstools' `tsreport` over every
//! MPEG-TS segment (PCR gaps over 100 ms, access units arriving after their decode time), an
//! ISO BMFF check that the durations cover every presented sample, and GStreamer decoding what
//! GStreamer's own `rtmp2sink` published, frame-complete.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reel_test_support::ffmpeg::{flv_fixture, tsreport};
use reel_test_support::mp4::{be32, be64, children};

use crate::common::*;

const ALL_FORMATS: &str = "[storage.local]\nkind = \"fs\"\nroot = \"recordings\"\n[template.default]\nformats = [\"flv\", \"hls\", \"mp4\"]\nhls_segment = \"2s\"\nstorage = \"local\"\n[[rule]]\ntemplate = \"default\"\n";

fn assert_ts_valid(segments: &[PathBuf]) {
    assert!(!segments.is_empty(), "TS segments");
    for s in segments {
        let r = tsreport(s);
        let found = (r.bad_pcr_gaps, r.late, r.repeated_pcrs);
        assert_eq!(found, (0, 0, 0), "{}: (bad PCR gaps, DTS < PCR, repeated PCRs):\n{}", s.display(), r.text);
    }
}

// --- ISO BMFF ------------------------------------------------------------------------------

/// The first box `kind` directly inside `data`; every box there must fit inside `data`.
fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    let all: Vec<([u8; 4], &[u8])> = children(data).collect();
    all.into_iter().find(|(k, _)| k == kind).map(|(_, b)| b)
}

/// (version, duration) of an mvhd/tkhd/mdhd body, and its timescale where it has one.
fn timed(body: &[u8], tkhd: bool) -> (u64, u32) {
    let v1 = body[0] == 1;
    let (ts_at, dur_at) = match (v1, tkhd) {
        (true, true) => (0, 28),
        (false, true) => (0, 20),
        (true, false) => (20, 24),
        (false, false) => (12, 16),
    };
    let duration = if v1 { be64(&body[dur_at..]) } else { u64::from(be32(&body[dur_at..])) };
    let timescale = if tkhd { 0 } else { be32(&body[ts_at..]) };
    (duration, timescale)
}

/// Checks an MP4's durations against its samples: per track, the presented duration (the edit
/// list's, else the media's) reaches the end of every presented sample, and tkhd and mvhd are
/// at least that long. Returns the tracks' presented durations in seconds.
fn assert_mp4_durations_cover_samples(path: &Path) -> Vec<f64> {
    let data = std::fs::read(path).unwrap();
    let moov = child(&data, b"moov").expect("moov");
    let (movie, movie_ts) = timed(child(moov, b"mvhd").unwrap(), false);
    let mut out = Vec::new();
    for (_, trak) in children(moov).filter(|(k, _)| k == b"trak") {
        let (track_dur, _) = timed(child(trak, b"tkhd").unwrap(), true);
        let mdia = child(trak, b"mdia").unwrap();
        let (media_dur, ts) = timed(child(mdia, b"mdhd").unwrap(), false);
        let stbl = child(child(mdia, b"minf").unwrap(), b"stbl").unwrap();
        let stts = child(stbl, b"stts").unwrap();
        let mut deltas = Vec::new();
        for i in 0..be32(&stts[4..]) as usize {
            let (n, d) = (be32(&stts[8 + 8 * i..]), be32(&stts[12 + 8 * i..]));
            deltas.extend(std::iter::repeat_n(d as i64, n as usize));
        }
        let mut offsets = vec![0i64; deltas.len()];
        if let Some(ctts) = child(stbl, b"ctts") {
            let mut k = 0;
            for i in 0..be32(&ctts[4..]) as usize {
                let n = be32(&ctts[8 + 8 * i..]) as usize;
                let raw = be32(&ctts[12 + 8 * i..]);
                let c = if ctts[0] == 1 { i64::from(raw as i32) } else { i64::from(raw) };
                offsets[k..k + n].fill(c);
                k += n;
            }
        }
        let (mut t, mut lo, mut hi) = (0i64, i64::MAX, i64::MIN);
        for (d, c) in deltas.iter().zip(&offsets) {
            lo = lo.min(t + c);
            hi = hi.max(t + c + d);
            t += d;
        }
        // The presented window: the (last) edit, or the whole media.
        let (start, presented) = match child(trak, b"edts").and_then(|e| child(e, b"elst")) {
            Some(elst) => {
                let n = be32(&elst[4..]) as usize;
                let v1 = elst[0] == 1;
                let w = if v1 { 20 } else { 12 };
                let e = &elst[8 + (n - 1) * w..];
                let (seg, mt) = if v1 {
                    (be64(e), be64(&e[8..]) as i64)
                } else {
                    (u64::from(be32(e)), i64::from(be32(&e[4..]) as i32))
                };
                (mt, seg as f64 / f64::from(movie_ts))
            }
            None => (0, media_dur as f64 / f64::from(ts)),
        };
        let need = (hi - start) as f64 / f64::from(ts);
        let name = path.display();
        assert!(presented + 0.0015 >= need, "{name}: presents {presented} s, samples run to {need} s");
        assert!(media_dur as i64 + 1 >= hi - lo.min(0), "{name}: mdhd {media_dur} < sample end {hi}");
        assert!(track_dur as f64 / f64::from(movie_ts) + 0.0015 >= presented, "{name}: tkhd shorter than its edit");
        assert!(movie >= track_dur, "{name}: mvhd shorter than a track");
        out.push(presented);
    }
    out
}

// --- publishes -----------------------------------------------------------------------------

/// An FLV made by ffmpeg: 8 s of H.264 with `bframes` B-frames (`None`: audio only) and AAC.
fn source(name: &str, bframes: Option<u32>) -> PathBuf {
    flv_fixture(&format!("validators-{name}"), 8, true, bframes)
}

fn recorded(reel: &Reel, stream: &str) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
    let dir = reel.recordings().join("live").join(stream);
    crate::formats::final_playlist(&dir);
    let (mp4, _) = wait_files(&dir, "mp4", 1, Duration::from_secs(10));
    let (flv, _) = wait_files(&dir, "flv", 1, Duration::from_secs(10));
    (files(&dir, "ts"), mp4, flv)
}

#[test]
fn ffmpeg_publishes_pass_the_validators_with_and_without_b_frames_and_audio_only() {
    let reel = Reel::start("validators-ffmpeg", ALL_FORMATS);
    for (name, bframes) in [("bframes", Some(2)), ("nobframes", Some(0)), ("audio", None)] {
        let src = source(name, bframes);
        ffmpeg_publish(&src, &reel.url("live", name), false);
        let (ts, mp4, flv) = recorded(&reel, name);
        assert_ts_valid(&ts);
        assert_eq!(mp4.len(), 1, "{name}: {}", reel.log_text());
        let presented = assert_mp4_durations_cover_samples(&mp4[0]);
        assert!(presented.iter().all(|&d| (7.9..8.2).contains(&d)), "{name}: {presented:?}");
        assert_eq!(decode_errors(&mp4[0]), "", "{name}");
        assert_eq!(decode_errors(&flv[0]), "", "{name}");
        // Segments of a B-frame stream are cut where the keyframe is shown: 2 s each.
        if name == "bframes" {
            assert_eq!(ts.len(), 4, "8 s in 2 s segments: {ts:?}");
        }
    }
}

#[test]
fn offline_remux_passes_the_validators() {
    for (name, bframes) in [("remux-bframes", Some(2)), ("remux-nobframes", Some(0)), ("remux-audio", None)] {
        let src = source(name, bframes);
        let dir = test_dir(&format!("validators-{name}"));
        run(Command::new(REEL)
            .arg("remux")
            .arg(&src)
            .args(["-f", "hls", "--segment", "2s", "-o"])
            .arg(dir.join("o.m3u8")));
        run(Command::new(REEL).arg("remux").arg(&src).args(["-f", "mp4", "-o"]).arg(dir.join("o.mp4")));
        assert_ts_valid(&files(&dir, "ts"));
        assert_mp4_durations_cover_samples(&dir.join("o.mp4"));
    }
}

/// Frames GStreamer decodes from `path` (`demux` names its demuxer).
fn gst_decoded_frames(path: &Path, demux: &str) -> usize {
    let out = Command::new("gst-launch-1.0")
        .arg("-v")
        .arg("filesrc")
        .arg(format!("location={}", path.display()))
        .args(["!", demux, "!", "h264parse", "!", "openh264dec", "!", "fakesink", "silent=false"])
        .output()
        .unwrap();
    assert!(out.status.success(), "gst decode of {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("fakesink0: last-message = chain")).count()
}

#[test]
fn a_gstreamer_rtmp2sink_publish_is_decoded_frame_complete_by_gstreamer() {
    assert!(have("gst-launch-1.0"), "GStreamer is needed: tests/run installs it");
    let reel = Reel::start("validators-gst", ALL_FORMATS);
    let pipeline = format!(
        "videotestsrc num-buffers=600 is-live=true ! video/x-raw,framerate=30/1,width=320,height=240 ! openh264enc \
         ! h264parse ! flvmux name=m streamable=true ! rtmp2sink location={} \
         audiotestsrc is-live=true num-buffers=940 ! voaacenc ! aacparse ! m.",
        reel.url("live", "gst")
    );
    let out = Command::new("gst-launch-1.0").args(pipeline.split_whitespace()).output().unwrap();
    assert!(out.status.success(), "rtmp2sink publish: {}", String::from_utf8_lossy(&out.stderr));
    let (ts, mp4, flv) = recorded(&reel, "gst");
    assert_eq!(gst_decoded_frames(&mp4[0], "qtdemux"), 600, "MP4: {}", reel.log_text());
    assert_eq!(gst_decoded_frames(&flv[0], "flvdemux"), 600, "FLV");
    assert_ts_valid(&ts);
    let presented = assert_mp4_durations_cover_samples(&mp4[0]);
    assert!(presented.iter().any(|&d| d >= 19.99), "20 s of video presented: {presented:?}");
}

#[test]
fn a_librtmp_publish_passes_the_validators() {
    assert!(have("gst-launch-1.0"), "GStreamer's rtmpsink is needed: tests/run installs it");
    let src = source("librtmp", Some(2));
    let reel = Reel::start("validators-librtmp", ALL_FORMATS);
    // rtmpsink is GStreamer's librtmp-based sink; flvdemux/flvmux pass the payloads through.
    let pipeline = format!(
        "filesrc location={} ! flvdemux name=d d.video ! queue ! flvmux name=m streamable=true ! rtmpsink location={} d.audio ! queue ! aacparse ! m.",
        src.display(),
        reel.url("live", "librtmp")
    );
    run(Command::new("gst-launch-1.0").arg("-q").args(pipeline.split_whitespace()));
    let (ts, mp4, _) = recorded(&reel, "librtmp");
    assert_ts_valid(&ts);
    assert_mp4_durations_cover_samples(&mp4[0]);
    assert_eq!(decode_errors(&mp4[0]), "");
}
