//! RTMP server session, sans-IO: feed it the bytes a publisher sends, it runs the handshake,
//! decodes chunks, answers protocol control and commands, and emits [`SessionEvent`]s. What it
//! wants sent back is collected and handed out by [`ServerSession::take_output`].
//!
//! The application decides whether a publish goes ahead: a `publish` command yields
//! [`SessionEvent::PublishRequested`], answered with [`ServerSession::accept_publish`] or
//! [`ServerSession::reject_publish`]. Replies follow what nginx-rtmp and SRS send, which is
//! what FFmpeg, OBS and hardware encoders expect.

use bytes::{Bytes, BytesMut};

use super::chunk::{
    strip_amf3_prefix, ChunkError, RawMessage, MSG_COMMAND_AMF0, MSG_COMMAND_AMF3, MSG_SET_PEER_BANDWIDTH,
    MSG_USER_CONTROL, MSG_WINDOW_ACK_SIZE,
};
use super::handshake::{HandshakeError, HandshakeStatus, ServerHandshake};
use super::link::Link;
use super::media_in::{MediaEvent, MediaIn};
use crate::media::amf0::{self, Value};
use crate::media::{Frame, MediaError};

/// Window Acknowledgement Size announced on connect: the client acks every this many bytes.
pub const WINDOW_ACK_SIZE: u32 = 2_500_000;
/// Set Peer Bandwidth announced on connect (limit type 2, dynamic).
pub const PEER_BANDWIDTH: u32 = 2_500_000;
/// Chunk size the server writes with once connected.
pub const OUT_CHUNK_SIZE: usize = 4096;
/// Message stream id handed out by `createStream` (one publish per connection).
pub const PUBLISH_STREAM_ID: u32 = 1;

/// Chunk stream for connection-level command replies.
const CSID_COMMAND: u32 = 3;
/// Chunk stream for stream-level status messages.
const CSID_STATUS: u32 = 5;

const USER_CONTROL_STREAM_BEGIN: u16 = 0;
const PEER_BANDWIDTH_DYNAMIC: u8 = 2;

/// What the publisher wants to publish, for the application to accept or reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishRequest {
    /// The connect command's `app`, without its query string.
    pub app: String,
    /// The publish name, without its query string.
    pub stream: String,
    /// `domain=` or `vhost=` from the publish name or the app, else the host of `tcUrl`
    /// (lowercase, no port).
    pub domain: String,
    /// Query parameters of the app, then of the publish name, percent-decoded.
    pub params: Vec<(String, String)>,
    pub tc_url: String,
    /// `live`, `record` or `append`, as the client sent it (`live` when absent).
    pub publish_type: String,
}

#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// The application must call `accept_publish()` or `reject_publish()`. Frames that arrive
    /// before it decides are still emitted, after this event.
    PublishRequested(Box<PublishRequest>),
    /// An audio, video or data message as a frame; `dts` is unwrapped past 32 bits.
    Frame(Frame),
    /// `FCUnpublish` / `deleteStream` / `closeStream` ended the requested or accepted publish.
    Unpublished,
    /// A single message was skipped (e.g. a frame `parse_tag` rejects); the session goes on.
    Warning(String),
}

impl MediaEvent for SessionEvent {
    fn frame(f: Frame) -> Self {
        SessionEvent::Frame(f)
    }
    fn warning(w: String) -> Self {
        SessionEvent::Warning(w)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SessionError {
    #[error("RTMP handshake failed")]
    Handshake(#[from] HandshakeError),
    #[error("corrupt RTMP chunk stream")]
    Chunk(#[from] ChunkError),
    #[error("malformed AMF0 in {context}")]
    Amf {
        context: &'static str,
        #[source]
        source: MediaError,
    },
    #[error("RTMP protocol violation: {0}")]
    Protocol(String),
}

#[derive(Debug)]
struct Connection {
    app: String,
    tc_url: String,
    app_params: Vec<(String, String)>,
}

#[derive(Debug)]
enum Publish {
    Idle,
    Pending { stream_id: u32, stream: String },
    Active { stream_id: u32 },
    Rejected,
}

/// Server side of one RTMP connection.
#[derive(Debug)]
pub struct ServerSession {
    /// `Some` until the handshake completes.
    handshake: Option<ServerHandshake>,
    link: Link,
    connection: Option<Connection>,
    publish: Publish,
    media: MediaIn,
}

impl Default for ServerSession {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerSession {
    pub fn new() -> Self {
        Self::with_budget(None)
    }

    /// A session whose messages being reassembled count against `budget` (shared by the
    /// connections of a server).
    pub fn with_budget(budget: Option<std::sync::Arc<crate::ingest::chunk::ReassemblyBudget>>) -> Self {
        Self {
            handshake: Some(ServerHandshake::new()),
            link: Link::with_reader(BytesMut::new(), crate::ingest::chunk::ChunkReader::with_budget(budget)),
            connection: None,
            publish: Publish::Idle,
            media: MediaIn::published(),
        }
    }

    /// Consumes what it can of `buf` (leaving incomplete data in it), appends events.
    ///
    /// Payloads of single-chunk messages are split off `buf` without copying. An error means
    /// the connection is unusable: send what `take_output` holds, then close.
    pub fn feed(&mut self, buf: &mut BytesMut, events: &mut Vec<SessionEvent>) -> Result<(), SessionError> {
        let before = buf.len();
        let result = self.feed_inner(buf, events);
        self.link.received(before.saturating_sub(buf.len()));
        if result.is_ok() {
            self.link.maybe_ack();
        }
        result
    }

    /// Whether the handshake is complete.
    pub fn handshake_done(&self) -> bool {
        self.handshake.is_none()
    }

    /// Bytes to send to the peer (take and write them after every feed / accept / reject).
    pub fn take_output(&mut self) -> Option<Bytes> {
        self.link.take_output()
    }

    /// Accepts the pending publish: StreamBegin, `onFCPublish`, `onStatus` Publish.Start.
    /// Does nothing when no publish is pending.
    pub fn accept_publish(&mut self) {
        let Publish::Pending { stream_id, stream } = &self.publish else {
            return;
        };
        let (stream_id, stream) = (*stream_id, stream.clone());
        let mut begin = [0u8; 6];
        begin[..2].copy_from_slice(&USER_CONTROL_STREAM_BEGIN.to_be_bytes());
        begin[2..].copy_from_slice(&stream_id.to_be_bytes());
        self.link.send_control(MSG_USER_CONTROL, &begin);
        self.link.send_command(
            CSID_STATUS,
            stream_id,
            &[
                Value::String("onFCPublish".into()),
                Value::Number(0.0),
                Value::Null,
                Value::Object(vec![
                    ("code".into(), Value::String("NetStream.Publish.Start".into())),
                    ("description".into(), Value::String(format!("FCPublish to stream {stream}."))),
                ]),
            ],
        );
        self.send_status(stream_id, "status", "NetStream.Publish.Start", &format!("{stream} is now published."));
        self.publish = Publish::Active { stream_id };
    }

    /// Rejects the pending publish with an error `onStatus` (`code` such as
    /// `NetStream.Publish.BadName` or `NetStream.Publish.Failed`). The application should then
    /// send the output and close. Does nothing when no publish is pending.
    pub fn reject_publish(&mut self, code: &str, description: &str) {
        if let Publish::Pending { stream_id, .. } = self.publish {
            self.send_status(stream_id, "error", code, description);
            self.publish = Publish::Rejected;
        }
    }

    /// Bytes consumed from the peer so far, handshake included.
    pub fn bytes_received(&self) -> u64 {
        self.link.bytes_received()
    }

    fn feed_inner(&mut self, buf: &mut BytesMut, events: &mut Vec<SessionEvent>) -> Result<(), SessionError> {
        if let Some(hs) = &mut self.handshake {
            match hs.process(buf, self.link.out())? {
                HandshakeStatus::NeedMore => return Ok(()),
                HandshakeStatus::Done => self.handshake = None,
            }
        }
        while let Some(msg) = self.link.next_message(buf)? {
            self.handle_message(msg, events)?;
        }
        Ok(())
    }

    fn handle_message(&mut self, msg: RawMessage, events: &mut Vec<SessionEvent>) -> Result<(), SessionError> {
        match msg.type_id {
            t if MediaIn::handles(t) => {
                let accept = matches!(self.publish, Publish::Pending { .. } | Publish::Active { .. });
                self.media.message(msg, accept, events);
                Ok(())
            }
            MSG_COMMAND_AMF0 => self.handle_command(msg.stream_id, &msg.payload, events),
            MSG_COMMAND_AMF3 => self.handle_command(msg.stream_id, &strip_amf3_prefix(msg.payload), events),
            // Shared objects and anything unknown: not used by publishers.
            _ => Ok(()),
        }
    }

    fn handle_command(
        &mut self,
        stream_id: u32,
        payload: &[u8],
        events: &mut Vec<SessionEvent>,
    ) -> Result<(), SessionError> {
        let values =
            amf0::decode_all(payload).map_err(|source| SessionError::Amf { context: "command message", source })?;
        let Some(Value::String(name)) = values.first() else {
            return Err(SessionError::Protocol("command message does not start with a command name".into()));
        };
        let txn = values.get(1).and_then(Value::as_f64).unwrap_or(0.0);
        let name = name.as_str();
        let needs_connection = matches!(
            name,
            "releaseStream" | "FCPublish" | "createStream" | "publish" | "FCUnpublish" | "deleteStream" | "closeStream"
        );
        if needs_connection && self.connection.is_none() {
            return Err(SessionError::Protocol(format!("'{name}' command before 'connect'")));
        }
        match name {
            "connect" => self.on_connect(txn, values.get(2)),
            "releaseStream" | "FCPublish" => {
                self.send_result(txn, Value::Undefined);
                Ok(())
            }
            "createStream" => {
                self.send_result(txn, Value::Number(f64::from(PUBLISH_STREAM_ID)));
                Ok(())
            }
            "publish" => {
                self.on_publish(stream_id, &values, events);
                Ok(())
            }
            "FCUnpublish" | "deleteStream" | "closeStream" => {
                self.on_unpublish(events);
                Ok(())
            }
            "play" | "play2" => {
                self.send_status(
                    stream_id,
                    "error",
                    "NetStream.Play.Failed",
                    "This server records streams; it does not play them.",
                );
                Ok(())
            }
            // getStreamLength, _checkbw, receiveAudio and the like: nothing to answer.
            _ => Ok(()),
        }
    }

    fn on_connect(&mut self, txn: f64, command_object: Option<&Value>) -> Result<(), SessionError> {
        if self.connection.is_some() {
            return Err(SessionError::Protocol("second 'connect' on one connection".into()));
        }
        let obj = match command_object {
            Some(v @ (Value::Object(_) | Value::EcmaArray(_))) => v,
            _ => return Err(SessionError::Protocol("'connect' without a command object".into())),
        };
        let app_full = obj.get("app").and_then(Value::as_str).unwrap_or("");
        let (app, query) = split_query(app_full);
        let object_encoding = obj.get("objectEncoding").and_then(Value::as_f64).unwrap_or(0.0);
        self.connection = Some(Connection {
            app: app.to_string(),
            tc_url: obj.get("tcUrl").and_then(Value::as_str).unwrap_or("").to_string(),
            app_params: parse_query(query),
        });

        self.link.send_control(MSG_WINDOW_ACK_SIZE, &WINDOW_ACK_SIZE.to_be_bytes());
        let mut bw = [0u8; 5];
        bw[..4].copy_from_slice(&PEER_BANDWIDTH.to_be_bytes());
        bw[4] = PEER_BANDWIDTH_DYNAMIC;
        self.link.send_control(MSG_SET_PEER_BANDWIDTH, &bw);
        self.link.set_chunk_size(OUT_CHUNK_SIZE);
        self.link.send_command(
            CSID_COMMAND,
            0,
            &[
                Value::String("_result".into()),
                Value::Number(txn),
                Value::Object(vec![
                    ("fmsVer".into(), Value::String("FMS/3,0,1,123".into())),
                    ("capabilities".into(), Value::Number(31.0)),
                ]),
                Value::Object(vec![
                    ("level".into(), Value::String("status".into())),
                    ("code".into(), Value::String("NetConnection.Connect.Success".into())),
                    ("description".into(), Value::String("Connection succeeded.".into())),
                    ("objectEncoding".into(), Value::Number(object_encoding)),
                ]),
            ],
        );
        Ok(())
    }

    fn on_publish(&mut self, stream_id: u32, values: &[Value], events: &mut Vec<SessionEvent>) {
        if matches!(self.publish, Publish::Pending { .. } | Publish::Active { .. }) {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Publish.BadName",
                "A stream is already being published on this connection.",
            );
            return;
        }
        let raw_name = values.get(3).and_then(Value::as_str).unwrap_or("");
        let publish_type = values.get(4).and_then(Value::as_str).unwrap_or("live");
        let (stream, query) = split_query(raw_name);
        if stream.is_empty() {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Publish.BadName",
                "The publish command has no stream name.",
            );
            self.publish = Publish::Rejected;
            return;
        }
        let Some(conn) = &self.connection else {
            return;
        };
        let name_params = parse_query(query);
        let domain = find_domain(&name_params)
            .or_else(|| find_domain(&conn.app_params))
            .unwrap_or_else(|| host_of(&conn.tc_url));
        let mut params = conn.app_params.clone();
        params.extend(name_params);
        let request = PublishRequest {
            app: conn.app.clone(),
            stream: stream.to_string(),
            domain,
            params,
            tc_url: conn.tc_url.clone(),
            publish_type: publish_type.to_string(),
        };
        self.publish = Publish::Pending { stream_id, stream: request.stream.clone() };
        self.media.reset();
        events.push(SessionEvent::PublishRequested(Box::new(request)));
    }

    fn on_unpublish(&mut self, events: &mut Vec<SessionEvent>) {
        let stream_id = match self.publish {
            Publish::Pending { stream_id, .. } | Publish::Active { stream_id } => stream_id,
            Publish::Idle | Publish::Rejected => return,
        };
        self.publish = Publish::Idle;
        self.send_status(stream_id, "status", "NetStream.Unpublish.Success", "Stopped publishing.");
        events.push(SessionEvent::Unpublished);
    }

    fn send_result(&mut self, txn: f64, value: Value) {
        self.link.send_command(
            CSID_COMMAND,
            0,
            &[Value::String("_result".into()), Value::Number(txn), Value::Null, value],
        );
    }

    fn send_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        self.link.send_command(
            CSID_STATUS,
            stream_id,
            &[
                Value::String("onStatus".into()),
                Value::Number(0.0),
                Value::Null,
                Value::Object(vec![
                    ("level".into(), Value::String(level.into())),
                    ("code".into(), Value::String(code.into())),
                    ("description".into(), Value::String(description.into())),
                ]),
            ],
        );
    }
}

fn split_query(s: &str) -> (&str, &str) {
    s.split_once('?').unwrap_or((s, ""))
}

/// `a=1&b=%20x&flag` → `[(a, 1), (b, " x"), (flag, "")]`.
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn find_domain(params: &[(String, String)]) -> Option<String> {
    params.iter().find(|(k, v)| (k == "domain" || k == "vhost") && !v.is_empty()).map(|(_, v)| normal_host(v))
}

/// A host name as one spelling: lowercase, without the root's trailing dot (`LOCALHOST.` is
/// `localhost`).
fn normal_host(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Host of a URL such as `rtmp://user@Example.com:1935/live?x=1`: `example.com`.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    normal_host(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::chunk::{
        ChunkReader, ChunkWriter, MAX_MESSAGE_SIZE, MSG_ACK, MSG_AGGREGATE, MSG_AUDIO, MSG_DATA_AMF0, MSG_DATA_AMF3,
        MSG_SET_CHUNK_SIZE, MSG_VIDEO,
    };
    use crate::ingest::handshake::{tests::simple_c1, HANDSHAKE_SIZE};
    use crate::ingest::link::USER_CONTROL_PING_REQUEST;
    use crate::media::flv;
    use crate::media::{Codec, FrameKind};
    use bytes::BufMut;

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    fn user_control(event: u16, data: &[u8]) -> Vec<u8> {
        let mut v = event.to_be_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    fn obj(props: &[(&str, Value)]) -> Value {
        Value::Object(props.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    /// A publisher talking to a session: writes chunks with its own writer, decodes the
    /// session's replies with a chunk reader.
    struct Client {
        session: ServerSession,
        writer: ChunkWriter,
        reader: ChunkReader,
        inbox: BytesMut,
        events: Vec<SessionEvent>,
    }

    impl Client {
        fn new() -> Self {
            let mut session = ServerSession::new();
            let mut buf = BytesMut::new();
            buf.put_u8(3);
            buf.extend_from_slice(&simple_c1());
            let mut events = Vec::new();
            session.feed(&mut buf, &mut events).unwrap();
            let s0s1s2 = session.take_output().unwrap();
            assert_eq!(s0s1s2.len(), 1 + 2 * HANDSHAKE_SIZE);
            buf.extend_from_slice(&[0u8; HANDSHAKE_SIZE]);
            session.feed(&mut buf, &mut events).unwrap();
            assert!(buf.is_empty() && events.is_empty());
            Self { session, writer: ChunkWriter::new(), reader: ChunkReader::new(), inbox: BytesMut::new(), events }
        }

        fn encode(&self, csid: u32, ts: u32, type_id: u8, sid: u32, payload: &[u8]) -> BytesMut {
            let mut b = BytesMut::new();
            self.writer.write(&mut b, csid, ts, type_id, sid, payload);
            b
        }

        fn try_send(&mut self, csid: u32, ts: u32, type_id: u8, sid: u32, payload: &[u8]) -> Result<(), SessionError> {
            let mut b = self.encode(csid, ts, type_id, sid, payload);
            let r = self.session.feed(&mut b, &mut self.events);
            if r.is_ok() {
                assert!(b.is_empty());
            }
            r
        }

        fn send(&mut self, csid: u32, ts: u32, type_id: u8, sid: u32, payload: &[u8]) {
            self.try_send(csid, ts, type_id, sid, payload).unwrap();
        }

        fn command(&mut self, sid: u32, values: &[Value]) {
            self.send(3, 0, MSG_COMMAND_AMF0, sid, &amf0::encode_all(values));
        }

        fn replies(&mut self) -> Vec<RawMessage> {
            if let Some(out) = self.session.take_output() {
                self.inbox.extend_from_slice(&out);
            }
            let mut v = Vec::new();
            while let Some(m) = self.reader.read_message(&mut self.inbox).unwrap() {
                v.push(m);
            }
            v
        }

        fn events(&mut self) -> Vec<SessionEvent> {
            std::mem::take(&mut self.events)
        }

        fn connect(&mut self, app: &str, tc_url: &str) {
            self.command(
                0,
                &[
                    s("connect"),
                    Value::Number(1.0),
                    obj(&[("app", s(app)), ("tcUrl", s(tc_url)), ("objectEncoding", Value::Number(0.0))]),
                ],
            );
        }

        fn publish(&mut self, name: &str) -> PublishRequest {
            self.command(1, &[s("publish"), Value::Number(5.0), Value::Null, s(name), s("live")]);
            let ev = self.events();
            match ev.as_slice() {
                [SessionEvent::PublishRequested(r)] => (**r).clone(),
                other => panic!("expected a publish request, got {other:?}"),
            }
        }

        /// Handshake, connect, createStream, publish and accept; replies drained.
        fn publishing() -> Self {
            let mut c = Self::new();
            c.connect("live", "rtmp://example.com/live");
            c.command(0, &[s("createStream"), Value::Number(4.0), Value::Null]);
            c.publish("cam");
            c.session.accept_publish();
            c.replies();
            c
        }
    }

    fn amf(m: &RawMessage) -> Vec<Value> {
        assert_eq!(m.type_id, MSG_COMMAND_AMF0);
        amf0::decode_all(&m.payload).unwrap()
    }

    fn frames(events: &[SessionEvent]) -> Vec<&Frame> {
        events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Frame(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    const AVC_SEQUENCE_HEADER: &[u8] =
        &[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 4, 0x68, 0xee, 0x3c, 0x80];

    #[test]
    fn full_publish_sequence() {
        let mut c = Client::new();
        c.connect("live", "rtmp://Example.COM:1935/live");
        let r = c.replies();
        let kinds: Vec<u8> = r.iter().map(|m| m.type_id).collect();
        assert_eq!(kinds, vec![MSG_WINDOW_ACK_SIZE, MSG_SET_PEER_BANDWIDTH, MSG_SET_CHUNK_SIZE, MSG_COMMAND_AMF0]);
        assert_eq!(&r[0].payload[..], &2_500_000u32.to_be_bytes());
        assert_eq!(&r[1].payload[..], &[0x00, 0x26, 0x25, 0xa0, 2]);
        assert_eq!(&r[2].payload[..], &4096u32.to_be_bytes());
        assert_eq!(c.reader.chunk_size(), 4096);
        let v = amf(&r[3]);
        assert_eq!(v[0], s("_result"));
        assert_eq!(v[1], Value::Number(1.0));
        assert_eq!(v[2].get("fmsVer"), Some(&s("FMS/3,0,1,123")));
        assert_eq!(v[2].get("capabilities"), Some(&Value::Number(31.0)));
        assert_eq!(v[3].get("code"), Some(&s("NetConnection.Connect.Success")));
        assert_eq!(v[3].get("objectEncoding"), Some(&Value::Number(0.0)));

        c.command(0, &[s("releaseStream"), Value::Number(2.0), Value::Null, s("cam1?domain=x&token=y")]);
        c.command(0, &[s("FCPublish"), Value::Number(3.0), Value::Null, s("cam1?domain=x&token=y")]);
        c.command(0, &[s("createStream"), Value::Number(4.0), Value::Null]);
        let r = c.replies();
        let results: Vec<Vec<Value>> = r.iter().map(amf).collect();
        assert_eq!(results[0], vec![s("_result"), Value::Number(2.0), Value::Null, Value::Undefined]);
        assert_eq!(results[1], vec![s("_result"), Value::Number(3.0), Value::Null, Value::Undefined]);
        assert_eq!(results[2], vec![s("_result"), Value::Number(4.0), Value::Null, Value::Number(1.0)]);
        assert!(c.events().is_empty());

        let req = c.publish("cam1?domain=x&token=y");
        assert_eq!(
            req,
            PublishRequest {
                app: "live".into(),
                stream: "cam1".into(),
                domain: "x".into(),
                params: vec![("domain".into(), "x".into()), ("token".into(), "y".into())],
                tc_url: "rtmp://Example.COM:1935/live".into(),
                publish_type: "live".into(),
            }
        );
        assert!(c.replies().is_empty(), "nothing is answered before the application decides");

        c.session.accept_publish();
        let r = c.replies();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].type_id, &r[0].payload[..]), (MSG_USER_CONTROL, &[0u8, 0, 0, 0, 0, 1][..]));
        let fc = amf(&r[1]);
        assert_eq!(fc[0], s("onFCPublish"));
        assert_eq!(fc[3].get("code"), Some(&s("NetStream.Publish.Start")));
        let st = amf(&r[2]);
        assert_eq!(r[2].stream_id, 1);
        assert_eq!(st[0], s("onStatus"));
        assert_eq!(st[3].get("level"), Some(&s("status")));
        assert_eq!(st[3].get("code"), Some(&s("NetStream.Publish.Start")));

        let meta = amf0::encode_all(&[
            s("@setDataFrame"),
            s("onMetaData"),
            Value::EcmaArray(vec![
                ("width".into(), Value::Number(1280.0)),
                ("videocodecid".into(), Value::Number(7.0)),
            ]),
        ]);
        c.send(4, 0, MSG_DATA_AMF0, 1, &meta);
        c.send(6, 0, MSG_VIDEO, 1, AVC_SEQUENCE_HEADER);
        c.send(4, 0, MSG_AUDIO, 1, &[0xaf, 0, 0x12, 0x10]);
        // A 300-byte NAL unit: the message spans three 128-byte chunks.
        let mut idr = vec![0x17, 1, 0, 0, 0x50, 0, 0, 0x01, 0x2c, 0x65];
        idr.resize(5 + 4 + 300, 0xab);
        c.send(6, 0, MSG_VIDEO, 1, &idr);
        c.send(4, 23, MSG_AUDIO, 1, &[0xaf, 1, 0x21, 0x10]);
        c.send(4, 46, MSG_AUDIO, 1, &[0xaf, 1, 0x21, 0x20]);
        let ev = c.events();
        let f = frames(&ev);
        assert_eq!(f.len(), 6, "{ev:?}");
        assert_eq!(f[0].kind, FrameKind::Data);
        assert_eq!(amf0::decode_all(&f[0].tag).unwrap()[0], s("onMetaData"));
        assert!(f[1].config && f[1].keyframe && f[1].codec == Codec::H264);
        assert!(f[2].config && f[2].codec == Codec::Aac);
        assert_eq!(f[2].payload_ref(), &[0x12, 0x10]);
        assert!(f[3].keyframe && !f[3].config && f[3].cts == 0x50);
        assert_eq!(&f[3].tag[..], &idr[..]);
        assert_eq!((f[4].dts, f[5].dts), (23, 46));
        assert_eq!(f[5].payload_ref(), &[0x21, 0x20]);
        assert!(c.replies().is_empty());

        c.command(0, &[s("FCUnpublish"), Value::Number(6.0), Value::Null, s("cam1")]);
        c.command(0, &[s("deleteStream"), Value::Number(7.0), Value::Null, Value::Number(1.0)]);
        let ev = c.events();
        assert_eq!(ev.len(), 1);
        assert!(matches!(ev[0], SessionEvent::Unpublished));
        let st = amf(&c.replies()[0]);
        assert_eq!(st[3].get("code"), Some(&s("NetStream.Unpublish.Success")));
        // Media after unpublish is dropped.
        c.send(4, 69, MSG_AUDIO, 1, &[0xaf, 1, 0x21, 0x20]);
        assert!(c.events().is_empty());
    }

    #[test]
    fn whole_session_fed_byte_by_byte() {
        let mut input = BytesMut::new();
        input.put_u8(3);
        input.extend_from_slice(&simple_c1());
        input.extend_from_slice(&[0u8; HANDSHAKE_SIZE]);
        let mut w = ChunkWriter::new();
        let connect = amf0::encode_all(&[
            s("connect"),
            Value::Number(1.0),
            obj(&[("app", s("live")), ("tcUrl", s("rtmp://h/live"))]),
        ]);
        w.write(&mut input, 3, 0, MSG_COMMAND_AMF0, 0, &connect);
        w.write(
            &mut input,
            3,
            0,
            MSG_COMMAND_AMF0,
            0,
            &amf0::encode_all(&[s("createStream"), Value::Number(2.0), Value::Null]),
        );
        let publish = amf0::encode_all(&[s("publish"), Value::Number(3.0), Value::Null, s("a"), s("live")]);
        w.write(&mut input, 8, 0, MSG_COMMAND_AMF0, 1, &publish);
        input.extend_from_slice(&[0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0, 200]);
        w.set_chunk_size(200);
        w.write(&mut input, 6, 0, MSG_VIDEO, 1, AVC_SEQUENCE_HEADER);
        let mut big = vec![0x27, 1, 0, 0, 0];
        big.resize(1000, 7);
        w.write(&mut input, 6, 40, MSG_VIDEO, 1, &big);
        let total = input.len() as u64;

        let mut session = ServerSession::new();
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for b in input.iter() {
            buf.put_u8(*b);
            session.feed(&mut buf, &mut events).unwrap();
        }
        assert!(buf.is_empty());
        assert_eq!(session.bytes_received(), total);
        assert!(matches!(events[0], SessionEvent::PublishRequested(_)));
        let f = frames(&events);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].dts, 40);
        assert_eq!(&f[1].tag[..], &big[..]);
    }

    #[test]
    fn frame_from_a_single_chunk_is_zero_copy() {
        let mut c = Client::publishing();
        let mut b = c.encode(6, 0, MSG_VIDEO, 1, AVC_SEQUENCE_HEADER);
        let meta = amf0::encode_all(&[s("@setDataFrame"), s("onMetaData"), Value::EcmaArray(vec![])]);
        c.writer.write(&mut b, 4, 0, MSG_DATA_AMF0, 1, &meta);
        let range = b.as_ptr() as usize..b.as_ptr() as usize + b.len();
        c.session.feed(&mut b, &mut c.events).unwrap();
        let ev = c.events();
        let f = frames(&ev);
        assert_eq!(f.len(), 2);
        for f in f {
            let p = f.tag.as_ptr() as usize;
            assert!(range.contains(&p) && range.contains(&(p + f.tag.len() - 1)), "frame copied");
        }
    }

    #[test]
    fn rejected_publish_gets_an_error_status_and_media_is_dropped() {
        let mut c = Client::new();
        c.connect("live", "rtmp://h/live");
        c.command(0, &[s("createStream"), Value::Number(2.0), Value::Null]);
        c.replies();
        c.publish("nope");
        c.session.reject_publish("NetStream.Publish.BadName", "Stream name is not allowed.");
        let r = c.replies();
        assert_eq!(r.len(), 1);
        let st = amf(&r[0]);
        assert_eq!(st[3].get("level"), Some(&s("error")));
        assert_eq!(st[3].get("code"), Some(&s("NetStream.Publish.BadName")));
        assert_eq!(st[3].get("description"), Some(&s("Stream name is not allowed.")));
        c.send(6, 0, MSG_VIDEO, 1, AVC_SEQUENCE_HEADER);
        c.command(0, &[s("deleteStream"), Value::Number(3.0), Value::Null, Value::Number(1.0)]);
        assert!(c.events().is_empty());
        // A second decision is a no-op.
        c.session.accept_publish();
        assert!(c.replies().is_empty());
    }

    #[test]
    fn frames_before_the_decision_follow_the_request() {
        let mut c = Client::new();
        c.connect("live", "rtmp://h/live");
        c.publish("cam");
        c.send(6, 0, MSG_VIDEO, 1, AVC_SEQUENCE_HEADER);
        assert_eq!(frames(&c.events()).len(), 1);
    }

    #[test]
    fn media_before_publish_is_ignored() {
        let mut c = Client::new();
        c.connect("live", "rtmp://h/live");
        c.send(6, 0, MSG_VIDEO, 1, AVC_SEQUENCE_HEADER);
        assert!(c.events().is_empty());
    }

    #[test]
    fn play_is_refused() {
        let mut c = Client::new();
        c.connect("live", "rtmp://h/live");
        c.replies();
        c.command(1, &[s("play"), Value::Number(0.0), Value::Null, s("cam")]);
        let r = c.replies();
        let st = amf(&r[0]);
        assert_eq!(r[0].stream_id, 1);
        assert_eq!(st[3].get("code"), Some(&s("NetStream.Play.Failed")));
        assert_eq!(st[3].get("level"), Some(&s("error")));
    }

    #[test]
    fn stream_identity_from_app_query_tc_url_and_percent_encoding() {
        let mut c = Client::new();
        c.connect("live?vhost=Tenant.example&k=v", "rtmp://user@Host.Example:1935/live?vhost=Tenant.example&k=v");
        let r = c.publish("room%2F1?sign=a%2Bb%3D&empty=&flag");
        assert_eq!(r.app, "live");
        assert_eq!(r.stream, "room%2F1");
        assert_eq!(r.domain, "tenant.example");
        assert_eq!(
            r.params,
            vec![
                ("vhost".into(), "Tenant.example".into()),
                ("k".into(), "v".into()),
                ("sign".into(), "a+b=".into()),
                ("empty".into(), String::new()),
                ("flag".into(), String::new()),
            ]
        );
        // The publish name's domain wins over the app's.
        let mut c = Client::new();
        c.connect("live?domain=a.com", "rtmp://h/live");
        assert_eq!(c.publish("s?domain=b.com").domain, "b.com");
    }

    #[test]
    fn host_of_urls() {
        assert_eq!(host_of("rtmp://Example.com:1935/live"), "example.com");
        assert_eq!(host_of("rtmp://example.com/live?x=1"), "example.com");
        assert_eq!(host_of("rtmp://[::1]:1935/live"), "::1");
        assert_eq!(host_of("rtmp://u:p@10.0.0.1/live"), "10.0.0.1");
        assert_eq!(host_of(""), "");
        assert_eq!(host_of("rtmp://LOCALHOST.:1935/live"), "localhost", "one spelling per host");
        assert_eq!(find_domain(&[("domain".into(), "Example.COM.".into())]).as_deref(), Some("example.com"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%e4%bd%a0"), "你");
    }

    #[test]
    fn acknowledgement_after_the_window() {
        let mut c = Client::publishing();
        c.send(2, 0, MSG_WINDOW_ACK_SIZE, 0, &1000u32.to_be_bytes());
        assert!(c.replies().is_empty());
        let mut frame = vec![0x27, 1, 0, 0, 0];
        frame.resize(600, 1);
        c.send(6, 0, MSG_VIDEO, 1, &frame);
        assert!(c.replies().is_empty(), "window not crossed yet");
        c.send(6, 40, MSG_VIDEO, 1, &frame);
        let r = c.replies();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].type_id, MSG_ACK);
        let seq = u32::from_be_bytes(r[0].payload[..4].try_into().unwrap());
        assert_eq!(u64::from(seq), c.session.bytes_received());
    }

    #[test]
    fn ping_request_gets_a_response() {
        let mut c = Client::publishing();
        c.send(2, 0, MSG_USER_CONTROL, 0, &user_control(USER_CONTROL_PING_REQUEST, &[0, 0, 0x12, 0x34]));
        // Set Buffer Length is accepted silently.
        c.send(2, 0, MSG_USER_CONTROL, 0, &user_control(3, &[0, 0, 0, 1, 0, 0, 0x0b, 0xb8]));
        let r = c.replies();
        assert_eq!(r.len(), 1);
        assert_eq!(&r[0].payload[..], &[0, 7, 0, 0, 0x12, 0x34]);
        assert_eq!(
            c.try_send(2, 0, MSG_USER_CONTROL, 0, &[0]),
            Err(SessionError::Chunk(ChunkError::ShortControlMessage { type_id: MSG_USER_CONTROL, len: 1, need: 2 }))
        );
    }

    #[test]
    fn amf3_command_and_data_messages() {
        let mut c = Client::new();
        let mut connect = vec![0u8];
        connect.extend_from_slice(&amf0::encode_all(&[
            s("connect"),
            Value::Number(1.0),
            obj(&[("app", s("live")), ("tcUrl", s("rtmp://h/live")), ("objectEncoding", Value::Number(3.0))]),
        ]));
        c.send(3, 0, MSG_COMMAND_AMF3, 0, &connect);
        let r = c.replies();
        assert_eq!(amf(&r[3])[3].get("objectEncoding"), Some(&Value::Number(3.0)));
        c.publish("cam");
        c.session.accept_publish();
        let mut data = vec![0u8];
        data.extend_from_slice(&amf0::encode_all(&[s("onMetaData"), Value::EcmaArray(vec![])]));
        c.send(4, 0, MSG_DATA_AMF3, 1, &data);
        let ev = c.events();
        let f = frames(&ev);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, FrameKind::Data);
        assert_eq!(&f[0].tag[..], &data[1..]);
    }

    #[test]
    fn aggregate_message_is_split_into_frames() {
        let mut c = Client::publishing();
        let mut agg = Vec::new();
        for (ty, ts, body) in [(8u8, 1000u32, &[0xafu8, 1, 0x21][..]), (9, 1040, &[0x27, 1, 0, 0, 0, 9][..])] {
            agg.extend_from_slice(&flv::tag_header(ty, body.len(), i64::from(ts)));
            agg.extend_from_slice(body);
            agg.extend_from_slice(&flv::prev_tag_size(body.len()));
        }
        c.send(6, 500, MSG_AGGREGATE, 1, &agg);
        let ev = c.events();
        let f = frames(&ev);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].kind, f[0].dts), (FrameKind::Audio, 500));
        assert_eq!((f[1].kind, f[1].dts), (FrameKind::Video, 540));
    }

    #[test]
    fn bad_frame_is_skipped_with_a_warning() {
        let mut c = Client::publishing();
        c.send(6, 0, MSG_VIDEO, 1, &[0x17]);
        c.send(4, 0, MSG_DATA_AMF0, 1, &[0x02, 0, 9, b'x']);
        c.send(6, 0, MSG_VIDEO, 1, AVC_SEQUENCE_HEADER);
        let ev = c.events();
        assert!(matches!(&ev[0], SessionEvent::Warning(w) if w.contains("video")), "{ev:?}");
        assert!(matches!(&ev[1], SessionEvent::Warning(w) if w.contains("data")), "{ev:?}");
        assert!(matches!(&ev[2], SessionEvent::Frame(_)));
    }

    #[test]
    fn malformed_commands_are_errors() {
        let mut c = Client::new();
        let err = c.try_send(3, 0, MSG_COMMAND_AMF0, 0, &[0x02, 0, 7, b'c', b'o']).unwrap_err();
        assert!(matches!(err, SessionError::Amf { .. }), "{err}");
        let mut c = Client::new();
        let err = c.try_send(3, 0, MSG_COMMAND_AMF0, 0, &amf0::encode_all(&[Value::Number(1.0)])).unwrap_err();
        assert!(matches!(err, SessionError::Protocol(_)));
        let mut c = Client::new();
        let err = c
            .try_send(
                3,
                0,
                MSG_COMMAND_AMF0,
                1,
                &amf0::encode_all(&[s("publish"), Value::Number(1.0), Value::Null, s("x")]),
            )
            .unwrap_err();
        assert_eq!(err, SessionError::Protocol("'publish' command before 'connect'".into()));
        let mut c = Client::new();
        let err =
            c.try_send(3, 0, MSG_COMMAND_AMF0, 0, &amf0::encode_all(&[s("connect"), Value::Number(1.0)])).unwrap_err();
        assert!(matches!(err, SessionError::Protocol(_)));
        c.connect("live", "rtmp://h/live");
        let err =
            c.try_send(3, 0, MSG_COMMAND_AMF0, 0, &amf0::encode_all(&[s("connect"), Value::Number(1.0), obj(&[])]));
        assert!(matches!(err, Err(SessionError::Protocol(_))));
    }

    #[test]
    fn publish_without_a_name_is_refused_without_an_event() {
        let mut c = Client::new();
        c.connect("live", "rtmp://h/live");
        c.replies();
        c.command(1, &[s("publish"), Value::Number(5.0), Value::Null, s("?token=1")]);
        assert!(c.events().is_empty());
        let st = amf(&c.replies()[0]);
        assert_eq!(st[3].get("code"), Some(&s("NetStream.Publish.BadName")));
    }

    #[test]
    fn handshake_and_chunk_errors_surface() {
        let mut session = ServerSession::new();
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        let err = session.feed(&mut buf, &mut Vec::new()).unwrap_err();
        assert_eq!(err, SessionError::Handshake(HandshakeError::UnsupportedVersion(b'G')));
        // The context, then the cause (printed once, as the error's source).
        assert_eq!(err.to_string(), "RTMP handshake failed");
        assert!(std::error::Error::source(&err).unwrap().to_string().contains("version 71"));

        let mut c = Client::new();
        let mut b = BytesMut::from(&[0x06, 0, 0, 0][..]);
        b.extend_from_slice(&((MAX_MESSAGE_SIZE + 1) as u32).to_be_bytes()[1..]);
        b.extend_from_slice(&[9, 1, 0, 0, 0]);
        let err = c.session.feed(&mut b, &mut c.events).unwrap_err();
        assert!(matches!(err, SessionError::Chunk(ChunkError::MessageTooLarge { .. })));
    }

    #[test]
    fn digest_handshake_through_the_session() {
        let mut session = ServerSession::new();
        let mut buf = BytesMut::new();
        buf.put_u8(3);
        buf.extend_from_slice(&crate::ingest::handshake::tests::digest_c1(0));
        session.feed(&mut buf, &mut Vec::new()).unwrap();
        let out = session.take_output().unwrap();
        assert_eq!(out.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(session.take_output(), None);
        assert_eq!(session.bytes_received(), 1 + HANDSHAKE_SIZE as u64);
    }
}
