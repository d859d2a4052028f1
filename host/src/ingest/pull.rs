//! Pull sources: a stream Reel fetches instead of one pushed to it. `rtmp://` is played with the
//! client session (connect, createStream, play); `http(s)://` is read as HTTP-FLV, the body
//! streamed tag by tag (never buffered whole) into the same media path a publisher's messages
//! take, so a pulled stream gives the same frames a pushed one does.
//!
//! Every wait has a deadline: the connection (and TLS, and the HTTP answer's head) within
//! `connect_timeout`, then some bytes at least every `read_timeout`. A source that fails gives
//! a [`PullError`] whose text says why (refused connection, HTTP 404, an HTML page, garbage
//! after the FLV header, TLS, silence).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::chunk::RawMessage;
use super::client::{ClientEvent, ClientSession, Role, RtmpUrl};
use super::media_in::{MediaEvent, MediaIn};
use crate::media::flv;
/// What a pull delivers: the frames a pushed stream gives.
pub use crate::media::Frame;

/// Where pulled frames go. An error ends the pull (the stream was refused).
pub trait FrameSink: Send {
    fn frame(&mut self, f: Frame) -> Result<(), String>;
}

/// Deadlines of a pull.
#[derive(Clone, Copy, Debug)]
pub struct PullLimits {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("unsupported source URL {0:?}: use rtmp://, http:// or https://")]
    Scheme(String),
    #[error("{0}")]
    Url(String),
    #[error("cannot connect to {addr}: {why}")]
    Connect { addr: String, why: String },
    #[error("no answer within {0:?}")]
    SetupTimeout(Duration),
    #[error("the source sent nothing for {0:?}")]
    Silent(Duration),
    #[error("the source refused: {code}: {description}")]
    Refused { code: String, description: String },
    #[error("the source answered HTTP {0}")]
    Http(u16),
    #[error("not an FLV stream: it starts with {0:?}")]
    NotFlv(String),
    #[error("malformed FLV at byte {offset}: {why}")]
    Flv { offset: u64, why: String },
    #[error("{0}")]
    Transport(String),
    #[error("RTMP: {0}")]
    Rtmp(String),
    #[error("the recorder refused the stream: {0}")]
    Sink(String),
}

/// How a pull that did not fail ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PullEnd {
    /// The source ended the stream (with what it said).
    Ended(String),
    /// Told to stop.
    Stopped,
}

/// Pulls `url` into `sink` until the source ends, fails, or `stop` fires.
pub async fn pull(
    url: &str,
    limits: PullLimits,
    client: &reqwest::Client,
    sink: &mut dyn FrameSink,
    stop: &CancellationToken,
) -> Result<PullEnd, PullError> {
    if url.starts_with("rtmp://") {
        pull_rtmp(url, limits, sink, stop).await
    } else if url.starts_with("http://") || url.starts_with("https://") {
        pull_http_flv(url, limits, client, sink, stop).await
    } else {
        Err(PullError::Scheme(url.chars().take(64).collect()))
    }
}

/// Checks a source URL without connecting.
pub fn check_url(url: &str) -> Result<(), PullError> {
    if url.starts_with("rtmp://") {
        RtmpUrl::parse(url).map(|_| ()).map_err(|e| PullError::Url(e.to_string()))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        reqwest::Url::parse(url).map(|_| ()).map_err(|e| PullError::Url(format!("invalid URL {url:?}: {e}")))
    } else {
        Err(PullError::Scheme(url.chars().take(64).collect()))
    }
}

/// Frames and warnings of the FLV reader (warnings are logged sparingly by the caller).
enum Media {
    Frame(Frame),
    Warning(String),
}

impl MediaEvent for Media {
    fn frame(f: Frame) -> Self {
        Media::Frame(f)
    }
    fn warning(w: String) -> Self {
        Media::Warning(w)
    }
}

/// Read buffer growth per read.
const READ_CHUNK: usize = 64 * 1024;

async fn pull_rtmp(
    url: &str,
    limits: PullLimits,
    sink: &mut dyn FrameSink,
    stop: &CancellationToken,
) -> Result<PullEnd, PullError> {
    let u = RtmpUrl::parse(url).map_err(|e| PullError::Url(e.to_string()))?;
    let addr = u.address();
    let connect = tokio::net::TcpStream::connect(&addr);
    let mut sock = match tokio::time::timeout(limits.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(PullError::Connect { addr, why: e.to_string() }),
        Err(_) => {
            return Err(PullError::Connect { addr, why: format!("no answer within {:?}", limits.connect_timeout) })
        }
    };
    let _ = sock.set_nodelay(true);
    let mut session = ClientSession::new(u.config(Role::Play));
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut events = Vec::new();
    let mut playing = false;
    let mut warnings = 0u64;
    loop {
        if let Some(out) = session.take_output() {
            match tokio::time::timeout(limits.read_timeout, sock.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(PullError::Transport(format!("writing to {addr}: {e}"))),
                Err(_) => {
                    return Err(PullError::Transport(format!("{addr} takes nothing for {:?}", limits.read_timeout)))
                }
            }
        }
        // Until play starts, the whole setup has the connect deadline; then each read its own.
        let wait = if playing { limits.read_timeout } else { limits.connect_timeout };
        buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            r = tokio::time::timeout(wait, sock.read_buf(&mut buf)) => match r {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(PullError::Transport(format!("reading from {addr}: {e}"))),
                Err(_) if playing => return Err(PullError::Silent(wait)),
                Err(_) => return Err(PullError::SetupTimeout(wait)),
            },
            _ = stop.cancelled() => {
                session.close();
                if let Some(out) = session.take_output() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), sock.write_all(&out)).await;
                }
                return Ok(PullEnd::Stopped);
            }
        };
        if n == 0 {
            return if playing {
                Ok(PullEnd::Ended("the server closed the connection".into()))
            } else {
                Err(PullError::Transport(format!("{addr} closed the connection before play started")))
            };
        }
        session.feed(&mut buf, &mut events).map_err(|e| PullError::Rtmp(e.to_string()))?;
        for ev in events.drain(..) {
            match ev {
                ClientEvent::Playing => playing = true,
                ClientEvent::Frame(f) => sink.frame(f).map_err(PullError::Sink)?,
                ClientEvent::Rejected { code, description } => return Err(PullError::Refused { code, description }),
                ClientEvent::Closed { code } => return Ok(PullEnd::Ended(code)),
                ClientEvent::Warning(w) => {
                    warnings += 1;
                    if warnings.is_power_of_two() {
                        tracing::warn!(source = %addr, warnings, "{w}");
                    }
                }
                ClientEvent::Connected | ClientEvent::Publishing | ClientEvent::Status { .. } => {}
            }
        }
    }
}

async fn pull_http_flv(
    url: &str,
    limits: PullLimits,
    client: &reqwest::Client,
    sink: &mut dyn FrameSink,
    stop: &CancellationToken,
) -> Result<PullEnd, PullError> {
    let request = client.get(url).send();
    let mut resp = tokio::select! {
        r = tokio::time::timeout(limits.connect_timeout, request) => match r {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(PullError::Transport(error_text(&e))),
            Err(_) => return Err(PullError::SetupTimeout(limits.connect_timeout)),
        },
        _ = stop.cancelled() => return Ok(PullEnd::Stopped),
    };
    if !resp.status().is_success() {
        return Err(PullError::Http(resp.status().as_u16()));
    }
    let mut reader = FlvReader::default();
    let mut frames = Vec::new();
    let mut warnings = 0u64;
    loop {
        let chunk = tokio::select! {
            r = tokio::time::timeout(limits.read_timeout, resp.chunk()) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(PullError::Transport(error_text(&e))),
                Err(_) => return Err(PullError::Silent(limits.read_timeout)),
            },
            _ = stop.cancelled() => return Ok(PullEnd::Stopped),
        };
        let Some(chunk) = chunk else {
            return match reader.header_done {
                true => Ok(PullEnd::Ended("the HTTP body ended".into())),
                false => Err(PullError::NotFlv(reader.head())),
            };
        };
        reader.push(&chunk, &mut frames)?;
        for m in frames.drain(..) {
            match m {
                Media::Frame(f) => sink.frame(f).map_err(PullError::Sink)?,
                Media::Warning(w) => {
                    warnings += 1;
                    if warnings.is_power_of_two() {
                        tracing::warn!(source = %url, warnings, "{w}");
                    }
                }
            }
        }
    }
}

/// An FLV byte stream, read incrementally: the file header, then tags, each handed to the
/// same [`MediaIn`] an RTMP publisher's messages go through.
struct FlvReader {
    buf: BytesMut,
    header_done: bool,
    /// Bytes consumed so far (for error messages).
    offset: u64,
    media: MediaIn,
}

impl Default for FlvReader {
    fn default() -> Self {
        Self { buf: BytesMut::new(), header_done: false, offset: 0, media: MediaIn::published() }
    }
}

impl FlvReader {
    /// The first bytes, printable, for "not an FLV stream" errors.
    fn head(&self) -> String {
        String::from_utf8_lossy(&self.buf[..self.buf.len().min(16)]).into_owned()
    }

    fn push(&mut self, data: &[u8], out: &mut Vec<Media>) -> Result<(), PullError> {
        self.buf.extend_from_slice(data);
        if !self.header_done {
            if self.buf.len() < 3 {
                return Ok(());
            }
            if &self.buf[..3] != b"FLV" {
                return Err(PullError::NotFlv(self.head()));
            }
            if self.buf.len() < flv::FILE_HEADER_LEN {
                return Ok(());
            }
            // The header's own length field, then PreviousTagSize0.
            let len = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) as usize;
            if !(9..=1024).contains(&len) {
                return Err(PullError::Flv { offset: 5, why: format!("header length {len}") });
            }
            if self.buf.len() < len + 4 {
                return Ok(());
            }
            self.buf.advance(len + 4);
            self.offset += (len + 4) as u64;
            self.header_done = true;
        }
        while let Some(h) = flv::TagHeader::parse(&self.buf) {
            if !matches!(h.tag_type, flv::TAG_AUDIO | flv::TAG_VIDEO | flv::TAG_SCRIPT) {
                return Err(PullError::Flv { offset: self.offset, why: format!("tag type {}", h.tag_type) });
            }
            let whole = flv::TAG_HEADER_LEN + h.size + 4;
            if self.buf.len() < whole {
                // At most one tag (16 MiB) waits here.
                self.buf.reserve(whole - self.buf.len());
                return Ok(());
            }
            let prev = u32::from_be_bytes(self.buf[whole - 4..whole].try_into().expect("4 bytes")) as usize;
            if prev != flv::TAG_HEADER_LEN + h.size && prev != 0 {
                return Err(PullError::Flv {
                    offset: self.offset,
                    why: format!("previous tag size {prev} after a tag of {}", flv::TAG_HEADER_LEN + h.size),
                });
            }
            let mut tag = self.buf.split_to(whole).freeze();
            tag.advance(flv::TAG_HEADER_LEN);
            let payload = tag.slice(..h.size);
            let msg = RawMessage { csid: 0, timestamp: h.timestamp, type_id: h.tag_type, stream_id: 1, payload };
            self.media.message(msg, true, out);
            self.offset += whole as u64;
        }
        Ok(())
    }
}

/// A client error with its causes.
fn error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(t: u8, ts: u32, body: &[u8]) -> Vec<u8> {
        let mut v = flv::tag_header(t, body.len(), i64::from(ts)).to_vec();
        v.extend_from_slice(body);
        v.extend_from_slice(&flv::prev_tag_size(body.len()));
        v
    }

    fn stream() -> Vec<u8> {
        let mut v = flv::file_header(true, true).to_vec();
        // AAC sequence header, then one AAC frame; AVC sequence header, one keyframe.
        v.extend(tag(flv::TAG_AUDIO, 0, &[0xaf, 0x00, 0x12, 0x10]));
        v.extend(tag(flv::TAG_AUDIO, 23, &[0xaf, 0x01, 1, 2, 3]));
        v.extend(tag(flv::TAG_VIDEO, 40, &[0x17, 0x01, 0, 0, 0, 0, 0, 0, 2, 0x65, 0x88]));
        v
    }

    #[test]
    fn tags_split_anywhere_give_the_same_frames() {
        let data = stream();
        let mut whole = Vec::new();
        FlvReader::default().push(&data, &mut whole).unwrap();
        let frames = |v: &[Media]| {
            v.iter()
                .filter_map(|m| if let Media::Frame(f) = m { Some((f.dts, f.tag.clone())) } else { None })
                .collect::<Vec<_>>()
        };
        assert_eq!(frames(&whole).len(), 3);
        for cut in 1..data.len() {
            let (mut r, mut out) = (FlvReader::default(), Vec::new());
            r.push(&data[..cut], &mut out).unwrap();
            r.push(&data[cut..], &mut out).unwrap();
            assert_eq!(frames(&out), frames(&whole), "cut at {cut}");
        }
    }

    #[test]
    fn bad_sources_say_why() {
        let mut out = Vec::new();
        let e = FlvReader::default().push(b"<!DOCTYPE html><html>", &mut out).unwrap_err();
        assert_eq!(e.to_string(), "not an FLV stream: it starts with \"<!DOCTYPE html><\"");
        let mut data = flv::file_header(true, true).to_vec();
        data.extend_from_slice(&[0x42; 64]);
        let e = FlvReader::default().push(&data, &mut out).unwrap_err();
        assert_eq!(e.to_string(), "malformed FLV at byte 13: tag type 2");
        assert!(check_url("ftp://x/y").is_err());
        assert!(check_url("rtmp://host/app").is_err(), "needs a stream");
        assert!(check_url("rtmp://host:1935/live/cam").is_ok());
        assert!(check_url("https://cdn.example.com/live/cam.flv").is_ok());
    }
}
