//! Tests of the MP4 writer: box structure, the moov builder, the writer's cadence and
//! preroll rules, and crash recovery, read back with the MP4 reader of `reel-test-support`.
//! The golden tests against ffmpeg are in `tests/golden`.

use std::io::Cursor;

use bytes::{Bytes, BytesMut};

use super::boxes::{write_final_moov, write_ftyp, write_init_moov, BoxWriter};
use super::codec::{aac_setup, video_setup};
use super::faststart::finalize;
use super::recover::FragmentReader;
use super::table::{TrackInfo, TrackKind, TrackTable};
use super::*;
use crate::media::flv::{parse_tag, TAG_AUDIO, TAG_VIDEO};
use reel_test_support::mp4::{be32, be64, check_tree, find, read_progressive, top_level};

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
    mux_with(Mp4Muxer::reserving(60_000), frames)
}

fn mux_with(mut m: Mp4Muxer, frames: &[Frame]) -> Muxed {
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

/// The reserved region `[0, head_end)` after `rw.head` went over it (the rest as reserved:
/// zeros here).
fn in_region(rw: &Rewrite, head_end: u64) -> Vec<u8> {
    let mut v = rw.head.to_vec();
    v.resize(head_end as usize, 0);
    v
}

fn apply(body: &[u8], rw: &Rewrite) -> Vec<u8> {
    let mut v = rw.head.to_vec();
    for r in &rw.ranges {
        v.extend_from_slice(&body[r.start as usize..r.end as usize]);
    }
    v.extend_from_slice(&rw.tail);
    v
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
    // Written in place: the head replaced the reserved region, fragments did not move.
    let rw = m.rewrite.as_ref().unwrap();
    assert_eq!(
        (rw.ranges.clone(), rw.tail.len()),
        (std::iter::once(rw.head.len() as u64..m.temp.len() as u64).collect::<Vec<_>>(), 0)
    );
    assert_eq!(&final_file[rw.head.len()..], &m.temp[rw.head.len()..]);
    let tl = top_level(&final_file);
    assert_eq!(&tl[..3], &[*b"ftyp", *b"moov", *b"free"]);
    assert!(tl[3..].chunks(2).all(|p| p == [*b"free", *b"mdat"]), "{tl:?}");
    // While recording: the init moov and the moofs are kept in free boxes.
    let tl = top_level(&m.temp);
    assert_eq!(&tl[..2], &[*b"ftyp", *b"free"]);
    assert!(tl[2..].chunks(2).all(|p| p == [*b"free", *b"mdat"]), "{tl:?}");
    let unwrapped: Vec<[u8; 4]> = reel_test_support::mp4::top_level_unwrapped(&m.temp).iter().map(|b| b.kind).collect();
    assert_eq!(&unwrapped[..2], &[*b"ftyp", *b"moov"]);
    assert!(unwrapped[2..].chunks(2).all(|p| p == [*b"moof", *b"mdat"]), "{unwrapped:?}");
    assert!(find(&m.temp[tl_len(&m.temp)..], &[b"moov", b"mvex", b"trex"]).is_some());

    // Offline (nothing reserved): laid out anew with the moov first.
    let offline = mux_with(Mp4Muxer::new(), &frames);
    let file = apply(&offline.temp, offline.rewrite.as_ref().unwrap());
    check_tree(&file);
    assert_eq!(&top_level(&file)[..2], &[*b"ftyp", *b"moov"]);
    assert_eq!(read_progressive(&file), read_progressive(&final_file));
}

/// Where the reserved region's body starts (after `ftyp` and the `free` header).
fn tl_len(temp: &[u8]) -> usize {
    be32(temp) as usize + 8
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

#[test]
fn an_all_sync_track_keeps_no_sync_sample_numbers() {
    let mut audio = TrackTable::default();
    audio.begin_chunk(0, 0);
    (0..1000).for_each(|_| audio.push(300, 1024, 0, true));
    assert!(audio.all_sync() && audio.sync.is_empty() && audio.sync.held_bytes() == 0);
    // Video: the numbers start with the first sample that is not a sync sample.
    let mut video = TrackTable::default();
    video.begin_chunk(0, 0);
    for sync in [true, true, false, false, true, false, true] {
        video.push(900, 3600, 0, sync);
    }
    assert!(!video.all_sync());
    assert_eq!(video.sync, [1, 2, 5, 7]);
    // Written as before: `stss` only for the track with a sample that is not sync.
    let moov = |t: &TrackTable| {
        let mut b = BytesMut::new();
        let mut w = BoxWriter::new(&mut b);
        write_final_moov(&mut w, &[(&avc_info(), t)], 0, false);
        w.done().unwrap();
        b
    };
    let stss = [b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stss"];
    assert!(find(&moov(&audio), &stss).is_none());
    let (video_moov, at) = (moov(&video), find(&moov(&video), &stss).map(<[u8]>::to_vec).unwrap());
    check_tree(&video_moov);
    let entries: Vec<u32> = at[8..].chunks(4).map(be32).collect();
    assert_eq!((be32(&at[4..]), entries), (4, vec![1, 2, 5, 7]));
}

fn synthetic_table(chunks: usize, chunk_payload: u64, first_at: u64) -> TrackTable {
    let mut t = TrackTable::default();
    for c in 0..chunks {
        t.begin_chunk(first_at + c as u64 * chunk_payload, c as u64 * 90_000);
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

fn ftyp_len() -> u64 {
    let mut b = BytesMut::new();
    let mut w = BoxWriter::new(&mut b);
    write_ftyp(&mut w);
    w.done().unwrap();
    b.len() as u64
}

/// (co64?, chunk offsets) of the only track of a final moov.
fn chunk_offsets(moov_file: &[u8]) -> (bool, Vec<u64>) {
    let stbl = find(moov_file, &[b"moov", b"trak", b"mdia", b"minf", b"stbl"]).unwrap();
    if let Some(co) = find(stbl, &[b"co64"]) {
        (true, (0..be32(&co[4..]) as usize).map(|i| be64(&co[8 + 8 * i..])).collect())
    } else {
        let co = find(stbl, &[b"stco"]).unwrap();
        (false, (0..be32(&co[4..]) as usize).map(|i| u64::from(be32(&co[8 + 4 * i..]))).collect())
    }
}

#[test]
fn moov_builder_switches_to_co64_past_4_gib() {
    let info = avc_info();
    let ftyp_len = ftyp_len();
    for (chunks, want_co64) in [(10usize, false), (6000, true)] {
        // 1 MB per chunk: 6000 chunks put the last ones past 4 GiB.
        let per = 1_000_000u64;
        // In place: a reserved region to 1 MB, the chunks stay where they are.
        let head_end = 1_000_000;
        let table = synthetic_table(chunks, per, head_end);
        let end = head_end + chunks as u64 * per;
        let at = Layout { ftyp_len, head_end, end, moov_at_end: true };
        let rw = finalize(&[(&info, &table)], at).unwrap().unwrap();
        // The head goes over the start of the reserved region; its `free` box covers the rest.
        assert!(rw.head.len() as u64 <= head_end);
        assert_eq!(
            (rw.ranges.clone(), rw.tail.len()),
            (std::iter::once(rw.head.len() as u64..end).collect::<Vec<_>>(), 0)
        );
        let region = in_region(&rw, head_end);
        check_tree(&region);
        assert_eq!(top_level(&region), vec![*b"ftyp", *b"moov", *b"free"]);
        let (co64, offsets) = chunk_offsets(&rw.head);
        assert_eq!(co64, want_co64);
        assert_eq!(offsets, (0..chunks as u64).map(|c| head_end + c * per).collect::<Vec<_>>());
        let stbl = find(&rw.head, &[b"moov", b"trak", b"mdia", b"minf", b"stbl"]).unwrap();
        // stsc: one entry, 25 samples per chunk.
        let stsc = find(stbl, &[b"stsc"]).unwrap();
        assert_eq!((be32(&stsc[4..]), be32(&stsc[12..])), (1, 25));
        let stss = find(stbl, &[b"stss"]).unwrap();
        assert_eq!(be32(&stss[4..]) as usize, chunks);

        // Offline, nothing reserved: a new head, the chunks move by its length.
        let head_end = ftyp_len + 8;
        let table = synthetic_table(chunks, per, head_end);
        let end = head_end + chunks as u64 * per;
        let at = Layout { ftyp_len, head_end, end, moov_at_end: false };
        let rw = finalize(&[(&info, &table)], at).unwrap().unwrap();
        check_tree(&rw.head);
        assert_eq!(top_level(&rw.head), vec![*b"ftyp", *b"moov"]);
        assert_eq!(rw.ranges, std::iter::once(head_end..end).collect::<Vec<_>>());
        let (co64, offsets) = chunk_offsets(&rw.head);
        assert_eq!(co64, want_co64);
        assert_eq!(offsets[0], rw.head.len() as u64, "the first chunk follows the new head");
        assert_eq!(offsets[chunks - 1], rw.head.len() as u64 + (chunks as u64 - 1) * per);
    }
}

#[test]
fn a_moov_that_outgrows_its_room_goes_at_the_end() {
    let info = avc_info();
    let ftyp_len = ftyp_len();
    let head_end = ftyp_len + 200;
    let table = synthetic_table(100, 50_000, head_end);
    let end = head_end + 100 * 50_000;
    let rw = finalize(&[(&info, &table)], Layout { ftyp_len, head_end, end, moov_at_end: true }).unwrap().unwrap();
    assert_eq!(rw.head.len() as u64, ftyp_len + 8, "ftyp and the header of a free box over the rest");
    assert_eq!(top_level(&in_region(&rw, head_end)), vec![*b"ftyp", *b"free"]);
    assert_eq!(rw.ranges, std::iter::once(rw.head.len() as u64..end).collect::<Vec<_>>());
    assert_eq!(top_level(&rw.tail), vec![*b"moov"]);
    let (_, offsets) = chunk_offsets(&rw.tail);
    assert_eq!(offsets[0], head_end, "nothing moved");
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
    let mut m = Mp4Muxer::reserving(60_000);
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
fn the_test_reader_sees_the_fragments_recovery_sees() {
    // The golden tests read fragments with the independent reader of reel-test-support: it
    // must agree with the recovery reader on our own files.
    let m = mux(&av_stream(4, 50, true, true));
    let ours = reel_test_support::mp4::read_fragmented(&m.temp);
    let mut r = FragmentReader::new(Cursor::new(m.temp.clone())).unwrap().unwrap();
    let tracks: Vec<_> = ours.tracks.iter().map(|t| (t.id, t.timescale, t.sample_entry.clone())).collect();
    let want: Vec<_> = r.tracks.iter().map(|t| (t.id, t.timescale, t.sample_entry.to_vec())).collect();
    assert_eq!(tracks, want);
    let mut n = 0;
    while let Some(f) = r.next_fragment().unwrap() {
        let o = &ours.fragments[n];
        assert_eq!(o.payload, f.payload, "fragment {n}");
        assert_eq!(o.runs.len(), f.runs.len(), "fragment {n}");
        for (a, b) in o.runs.iter().zip(&f.runs) {
            assert_eq!((a.track_id, a.tfdt, a.data_start), (b.track_id, b.tfdt, b.data_start), "fragment {n}");
            let a: Vec<_> = a.samples.iter().map(|s| (s.size, s.duration, s.cts, s.sync)).collect();
            let b: Vec<_> = b.samples.iter().map(|s| (s.size, s.duration, s.cts, s.sync)).collect();
            assert_eq!(a, b, "fragment {n}");
        }
        n += 1;
    }
    assert!(n >= 4 && n == ours.fragments.len(), "{n} fragments, the test reader saw {}", ours.fragments.len());
}

#[test]
fn recovery_rejects_what_is_not_a_fragmented_recording() {
    assert!(recover(b"\0\0\0\x08free\0\0\0\x08ftyp").is_err());
    assert!(recover(&[]).unwrap().is_none());
    let m = mux(&av_stream(2, 50, true, true));
    let final_file = apply(&m.temp, m.rewrite.as_ref().unwrap());
    let as_is = recover(&final_file).unwrap().unwrap();
    assert_eq!(apply(&final_file, &as_is), final_file, "a finished file is kept as it is");
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

/// 30 fps video with millisecond timestamps (33/34 ms steps: no run-length encoding of `stts`),
/// B-frame composition offsets, a keyframe every 2 s, and 48 kHz AAC, for `secs`.
fn ms_rounded_stream(secs: i64) -> Vec<Frame> {
    let mut media = Vec::new();
    for i in 0..(secs * 30) as u32 {
        let cts = [67, 133, 33, 0][(i % 4) as usize];
        media.push(video((i64::from(i) * 1000 + 15) / 30, cts, i % 60 == 0, i));
    }
    for i in 0..secs * 48000 / 1024 {
        media.push(audio(i * 1024 * 1000 / 48000, i as u32));
    }
    media.sort_by_key(|f| f.dts);
    let mut frames =
        vec![video_config(0), parse_tag(TAG_AUDIO, 0, Bytes::from_static(&[0xaf, 0, 0x11, 0x90])).unwrap()];
    frames.extend(media);
    frames
}

/// The final `moov` of a `secs` long 30 fps file went in place, every sample in it, and the
/// room was not wasteful either: the padding left is less than the `moov`.
fn assert_moov_in_its_room(m: &Muxed, interval_ms: u64, secs: i64) {
    let rw = m.rewrite.as_ref().unwrap();
    assert!(rw.tail.is_empty(), "interval {interval_ms}: the moov outgrew its room");
    let file = apply(&m.temp, rw);
    check_tree(&file);
    assert_eq!(read_progressive(&file)[0].samples.len(), secs as usize * 30);
    let moov = find(&file, &[b"moov"]).unwrap().len() + 8;
    let padding = rw.head.len() - moov - be32(&file) as usize;
    assert!(padding < moov, "interval {interval_ms}: {padding} bytes of padding beside a {moov}-byte moov");
}

#[test]
fn the_reservation_holds_the_moov_of_a_file_as_long_as_planned() {
    // Files cut every 30 s (closing at the first keyframe after 31 s), and a publish with no
    // interval that lasts the unplanned 10 minutes: the moov goes in place.
    for (interval_ms, secs) in [(30_000u64, 33i64), (0, UNPLANNED_FILE_MS as i64 / 1000)] {
        let m = mux_with(Mp4Muxer::reserving(interval_ms), &ms_rounded_stream(secs));
        assert_moov_in_its_room(&m, interval_ms, secs);
    }
    // Twice the planned length: the moov goes at the end, the file is still whole.
    let frames = ms_rounded_stream(90);
    let m = mux_with(Mp4Muxer::reserving(30_000), &frames);
    let rw = m.rewrite.as_ref().unwrap();
    assert!(!rw.tail.is_empty());
    let file = apply(&m.temp, rw);
    check_tree(&file);
    assert_eq!(&file[rw.head.len()..m.temp.len()], &m.temp[rw.head.len()..], "nothing moved");
    assert_eq!(read_progressive(&file)[0].samples.len(), 90 * 30);
    assert_eq!(recover(&m.temp).unwrap().as_ref(), Some(rw), "recovery makes the same file");
}

/// Like [`mux_with`], draining the muxer every `every_ms` of media as a recorder's flushes do.
fn mux_drained(mut m: Mp4Muxer, frames: &[Frame], every_ms: i64) -> Muxed {
    let (mut out, mut temp, mut lengths) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = every_ms;
    for f in frames {
        m.push(f, &mut out).unwrap();
        if f.dts >= next {
            m.drain(&mut out).unwrap();
            next = f.dts + every_ms;
            if m.head_written {
                assert!(m.tracks.iter().all(|t| t.pending.len() <= 1), "a drain leaves only the newest sample");
                // ... as its own copy: it pins no block the frames arrived in.
                let pinned = |p: &Pending| frames.iter().any(|f| f.tag.as_ptr_range().contains(&p.data.as_ptr()));
                assert!(!m.tracks.iter().flat_map(|t| &t.pending).any(pinned), "a drain keeps a slice of a frame");
            }
        }
        temp.extend(out.drain(..).flat_map(|b| b.to_vec()));
        lengths.push(temp.len());
    }
    let rewrite = m.finish(&mut out).unwrap();
    temp.extend(out.drain(..).flat_map(|b| b.to_vec()));
    Muxed { temp, rewrite, stats: m.stats(), lengths }
}

#[test]
fn a_drained_muxer_writes_its_head_after_a_short_first_fragment() {
    let frames = ms_rounded_stream(5);
    let head_at = |mut m: Mp4Muxer| {
        let mut out = Vec::new();
        frames.iter().find(|f| m.push(f, &mut out).is_ok() && m.head_written).map(|f| f.dts)
    };
    // A recorder that drains gets the head (and its drains work) 300 ms in; the whole first
    // fragment is not held.
    let drained = head_at(Mp4Muxer::reserving(30_000).drained(250, 16 * 1024)).unwrap();
    assert!((FIRST_FRAGMENT_MS..FIRST_FRAGMENT_MS + 40).contains(&drained), "head at {drained} ms");
    // Undrained, the first fragment ends as every other does (here at the keyframe at 2 s).
    let undrained = head_at(Mp4Muxer::reserving(30_000)).unwrap();
    assert!(undrained >= FRAGMENT_MS, "head at {undrained} ms");
}

#[test]
fn drains_at_every_flush_hold_nothing_back_and_the_room_counts_their_fragments() {
    for (interval_ms, secs) in [(30_000u64, 33i64), (0, UNPLANNED_FILE_MS as i64 / 1000)] {
        let frames = ms_rounded_stream(secs);
        let m = mux_drained(Mp4Muxer::reserving(interval_ms).drained(250, 64 * 1024), &frames, 250);
        assert!(m.stats.fragments as i64 >= secs * 4 - 1, "{} fragments in {secs} s", m.stats.fragments);
        assert_moov_in_its_room(&m, interval_ms, secs);
        assert_eq!(recover(&m.temp).unwrap(), m.rewrite, "recovery makes the same file");
    }
    // Undrained, the same muxer keeps its own cadence: at a keyframe (every 2 s here) or
    // once a fragment spans a second.
    let frames = ms_rounded_stream(10);
    let m = mux_with(Mp4Muxer::reserving(30_000).drained(250, 64 * 1024), &frames);
    assert!(m.stats.fragments <= 20, "{} fragments", m.stats.fragments);
}

/// A live muxer that keeps no sample tables writes the same bytes, and the index read back
/// from them at close is the `moov` a muxer holding its tables makes.
#[test]
fn a_muxer_without_its_index_in_memory_makes_the_same_file_from_what_it_wrote() {
    let frames = av_stream(20, 50, true, true);
    let kept = mux_with(Mp4Muxer::reserving(30_000).drained(250, 16 * 1024), &frames);
    let mut lean = Mp4Muxer::reserving(30_000).drained(250, 16 * 1024).index_from_file();
    let (mut temp, mut out) = (Vec::new(), Vec::new());
    for f in &frames {
        lean.push(f, &mut out).unwrap();
        for b in out.drain(..) {
            temp.extend_from_slice(&b);
        }
    }
    // Twenty seconds in: the tables hold nothing (the muxer keeping them: every sample).
    let held: usize = lean.tracks.iter().map(|t| t.table.sample_count() + t.table.chunks.len()).sum();
    assert_eq!(held, 0);
    assert!(lean.tracks.iter().all(|t| t.written > 0));
    let rw = lean.finish(&mut out).unwrap().unwrap();
    for b in out.drain(..) {
        temp.extend_from_slice(&b);
    }
    assert_eq!(temp, kept.temp, "the same bytes written");
    assert!(rw.from_file && rw.head.is_empty() && rw.ranges.is_empty() && rw.tail.is_empty());
    let from_file = recover(&temp).unwrap().unwrap();
    assert_eq!(Some(&from_file), kept.rewrite.as_ref(), "the same moov, in the same place");
    check_tree(&apply(&temp, &from_file));
}

/// Top-level boxes of `temp` after its head: ('m' for an mdat, 'f' for a free box holding a
/// moof), in file order.
fn layout_of(temp: &[u8]) -> String {
    let mut at = 0usize;
    let mut s = String::new();
    while at + 8 <= temp.len() {
        let size = be32(&temp[at..]) as usize;
        let kind = &temp[at + 4..at + 8];
        let size = if size == 1 { be64(&temp[at + 8..]) as usize } else { size };
        if size < 8 || at + size > temp.len() {
            break;
        }
        match kind {
            b"mdat" => s.push('m'),
            b"free" if &temp[at + 12..at + 16] == b"moof" => s.push('f'),
            _ => {}
        }
        at += size;
    }
    s
}

/// Counts the reads made through it.
struct Counted<R> {
    r: R,
    reads: usize,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.reads += 1;
        self.r.read(b)
    }
}

impl<R: std::io::Seek> std::io::Seek for Counted<R> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.r.seek(to)
    }
}

/// A recorder drains its muxer at every write (five times a second): each drain's samples go
/// out in an `mdat` at once, and one `moof` per fragment (a keyframe, or a second) describes
/// them after them, so that the index read back at close is one read per `moof`, walking
/// back from the last one, instead of one per write.
#[test]
fn a_drained_muxer_writes_one_moof_per_fragment_after_its_writes_and_the_close_reads_only_those() {
    let frames = av_stream(20, 50, true, true);
    let kept = mux_drained(Mp4Muxer::reserving(30_000).drained(200, 64 * 1024), &frames, 200);
    let lean = mux_drained(Mp4Muxer::reserving(30_000).drained(200, 64 * 1024).index_from_file(), &frames, 200);
    assert_eq!(lean.temp, kept.temp, "the same bytes written");
    let layout = layout_of(&lean.temp);
    let (mdats, moofs) = (layout.matches('m').count(), layout.matches('f').count());
    // 20 s drained every 200 ms: ~100 writes; keyframes every 2 s and a moof at least every
    // second: ~20 moofs, each after the mdats it describes.
    assert!(mdats >= 95, "{mdats} mdats: {layout}");
    assert!((18..=26).contains(&moofs), "{moofs} moofs: {layout}");
    assert!(layout.ends_with('f') && !layout.contains("ff"), "{layout}");
    let rw = lean.rewrite.as_ref().unwrap();
    let last = rw.last_moof.expect("the last moof's place");
    assert!(rw.from_file);
    let mut file = Counted { r: Cursor::new(lean.temp.clone()), reads: 0 };
    let chained = recover_chain(&mut file, last).unwrap();
    assert_eq!(chained.as_ref(), kept.rewrite.as_ref(), "the moov the muxer holding its tables makes");
    assert_eq!(recover(&lean.temp).unwrap(), chained, "and the one read from the start");
    // ftyp and the init moov, then per moof a header, its body and where the one before is.
    assert!(file.reads <= 6 + 4 * moofs, "{} reads for {moofs} moofs and {mdats} mdats", file.reads);
    let final_file = apply(&lean.temp, chained.as_ref().unwrap());
    check_tree(&final_file);
    let t = read_progressive(&final_file);
    let frames_in = frames.iter().filter(|f| !f.config).count();
    assert_eq!(t.iter().map(|t| t.samples.len()).sum::<usize>(), frames_in, "every frame");
}

/// A crash between a fragment's writes and its `moof` loses those writes (at most a fragment:
/// a second), never the file: recovery keeps every fragment whose `moof` is in the file.
#[test]
fn recovery_of_a_drained_recording_keeps_every_fragment_whose_moof_is_written() {
    let frames = av_stream(6, 50, true, true);
    let m = mux_drained(Mp4Muxer::reserving(30_000).drained(200, 64 * 1024), &frames, 200);
    let full = read_progressive(&apply(&m.temp, m.rewrite.as_ref().unwrap()));
    let total: usize = full.iter().map(|t| t.samples.len()).sum();
    let mut last_kept = 0;
    for cut in (0..=m.temp.len()).step_by(211).chain([m.temp.len()]) {
        let Some(rw) = recover(&m.temp[..cut]).unwrap() else { continue };
        let file = apply(&m.temp[..cut], &rw);
        check_tree(&file);
        let t = read_progressive(&file);
        let kept: usize = t.iter().map(|t| t.samples.len()).sum();
        for (rt, ft) in t.iter().zip(&full) {
            assert_eq!(rt.samples[..], ft.samples[..rt.samples.len()], "cut {cut}: the finished file's samples");
        }
        assert!(kept >= last_kept, "cut {cut}: {kept} samples, {last_kept} at a shorter cut");
        // What is lost is what came after the last moof: at most a fragment (a second) and
        // the write before it. `written`: the newest frame whose push's output is all in.
        let written = m.lengths.iter().rposition(|&l| l <= cut).map_or(0, |i| frames[i].dts);
        let video = t.iter().find(|t| &t.handler == b"vide").map(|t| t.samples.last().unwrap().1 / 90).unwrap_or(0);
        assert!(video as i64 >= written - 1400, "cut {cut}: video up to {video} ms kept, {written} ms written");
        last_kept = kept;
    }
    assert_eq!(last_kept, total, "the whole file");
}
