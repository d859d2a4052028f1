//! RTMP handshake, server side, sans-IO.
//!
//! ```text
//! client                         server
//!   C0 (1: version 3) + C1 (1536)  ──▶
//!                                  ◀── S0 + S1 + S2 (1 + 1536 + 1536)
//!   C2 (1536)                      ──▶   done; what follows is the chunk stream
//! ```
//!
//! Two flavours are answered:
//! - simple (RTMP 1.0 spec): S1 = time, zero, random; S2 = echo of C1.
//! - digest (Flash Player 9+ era, what FFmpeg, librtmp/OBS and Flash send): C1 carries an
//!   HMAC-SHA256 digest keyed with the Flash Player key, placed by one of two schemas. The server
//!   answers with an S1 digest keyed with the Flash Media Server key (same schema) and an S2
//!   whose last 32 bytes sign the rest with a key derived from the client's digest. Clients
//!   that use this handshake reject a server that answers with a plain echo.
//!
//! A C1 without a valid digest falls back to the simple handshake. C2 is read and ignored:
//! clients disagree too much on its contents for a check to be useful.

use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Size of C1, C2, S1 and S2.
pub const HANDSHAKE_SIZE: usize = 1536;
/// The only RTMP version served (6 would be RTMPE, encrypted, not supported).
pub const RTMP_VERSION: u8 = 3;
const DIGEST_LEN: usize = 32;

/// Constant tail shared by the Flash Player and Flash Media Server keys.
const KEY_TAIL: [u8; 32] = [
    0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57, 0x6E, 0xEC, 0x5D,
    0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];
/// The 30-byte text part of the client key; C1 digests are keyed with it alone.
const FP_KEY_TEXT: &[u8; 30] = b"Genuine Adobe Flash Player 001";
/// The 36-byte text part of the server key; S1 digests are keyed with it alone.
const FMS_KEY_TEXT: &[u8; 36] = b"Genuine Adobe Flash Media Server 001";
/// Version advertised in S1 bytes 4..8 of a digest handshake (what FMS-compatible servers send).
const SERVER_VERSION: [u8; 4] = [0x0D, 0x0E, 0x0A, 0x0D];

/// The full 68-byte Flash Media Server key (text + constant tail), keying the S2 signature key.
fn fms_full_key() -> [u8; 68] {
    let mut k = [0u8; 68];
    k[..36].copy_from_slice(FMS_KEY_TEXT);
    k[36..].copy_from_slice(&KEY_TAIL);
    k
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("client asked for RTMP version {0} in C0; only version 3 (plain RTMP) is supported")]
    UnsupportedVersion(u8),
}

/// Which handshake the client used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeKind {
    Simple,
    /// Digest handshake; `schema` 0 puts the digest block at C1 bytes 8..772, schema 1 at 772..1536.
    Digest {
        schema: u8,
    },
}

/// Result of [`ServerHandshake::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// Feed more bytes. Anything written to `out` meanwhile must still be sent.
    NeedMore,
    /// Handshake complete: whatever is left in the input buffer is chunk stream data.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    WaitC0C1,
    WaitC2,
    Done,
}

/// Server side of the handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    stage: Stage,
    kind: Option<HandshakeKind>,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    pub fn new() -> Self {
        Self { stage: Stage::WaitC0C1, kind: None }
    }

    /// The handshake flavour, once C1 has been read.
    pub fn kind(&self) -> Option<HandshakeKind> {
        self.kind
    }

    /// Consumes handshake bytes from `input` (incomplete parts are left in it) and appends
    /// S0+S1+S2 to `out` once C0+C1 are complete.
    pub fn process(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<HandshakeStatus, HandshakeError> {
        loop {
            match self.stage {
                Stage::WaitC0C1 => {
                    // Check C0 as soon as it arrives: a non-RTMP peer fails fast.
                    match input.first() {
                        None => return Ok(HandshakeStatus::NeedMore),
                        Some(&v) if v != RTMP_VERSION => return Err(HandshakeError::UnsupportedVersion(v)),
                        Some(_) => {}
                    }
                    if input.len() < 1 + HANDSHAKE_SIZE {
                        return Ok(HandshakeStatus::NeedMore);
                    }
                    input.advance(1);
                    let c1 = input.split_to(HANDSHAKE_SIZE);
                    out.reserve(1 + 2 * HANDSHAKE_SIZE);
                    out.put_u8(RTMP_VERSION);
                    let kind = match find_client_digest(&c1) {
                        Some((schema, digest)) => {
                            out.extend_from_slice(&digest_s1(schema));
                            out.extend_from_slice(&digest_s2(&digest));
                            HandshakeKind::Digest { schema }
                        }
                        None => {
                            out.extend_from_slice(&simple_s1());
                            out.extend_from_slice(&c1);
                            HandshakeKind::Simple
                        }
                    };
                    self.kind = Some(kind);
                    self.stage = Stage::WaitC2;
                }
                Stage::WaitC2 => {
                    if input.len() < HANDSHAKE_SIZE {
                        return Ok(HandshakeStatus::NeedMore);
                    }
                    input.advance(HANDSHAKE_SIZE);
                    self.stage = Stage::Done;
                }
                Stage::Done => return Ok(HandshakeStatus::Done),
            }
        }
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Offset of the 32-byte digest inside a 1536-byte C1/S1 for a schema: the four bytes at the
/// start of the digest block, summed, modulo 728, past those four bytes.
pub(crate) fn digest_offset(packet: &[u8], schema: u8) -> usize {
    let base = if schema == 0 { 8 } else { 772 };
    let sum: usize = packet[base..base + 4].iter().map(|&b| usize::from(b)).sum();
    base + 4 + sum % 728
}

/// HMAC of a packet with the digest bytes at `offset` left out.
pub(crate) fn packet_digest(packet: &[u8], offset: usize, key: &[u8]) -> [u8; DIGEST_LEN] {
    hmac_sha256(key, &[&packet[..offset], &packet[offset + DIGEST_LEN..]])
}

/// The schema and digest of a C1 carrying a valid Flash Player digest.
fn find_client_digest(c1: &[u8]) -> Option<(u8, [u8; DIGEST_LEN])> {
    for schema in [0u8, 1] {
        let off = digest_offset(c1, schema);
        let expected = packet_digest(c1, off, FP_KEY_TEXT);
        if c1[off..off + DIGEST_LEN] == expected {
            return Some((schema, expected));
        }
    }
    None
}

fn random_packet() -> Vec<u8> {
    let mut p = vec![0u8; HANDSHAKE_SIZE];
    fastrand::fill(&mut p);
    p
}

/// Simple S1: time 0, four zero bytes, random.
fn simple_s1() -> Vec<u8> {
    let mut s1 = random_packet();
    s1[..8].fill(0);
    s1
}

/// Digest S1: time 0, server version, random, with an FMS-keyed digest placed by `schema`
/// (the client's own schema, which is where every client looks first).
fn digest_s1(schema: u8) -> Vec<u8> {
    let mut s1 = random_packet();
    s1[..4].fill(0);
    s1[4..8].copy_from_slice(&SERVER_VERSION);
    let off = digest_offset(&s1, schema);
    let d = packet_digest(&s1, off, FMS_KEY_TEXT);
    s1[off..off + DIGEST_LEN].copy_from_slice(&d);
    s1
}

/// Digest S2: random, its last 32 bytes = HMAC(key = HMAC(full FMS key, C1 digest), S2[..1504]).
fn digest_s2(c1_digest: &[u8; DIGEST_LEN]) -> Vec<u8> {
    let mut s2 = random_packet();
    let key = hmac_sha256(&fms_full_key(), &[c1_digest]);
    let split = HANDSHAKE_SIZE - DIGEST_LEN;
    let sig = hmac_sha256(&key, &[&s2[..split]]);
    s2[split..].copy_from_slice(&sig);
    s2
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A C1 as a Flash-era client builds it: time, client version, random, a digest keyed with
    /// the Flash Player key at the schema's position.
    pub(crate) fn digest_c1(schema: u8) -> Vec<u8> {
        let mut c1: Vec<u8> = (0..HANDSHAKE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
        c1[..4].copy_from_slice(&1234u32.to_be_bytes());
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        let off = digest_offset(&c1, schema);
        let d = packet_digest(&c1, off, FP_KEY_TEXT);
        c1[off..off + DIGEST_LEN].copy_from_slice(&d);
        c1
    }

    pub(crate) fn simple_c1() -> Vec<u8> {
        let mut c1: Vec<u8> = (0..HANDSHAKE_SIZE).map(|i| (i * 13 + 1) as u8).collect();
        c1[..8].fill(0);
        c1
    }

    fn run(input: &[u8]) -> (ServerHandshake, BytesMut, BytesMut, HandshakeStatus) {
        let mut hs = ServerHandshake::new();
        let mut buf = BytesMut::from(input);
        let mut out = BytesMut::new();
        let st = hs.process(&mut buf, &mut out).unwrap();
        (hs, buf, out, st)
    }

    fn check_digest_reply(c1: &[u8], schema: u8, out: &[u8]) {
        assert_eq!(out.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(out[0], 3);
        let s1 = &out[1..1 + HANDSHAKE_SIZE];
        let s2 = &out[1 + HANDSHAKE_SIZE..];
        assert_eq!(&s1[4..8], &SERVER_VERSION);
        // S1 digest verifies with the 36-byte FMS key at the client's schema.
        let off = digest_offset(s1, schema);
        assert_eq!(&s1[off..off + 32], &packet_digest(s1, off, FMS_KEY_TEXT));
        // S2 signature: keyed with HMAC(full FMS key, C1 digest).
        let c1_off = digest_offset(c1, schema);
        let key = hmac_sha256(&fms_full_key(), &[&c1[c1_off..c1_off + 32]]);
        assert_eq!(&s2[1504..], &hmac_sha256(&key, &[&s2[..1504]]));
    }

    #[test]
    fn keys_are_the_published_constants() {
        let k = fms_full_key();
        assert_eq!(k.len(), 68);
        assert_eq!(&k[..36], b"Genuine Adobe Flash Media Server 001");
        assert_eq!(k[36], 0xF0);
        assert_eq!(k[67], 0xAE);
        assert_eq!(FP_KEY_TEXT.len(), 30);
    }

    #[test]
    fn simple_handshake_echoes_c1() {
        let c1 = simple_c1();
        let mut input = vec![3u8];
        input.extend_from_slice(&c1);
        let (mut hs, mut buf, out, st) = run(&input);
        assert_eq!(st, HandshakeStatus::NeedMore);
        assert_eq!(hs.kind(), Some(HandshakeKind::Simple));
        assert_eq!(out.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(out[0], 3);
        assert_eq!(&out[1..9], &[0; 8]);
        assert_eq!(&out[1 + HANDSHAKE_SIZE..], &c1[..]);
        assert!(buf.is_empty());
        // C2 plus the first chunk-stream bytes in the same read.
        buf.extend_from_slice(&[0u8; HANDSHAKE_SIZE]);
        buf.extend_from_slice(&[0x03, 0xAA]);
        let mut out = BytesMut::new();
        assert_eq!(hs.process(&mut buf, &mut out).unwrap(), HandshakeStatus::Done);
        assert!(out.is_empty());
        assert_eq!(&buf[..], &[0x03, 0xAA]);
    }

    #[test]
    fn digest_handshake_schema_0() {
        let c1 = digest_c1(0);
        let mut input = vec![3u8];
        input.extend_from_slice(&c1);
        let (hs, _, out, _) = run(&input);
        assert_eq!(hs.kind(), Some(HandshakeKind::Digest { schema: 0 }));
        check_digest_reply(&c1, 0, &out);
    }

    #[test]
    fn digest_handshake_schema_1() {
        let c1 = digest_c1(1);
        let mut input = vec![3u8];
        input.extend_from_slice(&c1);
        let (hs, _, out, _) = run(&input);
        assert_eq!(hs.kind(), Some(HandshakeKind::Digest { schema: 1 }));
        check_digest_reply(&c1, 1, &out);
    }

    #[test]
    fn corrupted_digest_falls_back_to_simple() {
        let mut c1 = digest_c1(0);
        let off = digest_offset(&c1, 0);
        c1[off] ^= 1;
        let mut input = vec![3u8];
        input.extend_from_slice(&c1);
        let (hs, _, out, _) = run(&input);
        assert_eq!(hs.kind(), Some(HandshakeKind::Simple));
        assert_eq!(&out[1 + HANDSHAKE_SIZE..], &c1[..]);
    }

    #[test]
    fn byte_by_byte_feeding() {
        let c1 = digest_c1(1);
        let mut input = vec![3u8];
        input.extend_from_slice(&c1);
        input.extend_from_slice(&[7u8; HANDSHAKE_SIZE]);
        input.push(0x42);
        let mut hs = ServerHandshake::new();
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        let mut done_at = None;
        for (i, b) in input.iter().enumerate() {
            buf.put_u8(*b);
            if hs.process(&mut buf, &mut out).unwrap() == HandshakeStatus::Done {
                done_at = Some(i);
                break;
            }
            if i < HANDSHAKE_SIZE {
                assert!(out.is_empty(), "replied before C1 was complete");
            }
        }
        assert_eq!(done_at, Some(1 + 2 * HANDSHAKE_SIZE - 1));
        assert!(buf.is_empty());
        check_digest_reply(&c1, 1, &out);
    }

    #[test]
    fn rejects_other_versions_on_first_byte() {
        for v in [0u8, 6, 0x16, b'G'] {
            let mut hs = ServerHandshake::new();
            let mut buf = BytesMut::from(&[v][..]);
            let mut out = BytesMut::new();
            assert_eq!(hs.process(&mut buf, &mut out), Err(HandshakeError::UnsupportedVersion(v)));
        }
    }

    #[test]
    fn empty_input_needs_more() {
        let (_, _, out, st) = run(&[]);
        assert_eq!(st, HandshakeStatus::NeedMore);
        assert!(out.is_empty());
    }
}
