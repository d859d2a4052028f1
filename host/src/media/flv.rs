//! FLV tags: parsing a tag body into a [`Frame`], the file header and tag framing, and a
//! sans-IO reader of FLV files used by `reel remux` and tests.

use bytes::{Buf, Bytes};

use super::{Codec, Frame, FrameKind, MediaError, TimestampUnwrapper};

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;
/// Size of the FLV file header plus the first PreviousTagSize field.
pub const FILE_HEADER_LEN: usize = 13;
pub const TAG_HEADER_LEN: usize = 11;
/// Largest tag body an FLV tag header can describe (24-bit size).
pub const MAX_TAG_BODY: usize = 0xFF_FFFF;

/// Builds a frame from an FLV tag body (the payload of an RTMP audio/video/data message).
pub fn parse_tag(tag_type: u8, dts: i64, body: Bytes) -> Result<Frame, MediaError> {
    match tag_type {
        TAG_VIDEO => parse_video(dts, body),
        TAG_AUDIO => parse_audio(dts, body),
        TAG_SCRIPT => Ok(Frame {
            kind: FrameKind::Data,
            codec: Codec::None,
            dts,
            cts: 0,
            keyframe: false,
            config: false,
            tag: body,
            payload_offset: 0,
        }),
        other => Err(MediaError::Invalid { what: "FLV tag type", why: format!("{other}") }),
    }
}

fn si24(b: &[u8]) -> i32 {
    let v = (i32::from(b[0]) << 16) | (i32::from(b[1]) << 8) | i32::from(b[2]);
    (v << 8) >> 8
}

fn parse_video(dts: i64, body: Bytes) -> Result<Frame, MediaError> {
    let b0 = *body.first().ok_or(MediaError::Empty("video"))?;
    let mut f = Frame {
        kind: FrameKind::Video,
        codec: Codec::Other,
        dts,
        cts: 0,
        keyframe: false,
        config: false,
        tag: Bytes::new(),
        payload_offset: 1,
    };
    if b0 & 0x80 != 0 {
        // Enhanced RTMP: [IsExHeader:1][FrameType:3][PacketType:4][FourCC:4]...
        need(&body, 5, "enhanced video header")?;
        let frame_type = (b0 >> 4) & 7;
        let packet_type = b0 & 0x0f;
        f.codec = match &body[1..5] {
            b"hvc1" => Codec::Hevc,
            b"av01" => Codec::Av1,
            b"avc1" => Codec::H264,
            _ => Codec::Other,
        };
        f.keyframe = frame_type == 1;
        f.payload_offset = 5;
        match packet_type {
            0 => f.config = true,
            1 if f.codec != Codec::Av1 => {
                need(&body, 8, "enhanced video composition time")?;
                f.cts = si24(&body[5..8]);
                f.payload_offset = 8;
            }
            1 | 3 => {}
            // Sequence end, metadata, MPEG-2 TS sequence start: kept in FLV, skipped elsewhere,
            // and never a random access point.
            _ => {
                f.codec = Codec::Other;
                f.keyframe = false;
            }
        }
    } else {
        let frame_type = b0 >> 4;
        let codec_id = b0 & 0x0f;
        f.keyframe = frame_type == 1;
        f.codec = match codec_id {
            7 => Codec::H264,
            12 => Codec::Hevc,
            _ => Codec::Other,
        };
        if matches!(f.codec, Codec::H264 | Codec::Hevc) {
            need(&body, 2, "AVC packet type")?;
            let packet_type = body[1];
            f.payload_offset = 5;
            match packet_type {
                0 => f.config = true,
                1 => {
                    need(&body, 5, "AVC composition time")?;
                    f.cts = si24(&body[2..5]);
                }
                // End of sequence: no picture.
                _ => {
                    f.codec = Codec::Other;
                    f.keyframe = false;
                }
            }
            if frame_type == 5 {
                // Video info/command frame: no picture.
                f.codec = Codec::Other;
                f.config = false;
                f.keyframe = false;
            }
        }
    }
    f.payload_offset = f.payload_offset.min(body.len() as u16);
    f.tag = body;
    Ok(f)
}

fn parse_audio(dts: i64, body: Bytes) -> Result<Frame, MediaError> {
    let b0 = *body.first().ok_or(MediaError::Empty("audio"))?;
    let mut f = Frame {
        kind: FrameKind::Audio,
        codec: Codec::Other,
        dts,
        cts: 0,
        keyframe: true,
        config: false,
        tag: Bytes::new(),
        payload_offset: 1,
    };
    match b0 >> 4 {
        10 => {
            need(&body, 2, "AAC packet type")?;
            f.codec = Codec::Aac;
            f.config = body[1] == 0;
            f.payload_offset = 2;
        }
        2 | 14 => f.codec = Codec::Mp3,
        _ => {}
    }
    f.tag = body;
    Ok(f)
}

fn need(b: &[u8], n: usize, what: &'static str) -> Result<(), MediaError> {
    if b.len() < n {
        Err(MediaError::Truncated { what, need: n, have: b.len() })
    } else {
        Ok(())
    }
}

/// The 9-byte FLV header followed by PreviousTagSize0.
pub fn file_header(has_audio: bool, has_video: bool) -> [u8; FILE_HEADER_LEN] {
    let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// An 11-byte FLV tag header. FLV timestamps are 32-bit: the low 24 bits then the high 8.
pub fn tag_header(tag_type: u8, body_len: usize, dts: i64) -> [u8; TAG_HEADER_LEN] {
    let len = body_len as u32;
    let ts = dts as u32;
    [
        tag_type,
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        (ts >> 16) as u8,
        (ts >> 8) as u8,
        ts as u8,
        (ts >> 24) as u8,
        0,
        0,
        0,
    ]
}

/// What an FLV tag header says (the stream id, always 0, is not kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagHeader {
    pub tag_type: u8,
    /// Bytes of the tag body.
    pub size: usize,
    /// The 32-bit timestamp: the low 24 bits, then the high 8.
    pub timestamp: u32,
}

impl TagHeader {
    /// Reads the header at the start of `b`; `None` if `b` is shorter than [`TAG_HEADER_LEN`].
    pub fn parse(b: &[u8]) -> Option<Self> {
        let h = b.get(..TAG_HEADER_LEN)?;
        Some(Self {
            tag_type: h[0] & 0x1f,
            size: (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]),
            timestamp: (u32::from(h[7]) << 24) | (u32::from(h[4]) << 16) | (u32::from(h[5]) << 8) | u32::from(h[6]),
        })
    }
}

/// The PreviousTagSize field following a tag.
pub fn prev_tag_size(body_len: usize) -> [u8; 4] {
    ((TAG_HEADER_LEN + body_len) as u32).to_be_bytes()
}

/// A tag read from an FLV file.
#[derive(Clone, Debug)]
pub struct FileTag {
    pub tag_type: u8,
    pub timestamp: u32,
    pub body: Bytes,
}

/// Reads tags out of an in-memory (or memory-mapped) FLV file without copying bodies.
pub struct FileReader {
    data: Bytes,
    unwrapper: TimestampUnwrapper,
    pub has_audio: bool,
    pub has_video: bool,
}

impl FileReader {
    pub fn new(mut data: Bytes) -> Result<Self, MediaError> {
        if data.len() < FILE_HEADER_LEN || &data[..3] != b"FLV" {
            return Err(MediaError::Invalid { what: "FLV file", why: "missing FLV signature".into() });
        }
        let flags = data[4];
        let offset = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
        if offset < 9 || data.len() < offset + 4 {
            return Err(MediaError::Invalid { what: "FLV header", why: format!("data offset {offset}") });
        }
        data.advance(offset + 4);
        Ok(Self {
            data,
            unwrapper: TimestampUnwrapper::default(),
            has_audio: flags & 4 != 0,
            has_video: flags & 1 != 0,
        })
    }

    /// The next raw tag, `Ok(None)` at a clean end of file. A truncated last tag ends the file.
    pub fn next_tag(&mut self) -> Result<Option<FileTag>, MediaError> {
        loop {
            let Some(TagHeader { tag_type, size, timestamp }) = TagHeader::parse(&self.data) else {
                return Ok(None);
            };
            if self.data.len() < TAG_HEADER_LEN + size {
                return Ok(None);
            }
            self.data.advance(TAG_HEADER_LEN);
            let body = self.data.split_to(size);
            let skip = self.data.len().min(4);
            self.data.advance(skip);
            if matches!(tag_type, TAG_AUDIO | TAG_VIDEO | TAG_SCRIPT) {
                return Ok(Some(FileTag { tag_type, timestamp, body }));
            }
        }
    }

    /// The next tag as a [`Frame`]. Tags that do not parse are reported as errors.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, MediaError> {
        match self.next_tag()? {
            None => Ok(None),
            Some(t) => {
                let dts = self.unwrapper.unwrap(t.timestamp);
                parse_tag(t.tag_type, dts, t.body).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_avc_nalu_with_negative_cts() {
        let body = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xfe, 0, 0, 0, 1, 0x41]);
        let f = parse_tag(TAG_VIDEO, 40, body).unwrap();
        assert_eq!(f.codec, Codec::H264);
        assert!(!f.keyframe && !f.config);
        assert_eq!(f.cts, -2);
        assert_eq!(f.payload_ref(), &[0, 0, 0, 1, 0x41]);
    }

    #[test]
    fn parses_avc_sequence_header_and_aac() {
        let f = parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64])).unwrap();
        assert!(f.config && f.keyframe);
        let a = parse_tag(TAG_AUDIO, 0, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])).unwrap();
        assert!(a.config);
        assert_eq!(a.codec, Codec::Aac);
        assert_eq!(a.payload_ref(), &[0x12, 0x10]);
    }

    #[test]
    fn parses_enhanced_hevc() {
        let body = Bytes::from_static(&[0x91, b'h', b'v', b'c', b'1', 0, 0, 5, 9, 9]);
        let f = parse_tag(TAG_VIDEO, 0, body).unwrap();
        assert_eq!(f.codec, Codec::Hevc);
        assert!(f.keyframe);
        assert_eq!(f.cts, 5);
        assert_eq!(f.payload_ref(), &[9, 9]);
    }

    #[test]
    fn end_of_sequence_is_not_a_keyframe() {
        // ffmpeg ends FLV files with an AVC end-of-sequence tag flagged as a key frame.
        let f = parse_tag(TAG_VIDEO, 6000, Bytes::from_static(&[0x17, 2, 0, 0, 0])).unwrap();
        assert!(!f.keyframe && !f.config);
        assert_eq!(f.codec, Codec::Other);
    }

    #[test]
    fn truncated_video_is_an_error() {
        assert!(parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x17])).is_err());
        assert!(parse_tag(TAG_VIDEO, 0, Bytes::new()).is_err());
    }

    #[test]
    fn tag_header_roundtrip() {
        let mut file = file_header(true, true).to_vec();
        let body = [0xaf, 1, 0x21];
        file.extend_from_slice(&tag_header(TAG_AUDIO, 3, 0x0123_4567));
        file.extend_from_slice(&body);
        file.extend_from_slice(&prev_tag_size(3));
        let mut r = FileReader::new(Bytes::from(file)).unwrap();
        let t = r.next_tag().unwrap().unwrap();
        assert_eq!(t.timestamp, 0x0123_4567);
        assert_eq!(&t.body[..], &body);
        assert!(r.next_tag().unwrap().is_none());
    }
}
