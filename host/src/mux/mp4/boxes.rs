//! ISO BMFF box writing: a size-patching box writer, `ftyp`, the init `moov` of the fragmented
//! file and the indexed `moov` of the final file. Both `moov`s are built from the same
//! [`TrackInfo`] records, so the final file describes exactly what the fragments carried.

use bytes::BytesMut;

use super::table::{TrackInfo, TrackKind, TrackTable};
use crate::mux::MuxError;

/// Movie timescale (`mvhd`, `tkhd`, `elst` durations): milliseconds.
pub(crate) const MOVIE_TIMESCALE: u32 = 1000;

/// Deepest nesting we write: moov/trak/mdia/minf/stbl/stsd/avc1/avcC.
const MAX_DEPTH: usize = 12;

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// `und` packed as three 5-bit letters.
const LANGUAGE_UND: u16 = 0x55c4;

/// Sample flags: a sync sample (depends on no other sample).
pub(crate) const FLAGS_SYNC: u32 = 0x0200_0000;
/// Sample flags: a non-sync sample (depends on others, `sample_is_non_sync_sample`).
pub(crate) const FLAGS_NON_SYNC: u32 = 0x0101_0000;

/// Writes boxes into a `BytesMut`, patching each box's 32-bit size when it is closed.
pub(crate) struct BoxWriter<'a> {
    buf: &'a mut BytesMut,
    stack: [usize; MAX_DEPTH],
    depth: usize,
    too_big: bool,
}

impl<'a> BoxWriter<'a> {
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Self { buf, stack: [0; MAX_DEPTH], depth: 0, too_big: false }
    }

    pub fn open(&mut self, kind: &[u8; 4]) {
        assert!(self.depth < MAX_DEPTH, "box nesting deeper than {MAX_DEPTH}");
        self.stack[self.depth] = self.buf.len();
        self.depth += 1;
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        self.buf.extend_from_slice(kind);
    }

    /// Opens a FullBox: header, then version and 24-bit flags.
    pub fn open_full(&mut self, kind: &[u8; 4], version: u8, flags: u32) {
        self.open(kind);
        self.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
    }

    pub fn close(&mut self) {
        assert!(self.depth > 0, "close without open");
        self.depth -= 1;
        let start = self.stack[self.depth];
        let size = u32::try_from(self.buf.len() - start).unwrap_or_else(|_| {
            self.too_big = true;
            0
        });
        self.buf[start..start + 4].copy_from_slice(&size.to_be_bytes());
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.extend_from_slice(&[v]);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    pub fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }

    /// Bytes in the underlying buffer (box positions are indexes into it).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn patch_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// Checks every box was closed and fit a 32-bit size.
    pub fn done(self) -> Result<(), MuxError> {
        if self.depth != 0 {
            return Err(MuxError::Invalid("MP4 box left open".into()));
        }
        if self.too_big {
            return Err(MuxError::Invalid("MP4 box larger than 4 GiB".into()));
        }
        Ok(())
    }
}

/// `ftyp`, the same for the fragmented and the final file.
pub(crate) fn write_ftyp(w: &mut BoxWriter) {
    w.open(b"ftyp");
    w.bytes(b"isom");
    w.u32(0x200);
    for brand in [b"isom", b"iso2", b"iso6", b"mp41"] {
        w.bytes(brand);
    }
    w.close();
}

/// Opens a `mvhd`, `tkhd` or `mdhd`: version 1 if `duration` needs 64 bits, else 0, then zero
/// creation and modification times, `fields` (the timescale, or the track id and a reserved
/// word) and `duration`, times and duration at the width the version gives.
fn open_timed(w: &mut BoxWriter, kind: &[u8; 4], flags: u32, fields: &[u32], duration: u64) {
    let v1 = duration > u64::from(u32::MAX);
    w.open_full(kind, u8::from(v1), flags);
    w.zeros(if v1 { 16 } else { 8 });
    for &f in fields {
        w.u32(f);
    }
    if v1 {
        w.u64(duration);
    } else {
        w.u32(duration as u32);
    }
}

fn write_mvhd(w: &mut BoxWriter, duration: u64, next_track_id: u32) {
    open_timed(w, b"mvhd", 0, &[MOVIE_TIMESCALE], duration);
    w.u32(0x0001_0000); // rate 1.0
    w.u16(0x0100); // volume 1.0
    w.zeros(10);
    for m in MATRIX {
        w.u32(m);
    }
    w.zeros(24);
    w.u32(next_track_id);
    w.close();
}

fn write_tkhd(w: &mut BoxWriter, t: &TrackInfo, duration: u64) {
    // Flags: enabled, in movie, in preview.
    open_timed(w, b"tkhd", 7, &[t.id, 0], duration);
    w.zeros(8);
    w.u16(0); // layer
    w.u16(0); // alternate group
    w.u16(if t.kind == TrackKind::Audio { 0x0100 } else { 0 });
    w.u16(0);
    for m in MATRIX {
        w.u32(m);
    }
    w.u32(u32::from(t.width) << 16);
    w.u32(u32::from(t.height) << 16);
    w.close();
}

fn write_mdhd(w: &mut BoxWriter, timescale: u32, duration: u64) {
    open_timed(w, b"mdhd", 0, &[timescale], duration);
    w.u16(LANGUAGE_UND);
    w.u16(0);
    w.close();
}

fn write_hdlr(w: &mut BoxWriter, kind: TrackKind) {
    w.open_full(b"hdlr", 0, 0);
    w.u32(0);
    match kind {
        TrackKind::Video => w.bytes(b"vide"),
        TrackKind::Audio => w.bytes(b"soun"),
    }
    w.zeros(12);
    match kind {
        TrackKind::Video => w.bytes(b"VideoHandler\0"),
        TrackKind::Audio => w.bytes(b"SoundHandler\0"),
    }
    w.close();
}

/// `minf` up to (not including) `stbl`'s children after `stsd`.
fn open_minf_stbl(w: &mut BoxWriter, t: &TrackInfo) {
    w.open(b"minf");
    match t.kind {
        TrackKind::Video => {
            w.open_full(b"vmhd", 0, 1);
            w.zeros(8);
            w.close();
        }
        TrackKind::Audio => {
            w.open_full(b"smhd", 0, 0);
            w.zeros(4);
            w.close();
        }
    }
    w.open(b"dinf");
    w.open_full(b"dref", 0, 0);
    w.u32(1);
    w.open_full(b"url ", 0, 1); // media data is in this file
    w.close();
    w.close();
    w.close();
    w.open(b"stbl");
    w.open_full(b"stsd", 0, 0);
    w.u32(1);
    w.bytes(&t.sample_entry);
    w.close();
}

/// The `moov` of the fragmented file: tracks with empty sample tables, and `mvex`.
pub(crate) fn write_init_moov(w: &mut BoxWriter, tracks: &[TrackInfo]) {
    w.open(b"moov");
    write_mvhd(w, 0, next_track_id(tracks.iter()));
    for t in tracks {
        w.open(b"trak");
        write_tkhd(w, t, 0);
        w.open(b"mdia");
        write_mdhd(w, t.timescale, 0);
        write_hdlr(w, t.kind);
        open_minf_stbl(w, t);
        for kind in [b"stts", b"stsc", b"stco"] {
            w.open_full(kind, 0, 0);
            w.u32(0);
            w.close();
        }
        w.open_full(b"stsz", 0, 0);
        w.u32(0);
        w.u32(0);
        w.close();
        w.close(); // stbl
        w.close(); // minf
        w.close(); // mdia
        w.close(); // trak
    }
    w.open(b"mvex");
    for t in tracks {
        w.open_full(b"trex", 0, 0);
        w.u32(t.id);
        w.u32(1); // sample description index
        w.u32(0);
        w.u32(0);
        w.u32(0);
        w.close();
    }
    w.close();
    w.close();
}

fn next_track_id<'t>(tracks: impl Iterator<Item = &'t TrackInfo>) -> u32 {
    tracks.map(|t| t.id).max().unwrap_or(0).saturating_add(1)
}

/// Converts `v` in `timescale` units to movie milliseconds, rounding to nearest.
pub(crate) fn to_movie(v: u64, timescale: u32) -> u64 {
    let ts = u128::from(timescale.max(1));
    ((u128::from(v) * u128::from(MOVIE_TIMESCALE) + ts / 2) / ts) as u64
}

/// Presentation layout of one track in the final file.
struct Timing {
    /// Empty edit before the track starts, movie timescale.
    delay: u64,
    /// Media time of the first presented sample (composition offset of the first sample).
    media_time: u64,
    /// Presented duration (from `media_time` to the end of the last presented sample),
    /// movie timescale.
    duration: u64,
}

impl Timing {
    fn needs_edit(&self) -> bool {
        self.delay > 0 || self.media_time > 0
    }
}

/// Where a track's samples are presented, in its media time from its first sample's decode
/// time: the earliest presentation time and the end of the last presented sample. Every
/// sample is counted (publishers whose first frames share a decode time, B-frames whose
/// last pictures are shown after the last one decoded).
fn presentation(t: &TrackTable) -> (i64, i64) {
    let mut offsets = t.ctts.iter().flat_map(|&(n, c)| std::iter::repeat_n(i64::from(c), n as usize));
    let (mut time, mut lo, mut hi) = (0i64, i64::MAX, i64::MIN);
    for &(n, delta) in &t.stts {
        for _ in 0..n {
            let pts = time + offsets.next().unwrap_or(0);
            lo = lo.min(pts);
            hi = hi.max(pts + i64::from(delta));
            time += i64::from(delta);
        }
    }
    if lo > hi {
        (0, 0)
    } else {
        (lo, hi)
    }
}

/// Tracks keep their relative timing: each is delayed (empty edit) by how much later than the
/// earliest track its first sample is presented, presentation starts at its earliest
/// composition time (B-frames: the first picture is shown at time 0 of its track, not later),
/// and lasts until its last sample's presentation ends.
fn timings(tracks: &[(&TrackInfo, &TrackTable)]) -> Vec<Timing> {
    let spans: Vec<(u64, u64)> = tracks
        .iter()
        .map(|(_, t)| {
            let (lo, hi) = presentation(t);
            let media_time = lo.max(0) as u64;
            (media_time, (hi.max(0) as u64).saturating_sub(media_time))
        })
        .collect();
    let shown = |((i, t), (media_time, _)): (&(&TrackInfo, &TrackTable), &(u64, u64))| {
        to_movie(t.start.saturating_add(*media_time), i.timescale)
    };
    let first = tracks.iter().zip(&spans).map(shown).min().unwrap_or(0);
    tracks
        .iter()
        .zip(&spans)
        .map(|(track, span)| Timing {
            delay: shown((track, span)) - first,
            media_time: span.0,
            duration: to_movie(span.1, track.0.timescale),
        })
        .collect()
}

/// The media duration `mdhd` states: the samples' decode span, or longer when the last
/// presented sample ends later.
fn media_duration(t: &TrackTable) -> u64 {
    t.duration.max(presentation(t).1.max(0) as u64)
}

/// The `moov` of the final file. Chunk offsets are where the chunks are in the file being
/// written, moved by `shift` (a head longer or shorter than the region it replaces). `co64`
/// selects 64-bit offsets.
pub(crate) fn write_final_moov(w: &mut BoxWriter, tracks: &[(&TrackInfo, &TrackTable)], shift: i64, co64: bool) {
    let timings = timings(tracks);
    let movie_duration = timings.iter().map(|t| t.delay.saturating_add(t.duration)).max().unwrap_or(0);
    w.open(b"moov");
    write_mvhd(w, movie_duration, next_track_id(tracks.iter().map(|(i, _)| *i)));
    for ((info, table), timing) in tracks.iter().zip(&timings) {
        w.open(b"trak");
        write_tkhd(w, info, timing.delay.saturating_add(timing.duration));
        if timing.needs_edit() {
            write_edts(w, timing);
        }
        w.open(b"mdia");
        write_mdhd(w, info.timescale, media_duration(table));
        write_hdlr(w, info.kind);
        open_minf_stbl(w, info);
        write_sample_tables(w, table, shift, co64);
        w.close(); // stbl
        w.close(); // minf
        w.close(); // mdia
        w.close(); // trak
    }
    w.close();
}

fn write_edts(w: &mut BoxWriter, t: &Timing) {
    let v1 = t.delay.max(t.duration) > u64::from(u32::MAX) || t.media_time > i32::MAX as u64;
    let entry = |w: &mut BoxWriter, duration: u64, media_time: i64| {
        if v1 {
            w.u64(duration);
            w.u64(media_time as u64);
        } else {
            w.u32(duration as u32);
            w.i32(media_time as i32);
        }
        w.u32(0x0001_0000); // rate 1.0
    };
    w.open(b"edts");
    w.open_full(b"elst", u8::from(v1), 0);
    w.u32(if t.delay > 0 { 2 } else { 1 });
    if t.delay > 0 {
        entry(w, t.delay, -1);
    }
    entry(w, t.duration, t.media_time as i64);
    w.close();
    w.close();
}

fn write_sample_tables(w: &mut BoxWriter, t: &TrackTable, shift: i64, co64: bool) {
    w.open_full(b"stts", 0, 0);
    w.u32(t.stts.len() as u32);
    for &(count, delta) in &t.stts {
        w.u32(count);
        w.u32(delta);
    }
    w.close();

    if t.ctts.iter().any(|&(_, c)| c != 0) {
        let negative = t.ctts.iter().any(|&(_, c)| c < 0);
        w.open_full(b"ctts", u8::from(negative), 0);
        w.u32(t.ctts.len() as u32);
        for &(count, offset) in &t.ctts {
            w.u32(count);
            w.i32(offset);
        }
        w.close();
    }

    if !t.all_sync() {
        w.open_full(b"stss", 0, 0);
        w.u32(t.sync.len() as u32);
        for &s in &t.sync {
            w.u32(s);
        }
        w.close();
    }

    w.open_full(b"stsc", 0, 0);
    let count_at = w.len();
    w.u32(0);
    let mut entries = 0u32;
    let mut last = None;
    for (i, &(_, samples)) in t.chunks.iter().enumerate() {
        if last != Some(samples) {
            w.u32(i as u32 + 1);
            w.u32(samples);
            w.u32(1);
            entries += 1;
            last = Some(samples);
        }
    }
    w.patch_u32(count_at, entries);
    w.close();

    w.open_full(b"stsz", 0, 0);
    w.u32(0);
    w.u32(t.sizes.len() as u32);
    for &s in &t.sizes {
        w.u32(s);
    }
    w.close();

    if co64 {
        w.open_full(b"co64", 0, 0);
        w.u32(t.chunks.len() as u32);
        for &(offset, _) in &t.chunks {
            w.u64(offset.saturating_add_signed(shift));
        }
    } else {
        w.open_full(b"stco", 0, 0);
        w.u32(t.chunks.len() as u32);
        for &(offset, _) in &t.chunks {
            w.u32(offset.saturating_add_signed(shift) as u32);
        }
    }
    w.close();
}
