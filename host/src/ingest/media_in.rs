//! Incoming audio, video, data and aggregate messages as [`Frame`]s, alike for the server
//! session (what a publisher sends) and the client session (what a played stream sends).
//!
//! Timestamps are unwrapped past 32 bits on one timeline per message kind, so a data message
//! stamped 0 cannot look like a wrap of the video timeline. A message that does not parse is
//! skipped with a warning; the session goes on.

use bytes::Bytes;

use super::chunk::{strip_amf3_prefix, RawMessage, MSG_AGGREGATE, MSG_AUDIO, MSG_DATA_AMF0, MSG_DATA_AMF3, MSG_VIDEO};
use crate::media::amf0::{self, Value};
use crate::media::flv::{self, TagHeader};
use crate::media::{Frame, TimestampUnwrapper};

/// A session's event type, as far as incoming media is concerned.
pub(crate) trait MediaEvent {
    fn frame(f: Frame) -> Self;
    fn warning(w: String) -> Self;
}

/// Turns media messages into frames.
#[derive(Debug, Default)]
pub(crate) struct MediaIn {
    audio: TimestampUnwrapper,
    video: TimestampUnwrapper,
    data: TimestampUnwrapper,
    /// Drop data messages whose handler name starts with `|` (`|RtmpSampleAccess` and other
    /// calls a server makes on a player): they are not stream data.
    skip_handler_calls: bool,
}

impl MediaIn {
    /// For what a publisher sends: every data message is kept.
    pub fn published() -> Self {
        Self::default()
    }

    /// For a played stream: handler calls from the server are dropped.
    pub fn played() -> Self {
        Self { skip_handler_calls: true, ..Self::default() }
    }

    /// Starts the timelines afresh (a new publish).
    pub fn reset(&mut self) {
        *self = Self { skip_handler_calls: self.skip_handler_calls, ..Self::default() };
    }

    /// Whether [`MediaIn::message`] handles messages of this type.
    pub fn handles(type_id: u8) -> bool {
        matches!(type_id, MSG_AUDIO | MSG_VIDEO | MSG_DATA_AMF0 | MSG_DATA_AMF3 | MSG_AGGREGATE)
    }

    /// Handles an audio (8), video (9), data (15, 18) or aggregate (22) message. Frames are
    /// dropped unless `accept` (a stream is open); payloads are sliced, never copied.
    pub fn message<E: MediaEvent>(&mut self, msg: RawMessage, accept: bool, events: &mut Vec<E>) {
        match msg.type_id {
            MSG_AUDIO | MSG_VIDEO if accept => self.media(msg.type_id, msg.timestamp, msg.payload, events),
            MSG_DATA_AMF0 if accept => self.data(msg.timestamp, msg.payload, events),
            MSG_DATA_AMF3 if accept => self.data(msg.timestamp, strip_amf3_prefix(msg.payload), events),
            MSG_AGGREGATE => self.aggregate(msg.timestamp, msg.payload, accept, events),
            _ => {}
        }
    }

    fn media<E: MediaEvent>(&mut self, type_id: u8, timestamp: u32, payload: Bytes, events: &mut Vec<E>) {
        // Some encoders send empty audio/video messages around start and stop: nothing to keep.
        if payload.is_empty() {
            return;
        }
        let timeline = if type_id == MSG_AUDIO { &mut self.audio } else { &mut self.video };
        let dts = timeline.unwrap(timestamp);
        match flv::parse_tag(type_id, dts, payload) {
            Ok(f) => events.push(E::frame(f)),
            Err(e) => {
                let kind = if type_id == MSG_AUDIO { "audio" } else { "video" };
                events.push(E::warning(format!("skipped {kind} message at {timestamp} ms: {e}")));
            }
        }
    }

    /// Data messages become script-data frames. `@setDataFrame` is dropped from the front
    /// (sliced off, not copied), leaving `onMetaData, {..}` as FLV files carry it.
    fn data<E: MediaEvent>(&mut self, timestamp: u32, payload: Bytes, events: &mut Vec<E>) {
        let mut rest: &[u8] = &payload;
        let tag = match amf0::decode(&mut rest) {
            Ok(Value::String(name)) if name == "@setDataFrame" => payload.slice(payload.len() - rest.len()..),
            Ok(Value::String(name)) if self.skip_handler_calls && name.starts_with('|') => return,
            Ok(Value::String(_)) => payload,
            Ok(other) => {
                events.push(E::warning(format!(
                    "skipped data message at {timestamp} ms: starts with {other:?}, not a handler name"
                )));
                return;
            }
            Err(e) => {
                events.push(E::warning(format!("skipped data message at {timestamp} ms: {e}")));
                return;
            }
        };
        let dts = self.data.unwrap(timestamp);
        match flv::parse_tag(flv::TAG_SCRIPT, dts, tag) {
            Ok(f) => events.push(E::frame(f)),
            Err(e) => events.push(E::warning(format!("skipped data message at {timestamp} ms: {e}"))),
        }
    }

    /// An aggregate message is a run of FLV tags (11-byte header, body, 4-byte back pointer);
    /// their timestamps are relative to the first one, which maps to the message timestamp.
    fn aggregate<E: MediaEvent>(&mut self, timestamp: u32, payload: Bytes, accept: bool, events: &mut Vec<E>) {
        let mut off = 0;
        let mut first_ts = None;
        while let Some(h) = TagHeader::parse(&payload[off..]) {
            let start = off + flv::TAG_HEADER_LEN;
            if payload.len() - start < h.size {
                events.push(E::warning(format!("truncated aggregate message at {timestamp} ms")));
                return;
            }
            let base = *first_ts.get_or_insert(h.timestamp);
            let ts = timestamp.wrapping_add(h.timestamp.wrapping_sub(base));
            let body = payload.slice(start..start + h.size);
            match h.tag_type {
                flv::TAG_AUDIO | flv::TAG_VIDEO if accept => self.media(h.tag_type, ts, body, events),
                flv::TAG_SCRIPT if accept => self.data(ts, body, events),
                _ => {}
            }
            off = (start + h.size + 4).min(payload.len());
        }
    }
}
