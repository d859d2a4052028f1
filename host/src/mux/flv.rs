//! FLV writer. Tags are written exactly as received (header built here, body = the frame's
//! original tag slice). At close, a [`Rewrite`] puts an `onMetaData` with the real duration,
//! file size and a keyframe index (`keyframes.filepositions` / `keyframes.times`) in front,
//! so players can seek.
//!
//! A live recording reserves room for that `onMetaData` at the start of the file (a
//! placeholder tag padded with a `padding` array, sized for the keyframes the file's interval
//! can hold at one per second): at close the real tag, padded to the same size, overwrites the
//! placeholder and the body stays where it is, so the file is written once. If the real tag
//! does not fit (more keyframes than reserved), the [`Rewrite`] drops the placeholder and
//! shifts the body instead.

use bytes::{Bytes, BytesMut};

use super::{Chunks, MuxError, Muxer, Rewrite};
use crate::media::amf0::{self, Value};
use crate::media::flv::{
    file_header, prev_tag_size, tag_header, FILE_HEADER_LEN, MAX_TAG_BODY, TAG_HEADER_LEN, TAG_SCRIPT,
};
use crate::media::{Frame, FrameKind};

/// Metadata keys Reel computes itself; the publisher's values for them are dropped.
const OWN_KEYS: &[&str] = &[
    "duration",
    "filesize",
    "keyframes",
    "hasKeyframes",
    "hasMetadata",
    "hasVideo",
    "hasAudio",
    "canSeekToEnd",
    "lasttimestamp",
    "lastkeyframetimestamp",
    "lastkeyframelocation",
    "metadatacreator",
    PADDING_KEY,
];

/// The `onMetaData` property that fills the reserved room: a strict array of strings of at
/// most [`PADDING_CHUNK`] spaces (demuxers cap the strings they read at 255 bytes) and, for a
/// remainder too short for a string, nulls (one byte each).
const PADDING_KEY: &str = "padding";
const PADDING_CHUNK: usize = 250;
/// AMF0 cost of the padding property beyond its elements: key length (2), key, array marker
/// (1) and element count (4).
const PADDING_OVERHEAD: usize = 2 + PADDING_KEY.len() + 1 + 4;
/// Room for the publisher's metadata growing after the placeholder was written.
const RESERVE_SLACK: usize = 1024;
/// Tag headers are cut from blocks of this size (a block lives while a header cut from it
/// waits to be written).
const SCRATCH: usize = 1024;
/// Keyframes reserved at most (four hours at one per second).
const MAX_RESERVED_KEYFRAMES: usize = 4 * 3600;

#[derive(Default)]
pub struct FlvMuxer {
    /// Scratch for tag headers; split into refcounted chunks (amortised, no per-frame alloc).
    scratch: BytesMut,
    /// Bytes of the body written so far (the temporary file's length).
    written: u64,
    pending_prev: Option<[u8; 4]>,
    metadata: Vec<(String, Value)>,
    has_audio: bool,
    has_video: bool,
    first_ts: Option<i64>,
    last_ts: i64,
    /// (time ms, offset in the written file) of each video keyframe.
    keyframes: Vec<(i64, u64)>,
    /// Keyframes to reserve `onMetaData` room for (0: no placeholder).
    reserve_keyframes: usize,
    /// Length of the placeholder tag written after the file header (with its previous-tag-size).
    reserved: u64,
}

impl FlvMuxer {
    pub fn new() -> Self {
        Self { scratch: BytesMut::with_capacity(SCRATCH), ..Self::default() }
    }

    /// A muxer for a live file of at most `interval_ms`: reserves `onMetaData` room for one
    /// keyframe per second so the file is finalised in place.
    pub fn reserving(interval_ms: u64) -> Self {
        let keyframes = (interval_ms / 1000 + 8).min(MAX_RESERVED_KEYFRAMES as u64) as usize;
        Self { reserve_keyframes: keyframes, ..Self::new() }
    }

    fn reserve(&mut self) {
        if self.scratch.capacity() < 64 {
            self.scratch.reserve(SCRATCH);
        }
    }

    /// `onMetaData` from a script tag (`[@setDataFrame,] onMetaData, {..}`), if it is one.
    fn metadata_of(body: &[u8]) -> Option<Vec<(String, Value)>> {
        let vals = amf0::decode_all(body).ok()?;
        let mut it = vals.into_iter().peekable();
        if it.peek().and_then(Value::as_str) == Some("@setDataFrame") {
            it.next();
        }
        if it.next()?.as_str()? != "onMetaData" {
            return None;
        }
        match it.next()? {
            Value::Object(p) | Value::EcmaArray(p) => Some(p),
            _ => None,
        }
    }

    /// The `onMetaData` tag (header, body, previous-tag-size) for a file of `filesize` bytes
    /// whose keyframes sit `shift` bytes from where they were written; with `size`, padded to
    /// exactly that many bytes, or `None` if it does not fit.
    fn metadata_tag(&self, filesize: f64, shift: i64, size: Option<usize>) -> Option<Vec<u8>> {
        let kf = self.keyframes.iter().map(|&(t, p)| (t, (p as i64 + shift) as u64));
        self.metadata_tag_with(filesize, kf, size)
    }

    fn metadata_tag_with(
        &self,
        filesize: f64,
        keyframes: impl Iterator<Item = (i64, u64)> + Clone,
        size: Option<usize>,
    ) -> Option<Vec<u8>> {
        let first = self.first_ts.unwrap_or(0);
        let duration = (self.last_ts - first).max(0) as f64 / 1000.0;
        let mut props: Vec<(String, Value)> =
            self.metadata.iter().filter(|(k, _)| !OWN_KEYS.contains(&k.as_str())).cloned().collect();
        let (last_kf_t, last_kf_pos) = keyframes.clone().last().unwrap_or((first, 0));
        props.extend([
            ("duration".to_string(), Value::Number(duration)),
            ("filesize".to_string(), Value::Number(filesize)),
            ("hasVideo".to_string(), Value::Boolean(self.has_video)),
            ("hasAudio".to_string(), Value::Boolean(self.has_audio)),
            ("hasMetadata".to_string(), Value::Boolean(true)),
            ("hasKeyframes".to_string(), Value::Boolean(last_kf_pos != 0)),
            ("canSeekToEnd".to_string(), Value::Boolean(true)),
            ("lasttimestamp".to_string(), Value::Number(self.last_ts as f64 / 1000.0)),
            ("lastkeyframetimestamp".to_string(), Value::Number(last_kf_t as f64 / 1000.0)),
            ("lastkeyframelocation".to_string(), Value::Number(last_kf_pos as f64)),
            ("metadatacreator".to_string(), Value::String("Reel".into())),
            (
                "keyframes".to_string(),
                Value::Object(vec![
                    (
                        "filepositions".to_string(),
                        Value::StrictArray(keyframes.clone().map(|(_, p)| Value::Number(p as f64)).collect()),
                    ),
                    (
                        "times".to_string(),
                        Value::StrictArray(keyframes.map(|(t, _)| Value::Number(t as f64 / 1000.0)).collect()),
                    ),
                ]),
            ),
        ]);
        let tag_len = |body: usize| TAG_HEADER_LEN + body + 4;
        let mut body = amf0::encode_all(&[Value::String("onMetaData".into()), Value::EcmaArray(props)]);
        if let Some(size) = size {
            let fill = size.checked_sub(tag_len(body.len()) + PADDING_OVERHEAD)?;
            // The padding property goes last: before the ECMA array's end marker (00 00 09),
            // and the array's entry count (after the name and the array marker) grows by one.
            let end = body.len() - 3;
            let mut padding = Vec::with_capacity(PADDING_OVERHEAD + fill);
            padding.extend_from_slice(&(PADDING_KEY.len() as u16).to_be_bytes());
            padding.extend_from_slice(PADDING_KEY.as_bytes());
            padding.push(amf0::MARKER_STRICT_ARRAY);
            padding.extend_from_slice(&[0; 4]); // element count, set below
            let mut elements = 0u32;
            let mut left = fill;
            while left >= 3 {
                let n = (left - 3).min(PADDING_CHUNK);
                padding.push(amf0::MARKER_STRING);
                padding.extend_from_slice(&(n as u16).to_be_bytes());
                padding.resize(padding.len() + n, b' ');
                left -= 3 + n;
                elements += 1;
            }
            padding.resize(padding.len() + left, amf0::MARKER_NULL);
            elements += left as u32;
            let at = PADDING_OVERHEAD - 4;
            padding[at..at + 4].copy_from_slice(&elements.to_be_bytes());
            body.splice(end..end, padding);
            let count_at = 1 + 2 + "onMetaData".len() + 1;
            let count = u32::from_be_bytes(body[count_at..count_at + 4].try_into().expect("4 bytes")) + 1;
            body[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
            debug_assert_eq!(tag_len(body.len()), size);
        }
        let mut tag = Vec::with_capacity(tag_len(body.len()));
        tag.extend_from_slice(&tag_header(TAG_SCRIPT, body.len(), 0));
        tag.extend_from_slice(&body);
        tag.extend_from_slice(&prev_tag_size(body.len()));
        Some(tag)
    }

    /// The placeholder written after the file header: today's metadata padded to leave room
    /// for `reserve_keyframes` index entries.
    fn placeholder(&self) -> Vec<u8> {
        let room = self.reserve_keyframes;
        let unpadded = self.metadata_tag_with(0.0, std::iter::repeat_n((0, 1), room), None).expect("unpadded");
        let size = unpadded.len() + PADDING_OVERHEAD + RESERVE_SLACK;
        self.metadata_tag(0.0, 0, Some(size)).expect("the placeholder fits its own size")
    }
}

impl Muxer for FlvMuxer {
    fn container(&self) -> &'static str {
        "flv"
    }

    fn push(&mut self, f: &Frame, out: &mut Chunks) -> Result<(), MuxError> {
        if f.tag.len() > MAX_TAG_BODY {
            return Err(MuxError::Invalid(format!("tag of {} bytes exceeds FLV's 16 MiB limit", f.tag.len())));
        }
        if f.kind == FrameKind::Data {
            if let Some(md) = Self::metadata_of(&f.tag) {
                // The publisher's metadata is merged into ours at close, not written twice.
                self.metadata = md;
                return Ok(());
            }
        }
        if self.written == 0 {
            out.push(Bytes::from_static(&EMPTY_HEADER));
            self.written = FILE_HEADER_LEN as u64;
            if self.reserve_keyframes > 0 {
                let placeholder = self.placeholder();
                self.reserved = placeholder.len() as u64;
                self.written += self.reserved;
                out.push(placeholder.into());
            }
        }
        match f.kind {
            FrameKind::Audio => self.has_audio = true,
            FrameKind::Video => self.has_video = true,
            FrameKind::Data => {}
        }
        self.reserve();
        if let Some(p) = self.pending_prev.take() {
            self.scratch.extend_from_slice(&p);
            self.written += 4;
        }
        let tag_offset = self.written;
        self.scratch.extend_from_slice(&tag_header(f.flv_tag_type(), f.tag.len(), f.dts));
        out.push(self.scratch.split().freeze());
        out.push(f.tag.clone());
        self.written += (TAG_HEADER_LEN + f.tag.len()) as u64;
        self.pending_prev = Some(prev_tag_size(f.tag.len()));
        if f.kind != FrameKind::Data {
            self.first_ts.get_or_insert(f.dts);
            self.last_ts = self.last_ts.max(f.dts);
            if f.kind == FrameKind::Video && f.keyframe && !f.config {
                self.keyframes.push((f.dts, tag_offset));
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Chunks) -> Result<Option<Rewrite>, MuxError> {
        if let Some(p) = self.pending_prev.take() {
            out.push(Bytes::copy_from_slice(&p));
            self.written += 4;
        }
        if self.written == 0 {
            return Ok(None);
        }
        let body_start = FILE_HEADER_LEN as u64 + self.reserved;
        let mut head = file_header(self.has_audio, self.has_video).to_vec();
        // In place: the real tag, padded to the placeholder's size, replaces it.
        let in_place = (self.reserved > 0)
            .then(|| self.metadata_tag(self.written as f64, 0, Some(self.reserved as usize)))
            .flatten();
        if let Some(tag) = in_place {
            head.extend_from_slice(&tag);
        } else {
            // The body moves to follow a tag of its own length; that length does not depend
            // on the numbers in it (AMF0 numbers are 8 bytes).
            let meta_len = self.metadata_tag(0.0, 0, None).expect("unpadded").len() as u64;
            let shift = meta_len as i64 - self.reserved as i64;
            let total = FILE_HEADER_LEN as u64 + meta_len + (self.written - body_start);
            head.extend_from_slice(&self.metadata_tag(total as f64, shift, None).expect("unpadded"));
        }
        #[allow(clippy::single_range_in_vec_init)] // one range of the body, not a range of values
        let ranges = vec![body_start..self.written];
        Ok(Some(Rewrite { head: head.into(), ranges, tail: Bytes::new(), from_file: false, last_moof: None }))
    }
}

/// The header of the temporary file (flags are set in the final header).
static EMPTY_HEADER: [u8; FILE_HEADER_LEN] = [b'F', b'L', b'V', 1, 5, 0, 0, 0, 9, 0, 0, 0, 0];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::flv::{parse_tag, FileReader, TAG_AUDIO, TAG_VIDEO};

    fn apply(body: &[u8], rw: &Rewrite) -> Vec<u8> {
        let mut v = rw.head.to_vec();
        for r in &rw.ranges {
            v.extend_from_slice(&body[r.start as usize..r.end as usize]);
        }
        v.extend_from_slice(&rw.tail);
        v
    }

    #[test]
    fn writes_identical_tags_and_seekable_metadata() {
        check_file(FlvMuxer::new(), &frames(2), false);
    }

    #[test]
    fn live_files_are_finalised_in_place() {
        let mut m = FlvMuxer::reserving(30_000);
        let rw = check_file(FlvMuxer::reserving(30_000), &frames(20), true);
        // The placeholder is a valid onMetaData from the first write on (what a crash leaves).
        let mut out = Vec::new();
        for f in &frames(1)[..2] {
            m.push(f, &mut out).unwrap();
        }
        let early: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(early.len() as u64, rw.ranges[0].start + 11 + 7, "header, placeholder, one tag");
        let mut r = FileReader::new(Bytes::from(early)).unwrap();
        let meta = r.next_tag().unwrap().unwrap();
        assert_eq!(amf0::decode_all(&meta.body).unwrap()[1].get("width").and_then(Value::as_f64), Some(320.0));
    }

    #[test]
    fn long_reservations_stay_readable() {
        // Four hours of room: the padding is ~1,000 short strings, not one long one.
        let rw = check_file(FlvMuxer::reserving(4 * 3600 * 1000), &frames(3), true);
        let vals = amf0::decode_all(&rw.head[FILE_HEADER_LEN + TAG_HEADER_LEN..rw.head.len() - 4]).unwrap();
        let Some(Value::StrictArray(pad)) = vals[1].get(PADDING_KEY) else { panic!("padding array") };
        assert!(pad.len() < 1100, "{} elements", pad.len());
        assert!(pad.iter().all(|v| v.as_str().is_some_and(|s| s.len() <= 255) || *v == Value::Null));
    }

    #[test]
    fn more_keyframes_than_reserved_shift_the_body() {
        // Room for 8 keyframes and the slack (interval 0): 200 do not fit, the body moves
        // behind a longer tag.
        check_file(FlvMuxer::reserving(0), &frames(200), false);
    }

    /// Pushes `frames`, applies the rewrite, and checks the file: metadata with the real
    /// duration, size and a keyframe index pointing at keyframes, and the tags as received.
    fn check_file(mut m: FlvMuxer, frames: &[Frame], in_place: bool) -> Rewrite {
        let mut out = Vec::new();
        for f in frames {
            m.push(f, &mut out).unwrap();
        }
        let rw = m.finish(&mut out).unwrap().unwrap();
        let body: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(rw.ranges.len(), 1);
        assert_eq!(rw.ranges[0].end, body.len() as u64);
        assert_eq!(rw.ranges[0].start == rw.head.len() as u64, in_place, "finalised in place: {in_place}");
        let file = apply(&body, &rw);

        let mut r = FileReader::new(Bytes::from(file.clone())).unwrap();
        let meta = r.next_tag().unwrap().unwrap();
        assert_eq!(meta.tag_type, TAG_SCRIPT);
        let vals = amf0::decode_all(&meta.body).unwrap();
        let md = &vals[1];
        assert_eq!(md.get("width").and_then(Value::as_f64), Some(320.0));
        let last = frames.last().unwrap().dts as f64 / 1000.0;
        assert_eq!(md.get("duration").and_then(Value::as_f64), Some(last));
        assert_eq!(md.get("filesize").and_then(Value::as_f64), Some(file.len() as f64));
        let kf = md.get("keyframes").unwrap();
        let Some(Value::StrictArray(pos)) = kf.get("filepositions") else { panic!() };
        let Some(Value::StrictArray(times)) = kf.get("times") else { panic!() };
        let want: Vec<Value> = frames
            .iter()
            .filter(|f| f.kind == FrameKind::Video && f.keyframe && !f.config)
            .map(|f| Value::Number(f.dts as f64 / 1000.0))
            .collect();
        assert_eq!(times, &want);
        for p in pos {
            let p = p.as_f64().unwrap() as usize;
            assert_eq!(file[p], TAG_VIDEO, "keyframe position points at a video tag");
            assert_eq!(file[p + TAG_HEADER_LEN] >> 4, 1, "and that tag is a keyframe");
        }
        for f in frames.iter().skip(1) {
            let t = r.next_tag().unwrap().unwrap();
            assert_eq!(t.body, f.tag);
            assert_eq!(i64::from(t.timestamp), f.dts);
        }
        assert!(r.next_tag().unwrap().is_none());
        rw
    }

    /// Metadata, sequence headers, then `gops` keyframes 1 s apart with audio and a P-frame.
    fn frames(gops: i64) -> Vec<Frame> {
        let mut v = vec![
            parse_tag(
                TAG_SCRIPT,
                0,
                Bytes::from(amf0::encode_all(&[
                    Value::String("@setDataFrame".into()),
                    Value::String("onMetaData".into()),
                    Value::EcmaArray(vec![
                        ("width".into(), Value::Number(320.0)),
                        ("duration".into(), Value::Number(0.0)),
                    ]),
                ])),
            )
            .unwrap(),
            parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 2])).unwrap(),
            parse_tag(TAG_AUDIO, 0, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])).unwrap(),
        ];
        for g in 0..gops {
            let t = g * 1000;
            v.push(parse_tag(TAG_VIDEO, t, Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65])).unwrap());
            v.push(parse_tag(TAG_AUDIO, t + 23, Bytes::from_static(&[0xaf, 1, 0x21, 0x22])).unwrap());
            v.push(parse_tag(TAG_VIDEO, t + 40, Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41])).unwrap());
        }
        v
    }
}
