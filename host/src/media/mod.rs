//! Media model shared by ingest, muxers and the recorder: [`Frame`], codec configuration
//! records and FLV tag parsing. Depends on `bytes` only.

pub mod aac;
pub mod amf0;
pub mod avc;
pub mod bits;
pub mod flv;
pub mod time;

use bytes::Bytes;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Video,
    Audio,
    /// Script data (`onMetaData` etc.). Recorders use it for metadata, muxers skip it.
    Data,
}

/// Codec of a frame, from the FLV/RTMP codec id or Enhanced RTMP FourCC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    H264,
    /// H.265 as FLV codec id 12 or Enhanced RTMP `hvc1`.
    Hevc,
    /// Enhanced RTMP `av01`.
    Av1,
    Aac,
    Mp3,
    /// Anything else: carried in FLV, skipped by the containers that cannot hold it.
    Other,
    /// Script data.
    None,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Hevc => "hevc",
            Codec::Av1 => "av1",
            Codec::Aac => "aac",
            Codec::Mp3 => "mp3",
            Codec::Other => "other",
            Codec::None => "none",
        }
    }
}

/// One audio/video/data message of a stream.
///
/// `tag` is the FLV tag body (= RTMP message payload) exactly as received: the FLV writer
/// emits it untouched, the other muxers use [`Frame::payload`], a slice of it. Nothing here
/// owns a copy: cloning a frame bumps a reference count.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub codec: Codec,
    /// Decode timestamp in milliseconds, as sent (RTMP 32-bit time, unwrapped to i64).
    pub dts: i64,
    /// Composition time offset in milliseconds (pts - dts).
    pub cts: i32,
    /// Video: a random access point (IDR / key frame). Audio: always true.
    pub keyframe: bool,
    /// A sequence header: AVC/HEVC/AV1 decoder configuration or AAC AudioSpecificConfig.
    pub config: bool,
    /// The FLV tag body as received.
    pub tag: Bytes,
    /// Offset of the codec payload inside `tag`.
    pub payload_offset: u16,
}

impl Frame {
    /// The codec payload: AVCC/HVCC length-prefixed NAL units, raw AAC, an AV1 OBU sequence,
    /// or a decoder configuration record when `config` is set.
    pub fn payload(&self) -> Bytes {
        self.tag.slice(usize::from(self.payload_offset).min(self.tag.len())..)
    }

    /// Payload as a borrowed slice (no refcount traffic).
    pub fn payload_ref(&self) -> &[u8] {
        &self.tag[usize::from(self.payload_offset).min(self.tag.len())..]
    }

    /// The same frame holding its own copy of the tag: for the few frames kept for a whole
    /// stream (sequence headers, metadata), so they do not pin the read or reassembly block
    /// they arrived in.
    pub fn owned(&self) -> Frame {
        Frame { tag: Bytes::copy_from_slice(&self.tag), ..self.clone() }
    }

    /// Presentation timestamp in milliseconds.
    pub fn pts(&self) -> i64 {
        self.dts + i64::from(self.cts)
    }

    /// FLV tag type of this frame (8 audio, 9 video, 18 script).
    pub fn flv_tag_type(&self) -> u8 {
        match self.kind {
            FrameKind::Audio => 8,
            FrameKind::Video => 9,
            FrameKind::Data => 18,
        }
    }

    /// Whether this is a coded media sample (not a sequence header, not script data).
    pub fn is_sample(&self) -> bool {
        !self.config && self.kind != FrameKind::Data
    }

    /// Whether this is stream metadata: script data whose first AMF0 string is `onMetaData`,
    /// or `@setDataFrame` followed by `onMetaData` (checked without decoding the rest).
    pub fn is_metadata(&self) -> bool {
        fn first(b: &[u8]) -> Option<&[u8]> {
            if b.len() < 3 || b[0] != amf0::MARKER_STRING {
                return None;
            }
            let n = usize::from(u16::from_be_bytes([b[1], b[2]]));
            b.get(3..3 + n)
        }
        if self.kind != FrameKind::Data {
            return false;
        }
        let b = &self.tag[..];
        match first(b) {
            Some(b"onMetaData") => true,
            Some(s @ b"@setDataFrame") => first(&b[3 + s.len()..]) == Some(b"onMetaData"),
            _ => false,
        }
    }
}

/// Errors raised while interpreting media bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MediaError {
    #[error("empty {0} tag")]
    Empty(&'static str),
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated { what: &'static str, need: usize, have: usize },
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("unsupported {0}")]
    Unsupported(String),
}

/// Unwraps 32-bit millisecond timestamps (RTMP, FLV) into a monotonic i64 timeline.
#[derive(Clone, Debug, Default)]
pub struct TimestampUnwrapper {
    last: Option<u32>,
    epoch: i64,
}

impl TimestampUnwrapper {
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        if let Some(last) = self.last {
            // A jump backwards of more than half the range is a wrap, not a reorder.
            if ts < last && last - ts > u32::MAX / 2 {
                self.epoch += 1 << 32;
            } else if ts > last && ts - last > u32::MAX / 2 && self.epoch > 0 {
                self.epoch -= 1 << 32;
            }
        }
        self.last = Some(ts);
        self.epoch + i64::from(ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap_handles_wraparound() {
        let mut u = TimestampUnwrapper::default();
        assert_eq!(u.unwrap(10), 10);
        assert_eq!(u.unwrap(u32::MAX - 5), i64::from(u32::MAX) - 5);
        assert_eq!(u.unwrap(3), (1i64 << 32) + 3);
    }
}
