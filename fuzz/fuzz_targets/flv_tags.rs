//! FLV tag bodies (legacy and Enhanced RTMP) and whole FLV files on arbitrary bytes.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use reel::media::flv::{parse_tag, FileReader};

fuzz_target!(|data: &[u8]| {
    if let Some((&kind, body)) = data.split_first() {
        let _ = parse_tag(8 + kind % 11, 0, Bytes::copy_from_slice(body));
    }
    if let Ok(mut r) = FileReader::new(Bytes::copy_from_slice(data)) {
        while let Ok(Some(_)) = r.next_frame() {}
    }
});
