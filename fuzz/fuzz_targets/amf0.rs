//! AMF0 decoding (nesting, strict arrays, long strings) on arbitrary bytes, and re-encoding
//! what decoded.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = reel::media::amf0::decode_all(data) {
        let mut out = Vec::new();
        for v in &values {
            reel::media::amf0::encode(v, &mut out);
        }
    }
});
