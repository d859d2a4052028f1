//! AAC AudioSpecificConfig (ISO/IEC 14496-3) and ADTS headers.

use super::MediaError;

pub const SAMPLE_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AacConfig {
    /// Audio object type (2 = AAC LC).
    pub object_type: u8,
    pub sample_rate_index: u8,
    pub sample_rate: u32,
    pub channels: u8,
    /// The AudioSpecificConfig bytes, for `esds`.
    pub raw: Vec<u8>,
}

impl AacConfig {
    pub fn parse(b: &[u8]) -> Result<Self, MediaError> {
        if b.len() < 2 {
            return Err(MediaError::Truncated { what: "AudioSpecificConfig", need: 2, have: b.len() });
        }
        let object_type = b[0] >> 3;
        let sample_rate_index = ((b[0] & 7) << 1) | (b[1] >> 7);
        let channels = (b[1] >> 3) & 0x0f;
        let sample_rate = if sample_rate_index == 15 {
            if b.len() < 5 {
                return Err(MediaError::Truncated { what: "AudioSpecificConfig", need: 5, have: b.len() });
            }
            (u32::from(b[1] & 0x7f) << 17) | (u32::from(b[2]) << 9) | (u32::from(b[3]) << 1) | u32::from(b[4] >> 7)
        } else {
            *SAMPLE_RATES.get(usize::from(sample_rate_index)).ok_or_else(|| MediaError::Invalid {
                what: "AudioSpecificConfig",
                why: format!("sample rate index {sample_rate_index}"),
            })?
        };
        if object_type == 0 {
            return Err(MediaError::Invalid { what: "AudioSpecificConfig", why: "object type 0".into() });
        }
        Ok(Self { object_type, sample_rate_index, sample_rate, channels, raw: b.to_vec() })
    }

    /// The 7-byte ADTS header (no CRC) for a raw frame of `payload_len` bytes.
    pub fn adts_header(&self, payload_len: usize) -> [u8; 7] {
        let len = payload_len + 7;
        // ADTS profile is object type - 1 and only has two bits (Main, LC, SSR, LTP):
        // HE-AAC (SBR 5, PS 29) signals its LC core, as encoders do.
        let profile = match self.object_type {
            1..=4 => self.object_type - 1,
            _ => 1,
        };
        let sri = if self.sample_rate_index > 12 { 4 } else { self.sample_rate_index };
        let ch = self.channels & 7;
        [
            0xff,
            0xf1,
            (profile << 6) | (sri << 2) | (ch >> 2),
            ((ch & 3) << 6) | ((len >> 11) as u8 & 3),
            (len >> 3) as u8,
            (((len & 7) as u8) << 5) | 0x1f,
            0xfc,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lc_44100_stereo_and_builds_adts() {
        let c = AacConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 44100, 2));
        let h = c.adts_header(100);
        assert_eq!(h, [0xff, 0xf1, 0x50, 0x80, 0x0d, 0x7f, 0xfc]);
    }

    #[test]
    fn rejects_bad_index() {
        assert!(AacConfig::parse(&[0x16, 0x90]).is_err());
    }
}
