//! RTMP chunk stream: a sans-IO reader shaped like tokio-util's `Decoder`, and a writer.
//!
//! Zero copy: a message that arrives in a single chunk is returned as a `Bytes` split off the
//! input `BytesMut` (the memory the socket read into). A message spread over several chunks
//! that are all in the input, one after another, is joined there: each continuation moves
//! back over the chunk headers before it. Only a message still arriving (or interleaved with
//! another chunk stream) is copied, once, into a per-chunk-stream reassembly buffer.
//!
//! Protocol-level messages that change how chunks are read are applied by the reader itself:
//! Set Chunk Size (type 1) and Abort Message (type 2). They are still returned, for logging.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Chunk size both sides use until a Set Chunk Size message says otherwise.
pub const DEFAULT_CHUNK_SIZE: usize = 128;
/// Largest chunk size honoured. Message lengths are 24-bit, so a bigger chunk can never be
/// filled: larger announced values (up to the protocol's 2^31-1) are clamped to this.
pub const MAX_CHUNK_SIZE: usize = 0xFF_FFFF;
/// Largest message accepted (DoS limit: bounds one reassembly buffer and how much input a
/// single chunk makes us wait for). A 4K keyframe at high bitrate is a few MB.
pub const MAX_MESSAGE_SIZE: usize = 8 << 20;
/// Most chunk streams one connection may open (DoS limit: per-stream state). Encoders use 3-6.
pub const MAX_CHUNK_STREAMS: usize = 64;
/// Most bytes declared by messages being reassembled at once, over all chunk streams (DoS
/// limit: a peer may not park a big message on every chunk stream).
pub const MAX_PARTIAL_BYTES: usize = 32 << 20;
/// Reassembly buffers start at most this big and grow as chunks arrive, so a header that
/// announces a large message costs memory only once its bytes are actually sent.
const INITIAL_REASSEMBLY_CAPACITY: usize = 64 << 10;

pub const MSG_SET_CHUNK_SIZE: u8 = 1;
pub const MSG_ABORT: u8 = 2;
pub const MSG_ACK: u8 = 3;
pub const MSG_USER_CONTROL: u8 = 4;
pub const MSG_WINDOW_ACK_SIZE: u8 = 5;
pub const MSG_SET_PEER_BANDWIDTH: u8 = 6;
pub const MSG_AUDIO: u8 = 8;
pub const MSG_VIDEO: u8 = 9;
pub const MSG_DATA_AMF3: u8 = 15;
pub const MSG_COMMAND_AMF3: u8 = 17;
pub const MSG_DATA_AMF0: u8 = 18;
pub const MSG_COMMAND_AMF0: u8 = 20;
pub const MSG_AGGREGATE: u8 = 22;

/// A 3-byte timestamp field with this value means a 4-byte extended timestamp follows.
const EXTENDED_TS_MARKER: u32 = 0xFF_FFFF;

/// One reassembled RTMP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    /// Chunk stream it arrived on.
    pub csid: u32,
    /// Absolute timestamp in milliseconds (32-bit, wraps).
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk stream {csid}: format {fmt} header without a previous type 0 header to inherit from")]
    NoPreviousHeader { csid: u32, fmt: u8 },
    #[error("chunk stream {csid}: format {fmt} header while a message is still being reassembled (expected format 3)")]
    InterruptedMessage { csid: u32, fmt: u8 },
    #[error("chunk stream {csid}: message of {length} bytes exceeds the {max}-byte limit")]
    MessageTooLarge { csid: u32, length: usize, max: usize },
    #[error("more than {max} chunk streams opened on one connection")]
    TooManyChunkStreams { max: usize },
    #[error("messages being reassembled would hold {bytes} bytes, over the {max}-byte limit")]
    TooMuchPartialData { bytes: usize, max: usize },
    #[error(
        "a message of {length} bytes does not fit the server's reassembly budget ({max} bytes over all connections)"
    )]
    OverBudget { length: usize, max: usize },
    #[error("invalid chunk size {0} in Set Chunk Size (must be 1..=2147483647)")]
    InvalidChunkSize(u32),
    #[error("protocol control message type {type_id} has {len} payload bytes, needs {need}")]
    ShortControlMessage { type_id: u8, len: usize, need: usize },
}

/// Per chunk stream state: the last header, for formats 1-3 to inherit from.
#[derive(Debug, Default)]
struct ChunkStream {
    csid: u32,
    /// Absolute timestamp of the current (or last) message.
    timestamp: u32,
    /// Last timestamp field read: absolute for format 0, a delta for formats 1 and 2.
    ts_field: u32,
    /// The last format 0-2 header used an extended timestamp, so format 3 chunks carry one too.
    extended: bool,
    length: usize,
    type_id: u8,
    stream_id: u32,
    /// Message being reassembled.
    partial: Option<BytesMut>,
}

/// A parsed chunk header, not yet applied to the chunk stream state.
struct Header {
    fmt: u8,
    csid: u32,
    len: usize,
    ts_field: Option<u32>,
    length: Option<usize>,
    type_id: Option<u8>,
    stream_id: Option<u32>,
    extended: bool,
}

fn be24(b: &[u8]) -> u32 {
    (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Bytes declared by messages being reassembled, over every connection sharing it (DoS limit
/// across connections: [`MAX_PARTIAL_BYTES`] bounds one connection, this bounds them all).
#[derive(Debug)]
pub struct ReassemblyBudget {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl ReassemblyBudget {
    pub fn new(max: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { used: std::sync::atomic::AtomicUsize::new(0), max })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn reserve(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        self.used.fetch_update(AcqRel, Acquire, |u| u.checked_add(n).filter(|t| *t <= self.max)).is_ok()
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Decodes chunks into messages.
#[derive(Debug)]
pub struct ChunkReader {
    chunk_size: usize,
    streams: Vec<ChunkStream>,
    partial_bytes: usize,
    budget: Option<std::sync::Arc<ReassemblyBudget>>,
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.partial_bytes);
        }
    }
}

impl Default for ChunkReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkReader {
    pub fn new() -> Self {
        Self::with_budget(None)
    }

    /// A reader whose messages being reassembled also count against `budget`.
    pub fn with_budget(budget: Option<std::sync::Arc<ReassemblyBudget>>) -> Self {
        Self { chunk_size: DEFAULT_CHUNK_SIZE, streams: Vec::new(), partial_bytes: 0, budget }
    }

    /// The peer's current chunk size.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Reads the next complete message. `Ok(None)` means more bytes are needed; incomplete
    /// chunks stay in `buf`. An error means the stream is corrupt: stop reading it.
    pub fn read_message(&mut self, buf: &mut BytesMut) -> Result<Option<RawMessage>, ChunkError> {
        loop {
            let Some(header) = self.parse_header(buf)? else {
                return Ok(None);
            };
            match self.read_chunk(header, buf)? {
                ChunkResult::NeedMore => return Ok(None),
                ChunkResult::Partial => continue,
                ChunkResult::Message(m) => {
                    self.apply_control(&m)?;
                    return Ok(Some(m));
                }
            }
        }
    }

    /// Parses a chunk header at the start of `buf` without consuming anything.
    fn parse_header(&self, buf: &[u8]) -> Result<Option<Header>, ChunkError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fmt = b0 >> 6;
        let (csid, mut pos) = match b0 & 0x3f {
            0 => match buf.get(1) {
                Some(&b1) => (64 + u32::from(b1), 2),
                None => return Ok(None),
            },
            1 => match buf.get(1..3) {
                Some(b) => (64 + u32::from(b[0]) + (u32::from(b[1]) << 8), 3),
                None => return Ok(None),
            },
            n => (u32::from(n), 1),
        };
        let mh_len = [11, 7, 3, 0][usize::from(fmt)];
        let Some(mh) = buf.get(pos..pos + mh_len) else {
            return Ok(None);
        };
        let prev = self.streams.iter().find(|s| s.csid == csid);
        match prev {
            None if fmt >= 2 => return Err(ChunkError::NoPreviousHeader { csid, fmt }),
            Some(s) if s.partial.is_some() && fmt != 3 => return Err(ChunkError::InterruptedMessage { csid, fmt }),
            _ => {}
        }
        let mut h =
            Header { fmt, csid, len: 0, ts_field: None, length: None, type_id: None, stream_id: None, extended: false };
        if fmt <= 2 {
            h.ts_field = Some(be24(mh));
        }
        if fmt <= 1 {
            h.length = Some(be24(&mh[3..]) as usize);
            h.type_id = Some(mh[6]);
        }
        if fmt == 0 {
            h.stream_id = Some(u32::from_le_bytes([mh[7], mh[8], mh[9], mh[10]]));
        }
        pos += mh_len;
        h.extended = match h.ts_field {
            Some(t) => t == EXTENDED_TS_MARKER,
            // Format 3 repeats the extended timestamp when the header it inherits had one.
            None => prev.is_some_and(|s| s.extended),
        };
        if h.extended {
            let Some(ext) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            if fmt <= 2 {
                h.ts_field = Some(be32(ext));
            }
            // On format 3 the value repeats the inherited one; the inherited one is used.
            pos += 4;
        }
        h.len = pos;
        Ok(Some(h))
    }

    fn read_chunk(&mut self, h: Header, buf: &mut BytesMut) -> Result<ChunkResult, ChunkError> {
        let idx = self.streams.iter().position(|s| s.csid == h.csid);
        let (in_progress, received, prev_ts, length) = match idx {
            Some(i) => {
                let s = &self.streams[i];
                let received = s.partial.as_ref().map_or(0, BytesMut::len);
                (s.partial.is_some(), received, s.timestamp, h.length.unwrap_or(s.length))
            }
            None => (false, 0, 0, h.length.unwrap_or(0)),
        };
        if length > MAX_MESSAGE_SIZE {
            return Err(ChunkError::MessageTooLarge { csid: h.csid, length, max: MAX_MESSAGE_SIZE });
        }
        let chunk_len = (length - received).min(self.chunk_size);
        if buf.len() < h.len + chunk_len {
            return Ok(ChunkResult::NeedMore);
        }

        // The whole chunk is here: commit the header.
        let i = match idx {
            Some(i) => i,
            None => {
                if self.streams.len() >= MAX_CHUNK_STREAMS {
                    return Err(ChunkError::TooManyChunkStreams { max: MAX_CHUNK_STREAMS });
                }
                self.streams.push(ChunkStream { csid: h.csid, ..ChunkStream::default() });
                self.streams.len() - 1
            }
        };
        // A message whose every chunk is already in `buf` is joined where it lies.
        let span = if !in_progress && length > chunk_len {
            contiguous_span(&buf[h.len..], h.csid, h.extended, length, self.chunk_size)
        } else {
            None
        };
        if !in_progress && length > chunk_len && span.is_none() {
            let bytes = self.partial_bytes + length;
            if bytes > MAX_PARTIAL_BYTES {
                return Err(ChunkError::TooMuchPartialData { bytes, max: MAX_PARTIAL_BYTES });
            }
            if let Some(b) = &self.budget {
                if !b.reserve(length) {
                    return Err(ChunkError::OverBudget { length, max: b.max });
                }
            }
        }
        let s = &mut self.streams[i];
        if h.fmt <= 2 {
            s.extended = h.extended;
        }
        if let Some(t) = h.ts_field {
            s.ts_field = t;
        }
        if let Some(t) = h.type_id {
            s.type_id = t;
        }
        if let Some(sid) = h.stream_id {
            s.stream_id = sid;
        }
        s.length = length;
        if !in_progress {
            // FFmpeg and SRS agree that a format 3 header starting a new message adds the last
            // timestamp field again, even when that field came from a format 0 header.
            s.timestamp = if h.fmt == 0 { s.ts_field } else { prev_ts.wrapping_add(s.ts_field) };
        }
        buf.advance(h.len);

        if !in_progress && chunk_len == length {
            // Single-chunk message: zero copy.
            let payload = buf.split_to(chunk_len).freeze();
            return Ok(ChunkResult::Message(Self::message(s, payload)));
        }
        if let Some((span, header_len)) = span {
            let payload = join_in_place(buf, span, header_len, length, self.chunk_size);
            return Ok(ChunkResult::Message(Self::message(s, payload)));
        }
        if !in_progress {
            self.partial_bytes += length;
        }
        let partial = s.partial.get_or_insert_with(|| BytesMut::with_capacity(length.min(INITIAL_REASSEMBLY_CAPACITY)));
        partial.extend_from_slice(&buf[..chunk_len]);
        buf.advance(chunk_len);
        if partial.len() < length {
            return Ok(ChunkResult::Partial);
        }
        let payload = s.partial.take().map(BytesMut::freeze).unwrap_or_default();
        self.partial_bytes -= length;
        if let Some(b) = &self.budget {
            b.release(length);
        }
        Ok(ChunkResult::Message(Self::message(s, payload)))
    }

    fn message(s: &ChunkStream, payload: Bytes) -> RawMessage {
        RawMessage { csid: s.csid, timestamp: s.timestamp, type_id: s.type_id, stream_id: s.stream_id, payload }
    }

    fn apply_control(&mut self, m: &RawMessage) -> Result<(), ChunkError> {
        match m.type_id {
            MSG_SET_CHUNK_SIZE => {
                let v = control_u32(m)?;
                // The top bit is reserved and must be zero.
                if v == 0 || v > 0x7FFF_FFFF {
                    return Err(ChunkError::InvalidChunkSize(v));
                }
                self.chunk_size = (v as usize).min(MAX_CHUNK_SIZE);
            }
            MSG_ABORT => {
                let csid = control_u32(m)?;
                if let Some(s) = self.streams.iter_mut().find(|s| s.csid == csid) {
                    if s.partial.take().is_some() {
                        self.partial_bytes -= s.length;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The 4-byte big-endian value that starts a protocol control message.
pub(crate) fn control_u32(m: &RawMessage) -> Result<u32, ChunkError> {
    if m.payload.len() < 4 {
        return Err(short_control(m, 4));
    }
    Ok(be32(&m.payload))
}

/// The error for a control message with fewer than `need` payload bytes.
pub(crate) fn short_control(m: &RawMessage, need: usize) -> ChunkError {
    ChunkError::ShortControlMessage { type_id: m.type_id, len: m.payload.len(), need }
}

/// AMF3 data (15) and command (17) messages carry AMF0 after a leading 0 byte.
pub(crate) fn strip_amf3_prefix(payload: Bytes) -> Bytes {
    if payload.first() == Some(&0) {
        payload.slice(1..)
    } else {
        payload
    }
}

enum ChunkResult {
    NeedMore,
    /// A chunk of a multi-chunk message was consumed.
    Partial,
    Message(RawMessage),
}

/// Serializes messages into chunks: a format 0 chunk, then format 3 chunks.
#[derive(Debug)]
pub struct ChunkWriter {
    chunk_size: usize,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkWriter {
    pub fn new() -> Self {
        Self { chunk_size: DEFAULT_CHUNK_SIZE }
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Changes the outgoing chunk size. Write the Set Chunk Size message first (it still goes
    /// out at the old size), then call this. Clamped to `1..=MAX_CHUNK_SIZE`.
    pub fn set_chunk_size(&mut self, size: usize) {
        self.chunk_size = size.clamp(1, MAX_CHUNK_SIZE);
    }

    /// Appends `payload` as one message to `out`. Payloads are at most 16 MiB - 1 (24-bit
    /// length); this writer only sends the server's own small messages.
    pub fn write(&self, out: &mut BytesMut, csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) {
        debug_assert!(payload.len() <= 0xFF_FFFF, "RTMP message longer than 24 bits");
        let extended = timestamp >= EXTENDED_TS_MARKER;
        let chunks = payload.len().div_ceil(self.chunk_size).max(1);
        out.reserve(payload.len() + 16 + chunks * 8);
        let mut first = true;
        let mut rest = payload;
        loop {
            if first {
                put_basic_header(out, 0, csid);
                out.put_uint(u64::from(timestamp.min(EXTENDED_TS_MARKER)), 3);
                out.put_uint(payload.len() as u64 & 0xFF_FFFF, 3);
                out.put_u8(type_id);
                out.put_u32_le(stream_id);
            } else {
                put_basic_header(out, 3, csid);
            }
            if extended {
                out.put_u32(timestamp);
            }
            first = false;
            let n = rest.len().min(self.chunk_size);
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
        }
    }
}

/// Bytes a message spans in `buf` (which starts at its first chunk's payload) when all its
/// chunks are there, each continuation a format 3 header on the same chunk stream, and the
/// length of those headers; `None` when some have not arrived yet or another chunk stream
/// comes in between.
fn contiguous_span(buf: &[u8], csid: u32, extended: bool, length: usize, chunk_size: usize) -> Option<(usize, usize)> {
    let (basic, basic_len) = basic_header(3, csid);
    let header_len = basic_len + if extended { 4 } else { 0 };
    let (mut pos, mut joined) = (chunk_size, chunk_size);
    while joined < length {
        let n = (length - joined).min(chunk_size);
        if buf.get(pos..pos + basic_len)? != &basic[..basic_len] || buf.len() < pos + header_len + n {
            return None;
        }
        pos += header_len + n;
        joined += n;
    }
    Some((pos, header_len))
}

/// Splits off a message found by [`contiguous_span`]: each continuation's payload moves back
/// over the headers before it, in the block the socket read into. A move within memory the
/// read has just touched, where reassembly would allocate a buffer the size of the message
/// and copy all of it (and free it on the writer thread).
fn join_in_place(buf: &mut BytesMut, span: usize, header_len: usize, length: usize, chunk_size: usize) -> Bytes {
    let (mut src, mut dst) = (chunk_size, chunk_size);
    while dst < length {
        let n = (length - dst).min(chunk_size);
        src += header_len;
        buf.copy_within(src..src + n, dst);
        src += n;
        dst += n;
    }
    debug_assert_eq!(src, span);
    let payload = buf.split_to(length).freeze();
    buf.advance(span - length);
    payload
}

/// A chunk's basic header (format and chunk stream id) as bytes, and how many of them.
fn basic_header(fmt: u8, csid: u32) -> ([u8; 3], usize) {
    match csid {
        2..=63 => ([(fmt << 6) | csid as u8, 0, 0], 1),
        64..=319 => ([fmt << 6, (csid - 64) as u8, 0], 2),
        _ => {
            let c = csid.clamp(64, 65599) - 64;
            ([(fmt << 6) | 1, c as u8, (c >> 8) as u8], 3)
        }
    }
}

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let (b, n) = basic_header(fmt, csid);
    out.extend_from_slice(&b[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut ChunkReader, buf: &mut BytesMut) -> Vec<RawMessage> {
        let mut v = Vec::new();
        while let Some(m) = r.read_message(buf).unwrap() {
            v.push(m);
        }
        v
    }

    fn fmt0(csid: u8, ts: u32, len: usize, type_id: u8, sid: u32) -> Vec<u8> {
        let mut h = vec![csid];
        h.extend_from_slice(&ts.min(0xFF_FFFF).to_be_bytes()[1..]);
        h.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        h.push(type_id);
        h.extend_from_slice(&sid.to_le_bytes());
        if ts >= 0xFF_FFFF {
            h.extend_from_slice(&ts.to_be_bytes());
        }
        h
    }

    fn set_chunk_size(size: u32) -> Vec<u8> {
        let mut v = fmt0(2, 0, 4, MSG_SET_CHUNK_SIZE, 0);
        v.extend_from_slice(&size.to_be_bytes());
        v
    }

    #[test]
    fn type0_single_chunk() {
        let mut b = fmt0(3, 1000, 3, 20, 0x0102_0304);
        b.extend_from_slice(b"abc");
        let mut buf = BytesMut::from(&b[..]);
        let m = ChunkReader::new().read_message(&mut buf).unwrap().unwrap();
        assert_eq!(
            m,
            RawMessage {
                csid: 3,
                timestamp: 1000,
                type_id: 20,
                stream_id: 0x0102_0304,
                payload: Bytes::from_static(b"abc")
            }
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn type1_type2_type3_inherit_and_add_deltas() {
        let mut b = fmt0(4, 100, 2, 8, 1);
        b.extend_from_slice(&[0xaf, 1]);
        // Type 1: delta 20, new length and type, stream id inherited.
        b.extend_from_slice(&[0x44, 0, 0, 20, 0, 0, 3, 9]);
        b.extend_from_slice(&[1, 2, 3]);
        // Type 2: delta 33, length and type inherited.
        b.extend_from_slice(&[0x84, 0, 0, 33]);
        b.extend_from_slice(&[4, 5, 6]);
        // Type 3 starting a new message: delta 33 again.
        b.push(0xC4);
        b.extend_from_slice(&[7, 8, 9]);
        let mut buf = BytesMut::from(&b[..]);
        let ms = read_all(&mut ChunkReader::new(), &mut buf);
        let got: Vec<_> = ms.iter().map(|m| (m.timestamp, m.type_id, m.stream_id, m.payload.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (100, 8, 1, vec![0xaf, 1]),
                (120, 9, 1, vec![1, 2, 3]),
                (153, 9, 1, vec![4, 5, 6]),
                (186, 9, 1, vec![7, 8, 9]),
            ]
        );
    }

    #[test]
    fn type3_after_type0_repeats_the_field_like_ffmpeg() {
        let mut b = fmt0(5, 40, 1, 8, 1);
        b.push(0xaf);
        b.extend_from_slice(&[0xC5, 0xaf]);
        let mut buf = BytesMut::from(&b[..]);
        let ms = read_all(&mut ChunkReader::new(), &mut buf);
        assert_eq!(ms.iter().map(|m| m.timestamp).collect::<Vec<_>>(), vec![40, 80]);
    }

    #[test]
    fn two_and_three_byte_chunk_stream_ids() {
        let mut b = vec![0x00, 200 - 64];
        b.extend_from_slice(&fmt0(3, 1, 1, 8, 1)[1..]);
        b.push(1);
        let csid = 1000u32 - 64;
        b.extend_from_slice(&[0x01, csid as u8, (csid >> 8) as u8]);
        b.extend_from_slice(&fmt0(3, 2, 1, 9, 1)[1..]);
        b.push(2);
        let mut buf = BytesMut::from(&b[..]);
        let ms = read_all(&mut ChunkReader::new(), &mut buf);
        assert_eq!(ms.iter().map(|m| m.csid).collect::<Vec<_>>(), vec![200, 1000]);
    }

    #[test]
    fn writer_roundtrips_every_csid_width() {
        let w = ChunkWriter::new();
        let mut out = BytesMut::new();
        for csid in [2u32, 63, 64, 319, 320, 65599] {
            w.write(&mut out, csid, 7, 20, 0, b"x");
        }
        let ms = read_all(&mut ChunkReader::new(), &mut out);
        assert_eq!(ms.iter().map(|m| m.csid).collect::<Vec<_>>(), vec![2, 63, 64, 319, 320, 65599]);
    }

    #[test]
    fn extended_timestamp_type0_and_type3_continuation() {
        let ts = 0x0123_4567;
        let payload: Vec<u8> = (0..300).map(|i| i as u8).collect();
        let mut b = fmt0(6, ts, 300, 9, 1);
        b.extend_from_slice(&payload[..128]);
        b.push(0xC6);
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&payload[128..256]);
        b.push(0xC6);
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&payload[256..]);
        let mut buf = BytesMut::from(&b[..]);
        let ms = read_all(&mut ChunkReader::new(), &mut buf);
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].timestamp, ts);
        assert_eq!(&ms[0].payload[..], &payload[..]);

        // The writer produces the same bytes.
        let mut out = BytesMut::new();
        ChunkWriter::new().write(&mut out, 6, ts, 9, 1, &payload);
        assert_eq!(&out[..], &b[..]);
    }

    #[test]
    fn extended_delta_repeats_on_type3_new_message() {
        let mut b = fmt0(4, 10, 1, 8, 1);
        b.push(0xaf);
        // Type 2 with an extended delta of 0x0100_0000.
        b.extend_from_slice(&[0x84, 0xff, 0xff, 0xff, 0x01, 0, 0, 0]);
        b.push(0xaf);
        // Type 3 new message: carries the extended field again and adds the delta again.
        b.extend_from_slice(&[0xC4, 0x01, 0, 0, 0]);
        b.push(0xaf);
        // Type 2 with a small delta: no extended field anymore, nor on the next type 3.
        b.extend_from_slice(&[0x84, 0, 0, 5, 0xaf, 0xC4, 0xaf]);
        let mut buf = BytesMut::from(&b[..]);
        let ms = read_all(&mut ChunkReader::new(), &mut buf);
        let ts: Vec<u32> = ms.iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, vec![10, 0x0100_000a, 0x0200_000a, 0x0200_000f, 0x0200_0014]);
        assert!(buf.is_empty());
    }

    #[test]
    fn timestamp_deltas_wrap() {
        let mut b = fmt0(4, 0xFFFF_FFF0, 1, 8, 1);
        b.push(0xaf);
        b.extend_from_slice(&[0x84, 0, 0, 0x20, 0xaf]);
        let mut buf = BytesMut::from(&b[..]);
        let ms = read_all(&mut ChunkReader::new(), &mut buf);
        assert_eq!(ms[1].timestamp, 0x10);
    }

    /// Audio on csid 4 and video on csid 6, 300-byte messages in 128-byte chunks, chunks
    /// alternating between the two streams.
    #[test]
    fn interleaved_chunk_streams() {
        let audio: Vec<u8> = (0..300).map(|i| (i % 251) as u8).collect();
        let video: Vec<u8> = (0..300).map(|i| (i % 241) as u8 ^ 0x55).collect();
        let mut b = Vec::new();
        b.extend_from_slice(&fmt0(4, 0, 300, 8, 1));
        b.extend_from_slice(&audio[..128]);
        b.extend_from_slice(&fmt0(6, 0, 300, 9, 1));
        b.extend_from_slice(&video[..128]);
        b.push(0xC4);
        b.extend_from_slice(&audio[128..256]);
        b.push(0xC6);
        b.extend_from_slice(&video[128..256]);
        b.push(0xC6);
        b.extend_from_slice(&video[256..]);
        b.push(0xC4);
        b.extend_from_slice(&audio[256..]);
        // A second audio message as type 2 (delta 23) in three chunks, one video (type 1) in between.
        b.extend_from_slice(&[0x84, 0, 0, 23]);
        b.extend_from_slice(&audio[..128]);
        b.extend_from_slice(&[0x46, 0, 0, 40, 0, 0, 2, 9, 0x17, 1]);
        b.push(0xC4);
        b.extend_from_slice(&audio[128..256]);
        b.push(0xC4);
        b.extend_from_slice(&audio[256..]);
        let mut buf = BytesMut::from(&b[..]);
        let ms = read_all(&mut ChunkReader::new(), &mut buf);
        let got: Vec<_> = ms.iter().map(|m| (m.csid, m.type_id, m.timestamp, m.payload.len())).collect();
        assert_eq!(got, vec![(6, 9, 0, 300), (4, 8, 0, 300), (6, 9, 40, 2), (4, 8, 23, 300)]);
        assert_eq!(&ms[0].payload[..], &video[..]);
        assert_eq!(&ms[1].payload[..], &audio[..]);
        assert_eq!(&ms[3].payload[..], &audio[..]);
    }

    #[test]
    fn split_message_across_chunk_size_changes() {
        let payload: Vec<u8> = (0..1000).map(|i| (i * 3) as u8).collect();
        let mut w = ChunkWriter::new();
        let mut out = BytesMut::new();
        w.write(&mut out, 6, 0, 9, 1, &payload);
        out.extend_from_slice(&set_chunk_size(300));
        w.set_chunk_size(300);
        w.write(&mut out, 6, 40, 9, 1, &payload);
        out.extend_from_slice(&set_chunk_size(4096));
        w.set_chunk_size(4096);
        w.write(&mut out, 6, 80, 9, 1, &payload);
        let mut r = ChunkReader::new();
        let ms = read_all(&mut r, &mut out);
        let types: Vec<u8> = ms.iter().map(|m| m.type_id).collect();
        assert_eq!(types, vec![9, 1, 9, 1, 9]);
        for m in ms.iter().filter(|m| m.type_id == 9) {
            assert_eq!(&m.payload[..], &payload[..]);
        }
        assert_eq!(r.chunk_size(), 4096);
    }

    #[test]
    fn set_chunk_size_is_applied_to_following_chunks() {
        let mut b = set_chunk_size(4);
        b.extend_from_slice(&fmt0(3, 0, 6, 20, 0));
        b.extend_from_slice(b"abcd");
        b.extend_from_slice(&[0xC3, b'e', b'f']);
        let mut buf = BytesMut::from(&b[..]);
        let mut r = ChunkReader::new();
        let ms = read_all(&mut r, &mut buf);
        assert_eq!(r.chunk_size(), 4);
        assert_eq!(ms[0].type_id, MSG_SET_CHUNK_SIZE);
        assert_eq!(&ms[1].payload[..], b"abcdef");
    }

    #[test]
    fn invalid_and_huge_chunk_sizes() {
        let mut buf = BytesMut::from(&set_chunk_size(0)[..]);
        assert_eq!(ChunkReader::new().read_message(&mut buf), Err(ChunkError::InvalidChunkSize(0)));
        let mut buf = BytesMut::from(&set_chunk_size(0x8000_0000)[..]);
        assert!(ChunkReader::new().read_message(&mut buf).is_err());
        let mut buf = BytesMut::from(&set_chunk_size(0x7FFF_FFFF)[..]);
        let mut r = ChunkReader::new();
        r.read_message(&mut buf).unwrap();
        assert_eq!(r.chunk_size(), MAX_CHUNK_SIZE);
        let mut b = fmt0(2, 0, 2, MSG_SET_CHUNK_SIZE, 0);
        b.extend_from_slice(&[0, 1]);
        let mut buf = BytesMut::from(&b[..]);
        assert!(matches!(ChunkReader::new().read_message(&mut buf), Err(ChunkError::ShortControlMessage { .. })));
    }

    #[test]
    fn abort_discards_partial_message() {
        let mut b = fmt0(6, 0, 200, 9, 1);
        b.extend_from_slice(&[1; 128]);
        // Abort chunk stream 6.
        b.extend_from_slice(&fmt0(2, 0, 4, MSG_ABORT, 0));
        b.extend_from_slice(&6u32.to_be_bytes());
        // A fresh message on csid 6 with a type 1 header is now fine.
        b.extend_from_slice(&[0x46, 0, 0, 1, 0, 0, 1, 9, 0x27]);
        let mut buf = BytesMut::from(&b[..]);
        let mut r = ChunkReader::new();
        let ms = read_all(&mut r, &mut buf);
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].type_id, MSG_ABORT);
        assert_eq!(&ms[1].payload[..], &[0x27]);
        assert_eq!(r.partial_bytes, 0);
    }

    #[test]
    fn byte_by_byte_input_gives_the_same_messages() {
        let payload: Vec<u8> = (0..700).map(|i| i as u8).collect();
        let mut w = ChunkWriter::new();
        let mut all = BytesMut::new();
        w.write(&mut all, 4, 5, 8, 1, &payload[..10]);
        w.write(&mut all, 6, 0x0100_0000, 9, 1, &payload);
        all.extend_from_slice(&set_chunk_size(200));
        w.set_chunk_size(200);
        w.write(&mut all, 6, 0x0100_0040, 9, 1, &payload);
        let whole = read_all(&mut ChunkReader::new(), &mut all.clone());
        let mut r = ChunkReader::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(m) = r.read_message(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, whole);
        assert_eq!(got.len(), 4);
        assert!(buf.is_empty());
    }

    #[test]
    fn single_chunk_payload_is_zero_copy() {
        let mut b = fmt0(6, 0, 100, 9, 1);
        b.extend_from_slice(&[0x17; 100]);
        let mut buf = BytesMut::from(&b[..]);
        let read_block = block(&buf);
        let m = ChunkReader::new().read_message(&mut buf).unwrap().unwrap();
        assert!(inside(&read_block, &m.payload));
    }

    /// Where `buf`'s bytes lie in memory.
    fn block(buf: &[u8]) -> std::ops::Range<usize> {
        buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len()
    }

    fn inside(block: &std::ops::Range<usize>, bytes: &[u8]) -> bool {
        block.contains(&(bytes.as_ptr() as usize)) && block.contains(&(bytes.as_ptr() as usize + bytes.len() - 1))
    }

    #[test]
    fn a_message_whose_chunks_all_arrived_is_joined_in_the_block_it_was_read_into() {
        // Every chunk stream id width, with and without extended timestamps, a last chunk
        // shorter than the others and one exactly full; each followed by a one-chunk message.
        for (csid, ts, len) in [(6u32, 40u32, 10_000usize), (100, 0x0123_4567, 3 * 4096), (400, 7, 4097)] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut w = ChunkWriter::new();
            let mut b = BytesMut::new();
            w.write(&mut b, 2, 0, MSG_SET_CHUNK_SIZE, 0, &4096u32.to_be_bytes());
            w.set_chunk_size(4096);
            w.write(&mut b, csid, ts, MSG_VIDEO, 1, &payload);
            w.write(&mut b, 4, ts, MSG_AUDIO, 1, &[0xaf, 1, 2]);
            let mut buf = b;
            let read_block = block(&buf);
            let mut r = ChunkReader::new();
            assert_eq!(r.read_message(&mut buf).unwrap().unwrap().type_id, MSG_SET_CHUNK_SIZE);
            let m = r.read_message(&mut buf).unwrap().unwrap();
            assert_eq!((m.csid, m.timestamp, m.type_id, m.payload.len()), (csid, ts, MSG_VIDEO, len));
            assert!(m.payload[..] == payload[..], "csid {csid}: payload joined intact");
            assert!(inside(&read_block, &m.payload), "csid {csid}: joined in place, not copied out");
            let a = r.read_message(&mut buf).unwrap().unwrap();
            assert_eq!((a.type_id, &a.payload[..]), (MSG_AUDIO, &[0xaf, 1, 2][..]));
            assert!(buf.is_empty() && r.partial_bytes == 0);
        }
    }

    #[test]
    fn a_message_still_arriving_or_interleaved_is_reassembled_and_counted() {
        let payload: Vec<u8> = (0..10_000).map(|i| (i % 253) as u8).collect();
        let mut w = ChunkWriter::new();
        w.set_chunk_size(4096);
        let mut b = BytesMut::new();
        w.write(&mut b, 6, 40, MSG_VIDEO, 1, &payload);
        let budget = ReassemblyBudget::new(1 << 20);
        let mut r = ChunkReader::with_budget(Some(budget.clone()));
        r.chunk_size = 4096;
        // The last byte has not come: the first two chunks go to a reassembly buffer, which
        // counts against the limits.
        let mut buf = b.split_to(b.len() - 1);
        assert_eq!(r.read_message(&mut buf), Ok(None));
        assert_eq!((r.partial_bytes, budget.used()), (10_000, 10_000));
        buf.unsplit(b);
        let m = r.read_message(&mut buf).unwrap().unwrap();
        assert_eq!(&m.payload[..], &payload[..]);
        assert_eq!((r.partial_bytes, budget.used()), (0, 0));

        // Another chunk stream between two chunks of a message: reassembled too.
        let mut w = ChunkWriter::new();
        w.set_chunk_size(4096);
        let mut whole = BytesMut::new();
        w.write(&mut whole, 6, 80, MSG_VIDEO, 1, &payload[..5000]);
        let second = whole.split_off(4096 + 12);
        w.write(&mut whole, 4, 80, MSG_AUDIO, 1, &[0xaf, 1]);
        whole.unsplit(second);
        let read_block = block(&whole);
        let ms = read_all(&mut r, &mut whole);
        assert_eq!(ms.iter().map(|m| m.type_id).collect::<Vec<_>>(), vec![MSG_AUDIO, MSG_VIDEO]);
        assert_eq!(&ms[1].payload[..], &payload[..5000]);
        assert!(inside(&read_block, &ms[0].payload) && !inside(&read_block, &ms[1].payload));
    }

    #[test]
    fn message_over_the_size_limit() {
        let mut buf = BytesMut::from(&fmt0(6, 0, MAX_MESSAGE_SIZE + 1, 9, 1)[..]);
        assert_eq!(
            ChunkReader::new().read_message(&mut buf),
            Err(ChunkError::MessageTooLarge { csid: 6, length: MAX_MESSAGE_SIZE + 1, max: MAX_MESSAGE_SIZE })
        );
    }

    #[test]
    fn too_many_chunk_streams() {
        let mut b = Vec::new();
        for i in 0..=MAX_CHUNK_STREAMS as u32 {
            b.extend_from_slice(&[0x00, i as u8]);
            b.extend_from_slice(&fmt0(3, 0, 1, 8, 1)[1..]);
            b.push(0xaf);
        }
        let mut buf = BytesMut::from(&b[..]);
        let mut r = ChunkReader::new();
        for _ in 0..MAX_CHUNK_STREAMS {
            r.read_message(&mut buf).unwrap().unwrap();
        }
        assert_eq!(r.read_message(&mut buf), Err(ChunkError::TooManyChunkStreams { max: MAX_CHUNK_STREAMS }));
    }

    #[test]
    fn partial_data_budget() {
        let mut b = Vec::new();
        let per = MAX_MESSAGE_SIZE;
        for csid in 3..3 + (MAX_PARTIAL_BYTES / per) as u8 + 1 {
            b.extend_from_slice(&fmt0(csid, 0, per, 9, 1));
            b.extend_from_slice(&[0; 128]);
        }
        let mut buf = BytesMut::from(&b[..]);
        let mut r = ChunkReader::new();
        assert!(matches!(r.read_message(&mut buf), Err(ChunkError::TooMuchPartialData { .. })));
    }

    #[test]
    fn headers_without_history_are_rejected() {
        for first in [0x83u8, 0xC3] {
            let mut buf = BytesMut::from(&[first, 0, 0, 1, 0xaf][..]);
            assert!(matches!(
                ChunkReader::new().read_message(&mut buf),
                Err(ChunkError::NoPreviousHeader { csid: 3, .. })
            ));
        }
        // Type 1 on a fresh chunk stream is tolerated (message stream id 0).
        let mut buf = BytesMut::from(&[0x43, 0, 0, 1, 0, 0, 1, 20, 5][..]);
        let m = ChunkReader::new().read_message(&mut buf).unwrap().unwrap();
        assert_eq!((m.stream_id, m.type_id, m.timestamp), (0, 20, 1));
    }

    #[test]
    fn a_shared_budget_bounds_reassembly_across_connections() {
        let budget = ReassemblyBudget::new(MAX_MESSAGE_SIZE + MAX_MESSAGE_SIZE / 2);
        let first_chunk = |r: &mut ChunkReader| {
            let mut buf = BytesMut::from(&fmt0(6, 0, MAX_MESSAGE_SIZE, 9, 1)[..]);
            buf.extend_from_slice(&[0u8; DEFAULT_CHUNK_SIZE]);
            r.read_message(&mut buf)
        };
        let mut a = ChunkReader::with_budget(Some(budget.clone()));
        assert_eq!(first_chunk(&mut a), Ok(None), "an 8 MiB message starts");
        assert_eq!(budget.used(), MAX_MESSAGE_SIZE);
        let mut b = ChunkReader::with_budget(Some(budget.clone()));
        assert!(matches!(first_chunk(&mut b), Err(ChunkError::OverBudget { .. })), "a second does not fit");
        // A connection that goes gives its share back.
        drop(a);
        assert_eq!(budget.used(), 0);
        let mut c = ChunkReader::with_budget(Some(budget.clone()));
        assert_eq!(first_chunk(&mut c), Ok(None));
    }

    #[test]
    fn new_header_in_the_middle_of_a_message_is_corruption() {
        let mut b = fmt0(6, 0, 200, 9, 1);
        b.extend_from_slice(&[1; 128]);
        b.extend_from_slice(&fmt0(6, 0, 10, 9, 1));
        let mut buf = BytesMut::from(&b[..]);
        assert_eq!(ChunkReader::new().read_message(&mut buf), Err(ChunkError::InterruptedMessage { csid: 6, fmt: 0 }));
    }

    #[test]
    fn incomplete_header_leaves_state_untouched() {
        let mut b = fmt0(6, 77, 3, 9, 1);
        b.extend_from_slice(&[1, 2, 3]);
        for cut in 0..b.len() {
            let mut buf = BytesMut::from(&b[..cut]);
            let mut r = ChunkReader::new();
            assert_eq!(r.read_message(&mut buf), Ok(None));
            assert_eq!(buf.len(), cut);
            assert!(r.streams.is_empty());
        }
    }

    #[test]
    fn zero_length_message() {
        let mut buf = BytesMut::from(&fmt0(3, 0, 0, 20, 0)[..]);
        let m = ChunkReader::new().read_message(&mut buf).unwrap().unwrap();
        assert!(m.payload.is_empty());
    }
}
