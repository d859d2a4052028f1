//! Codec side of the MP4 writer: sample entries (`avc1`+`avcC`, `hvc1`+`hvcC`, `av01`+`av1C`,
//! `mp4a`+`esds` for AAC and MP3) built from the stream's sequence headers, picture sizes from
//! AV1 sequence headers, and MPEG audio frame headers.

use bytes::{Bytes, BytesMut};

use super::boxes::BoxWriter;
use super::table::TrackKind;
use crate::media::aac::AacConfig;
use crate::media::avc::{AvcConfig, HevcConfig};
use crate::media::bits::BitReader;
use crate::media::{Codec, MediaError};
use crate::mux::MuxError;

/// Video timescale: RTMP millisecond timestamps map exactly (× 90).
pub(crate) const VIDEO_TIMESCALE: u32 = 90_000;

/// A track's codec setup, from its sequence header (or, for MP3, its first frame).
#[derive(Clone, Debug)]
pub(crate) struct Setup {
    pub codec: Codec,
    pub kind: TrackKind,
    pub timescale: u32,
    pub width: u16,
    pub height: u16,
    pub sample_entry: Bytes,
    /// What identifies this configuration: a sequence header that differs is a new stream.
    pub config: Bytes,
    /// Samples per audio frame (1024 AAC, 1152/576 MP3); 0 for video.
    pub frame_samples: u32,
}

fn media(what: &'static str, why: &str) -> MuxError {
    MuxError::Media(MediaError::Invalid { what, why: why.into() })
}

/// Setup from a video sequence header (`record` is the decoder configuration record).
pub(crate) fn video_setup(codec: Codec, record: &Bytes) -> Result<Setup, MuxError> {
    let (fourcc, child, dims) = match codec {
        Codec::H264 => {
            let c = AvcConfig::parse(record)?;
            (b"avc1", b"avcC", c.dimensions())
        }
        Codec::Hevc => {
            let c = HevcConfig::parse(record)?;
            (b"hvc1", b"hvcC", c.dimensions())
        }
        Codec::Av1 => {
            if record.len() < 4 || record[0] != 0x81 {
                return Err(media("AV1CodecConfigurationRecord", "marker/version is not 0x81"));
            }
            (b"av01", b"av1C", av1_dimensions(&record[4..]))
        }
        other => return Err(MuxError::UnsupportedCodec { container: "mp4", codec: other.name() }),
    };
    let (w, h) = dims.unwrap_or((0, 0));
    let (width, height) = (u16::try_from(w).unwrap_or(0), u16::try_from(h).unwrap_or(0));
    let mut buf = BytesMut::with_capacity(record.len() + 100);
    let mut b = BoxWriter::new(&mut buf);
    b.open(fourcc);
    b.zeros(6);
    b.u16(1); // data reference index
    b.zeros(16);
    b.u16(width);
    b.u16(height);
    b.u32(0x0048_0000); // 72 dpi
    b.u32(0x0048_0000);
    b.u32(0);
    b.u16(1); // frame count
    b.zeros(32); // compressor name
    b.u16(0x0018); // depth
    b.u16(0xffff); // pre_defined = -1
    b.open(child);
    b.bytes(record);
    b.close();
    b.close();
    b.done()?;
    Ok(Setup {
        codec,
        kind: TrackKind::Video,
        timescale: VIDEO_TIMESCALE,
        width,
        height,
        sample_entry: buf.freeze(),
        config: record.clone(),
        frame_samples: 0,
    })
}

/// Setup from an AAC AudioSpecificConfig.
pub(crate) fn aac_setup(asc: &Bytes) -> Result<Setup, MuxError> {
    let c = AacConfig::parse(asc)?;
    if c.sample_rate == 0 {
        return Err(media("AudioSpecificConfig", "sample rate 0"));
    }
    // GASpecificConfig's frameLengthFlag (right after the channel configuration) selects
    // 960-sample frames; low-delay AAC uses 512/480.
    let short = c.sample_rate_index != 15 && asc.len() >= 2 && asc[1] & 0x04 != 0;
    let frame_samples = match (c.object_type, short) {
        (1..=4 | 6 | 7 | 17 | 19..=22, true) => 960,
        (23, false) => 512,
        (23, true) => 480,
        _ => 1024,
    };
    let channels = if c.channels == 0 { 2 } else { u16::from(c.channels) };
    Ok(Setup {
        codec: Codec::Aac,
        kind: TrackKind::Audio,
        timescale: c.sample_rate,
        width: 0,
        height: 0,
        sample_entry: mp4a_entry(channels, c.sample_rate, 0x40, Some(asc))?,
        config: asc.clone(),
        frame_samples,
    })
}

/// What an MPEG audio frame header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MpegAudioHeader {
    pub sample_rate: u32,
    pub channels: u16,
    pub frame_samples: u32,
}

/// Parses the 4-byte MPEG-1/2/2.5 audio frame header at the start of `b`.
pub(crate) fn mpeg_audio_header(b: &[u8]) -> Option<MpegAudioHeader> {
    if b.len() < 4 || b[0] != 0xff || b[1] & 0xe0 != 0xe0 {
        return None;
    }
    let version = (b[1] >> 3) & 3; // 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5
    let layer = (b[1] >> 1) & 3; // 1 = III, 2 = II, 3 = I
    let rate_index = usize::from((b[2] >> 2) & 3);
    if version == 1 || layer == 0 || rate_index == 3 {
        return None;
    }
    let base = [44100, 48000, 32000][rate_index];
    let sample_rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    let frame_samples = match (layer, version) {
        (3, _) => 384,
        (2, _) | (1, 3) => 1152,
        _ => 576,
    };
    let channels = if b[3] >> 6 == 3 { 1 } else { 2 };
    Some(MpegAudioHeader { sample_rate, channels, frame_samples })
}

/// Setup from the first MP3 frame.
pub(crate) fn mp3_setup(frame: &[u8]) -> Result<Setup, MuxError> {
    let h = mpeg_audio_header(frame).ok_or_else(|| media("MPEG audio frame", "no frame header"))?;
    // ISO 14496-1 object types: 0x6B MPEG-1 audio, 0x69 MPEG-2 audio (lower sample rates).
    let oti = if h.sample_rate >= 32000 { 0x6b } else { 0x69 };
    Ok(Setup {
        codec: Codec::Mp3,
        kind: TrackKind::Audio,
        timescale: h.sample_rate,
        width: 0,
        height: 0,
        sample_entry: mp4a_entry(h.channels, h.sample_rate, oti, None)?,
        config: Bytes::copy_from_slice(&[
            (h.sample_rate >> 16) as u8,
            (h.sample_rate >> 8) as u8,
            h.sample_rate as u8,
            h.channels as u8,
        ]),
        frame_samples: h.frame_samples,
    })
}

/// An MPEG-4 descriptor header with a one-byte length (all ours are short).
fn descriptor(b: &mut BoxWriter, tag: u8, len: usize) -> Result<(), MuxError> {
    let len = u8::try_from(len).ok().filter(|&l| l < 0x80).ok_or_else(|| media("esds", "descriptor too long"))?;
    b.u8(tag);
    b.u8(len);
    Ok(())
}

fn mp4a_entry(channels: u16, sample_rate: u32, object_type: u8, dsi: Option<&[u8]>) -> Result<Bytes, MuxError> {
    let dsi_len = dsi.map_or(0, |d| 2 + d.len());
    let dcd_len = 13 + dsi_len;
    let es_len = 3 + 2 + dcd_len + 3;
    let mut buf = BytesMut::with_capacity(64 + es_len);
    let mut b = BoxWriter::new(&mut buf);
    b.open(b"mp4a");
    b.zeros(6);
    b.u16(1); // data reference index
    b.zeros(8);
    b.u16(channels);
    b.u16(16); // sample size
    b.u32(0);
    b.u32(if sample_rate <= u32::from(u16::MAX) { sample_rate << 16 } else { 0 });
    b.open_full(b"esds", 0, 0);
    descriptor(&mut b, 0x03, es_len)?; // ES_Descriptor
    b.u16(0); // ES_ID
    b.u8(0); // no dependency, URL or OCR
    descriptor(&mut b, 0x04, dcd_len)?; // DecoderConfigDescriptor
    b.u8(object_type);
    b.u8(0x15); // audio stream
    b.bytes(&[0, 0, 0]); // buffer size
    b.u32(0); // max bitrate
    b.u32(0); // average bitrate
    if let Some(d) = dsi {
        descriptor(&mut b, 0x05, d.len())?; // DecoderSpecificInfo
        b.bytes(d);
    }
    descriptor(&mut b, 0x06, 1)?; // SLConfigDescriptor
    b.u8(2);
    b.close();
    b.close();
    b.done()?;
    Ok(buf.freeze())
}

/// Bytes of a leading AV1 temporal delimiter OBU, which MP4 samples must not carry.
pub(crate) fn av1_temporal_delimiter_len(b: &[u8]) -> usize {
    let Some(&h) = b.first() else { return 0 };
    if (h >> 3) & 0x0f != 2 {
        return 0;
    }
    let mut pos = 1 + usize::from(h & 0x04 != 0);
    if h & 0x02 == 0 {
        return b.len(); // no size field: the OBU runs to the end
    }
    let Some((size, n)) = leb128(b.get(pos..).unwrap_or(&[])) else { return 0 };
    pos += n;
    match usize::try_from(size).ok().and_then(|s| pos.checked_add(s)) {
        Some(end) if end <= b.len() => end,
        _ => 0,
    }
}

fn leb128(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().take(8).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Maximum frame size from the sequence header OBU among AV1 `configOBUs`.
pub(crate) fn av1_dimensions(mut obus: &[u8]) -> Option<(u32, u32)> {
    while let Some(&h) = obus.first() {
        let ext = usize::from(h & 0x04 != 0);
        let (payload, rest) = if h & 0x02 != 0 {
            let (size, n) = leb128(obus.get(1 + ext..)?)?;
            let start = 1 + ext + n;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            (obus.get(start..end)?, obus.get(end..)?)
        } else {
            (obus.get(1 + ext..)?, &[][..])
        };
        if (h >> 3) & 0x0f == 1 {
            return av1_sequence_header_dimensions(payload);
        }
        obus = rest;
    }
    None
}

fn av1_sequence_header_dimensions(b: &[u8]) -> Option<(u32, u32)> {
    let mut r = BitReader::raw(b);
    r.skip(3)?; // seq_profile
    r.skip(1)?; // still_picture
    let reduced = r.bit()? == 1;
    if reduced {
        r.skip(5)?;
    } else {
        let mut decoder_model_info = false;
        let mut buffer_delay_len = 0;
        if r.bit()? == 1 {
            // timing_info
            r.skip(64)?;
            if r.bit()? == 1 {
                r.uvlc()?;
            }
            decoder_model_info = r.bit()? == 1;
            if decoder_model_info {
                buffer_delay_len = r.bits(5)? + 1;
                r.skip(32 + 5 + 5)?;
            }
        }
        let initial_display_delay = r.bit()? == 1;
        let operating_points = r.bits(5)? + 1;
        for _ in 0..operating_points {
            r.skip(12)?; // operating_point_idc
            if r.bits(5)? > 7 {
                r.skip(1)?; // seq_tier
            }
            if decoder_model_info && r.bit()? == 1 {
                r.skip(2 * buffer_delay_len + 1)?;
            }
            if initial_display_delay && r.bit()? == 1 {
                r.skip(4)?;
            }
        }
    }
    let wbits = r.bits(4)? + 1;
    let hbits = r.bits(4)? + 1;
    let w = r.bits(wbits)?.checked_add(1)?;
    let h = r.bits(hbits)?.checked_add(1)?;
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mpeg_audio_headers() {
        // MPEG-1 layer III, 44.1 kHz, stereo.
        assert_eq!(
            mpeg_audio_header(&[0xff, 0xfb, 0x90, 0x64]),
            Some(MpegAudioHeader { sample_rate: 44100, channels: 2, frame_samples: 1152 })
        );
        // MPEG-2 layer III, 22.05 kHz, mono.
        assert_eq!(
            mpeg_audio_header(&[0xff, 0xf3, 0x90, 0xc4]),
            Some(MpegAudioHeader { sample_rate: 22050, channels: 1, frame_samples: 576 })
        );
        assert_eq!(mpeg_audio_header(&[0xff, 0xfb, 0x9c, 0x64]), None);
        assert_eq!(mpeg_audio_header(&[0x00, 0xfb]), None);
    }

    #[test]
    fn strips_only_a_leading_temporal_delimiter() {
        assert_eq!(av1_temporal_delimiter_len(&[0x12, 0x00, 0x0a, 0x01, 0x00]), 2);
        assert_eq!(av1_temporal_delimiter_len(&[0x0a, 0x01, 0x00]), 0);
        assert_eq!(av1_temporal_delimiter_len(&[0x12, 0x05]), 0, "size past the end");
        assert_eq!(av1_temporal_delimiter_len(&[]), 0);
    }

    #[test]
    fn reads_av1_sequence_header_size() {
        // configOBUs of the av1C of a 320x240 libaom stream: one sequence header OBU.
        let obu = [0x0a, 0x0b, 0x00, 0x00, 0x00, 0x04, 0x3c, 0xff, 0xbc, 0xda, 0xf9, 0x00, 0x40];
        assert_eq!(av1_dimensions(&obu), Some((320, 240)));
        assert_eq!(av1_dimensions(&obu[..5]), None);
    }

    #[test]
    fn aac_setup_builds_esds() {
        let s = aac_setup(&Bytes::from_static(&[0x12, 0x10])).unwrap();
        assert_eq!((s.timescale, s.frame_samples), (44100, 1024));
        let e = &s.sample_entry;
        assert_eq!(&e[4..8], b"mp4a");
        assert_eq!(u32::from_be_bytes([e[0], e[1], e[2], e[3]]) as usize, e.len());
        let esds = &e[36..];
        assert_eq!(&esds[4..8], b"esds");
        assert_eq!(u32::from_be_bytes([esds[0], esds[1], esds[2], esds[3]]) as usize, esds.len());
        assert!(esds.windows(4).any(|w| w == [0x05, 0x02, 0x12, 0x10]), "DecoderSpecificInfo carries the ASC");
        assert!(aac_setup(&Bytes::from_static(&[0x12])).is_err());
    }
}
