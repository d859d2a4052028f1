//! Tests of the MP4 writer: box structure, the moov builder, the writer's cadence and
//! preroll rules, crash recovery, and golden tests against ffmpeg/ffprobe (with `--features
//! golden`).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::boxes::{write_final_moov, write_ftyp, write_init_moov, BoxWriter};
use super::codec::{aac_setup, video_setup};
use super::faststart::finalize;
use super::recover::{children, FragmentReader};
use super::table::{TrackInfo, TrackKind, TrackTable};
use super::*;
use crate::media::flv::{parse_tag, FileReader, TAG_AUDIO, TAG_VIDEO};
use crate::mux::golden;

// ---------------------------------------------------------------------------------------------
// Synthetic streams

/// AVCDecoderConfigurationRecord of a 320x240 High profile libx264 stream.
const AVC_RECORD: &[u8] = &[
    0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10,
    0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60, 0x01, 0x00, 0x06, 0x68, 0xeb,
    0xe3, 0xcb, 0x22, 0xc0,
];

fn video_config(dts: i64) -> Frame {
    let mut tag = vec![0x17, 0, 0, 0, 0];
    tag.extend_from_slice(AVC_RECORD);
    parse_tag(TAG_VIDEO, dts, Bytes::from(tag)).unwrap()
}

fn video(dts: i64, cts: i32, key: bool, n: u32) -> Frame {
    let c = (cts as u32).to_be_bytes();
    let mut tag = vec![if key { 0x17 } else { 0x27 }, 1, c[1], c[2], c[3]];
    let len = 20 + n % 50;
    tag.extend_from_slice(&len.to_be_bytes());
    tag.push(if key { 0x65 } else { 0x41 });
    tag.extend((1..len).map(|i| (i + n) as u8));
    parse_tag(TAG_VIDEO, dts, Bytes::from(tag)).unwrap()
}

fn audio_config(dts: i64) -> Frame {
    parse_tag(TAG_AUDIO, dts, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])).unwrap()
}

fn audio(dts: i64, n: u32) -> Frame {
    let mut tag = vec![0xaf, 1];
    tag.extend((0..10 + n % 30).map(|i| (i * 7 + n) as u8));
    parse_tag(TAG_AUDIO, dts, Bytes::from(tag)).unwrap()
}

/// `secs` of 25 fps video (keyframe every `gop` frames, B-frame style cts) and 44.1 kHz AAC,
/// interleaved by decode time, after both sequence headers.
fn av_stream(secs: i64, gop: u32, with_video: bool, with_audio: bool) -> Vec<Frame> {
    let mut frames = Vec::new();
    if with_video {
        frames.push(video_config(0));
    }
    if with_audio {
        frames.push(audio_config(0));
    }
    let mut media = Vec::new();
    if with_video {
        for i in 0..(secs * 25) as u32 {
            let cts = if i % gop == 0 { 80 } else { [120, 40, 40][(i % 3) as usize] };
            media.push(video(i64::from(i) * 40, cts, i % gop == 0, i));
        }
    }
    if with_audio {
        let n = secs * 44100 / 1024;
        for i in 0..n {
            media.push(audio(1 + (i * 1024 * 1000 + 22050) / 44100, i as u32));
        }
    }
    media.sort_by_key(|f| f.dts);
    frames.extend(media);
    frames
}

struct Muxed {
    temp: Vec<u8>,
    rewrite: Option<Rewrite>,
    stats: Mp4Stats,
    /// Temp file length after each push, to find where fragments went.
    lengths: Vec<usize>,
}

fn mux(frames: &[Frame]) -> Muxed {
    let mut m = Mp4Muxer::new();
    let mut out = Vec::new();
    let mut temp = Vec::new();
    let mut lengths = Vec::new();
    for f in frames {
        m.push(f, &mut out).unwrap();
        for b in out.drain(..) {
            temp.extend_from_slice(&b);
        }
        lengths.push(temp.len());
        assert_eq!(m.bytes_written(), temp.len() as u64);
    }
    let rewrite = m.finish(&mut out).unwrap();
    for b in out.drain(..) {
        temp.extend_from_slice(&b);
    }
    assert_eq!(m.bytes_written(), temp.len() as u64);
    Muxed { temp, rewrite, stats: m.stats(), lengths }
}

fn apply(body: &[u8], rw: &Rewrite) -> Vec<u8> {
    let mut v = rw.head.to_vec();
    for r in &rw.ranges {
        v.extend_from_slice(&body[r.start as usize..r.end as usize]);
    }
    v.extend_from_slice(&rw.tail);
    v
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Asserts the boxes in `data` tile it exactly, recursing into the boxes that contain boxes.
fn check_tree(data: &[u8]) {
    let mut pos = 0;
    while pos < data.len() {
        assert!(data.len() - pos >= 8, "trailing bytes");
        let (size, header) = match be32(&data[pos..]) {
            1 => (be64(&data[pos + 8..]) as usize, 16),
            s => (s as usize, 8),
        };
        assert!(size >= header && pos + size <= data.len(), "box size {size} at {pos} overruns {}", data.len());
        let kind: [u8; 4] = data[pos + 4..pos + 8].try_into().unwrap();
        let body = &data[pos + header..pos + size];
        match &kind {
            b"moov" | b"trak" | b"mdia" | b"minf" | b"dinf" | b"stbl" | b"mvex" | b"moof" | b"traf" | b"edts" => {
                check_tree(body)
            }
            b"stsd" | b"dref" => check_tree(&body[8..]),
            b"avc1" | b"hvc1" | b"av01" => check_tree(&body[78..]),
            b"mp4a" => check_tree(&body[28..]),
            _ => {}
        }
        pos += size;
    }
    assert_eq!(pos, data.len());
}

fn top_level(data: &[u8]) -> Vec<[u8; 4]> {
    children(data).map(|(k, _, _)| k).collect()
}

fn find<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    let (first, rest) = path.split_first()?;
    let body = children(data).find(|(k, _, _)| k == *first).map(|(_, _, b)| b)?;
    if rest.is_empty() {
        Some(body)
    } else {
        find(body, rest)
    }
}

/// A track of a progressive MP4 read back through its sample tables.
#[derive(Debug)]
struct ReadTrack {
    handler: [u8; 4],
    timescale: u32,
    /// (data, decode time, composition offset, sync)
    samples: Vec<(Vec<u8>, u64, i32, bool)>,
    elst: Vec<(i64, i64)>,
    co64: bool,
}

/// Reads every sample of a progressive MP4 through stts/ctts/stss/stsc/stsz/stco.
fn read_progressive(file: &[u8]) -> Vec<ReadTrack> {
    let moov = find(file, &[b"moov"]).expect("moov");
    let mut tracks = Vec::new();
    for (k, _, trak) in children(moov) {
        if &k != b"trak" {
            continue;
        }
        let mdhd = find(trak, &[b"mdia", b"mdhd"]).unwrap();
        let timescale = if mdhd[0] == 1 { be32(&mdhd[20..]) } else { be32(&mdhd[12..]) };
        let handler: [u8; 4] = find(trak, &[b"mdia", b"hdlr"]).unwrap()[8..12].try_into().unwrap();
        let stbl = find(trak, &[b"mdia", b"minf", b"stbl"]).unwrap();
        let table = |k: &[u8; 4]| find(stbl, &[k]);
        let stsz = table(b"stsz").unwrap();
        let count = be32(&stsz[8..]) as usize;
        let sizes: Vec<u32> = (0..count).map(|i| be32(&stsz[12 + 4 * i..])).collect();
        let (offsets, co64): (Vec<u64>, bool) = match (table(b"stco"), table(b"co64")) {
            (Some(b), None) => ((0..be32(&b[4..]) as usize).map(|i| u64::from(be32(&b[8 + 4 * i..]))).collect(), false),
            (None, Some(b)) => ((0..be32(&b[4..]) as usize).map(|i| be64(&b[8 + 8 * i..])).collect(), true),
            _ => panic!("exactly one of stco/co64"),
        };
        let stsc = table(b"stsc").unwrap();
        let stsc: Vec<(u32, u32)> =
            (0..be32(&stsc[4..]) as usize).map(|i| (be32(&stsc[8 + 12 * i..]), be32(&stsc[12 + 12 * i..]))).collect();
        let mut positions = Vec::new();
        for (ci, &off) in offsets.iter().enumerate() {
            let chunk = ci as u32 + 1;
            let per = stsc.iter().rev().find(|(first, _)| *first <= chunk).unwrap().1;
            let mut o = off;
            for _ in 0..per {
                let s = sizes[positions.len()];
                positions.push(o);
                o += u64::from(s);
            }
        }
        assert_eq!(positions.len(), count, "stsc covers every sample");
        let rle = |b: &[u8]| -> Vec<(u32, u32)> {
            (0..be32(&b[4..]) as usize).map(|i| (be32(&b[8 + 8 * i..]), be32(&b[12 + 8 * i..]))).collect()
        };
        let mut durations = Vec::new();
        for (n, d) in rle(table(b"stts").unwrap()) {
            durations.extend(std::iter::repeat_n(d, n as usize));
        }
        assert_eq!(durations.len(), count, "stts covers every sample");
        let mut cts = Vec::new();
        match table(b"ctts") {
            Some(b) => {
                for (n, c) in rle(b) {
                    cts.extend(std::iter::repeat_n(c as i32, n as usize));
                }
            }
            None => cts.resize(count, 0),
        }
        assert_eq!(cts.len(), count, "ctts covers every sample");
        let sync: Vec<bool> = match table(b"stss") {
            Some(b) => {
                let set: Vec<u32> = (0..be32(&b[4..]) as usize).map(|i| be32(&b[8 + 4 * i..])).collect();
                (1..=count as u32).map(|n| set.contains(&n)).collect()
            }
            None => vec![true; count],
        };
        let mut time = 0u64;
        let mut samples = Vec::new();
        for i in 0..count {
            let p = positions[i] as usize;
            samples.push((file[p..p + sizes[i] as usize].to_vec(), time, cts[i], sync[i]));
            time += u64::from(durations[i]);
        }
        let elst = match find(trak, &[b"edts", b"elst"]) {
            Some(b) => {
                let v1 = b[0] == 1;
                (0..be32(&b[4..]) as usize)
                    .map(|i| {
                        if v1 {
                            let e = &b[8 + 20 * i..];
                            (be64(e) as i64, be64(&e[8..]) as i64)
                        } else {
                            let e = &b[8 + 12 * i..];
                            (i64::from(be32(e)), i64::from(be32(&e[4..]) as i32))
                        }
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        tracks.push(ReadTrack { handler, timescale, samples, elst, co64 });
    }
    tracks
}

/// The payloads a muxer should have stored for `frames`, per kind.
fn expected_payloads(frames: &[Frame], kind: FrameKind) -> Vec<Vec<u8>> {
    frames.iter().filter(|f| f.kind == kind && f.is_sample()).map(|f| f.payload_ref().to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------
// Box structure and the moov builder

#[test]
fn boxes_tile_exactly_in_temp_and_final_files() {
    let frames = av_stream(5, 50, true, true);
    let m = mux(&frames);
    check_tree(&m.temp);
    let final_file = apply(&m.temp, m.rewrite.as_ref().unwrap());
    check_tree(&final_file);
    assert_eq!(top_level(&final_file), vec![*b"ftyp", *b"moov", *b"mdat"]);
    let tl = top_level(&m.temp);
    assert_eq!(&tl[..2], &[*b"ftyp", *b"moov"]);
    assert!(tl[2..].chunks(2).all(|p| p == [*b"moof", *b"mdat"]), "{tl:?}");
    assert!(find(&m.temp, &[b"moov", b"mvex", b"trex"]).is_some());
}

#[test]
fn final_file_holds_every_sample_with_its_timing() {
    let frames = av_stream(5, 50, true, true);
    let m = mux(&frames);
    let file = apply(&m.temp, m.rewrite.as_ref().unwrap());
    let tracks = read_progressive(&file);
    assert_eq!(tracks.len(), 2);
    let (v, a) = (&tracks[0], &tracks[1]);
    assert_eq!((&v.handler, v.timescale), (b"vide", 90_000));
    assert_eq!((&a.handler, a.timescale), (b"soun", 44_100));
    assert!(!v.co64 && !a.co64);
    let vdata: Vec<Vec<u8>> = v.samples.iter().map(|s| s.0.clone()).collect();
    let adata: Vec<Vec<u8>> = a.samples.iter().map(|s| s.0.clone()).collect();
    assert_eq!(vdata, expected_payloads(&frames, FrameKind::Video));
    assert_eq!(adata, expected_payloads(&frames, FrameKind::Audio));
    for (s, f) in v.samples.iter().zip(frames.iter().filter(|f| f.kind == FrameKind::Video && f.is_sample())) {
        assert_eq!(s.1, f.dts as u64 * 90, "decode time");
        assert_eq!(s.2, f.cts * 90, "composition offset");
        assert_eq!(s.3, f.keyframe, "sync");
    }
    // AAC: exactly 1024 samples per frame although the timestamps are rounded to ms.
    for (i, s) in a.samples.iter().enumerate() {
        assert_eq!(s.1, i as u64 * 1024);
    }
    // Video is first shown at 80 ms (its first pts), audio at 1 ms: the movie starts with
    // audio; video waits 79 ms (empty edit), then starts at its first picture (media time
    // 80 ms, skipping the composition offset).
    assert_eq!(v.elst, vec![(79, -1), (5000, 7200)]);
    assert!(a.elst.is_empty());
    assert_eq!(m.stats.samples as usize, v.samples.len() + a.samples.len());
}

fn synthetic_table(chunks: usize, chunk_payload: u64) -> TrackTable {
    let mut t = TrackTable::default();
    for c in 0..chunks {
        t.begin_chunk(c as u64 * chunk_payload, c as u64 * 90_000);
        for i in 0..25u32 {
            t.push((chunk_payload / 25) as u32, 3600, 0, i == 0);
        }
    }
    t
}

fn avc_info() -> TrackInfo {
    let s = video_setup(Codec::H264, &Bytes::from_static(AVC_RECORD)).unwrap();
    TrackInfo {
        id: 1,
        kind: TrackKind::Video,
        timescale: s.timescale,
        width: s.width,
        height: s.height,
        sample_entry: s.sample_entry,
    }
}

#[test]
fn moov_builder_switches_to_co64_past_4_gib() {
    let info = avc_info();
    for (chunks, want_co64) in [(10usize, false), (6000, true)] {
        // 1 MB per chunk: 6000 chunks put the last ones past 4 GiB.
        let per = 1_000_000u64;
        let table = synthetic_table(chunks, per);
        let payload = chunks as u64 * per;
        let ranges = vec![100..100 + payload, 100 + payload..100 + payload];
        let rw = finalize(&[(&info, &table)], payload, &ranges).unwrap().unwrap();
        let head = &rw.head[..];
        check_tree(&head[..head.len() - if payload + 8 > u32::MAX as u64 { 16 } else { 8 }]);
        let stbl = find(head, &[b"moov", b"trak", b"mdia", b"minf", b"stbl"]).unwrap();
        assert_eq!(find(stbl, &[b"co64"]).is_some(), want_co64);
        assert_eq!(find(stbl, &[b"stco"]).is_some(), !want_co64);
        let first = if want_co64 {
            be64(&find(stbl, &[b"co64"]).unwrap()[8..])
        } else {
            u64::from(be32(&find(stbl, &[b"stco"]).unwrap()[8..]))
        };
        assert_eq!(first, head.len() as u64, "the first chunk starts right after the mdat header");
        if want_co64 {
            let co = find(stbl, &[b"co64"]).unwrap();
            assert_eq!(be32(&co[4..]) as usize, chunks);
            assert_eq!(be64(&co[8 + 8 * (chunks - 1)..]), head.len() as u64 + (chunks as u64 - 1) * per);
            // mdat with a 64-bit largesize.
            let mdat = &head[head.len() - 16..];
            assert_eq!((be32(mdat), &mdat[4..8]), (1, &b"mdat"[..]));
            assert_eq!(be64(&mdat[8..]), payload + 16);
        } else {
            let mdat = &head[head.len() - 8..];
            assert_eq!((be32(mdat) as u64, &mdat[4..8]), (payload + 8, &b"mdat"[..]));
        }
        assert_eq!(rw.ranges, vec![100..100 + payload]);
        // stsc: one entry, 25 samples per chunk.
        let stsc = find(stbl, &[b"stsc"]).unwrap();
        assert_eq!((be32(&stsc[4..]), be32(&stsc[12..])), (1, 25));
        let stss = find(stbl, &[b"stss"]).unwrap();
        assert_eq!(be32(&stss[4..]) as usize, chunks);
    }
}

#[test]
fn moov_uses_64_bit_durations_when_needed() {
    let info = avc_info();
    let mut table = TrackTable::default();
    table.begin_chunk(0, 0);
    // 14 hours at 90 kHz overflows 32 bits.
    for _ in 0..14 {
        table.push(10, 3600 * 90_000, 0, true);
    }
    let mut b = BytesMut::new();
    let mut w = BoxWriter::new(&mut b);
    write_final_moov(&mut w, &[(&info, &table)], 0, false);
    w.done().unwrap();
    check_tree(&b);
    let mdhd = find(&b, &[b"moov", b"trak", b"mdia", b"mdhd"]).unwrap();
    assert_eq!(mdhd[0], 1);
    assert_eq!(be64(&mdhd[24..]), 14 * 3600 * 90_000);
    let mvhd = find(&b, &[b"moov", b"mvhd"]).unwrap();
    assert_eq!(mvhd[0], 0, "14 h in ms still fits");
    assert_eq!(be32(&mvhd[16..]), 14 * 3600 * 1000);
}

#[test]
fn init_moov_reads_back_as_the_same_tracks() {
    let video = avc_info();
    let a = aac_setup(&Bytes::from_static(&[0x12, 0x10])).unwrap();
    let audio = TrackInfo {
        id: 2,
        kind: TrackKind::Audio,
        timescale: 44100,
        width: 0,
        height: 0,
        sample_entry: a.sample_entry,
    };
    let mut b = BytesMut::new();
    let mut w = BoxWriter::new(&mut b);
    write_ftyp(&mut w);
    write_init_moov(&mut w, &[video.clone(), audio.clone()]);
    w.done().unwrap();
    check_tree(&b);
    let r = FragmentReader::new(Cursor::new(b.to_vec())).unwrap().unwrap();
    assert_eq!(r.tracks, vec![video, audio]);
    // Cut anywhere inside the moov: not ready yet, no error.
    for cut in 0..b.len() {
        assert!(FragmentReader::new(Cursor::new(b[..cut].to_vec())).unwrap().is_none(), "cut {cut}");
    }
}

// ---------------------------------------------------------------------------------------------
// The writer: cadence, preroll, configuration changes

/// (first sample time in ms, span in ms, video sample count, starts with a sync sample) per
/// fragment, from the temp file.
fn fragments(temp: &[u8]) -> Vec<(TrackKind, f64, f64, usize, bool)> {
    let mut r = FragmentReader::new(Cursor::new(temp.to_vec())).unwrap().unwrap();
    let tracks = r.tracks.clone();
    let mut v = Vec::new();
    while let Some(f) = r.next_fragment().unwrap() {
        for run in f.runs {
            let t = tracks.iter().find(|t| t.id == run.track_id).unwrap();
            let ts = f64::from(t.timescale) / 1000.0;
            let span: u64 = run.samples.iter().map(|s| u64::from(s.duration)).sum();
            v.push((t.kind, run.tfdt.unwrap() as f64 / ts, span as f64 / ts, run.samples.len(), run.samples[0].sync));
        }
    }
    v
}

#[test]
fn fragments_start_at_keyframes_and_span_at_most_a_second() {
    // Keyframe every 2 s (50 frames): fragments at 0, 1, 2, 3 ... s.
    let m = mux(&av_stream(6, 50, true, true));
    let frags = fragments(&m.temp);
    let video: Vec<_> = frags.iter().filter(|f| f.0 == TrackKind::Video).collect();
    assert!(video.len() >= 6, "{video:?}");
    for f in &video {
        assert!(f.2 <= FRAGMENT_MS as f64 + 40.0, "fragment spans {} ms", f.2);
        if f.1 % 2000.0 == 0.0 {
            assert!(f.4, "fragment at a keyframe time starts with it");
        }
    }
    for f in frags.iter().filter(|f| f.0 == TrackKind::Audio) {
        assert!(f.2 <= FRAGMENT_MS as f64 + 30.0, "audio run spans {} ms", f.2);
    }
    // Every keyframe starts a fragment.
    for t in (0..6000).step_by(2000) {
        assert!(video.iter().any(|f| f.1 == t as f64 && f.4), "no fragment at keyframe {t}");
    }
}

#[test]
fn flush_writes_what_is_complete_when_the_stream_stalls() {
    let mut m = Mp4Muxer::new();
    let mut out = Vec::new();
    let frames: Vec<Frame> = av_stream(1, 50, true, true).into_iter().filter(|f| f.dts < 500).collect();
    for f in &frames {
        m.push(f, &mut out).unwrap();
    }
    assert_eq!(m.stats().fragments, 0);
    m.flush(&mut out).unwrap();
    assert_eq!(m.stats().fragments, 1);
    let temp: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    let t = read_progressive(&apply(&temp, &recover(&temp).unwrap().unwrap()));
    // All but the newest sample of each track (its duration is not known yet).
    assert_eq!(t[0].samples.len(), frames.iter().filter(|f| f.kind == FrameKind::Video && f.is_sample()).count() - 1);
    assert_eq!(t[1].samples.len(), frames.iter().filter(|f| f.kind == FrameKind::Audio && f.is_sample()).count() - 1);
    m.flush(&mut out).unwrap();
    assert_eq!(m.stats().fragments, 1, "nothing new to flush");
    for f in av_stream(2, 50, true, true).into_iter().filter(|f| f.dts >= 500) {
        m.push(&f, &mut out).unwrap();
    }
    let rw = m.finish(&mut out).unwrap();
    let temp: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    assert_eq!(recover(&temp).unwrap(), rw);
    let t = read_progressive(&apply(&temp, rw.as_ref().unwrap()));
    assert_eq!(t[0].samples.len(), 50);
    assert!(t[0].samples.windows(2).all(|w| w[1].1 - w[0].1 == 3600));
}

#[test]
fn all_intra_video_is_not_cut_at_every_frame() {
    let m = mux(&av_stream(3, 1, true, false));
    let frags = fragments(&m.temp);
    assert!(frags.len() <= 3 * 1000 / MIN_KEYFRAME_FRAGMENT_MS as usize + 1, "{} fragments", frags.len());
    assert!(frags.iter().all(|f| f.3 >= 5));
}

#[test]
fn drops_video_before_the_first_keyframe() {
    let mut frames = vec![video(0, 0, false, 0), video_config(0), audio_config(0)];
    frames.extend((1..4).map(|i| video(i * 40, 0, false, i as u32)));
    frames.extend((4..60).map(|i| video(i * 40, 0, i == 4 || i == 54, i as u32)));
    let m = mux(&frames);
    assert_eq!(m.stats.dropped_before_keyframe, 4);
    let file = apply(&m.temp, m.rewrite.as_ref().unwrap());
    let t = read_progressive(&file);
    assert_eq!(t.len(), 1, "audio config without audio frames: no audio track in the final file");
    assert_eq!(t[0].samples.len(), 56);
    assert!(t[0].samples[0].3);
}

#[test]
fn waits_for_a_late_audio_configuration() {
    let mut frames = vec![video_config(0), video(0, 0, true, 0)];
    frames.extend((1..10).map(|i| video(i * 40, 0, false, i as u32)));
    // Audio frames before their configuration are held; the configuration arrives at 400 ms.
    frames.push(audio(380, 0));
    frames.push(audio_config(400));
    frames.extend((1..100).map(|i| audio(380 + i * 23, i as u32)));
    frames.extend((10..100).map(|i| video(i * 40, 0, i % 50 == 0, i as u32)));
    frames.sort_by_key(|f| (f.dts, !f.config));
    let mut m = Mp4Muxer::new();
    let mut out = Vec::new();
    let mut started_at = None;
    for (i, f) in frames.iter().enumerate() {
        m.push(f, &mut out).unwrap();
        if m.init_written() && started_at.is_none() {
            started_at = Some(i);
        }
    }
    let i = started_at.unwrap();
    assert!(frames[i].config && frames[i].kind == FrameKind::Audio, "the init segment waits for the audio config");
    let rw = m.finish(&mut out).unwrap().unwrap();
    let temp: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    let t = read_progressive(&apply(&temp, &rw));
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].samples.len(), 100, "the audio frame before the config is kept");
    assert_eq!(m.stats().dropped_no_track, 0);
}

#[test]
fn video_only_starts_after_the_preroll_window() {
    let frames = av_stream(4, 50, true, false);
    let m = mux(&frames);
    // Nothing is written until PREROLL_MS after the keyframe: then init and the buffered frames.
    let first = m.lengths.iter().position(|&l| l > 0).unwrap();
    assert_eq!(frames[first].dts, PREROLL_MS);
    let t = read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].samples.len(), 100);
}

#[test]
fn audio_only_starts_after_the_preroll_window_and_holds_every_frame() {
    let frames = av_stream(4, 50, false, true);
    let m = mux(&frames);
    let first = m.lengths.iter().position(|&l| l > 0).unwrap();
    assert!(frames[first].dts >= PREROLL_MS && frames[first].dts < PREROLL_MS + 30);
    let t = read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()));
    assert_eq!(t.len(), 1);
    let data: Vec<Vec<u8>> = t[0].samples.iter().map(|s| s.0.clone()).collect();
    assert_eq!(data, expected_payloads(&frames, FrameKind::Audio));
    assert!(t[0].elst.is_empty());
}

#[test]
fn waits_for_a_video_keyframe_keeping_a_second_of_audio() {
    let mut frames = vec![video_config(0), audio_config(0)];
    let mut media: Vec<Frame> = (0..200).map(|i| audio((i * 1024 * 1000) / 44100, i as u32)).collect();
    // The publisher joined mid-GOP: the first keyframe comes at 3 s.
    media.extend((0..100).map(|i| video(i * 40, 0, i == 75, i as u32)));
    media.sort_by_key(|f| f.dts);
    frames.extend(media);
    let m = mux(&frames);
    assert_eq!(m.stats.dropped_before_keyframe, 75);
    assert!(m.stats.dropped_preroll > 80, "{:?}", m.stats);
    let t = read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()));
    let a = &t[1];
    // Audio kept from at most PREROLL_MS before the keyframe.
    let kept_from = 200 - a.samples.len();
    let first_ms = (kept_from as i64 * 1024 * 1000) / 44100;
    assert!(3000 - first_ms <= PREROLL_MS + 50, "audio from {first_ms} ms");
    // Video waits with an empty edit for the audio that came first.
    assert_eq!(t[0].elst[0].1, -1);
    assert!((t[0].elst[0].0 - (3000 - first_ms)).abs() <= 1);
}

#[test]
fn repeated_configuration_is_ignored_and_a_changed_one_is_an_error() {
    let mut m = Mp4Muxer::new();
    let mut out = Vec::new();
    for f in av_stream(2, 25, true, true) {
        m.push(&f, &mut out).unwrap();
    }
    m.push(&video_config(2000), &mut out).unwrap();
    m.push(&audio_config(2000), &mut out).unwrap();
    let mut tag = vec![0x17, 0, 0, 0, 0];
    tag.extend_from_slice(AVC_RECORD);
    *tag.last_mut().unwrap() ^= 1;
    let changed = parse_tag(TAG_VIDEO, 2000, Bytes::from(tag)).unwrap();
    let err = m.push(&changed, &mut out).unwrap_err();
    assert!(err.to_string().contains("changed"), "{err}");
    // The file written so far still finishes.
    let rw = m.finish(&mut out).unwrap().unwrap();
    let temp: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    let t = read_progressive(&apply(&temp, &rw));
    assert_eq!(t[0].samples.len(), 50);
    assert!(m.push(&audio(3000, 1), &mut out).is_err(), "push after finish");
}

#[test]
fn unsupported_frames_are_skipped_and_invalid_configs_counted() {
    let mut m = Mp4Muxer::new();
    let mut out = Vec::new();
    // Nellymoser audio, VP6 video, script data, an AVC end-of-sequence.
    for (ty, body) in
        [(TAG_AUDIO, &[0x62u8, 1, 2][..]), (TAG_VIDEO, &[0x14, 1, 2][..]), (TAG_VIDEO, &[0x17, 2, 0, 0, 0][..])]
    {
        m.push(&parse_tag(ty, 0, Bytes::copy_from_slice(body)).unwrap(), &mut out).unwrap();
    }
    m.push(&parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 2])).unwrap(), &mut out).unwrap();
    assert_eq!(m.stats().skipped, 3);
    assert_eq!(m.stats().invalid_configs, 1);
    assert!(m.finish(&mut out).unwrap().is_none());
    assert!(out.is_empty());
}

#[test]
fn audio_durations_follow_timestamps_across_a_gap() {
    let mut frames = vec![audio_config(0)];
    frames.extend((0..50).map(|i| audio(i * 23, i as u32)));
    // 500 ms of audio missing, then steady again.
    frames.extend((50..150).map(|i| audio(500 + i * 23, i as u32)));
    let m = mux(&frames);
    let t = read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()));
    let times: Vec<u64> = t[0].samples.iter().map(|s| s.1).collect();
    let deltas: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(deltas[..49].iter().all(|&d| d == 1024));
    // After the gap, the first frame is placed by its timestamp.
    assert!((times[50] as f64 / 44.1 - 1650.0).abs() < 0.5, "{}", times[50]);
    // 23 ms vs 1024/44.1 = 23.2 ms: exact frames until the drift passes half a frame.
    assert!(deltas[50..].iter().filter(|&&d| d == 1024).count() > 90);
    let end_ms = *times.last().unwrap() as f64 / 44.1;
    assert!((end_ms - (500.0 + 149.0 * 23.0)).abs() < 12.0, "end {end_ms}");
}

#[test]
fn timestamp_reset_is_smoothed_over() {
    let mut frames = av_stream(3, 25, true, true);
    let restart: Vec<Frame> = av_stream(2, 25, true, true).into_iter().filter(|f| !f.config).collect();
    frames.extend(restart);
    let m = mux(&frames);
    assert_eq!(m.stats.discontinuities, 1);
    let t = read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()));
    assert_eq!(t[0].samples.len(), 125);
    assert!(t[0].samples.windows(2).all(|w| w[1].1 > w[0].1));
    let span = t[0].samples.last().unwrap().1 / 90;
    assert!((4900..5100).contains(&span), "{span}");
}

// ---------------------------------------------------------------------------------------------
// Recovery

#[test]
fn recovery_of_a_whole_file_equals_finish() {
    for (v, a) in [(true, true), (true, false), (false, true)] {
        let m = mux(&av_stream(5, 50, v, a));
        let recovered = recover(&m.temp).unwrap();
        assert_eq!(recovered, m.rewrite, "video {v} audio {a}");
    }
}

#[test]
fn recovery_keeps_every_complete_fragment_at_any_cut() {
    let frames = av_stream(4, 50, true, true);
    let m = mux(&frames);
    let full = read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()));
    // Where each fragment ends, and how many samples per track the file holds up to there.
    let mut r = FragmentReader::new(Cursor::new(m.temp.clone())).unwrap().unwrap();
    let init_end = m.lengths.iter().copied().find(|&l| l > 0).unwrap();
    let mut ends = vec![(0usize, [0usize; 2])];
    let mut counts = [0usize; 2];
    while let Some(f) = r.next_fragment().unwrap() {
        for run in &f.runs {
            counts[run.track_id as usize - 1] += run.samples.len();
        }
        ends.push((f.payload.end as usize, counts));
    }
    let cuts: Vec<usize> =
        (0..m.temp.len()).step_by(97).chain(ends.iter().flat_map(|e| [e.0.saturating_sub(1), e.0, e.0 + 1])).collect();
    for cut in cuts.into_iter().filter(|&c| c <= m.temp.len()) {
        let data = &m.temp[..cut];
        let expect = ends.iter().rev().find(|e| e.0 <= cut).unwrap().1;
        match recover(data).unwrap() {
            None => assert!(expect == [0, 0] || cut < init_end, "cut {cut}"),
            Some(rw) => {
                let file = apply(data, &rw);
                check_tree(&file);
                let t = read_progressive(&file);
                let got: Vec<usize> = t.iter().map(|t| t.samples.len()).collect();
                let want: Vec<usize> = expect.iter().copied().filter(|&n| n > 0).collect();
                assert_eq!(got, want, "cut {cut}");
                for (rt, ft) in t.iter().zip(&full) {
                    for (a, b) in rt.samples.iter().zip(&ft.samples) {
                        assert_eq!(a, b, "cut {cut}: samples are the finished file's");
                    }
                }
            }
        }
    }
}

#[test]
fn recovery_rejects_what_is_not_a_fragmented_recording() {
    assert!(recover(b"\0\0\0\x08free\0\0\0\x08ftyp").is_err());
    assert!(recover(&[]).unwrap().is_none());
    let m = mux(&av_stream(2, 50, true, true));
    let final_file = apply(&m.temp, m.rewrite.as_ref().unwrap());
    assert!(recover(&final_file).unwrap().is_none(), "a finished file has no fragments");
    // A zeroed tail (filesystem after power loss) ends the data.
    let mut padded = m.temp.clone();
    padded.extend_from_slice(&[0; 4096]);
    assert_eq!(recover(&padded).unwrap(), m.rewrite);
}

#[test]
fn recovery_survives_corrupted_fragments() {
    let m = mux(&av_stream(3, 50, true, true));
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let mut data = m.temp.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % data.len() as u64) as usize;
            data[at] = next() as u8;
        }
        // Any answer but a panic; a rewrite must stay within the file.
        if let Ok(Some(rw)) = recover(&data) {
            assert!(rw.ranges.iter().all(|r| r.start <= r.end && r.end <= data.len() as u64));
        }
    }
    // Every byte of the init segment and the first fragment set to 0xff, one at a time.
    let first_fragment_end = m.lengths.iter().copied().find(|&l| l > 1000).unwrap_or(m.temp.len());
    for at in 0..first_fragment_end.min(m.temp.len()) {
        let mut data = m.temp.clone();
        data[at] = 0xff;
        let _ = recover(&data);
    }
}

// ---------------------------------------------------------------------------------------------
// Golden tests with ffmpeg

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn probe_duration(path: &Path) -> f64 {
    let (out, _) =
        golden::tool("ffprobe", &["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", p(path)]);
    out.trim().parse().unwrap_or_else(|_| panic!("duration of {}: {out:?}", path.display()))
}

fn probe_start(path: &Path) -> f64 {
    let (out, _) =
        golden::tool("ffprobe", &["-v", "error", "-show_entries", "format=start_time", "-of", "csv=p=0", p(path)]);
    out.trim().parse().unwrap_or_else(|_| panic!("start time of {}: {out:?}", path.display()))
}

/// Packets of one stream as `ffmpeg -c copy -f framemd5` sees them: (dts ms, pts ms, size, hash),
/// with times relative to the first packet's dts.
fn packets(path: &Path, map: &str) -> Vec<(f64, f64, u64, String)> {
    let (out, _) = golden::tool(
        "ffmpeg",
        &["-nostdin", "-v", "error", "-i", p(path), "-map", map, "-c", "copy", "-f", "framemd5", "-"],
    );
    let mut tb = 1.0;
    let mut rows = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("#tb 0: ") {
            let (n, d) = rest.split_once('/').unwrap();
            tb = n.trim().parse::<f64>().unwrap() / d.trim().parse::<f64>().unwrap() * 1000.0;
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let c: Vec<&str> = line.split(',').map(str::trim).collect();
            let dts: i64 = c[1].parse().unwrap();
            let pts: i64 = c[2].parse().unwrap();
            rows.push((dts as f64 * tb, pts as f64 * tb, c[4].parse().unwrap(), c[5].to_string()));
        }
    }
    if let Some(first) = rows.first().map(|r| r.0) {
        for r in &mut rows {
            r.0 -= first;
            r.1 -= first;
        }
    }
    rows
}

/// Same packets, same bytes, same relative timing (within `tolerance_ms`, for time bases
/// that do not map exactly).
fn assert_same_packets(src: &Path, out: &Path, map: &str, tolerance_ms: f64) -> usize {
    let a = packets(src, map);
    let b = packets(out, map);
    assert!(!a.is_empty(), "no {map} packets in the source");
    assert_eq!(a.len(), b.len(), "{map}: packet count");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!((x.2, &x.3), (y.2, &y.3), "{map} packet {i}: size/hash");
        assert!((x.0 - y.0).abs() <= tolerance_ms, "{map} packet {i}: dts {} vs {}", x.0, y.0);
        assert!((x.1 - y.1).abs() <= tolerance_ms, "{map} packet {i}: pts {} vs {}", x.1, y.1);
    }
    a.len()
}

fn mux_flv(src: &Path) -> (Vec<Frame>, Muxed) {
    let data = std::fs::read(src).unwrap();
    let mut r = FileReader::new(Bytes::from(data)).unwrap();
    let mut frames = Vec::new();
    while let Some(f) = r.next_frame().unwrap() {
        frames.push(f);
    }
    let m = mux(&frames);
    (frames, m)
}

/// Checks a finished file against its source: decodes cleanly, same packets, duration, faststart.
fn check_against_source(dir: &golden::Dir, src: &Path, m: &Muxed, maps: &[&str], frame_ms: f64) {
    let temp = dir.path("temp.mp4");
    std::fs::write(&temp, &m.temp).unwrap();
    golden::assert_decodes_cleanly(&temp);
    let out = dir.path("out.mp4");
    let file = apply(&m.temp, m.rewrite.as_ref().expect("a rewrite"));
    std::fs::write(&out, &file).unwrap();
    golden::assert_decodes_cleanly(&out);
    for map in maps {
        let tolerance = if *map == "0:a" { 1.0 } else { 0.01 };
        assert_same_packets(src, &out, map, tolerance);
        assert_same_packets(src, &temp, map, tolerance);
    }
    // An FLV's duration counts from timestamp 0, an MP4's from its first presented sample
    // (ffmpeg's own FLV to MP4 remux does the same): compare the presented spans.
    let (ds, d) = (probe_duration(src) - probe_start(src), probe_duration(&out));
    assert!((ds - d).abs() * 1000.0 <= frame_ms, "duration {d} vs source {ds}");
    assert!(probe_start(&out).abs() < 1e-6, "the MP4 starts at 0");
    let tl = top_level(&file);
    assert_eq!(tl, vec![*b"ftyp", *b"moov", *b"mdat"], "faststart layout");
    check_tree(&file);
}

const SRC_ARGS: &[&str] = &[
    "-f",
    "lavfi",
    "-i",
    "testsrc2=size=320x240:rate=25",
    "-f",
    "lavfi",
    "-i",
    "sine=frequency=440:sample_rate=44100",
    "-t",
    "6",
    "-c:v",
    "libx264",
    "-g",
    "50",
    "-bf",
    "2",
    "-c:a",
    "aac",
];

fn make_flv(dir: &golden::Dir, extra: &[&str]) -> PathBuf {
    let src = dir.path("src.flv");
    let mut args = SRC_ARGS.to_vec();
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-f", "flv", p(&src)]);
    golden::ffmpeg_argv(&args);
    src
}

#[test]
#[cfg_attr(not(feature = "golden"), ignore = "needs ffmpeg: --features golden (tests/run sets it)")]
fn golden_h264_with_b_frames_and_aac() {
    let dir = golden::Dir::new("av");
    let src = make_flv(&dir, &[]);
    let (_, m) = mux_flv(&src);
    assert_eq!(m.stats.dropped_before_keyframe + m.stats.dropped_no_track + m.stats.dropped_preroll, 0);
    check_against_source(&dir, &src, &m, &["0:v", "0:a"], 40.0);
    let t = read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()));
    assert!(t[0].samples.iter().any(|s| s.2 != t[0].samples[0].2), "B-frames: varying composition offsets");
}

#[test]
#[cfg_attr(not(feature = "golden"), ignore = "needs ffmpeg: --features golden (tests/run sets it)")]
fn golden_video_only() {
    let dir = golden::Dir::new("video");
    let src = make_flv(&dir, &["-an"]);
    let (_, m) = mux_flv(&src);
    check_against_source(&dir, &src, &m, &["0:v"], 40.0);
}

#[test]
#[cfg_attr(not(feature = "golden"), ignore = "needs ffmpeg: --features golden (tests/run sets it)")]
fn golden_audio_only() {
    let dir = golden::Dir::new("audio");
    let src = make_flv(&dir, &["-vn"]);
    let (_, m) = mux_flv(&src);
    check_against_source(&dir, &src, &m, &["0:a"], 24.0);
}

#[test]
#[cfg_attr(not(feature = "golden"), ignore = "needs ffmpeg: --features golden (tests/run sets it)")]
fn golden_mp3_audio() {
    golden::need_encoder("libmp3lame");
    let dir = golden::Dir::new("mp3");
    let src = dir.path("src.flv");
    golden::ffmpeg_argv(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        "4",
        "-c:a",
        "libmp3lame",
        "-f",
        "flv",
        p(&src),
    ]);
    let (_, m) = mux_flv(&src);
    check_against_source(&dir, &src, &m, &["0:a"], 27.0);
}

#[test]
#[cfg_attr(not(feature = "golden"), ignore = "needs ffmpeg: --features golden (tests/run sets it)")]
fn golden_crash_recovery() {
    let dir = golden::Dir::new("crash");
    let src = make_flv(&dir, &[]);
    let (_, m) = mux_flv(&src);
    let finished = dir.path("finished.mp4");
    std::fs::write(&finished, apply(&m.temp, m.rewrite.as_ref().unwrap())).unwrap();
    assert_eq!(recover(&m.temp).unwrap(), m.rewrite, "recovering a whole file = finish()");
    let all_v = packets(&finished, "0:v");
    let all_a = packets(&finished, "0:a");

    // Fragment layout of the temp file: (moof start, payload, samples per track, media end ms).
    let mut r = FragmentReader::new(Cursor::new(m.temp.clone())).unwrap().unwrap();
    let tracks = r.tracks.clone();
    let mut frags = Vec::new();
    while let Some(f) = r.next_fragment().unwrap() {
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
        golden::assert_decodes_cleanly(&out);
        let want_v: usize = kept.iter().map(|f| f.2[0]).sum();
        let want_a: usize = kept.iter().map(|f| f.2[1]).sum();
        let (v, a) = (packets(&out, "0:v"), packets(&out, "0:a"));
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
    let mut r = FragmentReader::new(Cursor::new(data.clone())).unwrap().unwrap();
    let track = r.tracks.iter().find(|t| t.kind == TrackKind::Video).unwrap().clone();
    let entry = &track.sample_entry;
    let record = children(&entry[86..]).find(|(k, _, _)| k == config_box).map(|(_, _, b)| b.to_vec()).unwrap();
    let ms = |ticks: i64| {
        assert_eq!(ticks * 1000 % i64::from(track.timescale), 0, "timestamps map to ms exactly");
        ticks * 1000 / i64::from(track.timescale)
    };
    let mut tag = vec![0x90];
    tag.extend_from_slice(fourcc);
    tag.extend_from_slice(&record);
    let mut frames = vec![parse_tag(TAG_VIDEO, 0, Bytes::from(tag)).unwrap()];
    while let Some(f) = r.next_fragment().unwrap() {
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
    dir: &golden::Dir,
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
    golden::ffmpeg_argv(&args);
    golden::ffmpeg_argv(&[
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
    let dir = golden::Dir::new(name);
    let (frames, src) = enhanced_frames(&dir, 3, encoder, fourcc, config_box);
    let m = mux(&frames);
    let file = apply(&m.temp, m.rewrite.as_ref().unwrap());
    let out = dir.path("out.mp4");
    std::fs::write(&out, &file).unwrap();
    golden::assert_decodes_cleanly(&out);
    assert_same_packets(&src, &out, "0:v", 0.01);
    let entry = find(&file, &[b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"]).unwrap();
    assert_eq!(&entry[12..16], fourcc);
    let (w, h) =
        (u16::from_be_bytes([entry[8 + 32], entry[8 + 33]]), u16::from_be_bytes([entry[8 + 34], entry[8 + 35]]));
    assert_eq!((w, h), (320, 240), "picture size read from the sequence header");
}

#[test]
#[cfg_attr(not(feature = "golden"), ignore = "needs ffmpeg: --features golden (tests/run sets it)")]
fn golden_hevc() {
    golden::need_encoder("libx265");
    golden_enhanced(
        "hevc",
        &["-c:v", "libx265", "-x265-params", "log-level=error:keyint=25:bframes=2", "-tag:v", "hvc1"],
        b"hvc1",
        b"hvcC",
    );
}

#[test]
#[cfg_attr(not(feature = "golden"), ignore = "needs ffmpeg: --features golden (tests/run sets it)")]
fn golden_av1() {
    golden::need_encoder("libaom-av1");
    golden_enhanced("av1", &["-c:v", "libaom-av1", "-cpu-used", "8", "-g", "25", "-b:v", "200k"], b"av01", b"av1C");
}

#[test]
fn durations_cover_every_presented_sample_when_first_frames_share_a_decode_time() {
    // As GStreamer's rtmp2sink publishes: the first three frames all decode at 0 (shown at 0,
    // 33 and 67 ms), every later one is shown 67 ms after it decodes, at 30 fps, for 20 s.
    let at = |k: i64| (k * 1000 + 15) / 30;
    let mut frames = vec![video_config(0)];
    for k in 0..600i64 {
        let dts = if k < 3 { 0 } else { at(k - 2) };
        frames.push(video(dts, (at(k) - dts) as i32, k % 30 == 0, k as u32));
    }
    let m = mux(&frames);
    let file = apply(&m.temp, m.rewrite.as_ref().unwrap());
    let tracks = read_progressive(&file);
    let v = &tracks[0];
    assert_eq!(v.samples.len(), 600, "no frame dropped");
    // Every frame is presented at its own time (a bumped decode time moves no picture).
    let ends: Vec<i64> = v.samples.iter().map(|s| (s.1 as i64 + i64::from(s.2)) / 90).collect();
    assert_eq!(ends[..3], [0, 33, 67]);
    // The track is presented from the first picture to the end of the last: 20 s, not 19.93 s
    // (no edit is needed: the first picture is shown at time 0).
    assert!(v.elst.is_empty(), "{:?}", v.elst);
    let tkhd = find(&file, &[b"moov", b"trak", b"tkhd"]).unwrap();
    let track = if tkhd[0] == 1 { be64(&tkhd[28..]) } else { u64::from(be32(&tkhd[20..])) };
    assert!(track >= 19_999, "track duration {track} ms covers the last picture");
    let mdhd = find(&file, &[b"moov", b"trak", b"mdia", b"mdhd"]).unwrap();
    let media = if mdhd[0] == 1 { be64(&mdhd[24..]) } else { u64::from(be32(&mdhd[16..])) };
    assert!(media >= 19_999 * 90, "media duration {media} covers the last picture");
    let mvhd = find(&file, &[b"moov", b"mvhd"]).unwrap();
    let movie = if mvhd[0] == 1 { be64(&mvhd[24..]) } else { u64::from(be32(&mvhd[16..])) };
    assert!(movie >= 19_999, "movie duration {movie} ms");

    // With B-frames shown after the last decoded one, the edit covers them too.
    let m = mux(&av_stream(5, 50, true, false));
    let v = &read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()))[0];
    let end = v.samples.iter().map(|s| s.1 as i64 + i64::from(s.2)).max().unwrap() / 90 + 40;
    let (segment_ms, media_time) = *v.elst.last().expect("an edit skipping the first composition offset");
    assert_eq!(media_time, 80 * 90);
    assert_eq!(segment_ms, end - 80, "from the first picture to the end of the last");
}

/// `tsreport -buffering` on `path`: (bad PCR gaps, access units complete after their DTS).
fn tsreport(path: &Path) -> (usize, usize) {
    let (out, err) = golden::tool("tsreport", &["-buffering", p(path)]);
    let text = out + &err;
    let bad = text
        .lines()
        .find_map(|l| l.split("Bad (>.1s) gaps:").nth(1))
        .and_then(|r| r.split(',').next())
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no PCR summary:\n{text}"));
    (bad, text.lines().filter(|l| l.contains("< PCR")).count())
}

#[test]
#[cfg_attr(not(feature = "golden"), ignore = "needs ffmpeg: --features golden (tests/run sets it)")]
fn golden_hevc_with_b_frames_in_ts_passes_tsreport() {
    // HEVC as Enhanced RTMP carries it (hvc1), from an ffmpeg encode with B-frames, muxed to
    // two HLS-style segments of one stream; each decodes and keeps the T-STD timing rules.
    golden::need_encoder("libx265");
    let dir = golden::Dir::new("hevc-ts");
    let hevc = ["-c:v", "libx265", "-x265-params", "log-level=error:keyint=25:bframes=2", "-tag:v", "hvc1"];
    let (frames, _) = enhanced_frames(&dir, 4, &hevc, b"hvc1", b"hvcC");
    assert!(frames.iter().any(|f| f.cts > 0), "B-frames");
    let mut m = crate::mux::ts::TsMuxer::new();
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
        golden::assert_decodes_cleanly(&seg);
        assert_eq!(tsreport(&seg), (0, 0), "{}: bad PCR gaps, DTS < PCR", seg.display());
    }
}
