//! H.264/H.265 decoder configuration records (ISO/IEC 14496-15) and NAL unit helpers.

use super::MediaError;

/// What the muxers need from an AVCDecoderConfigurationRecord.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvcConfig {
    pub profile: u8,
    pub compatibility: u8,
    pub level: u8,
    /// Bytes of each NAL unit length prefix (1, 2 or 4).
    pub nal_length_size: u8,
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
}

impl AvcConfig {
    pub fn parse(b: &[u8]) -> Result<Self, MediaError> {
        let bad = |why: &str| MediaError::Invalid { what: "AVCDecoderConfigurationRecord", why: why.into() };
        if b.len() < 7 {
            return Err(MediaError::Truncated { what: "AVCDecoderConfigurationRecord", need: 7, have: b.len() });
        }
        if b[0] != 1 {
            return Err(bad("version is not 1"));
        }
        let nal_length_size = (b[4] & 3) + 1;
        if nal_length_size == 3 {
            return Err(bad("NAL length size 3"));
        }
        let mut pos = 5;
        let read_sets = |count: usize, pos: &mut usize| -> Result<Vec<Vec<u8>>, MediaError> {
            let mut v = Vec::with_capacity(count);
            for _ in 0..count {
                if *pos + 2 > b.len() {
                    return Err(bad("truncated parameter set"));
                }
                let n = usize::from(u16::from_be_bytes([b[*pos], b[*pos + 1]]));
                *pos += 2;
                if *pos + n > b.len() {
                    return Err(bad("truncated parameter set"));
                }
                v.push(b[*pos..*pos + n].to_vec());
                *pos += n;
            }
            Ok(v)
        };
        let nsps = usize::from(b[pos] & 0x1f);
        pos += 1;
        let sps = read_sets(nsps, &mut pos)?;
        if pos >= b.len() {
            return Err(bad("missing PPS count"));
        }
        let npps = usize::from(b[pos]);
        pos += 1;
        let pps = read_sets(npps, &mut pos)?;
        Ok(Self { profile: b[1], compatibility: b[2], level: b[3], nal_length_size, sps, pps })
    }

    /// Picture size from the first SPS, if it parses.
    pub fn dimensions(&self) -> Option<(u32, u32)> {
        self.sps.first().and_then(|s| sps_dimensions(s))
    }
}

/// What the muxers need from an HEVCDecoderConfigurationRecord: the parameter set arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HevcConfig {
    pub nal_length_size: u8,
    /// (NAL unit type, units) for VPS/SPS/PPS/SEI arrays.
    pub arrays: Vec<(u8, Vec<Vec<u8>>)>,
}

impl HevcConfig {
    pub fn parse(b: &[u8]) -> Result<Self, MediaError> {
        let bad = |why: &str| MediaError::Invalid { what: "HEVCDecoderConfigurationRecord", why: why.into() };
        if b.len() < 23 {
            return Err(MediaError::Truncated { what: "HEVCDecoderConfigurationRecord", need: 23, have: b.len() });
        }
        let nal_length_size = (b[21] & 3) + 1;
        let num_arrays = usize::from(b[22]);
        let mut pos = 23;
        let mut arrays = Vec::with_capacity(num_arrays);
        for _ in 0..num_arrays {
            if pos + 3 > b.len() {
                return Err(bad("truncated array"));
            }
            let ty = b[pos] & 0x3f;
            let n = usize::from(u16::from_be_bytes([b[pos + 1], b[pos + 2]]));
            pos += 3;
            let mut units = Vec::with_capacity(n);
            for _ in 0..n {
                if pos + 2 > b.len() {
                    return Err(bad("truncated unit"));
                }
                let len = usize::from(u16::from_be_bytes([b[pos], b[pos + 1]]));
                pos += 2;
                if pos + len > b.len() {
                    return Err(bad("truncated unit"));
                }
                units.push(b[pos..pos + len].to_vec());
                pos += len;
            }
            arrays.push((ty, units));
        }
        Ok(Self { nal_length_size, arrays })
    }
}

/// Iterates the NAL units of a length-prefixed (AVCC/HVCC) sample. Stops at a malformed length.
pub fn nal_units(sample: &[u8], length_size: u8) -> impl Iterator<Item = &[u8]> {
    let ls = usize::from(length_size);
    let mut rest = sample;
    std::iter::from_fn(move || {
        if ls == 0 || rest.len() < ls {
            return None;
        }
        let n = rest[..ls].iter().fold(0usize, |a, &b| (a << 8) | usize::from(b));
        if rest.len() < ls + n {
            return None;
        }
        let nal = &rest[ls..ls + n];
        rest = &rest[ls + n..];
        Some(nal)
    })
}

/// Exp-Golomb bit reader over an RBSP (emulation prevention bytes removed on the fly).
struct BitReader<'a> {
    data: &'a [u8],
    byte: usize,
    bit: u8,
    zeros: u8,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, byte: 0, bit: 0, zeros: 0 }
    }
    fn bit(&mut self) -> Option<u32> {
        if self.bit == 0 {
            // Skip emulation prevention byte 0x03 after two zero bytes.
            if self.zeros >= 2 && self.data.get(self.byte) == Some(&3) {
                self.byte += 1;
                self.zeros = 0;
            }
        }
        let b = *self.data.get(self.byte)?;
        let v = (b >> (7 - self.bit)) & 1;
        self.bit += 1;
        if self.bit == 8 {
            self.bit = 0;
            self.byte += 1;
            self.zeros = if b == 0 { self.zeros + 1 } else { 0 };
        }
        Some(u32::from(v))
    }
    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }
    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        Some(if k & 1 == 1 { (k as i32 + 1) / 2 } else { -((k / 2) as i32) })
    }
}

/// Width and height from an H.264 SPS NAL unit (with its 1-byte header).
pub fn sps_dimensions(sps: &[u8]) -> Option<(u32, u32)> {
    let mut r = BitReader::new(sps.get(1..)?);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags + level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    if matches!(profile, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?;
        }
        r.ue()?;
        r.ue()?;
        r.bit()?;
        if r.bit()? == 1 {
            let n = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..n {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    let poc_type = r.ue()?;
    if poc_type == 0 {
        r.ue()?;
    } else if poc_type == 1 {
        r.bit()?;
        r.se()?;
        r.se()?;
        let n = r.ue()?;
        for _ in 0..n.min(255) {
            r.se()?;
        }
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?;
    let w_mbs = r.ue()? + 1;
    let h_map = r.ue()? + 1;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?;
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.bit()? == 1 {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let (sub_w, sub_h) = match chroma_format_idc {
        0 | 3 => (1, 1),
        2 => (2, 1),
        _ => (2, 2),
    };
    let crop_x = sub_w;
    let crop_y = sub_h * (2 - frame_mbs_only);
    let w = (w_mbs * 16).checked_sub((cl + cr) * crop_x)?;
    let h = ((2 - frame_mbs_only) * h_map * 16).checked_sub((ct + cb) * crop_y)?;
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPS/PPS of a 320x240 High profile stream made by libx264.
    const RECORD: &[u8] = &[
        0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41,
        0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99,
        0x60, 0x01, 0x00, 0x06, 0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0,
    ];

    #[test]
    fn parses_record_and_dimensions() {
        let c = AvcConfig::parse(RECORD).unwrap();
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.sps.len(), 1);
        assert_eq!(c.pps.len(), 1);
        assert_eq!(c.dimensions(), Some((320, 240)));
    }

    #[test]
    fn iterates_nal_units() {
        let s = [0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x06, 0, 0, 0, 9];
        let v: Vec<_> = nal_units(&s, 4).collect();
        assert_eq!(v, vec![&[0x65, 1][..], &[0x06][..]]);
    }

    #[test]
    fn rejects_truncated_record() {
        assert!(AvcConfig::parse(&RECORD[..20]).is_err());
    }
}
