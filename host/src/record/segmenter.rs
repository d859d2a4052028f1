//! Where files and HLS segments begin and end. Sans-IO: frames in, [`Action`]s out.
//!
//! One [`Segmenter`] runs per output of a recording (and in `reel remux`). It owns every rule
//! about pieces of a recording, so live recording and offline remux cut and number alike:
//!
//! - **Cut points**: a video keyframe, or any audio frame while the stream has no video.
//! - **When to cut**: at the first cut point whose *presentation* time is at least the target
//!   after the piece's start (with B-frames a keyframe decodes before it is shown; cutting by
//!   decode time would skip it and make the piece a GOP too long).
//! - **Header replay**: a new file starts with the stream's metadata and current sequence
//!   headers; HLS segments of one playlist share them (the TS muxer keeps them).
//! - **Numbering**: files `0, 1, 2, …` per recording, segments `0, 1, 2, …` per file.
//! - **Durations**: measured on a continuous timeline. A timestamp that jumps back more than
//!   [`JUMP_BACK_MS`] on its track, or forward more than [`JUMP_FORWARD_MS`] past the stream,
//!   is a discontinuity: it costs no time (the track's timeline is re-based onto the stream's)
//!   and the next HLS segment is marked discontinuous. Frames themselves are never altered.
//! - **Empty pieces** never exist: a file opens at its first media sample, so a stream of
//!   headers only produces no action but the headers being kept.
//!
//! ```text
//! for a in seg.push(&frame) { match a { OpenFile{..} => .., Write(f) => mux(f), CloseFile(p) => .. } }
//! ```

use crate::media::{Frame, FrameKind};

/// A timestamp more than this below its track's previous one is a jump, not jitter.
pub const JUMP_BACK_MS: i64 = 1_000;
/// A timestamp more than this beyond the stream's latest is a jump (a publisher that restarted
/// its clock, garbage), not a pause.
pub const JUMP_FORWARD_MS: i64 = 60_000;
/// Assumed frame duration before a track has shown two frames.
const DEFAULT_STEP_MS: i64 = 20;

/// How an output is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// A new file at the first cut point this long (presentation time) after the file's
    /// start; 0 never cuts (one file per publish).
    pub file_ms: u64,
    /// HLS: segments of this target length inside each file; `None` for single-piece files.
    pub segment_ms: Option<u64>,
    /// Close the file when a track's sequence header changes (containers that declare the
    /// codec configuration once, up front: MP4). Others carry the new header inline.
    pub split_on_config_change: bool,
}

/// Why a piece ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The target length was reached at a cut point.
    Interval,
    /// The timeline jumped (HLS segments only).
    Discontinuity,
    /// A sequence header changed (see [`Layout::split_on_config_change`]).
    ConfigChange,
    /// The stream ended ([`Segmenter::finish`]).
    End,
    /// The output could not write the file on ([`Segmenter::fail_file`]).
    Failed,
}

/// A closed file or segment, in the stream's own timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// File sequence, or the segment index inside its file.
    pub seq: u32,
    /// Decode time of the first and last media sample, as received.
    pub first_dts: i64,
    pub last_dts: i64,
    /// Presentation time the piece starts at, on the continuous timeline.
    pub start_pts: i64,
    /// From `start_pts` to the next piece's start (cut), or to the end of the last sample of
    /// the main track (video when there is video) at the end.
    pub duration_ms: u64,
    /// Media samples written (headers and metadata not counted).
    pub samples: u64,
    pub cut: Cut,
}

/// What an output does next, in order.
#[derive(Clone, Debug)]
pub enum Action {
    /// Start file `seq` (for HLS: a playlist). Its headers follow as `Write`s.
    OpenFile {
        seq: u32,
    },
    /// Start HLS segment `index` of the open file; `discontinuity` after a timestamp jump.
    OpenSegment {
        index: u32,
        discontinuity: bool,
    },
    /// Mux this frame into the open file (segment).
    Write(Frame),
    CloseSegment(Piece),
    CloseFile(Piece),
}

impl Action {
    /// The frame of a `Write`.
    pub fn frame(&self) -> Option<&Frame> {
        match self {
            Action::Write(f) => Some(f),
            _ => None,
        }
    }
}

/// One track's mapping from received decode times onto a continuous timeline.
#[derive(Clone, Copy, Debug, Default)]
struct Clock {
    last_raw: Option<i64>,
    offset: i64,
    /// Latest decode-time step: the duration of the track's last frame.
    step: i64,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    seq: u32,
    first_dts: i64,
    last_dts: i64,
    start_pts: i64,
    /// Where the last sample ends: on the main track (video when the stream has it), and on
    /// any track (for a piece without a main-track sample).
    end_main: Option<i64>,
    end_any: i64,
    samples: u64,
}

impl Open {
    fn new(seq: u32, f: &Frame, pts: i64) -> Self {
        Open { seq, first_dts: f.dts, last_dts: f.dts, start_pts: pts, end_main: None, end_any: pts, samples: 0 }
    }

    fn end_pts(&self) -> i64 {
        self.end_main.unwrap_or(self.end_any)
    }

    fn piece(&self, end_pts: i64, cut: Cut) -> Piece {
        Piece {
            seq: self.seq,
            first_dts: self.first_dts,
            last_dts: self.last_dts,
            start_pts: self.start_pts,
            duration_ms: (end_pts - self.start_pts).max(0) as u64,
            samples: self.samples,
            cut,
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Segmenter {
    layout: Layout,
    metadata: Option<Frame>,
    video_config: Option<Frame>,
    audio_config: Option<Frame>,
    has_video: bool,
    video: Clock,
    audio: Clock,
    /// Latest continuous decode time over all tracks.
    latest: Option<i64>,
    file: Option<Open>,
    segment: Option<Open>,
    next_file: u32,
    next_segment: u32,
    /// A jump was seen: the next HLS cut point closes the segment, the next one is marked.
    jumped: bool,
    /// A new publish continues this recording ([`Segmenter::resume`]): until its first sample,
    /// headers equal to the kept ones are not written again.
    resuming: bool,
}

impl Segmenter {
    pub fn new(layout: Layout) -> Self {
        Segmenter {
            layout,
            metadata: None,
            video_config: None,
            audio_config: None,
            has_video: false,
            video: Clock::default(),
            audio: Clock::default(),
            latest: None,
            file: None,
            segment: None,
            next_file: 0,
            next_segment: 0,
            jumped: false,
            resuming: false,
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether a file is open.
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Frames a new file starts with: metadata, then the current sequence headers.
    pub fn headers(&self) -> impl Iterator<Item = &Frame> {
        self.metadata.iter().chain(self.video_config.iter()).chain(self.audio_config.iter())
    }

    /// Whether `f` may start a piece: a video keyframe, or audio while there is no video.
    pub fn is_cut_point(&self, f: &Frame) -> bool {
        match f.kind {
            FrameKind::Video => f.keyframe && !f.config,
            FrameKind::Audio => !self.has_video && !f.config,
            FrameKind::Data => false,
        }
    }

    /// Feeds one frame; appends what to do to `out`.
    pub fn push(&mut self, f: &Frame, out: &mut Vec<Action>) {
        match f.kind {
            FrameKind::Data => {
                if f.is_metadata() {
                    self.metadata = Some(f.clone());
                }
                // A resumed publish's metadata is kept for the next file, not written mid-file.
                if self.file.is_some() && !self.resuming {
                    out.push(Action::Write(f.clone()));
                }
            }
            _ if f.config => self.push_config(f, out),
            _ => self.push_sample(f, out),
        }
    }

    /// Ends the stream: closes the open segment and file.
    pub fn finish(&mut self, out: &mut Vec<Action>) {
        self.close(Cut::End, None, out);
    }

    /// The publisher left, and may come back: the open HLS segment closes (its playlist stays
    /// open); an open file stays open.
    pub fn pause(&mut self, out: &mut Vec<Action>) {
        self.close_segment(Cut::End, None, out);
    }

    /// A new publish continues the recording (its timestamps already follow on from the last
    /// ones): the next HLS segment is marked discontinuous, headers equal to the kept ones are
    /// not written again, and a changed one ends the open file (not an HLS playlist, which
    /// carries it after the discontinuity).
    pub fn resume(&mut self) {
        self.jumped = true;
        self.resuming = true;
    }

    /// Closes the open file now because its output failed; the next sample opens file
    /// `seq + 1` with the headers replayed.
    pub fn fail_file(&mut self, out: &mut Vec<Action>) {
        self.close(Cut::Failed, None, out);
    }

    fn push_config(&mut self, f: &Frame, out: &mut Vec<Action>) {
        let video = f.kind == FrameKind::Video;
        if video {
            self.has_video = true;
        }
        let slot = if video { &mut self.video_config } else { &mut self.audio_config };
        let changed = slot.as_ref().is_some_and(|old| old.tag != f.tag);
        let same = slot.is_some() && !changed;
        *slot = Some(f.clone());
        if self.file.is_none() || (self.resuming && same) {
            return; // replayed when the next file opens, or already in the file
        }
        if changed && (self.layout.split_on_config_change || self.resuming && self.layout.segment_ms.is_none()) {
            self.close(Cut::ConfigChange, None, out);
        } else {
            out.push(Action::Write(f.clone()));
        }
    }

    fn push_sample(&mut self, f: &Frame, out: &mut Vec<Action>) {
        self.resuming = false;
        if f.kind == FrameKind::Video {
            self.has_video = true;
        }
        let (dts, step) = self.map(f);
        let pts = dts + i64::from(f.cts);
        if self.is_cut_point(f) {
            if let Some(file) = &self.file {
                if self.layout.file_ms > 0 && pts - file.start_pts >= self.layout.file_ms as i64 {
                    self.close(Cut::Interval, Some(pts), out);
                }
            }
            if let (Some(seg), Some(target)) = (&self.segment, self.layout.segment_ms) {
                if self.jumped {
                    self.close_segment(Cut::Discontinuity, Some(pts), out);
                } else if pts - seg.start_pts >= target as i64 {
                    self.close_segment(Cut::Interval, Some(pts), out);
                }
            }
        }
        let opened = self.file.is_none();
        if opened {
            let seq = self.next_file;
            self.next_file += 1;
            self.next_segment = 0;
            self.jumped = false;
            out.push(Action::OpenFile { seq });
            self.file = Some(Open::new(seq, f, pts));
        }
        if self.segment.is_none() && self.layout.segment_ms.is_some() {
            let index = self.next_segment;
            self.next_segment += 1;
            out.push(Action::OpenSegment { index, discontinuity: std::mem::take(&mut self.jumped) && index > 0 });
            self.segment = Some(Open::new(index, f, pts));
        }
        if opened {
            out.extend(self.headers().cloned().map(Action::Write));
        }
        out.push(Action::Write(f.clone()));
        let main = f.kind == FrameKind::Video || !self.has_video;
        for open in [self.file.as_mut(), self.segment.as_mut()].into_iter().flatten() {
            open.samples += 1;
            open.last_dts = f.dts;
            open.end_any = open.end_any.max(pts + step);
            if main {
                open.end_main = Some(open.end_main.map_or(pts + step, |e| e.max(pts + step)));
            }
        }
    }

    fn close_segment(&mut self, cut: Cut, next_pts: Option<i64>, out: &mut Vec<Action>) {
        if let Some(seg) = self.segment.take() {
            out.push(Action::CloseSegment(seg.piece(next_pts.unwrap_or(seg.end_pts()), cut)));
        }
    }

    fn close(&mut self, cut: Cut, next_pts: Option<i64>, out: &mut Vec<Action>) {
        self.close_segment(cut, next_pts, out);
        if let Some(file) = self.file.take() {
            out.push(Action::CloseFile(file.piece(next_pts.unwrap_or(file.end_pts()), cut)));
        }
    }

    /// Maps `f`'s decode time onto the continuous timeline; returns it and the track's frame
    /// duration estimate.
    fn map(&mut self, f: &Frame) -> (i64, i64) {
        let latest = self.latest;
        let clock = if f.kind == FrameKind::Video { &mut self.video } else { &mut self.audio };
        let mapped = f.dts.saturating_add(clock.offset);
        let jump = match (clock.last_raw, latest) {
            (Some(last), _) if f.dts < last - JUMP_BACK_MS => true,
            (_, Some(latest)) if mapped > latest.saturating_add(JUMP_FORWARD_MS) => true,
            // A track's first frame far before the others' (a publisher with clocks apart).
            (None, Some(latest)) if mapped < latest - JUMP_FORWARD_MS => true,
            _ => false,
        };
        let dts = if jump {
            // Continue where the stream is, one frame later.
            let step = if clock.step > 0 { clock.step } else { DEFAULT_STEP_MS };
            let at = latest.map_or(mapped, |l| l + step);
            clock.offset = at.saturating_sub(f.dts);
            self.jumped = true;
            at
        } else {
            if let Some(last) = clock.last_raw {
                if f.dts > last {
                    clock.step = f.dts - last;
                }
            }
            mapped
        };
        clock.last_raw = Some(f.dts);
        self.latest = Some(latest.map_or(dts, |l| l.max(dts)));
        let step = if clock.step > 0 { clock.step } else { DEFAULT_STEP_MS };
        (dts, step)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::Codec;

    fn frame(kind: FrameKind, dts: i64, cts: i32, keyframe: bool, config: bool, body: &[u8]) -> Frame {
        Frame {
            kind,
            codec: match kind {
                FrameKind::Video => Codec::H264,
                FrameKind::Audio => Codec::Aac,
                FrameKind::Data => Codec::None,
            },
            dts,
            cts,
            keyframe,
            config,
            tag: Bytes::copy_from_slice(body),
            payload_offset: 0,
        }
    }
    fn vconf(body: &[u8]) -> Frame {
        frame(FrameKind::Video, 0, 0, true, true, body)
    }
    fn aconf() -> Frame {
        frame(FrameKind::Audio, 0, 0, true, true, b"asc")
    }
    fn key(dts: i64, cts: i32) -> Frame {
        frame(FrameKind::Video, dts, cts, true, false, b"I")
    }
    fn inter(dts: i64, cts: i32) -> Frame {
        frame(FrameKind::Video, dts, cts, false, false, b"P")
    }
    fn audio(dts: i64) -> Frame {
        frame(FrameKind::Audio, dts, 0, true, false, b"a")
    }
    fn metadata() -> Frame {
        let mut b = vec![2, 0, 10];
        b.extend_from_slice(b"onMetaData");
        frame(FrameKind::Data, 0, 0, false, false, &b)
    }

    const FILES: Layout = Layout { file_ms: 6000, segment_ms: None, split_on_config_change: false };
    const HLS: Layout = Layout { file_ms: 0, segment_ms: Some(6000), split_on_config_change: false };

    /// Compact rendering of actions: `F0` open file, `S1` open segment (`S1!` discontinuous),
    /// `w` a sample written, `h` a header or metadata written, `/S0 6000` and `/F0 6000 i`
    /// closes with duration and cut (`i`nterval, `d`iscontinuity, `c`onfig, `e`nd).
    fn render(actions: &[Action]) -> String {
        let cut = |c: Cut| match c {
            Cut::Interval => 'i',
            Cut::Discontinuity => 'd',
            Cut::ConfigChange => 'c',
            Cut::End => 'e',
            Cut::Failed => 'f',
        };
        actions
            .iter()
            .map(|a| match a {
                Action::OpenFile { seq } => format!("F{seq}"),
                Action::OpenSegment { index, discontinuity } => {
                    format!("S{index}{}", if *discontinuity { "!" } else { "" })
                }
                Action::Write(f) if f.is_sample() => "w".into(),
                Action::Write(_) => "h".into(),
                Action::CloseSegment(p) => format!("/S{} {}{}", p.seq, p.duration_ms, cut(p.cut)),
                Action::CloseFile(p) => format!("/F{} {}{}", p.seq, p.duration_ms, cut(p.cut)),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn run(layout: Layout, frames: &[Frame]) -> (Vec<Action>, String) {
        let mut s = Segmenter::new(layout);
        let mut out = Vec::new();
        for f in frames {
            s.push(f, &mut out);
        }
        s.finish(&mut out);
        let r = render(&out);
        (out, r)
    }

    fn closes(actions: &[Action]) -> Vec<Piece> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::CloseFile(p) | Action::CloseSegment(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    /// 25 fps video with a keyframe every `gop` frames, from `from_ms`, `n` frames.
    fn video(from_ms: i64, n: i64, gop: i64, cts: i32) -> Vec<Frame> {
        (0..n).map(|i| if i % gop == 0 { key(from_ms + i * 40, cts) } else { inter(from_ms + i * 40, cts) }).collect()
    }

    #[test]
    fn a_resumed_publish_goes_on_without_repeating_its_headers() {
        for (layout, want) in [
            // The file goes on: no header, metadata or new file.
            (FILES, "F0 h w w w w w w"),
            // The segment closes at the pause; the next is marked discontinuous.
            (HLS, "F0 S0 h w w w /S0 120e S1! w w w"),
        ] {
            let mut s = Segmenter::new(layout);
            let mut out = Vec::new();
            for f in [vconf(b"A"), key(0, 0), inter(40, 0), inter(80, 0)] {
                s.push(&f, &mut out);
            }
            s.pause(&mut out);
            s.resume();
            for f in [metadata(), vconf(b"A"), key(120, 0), inter(160, 0), inter(200, 0)] {
                s.push(&f, &mut out);
            }
            assert_eq!(render(&out), want, "{layout:?}");
        }
        // A changed configuration ends the file; the next opens with it.
        let mut s = Segmenter::new(FILES);
        let mut out = Vec::new();
        for f in [vconf(b"A"), key(0, 0)] {
            s.push(&f, &mut out);
        }
        s.pause(&mut out);
        s.resume();
        for f in [vconf(b"B"), key(40, 0)] {
            s.push(&f, &mut out);
        }
        assert_eq!(render(&out), "F0 h w /F0 20c F1 h w");
    }

    #[test]
    fn headers_only_make_no_file() {
        let (out, r) = run(FILES, &[metadata(), vconf(b"v1"), aconf()]);
        assert!(out.is_empty(), "{r}");
    }

    #[test]
    fn a_file_starts_with_metadata_and_headers_replayed() {
        let frames = [metadata(), vconf(b"v1"), aconf(), key(0, 0), audio(10)];
        let (_, r) = run(FILES, &frames);
        assert_eq!(r, "F0 h h h w w /F0 20e");
    }

    #[test]
    fn files_cut_at_the_first_keyframe_after_the_interval() {
        // Keyframes every 2 s: 6 s files, each restarting with the headers.
        let mut frames = vec![vconf(b"v1")];
        frames.extend(video(0, 400, 50, 0)); // 16 s
        let (out, _) = run(FILES, &frames);
        let files: Vec<_> = closes(&out).iter().map(|p| (p.seq, p.duration_ms, p.samples, p.cut)).collect();
        assert_eq!(files, [(0, 6000, 150, Cut::Interval), (1, 6000, 150, Cut::Interval), (2, 4000, 100, Cut::End)]);
        let opens: Vec<usize> =
            out.iter().enumerate().filter(|(_, a)| matches!(a, Action::OpenFile { .. })).map(|(i, _)| i).collect();
        for i in opens {
            assert!(out[i + 1].frame().is_some_and(|f| f.config), "header replayed after {:?}", out[i]);
        }
    }

    #[test]
    fn cuts_by_presentation_time_with_b_frames() {
        // B-frames: every frame is shown 80 ms after it decodes; the keyframe shown at 6 s
        // decodes at 5.92 s. Audio starts at 0. Files are 6 s, not 8.
        let mut frames = vec![vconf(b"v1"), aconf(), audio(0)];
        frames.extend((0..300).map(|i| {
            let dts = i * 40 - 80;
            if i % 50 == 0 {
                key(dts, 80)
            } else {
                inter(dts, 80)
            }
        }));
        let (out, _) = run(FILES, &frames);
        let d: Vec<_> = closes(&out).iter().map(|p| p.duration_ms).collect();
        assert_eq!(d, [6000, 6000]);
    }

    #[test]
    fn hls_segments_numbered_from_zero_inside_one_playlist() {
        let mut frames = vec![vconf(b"v1"), aconf()];
        for f in video(0, 375, 50, 0) {
            let t = f.dts;
            frames.push(f);
            frames.push(audio(t));
        }
        let (out, r) = run(HLS, &frames);
        let segs: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::CloseSegment(p) => Some((p.seq, p.duration_ms)),
                _ => None,
            })
            .collect();
        assert_eq!(segs, [(0, 6000), (1, 6000), (2, 3000)], "{r}");
        assert_eq!(out.iter().filter(|a| matches!(a, Action::OpenFile { .. })).count(), 1);
        // The playlist's own duration is the whole publish.
        assert_eq!(closes(&out).last().unwrap().duration_ms, 15000);
        // Headers are written once, at the playlist's start.
        assert_eq!(out.iter().filter(|a| a.frame().is_some_and(|f| f.config)).count(), 2);
    }

    #[test]
    fn hls_with_an_interval_starts_a_new_playlist_and_numbering() {
        let layout = Layout { file_ms: 12_000, segment_ms: Some(6000), split_on_config_change: false };
        let mut frames = vec![vconf(b"v1")];
        frames.extend(video(0, 750, 50, 0)); // 30 s
        let (_, r) = run(layout, &frames);
        let skeleton: Vec<&str> = r.split(' ').filter(|t| *t != "w" && *t != "h").collect();
        assert_eq!(
            skeleton.join(" "),
            "F0 S0 /S0 6000i S1 /S1 6000i /F0 12000i F1 S0 /S0 6000i S1 /S1 6000i /F1 12000i F2 S0 /S0 6000e /F2 6000e"
        );
    }

    #[test]
    fn audio_only_cuts_on_audio() {
        // AAC at 44.1 kHz: ~23.2 ms frames.
        let frames: Vec<Frame> =
            std::iter::once(aconf()).chain((0..700).map(|i| audio(i * 1024 * 1000 / 44100))).collect();
        let (out, _) = run(FILES, &frames);
        let p = closes(&out);
        assert_eq!(p.len(), 3);
        assert!(p[..2].iter().all(|p| (6000..6024).contains(&p.duration_ms) && p.cut == Cut::Interval), "{p:?}");
        assert_eq!(p.iter().map(|p| p.samples).sum::<u64>(), 700);
    }

    #[test]
    fn a_late_keyframe_delays_the_cut() {
        // Audio from 0, video whose first keyframe comes at 9 s: the file opens with audio and is
        // cut only at a keyframe (audio is no cut point once the stream has video).
        let mut frames = vec![vconf(b"v1"), aconf()];
        for i in 0..600 {
            frames.push(audio(i * 20));
            if i * 20 >= 9000 && i % 2 == 0 {
                let t = i * 20;
                frames.push(if t == 9000 || t == 11000 { key(t, 0) } else { inter(t, 0) });
            }
        }
        let (out, _) = run(FILES, &frames);
        let p = closes(&out);
        assert_eq!(p[0].cut, Cut::Interval);
        assert_eq!(p[0].duration_ms, 9000, "{p:?}");
        assert_eq!(p[1].first_dts, 9000);
    }

    #[test]
    fn a_timestamp_jump_back_costs_no_time_and_marks_the_segment() {
        // 4 s of video, then the publisher's clock restarts at 0: the timeline goes on.
        let mut frames = vec![vconf(b"v1")];
        frames.extend(video(100_000, 100, 50, 0));
        frames.extend(video(0, 300, 50, 0));
        let (out, r) = run(HLS, &frames);
        let segs: Vec<_> = closes(&out).iter().map(|p| (p.seq, p.duration_ms, p.cut)).collect();
        // The segment open at the jump ends at the next keyframe, marked; no segment is
        // longer than the target and nothing is lost.
        assert_eq!(
            segs,
            [(0, 4000, Cut::Discontinuity), (1, 6000, Cut::Interval), (2, 6000, Cut::End), (0, 16000, Cut::End)],
            "{r}"
        );
        assert!(r.contains("S1!"), "{r}");
        assert_eq!(closes(&out).last().unwrap().samples, 400);
    }

    #[test]
    fn a_timestamp_jump_forward_costs_no_time() {
        let mut frames = vec![vconf(b"v1")];
        frames.extend(video(0, 100, 50, 0));
        frames.extend(video(1_000_000_000, 100, 50, 0));
        let (out, _) = run(FILES, &frames);
        let p = closes(&out);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[0].duration_ms, p[1].duration_ms), (6000, 2000));
        assert_eq!(p[1].last_dts, 1_000_000_000 + 99 * 40, "frames are never altered");
    }

    #[test]
    fn timestamps_across_the_32_bit_wrap() {
        let base = (1i64 << 32) - 2000;
        // Unwrapped by ingest: continuous, one file.
        let mut frames = vec![vconf(b"v1")];
        frames.extend(video(base, 100, 50, 0));
        let (out, _) = run(FILES, &frames);
        assert_eq!(closes(&out).iter().map(|p| p.duration_ms).collect::<Vec<_>>(), [4000]);
        // Not unwrapped (a raw 32-bit clock going back to 0): a jump, still one 4 s file.
        let mut frames = vec![vconf(b"v1")];
        frames.extend(video(base, 50, 50, 0));
        frames.extend(video(0, 50, 50, 0));
        let (out, _) = run(FILES, &frames);
        assert_eq!(closes(&out).iter().map(|p| p.duration_ms).collect::<Vec<_>>(), [4000]);
    }

    #[test]
    fn a_changed_sequence_header_starts_a_new_file_where_the_container_needs_it() {
        let mut frames = vec![vconf(b"v1")];
        frames.extend(video(0, 50, 50, 0));
        frames.push(vconf(b"v1")); // the same header again: not a change
        frames.extend(video(2000, 50, 50, 0));
        frames.push(vconf(b"v2"));
        frames.extend(video(4000, 50, 50, 0));
        let mp4 = Layout { split_on_config_change: true, ..FILES };
        let (out, _) = run(mp4, &frames);
        let p = closes(&out);
        assert_eq!(
            p.iter().map(|p| (p.duration_ms, p.cut)).collect::<Vec<_>>(),
            [(4000, Cut::ConfigChange), (2000, Cut::End)]
        );
        // The new file starts with the new header.
        let open = out.iter().rposition(|a| matches!(a, Action::OpenFile { .. })).unwrap();
        assert_eq!(&out[open + 1].frame().unwrap().tag[..], b"v2");
        // FLV (and TS) carry it inline: one file, both headers written.
        let (out, _) = run(FILES, &frames);
        assert_eq!(closes(&out).len(), 1);
        assert_eq!(out.iter().filter(|a| a.frame().is_some_and(|f| f.config)).count(), 3);
    }

    #[test]
    fn no_interval_means_one_file() {
        let mut frames = vec![vconf(b"v1")];
        frames.extend(video(0, 1000, 50, 0));
        let (out, _) = run(Layout { file_ms: 0, ..FILES }, &frames);
        assert_eq!(closes(&out).iter().map(|p| (p.seq, p.duration_ms)).collect::<Vec<_>>(), [(0, 40_000)]);
    }

    #[test]
    fn metadata_goes_into_the_open_file_and_is_replayed() {
        let mut frames = vec![vconf(b"v1"), key(0, 0)];
        frames.push(metadata());
        frames.extend(video(40, 200, 50, 0));
        let (out, r) = run(FILES, &frames);
        assert!(r.starts_with("F0 h w h w"), "{r}");
        let second = out.iter().position(|a| matches!(a, Action::OpenFile { seq: 1 })).unwrap();
        assert!(out[second + 1].frame().unwrap().is_metadata());
    }

    #[test]
    fn a_failed_file_closes_and_the_next_one_follows() {
        let mut s = Segmenter::new(FILES);
        let mut out = Vec::new();
        s.push(&vconf(b"v1"), &mut out);
        s.push(&key(0, 0), &mut out);
        s.fail_file(&mut out);
        s.push(&inter(40, 0), &mut out);
        s.finish(&mut out);
        assert_eq!(render(&out), "F0 h w /F0 20f F1 h w /F1 40e");
    }
}
