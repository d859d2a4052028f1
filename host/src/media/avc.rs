//! H.264/H.265 decoder configuration records (ISO/IEC 14496-15) and NAL unit helpers.

use super::bits::BitReader;
use super::MediaError;

/// H.265 NAL unit type of a sequence parameter set.
const HEVC_NAL_SPS: u8 = 33;

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
        let nsps = usize::from(b[pos] & 0x1f);
        pos += 1;
        let sps = read_units(b, &mut pos, nsps).ok_or_else(|| bad("truncated parameter set"))?;
        if pos >= b.len() {
            return Err(bad("missing PPS count"));
        }
        let npps = usize::from(b[pos]);
        pos += 1;
        let pps = read_units(b, &mut pos, npps).ok_or_else(|| bad("truncated parameter set"))?;
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
            let units = read_units(b, &mut pos, n).ok_or_else(|| bad("truncated unit"))?;
            arrays.push((ty, units));
        }
        Ok(Self { nal_length_size, arrays })
    }

    /// Picture size from the first SPS that parses.
    pub fn dimensions(&self) -> Option<(u32, u32)> {
        self.arrays
            .iter()
            .filter(|(t, _)| *t == HEVC_NAL_SPS)
            .flat_map(|(_, u)| u.first())
            .find_map(|s| hevc_sps_dimensions(s))
    }
}

/// Reads `count` NAL units, each behind a 16-bit length, from `b` at `*pos` (as decoder
/// configuration records store parameter sets); `None` if `b` ends first.
fn read_units(b: &[u8], pos: &mut usize, count: usize) -> Option<Vec<Vec<u8>>> {
    let mut units = Vec::with_capacity(count);
    for _ in 0..count {
        let n = usize::from(u16::from_be_bytes(b.get(*pos..*pos + 2)?.try_into().ok()?));
        units.push(b.get(*pos + 2..*pos + 2 + n)?.to_vec());
        *pos += 2 + n;
    }
    Some(units)
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

/// Width and height from an H.264 SPS NAL unit (with its 1-byte header).
pub fn sps_dimensions(sps: &[u8]) -> Option<(u32, u32)> {
    let mut r = BitReader::rbsp(sps.get(1..)?);
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
                            // delta_scale is -128..=127 in a valid SPS; any value must not overflow.
                            next = (i64::from(last) + i64::from(r.se()?)).rem_euclid(256) as i32;
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
    let w_mbs = r.ue()?.checked_add(1)?;
    let h_map = r.ue()?.checked_add(1)?;
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
    let (sub_w, sub_h): (u64, u64) = match chroma_format_idc {
        0 | 3 => (1, 1),
        2 => (2, 1),
        _ => (2, 2),
    };
    // In 64 bits: a hostile SPS may send any Exp-Golomb values, and they must not overflow.
    let crop_x = sub_w;
    let crop_y = sub_h * u64::from(2 - frame_mbs_only);
    let w = (u64::from(w_mbs) * 16).checked_sub((u64::from(cl) + u64::from(cr)) * crop_x)?;
    let h = (u64::from(2 - frame_mbs_only) * u64::from(h_map) * 16)
        .checked_sub((u64::from(ct) + u64::from(cb)) * crop_y)?;
    Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
}

/// Picture size from an H.265 SPS NAL unit (with its 2-byte header).
pub fn hevc_sps_dimensions(sps: &[u8]) -> Option<(u32, u32)> {
    let mut r = BitReader::rbsp(sps.get(2..)?);
    r.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.bits(3)?;
    r.skip(1)?;
    // profile_tier_level(1, max_sub_layers_minus1)
    r.skip(88)?; // general profile space .. general constraint flags
    r.skip(8)?; // general_level_idc
    let mut present = [(false, false); 8];
    for p in present.iter_mut().take(max_sub_layers_minus1 as usize) {
        *p = (r.bit()? == 1, r.bit()? == 1);
    }
    if max_sub_layers_minus1 > 0 {
        r.skip(2 * (8 - max_sub_layers_minus1))?;
    }
    for &(profile, level) in present.iter().take(max_sub_layers_minus1 as usize) {
        if profile {
            r.skip(88)?;
        }
        if level {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = r.ue()?;
    if chroma_format_idc == 3 {
        r.skip(1)?;
    }
    let width = r.ue()?;
    let height = r.ue()?;
    let (sub_w, sub_h) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let (mut w, mut h) = (width, height);
    if r.bit()? == 1 {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        w = w.checked_sub(left.checked_add(right)?.checked_mul(sub_w)?)?;
        h = h.checked_sub(top.checked_add(bottom)?.checked_mul(sub_h)?)?;
    }
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPS/PPS of a 320x240 High profile stream made by libx264.
    const RECORD: &[u8] = &[
        0x01, 0x64, 0x00, 0x0d, 0xff, 0xe1, 0x00, 0x19, 0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01,
        0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0x99, 0x60, 0x01, 0x00, 0x06,
        0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0,
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

    /// Bits, most significant first, for hand-made parameter sets.
    #[derive(Default)]
    struct Bits(Vec<bool>);

    impl Bits {
        fn put(&mut self, v: u64, n: u32) -> &mut Self {
            self.0.extend((0..n).rev().map(|i| (v >> i) & 1 == 1));
            self
        }
        fn ue(&mut self, v: u64) -> &mut Self {
            let n = 64 - (v + 1).leading_zeros();
            self.put(0, n - 1).put(v + 1, n)
        }
        fn bytes(&self) -> Vec<u8> {
            let mut b: Vec<u8> =
                self.0.chunks(8).map(|c| c.iter().fold(0, |a, &x| (a << 1) | u8::from(x)) << (8 - c.len())).collect();
            b.push(0x80);
            b
        }
    }

    /// A baseline SPS of `w_mbs` x `h_mbs` macroblocks with the given cropping.
    fn sps(w_mbs: u64, h_mbs: u64, crop: [u64; 4]) -> Vec<u8> {
        let mut b = Bits::default();
        b.put(0x67, 8).put(66, 8).put(0, 16); // NAL header, profile, constraints + level
        b.ue(0).ue(0).ue(2).ue(1).put(0, 1); // sps id, log2_max_frame_num, poc type 2, refs, gaps
        b.ue(w_mbs - 1).ue(h_mbs - 1).put(1, 1).put(1, 1).put(1, 1); // size, frame_mbs_only, 8x8, cropping
        for c in crop {
            b.ue(c);
        }
        b.bytes()
    }

    #[test]
    fn sps_cropping_is_applied() {
        // 1920x1088 in macroblocks, cropped by 4 lines (2 units of 2) to 1080.
        assert_eq!(sps_dimensions(&sps(120, 68, [0, 0, 0, 4])), Some((1920, 1080)));
    }

    #[test]
    fn sps_with_huge_values_is_refused_without_overflow() {
        // Found by fuzzing (`reel remux` on arbitrary bytes): crop offsets near 2^31 overflowed
        // the width arithmetic.
        assert_eq!(sps_dimensions(&sps(20, 15, [1 << 31, 1 << 31, 0, 0])), None);
        assert_eq!(sps_dimensions(&sps(u64::from(u32::MAX), 15, [0, 0, 0, 0])), None);
        assert_eq!(sps_dimensions(&sps(20, 15, [0, 0, u64::from(u32::MAX) - 1, 0])), None);
    }

    #[test]
    fn rejects_truncated_record() {
        assert!(AvcConfig::parse(&RECORD[..20]).is_err());
    }
}
