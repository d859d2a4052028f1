//! Reading a recording in progress back: the init `moov` (in the reserved region's `free` box)
//! into [`TrackInfo`]s and each complete fragment (a `free` box holding a `moof`, then an
//! `mdat`) into sample runs. [`recover`] uses it to finish a recording whose writer died: every
//! fragment that made it to disk whole is kept, a torn tail is ignored. Top-level `moof`s (any
//! fragmented MP4's) are read the same way.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use bytes::Bytes;

use super::faststart::{finalize, Layout};
use super::table::{TrackInfo, TrackKind, TrackTable};
use crate::mux::{MuxError, Rewrite};

/// Largest `moov` we read. Ours are a few hundred bytes; anything near this is not ours.
const MAX_MOOV_BYTES: u64 = 16 << 20;
/// Largest `moof` we read. A one-second fragment of ours is a few kilobytes.
const MAX_MOOF_BYTES: u64 = 16 << 20;
/// Most `mdat`s one `moof` after them describes (a recording writes a few a second, and a
/// fragment spans a second or a GOP): what the reader keeps while it looks for their `moof`.
const MAX_MDATS_PER_MOOF: usize = 4096;
/// Most samples one `trun` may declare (a `trun` using only defaults has no per-sample bytes
/// to bound its count).
const MAX_RUN_SAMPLES: u32 = 1 << 20;

/// Errors of [`recover_from`].
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("reading the fragmented file")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Mux(#[from] MuxError),
}

fn invalid(why: impl Into<String>) -> MuxError {
    MuxError::Invalid(why.into())
}

/// One sample as a `trun` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SampleRec {
    pub size: u32,
    pub duration: u32,
    pub cts: i32,
    pub sync: bool,
}

/// A `trun` resolved against its defaults: where its data is and what its samples are.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    pub track_id: u32,
    /// `tfdt` of the track fragment, if present.
    pub tfdt: Option<u64>,
    /// File offset of the first sample's data.
    pub data_start: u64,
    pub samples: Vec<SampleRec>,
}

/// A complete `moof` + `mdat` pair, or `mdat`s and the `moof` after them.
#[derive(Clone, Debug)]
pub(crate) struct Fragment {
    /// File range of the `mdat` payload (the `moof` after its `mdat`s: from the first one's
    /// payload to the end of the `moof`'s box).
    pub payload: Range<u64>,
    pub runs: Vec<Run>,
    /// The `moof` is a top-level box (not ours, wrapped in `free`).
    pub top_level: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Defaults {
    duration: u32,
    size: u32,
    flags: u32,
}

/// Big-endian cursor over a box body; every read is bounds-checked.
struct Cur<'a> {
    b: &'a [u8],
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MuxError> {
        if self.b.len() < n {
            return Err(invalid("MP4 box shorter than its fields"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u32(&mut self) -> Result<u32, MuxError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, MuxError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
    /// FullBox version and flags.
    fn full(&mut self) -> Result<(u8, u32), MuxError> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0x00ff_ffff))
    }
}

/// Iterates the child boxes of `data` as (type, whole box, body). Stops at a malformed size.
pub(crate) fn children(data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8], &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 8 {
            return None;
        }
        let size32 = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let kind = [rest[4], rest[5], rest[6], rest[7]];
        let (size, header) = match size32 {
            0 => (rest.len() as u64, 8),
            1 => {
                let b = rest.get(8..16)?;
                (u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]), 16)
            }
            s => (u64::from(s), 8),
        };
        let size = usize::try_from(size).ok().filter(|&s| s >= header && s <= rest.len())?;
        let (whole, tail) = rest.split_at(size);
        rest = tail;
        Some((kind, whole, &whole[header..]))
    })
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(data).find(|(k, _, _)| k == kind).map(|(_, _, body)| body)
}

/// Reads a recording from the start: `ftyp`, the init `moov`, then fragments on demand.
pub(crate) struct FragmentReader<R> {
    r: R,
    len: u64,
    pos: u64,
    pub tracks: Vec<TrackInfo>,
    trex: Vec<(u32, Defaults)>,
    /// Length of the `ftyp`, and the end of the box holding the init `moov`.
    pub ftyp_len: u64,
    pub head_end: u64,
    /// The `moov` is a final one (no `mvex`): the file was finished (a crash came after its
    /// head was written, before it was published).
    pub finished: bool,
    /// Payloads of the `mdat`s read since the last `moof` (a drained recording writes its
    /// `mdat`s first and their `moof` after them).
    mdats: Vec<Range<u64>>,
}

/// A top-level box header.
struct Header {
    kind: [u8; 4],
    start: u64,
    header_len: u64,
    end: u64,
}

impl<R: Read + Seek> FragmentReader<R> {
    /// Reads up to the end of the init `moov` (ours: inside the `free` box after `ftyp`; any
    /// fragmented MP4's: a top-level `moov` with `mvex`). `Ok(None)` if the file ends before
    /// it is complete.
    pub fn new(mut r: R) -> Result<Option<Self>, RecoverError> {
        let len = r.seek(SeekFrom::End(0))?;
        let mut me = Self {
            r,
            len,
            pos: 0,
            tracks: Vec::new(),
            trex: Vec::new(),
            ftyp_len: 0,
            head_end: 0,
            finished: false,
            mdats: Vec::new(),
        };
        let Some(first) = me.header()? else { return Ok(None) };
        if &first.kind != b"ftyp" {
            return Err(invalid("not an MP4 file: it does not start with ftyp").into());
        }
        me.pos = first.end;
        me.ftyp_len = first.end;
        loop {
            let Some(h) = me.header()? else { return Ok(None) };
            let moov = match &h.kind {
                b"moov" => Some(Header { kind: *b"moov", ..h }),
                b"free" => me.wrapped(&h, b"moov")?,
                b"moof" | b"mdat" => return Err(invalid("media data before the moov").into()),
                _ => None,
            };
            let Some(moov) = moov else {
                me.pos = h.end;
                continue;
            };
            if moov.end - moov.start > MAX_MOOV_BYTES {
                return Err(invalid("moov too large for a recording in progress").into());
            }
            let body = me.read_body(&moov)?;
            me.parse_moov(&body)?;
            me.finished = me.trex.is_empty();
            me.pos = h.end;
            me.head_end = h.end;
            return Ok(Some(me));
        }
    }

    /// The box of type `kind` that fills the `free` box `h`, if that is what it holds.
    fn wrapped(&mut self, h: &Header, kind: &[u8; 4]) -> Result<Option<Header>, RecoverError> {
        if h.end - h.start < h.header_len + 8 {
            return Ok(None);
        }
        let saved = self.pos;
        self.pos = h.start + h.header_len;
        let inner = self.header()?;
        self.pos = saved;
        Ok(inner.filter(|i| &i.kind == kind && i.end <= h.end))
    }

    /// The header of the box at `pos`, if it is complete in the file.
    fn header(&mut self) -> Result<Option<Header>, RecoverError> {
        let start = self.pos;
        if self.len.saturating_sub(start) < 8 {
            return Ok(None);
        }
        let mut b = [0u8; 16];
        self.r.seek(SeekFrom::Start(start))?;
        self.r.read_exact(&mut b[..8])?;
        let size32 = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let kind = [b[4], b[5], b[6], b[7]];
        let (size, header_len) = match size32 {
            // Size 0 ("to end of file") or a zeroed tail after a crash: nothing more we wrote.
            0 => return Ok(None),
            1 => {
                if self.len - start < 16 {
                    return Ok(None);
                }
                self.r.read_exact(&mut b[8..16])?;
                (u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]), 16)
            }
            s => (u64::from(s), 8),
        };
        if size < header_len {
            return Ok(None);
        }
        let end = start.checked_add(size).filter(|&e| e <= self.len);
        Ok(end.map(|end| Header { kind, start, header_len, end }))
    }

    fn read_body(&mut self, h: &Header) -> Result<Vec<u8>, RecoverError> {
        let n = usize::try_from(h.end - h.start - h.header_len).map_err(|_| invalid("box too large"))?;
        let mut body = vec![0u8; n];
        self.r.seek(SeekFrom::Start(h.start + h.header_len))?;
        self.r.read_exact(&mut body)?;
        Ok(body)
    }

    fn parse_moov(&mut self, moov: &[u8]) -> Result<(), MuxError> {
        for (kind, _, body) in children(moov) {
            match &kind {
                b"trak" => {
                    if let Some(t) = parse_trak(body)? {
                        self.tracks.push(t);
                    }
                }
                b"mvex" => {
                    for (k, _, b) in children(body) {
                        if &k == b"trex" {
                            let mut c = Cur { b };
                            c.full()?;
                            let id = c.u32()?;
                            c.u32()?; // sample description index
                            let d = Defaults { duration: c.u32()?, size: c.u32()?, flags: c.u32()? };
                            self.trex.push((id, d));
                        }
                    }
                }
                _ => {}
            }
        }
        if self.tracks.is_empty() {
            return Err(invalid("moov has no audio or video track"));
        }
        Ok(())
    }

    /// The next complete `moof` + `mdat`. `Ok(None)` at the end of the file, at a torn
    /// fragment, or at a fragment that does not make sense (nothing after it is trusted).
    pub fn next_fragment(&mut self) -> Result<Option<Fragment>, RecoverError> {
        loop {
            let Some(outer) = self.header()? else { return Ok(None) };
            let h = match &outer.kind {
                b"moof" => Header { kind: *b"moof", ..outer },
                b"free" => match self.wrapped(&outer, b"moof")? {
                    Some(h) => h,
                    None => {
                        self.pos = outer.end;
                        continue;
                    }
                },
                b"mdat" => {
                    if self.mdats.len() >= MAX_MDATS_PER_MOOF {
                        // More writes than a fragment holds, and no moof: nothing to trust.
                        return Ok(None);
                    }
                    self.mdats.push(outer.start + outer.header_len..outer.end);
                    self.pos = outer.end;
                    continue;
                }
                _ => {
                    self.pos = outer.end;
                    continue;
                }
            };
            if h.end - h.start > MAX_MOOF_BYTES {
                return Ok(None);
            }
            self.pos = outer.end;
            if !self.mdats.is_empty() {
                // A moof after its mdats: each run must lie in one of them.
                let mdats = std::mem::take(&mut self.mdats);
                let body = self.read_body(&h)?;
                let Ok(runs) = self.parse_moof(&body, h.start) else { return Ok(None) };
                let inside = |run: &Run| {
                    let len: u64 = run.samples.iter().map(|s| u64::from(s.size)).sum();
                    mdats.iter().any(|m| run.data_start >= m.start && run.data_start + len <= m.end)
                };
                if !runs.iter().all(inside) {
                    return Ok(None);
                }
                let payload = mdats[0].start..outer.end;
                return Ok(Some(Fragment { payload, runs, top_level: &outer.kind == b"moof" }));
            }
            let Some(mdat) = self.header()? else { return Ok(None) };
            if &mdat.kind != b"mdat" {
                return Ok(None);
            }
            let body = self.read_body(&h)?;
            let payload = mdat.start + mdat.header_len..mdat.end;
            let Ok(runs) = self.parse_moof(&body, h.start) else { return Ok(None) };
            for run in &runs {
                let len: u64 = run.samples.iter().map(|s| u64::from(s.size)).sum();
                if run.data_start < payload.start || run.data_start + len > payload.end {
                    return Ok(None);
                }
            }
            self.pos = mdat.end;
            return Ok(Some(Fragment { payload, runs, top_level: &outer.kind == b"moof" }));
        }
    }

    fn parse_moof(&self, moof: &[u8], moof_start: u64) -> Result<Vec<Run>, MuxError> {
        let mut runs = Vec::new();
        for (kind, _, traf) in children(moof) {
            if &kind != b"traf" {
                continue;
            }
            let tfhd = child(traf, b"tfhd").ok_or_else(|| invalid("traf without tfhd"))?;
            let mut c = Cur { b: tfhd };
            let (_, flags) = c.full()?;
            let track_id = c.u32()?;
            let mut d = self.trex.iter().find(|(id, _)| *id == track_id).map(|&(_, d)| d).unwrap_or_default();
            let mut base = moof_start;
            if flags & 0x01 != 0 {
                base = c.u64()?;
            }
            if flags & 0x02 != 0 {
                c.u32()?; // sample description index
            }
            if flags & 0x08 != 0 {
                d.duration = c.u32()?;
            }
            if flags & 0x10 != 0 {
                d.size = c.u32()?;
            }
            if flags & 0x20 != 0 {
                d.flags = c.u32()?;
            }
            let tfdt = match child(traf, b"tfdt") {
                Some(b) => {
                    let mut c = Cur { b };
                    let (v, _) = c.full()?;
                    Some(if v == 1 { c.u64()? } else { u64::from(c.u32()?) })
                }
                None => None,
            };
            let mut next_data = base;
            for (k, _, b) in children(traf) {
                if &k != b"trun" {
                    continue;
                }
                let mut c = Cur { b };
                let (version, flags) = c.full()?;
                let count = c.u32()?;
                let data_start = if flags & 0x01 != 0 {
                    let off = c.u32()? as i32;
                    base.checked_add_signed(i64::from(off)).ok_or_else(|| invalid("trun data offset"))?
                } else {
                    next_data
                };
                let first_flags = if flags & 0x04 != 0 { Some(c.u32()?) } else { None };
                let per_sample = [0x100, 0x200, 0x400, 0x800].iter().filter(|&&f| flags & f != 0).count();
                if count > MAX_RUN_SAMPLES || (count as usize).saturating_mul(per_sample * 4) > c.b.len() {
                    return Err(invalid("trun sample count past its box"));
                }
                let mut samples = Vec::with_capacity(count as usize);
                for i in 0..count {
                    let duration = if flags & 0x100 != 0 { c.u32()? } else { d.duration };
                    let size = if flags & 0x200 != 0 { c.u32()? } else { d.size };
                    let mut sflags = if flags & 0x400 != 0 { c.u32()? } else { d.flags };
                    if i == 0 {
                        if let Some(f) = first_flags {
                            sflags = f;
                        }
                    }
                    let cts = if flags & 0x800 != 0 {
                        let v = c.u32()?;
                        if version == 0 {
                            i32::try_from(v).unwrap_or(i32::MAX)
                        } else {
                            v as i32
                        }
                    } else {
                        0
                    };
                    samples.push(SampleRec { size, duration, cts, sync: sflags & 0x0001_0000 == 0 });
                }
                next_data = data_start + samples.iter().map(|s| u64::from(s.size)).sum::<u64>();
                runs.push(Run { track_id, tfdt, data_start, samples });
            }
        }
        Ok(runs)
    }
}

fn parse_trak(trak: &[u8]) -> Result<Option<TrackInfo>, MuxError> {
    let tkhd = child(trak, b"tkhd").ok_or_else(|| invalid("trak without tkhd"))?;
    let mut c = Cur { b: tkhd };
    let (version, _) = c.full()?;
    c.take(if version == 1 { 16 } else { 8 })?;
    let id = c.u32()?;
    // reserved, duration, reserved[2], layer, group, volume, reserved, matrix
    c.take(4 + if version == 1 { 8 } else { 4 } + 8 + 8 + 36)?;
    let width = (c.u32()? >> 16) as u16;
    let height = (c.u32()? >> 16) as u16;

    let mdia = child(trak, b"mdia").ok_or_else(|| invalid("trak without mdia"))?;
    let mdhd = child(mdia, b"mdhd").ok_or_else(|| invalid("mdia without mdhd"))?;
    let mut c = Cur { b: mdhd };
    let (version, _) = c.full()?;
    c.take(if version == 1 { 16 } else { 8 })?;
    let timescale = c.u32()?;
    if timescale == 0 {
        return Err(invalid("track timescale 0"));
    }
    let hdlr = child(mdia, b"hdlr").ok_or_else(|| invalid("mdia without hdlr"))?;
    let mut c = Cur { b: hdlr };
    c.full()?;
    c.u32()?;
    let kind = match c.take(4)? {
        b"vide" => TrackKind::Video,
        b"soun" => TrackKind::Audio,
        _ => return Ok(None),
    };
    let stsd = child(mdia, b"minf")
        .and_then(|m| child(m, b"stbl"))
        .and_then(|s| child(s, b"stsd"))
        .ok_or_else(|| invalid("track without stsd"))?;
    let mut c = Cur { b: stsd };
    c.full()?;
    c.u32()?;
    let (_, entry, _) = children(c.b).next().ok_or_else(|| invalid("stsd without a sample entry"))?;
    Ok(Some(TrackInfo { id, kind, timescale, width, height, sample_entry: Bytes::copy_from_slice(entry) }))
}

/// Finalises a fragmented recording from the bytes of its file. See [`recover_from`].
pub fn recover(data: &[u8]) -> Result<Option<Rewrite>, MuxError> {
    recover_from(std::io::Cursor::new(data)).map_err(|e| match e {
        RecoverError::Mux(e) => e,
        RecoverError::Io(e) => invalid(e.to_string()),
    })
}

/// Finishes a recording left behind by a writer that died (SIGKILL, power loss): reads the
/// init `moov` and every complete fragment, ignores a torn tail, and returns the [`Rewrite`]
/// that makes the file the MP4 [`Mp4Muxer::finish`] would have made from those fragments
/// (the `moov` in the reserved region, or at the end when it does not fit). Only box headers
/// and `moof`s are read, not the media data.
///
/// A file whose head already holds the final `moov` (a crash between finishing and publishing)
/// is kept as it is. `Ok(None)`: the file ends before the first complete fragment; there is
/// nothing to keep.
///
/// [`Mp4Muxer::finish`]: super::Mp4Muxer
pub fn recover_from<R: Read + Seek>(file: R) -> Result<Option<Rewrite>, RecoverError> {
    let Some(mut reader) = FragmentReader::new(file)? else { return Ok(None) };
    if reader.finished {
        // Published as it is.
        return Ok(Some(Rewrite {
            head: Bytes::new(),
            ranges: std::iter::once(0..reader.len).collect(),
            tail: Bytes::new(),
            from_file: false,
            last_moof: None,
        }));
    }
    let mut tables: Vec<TrackTable> = vec![TrackTable::default(); reader.tracks.len()];
    let mut end = reader.head_end;
    let mut top_level_moof = false;
    while let Some(f) = reader.next_fragment()? {
        add_runs(&reader.tracks, &mut tables, &f.runs);
        top_level_moof |= f.top_level;
        end = f.payload.end;
    }
    if top_level_moof {
        // Its moofs would stay in the file beside the moov; not a layout this writer makes.
        return Err(invalid("a fragmented MP4 with top-level moofs, not a recording of this writer").into());
    }
    let tracks: Vec<(&TrackInfo, &TrackTable)> = reader.tracks.iter().zip(&tables).collect();
    let layout = Layout { ftyp_len: reader.ftyp_len, head_end: reader.head_end, end, moov_at_end: true };
    Ok(finalize(&tracks, layout)?)
}

/// The header of the box at `at`.
fn child_header<R: Read + Seek>(reader: &mut FragmentReader<R>, at: u64) -> Result<Header, RecoverError> {
    reader.pos = at;
    reader.header()?.ok_or_else(|| invalid(format!("no box at {at}")).into())
}

/// Adds a fragment's runs to the tables of their tracks.
fn add_runs(tracks: &[TrackInfo], tables: &mut [TrackTable], runs: &[Run]) {
    for run in runs {
        let Some(i) = tracks.iter().position(|t| t.id == run.track_id) else { continue };
        if run.samples.is_empty() {
            continue;
        }
        let table = &mut tables[i];
        let time = run.tfdt.unwrap_or(table.start.saturating_add(table.duration));
        table.begin_chunk(run.data_start, time);
        for s in &run.samples {
            table.push(s.size, s.duration, s.cts, s.sync);
        }
    }
}

/// Most bytes of `moof`s [`recover_chain`] keeps from its walk back to the first one; the
/// others are read again on the way forward.
const CHAIN_KEPT_BYTES: usize = 256 << 10;

/// [`recover_from`] for a complete recording of a drained muxer, whose `moof`s come after
/// their `mdat`s, each followed (in its `free` box) by where the one before it starts:
/// `last_moof` ([`Rewrite::last_moof`]) is the last one's. Walks the `moof`s from the last to
/// the first, one read each and nothing of the `mdat`s between them, keeping up to
/// [`CHAIN_KEPT_BYTES`] of them (those of a file of several minutes) so that only a longer
/// file's are read a second time on the way forward. The same `moov` as [`recover_from`]
/// makes from the same file.
pub fn recover_chain<R: Read + Seek>(file: R, last_moof: u64) -> Result<Option<Rewrite>, RecoverError> {
    let Some(mut reader) = FragmentReader::new(file)? else { return Ok(None) };
    if reader.finished {
        return Err(invalid("a finished MP4 where a recording's last moof was expected").into());
    }
    // Each moof's box and its body if kept, last first.
    let mut moofs: Vec<(Header, Option<Vec<u8>>)> = Vec::new();
    let (mut at, mut kept) = (last_moof, 0usize);
    loop {
        if at < reader.head_end {
            return Err(invalid(format!("a moof at {at}, inside the file's head")).into());
        }
        reader.pos = at;
        let outer = reader.header()?.filter(|h| &h.kind == b"free");
        let h = match &outer {
            Some(outer) => reader.wrapped(outer, b"moof")?,
            None => None,
        };
        let (Some(outer), Some(h)) = (outer, h) else {
            return Err(invalid(format!("no moof at {at}")).into());
        };
        if h.end - h.start > MAX_MOOF_BYTES || h.end + 8 > outer.end {
            return Err(invalid(format!("the moof at {at} does not say where the one before it is")).into());
        }
        let body = reader.read_body(&h)?;
        let mut prev = [0u8; 8];
        reader.r.seek(SeekFrom::Start(h.end))?;
        reader.r.read_exact(&mut prev)?;
        let prev = u64::from_be_bytes(prev);
        kept += body.len();
        let end = outer.end;
        moofs.push((Header { end, ..h }, (kept <= CHAIN_KEPT_BYTES).then_some(body)));
        if prev == 0 {
            break;
        }
        if prev >= at {
            return Err(invalid(format!("the moof at {at} names one after it ({prev})")).into());
        }
        at = prev;
    }
    let end = moofs.first().map(|(h, _)| h.end);
    let mut tables: Vec<TrackTable> = vec![TrackTable::default(); reader.tracks.len()];
    for (h, body) in moofs.into_iter().rev() {
        // `h` is the moof's header, but for its end: that of its free box.
        let body = match body {
            Some(b) => b,
            None => {
                let moof = child_header(&mut reader, h.start)?;
                reader.read_body(&moof)?
            }
        };
        let runs = reader.parse_moof(&body, h.start)?;
        for run in &runs {
            let len: u64 = run.samples.iter().map(|s| u64::from(s.size)).sum();
            if run.data_start < reader.head_end || run.data_start + len > h.start {
                return Err(invalid(format!("the moof at {} points past its data", h.start)).into());
            }
        }
        add_runs(&reader.tracks, &mut tables, &runs);
    }
    let end = end.unwrap_or(reader.head_end);
    let tracks: Vec<(&TrackInfo, &TrackTable)> = reader.tracks.iter().zip(&tables).collect();
    let layout = Layout { ftyp_len: reader.ftyp_len, head_end: reader.head_end, end, moov_at_end: true };
    Ok(finalize(&tracks, layout)?)
}
