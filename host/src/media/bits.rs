//! MSB-first bit reader for codec headers: fixed-width fields, Exp-Golomb codes (H.264/H.265
//! parameter sets) and AV1 `uvlc()`.

/// Reads bits from the front of a byte slice. Every read returns `None` past the end.
///
/// [`BitReader::rbsp`] reads an H.264/H.265 NAL unit payload, dropping each emulation
/// prevention byte (the `03` of `00 00 03`) on the fly; [`BitReader::raw`] reads bytes as they are.
#[derive(Clone, Debug)]
pub struct BitReader<'a> {
    data: &'a [u8],
    byte: usize,
    bit: u8,
    /// Zero bytes just read, for spotting emulation prevention.
    zeros: u8,
    epb: bool,
}

impl<'a> BitReader<'a> {
    /// A reader over an RBSP: emulation prevention bytes are skipped.
    pub fn rbsp(data: &'a [u8]) -> Self {
        Self { data, byte: 0, bit: 0, zeros: 0, epb: true }
    }

    /// A reader over plain bytes (AV1 OBUs and the like).
    pub fn raw(data: &'a [u8]) -> Self {
        Self { data, byte: 0, bit: 0, zeros: 0, epb: false }
    }

    /// One bit.
    pub fn bit(&mut self) -> Option<u32> {
        if self.bit == 0 && self.epb && self.zeros >= 2 && self.data.get(self.byte) == Some(&3) {
            self.byte += 1;
            self.zeros = 0;
        }
        let b = *self.data.get(self.byte)?;
        let v = (b >> (7 - self.bit)) & 1;
        self.bit += 1;
        if self.bit == 8 {
            self.bit = 0;
            self.byte += 1;
            self.zeros = if b == 0 { self.zeros.saturating_add(1) } else { 0 };
        }
        Some(u32::from(v))
    }

    /// An `n`-bit unsigned field; `None` if it does not fit in 32 bits.
    pub fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        u32::try_from(v).ok()
    }

    /// Skips `n` bits.
    pub fn skip(&mut self, n: u32) -> Option<()> {
        for _ in 0..n {
            self.bit()?;
        }
        Some(())
    }

    /// Unsigned Exp-Golomb `ue(v)`; `None` for a code longer than 32 bits.
    pub fn ue(&mut self) -> Option<u32> {
        let zeros = self.zero_run()??;
        self.golomb_suffix(zeros)
    }

    /// Signed Exp-Golomb `se(v)`.
    pub fn se(&mut self) -> Option<i32> {
        let k = i64::from(self.ue()?);
        // Out of i32 range only in a corrupt stream: refused rather than wrapped.
        i32::try_from(if k & 1 == 1 { (k + 1) / 2 } else { -(k / 2) }).ok()
    }

    /// AV1 `uvlc()`: like `ue(v)`, but 32 or more leading zeros mean `u32::MAX`.
    pub fn uvlc(&mut self) -> Option<u32> {
        match self.zero_run()? {
            Some(zeros) => self.golomb_suffix(zeros),
            None => Some(u32::MAX),
        }
    }

    /// The zero bits before the next 1 (consumed with them): `Some(None)` once 32 zeros are read.
    fn zero_run(&mut self) -> Option<Option<u32>> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros == 32 {
                return Some(None);
            }
        }
        Some(Some(zeros))
    }

    /// The value of an Exp-Golomb code with `zeros` (at most 31) leading zeros.
    fn golomb_suffix(&mut self, zeros: u32) -> Option<u32> {
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_codes() {
        // 1 | 010 | 011 | 00100 | 00101 -> ue 0, 1, 2, 3; se of 4 is -2.
        let mut r = BitReader::raw(&[0b1010_0110, 0b0100_0010, 0b1000_0000]);
        assert_eq!((r.ue(), r.ue(), r.ue(), r.ue(), r.se()), (Some(0), Some(1), Some(2), Some(3), Some(-2)));
    }

    #[test]
    fn rbsp_skips_emulation_prevention_bytes() {
        let data = [0x00, 0x00, 0x03, 0x01];
        let mut r = BitReader::rbsp(&data);
        assert_eq!(r.bits(24), Some(1));
        assert_eq!(r.bit(), None);
        let mut r = BitReader::raw(&data);
        assert_eq!(r.bits(32), Some(0x0000_0301));
    }
}
