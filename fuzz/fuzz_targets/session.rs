//! A whole RTMP server session (handshake, chunk streams, control messages, AMF0 commands,
//! media parsing) on arbitrary bytes, fed in pieces as a socket would deliver them.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use reel::ingest::{ServerSession, SessionEvent};

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else { return };
    let mut s = ServerSession::new();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    // A valid simple handshake first, so the fuzzer's bytes reach the chunk layer.
    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(0u8, 1536));
    buf.extend_from_slice(&c0c1);
    if s.feed(&mut buf, &mut events).is_err() {
        return;
    }
    buf.extend_from_slice(&[0u8; 1536]);
    for piece in rest.chunks(usize::from(step).max(1)) {
        buf.extend_from_slice(piece);
        let r = s.feed(&mut buf, &mut events);
        for e in events.drain(..) {
            if matches!(e, SessionEvent::PublishRequested(_)) {
                s.accept_publish();
            }
        }
        while s.take_output().is_some() {}
        if r.is_err() {
            return;
        }
    }
});
