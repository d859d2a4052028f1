//! Recovery of a fragmented MP4 a crash left behind, on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(rw)) = reel::mux::mp4::recover_from(std::io::Cursor::new(data)) {
        assert!(rw.ranges.iter().all(|r| r.start <= r.end && r.end <= data.len() as u64));
    }
});
