//! What a benchmark publisher sends, and when: the tags of an FLV file read once into memory
//! (bodies are slices of one shared buffer), replayed in a loop with continuous timestamps.
//! Pure: the caller says what time it is; nothing here touches a clock or a socket.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use reel::media::flv::{self, FileReader};
use reel::media::MediaError;

/// One tag to send.
#[derive(Clone, Debug)]
pub struct Tag {
    /// FLV tag type: 8 audio, 9 video, 18 script data.
    pub tag_type: u8,
    /// Milliseconds from the start of the file.
    pub ts: u64,
    /// The FLV tag body (= RTMP message payload), a slice of the file.
    pub body: Bytes,
}

impl Tag {
    /// Audio or video (what the recorder counts as frames), not script data.
    pub fn is_frame(&self) -> bool {
        matches!(self.tag_type, flv::TAG_AUDIO | flv::TAG_VIDEO)
    }
}

/// A file's tags, split into what is sent once and what is looped.
#[derive(Debug)]
pub struct Media {
    /// Metadata and sequence headers before the first coded frame: sent once.
    pub header: Vec<Tag>,
    /// Everything after: sent in a loop.
    pub body: Vec<Tag>,
    /// Timestamp shift from one loop to the next: the body's span plus one frame interval.
    pub period_ms: u64,
}

impl Media {
    /// Reads an FLV file. Video end-of-sequence tags are left out, so that loops join.
    pub fn load(path: &Path) -> Result<Self, MediaError> {
        let data = std::fs::read(path)
            .map_err(|e| MediaError::Invalid { what: "input file", why: format!("{}: {e}", path.display()) })?;
        let mut reader = FileReader::new(Bytes::from(data))?;
        let mut tags = Vec::new();
        while let Some(t) = reader.next_tag()? {
            tags.push(t);
        }
        Ok(Self::from_tags(tags.into_iter().map(|t| (t.tag_type, t.timestamp, t.body))))
    }

    /// Builds the schedule from `(tag type, timestamp ms, body)` in file order.
    pub fn from_tags(tags: impl IntoIterator<Item = (u8, u32, Bytes)>) -> Self {
        let mut header = Vec::new();
        let mut body: Vec<Tag> = Vec::new();
        let mut t0 = None;
        for (tag_type, ts, b) in tags {
            if b.is_empty() || is_end_of_sequence(tag_type, &b) {
                continue;
            }
            let t0 = *t0.get_or_insert(ts);
            let tag = Tag { tag_type, ts: u64::from(ts.saturating_sub(t0)), body: b };
            if body.is_empty() && !is_coded_frame(&tag) {
                header.push(tag);
            } else {
                body.push(tag);
            }
        }
        let period_ms = period(&body);
        Self { header, body, period_ms }
    }

    /// Audio and video tags in one pass of the body.
    pub fn frames_per_loop(&self) -> usize {
        self.body.iter().filter(|t| t.is_frame()).count()
    }
}

/// An audio or video tag that is not a sequence header.
fn is_coded_frame(t: &Tag) -> bool {
    match flv::parse_tag(t.tag_type, 0, t.body.clone()) {
        Ok(f) => f.is_sample(),
        Err(_) => t.is_frame(),
    }
}

/// AVC/HEVC end of sequence (legacy packet type 2, or Enhanced RTMP SequenceEnd).
fn is_end_of_sequence(tag_type: u8, b: &[u8]) -> bool {
    if tag_type != flv::TAG_VIDEO {
        return false;
    }
    match b.first() {
        Some(&b0) if b0 & 0x80 != 0 => b0 & 0x0f == 2,
        Some(&b0) if matches!(b0 & 0x0f, 7 | 12) => b.get(1) == Some(&2),
        _ => false,
    }
}

/// Loop length: for each of audio and video, its last timestamp plus its mean frame interval,
/// whichever ends later, measured from the body's first tag; so that every track continues
/// one interval after its last frame.
fn period(body: &[Tag]) -> u64 {
    let Some(first) = body.first() else { return 1 };
    let end_of = |ty: Option<u8>| {
        let ts: Vec<u64> = body.iter().filter(|t| ty.is_none_or(|ty| t.tag_type == ty)).map(|t| t.ts).collect();
        let (&a, &b) = (ts.first()?, ts.last()?);
        let gap = if ts.len() > 1 && b > a { (b - a) / (ts.len() as u64 - 1) } else { 1 };
        Some(b + gap.max(1))
    };
    let end = match (end_of(Some(flv::TAG_VIDEO)), end_of(Some(flv::TAG_AUDIO))) {
        (None, None) => end_of(None),
        (v, a) => v.max(a),
    };
    end.map_or(1, |e| e.saturating_sub(first.ts).max(1))
}

/// Walks the schedule of one publisher: the header once, then the body looped with each
/// loop's timestamps shifted by the period, until the timestamps reach the duration.
#[derive(Debug)]
pub struct Pacer {
    media: Arc<Media>,
    /// Index into header, then into body (header.len() + i).
    pos: usize,
    /// Timestamp shift of the current loop.
    shift: u64,
    end_ms: u64,
}

impl Pacer {
    pub fn new(media: Arc<Media>, duration_ms: u64) -> Self {
        Self { media, pos: 0, shift: 0, end_ms: duration_ms }
    }

    fn peek(&self) -> Option<(&Tag, u64)> {
        let m = &*self.media;
        let tag =
            if self.pos < m.header.len() { &m.header[self.pos] } else { m.body.get(self.pos - m.header.len())? };
        let ts = if self.pos < m.header.len() { tag.ts } else { tag.ts + self.shift };
        (ts < self.end_ms).then_some((tag, ts))
    }

    /// When the next tag is due (its timestamp), or `None` when everything has been sent.
    pub fn next_at(&self) -> Option<u64> {
        self.peek().map(|(_, ts)| ts)
    }

    pub fn finished(&self) -> bool {
        self.peek().is_none()
    }

    /// The next tag if it is due at `now_ms` (ms since the publish started), with the
    /// timestamp to send it with. `u64::MAX` as `now_ms` means "as fast as possible".
    pub fn next_due(&mut self, now_ms: u64) -> Option<(&Tag, u64)> {
        let ts = self.next_at()?;
        if ts > now_ms {
            return None;
        }
        let i = self.pos;
        self.pos += 1;
        let m = &*self.media;
        if self.pos == m.header.len() + m.body.len() && !m.body.is_empty() {
            self.pos = m.header.len();
            self.shift += m.period_ms;
        }
        let tag = if i < m.header.len() { &m.header[i] } else { &m.body[i - m.header.len()] };
        Some((tag, ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &[u8] = b"\x02\x00\x0aonMetaData\x08\x00\x00\x00\x00\x00\x00\x09";

    /// 1 s of 25 fps video (keyframe first) and ~43 audio frames, with headers and a trailing
    /// end-of-sequence tag, as ffmpeg writes an FLV.
    fn one_second() -> Media {
        let mut tags: Vec<(u8, u32, Bytes)> = vec![
            (18, 0, Bytes::from_static(META)),
            (9, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1])),
            (8, 0, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])),
        ];
        let mut a = 0u32;
        for v in 0..25u32 {
            let vt = v * 40;
            let key = if v == 0 { 0x17 } else { 0x27 };
            tags.push((9, vt, Bytes::from(vec![key, 1, 0, 0, 0, 1])));
            while (a + 1) * 1024 * 1000 / 44100 <= vt + 40 {
                tags.push((8, a * 1024 * 1000 / 44100, Bytes::from_static(&[0xaf, 1, 0x21])));
                a += 1;
            }
        }
        tags.push((9, 1000, Bytes::from_static(&[0x17, 2, 0, 0, 0])));
        Media::from_tags(tags)
    }

    #[test]
    fn splits_header_and_drops_end_of_sequence() {
        let m = one_second();
        assert_eq!(m.header.iter().map(|t| t.tag_type).collect::<Vec<_>>(), vec![18, 9, 8]);
        assert_eq!(m.body[0].body[0], 0x17);
        assert!(m.body.iter().all(|t| t.body.get(1) != Some(&2) || t.tag_type != 9));
        // Last video at 960 ms + 40 ms; the last audio (975 ms + 23 ms) ends before that.
        assert_eq!(m.period_ms, 1000);
    }

    #[test]
    fn real_time_pacing_sends_only_what_is_due() {
        let m = Arc::new(one_second());
        let mut p = Pacer::new(m.clone(), 3000);
        let mut sent = Vec::new();
        // 20 ms ticks: nothing sent is ever ahead of the clock, and nothing due is left behind.
        for now in (0..3100).step_by(20) {
            while let Some((t, ts)) = p.next_due(now) {
                assert!(ts <= now);
                sent.push((t.tag_type, ts, t.is_frame()));
            }
            if let Some(next) = p.next_at() {
                assert!(next > now);
            }
        }
        assert!(p.finished());
        // Header once, then three loops of the body with timestamps continuing.
        assert_eq!(sent.iter().filter(|s| s.0 == 18).count(), 1);
        let frames = sent.iter().filter(|s| s.2).count();
        let loops = 3000 / m.period_ms as usize;
        let partial = m.body.iter().filter(|t| t.ts + loops as u64 * m.period_ms < 3000 && t.is_frame()).count();
        assert_eq!(frames, 2 + loops * m.frames_per_loop() + partial);
        let ts: Vec<u64> = sent.iter().filter(|s| s.0 == 9).map(|s| s.1).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "video timestamps never go back");
        let video: Vec<u64> = ts[1..].to_vec();
        assert!(video.windows(2).all(|w| w[1] - w[0] == 40), "continuous across loops: {video:?}");
        assert!(sent.iter().all(|s| s.1 < 3000));
    }

    #[test]
    fn fast_mode_sends_everything_up_to_the_duration_at_once() {
        let m = Arc::new(one_second());
        let mut slow = Pacer::new(m.clone(), 2500);
        let mut n_slow = 0;
        for now in 0..=2500 {
            while slow.next_due(now).is_some() {
                n_slow += 1;
            }
        }
        let mut fast = Pacer::new(m, 2500);
        let mut n_fast = 0;
        while fast.next_due(u64::MAX).is_some() {
            n_fast += 1;
        }
        assert_eq!(n_fast, n_slow);
        assert!(fast.finished());
    }

    #[test]
    fn header_only_and_empty_files_end() {
        let m = Arc::new(Media::from_tags(vec![(18, 0, Bytes::from_static(META))]));
        let mut p = Pacer::new(m, 1000);
        assert!(p.next_due(0).is_some());
        assert!(p.next_due(u64::MAX).is_none());
        assert!(p.finished());
        let p = Pacer::new(Arc::new(Media::from_tags(vec![])), 1000);
        assert!(p.finished());
    }
}
