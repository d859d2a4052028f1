//! RTMP ingest. The protocol is sans-IO: [`handshake`], [`chunk`] and [`session`] take bytes
//! and return events and bytes to send; the tokio connection code drives a [`ServerSession`].

pub mod auth;
pub mod chunk;
pub mod client;
pub mod conn;
pub mod handshake;
mod link;
mod media_in;
pub mod pull;
pub mod session;

pub use chunk::{ChunkError, ChunkReader, ChunkWriter, RawMessage};
pub use client::{ClientConfig, ClientError, ClientEvent, ClientSession, Role, RtmpUrl};
pub use handshake::{HandshakeError, HandshakeKind, HandshakeStatus, ServerHandshake};
pub use session::{PublishRequest, ServerSession, SessionError, SessionEvent};
