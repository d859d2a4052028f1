//! MPEG-TS files and HLS segments from FLV, and HEVC from libx265.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use reel::media::flv::{parse_tag, TAG_VIDEO};
use reel::media::FrameKind;
use reel::mux::hls::{Playlist, Segment};
use reel::mux::ts::{TsMuxer, TsStats, PID_AUDIO, STREAM_TYPE_HEVC};
use reel::mux::{Chunks, Muxer};
use reel_test_support::ffmpeg::{
    assert_decodes_cleanly, assert_same_duration, assert_same_frames, ffmpeg, ffprobe, Dir, AUDIO_ARGS, AV_ARGS,
};
use reel_test_support::ts::demux;

use crate::{mux_file, read_frames, write};

// H.265 NAL unit types (ITU-T H.265 table 7-1).
const HEVC_VPS: u8 = 32;
const HEVC_SPS: u8 = 33;
const HEVC_PPS: u8 = 34;
const HEVC_AUD: u8 = 35;

#[test]
fn golden_ts_with_b_frames_decodes_identically() {
    let g = Dir::new("ts-av");
    let src = g.make_flv("src.flv", AV_ARGS);
    let frames = read_frames(&src);
    assert!(frames.iter().any(|f| f.cts > 0), "the source has B-frames");
    let out = g.path("out.ts");
    let mut m = TsMuxer::new();
    mux_file(&src, &out, &mut m);
    assert_decodes_cleanly(&out);
    assert_same_frames(&src, &out, "v");
    assert_same_frames(&src, &out, "a");
    assert_same_duration(&src, "v", &out, "v", 0.041);
    assert_same_duration(&src, "a", &out, "a", 0.024);
    let st = m.stats();
    assert_eq!(st.video.map(|s| s.frames), Some(150));
    assert_eq!(st.duration_ms(), 6000);
    let ts = std::fs::read(&out).unwrap();
    demux(&ts, &mut Default::default());
}

#[test]
fn golden_ts_audio_only() {
    let g = Dir::new("ts-a");
    let src = g.make_flv("src.flv", AUDIO_ARGS);
    let out = g.path("out.ts");
    mux_file(&src, &out, &mut TsMuxer::new());
    assert_decodes_cleanly(&out);
    assert_same_frames(&src, &out, "a");
    assert_same_duration(&src, "a", &out, "a", 0.022);
    let d = demux(&std::fs::read(&out).unwrap(), &mut Default::default());
    assert!(d.pes.iter().all(|p| p.0 == PID_AUDIO && p.3.is_some()), "audio carries the PCR");
}

#[test]
fn golden_hls_segments_cut_at_keyframes_play_as_one_stream() {
    let g = Dir::new("hls");
    let src = g.make_flv("src.flv", AV_ARGS);
    let frames = read_frames(&src);

    let mut m = TsMuxer::new();
    let mut chunks = Vec::new();
    let mut files: Vec<(String, TsStats)> = Vec::new();
    let close = |m: &mut TsMuxer, chunks: &mut Chunks, files: &mut Vec<(String, TsStats)>| {
        m.finish(chunks).unwrap();
        let name = format!("seg{}.ts", files.len());
        write(&g.path(&name), chunks);
        chunks.clear();
        files.push((name, m.stats()));
        m.reset_for_next_segment();
    };
    for f in &frames {
        let cut = f.kind == FrameKind::Video && f.is_sample() && f.keyframe;
        if cut && m.stats().video.is_some_and(|s| f.pts() - s.start_ms >= 1900) {
            close(&mut m, &mut chunks, &mut files);
        }
        m.push(f, &mut chunks).unwrap();
    }
    close(&mut m, &mut chunks, &mut files);
    assert_eq!(files.len(), 3);

    // Segment duration: to the next segment's start; the last one to its own end.
    let base_wall_ms = 1_795_352_709_120u64;
    let first = files[0].1.start_ms().unwrap();
    let mut pl = Playlist::new(2);
    for (i, (name, st)) in files.iter().enumerate() {
        let start = st.start_ms().unwrap();
        let end = files.get(i + 1).and_then(|n| n.1.start_ms()).or(st.end_ms()).unwrap();
        pl.segments.push(Segment {
            uri: name.clone(),
            duration_secs: (end - start) as f64 / 1000.0,
            program_date_time_ms: Some(base_wall_ms + (start - first) as u64),
            discontinuity: false,
        });
    }
    pl.ended = true;
    assert!(pl.segments.iter().all(|s| (s.duration_secs - 2.0).abs() < 1e-9));
    let m3u8 = g.path("index.m3u8");
    std::fs::write(&m3u8, pl.render()).unwrap();

    // Continuity counters run on across the files.
    let mut cc = HashMap::new();
    for (name, _) in &files {
        let d = demux(&std::fs::read(g.path(name)).unwrap(), &mut cc);
        assert!(d.pes[0].2, "each segment opens with a keyframe");
        assert_decodes_cleanly(&g.path(name));
    }
    assert_decodes_cleanly(&m3u8);
    assert_same_frames(&src, &m3u8, "v");
    assert_same_frames(&src, &m3u8, "a");
    let counts = |p: &Path| {
        let probed =
            ffprobe("-v error -count_frames -show_entries stream=codec_type,nb_read_frames -of csv=p=0 {}", &[p]);
        // The HLS demuxer lists its streams under a program too.
        let mut v: Vec<String> = probed.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        v.sort();
        v.dedup();
        v
    };
    let got = counts(&m3u8);
    assert_eq!(got, counts(&src), "ffprobe reads every frame through the playlist");
    assert_eq!(got[1], "video,150");
}

/// HEVC from libx265 (FLV in ffmpeg 5 cannot carry it): the raw Annex-B stream is cut into
/// access units at its delimiters and turned into an HVCC record plus length-prefixed
/// samples, the way an Enhanced RTMP publisher sends them.
#[test]
fn golden_hevc_decodes_identically() {
    let g = Dir::new("ts-hevc");
    let raw = g.path("src.hevc");
    let encoders = ffmpeg("-v error -encoders", &[]);
    assert!(encoders.contains("libx265"), "the HEVC golden test needs ffmpeg's libx265 (Debian's ffmpeg has it)");
    let x265 = "log-level=error:bframes=0:aud=1:keyint=25:min-keyint=25:scenecut=0";
    ffmpeg(
        &format!(
            "-y -v error -f lavfi -i testsrc2=size=192x108:rate=25 -t 3 -c:v libx265 -preset ultrafast \
             -x265-params {x265} -f hevc {{}}"
        ),
        &[&raw],
    );
    let data = std::fs::read(&raw).unwrap();
    // Split at start codes.
    let mut nals: Vec<&[u8]> = Vec::new();
    let mut i = 0;
    let mut start = None;
    while i + 3 <= data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            if let Some(s) = start {
                let mut e = i;
                while e > s && data[e - 1] == 0 {
                    e -= 1;
                }
                nals.push(&data[s..e]);
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        nals.push(&data[s..]);
    }
    let ty = |n: &[u8]| (n[0] >> 1) & 0x3f;
    let mut aus: Vec<Vec<&[u8]>> = Vec::new();
    for n in nals {
        if ty(n) == HEVC_AUD || aus.is_empty() {
            aus.push(Vec::new());
        }
        aus.last_mut().unwrap().push(n);
    }
    let mut rec = vec![1u8; 21];
    rec.push(0xfc | 3);
    let arrays: Vec<(u8, Vec<&[u8]>)> = [HEVC_VPS, HEVC_SPS, HEVC_PPS]
        .iter()
        .map(|&t| (t, aus[0].iter().copied().filter(|n| ty(n) == t).collect()))
        .collect();
    rec.push(arrays.len() as u8);
    for (t, units) in &arrays {
        rec.push(0x80 | t);
        rec.extend_from_slice(&(units.len() as u16).to_be_bytes());
        for u in units {
            rec.extend_from_slice(&(u.len() as u16).to_be_bytes());
            rec.extend_from_slice(u);
        }
    }
    let mut tag = vec![0x90, b'h', b'v', b'c', b'1'];
    tag.extend_from_slice(&rec);
    let mut frames = vec![parse_tag(TAG_VIDEO, 0, Bytes::from(tag)).unwrap()];
    for (k, au) in aus.iter().enumerate() {
        let key = au.iter().any(|n| (16..=23).contains(&ty(n)));
        let mut tag = vec![if key { 0x91 } else { 0xa1 }, b'h', b'v', b'c', b'1', 0, 0, 0];
        // The first access unit keeps its in-band parameter sets; later keyframes rely on
        // the muxer to repeat them from the record.
        for n in au.iter().filter(|n| ty(n) != HEVC_AUD) {
            tag.extend_from_slice(&(n.len() as u32).to_be_bytes());
            tag.extend_from_slice(n);
        }
        frames.push(parse_tag(TAG_VIDEO, k as i64 * 40, Bytes::from(tag)).unwrap());
    }
    assert_eq!(frames.len(), 76);
    let mut m = TsMuxer::new();
    let mut chunks = Vec::new();
    for f in &frames {
        m.push(f, &mut chunks).unwrap();
    }
    m.finish(&mut chunks).unwrap();
    let out = g.path("out.ts");
    write(&out, &chunks);
    assert_decodes_cleanly(&out);
    assert_same_frames(&raw, &out, "v");
    let d = demux(&std::fs::read(&out).unwrap(), &mut Default::default());
    assert_eq!(d.sections[1].1[12], STREAM_TYPE_HEVC);
    assert_eq!(d.pes.iter().filter(|p| p.2).count(), 3, "random access on each IRAP");
}
