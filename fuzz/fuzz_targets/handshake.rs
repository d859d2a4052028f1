//! The RTMP handshake on arbitrary bytes, fed in pieces.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use reel::ingest::ServerHandshake;

fuzz_target!(|data: &[u8]| {
    let mut h = ServerHandshake::new();
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    for piece in data.chunks(step) {
        input.extend_from_slice(piece);
        if h.process(&mut input, &mut out).is_err() {
            return;
        }
    }
});
