//! MP4 writer. Every byte of media is written once, where it stays: the file being recorded is
//! already the final file but for its head.
//!
//! - `ftyp`, then a reserved region: a `free` box holding the init `moov` (with `mvex`, what
//!   recovery reads the tracks from), padded to room for the final `moov` — sized from the
//!   file's planned length (the template's interval) and the stream's frame rates.
//! - Then a fragment at every video keyframe and at least every [`FRAGMENT_MS`]: its `moof`
//!   wrapped in a `free` box, then an `mdat` with its payload. A reader of the final file
//!   skips the `free` boxes; recovery after a crash reads them.
//! - A recorder's muxer ([`Mp4Muxer::drained`]) writes at every [`Muxer::drain`] (a flush, so
//!   that its frames are not held in memory past the write; five a second) an `mdat` of what
//!   is ready, and the fragment's `moof` after those `mdat`s when the fragment ends (data
//!   offsets pointing back), followed in its `free` box by where the `free` box of the `moof`
//!   before it starts: one `moof` a fragment, not one a write, and the close reads them back
//!   from the last ([`recover_chain`]), one read each. A crash loses the writes after the
//!   last `moof`: at most a fragment.
//! - At close the head — `ftyp` + final `moov` + `free` padding, exactly as long as the region
//!   it replaces — is written over the start of the file ([`Rewrite`] with one range, the
//!   body in place): the file is a progressive MP4 with the `moov` first and one `mdat` per
//!   fragment (a recorder's: per write). Nothing is copied.
//! - When the `moov` outgrows the reservation (a file longer than planned), it goes at the end
//!   instead (the `tail`), the region becomes one `free` box: still no copy, still a valid
//!   file; a player reading it over HTTP fetches the end first. An offline muxer
//!   ([`Mp4Muxer::new`], `reel remux`) reserves nothing and lays the file out anew, `moov`
//!   first, behind a copy.
//!
//! Frame payloads are never copied here: the writer emits the boxes it builds plus slices of
//! the frames.
//!
//! A recording whose writer died is finalised by [`recover`] / [`recover_from`], which build the
//! same `moov` from what the fragments on disk say (shared sample table model, `table.rs`).
//! A recorder's muxer keeps no sample tables at all ([`Mp4Muxer::index_from_file`]): at close
//! the same reading of its own file gives the `moov`, so its memory does not grow with the file.
//!
//! Driving it:
//! - Push every frame in arrival order, sequence headers included. The tracks are decided
//!   when the sequence headers are known and video has a keyframe (video frames before it are
//!   dropped), or [`PREROLL_MS`] passed with one track ready; nothing is emitted before the
//!   first fragment, whose samples tell the frame rate the reservation is sized from.
//!   Until then at most [`MAX_PREROLL_FRAMES`] frames are held (reference-counted, not copied).
//! - Append the emitted chunks to the temporary file in order; [`Mp4Muxer::bytes_written`] is
//!   its length. A recorder that batches its writes calls [`Muxer::drain`] before each (and
//!   says how often with [`Mp4Muxer::drained`]); without it, call [`Mp4Muxer::flush`] on a
//!   timer in case the stream stalls.
//! - [`Muxer::finish`] emits the last fragment, then returns the [`Rewrite`]: the final file is
//!   `head` ++ the temporary file from the end of the reserved region ++ `tail`.
//!   `Ok(None)`: the file holds no sample; discard it.
//! - An error from `push` (a sequence header or codec changed mid-file) ends this file: finish
//!   it and give the new headers to a new muxer. Unsupported or late tracks are not errors;
//!   they are counted in [`Mp4Stats`].

mod boxes;
mod codec;
mod faststart;
mod recover;
mod table;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use self::boxes::{write_ftyp, write_init_moov, BoxWriter, FLAGS_NON_SYNC, FLAGS_SYNC};
use self::codec::{aac_setup, av1_temporal_delimiter_len, mp3_setup, mpeg_audio_header, video_setup, Setup};
use self::faststart::{finalize, Layout};
use self::table::{TrackInfo, TrackKind, TrackTable};
use super::{Chunks, MuxError, Muxer, Rewrite};
use crate::media::{Codec, Frame, FrameKind};

pub use self::recover::{recover, recover_chain, recover_from, RecoverError};

/// Longest stretch of media (by decode time, ms) a fragment holds: what a crash can lose, plus
/// the one sample per track held back until the next one gives its duration.
pub const FRAGMENT_MS: i64 = 1000;
/// The first fragment of a drained muxer ([`Mp4Muxer::drained`]) ends once it spans this much:
/// enough samples to size the reservation from, and the recorder's drains (which wait for the
/// head) start this soon, instead of a whole fragment being held at every file's start.
pub const FIRST_FRAGMENT_MS: i64 = 300;
/// Every video keyframe starts a new fragment, unless keyframes come closer together than
/// this (all-intra video): then only once the current fragment spans this much.
pub const MIN_KEYFRAME_FRAGMENT_MS: i64 = 200;
/// Before the init segment: how long to wait (stream time) for the other track's sequence
/// header once one track is ready, and how much audio to keep while waiting for a keyframe.
pub const PREROLL_MS: i64 = 1000;
/// Before the init segment: at most this many frames are held (bounds memory for streams
/// with broken timestamps).
pub const MAX_PREROLL_FRAMES: usize = 256;
/// With a video sequence header but no keyframe for this long (stream time, ms), start the file
/// without video.
pub const MAX_KEYFRAME_WAIT_MS: i64 = 20_000;
/// A decode timestamp this far behind (or [`MAX_FORWARD_JUMP_MS`] ahead of) the newest one is
/// a discontinuity (publisher restart, timestamp reset): the timeline continues from the newest
/// sample instead.
pub const MAX_BACKWARD_JUMP_MS: i64 = 2000;
pub const MAX_FORWARD_JUMP_MS: i64 = 10_000;

/// A live file of no planned length (one per publish) reserves `moov` room for this long;
/// a longer one gets its `moov` at the end.
pub const UNPLANNED_FILE_MS: u64 = 10 * 60_000;
/// Most room reserved for the `moov` (about two hours of 30 fps video with audio): the head an
/// object storage upload sends last must fit in its first part (S3: ≥ 5 MiB).
pub const MAX_RESERVED_BYTES: u64 = 4 << 20;

/// Zeros the reserved region is padded with (sliced, never copied into a buffer).
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Used for a final video sample when there is no earlier duration to copy: 40 ms.
const DEFAULT_VIDEO_DURATION: u32 = 3600;

/// What the writer did with the frames it was given, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mp4Stats {
    /// Fragments written (`moof` + `mdat` pairs; a drained muxer: its writes, each an `mdat`).
    pub fragments: u64,
    /// Samples accepted (written or about to be written in the next fragment).
    pub samples: u64,
    /// Video frames dropped because they came before the first keyframe or its sequence header.
    pub dropped_before_keyframe: u64,
    /// Audio frames dropped while waiting for the first video keyframe (older than
    /// [`PREROLL_MS`]).
    pub dropped_preroll: u64,
    /// Frames of a track the file does not have: its sequence header came after the init
    /// segment was written, or never came.
    pub dropped_no_track: u64,
    /// Frames MP4 does not carry here: other codecs, script data, empty payloads.
    pub skipped: u64,
    /// Sequence headers that did not parse (the track is left out).
    pub invalid_configs: u64,
    /// Timestamp jumps smoothed over (see [`MAX_BACKWARD_JUMP_MS`]).
    pub discontinuities: u64,
}

/// A sample waiting for its fragment. `duration` is 0 until the next sample of the track
/// arrives (or the file ends).
struct Pending {
    data: Bytes,
    /// Timeline position in ms (decode time), for fragment cadence.
    ms: i64,
    time: u64,
    duration: u32,
    cts: i32,
    sync: bool,
    /// `data` is its own copy, not a slice of the block the frame arrived in.
    owned: bool,
}

struct Track {
    info: TrackInfo,
    setup: Setup,
    pending: Vec<Pending>,
    /// What the fragments written so far hold (empty when the index is read back from the
    /// file at close: [`Mp4Muxer::index_from_file`]).
    table: TrackTable,
    /// Samples in the fragments written so far, the decode time after the last one, and its
    /// duration (kept either way).
    written: u64,
    next_time: u64,
    last_duration: Option<u32>,
}

impl Track {
    fn complete(&self) -> usize {
        self.pending.iter().take_while(|p| p.duration > 0).count()
    }

    /// A duration for the last sample when nothing follows it.
    fn estimated_duration(&self) -> u32 {
        match self.info.kind {
            TrackKind::Audio if self.setup.frame_samples > 0 => self.setup.frame_samples,
            _ => {
                self.pending.iter().rev().find(|p| p.duration > 0).map(|p| p.duration).or(self.last_duration).unwrap_or(
                    match self.info.kind {
                        TrackKind::Video => DEFAULT_VIDEO_DURATION,
                        TrackKind::Audio => 1024,
                    },
                )
            }
        }
    }
}

/// MP4 writer; see the module documentation.
///
/// Output order: nothing until the first fragment (tracks decided: sequence headers known and,
/// for video, a keyframe, see [`PREROLL_MS`]); then `ftyp` + the reserved region with the
/// init `moov`; then fragments.
pub struct Mp4Muxer {
    scratch: BytesMut,
    video: Option<Setup>,
    audio: Option<Setup>,
    /// Frames held until the init segment is written.
    preroll: VecDeque<Frame>,
    /// Decode time of the first video keyframe in `preroll`.
    preroll_keyframe: Option<i64>,
    first_dts: Option<i64>,
    newest_dts: i64,
    /// The file's tracks, once the init segment is written.
    tracks: Vec<Track>,
    init_written: bool,
    /// `ftyp` and the reserved region are out (with the first fragment).
    head_written: bool,
    /// Decode timestamp (ms) that is time 0 of the file.
    base: i64,
    /// Correction added to timestamps after discontinuities.
    shift: i64,
    newest_ms: Option<i64>,
    /// Timeline position (ms) of the oldest sample not yet in a fragment.
    fragment_start: Option<i64>,
    last_keyframe_ms: Option<i64>,
    sequence: u32,
    /// Bytes of the file so far.
    written: u64,
    /// How long a file the `moov` room is planned for (ms); 0: no room (offline).
    plan_ms: u64,
    /// Length of `ftyp`, and where the reserved region ends (the first fragment starts).
    ftyp_len: u64,
    head_end: u64,
    /// How often the recorder drains the muxer ([`Muxer::drain`]): at most every `.0` ms,
    /// or every `.1` bytes; each drain is a fragment, which the reservation counts.
    drains: Option<(u64, u64)>,
    stats: Mp4Stats,
    finished: bool,
    /// The sample tables are kept for the final `moov` (else read back from the file at close).
    index: bool,
    /// A drained muxer's runs written since its last `moof`, which describes them once the
    /// fragment ends ([`Mp4Muxer::write_moof`]), and their samples.
    deferred: Vec<DeferredRun>,
    deferred_samples: Vec<DeferredSample>,
    /// Where the last `moof`'s `free` box starts (0: none yet).
    last_moof_at: u64,
}

/// Samples written in an `mdat` whose `moof` is still to come.
struct DeferredRun {
    track: usize,
    /// Decode time of its first sample, and where its data is in the file.
    time: u64,
    offset: u64,
    /// Its samples in [`Mp4Muxer::deferred_samples`], and when the first was (timeline ms).
    samples: std::ops::Range<usize>,
    ms: i64,
}

struct DeferredSample {
    duration: u32,
    size: u32,
    cts: i32,
    sync: bool,
}

impl Default for Mp4Muxer {
    fn default() -> Self {
        Self::new()
    }
}

impl Mp4Muxer {
    pub fn new() -> Self {
        Self {
            scratch: BytesMut::with_capacity(4096),
            video: None,
            audio: None,
            preroll: VecDeque::new(),
            preroll_keyframe: None,
            first_dts: None,
            newest_dts: 0,
            tracks: Vec::new(),
            init_written: false,
            head_written: false,
            base: 0,
            shift: 0,
            newest_ms: None,
            fragment_start: None,
            last_keyframe_ms: None,
            sequence: 0,
            written: 0,
            plan_ms: 0,
            ftyp_len: 0,
            head_end: 0,
            drains: None,
            stats: Mp4Stats::default(),
            finished: false,
            index: true,
            deferred: Vec::new(),
            deferred_samples: Vec::new(),
            last_moof_at: 0,
        }
    }

    /// A muxer for a live file cut every `interval_ms` (0: one file per publish): reserves room
    /// for the final `moov` so that the file is finished in place.
    pub fn reserving(interval_ms: u64) -> Self {
        // A file closes at the first keyframe past its interval: some slack.
        let plan_ms = if interval_ms == 0 { UNPLANNED_FILE_MS } else { interval_ms + interval_ms / 10 + 10_000 };
        Self { plan_ms, ..Self::new() }
    }

    /// Keeps no sample tables: [`Muxer::finish`] returns a [`Rewrite`] marked
    /// [`from_file`](Rewrite::from_file), and the caller reads the index back from the file
    /// (`recover_from`: the same `moov`, byte for byte, from the fragments' headers). What a
    /// recording holds in memory then does not grow with its file (about 7 bytes per sample:
    /// ≈ 1 MB for a 30-minute file at 30 fps with AAC). For a file with room reserved.
    pub fn index_from_file(mut self) -> Self {
        self.index = false;
        self
    }

    /// The recorder drains the muxer at every flush: at least every `every_ms`, and whenever
    /// `bytes` are waiting. The room for the `moov` counts those fragments too.
    pub fn drained(mut self, every_ms: u64, bytes: u64) -> Self {
        self.drains = Some((every_ms.max(1), bytes.max(1)));
        self
    }

    /// Fragments a second to plan for: one per keyframe (about one a second or fewer), plus
    /// one per drain (by time, or by the bytes of the first fragment's rate).
    fn fragments_per_s(&self) -> u64 {
        let Some((every_ms, bytes)) = self.drains else { return 2 };
        let by_time = 1000u64.div_ceil(every_ms);
        let (size, span) = self.tracks.iter().fold((0u64, 0i64), |(size, span), t| {
            let s: u64 = t.pending.iter().map(|p| p.data.len() as u64).sum();
            let d = match (t.pending.first(), t.pending.last()) {
                (Some(a), Some(b)) => b.ms - a.ms,
                _ => 0,
            };
            (size + s, span.max(d))
        });
        // Any format's batch reaching `bytes` drains them all; MPEG-TS runs ~25% above MP4.
        let by_bytes = if span > 0 { (size * 1000 * 5 / 4 / span as u64).div_ceil(bytes) } else { 0 };
        by_time.max(by_bytes) + 1
    }

    /// Room for the final `moov` of a `plan_ms` file, from the first fragment's samples: per
    /// second, each video frame costs a size, a duration and a composition offset (timestamps
    /// in ms rarely run-length encode) and a little for keyframes, each audio frame a size and
    /// a little, each fragment ([`Self::fragments_per_s`]) an offset and a `stsc` entry per track;
    /// plus the boxes the init `moov` already has, and a tenth for what was not foreseen.
    fn reservation(&self, init_len: u64) -> u64 {
        if self.plan_ms == 0 {
            return 0;
        }
        let fragments = self.fragments_per_s();
        let per_s: u64 = self
            .tracks
            .iter()
            .map(|t| {
                let rate = match (t.info.kind, t.setup.frame_samples) {
                    (TrackKind::Audio, n) if n > 0 => u64::from(t.info.timescale).div_ceil(u64::from(n)),
                    _ => match (t.pending.first(), t.pending.last()) {
                        (Some(a), Some(b)) if t.pending.len() >= 4 && b.ms > a.ms => {
                            (t.pending.len() as u64 - 1) * 1000 / (b.ms - a.ms) as u64
                        }
                        _ => 30,
                    },
                };
                let per_sample = if t.info.kind == TrackKind::Video { 21 } else { 5 };
                rate.clamp(1, 240) * per_sample + fragments * 20
            })
            .sum();
        let bytes = init_len * 2 + 2048 + per_s * self.plan_ms.div_ceil(1000) * 11 / 10;
        bytes.min(MAX_RESERVED_BYTES)
    }

    /// `ftyp` and the reserved region holding the init `moov`, before the first fragment.
    fn write_head(&mut self, out: &mut Chunks) -> Result<(), MuxError> {
        let infos: Vec<TrackInfo> = self.tracks.iter().map(|t| t.info.clone()).collect();
        let mut init = BytesMut::new();
        let mut w = BoxWriter::new(&mut init);
        write_init_moov(&mut w, &infos);
        w.done()?;
        let init_len = init.len() as u64 + 8;
        let room = self.reservation(init_len).max(init_len);
        let mut w = BoxWriter::new(&mut self.scratch);
        write_ftyp(&mut w);
        let ftyp_len = w.len();
        // The `free` box's header and the init `moov`; its padding is slices of a static
        // block of zeros: no buffer as large as the room (tens of KB per file, at every cut).
        w.u32(room as u32);
        w.bytes(b"free");
        w.bytes(&init);
        w.done()?;
        let head = self.scratch.split().freeze();
        self.ftyp_len = ftyp_len as u64;
        self.head_end = ftyp_len as u64 + room;
        self.written = self.head_end;
        out.push(head);
        let mut left = (room - init_len) as usize;
        while left > 0 {
            let n = left.min(ZEROS.len());
            out.push(Bytes::from_static(&ZEROS[..n]));
            left -= n;
        }
        self.head_written = true;
        Ok(())
    }

    pub fn stats(&self) -> Mp4Stats {
        self.stats
    }

    /// Whether the tracks are decided (the file has started; its head goes out with the first
    /// fragment).
    pub fn init_written(&self) -> bool {
        self.init_written
    }

    /// Bytes emitted so far (the length of the fragmented file).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Writes a fragment now with every sample whose duration is known (all but the newest
    /// sample of each track), for a recorder whose stream stalled: without new frames the
    /// regular cadence does not run. Does nothing before the init segment.
    pub fn flush(&mut self, out: &mut Chunks) -> Result<(), MuxError> {
        if !self.init_written || self.finished {
            return Ok(());
        }
        self.write_fragment(out, false)?;
        self.write_moof(out)?;
        self.fragment_start = self.tracks.iter().flat_map(|t| t.pending.iter().map(|p| p.ms)).min();
        Ok(())
    }

    fn track_index(&self, kind: FrameKind) -> Option<usize> {
        let want = match kind {
            FrameKind::Video => TrackKind::Video,
            FrameKind::Audio => TrackKind::Audio,
            FrameKind::Data => return None,
        };
        self.tracks.iter().position(|t| t.info.kind == want)
    }

    fn on_config(&mut self, f: &Frame, out: &mut Chunks) -> Result<(), MuxError> {
        let payload = f.payload();
        let current = match f.kind {
            FrameKind::Video => &self.video,
            _ => &self.audio,
        };
        if current.as_ref().is_some_and(|s| s.codec == f.codec && s.config == payload) {
            return Ok(()); // repeated sequence header
        }
        if self.init_written {
            if self.track_index(f.kind).is_some() {
                let what = if f.kind == FrameKind::Video { "video" } else { "audio" };
                return Err(MuxError::Invalid(format!(
                    "{what} decoder configuration changed mid-file; MP4 needs a new file from here"
                )));
            }
            // A track that is not in the init segment cannot be added to a fragmented file.
            self.stats.dropped_no_track += 1;
            return Ok(());
        }
        let setup = match (f.kind, f.codec) {
            (FrameKind::Video, codec) => video_setup(codec, &payload),
            (FrameKind::Audio, Codec::Aac) => aac_setup(&payload),
            _ => {
                self.stats.skipped += 1;
                return Ok(());
            }
        };
        let Ok(setup) = setup else {
            self.stats.invalid_configs += 1;
            return Ok(());
        };
        // A different header before the file started: frames buffered under the old one go.
        // (Frames buffered before the first header are kept: it describes them.)
        let kind = f.kind;
        let before = self.preroll.len();
        if current.is_some() {
            self.preroll.retain(|p| p.kind != kind);
        }
        let dropped = (before - self.preroll.len()) as u64;
        if kind == FrameKind::Video {
            self.stats.dropped_before_keyframe += dropped;
            self.preroll_keyframe = None;
            self.video = Some(setup);
        } else {
            self.stats.dropped_preroll += dropped;
            self.audio = Some(setup);
        }
        if !self.preroll.is_empty() {
            self.maybe_start(out, false)?;
        }
        Ok(())
    }

    fn preroll_push(&mut self, f: &Frame, out: &mut Chunks) -> Result<(), MuxError> {
        match f.kind {
            FrameKind::Video => {
                if self.video.as_ref().map(|s| s.codec) != Some(f.codec) {
                    self.stats.dropped_before_keyframe += 1;
                    return Ok(());
                }
                if self.preroll_keyframe.is_none() {
                    if !f.keyframe {
                        self.stats.dropped_before_keyframe += 1;
                        return Ok(());
                    }
                    self.preroll_keyframe = Some(f.dts);
                }
            }
            _ => {
                if f.codec == Codec::Mp3 && self.audio.is_none() {
                    match mp3_setup(f.payload_ref()) {
                        Ok(s) => self.audio = Some(s),
                        Err(_) => {
                            self.stats.skipped += 1;
                            return Ok(());
                        }
                    }
                }
            }
        }
        self.newest_dts = if self.first_dts.is_none() { f.dts } else { self.newest_dts.max(f.dts) };
        self.first_dts.get_or_insert(f.dts);
        self.preroll.push_back(f.clone());
        self.maybe_start(out, false)
    }

    /// Writes the init segment if the tracks are ready (or `force`, at the end of the file);
    /// otherwise keeps the preroll buffer bounded.
    fn maybe_start(&mut self, out: &mut Chunks, force: bool) -> Result<(), MuxError> {
        let video_ready = self.video.is_some() && self.preroll_keyframe.is_some();
        let audio_ready = self.audio.is_some();
        let newest = self.newest_dts;
        let oldest = self.preroll.front().map_or(newest, |f| f.dts);
        let waited = newest - self.first_dts.unwrap_or(newest);
        let start = if force {
            video_ready || audio_ready
        } else {
            (video_ready && (audio_ready || newest - self.preroll_keyframe.unwrap_or(newest) >= PREROLL_MS))
                || (audio_ready && self.video.is_none() && newest - oldest >= PREROLL_MS)
                || (audio_ready && !video_ready && waited >= MAX_KEYFRAME_WAIT_MS)
                || ((video_ready || audio_ready) && self.preroll.len() >= MAX_PREROLL_FRAMES)
        };
        if start {
            return self.start(out, video_ready, audio_ready);
        }
        if self.preroll_keyframe.is_none() {
            while let Some(f) = self.preroll.front() {
                if newest - f.dts <= PREROLL_MS && self.preroll.len() <= MAX_PREROLL_FRAMES {
                    break;
                }
                self.preroll.pop_front();
                self.stats.dropped_preroll += 1;
            }
        }
        Ok(())
    }

    fn start(&mut self, out: &mut Chunks, video: bool, audio: bool) -> Result<(), MuxError> {
        let setups = [self.video.as_ref().filter(|_| video), self.audio.as_ref().filter(|_| audio)];
        for setup in setups.into_iter().flatten() {
            let info = TrackInfo {
                id: self.tracks.len() as u32 + 1,
                kind: setup.kind,
                timescale: setup.timescale,
                width: setup.width,
                height: setup.height,
                sample_entry: setup.sample_entry.clone(),
            };
            self.tracks.push(Track {
                info,
                setup: setup.clone(),
                pending: Vec::new(),
                table: TrackTable::default(),
                written: 0,
                next_time: 0,
                last_duration: None,
            });
        }
        // The head is written with the first fragment, once its samples tell the frame rate.
        self.init_written = true;

        let frames = std::mem::take(&mut self.preroll);
        self.base = frames.iter().filter(|f| self.track_index(f.kind).is_some()).map(|f| f.dts).min().unwrap_or(0);
        for f in &frames {
            match self.track_index(f.kind) {
                Some(i) => self.add_sample(i, f, out)?,
                None => self.stats.dropped_no_track += 1,
            }
        }
        Ok(())
    }

    /// Maps a decode timestamp to the file's timeline (ms), smoothing over discontinuities.
    fn timeline(&mut self, dts: i64) -> i64 {
        let mut t = dts + self.shift - self.base;
        if let Some(newest) = self.newest_ms {
            if t < newest - MAX_BACKWARD_JUMP_MS || t > newest + MAX_FORWARD_JUMP_MS {
                self.shift += newest - t;
                t = newest;
                self.stats.discontinuities += 1;
            }
        }
        self.newest_ms = Some(self.newest_ms.map_or(t, |n| n.max(t)));
        t
    }

    fn add_sample(&mut self, ti: usize, f: &Frame, out: &mut Chunks) -> Result<(), MuxError> {
        let mut data = f.payload();
        if f.codec == Codec::Av1 {
            let n = av1_temporal_delimiter_len(&data);
            data = data.slice(n..);
        }
        if data.is_empty() {
            self.stats.skipped += 1;
            return Ok(());
        }
        u32::try_from(data.len()).map_err(|_| MuxError::Invalid(format!("frame of {} bytes", data.len())))?;
        let t = &self.tracks[ti];
        if t.setup.codec != f.codec {
            return Err(MuxError::Invalid(format!(
                "codec changed from {} to {} mid-file; MP4 needs a new file from here",
                t.setup.codec.name(),
                f.codec.name()
            )));
        }
        if f.codec == Codec::Mp3 {
            if let Some(h) = mpeg_audio_header(&data) {
                if h.sample_rate != t.info.timescale {
                    return Err(MuxError::Invalid(
                        "MP3 sample rate changed mid-file; MP4 needs a new file from here".into(),
                    ));
                }
            }
        }

        let ms = self.timeline(f.dts);
        let t = &mut self.tracks[ti];
        let video = t.info.kind == TrackKind::Video;
        let timescale = i128::from(t.info.timescale);
        let target = ((i128::from(ms) * timescale * 2 + 1000) / 2000) as i64;
        let time = match t.pending.last() {
            None if t.written == 0 => target.max(0) as u64,
            None => t.next_time,
            Some(prev) => {
                let mut time = target;
                let n = i64::from(t.setup.frame_samples);
                if !video && n > 0 {
                    // Audio frames are a fixed number of samples: keep that exact while the
                    // timestamps agree within half a frame, follow the timestamps otherwise.
                    let expected = prev.time as i64 + n;
                    if (target - expected).abs() <= n / 2 {
                        time = expected;
                    }
                }
                let duration = (time - prev.time as i64).clamp(1, i64::from(u32::MAX));
                prev.time + duration as u64
            }
        };
        if let Some(prev) = t.pending.last_mut() {
            prev.duration = (time - prev.time) as u32;
        }
        let sync = !video || f.keyframe;
        let cts = if video { f.cts.saturating_mul((t.info.timescale / 1000) as i32) } else { 0 };
        let mut keyframe_cut = false;

        if video && sync {
            // Normal GOPs cut at every keyframe; all-intra video only every MIN_KEYFRAME_FRAGMENT_MS.
            let gop = self.last_keyframe_ms.map_or(i64::MAX, |k| ms - k);
            self.last_keyframe_ms = Some(ms);
            keyframe_cut = gop >= MIN_KEYFRAME_FRAGMENT_MS;
        }
        if let Some(s) = self.fragment_start {
            let span = ms - s;
            let most = if self.head_written || self.drains.is_none() { FRAGMENT_MS } else { FIRST_FRAGMENT_MS };
            if span >= most || (video && sync && (keyframe_cut || span >= MIN_KEYFRAME_FRAGMENT_MS)) {
                self.flush(out)?;
            }
        }
        self.tracks[ti].pending.push(Pending { data, ms, time, duration: 0, cts, sync, owned: false });
        self.fragment_start = Some(self.fragment_start.map_or(ms, |s| s.min(ms)));
        self.stats.samples += 1;
        Ok(())
    }

    /// Writes the samples whose durations are known (all of them if `last`) as a fragment.
    fn write_fragment(&mut self, out: &mut Chunks, last: bool) -> Result<(), MuxError> {
        let mut counts = [0usize; 2];
        for (i, t) in self.tracks.iter_mut().enumerate() {
            if last {
                let estimate = t.estimated_duration();
                if let Some(p) = t.pending.last_mut().filter(|p| p.duration == 0) {
                    p.duration = estimate;
                }
            }
            counts[i] = t.complete();
        }
        let run_len = |t: &Track, n: usize| t.pending[..n].iter().map(|p| p.data.len() as u64).sum::<u64>();
        let payload: u64 = self.tracks.iter().zip(counts).map(|(t, n)| run_len(t, n)).sum();
        if payload == 0 {
            return Ok(());
        }
        let mdat_header: u64 = if payload + 8 > u64::from(u32::MAX) { 16 } else { 8 };
        if !self.head_written {
            self.write_head(out)?;
        }
        if self.drains.is_some() {
            return self.write_runs(out, counts, payload, mdat_header);
        }

        let mut w = BoxWriter::new(&mut self.scratch);
        // The moof is for recovery only: a reader of the final file skips the free box.
        w.open(b"free");
        let moof_at = w.len();
        w.open(b"moof");
        w.open_full(b"mfhd", 0, 0);
        w.u32(self.sequence.wrapping_add(1));
        w.close();
        let mut patches = [(0usize, 0u64); 2];
        let mut run_start = 0u64;
        for (i, t) in self.tracks.iter().enumerate() {
            let n = counts[i];
            if n == 0 {
                continue;
            }
            let video = t.info.kind == TrackKind::Video;
            open_traf(&mut w, &t.info, t.pending[0].time, n);
            patches[i] = (w.len(), run_start);
            w.u32(0);
            for p in &t.pending[..n] {
                trun_entry(&mut w, video, p.duration, p.data.len() as u32, p.sync, p.cts);
            }
            w.close();
            w.close();
            run_start += run_len(t, n);
        }
        w.close();
        let moof_len = (w.len() - moof_at) as u64;
        w.close(); // free
        for (i, &(at, start)) in patches.iter().enumerate() {
            if counts.get(i).is_some_and(|&n| n > 0) {
                let off = u32::try_from(moof_len + mdat_header + start)
                    .ok()
                    .filter(|&o| o <= i32::MAX as u32)
                    .ok_or_else(|| MuxError::Invalid("fragment larger than 2 GiB".into()))?;
                w.patch_u32(at, off);
            }
        }
        self::mdat_header(&mut w, payload, mdat_header);
        w.done()?;
        let header = self.scratch.split().freeze();

        let payload_start = self.written + header.len() as u64;
        out.push(header);
        let mut offset = payload_start;
        for (i, t) in self.tracks.iter_mut().enumerate() {
            let n = counts[i];
            if n == 0 {
                continue;
            }
            if self.index {
                t.table.begin_chunk(offset, t.pending[0].time);
            }
            for p in t.pending.drain(..n) {
                if self.index {
                    t.table.push(p.data.len() as u32, p.duration, p.cts, p.sync);
                }
                t.written += 1;
                t.next_time = p.time + u64::from(p.duration);
                t.last_duration = Some(p.duration);
                offset += p.data.len() as u64;
                out.push(p.data);
            }
        }
        self.written = payload_start + payload;
        self.sequence = self.sequence.wrapping_add(1);
        self.stats.fragments += 1;
        if self.scratch.capacity() < 1024 {
            self.scratch.reserve(4096);
        }
        Ok(())
    }
}

/// An `mdat` header for `payload` bytes (`header_len` 16: a 64-bit size).
fn mdat_header(w: &mut BoxWriter<'_>, payload: u64, header_len: u64) {
    if header_len == 16 {
        w.u32(1);
        w.bytes(b"mdat");
        w.u64(payload + 16);
    } else {
        w.u32((payload + 8) as u32);
        w.bytes(b"mdat");
    }
}

/// Opens a `traf` of `info`'s track and its `trun` of `count` samples from decode time
/// `time`, up to the data offset the caller writes next; then one [`trun_entry`] per sample,
/// and two closes.
fn open_traf(w: &mut BoxWriter<'_>, info: &TrackInfo, time: u64, count: usize) {
    let video = info.kind == TrackKind::Video;
    w.open(b"traf");
    // default-base-is-moof; audio: default sample flags (all sync).
    w.open_full(b"tfhd", 0, if video { 0x02_0000 } else { 0x02_0020 });
    w.u32(info.id);
    if !video {
        w.u32(FLAGS_SYNC);
    }
    w.close();
    w.open_full(b"tfdt", 1, 0);
    w.u64(time);
    w.close();
    if video {
        // data offset, duration, size, flags, composition offset (signed, version 1)
        w.open_full(b"trun", 1, 0x0f01);
    } else {
        w.open_full(b"trun", 0, 0x0301);
    }
    w.u32(count as u32);
}

/// A sample of a `trun` [`open_traf`] opened.
fn trun_entry(w: &mut BoxWriter<'_>, video: bool, duration: u32, size: u32, sync: bool, cts: i32) {
    w.u32(duration);
    w.u32(size);
    if video {
        w.u32(if sync { FLAGS_SYNC } else { FLAGS_NON_SYNC });
        w.i32(cts);
    }
}

impl Mp4Muxer {
    /// A drained muxer's write: the samples whose durations are known go out in an `mdat` of
    /// their own, at once (a recorder's flush holds nothing back), and their `moof` comes once
    /// the fragment ends ([`Self::write_moof`]): one `moof` a fragment, not one a write, so
    /// that the index read back at close is a few reads, not one per write.
    fn write_runs(
        &mut self,
        out: &mut Chunks,
        counts: [usize; 2],
        payload: u64,
        mdat_header: u64,
    ) -> Result<(), MuxError> {
        let mut w = BoxWriter::new(&mut self.scratch);
        self::mdat_header(&mut w, payload, mdat_header);
        w.done()?;
        let header = self.scratch.split().freeze();
        let mut offset = self.written + header.len() as u64;
        out.push(header);
        for (i, t) in self.tracks.iter_mut().enumerate() {
            let n = counts[i];
            if n == 0 {
                continue;
            }
            let first = self.deferred_samples.len();
            let (time, ms) = (t.pending[0].time, t.pending[0].ms);
            if self.index {
                t.table.begin_chunk(offset, time);
            }
            let start = offset;
            for p in t.pending.drain(..n) {
                let size = p.data.len() as u32;
                if self.index {
                    t.table.push(size, p.duration, p.cts, p.sync);
                }
                self.deferred_samples.push(DeferredSample { duration: p.duration, size, cts: p.cts, sync: p.sync });
                t.written += 1;
                t.next_time = p.time + u64::from(p.duration);
                t.last_duration = Some(p.duration);
                offset += u64::from(size);
                out.push(p.data);
            }
            self.deferred.push(DeferredRun { track: i, time, offset: start, samples: first..first + n, ms });
        }
        self.written = offset;
        self.stats.fragments += 1;
        Ok(())
    }

    /// The `moof` of the runs written since the last one (nothing if none), after them: in a
    /// `free` box (a reader of the final file skips it), one `traf` per run whose data offset
    /// points back to its `mdat`, then where the `free` box of the `moof` before it starts
    /// (8 bytes, 0 for the first): the index read back at close walks from the last `moof` to
    /// the first ([`recover_chain`]).
    fn write_moof(&mut self, out: &mut Chunks) -> Result<(), MuxError> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let mut w = BoxWriter::new(&mut self.scratch);
        w.open(b"free");
        let moof_at = self.written + w.len() as u64;
        w.open(b"moof");
        w.open_full(b"mfhd", 0, 0);
        w.u32(self.sequence.wrapping_add(1));
        w.close();
        for run in &self.deferred {
            let t = &self.tracks[run.track];
            let video = t.info.kind == TrackKind::Video;
            open_traf(&mut w, &t.info, run.time, run.samples.len());
            let back = i32::try_from(run.offset as i64 - moof_at as i64)
                .map_err(|_| MuxError::Invalid("fragment larger than 2 GiB".into()))?;
            w.i32(back);
            for s in &self.deferred_samples[run.samples.clone()] {
                trun_entry(&mut w, video, s.duration, s.size, s.sync, s.cts);
            }
            w.close();
            w.close();
        }
        w.close(); // moof
        w.u64(self.last_moof_at);
        w.close(); // free
        w.done()?;
        let boxes = self.scratch.split().freeze();
        self.last_moof_at = self.written;
        self.written += boxes.len() as u64;
        out.push(boxes);
        self.sequence = self.sequence.wrapping_add(1);
        self.deferred.clear();
        self.deferred_samples.clear();
        if self.scratch.capacity() < 1024 {
            self.scratch.reserve(4096);
        }
        Ok(())
    }

    /// Timeline ms since the first run still waiting for its `moof`.
    fn deferred_span(&self) -> i64 {
        match (self.deferred.iter().map(|r| r.ms).min(), self.newest_ms) {
            (Some(first), Some(newest)) => newest - first,
            _ => 0,
        }
    }
}

impl Muxer for Mp4Muxer {
    fn container(&self) -> &'static str {
        "mp4"
    }

    fn push(&mut self, f: &Frame, out: &mut Chunks) -> Result<(), MuxError> {
        if self.finished {
            return Err(MuxError::Invalid("frame pushed after the MP4 file was finished".into()));
        }
        let supported = match f.kind {
            FrameKind::Video => matches!(f.codec, Codec::H264 | Codec::Hevc | Codec::Av1),
            FrameKind::Audio => matches!(f.codec, Codec::Aac | Codec::Mp3),
            FrameKind::Data => false,
        };
        if !supported {
            if f.kind != FrameKind::Data {
                self.stats.skipped += 1;
            }
            return Ok(());
        }
        if f.config {
            return self.on_config(f, out);
        }
        if !self.init_written {
            return self.preroll_push(f, out);
        }
        match self.track_index(f.kind) {
            Some(i) => self.add_sample(i, f, out),
            None => {
                self.stats.dropped_no_track += 1;
                Ok(())
            }
        }
    }

    /// A fragment of what is held now (once the head is out: its room is sized from the first
    /// fragment's own cadence), so a recorder's flush writes these samples instead of keeping
    /// their frames in memory until the next keyframe.
    /// The sample held back per track (its duration comes with the next one) is copied out of
    /// its frame, so it does not keep the read block of the frames just written alive.
    fn drain(&mut self, out: &mut Chunks) -> Result<(), MuxError> {
        if !self.head_written {
            return Ok(());
        }
        // The samples go out now; their `moof` at the fragment's end (a keyframe), or once
        // the runs waiting for it span a fragment.
        self.write_fragment(out, false)?;
        if self.deferred_span() >= FRAGMENT_MS {
            self.write_moof(out)?;
        }
        self.fragment_start = self.tracks.iter().flat_map(|t| t.pending.iter().map(|p| p.ms)).min();
        for p in self.tracks.iter_mut().flat_map(|t| t.pending.iter_mut()).filter(|p| !p.owned) {
            p.data = Bytes::copy_from_slice(&p.data);
            p.owned = true;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Chunks) -> Result<Option<Rewrite>, MuxError> {
        if self.finished {
            return Ok(None);
        }
        self.finished = true;
        if !self.init_written && !self.preroll.is_empty() {
            self.maybe_start(out, true)?;
        }
        if !self.init_written {
            self.stats.dropped_no_track += self.preroll.len() as u64;
            self.preroll.clear();
            return Ok(None);
        }
        self.write_fragment(out, true)?;
        self.write_moof(out)?;
        if !self.index {
            let chain = (self.drains.is_some() && self.last_moof_at > 0).then_some(self.last_moof_at);
            return Ok(Some(Rewrite { from_file: true, last_moof: chain, ..Rewrite::default() }));
        }
        let tracks: Vec<(&TrackInfo, &TrackTable)> = self.tracks.iter().map(|t| (&t.info, &t.table)).collect();
        let layout = Layout {
            ftyp_len: self.ftyp_len,
            head_end: self.head_end,
            end: self.written,
            moov_at_end: self.plan_ms > 0,
        };
        finalize(&tracks, layout)
    }
}
