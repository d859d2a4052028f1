//! FLV writer. Tags are written exactly as received (header built here, body = the frame's
//! original tag slice). At close, a [`Rewrite`] puts an `onMetaData` with the real duration,
//! file size and a keyframe index (`keyframes.filepositions` / `keyframes.times`) in front,
//! so players can seek.

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
];

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
    /// (time ms, offset in the body) of each video keyframe.
    keyframes: Vec<(i64, u64)>,
}

impl FlvMuxer {
    pub fn new() -> Self {
        Self { scratch: BytesMut::with_capacity(4096), ..Self::default() }
    }

    fn reserve(&mut self) {
        if self.scratch.capacity() < 64 {
            self.scratch.reserve(4096);
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

    fn metadata_tag(&self, filesize: f64, shift: u64) -> Vec<u8> {
        let first = self.first_ts.unwrap_or(0);
        let duration = (self.last_ts - first).max(0) as f64 / 1000.0;
        let mut props: Vec<(String, Value)> =
            self.metadata.iter().filter(|(k, _)| !OWN_KEYS.contains(&k.as_str())).cloned().collect();
        let (last_kf_t, last_kf_pos) = self.keyframes.last().map(|&(t, p)| (t, p + shift)).unwrap_or((first, 0));
        props.extend([
            ("duration".to_string(), Value::Number(duration)),
            ("filesize".to_string(), Value::Number(filesize)),
            ("hasVideo".to_string(), Value::Boolean(self.has_video)),
            ("hasAudio".to_string(), Value::Boolean(self.has_audio)),
            ("hasMetadata".to_string(), Value::Boolean(true)),
            ("hasKeyframes".to_string(), Value::Boolean(!self.keyframes.is_empty())),
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
                        Value::StrictArray(
                            self.keyframes.iter().map(|&(_, p)| Value::Number((p + shift) as f64)).collect(),
                        ),
                    ),
                    (
                        "times".to_string(),
                        Value::StrictArray(
                            self.keyframes.iter().map(|&(t, _)| Value::Number(t as f64 / 1000.0)).collect(),
                        ),
                    ),
                ]),
            ),
        ]);
        let body = amf0::encode_all(&[Value::String("onMetaData".into()), Value::EcmaArray(props)]);
        let mut tag = Vec::with_capacity(body.len() + 15);
        tag.extend_from_slice(&tag_header(TAG_SCRIPT, body.len(), 0));
        tag.extend_from_slice(&body);
        tag.extend_from_slice(&prev_tag_size(body.len()));
        tag
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
        // Body tags move from offset 13 to 13 + metadata tag length; the metadata tag's
        // length does not depend on the numbers in it (AMF0 numbers are 8 bytes).
        let meta_len = self.metadata_tag(0.0, 0).len() as u64;
        let body_len = self.written - FILE_HEADER_LEN as u64;
        let total = FILE_HEADER_LEN as u64 + meta_len + body_len;
        let mut head = file_header(self.has_audio, self.has_video).to_vec();
        head.extend_from_slice(&self.metadata_tag(total as f64, meta_len));
        debug_assert_eq!(head.len() as u64, FILE_HEADER_LEN as u64 + meta_len);
        #[allow(clippy::single_range_in_vec_init)] // one range of the body, not a range of values
        let ranges = vec![FILE_HEADER_LEN as u64..self.written];
        Ok(Some(Rewrite { head: head.into(), ranges, tail: Bytes::new() }))
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
        let frames = vec![
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
            parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65])).unwrap(),
            parse_tag(TAG_AUDIO, 23, Bytes::from_static(&[0xaf, 1, 0x21, 0x22])).unwrap(),
            parse_tag(TAG_VIDEO, 2000, Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65])).unwrap(),
            parse_tag(TAG_VIDEO, 2040, Bytes::from_static(&[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41])).unwrap(),
        ];
        let mut m = FlvMuxer::new();
        let mut out = Vec::new();
        for f in &frames {
            m.push(f, &mut out).unwrap();
        }
        let rw = m.finish(&mut out).unwrap().unwrap();
        let body: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let file = apply(&body, &rw);

        let mut r = FileReader::new(Bytes::from(file.clone())).unwrap();
        let meta = r.next_tag().unwrap().unwrap();
        assert_eq!(meta.tag_type, TAG_SCRIPT);
        let vals = amf0::decode_all(&meta.body).unwrap();
        let md = &vals[1];
        assert_eq!(md.get("width").and_then(Value::as_f64), Some(320.0));
        assert_eq!(md.get("duration").and_then(Value::as_f64), Some(2.04));
        assert_eq!(md.get("filesize").and_then(Value::as_f64), Some(file.len() as f64));
        let kf = md.get("keyframes").unwrap();
        let Some(Value::StrictArray(pos)) = kf.get("filepositions") else { panic!() };
        let Some(Value::StrictArray(times)) = kf.get("times") else { panic!() };
        assert_eq!(times, &vec![Value::Number(0.0), Value::Number(2.0)]);
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
    }
}
