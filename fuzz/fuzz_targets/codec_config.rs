//! Decoder configuration records (AVC, HEVC) and AudioSpecificConfig.
#![no_main]
use libfuzzer_sys::fuzz_target;
use reel::media::aac::AacConfig;
use reel::media::avc::{AvcConfig, HevcConfig};

fuzz_target!(|data: &[u8]| {
    let _ = AvcConfig::parse(data);
    let _ = HevcConfig::parse(data);
    let _ = AacConfig::parse(data);
});
