//! RTMP client session, sans-IO: the publishing and playing side of a connection.
//!
//! Shaped like [`ServerSession`](super::ServerSession): feed it what the server sends, it runs
//! the (simple) handshake, decodes chunks and answers protocol control as the server session
//! does (both own a `link::Link`; played media becomes frames through the same `media_in`
//! code), walks the command sequence and emits [`ClientEvent`]s; what it wants sent is
//! collected in one output buffer handed out by [`ClientSession::take_output`].
//!
//! ```text
//! C0+C1 ─▶                       ◀─ S0+S1(+S2)
//! C2 (echo of S1) ─▶             ◀─ S2
//! Set Chunk Size 4096, connect ─▶ ◀─ Window Ack Size, Set Peer Bandwidth, _result
//! publish: releaseStream, FCPublish, createStream ─▶  ◀─ _result(stream id)
//!          publish(name) ─▶      ◀─ onStatus NetStream.Publish.Start   → Publishing
//! play:    createStream ─▶       ◀─ _result(stream id)
//!          play(name) ─▶         ◀─ onStatus NetStream.Play.Start      → Playing, then Frames
//! ```
//!
//! [`ClientSession::send_media`] chunks an audio/video/data message straight into the output
//! buffer: no allocation per frame once the buffer has grown to its working size.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::chunk::{
    strip_amf3_prefix, ChunkError, RawMessage, MSG_COMMAND_AMF0, MSG_COMMAND_AMF3, MSG_DATA_AMF0, MSG_USER_CONTROL,
};
use super::handshake::{HANDSHAKE_SIZE, RTMP_VERSION};
use super::link::Link;
use super::media_in::{MediaEvent, MediaIn};
use crate::media::amf0::{self, Value};
use crate::media::{flv, Frame, MediaError};

/// Chunk size the client writes with once the handshake is done (announced first).
pub const CLIENT_CHUNK_SIZE: usize = 4096;
/// Longest command name, status code or description kept from the server (DoS limit: the
/// values end up in events and error messages).
pub const MAX_STATUS_TEXT: usize = 1024;
/// Default RTMP port.
pub const DEFAULT_PORT: u16 = 1935;

/// Chunk streams the client writes on (the numbers FFmpeg uses; protocol control goes on 2).
const CSID_COMMAND: u32 = 3;
const CSID_AUDIO: u32 = 4;
const CSID_DATA: u32 = 5;
const CSID_VIDEO: u32 = 6;
const CSID_STREAM_COMMAND: u32 = 8;

const USER_CONTROL_SET_BUFFER_LENGTH: u16 = 3;
/// Buffer length announced before `play`, in milliseconds.
const PLAY_BUFFER_MS: u32 = 3000;

const TXN_CONNECT: f64 = 1.0;
const TXN_RELEASE_STREAM: f64 = 2.0;
const TXN_FC_PUBLISH: f64 = 3.0;
const TXN_CREATE_STREAM: f64 = 4.0;

/// The AMF0 encoding of the string `@setDataFrame`, put in front of data messages that a
/// publisher sends (an FLV script tag body starts at `onMetaData`).
const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";

/// What the client does once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Publish,
    Play,
}

/// Where to connect and what to publish or play.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The `app` of the connect command, query string included.
    pub app: String,
    /// `rtmp://host[:port]/app`.
    pub tc_url: String,
    /// The stream name for `publish` / `play`, query string included.
    pub stream: String,
    pub role: Role,
}

/// A parsed `rtmp://host[:port]/app/stream` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    pub app: String,
    pub stream: String,
}

impl RtmpUrl {
    /// Parses `rtmp://host[:port]/app/stream[?query]`. The app is the first path segment (with
    /// a query attached to it, if any); the stream is the rest of the path, query included.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Url { url: url.to_string(), why: why.to_string() };
        let rest = url.strip_prefix("rtmp://").ok_or_else(|| bad("must start with rtmp://"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("needs /APP/STREAM after the host"))?;
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
            None => DEFAULT_PORT,
        };
        let (app, stream) = path.split_once('/').ok_or_else(|| bad("needs /APP/STREAM after the host"))?;
        if app.is_empty() || stream.is_empty() {
            return Err(bad("empty app or stream name"));
        }
        Ok(Self { host: host.to_string(), port, app: app.to_string(), stream: stream.to_string() })
    }

    /// `host:port`, for connecting (IPv6 hosts in brackets).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The session configuration for this URL.
    pub fn config(&self, role: Role) -> ClientConfig {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        ClientConfig {
            app: self.app.clone(),
            tc_url: format!("rtmp://{host}:{}/{}", self.port, self.app),
            stream: self.stream.clone(),
            role,
        }
    }
}

#[derive(Clone, Debug)]
pub enum ClientEvent {
    /// `NetConnection.Connect.Success`.
    Connected,
    /// `NetStream.Publish.Start`: media may be sent.
    Publishing,
    /// `NetStream.Play.Start`: frames follow.
    Playing,
    /// The server refused the connect, createStream, publish or play (or a later error
    /// status): code such as `NetStream.Publish.BadName`, and its description.
    Rejected { code: String, description: String },
    /// A played audio, video or data message; `dts` is unwrapped past 32 bits.
    Frame(Frame),
    /// Any other status from the server (`NetStream.Play.Reset`, ...).
    Status { code: String, description: String },
    /// The stream ended: unpublish acknowledged, play stopped, or the server closed the
    /// connection by command.
    Closed { code: String },
    /// A single message was skipped; the session goes on.
    Warning(String),
}

impl MediaEvent for ClientEvent {
    fn frame(f: Frame) -> Self {
        ClientEvent::Frame(f)
    }
    fn warning(w: String) -> Self {
        ClientEvent::Warning(w)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClientError {
    #[error("invalid RTMP URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("server answered the handshake with RTMP version {0}; only version 3 is supported")]
    ServerVersion(u8),
    #[error("corrupt RTMP chunk stream from the server")]
    Chunk(#[from] ChunkError),
    #[error("malformed AMF0 in {context} from the server")]
    Amf {
        context: &'static str,
        #[source]
        source: MediaError,
    },
    #[error("RTMP protocol violation by the server: {0}")]
    Protocol(String),
    #[error("cannot send media: the stream is not publishing")]
    NotPublishing,
    #[error("cannot send a message of {0} bytes (RTMP messages are at most 16 MiB - 1)")]
    TooLarge(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// C0+C1 sent, waiting for S0+S1.
    WaitS0S1,
    /// C2 sent, waiting for S2.
    WaitS2,
    /// connect sent.
    Connecting,
    /// createStream sent.
    CreatingStream,
    /// publish / play sent on the stream.
    Starting {
        stream_id: u32,
    },
    Active {
        stream_id: u32,
    },
    /// Unpublish / close sent.
    Closing,
    /// Refused or closed: nothing more happens.
    Done,
}

/// Client side of one RTMP connection.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    link: Link,
    /// Scratch for data messages that need `@setDataFrame` in front; reused.
    scratch: BytesMut,
    next_txn: f64,
    media: MediaIn,
}

impl ClientSession {
    /// A session that starts with C0+C1 in its output.
    pub fn new(config: ClientConfig) -> Self {
        let mut out = BytesMut::with_capacity(1 + HANDSHAKE_SIZE + 512);
        out.put_u8(RTMP_VERSION);
        // Simple handshake: time 0, zero, random.
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        fastrand::fill(&mut c1[8..]);
        out.extend_from_slice(&c1);
        Self {
            config,
            state: State::WaitS0S1,
            link: Link::new(out),
            scratch: BytesMut::new(),
            next_txn: TXN_CREATE_STREAM + 1.0,
            media: MediaIn::played(),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Consumes what it can of `buf` (leaving incomplete data in it), appends events.
    /// Played single-chunk frames are split off `buf` without copying. An error means the
    /// connection is unusable.
    pub fn feed(&mut self, buf: &mut BytesMut, events: &mut Vec<ClientEvent>) -> Result<(), ClientError> {
        let before = buf.len();
        let result = self.feed_inner(buf, events);
        self.link.received(before.saturating_sub(buf.len()));
        if result.is_ok() {
            self.link.maybe_ack();
        }
        result
    }

    /// Bytes to send (take and write them after every feed and send).
    pub fn take_output(&mut self) -> Option<Bytes> {
        self.link.take_output()
    }

    /// Bytes waiting in the output buffer.
    pub fn pending_output(&self) -> usize {
        self.link.pending_output()
    }

    /// Whether media may be sent (`NetStream.Publish.Start` was received).
    pub fn is_publishing(&self) -> bool {
        self.config.role == Role::Publish && matches!(self.state, State::Active { .. })
    }

    /// Bytes consumed from the server so far, handshake included.
    pub fn bytes_received(&self) -> u64 {
        self.link.bytes_received()
    }

    /// Appends one audio (8), video (9) or data (18) message, an FLV tag body, to the output.
    /// A data message gets `@setDataFrame` in front unless it already has it.
    pub fn send_media(&mut self, tag_type: u8, timestamp: u32, payload: &[u8]) -> Result<(), ClientError> {
        let State::Active { stream_id } = self.state else {
            return Err(ClientError::NotPublishing);
        };
        if self.config.role != Role::Publish {
            return Err(ClientError::NotPublishing);
        }
        match tag_type {
            flv::TAG_AUDIO | flv::TAG_VIDEO => {
                if payload.len() > 0xFF_FFFF {
                    return Err(ClientError::TooLarge(payload.len()));
                }
                let csid = if tag_type == flv::TAG_AUDIO { CSID_AUDIO } else { CSID_VIDEO };
                self.link.write(csid, timestamp, tag_type, stream_id, payload);
            }
            _ => {
                let body: &[u8] = if payload.starts_with(SET_DATA_FRAME) {
                    payload
                } else {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(SET_DATA_FRAME);
                    self.scratch.extend_from_slice(payload);
                    &self.scratch
                };
                if body.len() > 0xFF_FFFF {
                    return Err(ClientError::TooLarge(body.len()));
                }
                self.link.write(CSID_DATA, timestamp, MSG_DATA_AMF0, stream_id, body);
            }
        }
        Ok(())
    }

    /// Ends the publish or play: `FCUnpublish` + `deleteStream` (publish) or `deleteStream`
    /// (play). The server's `NetStream.Unpublish.Success` then gives [`ClientEvent::Closed`];
    /// a caller may also just send the output and close the socket.
    pub fn close(&mut self) {
        match self.state {
            State::Starting { stream_id } | State::Active { stream_id } => {
                if self.config.role == Role::Publish {
                    let txn = self.txn();
                    let name = Value::String(self.config.stream.clone());
                    self.link.send_command(
                        CSID_COMMAND,
                        0,
                        &[Value::String("FCUnpublish".into()), Value::Number(txn), Value::Null, name],
                    );
                }
                let txn = self.txn();
                self.link.send_command(
                    CSID_COMMAND,
                    0,
                    &[
                        Value::String("deleteStream".into()),
                        Value::Number(txn),
                        Value::Null,
                        Value::Number(f64::from(stream_id)),
                    ],
                );
                self.state = State::Closing;
            }
            State::Closing | State::Done => {}
            _ => self.state = State::Done,
        }
    }

    fn txn(&mut self) -> f64 {
        let t = self.next_txn;
        self.next_txn += 1.0;
        t
    }

    fn feed_inner(&mut self, buf: &mut BytesMut, events: &mut Vec<ClientEvent>) -> Result<(), ClientError> {
        if self.state == State::WaitS0S1 {
            let Some(&version) = buf.first() else { return Ok(()) };
            if version != RTMP_VERSION {
                return Err(ClientError::ServerVersion(version));
            }
            if buf.len() < 1 + HANDSHAKE_SIZE {
                return Ok(());
            }
            buf.advance(1);
            // C2 echoes S1.
            let s1 = buf.split_to(HANDSHAKE_SIZE);
            self.link.out().extend_from_slice(&s1);
            self.state = State::WaitS2;
        }
        if self.state == State::WaitS2 {
            if buf.len() < HANDSHAKE_SIZE {
                return Ok(());
            }
            // S2 should echo C1; servers disagree (digest servers sign it), so it is not checked.
            buf.advance(HANDSHAKE_SIZE);
            self.on_handshake_done();
        }
        while let Some(msg) = self.link.next_message(buf)? {
            self.handle_message(msg, events)?;
        }
        Ok(())
    }

    fn on_handshake_done(&mut self) {
        self.link.set_chunk_size(CLIENT_CHUNK_SIZE);
        let mut props = vec![
            ("app".to_string(), Value::String(self.config.app.clone())),
            ("type".to_string(), Value::String("nonprivate".into())),
            ("flashVer".to_string(), Value::String("FMLE/3.0 (compatible; Reel)".into())),
            ("tcUrl".to_string(), Value::String(self.config.tc_url.clone())),
        ];
        if self.config.role == Role::Play {
            props.extend([
                ("fpad".to_string(), Value::Boolean(false)),
                ("capabilities".to_string(), Value::Number(15.0)),
                ("audioCodecs".to_string(), Value::Number(4071.0)),
                ("videoCodecs".to_string(), Value::Number(252.0)),
                ("videoFunction".to_string(), Value::Number(1.0)),
            ]);
        }
        self.link.send_command(
            CSID_COMMAND,
            0,
            &[Value::String("connect".into()), Value::Number(TXN_CONNECT), Value::Object(props)],
        );
        self.state = State::Connecting;
    }

    fn handle_message(&mut self, msg: RawMessage, events: &mut Vec<ClientEvent>) -> Result<(), ClientError> {
        match msg.type_id {
            t if MediaIn::handles(t) => {
                let playing = self.config.role == Role::Play
                    && matches!(self.state, State::Starting { .. } | State::Active { .. });
                self.media.message(msg, playing, events);
                Ok(())
            }
            MSG_COMMAND_AMF0 => self.handle_command(&msg.payload, events),
            MSG_COMMAND_AMF3 => self.handle_command(&strip_amf3_prefix(msg.payload), events),
            _ => Ok(()),
        }
    }

    fn handle_command(&mut self, payload: &[u8], events: &mut Vec<ClientEvent>) -> Result<(), ClientError> {
        let values =
            amf0::decode_all(payload).map_err(|source| ClientError::Amf { context: "command message", source })?;
        let Some(Value::String(name)) = values.first() else {
            return Err(ClientError::Protocol("command message does not start with a command name".into()));
        };
        let txn = values.get(1).and_then(Value::as_f64).unwrap_or(0.0);
        match name.as_str() {
            "_result" => self.on_result(txn, &values, events),
            "_error" => {
                let (code, description) = status_of(values.get(3));
                // Errors to releaseStream / FCPublish are harmless (nginx-rtmp has no such stream yet).
                if txn == TXN_CONNECT || txn == TXN_CREATE_STREAM {
                    self.reject(code, description, events);
                }
                Ok(())
            }
            "onStatus" => {
                let info = values.get(3);
                let level = info.and_then(|i| i.get("level")).and_then(Value::as_str).unwrap_or("");
                let (code, description) = status_of(info);
                self.on_status(level == "error", code, description, events);
                Ok(())
            }
            "close" => {
                self.state = State::Done;
                events.push(ClientEvent::Closed { code: "NetConnection.Connect.Closed".into() });
                Ok(())
            }
            // onBWDone, onFCPublish, onFCUnpublish, _checkbw and the like.
            _ => Ok(()),
        }
    }

    fn on_result(&mut self, txn: f64, values: &[Value], events: &mut Vec<ClientEvent>) -> Result<(), ClientError> {
        match self.state {
            State::Connecting if txn == TXN_CONNECT => {
                let (code, description) = status_of(values.get(3));
                if code != "NetConnection.Connect.Success" && !code.is_empty() {
                    self.reject(code, description, events);
                    return Ok(());
                }
                events.push(ClientEvent::Connected);
                if self.config.role == Role::Publish {
                    let name = Value::String(self.config.stream.clone());
                    self.link.send_command(
                        CSID_COMMAND,
                        0,
                        &[
                            Value::String("releaseStream".into()),
                            Value::Number(TXN_RELEASE_STREAM),
                            Value::Null,
                            name.clone(),
                        ],
                    );
                    self.link.send_command(
                        CSID_COMMAND,
                        0,
                        &[Value::String("FCPublish".into()), Value::Number(TXN_FC_PUBLISH), Value::Null, name],
                    );
                }
                self.link.send_command(
                    CSID_COMMAND,
                    0,
                    &[Value::String("createStream".into()), Value::Number(TXN_CREATE_STREAM), Value::Null],
                );
                self.state = State::CreatingStream;
                Ok(())
            }
            State::CreatingStream if txn == TXN_CREATE_STREAM => {
                let id = values.get(3).and_then(Value::as_f64).unwrap_or(-1.0);
                if !(0.0..=f64::from(u32::MAX)).contains(&id) || id.fract() != 0.0 {
                    return Err(ClientError::Protocol(format!(
                        "createStream result {:?} is not a stream id",
                        values.get(3)
                    )));
                }
                let stream_id = id as u32;
                let name = Value::String(self.config.stream.clone());
                match self.config.role {
                    Role::Publish => self.link.send_command(
                        CSID_STREAM_COMMAND,
                        stream_id,
                        &[
                            Value::String("publish".into()),
                            Value::Number(0.0),
                            Value::Null,
                            name,
                            Value::String("live".into()),
                        ],
                    ),
                    Role::Play => {
                        let mut buffer = [0u8; 10];
                        buffer[..2].copy_from_slice(&USER_CONTROL_SET_BUFFER_LENGTH.to_be_bytes());
                        buffer[2..6].copy_from_slice(&stream_id.to_be_bytes());
                        buffer[6..].copy_from_slice(&PLAY_BUFFER_MS.to_be_bytes());
                        self.link.send_control(MSG_USER_CONTROL, &buffer);
                        // Start -2000: live if there is one, else recorded (as FFmpeg sends it).
                        self.link.send_command(
                            CSID_STREAM_COMMAND,
                            stream_id,
                            &[
                                Value::String("play".into()),
                                Value::Number(0.0),
                                Value::Null,
                                name,
                                Value::Number(-2000.0),
                            ],
                        );
                    }
                }
                self.state = State::Starting { stream_id };
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_status(&mut self, error: bool, code: String, description: String, events: &mut Vec<ClientEvent>) {
        if error {
            self.reject(code, description, events);
            return;
        }
        match (self.state, code.as_str()) {
            (State::Starting { stream_id }, "NetStream.Publish.Start") if self.config.role == Role::Publish => {
                self.state = State::Active { stream_id };
                events.push(ClientEvent::Publishing);
            }
            (State::Starting { stream_id }, "NetStream.Play.Start") if self.config.role == Role::Play => {
                self.state = State::Active { stream_id };
                events.push(ClientEvent::Playing);
            }
            (
                _,
                "NetStream.Unpublish.Success"
                | "NetStream.Play.Stop"
                | "NetStream.Play.Complete"
                | "NetStream.Play.UnpublishNotify",
            ) if self.state != State::Done => {
                self.state = State::Done;
                events.push(ClientEvent::Closed { code });
            }
            _ => events.push(ClientEvent::Status { code, description }),
        }
    }

    fn reject(&mut self, code: String, description: String, events: &mut Vec<ClientEvent>) {
        if self.state == State::Done {
            return;
        }
        self.state = State::Done;
        events.push(ClientEvent::Rejected { code, description });
    }
}

/// `code` and `description` of a status object, cut to [`MAX_STATUS_TEXT`] bytes.
fn status_of(info: Option<&Value>) -> (String, String) {
    let field = |k: &str| {
        let s = info.and_then(|i| i.get(k)).and_then(Value::as_str).unwrap_or("");
        let mut end = s.len().min(MAX_STATUS_TEXT);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    (field("code"), field("description"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::chunk::{ChunkReader, ChunkWriter, MSG_ACK, MSG_SET_CHUNK_SIZE, MSG_VIDEO, MSG_WINDOW_ACK_SIZE};
    use crate::ingest::session::{ServerSession, SessionEvent};
    use crate::media::FrameKind;

    const AVC_SEQUENCE_HEADER: &[u8] =
        &[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 4, 0x68, 0xee, 0x3c, 0x80];

    /// Events as text (frames by kind and time), for comparisons.
    fn names(events: &[ClientEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                ClientEvent::Frame(f) => format!("Frame({:?}, {})", f.kind, f.dts),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A client and a server session wired back to back in memory.
    struct Pipe {
        client: ClientSession,
        server: ServerSession,
        to_server: BytesMut,
        to_client: BytesMut,
        client_events: Vec<ClientEvent>,
        server_events: Vec<SessionEvent>,
    }

    impl Pipe {
        fn new(role: Role, stream: &str) -> Self {
            let url = RtmpUrl::parse(&format!("rtmp://127.0.0.1:1935/live/{stream}")).unwrap();
            Self {
                client: ClientSession::new(url.config(role)),
                server: ServerSession::new(),
                to_server: BytesMut::new(),
                to_client: BytesMut::new(),
                client_events: Vec::new(),
                server_events: Vec::new(),
            }
        }

        /// Moves bytes both ways until neither side has anything to say. The server accepts
        /// publishes when `accept` is set, else rejects them.
        fn pump(&mut self, accept: bool) {
            loop {
                let mut moved = false;
                if let Some(b) = self.client.take_output() {
                    self.to_server.extend_from_slice(&b);
                    moved = true;
                }
                if !self.to_server.is_empty() {
                    let before = self.server_events.len();
                    self.server.feed(&mut self.to_server, &mut self.server_events).unwrap();
                    for ev in &self.server_events[before..] {
                        if matches!(ev, SessionEvent::PublishRequested(_)) {
                            if accept {
                                self.server.accept_publish();
                            } else {
                                self.server.reject_publish("NetStream.Publish.BadName", "not here");
                            }
                        }
                    }
                }
                if let Some(b) = self.server.take_output() {
                    self.to_client.extend_from_slice(&b);
                    moved = true;
                }
                if !self.to_client.is_empty() {
                    self.client.feed(&mut self.to_client, &mut self.client_events).unwrap();
                }
                if !moved {
                    return;
                }
            }
        }

        fn server_frames(&self) -> Vec<&Frame> {
            self.server_events
                .iter()
                .filter_map(|e| match e {
                    SessionEvent::Frame(f) => Some(f),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn parses_urls() {
        let u = RtmpUrl::parse("rtmp://example.com/live/cam1?token=a").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.app.as_str(), u.stream.as_str()),
            ("example.com", 1935, "live", "cam1?token=a")
        );
        assert_eq!(u.config(Role::Publish).tc_url, "rtmp://example.com:1935/live");
        let u = RtmpUrl::parse("rtmp://[::1]:1940/app/a/b").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.stream.as_str()), ("::1", 1940, "a/b"));
        assert_eq!(u.address(), "[::1]:1940");
        for bad in ["http://h/a/b", "rtmp://h", "rtmp://h/app", "rtmp://h:x/a/b", "rtmp:///a/b", "rtmp://h/a/"] {
            assert!(matches!(RtmpUrl::parse(bad), Err(ClientError::Url { .. })), "{bad}");
        }
    }

    #[test]
    fn publishes_frames_to_a_server_session() {
        let mut p = Pipe::new(Role::Publish, "cam1");
        p.pump(true);
        assert_eq!(names(&p.client_events), ["Connected", "Publishing"]);
        assert!(p.client.is_publishing());
        let SessionEvent::PublishRequested(req) = &p.server_events[0] else { panic!("{:?}", p.server_events) };
        assert_eq!((req.app.as_str(), req.stream.as_str(), req.domain.as_str()), ("live", "cam1", "127.0.0.1"));
        assert_eq!(req.tc_url, "rtmp://127.0.0.1:1935/live");

        let meta = amf0::encode_all(&[
            Value::String("onMetaData".into()),
            Value::EcmaArray(vec![("width".into(), Value::Number(320.0))]),
        ]);
        let mut big = vec![0x17, 1, 0, 0, 0];
        big.resize(10_000, 0x65); // spans three 4096-byte chunks
        let sent: Vec<(u8, u32, Vec<u8>)> = vec![
            (flv::TAG_SCRIPT, 0, meta.clone()),
            (flv::TAG_VIDEO, 0, AVC_SEQUENCE_HEADER.to_vec()),
            (flv::TAG_AUDIO, 0, vec![0xaf, 0, 0x12, 0x10]),
            (flv::TAG_VIDEO, 0, big.clone()),
            (flv::TAG_AUDIO, 23, vec![0xaf, 1, 0x21, 0x10]),
            (flv::TAG_VIDEO, 40, vec![0x27, 1, 0, 0, 0x28, 0, 0, 0, 1, 0x41]),
            // An extended timestamp.
            (flv::TAG_AUDIO, 0x0100_0000, vec![0xaf, 1, 0x21, 0x20]),
        ];
        for (ty, ts, body) in &sent {
            p.client.send_media(*ty, *ts, &Bytes::from(body.clone())).unwrap();
        }
        p.pump(true);
        let frames = p.server_frames();
        assert_eq!(frames.len(), sent.len());
        for (f, (ty, ts, body)) in frames.iter().zip(&sent) {
            assert_eq!(f.flv_tag_type(), *ty);
            assert_eq!(f.dts, i64::from(*ts));
            assert_eq!(&f.tag[..], &body[..], "the server sees the FLV tag body, @setDataFrame removed");
        }
        assert_eq!(frames[0].kind, FrameKind::Data);
        assert!(frames[3].keyframe);

        p.client.close();
        p.pump(true);
        assert!(matches!(p.server_events.last(), Some(SessionEvent::Unpublished)));
        assert_eq!(names(&p.client_events).last().unwrap(), r#"Closed { code: "NetStream.Unpublish.Success" }"#);
        assert_eq!(p.client.send_media(flv::TAG_AUDIO, 50, &[0xaf, 1]), Err(ClientError::NotPublishing));
    }

    #[test]
    fn rejected_publish() {
        let mut p = Pipe::new(Role::Publish, "nope");
        p.pump(false);
        assert_eq!(
            names(&p.client_events),
            ["Connected", r#"Rejected { code: "NetStream.Publish.BadName", description: "not here" }"#]
        );
        assert!(!p.client.is_publishing());
    }

    #[test]
    fn play_refused_by_the_server() {
        let mut p = Pipe::new(Role::Play, "cam1");
        p.pump(true);
        assert!(matches!(p.client_events[0], ClientEvent::Connected));
        let ClientEvent::Rejected { code, description } = &p.client_events[1] else { panic!("{:?}", p.client_events) };
        assert_eq!(code, "NetStream.Play.Failed");
        assert!(description.contains("does not play"));
        assert_eq!(p.client_events.len(), 2);
        assert_eq!(p.client.send_media(flv::TAG_AUDIO, 0, &[0xaf, 1]), Err(ClientError::NotPublishing));
    }

    #[test]
    fn media_before_publish_start_is_refused() {
        let mut c = ClientSession::new(RtmpUrl::parse("rtmp://h/live/s").unwrap().config(Role::Publish));
        assert_eq!(c.send_media(flv::TAG_VIDEO, 0, AVC_SEQUENCE_HEADER), Err(ClientError::NotPublishing));
        let hs = c.take_output().unwrap();
        assert_eq!(hs.len(), 1 + HANDSHAKE_SIZE);
        assert_eq!(hs[0], 3);
    }

    #[test]
    fn bad_server_version() {
        let mut c = ClientSession::new(RtmpUrl::parse("rtmp://h/live/s").unwrap().config(Role::Publish));
        let mut buf = BytesMut::from(&b"HTTP/1.1 400"[..]);
        assert_eq!(c.feed(&mut buf, &mut Vec::new()), Err(ClientError::ServerVersion(b'H')));
    }

    /// A fake server script: after the handshake, replies are built by hand to exercise play,
    /// acknowledgements, pings and the server's chunk size.
    #[test]
    fn play_receives_frames_acks_and_pongs() {
        let mut c = ClientSession::new(RtmpUrl::parse("rtmp://h/live/s").unwrap().config(Role::Play));
        let c0c1 = c.take_output().unwrap();
        let mut input = BytesMut::new();
        input.put_u8(3);
        input.extend_from_slice(&[7u8; HANDSHAKE_SIZE]);
        input.extend_from_slice(&c0c1[1..]);
        let mut ev = Vec::new();
        c.feed(&mut input, &mut ev).unwrap();
        let out = c.take_output().unwrap();
        assert_eq!(&out[..HANDSHAKE_SIZE], &[7u8; HANDSHAKE_SIZE][..], "C2 echoes S1");

        let mut reader = ChunkReader::new();
        let mut from_client = BytesMut::from(&out[HANDSHAKE_SIZE..]);
        let mut msgs = Vec::new();
        while let Some(m) = reader.read_message(&mut from_client).unwrap() {
            msgs.push(m);
        }
        assert_eq!(msgs[0].type_id, MSG_SET_CHUNK_SIZE);
        assert_eq!(reader.chunk_size(), CLIENT_CHUNK_SIZE);
        let connect = amf0::decode_all(&msgs[1].payload).unwrap();
        assert_eq!(connect[0], Value::String("connect".into()));
        assert_eq!(connect[2].get("tcUrl"), Some(&Value::String("rtmp://h:1935/live".into())));

        let mut w = ChunkWriter::new();
        let mut s = BytesMut::new();
        w.write(&mut s, 2, 0, MSG_WINDOW_ACK_SIZE, 0, &1000u32.to_be_bytes());
        w.write(&mut s, 2, 0, MSG_SET_CHUNK_SIZE, 0, &300u32.to_be_bytes());
        w.set_chunk_size(300);
        let ok = |txn: f64, v: Value| {
            amf0::encode_all(&[Value::String("_result".into()), Value::Number(txn), Value::Null, v])
        };
        w.write(
            &mut s,
            3,
            0,
            MSG_COMMAND_AMF0,
            0,
            &ok(1.0, Value::Object(vec![("code".into(), Value::String("NetConnection.Connect.Success".into()))])),
        );
        w.write(&mut s, 3, 0, MSG_COMMAND_AMF0, 0, &ok(TXN_CREATE_STREAM, Value::Number(7.0)));
        let status = |code: &str| {
            amf0::encode_all(&[
                Value::String("onStatus".into()),
                Value::Number(0.0),
                Value::Null,
                Value::Object(vec![
                    ("level".into(), Value::String("status".into())),
                    ("code".into(), Value::String(code.into())),
                ]),
            ])
        };
        w.write(&mut s, 5, 0, MSG_COMMAND_AMF0, 7, &status("NetStream.Play.Reset"));
        w.write(&mut s, 5, 0, MSG_COMMAND_AMF0, 7, &status("NetStream.Play.Start"));
        w.write(
            &mut s,
            5,
            0,
            MSG_DATA_AMF0,
            7,
            &amf0::encode_all(&[Value::String("|RtmpSampleAccess".into()), Value::Boolean(true)]),
        );
        w.write(
            &mut s,
            5,
            0,
            MSG_DATA_AMF0,
            7,
            &amf0::encode_all(&[Value::String("onMetaData".into()), Value::EcmaArray(vec![])]),
        );
        w.write(&mut s, 6, 0, MSG_VIDEO, 7, AVC_SEQUENCE_HEADER);
        let mut idr = vec![0x17, 1, 0, 0, 0];
        idr.resize(1200, 1);
        w.write(&mut s, 6, 40, MSG_VIDEO, 7, &idr);
        w.write(&mut s, 2, 0, MSG_USER_CONTROL, 0, &[0, 6, 0, 0, 0x12, 0x34]);
        // Byte by byte: the client waits for whole chunks.
        let mut buf = BytesMut::new();
        for b in s.iter() {
            buf.put_u8(*b);
            c.feed(&mut buf, &mut ev).unwrap();
        }
        assert!(buf.is_empty());
        assert_eq!(
            names(&ev[..3]),
            ["Connected", r#"Status { code: "NetStream.Play.Reset", description: "" }"#, "Playing"]
        );
        let frames: Vec<&Frame> =
            ev.iter().filter_map(|e| if let ClientEvent::Frame(f) = e { Some(f) } else { None }).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].kind, FrameKind::Data);
        assert!(frames[1].config);
        assert_eq!((frames[2].dts, frames[2].tag.len()), (40, 1200));

        let out = c.take_output().unwrap();
        let mut from_client = BytesMut::from(&out[..]);
        let mut msgs = Vec::new();
        while let Some(m) = reader.read_message(&mut from_client).unwrap() {
            msgs.push(m);
        }
        let types: Vec<u8> = msgs.iter().map(|m| m.type_id).collect();
        assert!(types.contains(&MSG_ACK), "{types:?}");
        let play = msgs
            .iter()
            .find(|m| {
                m.type_id == MSG_COMMAND_AMF0
                    && amf0::decode_all(&m.payload).unwrap()[0] == Value::String("play".into())
            })
            .unwrap();
        assert_eq!(play.stream_id, 7);
        let pong = msgs.iter().rfind(|m| m.type_id == MSG_USER_CONTROL).unwrap();
        assert_eq!(&pong.payload[..], &[0, 7, 0, 0, 0x12, 0x34]);
        // 3073 handshake bytes plus the rest crossed the 1000-byte window: one ack per feed that crossed it.
        let ack = msgs.iter().find(|m| m.type_id == MSG_ACK).unwrap();
        assert!(u32::from_be_bytes(ack.payload[..4].try_into().unwrap()) >= 1000);
    }
}
