//! MP4 from FLV and Enhanced RTMP (HEVC, AV1): the live file finished in place at close (the
//! offline one laid out anew), and crash recovery of a torn file.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use reel::media::flv::{parse_tag, TAG_VIDEO};
use reel::media::Frame;
use reel::mux::mp4::{recover, Mp4Muxer, Mp4Stats};
use reel::mux::ts::TsMuxer;
use reel::mux::{Muxer, Rewrite};
use reel_test_support::ffmpeg::{
    assert_decodes_cleanly, assert_same_packets, ffmpeg_argv, format_seconds, need_encoder, timed_packets, tsreport,
    Dir, AV_ARGS,
};
use reel_test_support::mp4::{check_tree, children, find, read_fragmented, read_progressive, top_level};

use crate::read_frames;

struct Muxed {
    temp: Vec<u8>,
    rewrite: Option<Rewrite>,
    stats: Mp4Stats,
}

/// A live muxer's file (30 s files: room reserved for the moov).
fn mux(frames: &[Frame]) -> Muxed {
    mux_with(Mp4Muxer::reserving(30_000), frames)
}

fn mux_with(mut m: Mp4Muxer, frames: &[Frame]) -> Muxed {
    let mut out = Vec::new();
    let mut temp = Vec::new();
    for f in frames {
        m.push(f, &mut out).unwrap();
        for b in out.drain(..) {
            temp.extend_from_slice(&b);
        }
        assert_eq!(m.bytes_written(), temp.len() as u64);
    }
    let rewrite = m.finish(&mut out).unwrap();
    for b in out.drain(..) {
        temp.extend_from_slice(&b);
    }
    assert_eq!(m.bytes_written(), temp.len() as u64);
    Muxed { temp, rewrite, stats: m.stats() }
}

/// The final file: `head`, the ranges of `body`, `tail`.
fn apply(body: &[u8], rw: &Rewrite) -> Vec<u8> {
    let mut v = rw.head.to_vec();
    for r in &rw.ranges {
        v.extend_from_slice(&body[r.start as usize..r.end as usize]);
    }
    v.extend_from_slice(&rw.tail);
    v
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Checks a finished file against its source: decodes cleanly, same packets, duration, moov
/// first, finished in place (the media where it was written).
fn check_against_source(dir: &Dir, src: &Path, m: &Muxed, maps: &[&str], frame_ms: f64) {
    let out = dir.path("out.mp4");
    let rw = m.rewrite.as_ref().expect("a rewrite");
    let file = apply(&m.temp, rw);
    assert_eq!((rw.ranges.len(), rw.ranges[0].start, rw.tail.len()), (1, rw.head.len() as u64, 0), "in place");
    assert_eq!(&file[rw.head.len()..], &m.temp[rw.head.len()..]);
    std::fs::write(&out, &file).unwrap();
    assert_decodes_cleanly(&out);
    for map in maps {
        let tolerance = if *map == "0:a" { 1.0 } else { 0.01 };
        assert_same_packets(src, &out, map, tolerance);
    }
    // An FLV's duration counts from timestamp 0, an MP4's from its first presented sample
    // (ffmpeg's own FLV to MP4 remux does the same): compare the presented spans.
    let ds = format_seconds(src, "duration") - format_seconds(src, "start_time");
    let d = format_seconds(&out, "duration");
    assert!((ds - d).abs() * 1000.0 <= frame_ms, "duration {d} vs source {ds}");
    assert!(format_seconds(&out, "start_time").abs() < 1e-6, "the MP4 starts at 0");
    let tl = top_level(&file);
    assert_eq!(&tl[..2], &[*b"ftyp", *b"moov"], "moov first");
    assert!(tl[2..].iter().all(|k| k == b"free" || k == b"mdat"), "{tl:?}");
    check_tree(&file);
    assert_eq!(recover(&m.temp).unwrap().as_ref(), Some(rw), "recovering the whole file = finish()");
}

/// The FLV source: [`AV_ARGS`] with the output options `extra` (`-an`: video only).
fn make_flv(dir: &Dir, extra: &str) -> PathBuf {
    dir.make_flv("src.flv", &format!("{AV_ARGS} {extra}"))
}

#[test]
fn golden_h264_with_b_frames_and_aac() {
    let dir = Dir::new("av");
    let src = make_flv(&dir, "");
    let m = mux(&read_frames(&src));
    assert_eq!(m.stats.dropped_before_keyframe + m.stats.dropped_no_track + m.stats.dropped_preroll, 0);
    check_against_source(&dir, &src, &m, &["0:v", "0:a"], 40.0);
    let t = read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()));
    assert!(t[0].samples.iter().any(|s| s.2 != t[0].samples[0].2), "B-frames: varying composition offsets");

    // Offline (`reel remux`): nothing reserved, laid out anew with the moov first; the same
    // samples.
    let offline = mux_with(Mp4Muxer::new(), &read_frames(&src));
    let file = apply(&offline.temp, offline.rewrite.as_ref().unwrap());
    assert_eq!(&top_level(&file)[..2], &[*b"ftyp", *b"moov"]);
    let out = dir.path("offline.mp4");
    std::fs::write(&out, &file).unwrap();
    assert_decodes_cleanly(&out);
    assert_eq!(read_progressive(&file), t);
}

#[test]
fn golden_video_only() {
    let dir = Dir::new("video");
    let src = make_flv(&dir, "-an");
    let m = mux(&read_frames(&src));
    check_against_source(&dir, &src, &m, &["0:v"], 40.0);
}

#[test]
fn golden_audio_only() {
    let dir = Dir::new("audio");
    let src = make_flv(&dir, "-vn");
    let m = mux(&read_frames(&src));
    check_against_source(&dir, &src, &m, &["0:a"], 24.0);
}

#[test]
fn golden_mp3_audio() {
    need_encoder("libmp3lame");
    let dir = Dir::new("mp3");
    let src = dir.make_flv("src.flv", "-f lavfi -i sine=frequency=440:sample_rate=44100 -t 4 -c:a libmp3lame");
    let m = mux(&read_frames(&src));
    check_against_source(&dir, &src, &m, &["0:a"], 27.0);
}

#[test]
fn golden_crash_recovery() {
    let dir = Dir::new("crash");
    let src = make_flv(&dir, "");
    let m = mux(&read_frames(&src));
    let finished = dir.path("finished.mp4");
    std::fs::write(&finished, apply(&m.temp, m.rewrite.as_ref().unwrap())).unwrap();
    assert_eq!(recover(&m.temp).unwrap(), m.rewrite, "recovering a whole file = finish()");
    let all_v = timed_packets(&finished, "0:v");
    let all_a = timed_packets(&finished, "0:a");

    // Fragment layout of the temp file: (payload start, payload end, samples per track, media
    // end ms).
    let layout = read_fragmented(&m.temp);
    let tracks = &layout.tracks;
    let mut frags = Vec::new();
    for f in &layout.fragments {
        let mut n = [0usize; 2];
        let mut end_ms = 0.0f64;
        for run in &f.runs {
            let i = tracks.iter().position(|t| t.id == run.track_id).unwrap();
            n[i] = run.samples.len();
            let dur: u64 = run.samples.iter().map(|s| u64::from(s.duration)).sum();
            end_ms = end_ms.max((run.tfdt.unwrap() + dur) as f64 * 1000.0 / f64::from(tracks[i].timescale));
        }
        frags.push((f.payload.start, f.payload.end, n, end_ms));
    }
    assert!(frags.len() >= 6, "{} fragments", frags.len());
    // Mid-moof, mid-mdat, one byte short of the end, at a boundary: for several fragments.
    let mut cuts = Vec::new();
    for k in [1, 2, frags.len() / 2, frags.len() - 2, frags.len() - 1] {
        let (start, end, _, _) = frags[k];
        cuts.push(start as usize - 20);
        cuts.push(((start + end) / 2) as usize);
        cuts.push(end as usize - 1);
    }
    cuts.push(frags[3].1 as usize);
    for (i, cut) in cuts.into_iter().enumerate() {
        let kept: Vec<_> = frags.iter().filter(|f| f.1 as usize <= cut).collect();
        let torn = frags.iter().find(|f| f.1 as usize > cut);
        let rw = recover(&m.temp[..cut]).unwrap().unwrap();
        let out = dir.path(&format!("recovered-{i}.mp4"));
        std::fs::write(&out, apply(&m.temp[..cut], &rw)).unwrap();
        assert_decodes_cleanly(&out);
        let want_v: usize = kept.iter().map(|f| f.2[0]).sum();
        let want_a: usize = kept.iter().map(|f| f.2[1]).sum();
        let (v, a) = (timed_packets(&out, "0:v"), timed_packets(&out, "0:a"));
        assert_eq!((v.len(), a.len()), (want_v, want_a), "cut {cut}: every sample of every complete fragment");
        for (x, y) in v.iter().zip(&all_v).chain(a.iter().zip(&all_a)) {
            assert_eq!(x, y, "cut {cut}: same packets as the finished file");
        }
        // What is lost is the torn fragment: at most the last 2 s of media.
        if let Some(t) = torn {
            let kept_end = kept.last().map_or(0.0, |f| f.3);
            assert!(t.3 - kept_end <= 2000.0, "cut {cut}: lost {} ms", t.3 - kept_end);
        }
    }
    // Cut inside the init segment or the first fragment: nothing to recover, no error.
    assert!(recover(&m.temp[..100]).unwrap().is_none());
    assert!(recover(&m.temp[..frags[0].1 as usize - 1]).unwrap().is_none());
}

/// Turns an ffmpeg-made fragmented MP4 (one video track) into Enhanced RTMP frames.
fn frames_from_fmp4(path: &Path, fourcc: &[u8; 4], config_box: &[u8; 4]) -> Vec<Frame> {
    let data = std::fs::read(path).unwrap();
    let file = read_fragmented(&data);
    let track = file.tracks.iter().find(|t| &t.handler == b"vide").unwrap();
    let entry = &track.sample_entry;
    let record = children(&entry[86..]).find(|(k, _)| k == config_box).map(|(_, b)| b.to_vec()).unwrap();
    let ms = |ticks: i64| {
        assert_eq!(ticks * 1000 % i64::from(track.timescale), 0, "timestamps map to ms exactly");
        ticks * 1000 / i64::from(track.timescale)
    };
    let mut tag = vec![0x90];
    tag.extend_from_slice(fourcc);
    tag.extend_from_slice(&record);
    let mut frames = vec![parse_tag(TAG_VIDEO, 0, Bytes::from(tag)).unwrap()];
    for f in &file.fragments {
        for run in f.runs.iter().filter(|run| run.track_id == track.id) {
            let mut time = run.tfdt.unwrap() as i64;
            let mut pos = run.data_start as usize;
            for s in &run.samples {
                let mut tag = vec![if s.sync { 0x91 } else { 0xa1 }];
                tag.extend_from_slice(fourcc);
                if fourcc != b"av01" {
                    tag.extend_from_slice(&(ms(i64::from(s.cts)) as u32).to_be_bytes()[1..]);
                }
                tag.extend_from_slice(&data[pos..pos + s.size as usize]);
                frames.push(parse_tag(TAG_VIDEO, ms(time), Bytes::from(tag)).unwrap());
                time += i64::from(s.duration);
                pos += s.size as usize;
            }
        }
    }
    frames
}

/// Frames of `seconds` of testsrc2 encoded by `encoder`, as Enhanced RTMP carries them, and
/// the fragmented MP4 they came from.
fn enhanced_frames(
    dir: &Dir,
    seconds: u32,
    encoder: &[&str],
    fourcc: &[u8; 4],
    config_box: &[u8; 4],
) -> (Vec<Frame>, PathBuf) {
    // Encode, then fragment in a second pass: with `empty_moov` an encoder's configuration
    // record is not known yet when ffmpeg writes the init segment (libaom: an empty av1C).
    let plain = dir.path("plain.mp4");
    let src = dir.path("src.mp4");
    let t = seconds.to_string();
    let mut args = vec!["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", &t];
    args.extend_from_slice(encoder);
    args.push(p(&plain));
    ffmpeg_argv(&args);
    ffmpeg_argv(&[
        "-i",
        p(&plain),
        "-c",
        "copy",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
        "-f",
        "mp4",
        p(&src),
    ]);
    (frames_from_fmp4(&src, fourcc, config_box), src)
}

fn golden_enhanced(name: &str, encoder: &[&str], fourcc: &[u8; 4], config_box: &[u8; 4]) {
    let dir = Dir::new(name);
    let (frames, src) = enhanced_frames(&dir, 3, encoder, fourcc, config_box);
    let m = mux(&frames);
    let file = apply(&m.temp, m.rewrite.as_ref().unwrap());
    let out = dir.path("out.mp4");
    std::fs::write(&out, &file).unwrap();
    assert_decodes_cleanly(&out);
    assert_same_packets(&src, &out, "0:v", 0.01);
    let entry = find(&file, &[b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"]).unwrap();
    assert_eq!(&entry[12..16], fourcc);
    let (w, h) =
        (u16::from_be_bytes([entry[8 + 32], entry[8 + 33]]), u16::from_be_bytes([entry[8 + 34], entry[8 + 35]]));
    assert_eq!((w, h), (320, 240), "picture size read from the sequence header");
}

#[test]
fn golden_hevc() {
    need_encoder("libx265");
    golden_enhanced(
        "hevc",
        &["-c:v", "libx265", "-x265-params", "log-level=error:keyint=25:bframes=2", "-tag:v", "hvc1"],
        b"hvc1",
        b"hvcC",
    );
}

#[test]
fn golden_av1() {
    need_encoder("libaom-av1");
    golden_enhanced("av1", &["-c:v", "libaom-av1", "-cpu-used", "8", "-g", "25", "-b:v", "200k"], b"av01", b"av1C");
}

#[test]
fn golden_hevc_with_b_frames_in_ts_passes_tsreport() {
    // HEVC as Enhanced RTMP carries it (hvc1), from an ffmpeg encode with B-frames, muxed to
    // two HLS-style segments of one stream; each decodes and keeps the T-STD timing rules.
    need_encoder("libx265");
    let dir = Dir::new("hevc-ts");
    let hevc = ["-c:v", "libx265", "-x265-params", "log-level=error:keyint=25:bframes=2", "-tag:v", "hvc1"];
    let (frames, _) = enhanced_frames(&dir, 4, &hevc, b"hvc1", b"hvcC");
    assert!(frames.iter().any(|f| f.cts > 0), "B-frames");
    let mut m = TsMuxer::new();
    let (a, b) = frames.split_at(frames.iter().rposition(|f| f.keyframe && f.is_sample()).unwrap());
    for (i, part) in [a, b].into_iter().enumerate() {
        let mut out = Vec::new();
        for f in part {
            m.push(f, &mut out).unwrap();
        }
        m.finish(&mut out).unwrap();
        m.next_segment();
        let seg = dir.path(&format!("seg{i}.ts"));
        std::fs::write(&seg, out.iter().flat_map(|c| c.iter().copied()).collect::<Vec<u8>>()).unwrap();
        assert_decodes_cleanly(&seg);
        let r = tsreport(&seg);
        assert!(r.exit_ok, "tsreport failed on {}:\n{}", seg.display(), r.text);
        assert_eq!((r.bad_pcr_gaps, r.late), (0, 0), "{}: bad PCR gaps, DTS < PCR", seg.display());
    }
}
