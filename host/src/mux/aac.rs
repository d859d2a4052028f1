//! Audio-only `.aac` writer: each raw AAC frame behind a 7-byte ADTS header built from the
//! last AudioSpecificConfig. Video and script data are ignored. The header is the only thing
//! built here; the frame bytes are slices of the received payload.

use bytes::{BufMut, BytesMut};

use super::{Chunks, MuxError, Muxer, Rewrite};
use crate::media::aac::AacConfig;
use crate::media::{Codec, Frame, FrameKind};

/// Largest ADTS frame (13-bit `aac_frame_length`, header included).
pub(crate) const MAX_ADTS_FRAME: usize = 0x1FFF;
pub(crate) const ADTS_HEADER_LEN: usize = 7;

/// An AudioSpecificConfig reduced to what an ADTS header can say.
///
/// ADTS has a 2-bit profile (object type - 1, so Main/LC/SSR/LTP) and a 4-bit sample rate
/// index. HE-AAC (SBR, object type 5) and HE-AACv2 (PS, 29) are written the way ADTS
/// streams carry them: as LC at the core sample rate, SBR/PS signalled implicitly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AdtsConfig {
    cfg: AacConfig,
}

impl AdtsConfig {
    pub(crate) fn new(mut cfg: AacConfig, container: &'static str) -> Result<Self, MuxError> {
        match cfg.object_type {
            1..=4 => {}
            5 | 29 => cfg.object_type = 2,
            _ => {
                return Err(MuxError::UnsupportedCodec {
                    container,
                    codec: "aac (object type without an ADTS profile)",
                })
            }
        }
        if usize::from(cfg.sample_rate_index) >= crate::media::aac::SAMPLE_RATES.len() {
            return Err(MuxError::UnsupportedCodec { container, codec: "aac (sample rate without an ADTS index)" });
        }
        Ok(Self { cfg })
    }

    /// The ADTS header for a raw frame of `len` bytes.
    pub(crate) fn header(&self, len: usize) -> Result<[u8; ADTS_HEADER_LEN], MuxError> {
        if len + ADTS_HEADER_LEN > MAX_ADTS_FRAME {
            return Err(MuxError::Invalid(format!(
                "AAC frame of {len} bytes exceeds ADTS's {} byte limit",
                MAX_ADTS_FRAME - ADTS_HEADER_LEN
            )));
        }
        Ok(self.cfg.adts_header(len))
    }

    /// Frame duration in milliseconds (1024 samples at the core sample rate).
    pub(crate) fn frame_ms(&self) -> f64 {
        1_024_000.0 / f64::from(self.cfg.sample_rate.max(1))
    }
}

/// Writes an ADTS (`.aac`) file from the AAC frames of a stream.
pub struct AdtsMuxer {
    config: Option<AdtsConfig>,
    /// Scratch for ADTS headers; split into refcounted chunks.
    scratch: BytesMut,
    frames: u64,
    bytes: u64,
}

impl Default for AdtsMuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl AdtsMuxer {
    pub fn new() -> Self {
        Self { config: None, scratch: BytesMut::new(), frames: 0, bytes: 0 }
    }

    /// AAC frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes written so far (the file's length).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Muxer for AdtsMuxer {
    fn container(&self) -> &'static str {
        "aac"
    }

    fn push(&mut self, f: &Frame, out: &mut Chunks) -> Result<(), MuxError> {
        if f.kind != FrameKind::Audio {
            return Ok(());
        }
        if f.codec != Codec::Aac {
            return Err(MuxError::UnsupportedCodec { container: "aac", codec: f.codec.name() });
        }
        if f.config {
            self.config = Some(AdtsConfig::new(AacConfig::parse(f.payload_ref())?, "aac")?);
            return Ok(());
        }
        let cfg =
            self.config.as_ref().ok_or_else(|| MuxError::Invalid("AAC frame before its AudioSpecificConfig".into()))?;
        let payload = f.payload();
        if payload.is_empty() {
            return Ok(());
        }
        let header = cfg.header(payload.len())?;
        if self.scratch.capacity() < ADTS_HEADER_LEN {
            self.scratch.reserve(64 * ADTS_HEADER_LEN);
        }
        self.scratch.put_slice(&header);
        out.push(self.scratch.split().freeze());
        self.bytes += (ADTS_HEADER_LEN + payload.len()) as u64;
        out.push(payload);
        self.frames += 1;
        Ok(())
    }

    fn finish(&mut self, _out: &mut Chunks) -> Result<Option<Rewrite>, MuxError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::flv::{parse_tag, TAG_AUDIO, TAG_VIDEO};

    fn concat(out: &Chunks) -> Vec<u8> {
        out.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn wraps_frames_in_adts_and_ignores_video() {
        let mut m = AdtsMuxer::new();
        let mut out = Vec::new();
        m.push(&parse_tag(TAG_VIDEO, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 0x64])).unwrap(), &mut out).unwrap();
        m.push(&parse_tag(TAG_AUDIO, 0, Bytes::from_static(&[0xaf, 0, 0x12, 0x10])).unwrap(), &mut out).unwrap();
        let raw = parse_tag(TAG_AUDIO, 0, Bytes::from_static(&[0xaf, 1, 0x21, 0x22, 0x23])).unwrap();
        m.push(&raw, &mut out).unwrap();
        assert_eq!(concat(&out), [0xff, 0xf1, 0x50, 0x80, 0x01, 0x5f, 0xfc, 0x21, 0x22, 0x23]);
        assert_eq!((m.frames(), m.bytes()), (1, 10));
        // The frame bytes are the received slice, not a copy.
        assert_eq!(out[1].as_ptr(), raw.payload_ref().as_ptr());
        assert_eq!(m.finish(&mut out).unwrap(), None);
    }

    #[test]
    fn rejects_frames_before_config_and_other_codecs() {
        let mut m = AdtsMuxer::new();
        let mut out = Vec::new();
        let raw = parse_tag(TAG_AUDIO, 0, Bytes::from_static(&[0xaf, 1, 0x21])).unwrap();
        assert!(matches!(m.push(&raw, &mut out), Err(MuxError::Invalid(_))));
        let mp3 = parse_tag(TAG_AUDIO, 0, Bytes::from_static(&[0x2f, 0xff, 0xfb])).unwrap();
        assert!(matches!(m.push(&mp3, &mut out), Err(MuxError::UnsupportedCodec { container: "aac", codec: "mp3" })));
        assert!(out.is_empty());
    }

    #[test]
    fn he_aac_is_written_as_lc_at_the_core_rate() {
        // Object type 5 (SBR), 22050 Hz core (index 7), stereo, extension index 4 (44100).
        let cfg = AacConfig::parse(&[0x2b, 0x92, 0x08, 0x00]).unwrap();
        assert_eq!(cfg.object_type, 5);
        let a = AdtsConfig::new(cfg, "aac").unwrap();
        let h = a.header(10).unwrap();
        assert_eq!(h[2] >> 6, 1, "profile LC");
        assert_eq!((h[2] >> 2) & 0xf, 7, "core sample rate index");
        assert!(a.header(MAX_ADTS_FRAME).is_err());
        // AAC-LD (23) has no ADTS profile.
        let ld = AacConfig::parse(&[0xb9, 0x88]).unwrap();
        assert!(matches!(AdtsConfig::new(ld, "aac"), Err(MuxError::UnsupportedCodec { .. })));
    }
}
