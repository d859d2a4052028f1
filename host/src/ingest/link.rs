//! What both ends of an RTMP connection do alike under the commands: read the peer's chunk
//! stream, chunk what they send into one output buffer, count what they receive, and answer
//! protocol control — an acknowledgement each time the peer's window fills, a response to every
//! ping.
//!
//! [`ServerSession`](super::ServerSession) and [`ClientSession`](super::ClientSession) each own
//! a [`Link`]; it is sans-IO like them.

use bytes::{Bytes, BytesMut};

use super::chunk::{
    control_u32, short_control, ChunkError, ChunkReader, ChunkWriter, RawMessage, MSG_ABORT, MSG_ACK, MSG_COMMAND_AMF0,
    MSG_SET_CHUNK_SIZE, MSG_SET_PEER_BANDWIDTH, MSG_USER_CONTROL, MSG_WINDOW_ACK_SIZE,
};
use crate::media::amf0::{self, Value};

/// Chunk stream for protocol control and user control messages.
const CSID_CONTROL: u32 = 2;

pub(crate) const USER_CONTROL_PING_REQUEST: u16 = 6;
pub(crate) const USER_CONTROL_PING_RESPONSE: u16 = 7;

/// The chunk streams and the protocol control state of one connection.
#[derive(Debug)]
pub(crate) struct Link {
    reader: ChunkReader,
    writer: ChunkWriter,
    out: BytesMut,
    bytes_received: u64,
    /// The peer's Window Acknowledgement Size; 0 until it sends one (then no acks are due).
    ack_window: u32,
    acked: u64,
}

impl Link {
    /// A link whose output starts with `out` (e.g. a handshake already written).
    pub fn new(out: BytesMut) -> Self {
        Self::with_reader(out, ChunkReader::new())
    }

    /// Like [`Link::new`], reading with `reader` (e.g. one sharing a reassembly budget).
    pub fn with_reader(out: BytesMut, reader: ChunkReader) -> Self {
        Self { reader, writer: ChunkWriter::new(), out, bytes_received: 0, ack_window: 0, acked: 0 }
    }

    /// The next message from `buf` other than protocol control, which is handled here; `None`
    /// when `buf` holds no further whole message.
    pub fn next_message(&mut self, buf: &mut BytesMut) -> Result<Option<RawMessage>, ChunkError> {
        while let Some(msg) = self.reader.read_message(buf)? {
            if !self.handle_control(&msg)? {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    /// The output buffer, for bytes written outside the chunk stream (the handshake).
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Bytes to send to the peer, if any.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            // The whole buffer goes: a large reply (the handshake's 3 KB) does not stay
            // allocated for the connection's life; later replies are small and seldom.
            Some(std::mem::take(&mut self.out).freeze())
        }
    }

    /// Bytes waiting in the output buffer.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Bytes consumed from the peer so far, handshake included.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Counts `n` more bytes consumed from the peer.
    pub fn received(&mut self, n: usize) {
        self.bytes_received += n as u64;
    }

    /// Sends an acknowledgement when a whole window has arrived since the last one.
    pub fn maybe_ack(&mut self) {
        if self.ack_window > 0 && self.bytes_received - self.acked >= u64::from(self.ack_window) {
            self.acked = self.bytes_received;
            // The sequence number is the byte count modulo 2^32.
            self.send_control(MSG_ACK, &(self.bytes_received as u32).to_be_bytes());
        }
    }

    /// Announces a chunk size with Set Chunk Size, then writes with it.
    pub fn set_chunk_size(&mut self, size: usize) {
        self.send_control(MSG_SET_CHUNK_SIZE, &(size as u32).to_be_bytes());
        self.writer.set_chunk_size(size);
    }

    /// Chunks one message into the output.
    pub fn write(&mut self, csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) {
        self.writer.write(&mut self.out, csid, timestamp, type_id, stream_id, payload);
    }

    /// A protocol control or user control message, on the control chunk stream.
    pub fn send_control(&mut self, type_id: u8, payload: &[u8]) {
        self.write(CSID_CONTROL, 0, type_id, 0, payload);
    }

    /// An AMF0 command message.
    pub fn send_command(&mut self, csid: u32, stream_id: u32, values: &[Value]) {
        let body = amf0::encode_all(values);
        self.write(csid, 0, MSG_COMMAND_AMF0, stream_id, &body);
    }

    /// Handles a protocol control message (types 1 to 6) or a user control message (4);
    /// `Ok(false)` for any other message. Set Chunk Size and Abort are applied by the chunk
    /// reader; Acknowledgement and Set Peer Bandwidth need nothing from either side.
    fn handle_control(&mut self, msg: &RawMessage) -> Result<bool, ChunkError> {
        match msg.type_id {
            MSG_SET_CHUNK_SIZE | MSG_ABORT | MSG_ACK | MSG_SET_PEER_BANDWIDTH => {}
            MSG_WINDOW_ACK_SIZE => {
                if self.ack_window == 0 {
                    // Count towards the first ack from when the peer asked for acks.
                    self.acked = self.bytes_received;
                }
                self.ack_window = control_u32(msg)?;
            }
            MSG_USER_CONTROL => self.handle_user_control(msg)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Answers a ping request; other events (Stream Begin, Set Buffer Length, ...) need nothing.
    fn handle_user_control(&mut self, msg: &RawMessage) -> Result<(), ChunkError> {
        let p = &msg.payload;
        if p.len() < 2 {
            return Err(short_control(msg, 2));
        }
        if u16::from_be_bytes([p[0], p[1]]) == USER_CONTROL_PING_REQUEST {
            if p.len() < 6 {
                return Err(short_control(msg, 6));
            }
            let mut pong = [0u8; 6];
            pong[..2].copy_from_slice(&USER_CONTROL_PING_RESPONSE.to_be_bytes());
            pong[2..].copy_from_slice(&p[2..6]);
            self.send_control(MSG_USER_CONTROL, &pong);
        }
        Ok(())
    }
}
