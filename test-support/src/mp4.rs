//! A small ISO BMFF (MP4) reader for assertions, independent of the writer and the recovery
//! reader it judges: box walking, every sample of a progressive file through its sample
//! tables, and the fragments of a fragmented one. Malformed input fails the test.

use std::ops::Range;

pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// A box inside its parent: type, and byte offsets relative to the parent's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoxAt {
    pub kind: [u8; 4],
    pub start: usize,
    /// Where the body starts (after the 8- or 16-byte header).
    pub body: usize,
    pub end: usize,
}

/// The boxes directly inside `data`, in order, read lazily: a box whose size overruns `data`
/// fails the test when it is reached. Fewer than 8 trailing bytes end the walk; size 0 means
/// "to the end".
pub fn boxes(data: &[u8]) -> impl Iterator<Item = BoxAt> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if data.len() - at < 8 {
            return None;
        }
        let kind: [u8; 4] = data[at + 4..at + 8].try_into().unwrap();
        let (size, header) = match be32(&data[at..]) {
            0 => (data.len() - at, 8),
            1 => {
                assert!(data.len() - at >= 16, "box {} at {at}: truncated largesize", show(&kind));
                (usize::try_from(be64(&data[at + 8..])).unwrap(), 16)
            }
            s => (s as usize, 8),
        };
        assert!(
            size >= header && size <= data.len() - at,
            "box {} of size {size} at {at} overruns its parent ({} bytes)",
            show(&kind),
            data.len()
        );
        let b = BoxAt { kind, start: at, body: at + header, end: at + size };
        at += size;
        Some(b)
    })
}

fn show(kind: &[u8; 4]) -> String {
    String::from_utf8_lossy(kind).into_owned()
}

/// The boxes directly inside `data` as (type, body).
pub fn children(data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> + '_ {
    boxes(data).map(move |b| (b.kind, &data[b.body..b.end]))
}

/// The types of the boxes directly inside `data`.
pub fn top_level(data: &[u8]) -> Vec<[u8; 4]> {
    children(data).map(|(k, _)| k).collect()
}

/// The body of the first box at `path` (`[b"moov", b"trak", b"tkhd"]`), first match at each level.
pub fn find<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    let (first, rest) = path.split_first()?;
    let body = children(data).find(|(k, _)| k == *first).map(|(_, b)| b)?;
    if rest.is_empty() {
        Some(body)
    } else {
        find(body, rest)
    }
}

/// Asserts the boxes in `data` tile it exactly, recursing into the boxes that contain boxes.
pub fn check_tree(data: &[u8]) {
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

/// A track of a progressive MP4 read back through its sample tables.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadTrack {
    pub handler: [u8; 4],
    pub timescale: u32,
    /// (data, decode time, composition offset, sync)
    pub samples: Vec<(Vec<u8>, u64, i32, bool)>,
    /// (segment duration, media time) of each edit.
    pub elst: Vec<(i64, i64)>,
    pub co64: bool,
}

/// Reads every sample of a progressive MP4 through stts/ctts/stss/stsc/stsz/stco.
pub fn read_progressive(file: &[u8]) -> Vec<ReadTrack> {
    let moov = find(file, &[b"moov"]).expect("moov");
    let mut tracks = Vec::new();
    for (k, trak) in children(moov) {
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

// ---------------------------------------------------------------------------------------------
// Fragmented MP4

/// A track of a fragmented MP4's init segment.
#[derive(Clone, Debug)]
pub struct Track {
    pub id: u32,
    /// `hdlr` handler type: `vide`, `soun`, ...
    pub handler: [u8; 4],
    pub timescale: u32,
    /// The first sample entry of `stsd`, header included (`avc1`, `hvc1`, `mp4a`, ...).
    pub sample_entry: Vec<u8>,
}

/// One sample of a `trun`, resolved against the `tfhd` and `trex` defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub size: u32,
    pub duration: u32,
    pub cts: i32,
    pub sync: bool,
}

/// One `trun`.
#[derive(Clone, Debug)]
pub struct Run {
    pub track_id: u32,
    /// `tfdt` of its track fragment, if there is one.
    pub tfdt: Option<u64>,
    /// File offset of its first sample's data.
    pub data_start: u64,
    pub samples: Vec<Sample>,
}

/// A `moof` and the `mdat` after it.
#[derive(Clone, Debug)]
pub struct Fragment {
    /// File offset of the `moof`.
    pub moof: u64,
    /// File range of the `mdat` body.
    pub payload: Range<u64>,
    pub runs: Vec<Run>,
}

/// A whole fragmented MP4: its tracks (in `moov` order) and fragments (in file order).
#[derive(Clone, Debug)]
pub struct Fragmented {
    pub tracks: Vec<Track>,
    pub fragments: Vec<Fragment>,
}

/// (default duration, size, flags) of a track, from `trex` and `tfhd`.
type Defaults = (u32, u32, u32);

/// The top-level boxes, with a `free` box that holds one `moov` or `moof` (then only zeros)
/// seen as that box (how a recording in progress keeps its init `moov` and its `moof`s out of the final
/// file's way).
pub fn top_level_unwrapped(file: &[u8]) -> Vec<BoxAt> {
    boxes(file)
        .map(|b| {
            if &b.kind != b"free" || b.end - b.body < 8 {
                return b;
            }
            let padded = |i: &BoxAt| file[b.body + i.end..b.end].iter().all(|&x| x == 0);
            match boxes(&file[b.body..b.end]).next() {
                Some(i) if (&i.kind == b"moov" || &i.kind == b"moof") && padded(&i) => {
                    BoxAt { kind: i.kind, start: b.body + i.start, body: b.body + i.body, end: b.body + i.end }
                }
                _ => b,
            }
        })
        .collect()
}

/// Reads a complete fragmented MP4 (`ftyp`, `moov` with `mvex`, then `moof`+`mdat` pairs;
/// other boxes are skipped; see [`top_level_unwrapped`]). Each run's samples must lie inside
/// the `mdat` that follows.
pub fn read_fragmented(file: &[u8]) -> Fragmented {
    let top: Vec<BoxAt> = top_level_unwrapped(file);
    let moov = top.iter().find(|b| &b.kind == b"moov").expect("moov");
    let moov = &file[moov.body..moov.end];
    let mut tracks = Vec::new();
    for (k, trak) in children(moov) {
        if &k != b"trak" {
            continue;
        }
        let tkhd = find(trak, &[b"tkhd"]).expect("tkhd");
        let id = be32(&tkhd[if tkhd[0] == 1 { 20 } else { 12 }..]);
        let mdhd = find(trak, &[b"mdia", b"mdhd"]).expect("mdhd");
        let timescale = be32(&mdhd[if mdhd[0] == 1 { 20 } else { 12 }..]);
        let handler: [u8; 4] = find(trak, &[b"mdia", b"hdlr"]).expect("hdlr")[8..12].try_into().unwrap();
        let stsd = find(trak, &[b"mdia", b"minf", b"stbl", b"stsd"]).expect("stsd");
        let entry = boxes(&stsd[8..]).next().expect("a sample entry");
        let sample_entry = stsd[8 + entry.start..8 + entry.end].to_vec();
        tracks.push(Track { id, handler, timescale, sample_entry });
    }
    let mut trex: Vec<(u32, Defaults)> = Vec::new();
    for (k, b) in children(find(moov, &[b"mvex"]).expect("mvex: a fragmented file")) {
        if &k == b"trex" {
            trex.push((be32(&b[4..]), (be32(&b[12..]), be32(&b[16..]), be32(&b[20..]))));
        }
    }
    let mut fragments = Vec::new();
    for (i, b) in top.iter().enumerate() {
        if &b.kind != b"moof" {
            continue;
        }
        let mdat = top.get(i + 1).filter(|m| &m.kind == b"mdat").expect("an mdat after each moof");
        let payload = mdat.body as u64..mdat.end as u64;
        let runs = read_moof(&file[b.body..b.end], b.start as u64, &trex);
        for r in &runs {
            let len: u64 = r.samples.iter().map(|s| u64::from(s.size)).sum();
            assert!(
                r.data_start >= payload.start && r.data_start + len <= payload.end,
                "a run of the moof at {} lies outside its mdat",
                b.start
            );
        }
        fragments.push(Fragment { moof: b.start as u64, payload, runs });
    }
    Fragmented { tracks, fragments }
}

fn read_moof(moof: &[u8], moof_start: u64, trex: &[(u32, Defaults)]) -> Vec<Run> {
    let mut runs = Vec::new();
    for (k, traf) in children(moof) {
        if &k != b"traf" {
            continue;
        }
        let tfhd = find(traf, &[b"tfhd"]).expect("tfhd");
        let flags = be32(tfhd) & 0x00ff_ffff;
        let track_id = be32(&tfhd[4..]);
        let (mut duration, mut size, mut sflags) =
            trex.iter().find(|(id, _)| *id == track_id).map_or((0, 0, 0), |&(_, d)| d);
        let mut at = 8;
        let mut field = |on: u32, len: usize| -> Option<u64> {
            (flags & on != 0).then(|| {
                let v = if len == 8 { be64(&tfhd[at..]) } else { u64::from(be32(&tfhd[at..])) };
                at += len;
                v
            })
        };
        // Without a base data offset, offsets count from the moof (default-base-is-moof, or
        // the first traf of a moof, which is all our files and ffmpeg's have).
        let base = field(0x01, 8).unwrap_or(moof_start);
        field(0x02, 4);
        duration = field(0x08, 4).map_or(duration, |v| v as u32);
        size = field(0x10, 4).map_or(size, |v| v as u32);
        sflags = field(0x20, 4).map_or(sflags, |v| v as u32);
        let tfdt = find(traf, &[b"tfdt"]).map(|b| if b[0] == 1 { be64(&b[4..]) } else { u64::from(be32(&b[4..])) });
        let mut next_data = base;
        for (k, t) in children(traf) {
            if &k != b"trun" {
                continue;
            }
            let (version, flags) = (t[0], be32(t) & 0x00ff_ffff);
            let count = be32(&t[4..]);
            let mut at = 8;
            let mut word = || {
                let v = be32(&t[at..]);
                at += 4;
                v
            };
            let data_start = if flags & 0x01 != 0 {
                base.checked_add_signed(i64::from(word() as i32)).expect("trun data offset")
            } else {
                next_data
            };
            let first_flags = (flags & 0x04 != 0).then(&mut word);
            let mut samples = Vec::new();
            for i in 0..count {
                let d = if flags & 0x100 != 0 { word() } else { duration };
                let s = if flags & 0x200 != 0 { word() } else { size };
                let mut f = if flags & 0x400 != 0 { word() } else { sflags };
                if i == 0 {
                    f = first_flags.unwrap_or(f);
                }
                let cts = if flags & 0x800 != 0 {
                    let v = word();
                    if version == 0 {
                        i32::try_from(v).expect("a version 0 trun's offset fits i32")
                    } else {
                        v as i32
                    }
                } else {
                    0
                };
                // sample_is_non_sync_sample
                samples.push(Sample { size: s, duration: d, cts, sync: f & 0x0001_0000 == 0 });
            }
            next_data = data_start + samples.iter().map(|s| u64::from(s.size)).sum::<u64>();
            runs.push(Run { track_id, tfdt, data_start, samples });
        }
    }
    runs
}
