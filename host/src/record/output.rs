//! One output of a recording: a format's muxer fed by the segmenter's actions, and the bytes
//! waiting to be written. No I/O and no policy here: closing a file or segment hands a
//! [`Closed`] back to the caller (the stream task, or `reel remux`), which names, stores and
//! announces it.

use crate::config::Format;
use crate::media::{Frame, FrameKind};
use crate::mux::hls::{LivePlaylist, Playlist};
use crate::mux::ts::TsMuxer;
use crate::mux::{aac::AdtsMuxer, flv::FlvMuxer, mp4::Mp4Muxer, Chunks, MuxError, Muxer, Rewrite};
use crate::storage::FileWriter;

use super::segmenter::{Action, Layout, Piece, Segmenter};

/// The key of segment `index` of the playlist at `playlist_key`: `{stem}_{index:05}.ts` beside
/// it. The one naming of TS segments, live and offline.
pub fn segment_key(playlist_key: &str, index: u32) -> String {
    let stem = playlist_key.strip_suffix(".m3u8").unwrap_or(playlist_key);
    format!("{stem}_{index:05}.ts")
}

/// The URI of `target` as seen from the playlist at `playlist` (both storage keys).
pub fn relative_uri(playlist: &str, target: &str) -> String {
    let dir: Vec<&str> = playlist.split('/').collect();
    let dir = &dir[..dir.len() - 1];
    let to: Vec<&str> = target.split('/').collect();
    let common = dir.iter().zip(&to).take_while(|(a, b)| a == b).count().min(to.len() - 1);
    let mut parts: Vec<&str> = vec![".."; dir.len() - common];
    parts.extend(&to[common..]);
    parts.join("/")
}

/// The layout a format is cut with, from its plan.
pub fn layout(format: Format, interval_ms: u64, hls_segment_ms: u64) -> Layout {
    match format {
        // A playlist per publish (`interval_ms` 0) or per cycle; HLS files are its segments.
        Format::Hls => {
            Layout { file_ms: interval_ms, segment_ms: Some(hls_segment_ms.max(1)), split_on_config_change: false }
        }
        Format::Mp4 => Layout { file_ms: interval_ms, segment_ms: None, split_on_config_change: true },
        Format::Flv | Format::Aac => Layout { file_ms: interval_ms, segment_ms: None, split_on_config_change: false },
    }
}

fn new_muxer(format: Format, interval_ms: u64, drains: Option<(u64, u64)>) -> Box<dyn Muxer> {
    match format {
        Format::Flv => Box::new(FlvMuxer::reserving(interval_ms)),
        Format::Aac => Box::new(AdtsMuxer::new()),
        Format::Mp4 => {
            // The sample tables are read back from the file at close, not held meanwhile.
            let m = Mp4Muxer::reserving(interval_ms).index_from_file();
            Box::new(match drains {
                Some((every_ms, bytes)) => m.drained(every_ms, bytes),
                None => m,
            })
        }
        Format::Hls => Box::new(TsMuxer::new()),
    }
}

/// Bytes of a file or segment, and where they are going.
#[derive(Default)]
pub struct Body {
    /// Created by the caller at the first flush.
    pub writer: Option<Box<dyn FileWriter>>,
    pub pending: Chunks,
    pub pending_bytes: usize,
    /// Storage failed: write nothing more, keep what is stored.
    pub write_failed: bool,
    /// Wall-clock time it opened, ms since the Unix epoch.
    pub opened_ms: u64,
    /// The file's sequence number (a segment's: its index).
    pub seq: u32,
}

impl Body {
    fn new(now_ms: u64, seq: u32) -> Self {
        Body { pending: Vec::with_capacity(64), opened_ms: now_ms, seq, ..Default::default() }
    }

    /// Counts the chunks a muxer appended from index `from` on into `pending_bytes`.
    fn count_from(&mut self, from: usize) {
        self.pending_bytes += self.pending[from..].iter().map(|b| b.len()).sum::<usize>();
    }

    /// The chunks to write now.
    pub fn take_pending(&mut self) -> Chunks {
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending)
    }
}

/// What a caller must act on after an action.
pub enum Event {
    /// A file (HLS: a playlist) opened; for HLS the caller names its live playlist.
    Opened { seq: u32 },
    /// An HLS segment closed: store it under [`segment_key`] and add it to the playlist.
    Segment { piece: Piece, body: Body, discontinuity: bool },
    /// A file closed: name it, finalise it with `rewrite`, store and announce it. For HLS
    /// (`body` empty), the playlist is complete.
    File { piece: Piece, body: Body, rewrite: Option<Rewrite>, failed: bool },
    /// The format cannot carry this stream's codec: the output is off for this stream; what it
    /// had written (if anything) is given up by the caller.
    Disabled(MuxError, Option<Box<dyn FileWriter>>),
    /// A frame was not written (the file goes on).
    Skipped(MuxError),
}

/// HLS state of an output: the playlist being built.
pub struct Hls {
    pub playlist: LivePlaylist,
    /// Where the playlist lives while recording (named when it opens).
    pub live_key: Option<String>,
    /// Where its text is kept (the caller's: a file), from when it opens.
    pub text: Option<super::playlist::LiveText>,
    /// Bytes of the stored segments.
    pub bytes: u64,
}

pub struct Output {
    pub format: Format,
    segmenter: Segmenter,
    interval_ms: u64,
    muxer: Option<Box<dyn Muxer>>,
    /// The open file (or HLS segment).
    pub body: Option<Body>,
    discontinuity: bool,
    /// A muxer error ended the current file early.
    failed: bool,
    pub disabled: bool,
    pub hls: Option<Hls>,
    actions: Vec<Action>,
    /// The caller drains the muxer ([`Output::drain`]) every `.0` ms or `.1` bytes.
    drains: Option<(u64, u64)>,
}

impl Output {
    pub fn new(format: Format, interval_ms: u64, hls_segment_ms: u64) -> Self {
        let hls = (format == Format::Hls).then(|| Hls {
            playlist: LivePlaylist::new(hls_segment_ms.div_ceil(1000).max(1)),
            live_key: None,
            text: None,
            bytes: 0,
        });
        Output {
            format,
            segmenter: Segmenter::new(layout(format, interval_ms, hls_segment_ms)),
            interval_ms,
            muxer: None,
            body: None,
            discontinuity: false,
            failed: false,
            disabled: false,
            hls,
            actions: Vec::with_capacity(16),
            drains: None,
        }
    }

    /// The caller will [`drain`](Self::drain) this output before each write: at least every
    /// `every_ms`, and whenever `bytes` are pending.
    pub fn drained(mut self, every_ms: u64, bytes: u64) -> Self {
        self.drains = Some((every_ms, bytes));
        self
    }

    /// Moves what the muxer holds back into the pending bytes, before they are written.
    pub fn drain(&mut self, events: &mut Vec<Event>) {
        if self.failed || self.disabled {
            return;
        }
        let (Some(m), Some(body)) = (self.muxer.as_mut(), self.body.as_mut()) else { return };
        let before = body.pending.len();
        match m.drain(&mut body.pending) {
            Ok(()) => body.count_from(before),
            Err(e) => {
                // As for a frame: a file container's file ends here (at the next frame).
                if self.format != Format::Hls {
                    self.failed = true;
                }
                events.push(Event::Skipped(e));
            }
        }
    }

    pub fn pending_bytes(&self) -> usize {
        self.body.as_ref().map_or(0, |b| b.pending_bytes)
    }

    /// Feeds one frame; `now_ms` stamps what opens.
    pub fn push(&mut self, f: &Frame, now_ms: u64, events: &mut Vec<Event>) {
        if self.disabled {
            return;
        }
        let mut actions = std::mem::take(&mut self.actions);
        self.segmenter.push(f, &mut actions);
        self.apply(&mut actions, now_ms, events);
        if self.failed && self.segmenter.is_open() {
            // The file ends at a muxer error; the next sample opens a new one.
            self.segmenter.fail_file(&mut actions);
            self.apply(&mut actions, now_ms, events);
        }
        self.actions = actions;
    }

    /// The publisher left and may come back ([`Segmenter::pause`]).
    pub fn pause(&mut self, now_ms: u64, events: &mut Vec<Event>) {
        let mut actions = std::mem::take(&mut self.actions);
        self.segmenter.pause(&mut actions);
        self.apply(&mut actions, now_ms, events);
        self.actions = actions;
    }

    /// A new publish continues the recording ([`Segmenter::resume`]).
    pub fn resume(&mut self) {
        self.segmenter.resume();
    }

    /// The stream ended: closes what is open.
    pub fn finish(&mut self, now_ms: u64, events: &mut Vec<Event>) {
        let mut actions = std::mem::take(&mut self.actions);
        self.segmenter.finish(&mut actions);
        self.apply(&mut actions, now_ms, events);
        self.actions = actions;
    }

    fn apply(&mut self, actions: &mut Vec<Action>, now_ms: u64, events: &mut Vec<Event>) {
        for a in actions.drain(..) {
            match a {
                Action::OpenFile { seq } => {
                    self.muxer = Some(new_muxer(self.format, self.interval_ms, self.drains));
                    self.failed = false;
                    if self.format != Format::Hls {
                        self.body = Some(Body::new(now_ms, seq));
                    }
                    events.push(Event::Opened { seq });
                }
                Action::OpenSegment { discontinuity, index } => {
                    self.body = Some(Body::new(now_ms, index));
                    self.discontinuity = discontinuity;
                }
                Action::Write(f) => self.write(&f, events),
                Action::CloseSegment(piece) => {
                    let mut body = self.body.take().unwrap_or_default();
                    if let Some(m) = &mut self.muxer {
                        if let Err(e) = m.finish(&mut body.pending) {
                            events.push(Event::Skipped(e));
                        }
                    }
                    if let Some(ts) = self.muxer.as_mut() {
                        // Continuity counters and codec configuration carry into the next
                        // segment of this playlist.
                        ts.next_segment();
                    }
                    events.push(Event::Segment { piece, body, discontinuity: self.discontinuity });
                }
                Action::CloseFile(piece) => {
                    let mut muxer = self.muxer.take();
                    if self.format == Format::Hls {
                        events.push(Event::File { piece, body: Body::default(), rewrite: None, failed: false });
                        continue;
                    }
                    let mut body = self.body.take().unwrap_or_default();
                    let rewrite = match muxer.as_mut() {
                        Some(m) if !body.write_failed => match m.finish(&mut body.pending) {
                            Ok(r) => r,
                            Err(e) => {
                                events.push(Event::Skipped(e));
                                None
                            }
                        },
                        _ => None,
                    };
                    events.push(Event::File { piece, body, rewrite, failed: self.failed });
                }
            }
        }
    }

    fn write(&mut self, f: &Frame, events: &mut Vec<Event>) {
        if f.kind == FrameKind::Data && self.format != Format::Flv {
            return;
        }
        if self.failed {
            return;
        }
        let (Some(m), Some(body)) = (self.muxer.as_mut(), self.body.as_mut()) else { return };
        let before = body.pending.len();
        match m.push(f, &mut body.pending) {
            Ok(()) => body.count_from(before),
            Err(e @ MuxError::UnsupportedCodec { .. }) => {
                self.disabled = true;
                let writer = self.body.take().and_then(|b| b.writer);
                self.muxer = None;
                events.push(Event::Disabled(e, writer));
            }
            Err(e) => {
                // A file container cannot skip a frame of its index: the file ends here and
                // is kept as written so far; TS simply leaves the frame out.
                if self.format != Format::Hls {
                    self.failed = true;
                }
                events.push(Event::Skipped(e));
            }
        }
    }
}

/// A (re)named HLS playlist's segment URIs, relative to `playlist_key`.
pub fn rebase_playlist(playlist: &Playlist, from_key: &str, to_key: &str) -> Playlist {
    let mut p = playlist.clone();
    for s in &mut p.segments {
        let abs = resolve(from_key, &s.uri);
        s.uri = relative_uri(to_key, &abs);
    }
    p
}

/// The key `uri` names, relative to the playlist at `playlist_key`.
pub(crate) fn resolve(playlist_key: &str, uri: &str) -> String {
    let mut parts: Vec<&str> = playlist_key.split('/').collect();
    parts.pop();
    for c in uri.split('/') {
        match c {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            c => parts.push(c),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_keys_follow_the_playlist() {
        assert_eq!(segment_key("live/cam/a_b.m3u8", 0), "live/cam/a_b_00000.ts");
        assert_eq!(segment_key("out.m3u8", 12), "out_00012.ts");
    }

    #[test]
    fn uris_are_relative_to_the_playlist() {
        assert_eq!(relative_uri("live/cam/a.m3u8", "live/cam/a_00000.ts"), "a_00000.ts");
        assert_eq!(relative_uri("index/2026/a.m3u8", "live/cam/a_00000.ts"), "../../live/cam/a_00000.ts");
        assert_eq!(relative_uri("a.m3u8", "x/a_0.ts"), "x/a_0.ts");
        assert_eq!(relative_uri("x/y/a.m3u8", "x/a_0.ts"), "../a_0.ts");
        assert_eq!(resolve("index/2026/a.m3u8", "../../live/cam/a_00000.ts"), "live/cam/a_00000.ts");
    }
}
