//! A recording's timeline across publishes: a publish that resumes the recording starts its
//! timestamps again (usually at 0), and its frames are moved to follow the last ones written.

use crate::media::{Frame, FrameKind};

/// Where the next publish's frames go: after every frame written, decode and presentation
/// times alike.
#[derive(Debug)]
pub struct Timeline {
    /// Added to every timestamp of the current publish.
    offset: i64,
    /// The latest decode and presentation times written (after `offset`).
    last_dts: Option<i64>,
    last_pts: Option<i64>,
    /// The main track's (video if any, else audio) latest decode time and frame spacing.
    last_main: Option<i64>,
    step: i64,
    video: bool,
    /// The next media frame sets `offset` (a publish resumed).
    rebase: bool,
}

impl Default for Timeline {
    fn default() -> Self {
        Self { offset: 0, last_dts: None, last_pts: None, last_main: None, step: 40, video: false, rebase: false }
    }
}

impl Timeline {
    /// Whether a video frame has been seen: video, if any, is the main track (cuts and frame
    /// spacing follow it).
    pub fn has_video(&self) -> bool {
        self.video
    }

    /// A new publish continues this timeline: its first frame sets the offset.
    pub fn resume(&mut self) {
        self.rebase = true;
    }

    /// Moves `f` onto the recording's timeline. After a resume the first media frame follows
    /// the latest time written by the main track's frame spacing; the latest *presentation*
    /// time counts too, or a publish cut after a reordered frame (B-frames) would present its
    /// first picture at a time already shown.
    pub fn place(&mut self, mut f: Frame) -> Frame {
        self.video |= f.kind == FrameKind::Video;
        if self.rebase {
            let last = self.last_dts.max(self.last_pts);
            if f.is_sample() {
                self.offset = last.map_or(0, |l| l + self.step - f.dts);
                self.rebase = false;
            } else {
                // Sequence headers and metadata go where the next publish starts.
                f.dts = last.unwrap_or(f.dts);
                return f;
            }
        }
        f.dts += self.offset;
        if f.is_sample() {
            if f.kind == FrameKind::Video || !self.video {
                if let Some(step) = self.last_main.map(|l| f.dts - l).filter(|s| (1..=200).contains(s)) {
                    self.step = step;
                }
                self.last_main = Some(f.dts);
            }
            let pts = f.dts + i64::from(f.cts);
            self.last_dts = Some(self.last_dts.map_or(f.dts, |l| l.max(f.dts)));
            self.last_pts = Some(self.last_pts.map_or(pts, |l| l.max(pts)));
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::Codec;

    fn frame(kind: FrameKind, dts: i64, cts: i32, keyframe: bool) -> Frame {
        Frame {
            kind,
            codec: if kind == FrameKind::Video { Codec::H264 } else { Codec::Aac },
            dts,
            cts,
            keyframe,
            config: false,
            tag: Bytes::from_static(b"x"),
            payload_offset: 0,
        }
    }

    /// 25 fps with two B-frames, as an encoder sends it: decode order I P B B P B B ...,
    /// presentation two frames later than decode for I and B, three for P.
    fn gop(from: i64, n: i64) -> Vec<Frame> {
        (0..n)
            .map(|i| {
                let cts = match i {
                    0 => 80,
                    i if (i - 1) % 3 == 0 => 120,
                    _ => 40,
                };
                frame(FrameKind::Video, from + 40 * i, cts, i == 0)
            })
            .collect()
    }

    #[test]
    fn a_resumed_publish_presents_after_every_picture_already_written() {
        let mut t = Timeline::default();
        // The first publish dies right after a P frame: its picture is the latest presented,
        // 120 ms after its decode time, and the B-frames before it never came.
        let first: Vec<Frame> = gop(0, 86).into_iter().map(|f| t.place(f)).collect();
        let shown = first.iter().map(|f| f.dts + i64::from(f.cts)).max().unwrap();
        let decoded = first.last().unwrap().dts;
        assert!(shown > decoded + 40, "the cut leaves a picture after the last decode time");
        t.resume();
        // The next publish starts again at 0, audio first.
        let header = t.place(Frame { config: true, ..frame(FrameKind::Video, 0, 0, true) });
        assert!(header.dts >= decoded, "a sequence header goes where the publish resumes");
        let audio = t.place(frame(FrameKind::Audio, 0, 0, true));
        let second: Vec<Frame> = gop(0, 6).into_iter().map(|f| t.place(f)).collect();
        assert!(audio.dts > shown);
        let first_shown = second.iter().map(|f| f.dts + i64::from(f.cts)).min().unwrap();
        assert!(first_shown > shown, "first picture {first_shown} after the last shown {shown}");
        assert!(second[0].dts > decoded);
        assert!(second.windows(2).all(|w| w[1].dts - w[0].dts == 40), "spacing kept");
    }

    #[test]
    fn the_first_publish_keeps_its_timestamps() {
        let mut t = Timeline::default();
        let placed: Vec<i64> = gop(1000, 5).into_iter().map(|f| t.place(f).dts).collect();
        assert_eq!(placed, vec![1000, 1040, 1080, 1120, 1160]);
    }

    #[test]
    fn audio_only_resumes_one_frame_after_the_last() {
        let mut t = Timeline::default();
        for i in 0..10 {
            t.place(frame(FrameKind::Audio, i * 23, 0, true));
        }
        t.resume();
        assert_eq!(t.place(frame(FrameKind::Audio, 0, 0, true)).dts, 9 * 23 + 23);
    }
}
