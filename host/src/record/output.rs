//! Outputs of a recording: a muxer, its pending bytes and its storage file. Muxing happens on
//! the stream task; storage I/O on the blocking pool; closing a file (finalising, naming,
//! announcing) runs as its own tracked task so the stream never waits for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::stream::StreamCtx;
use crate::config::{Format, Template};
use crate::media::{Frame, FrameKind};
use crate::mux::{flv::FlvMuxer, Chunks, MuxError, Muxer, Rewrite};
use crate::policy::{Container, FileInfo};
use crate::storage::{FileWriter, Finalize, Storage};

pub(crate) fn container(f: Format) -> Container {
    match f {
        Format::Flv => Container::Flv,
        Format::Hls => Container::Hls,
        Format::Mp4 => Container::Mp4,
        Format::Aac => Container::Aac,
    }
}

fn new_muxer(f: Format) -> Option<Box<dyn Muxer>> {
    match f {
        Format::Flv => Some(Box::new(FlvMuxer::new())),
        _ => None,
    }
}

pub(crate) enum Output {
    File(FileOutput),
}

impl Output {
    pub fn new(format: Format, t: &Template, storage: Arc<dyn Storage>) -> Self {
        Output::File(FileOutput {
            format,
            storage,
            interval_ms: t.interval.as_millis(),
            sequence: 0,
            cur: None,
            disabled: false,
        })
    }

    pub fn push(&mut self, f: &Frame, cut: bool, ctx: &StreamCtx) {
        match self {
            Output::File(o) => o.push(f, cut, ctx),
        }
    }

    pub fn pending_bytes(&self) -> usize {
        match self {
            Output::File(o) => o.cur.as_ref().map_or(0, |c| c.pending_bytes),
        }
    }

    pub async fn flush(&mut self, ctx: &StreamCtx) {
        match self {
            Output::File(o) => o.flush(ctx).await,
        }
    }

    pub fn close(&mut self, ctx: &StreamCtx, failed: bool) {
        match self {
            Output::File(o) => o.close(ctx, failed),
        }
    }
}

pub(crate) struct FileOutput {
    format: Format,
    storage: Arc<dyn Storage>,
    interval_ms: u64,
    sequence: u32,
    cur: Option<OpenFile>,
    disabled: bool,
}

struct OpenFile {
    muxer: Box<dyn Muxer>,
    /// Created on the blocking pool at the first flush.
    writer: Option<Box<dyn FileWriter>>,
    hint: String,
    pending: Chunks,
    pending_bytes: usize,
    first_dts: Option<i64>,
    last_dts: i64,
    start_ms: u64,
    sequence: u32,
    samples: u64,
    /// Storage failed: stop writing, publish what is on disk at close.
    write_failed: bool,
}

impl FileOutput {
    fn open(&mut self, ctx: &StreamCtx) -> Option<OpenFile> {
        let Some(muxer) = new_muxer(self.format) else {
            tracing::warn!(format = self.format.name(), stream = %ctx.info.name, "format not available in this build; skipping it");
            self.disabled = true;
            return None;
        };
        self.sequence += 1;
        let mut file = OpenFile {
            muxer,
            writer: None,
            hint: format!("{}-{}-{}-{}", ctx.info.app, ctx.info.name, ctx.session_id, self.sequence),
            pending: Vec::with_capacity(256),
            pending_bytes: 0,
            first_dts: None,
            last_dts: 0,
            start_ms: crate::media::time::now_ms(),
            sequence: self.sequence,
            samples: 0,
            write_failed: false,
        };
        for h in ctx.headers() {
            if let Err(e) = file.push(h, self.format) {
                self.fail(ctx, &e);
                return None;
            }
        }
        Some(file)
    }

    fn fail(&mut self, ctx: &StreamCtx, e: &MuxError) {
        match e {
            MuxError::UnsupportedCodec { .. } => {
                tracing::warn!(format = self.format.name(), stream = %ctx.info.name, "skipping format for this stream: {e}");
                self.disabled = true;
            }
            _ => tracing::error!(format = self.format.name(), stream = %ctx.info.name, "muxer error, closing file: {e}"),
        }
    }

    fn push(&mut self, f: &Frame, cut: bool, ctx: &StreamCtx) {
        if self.disabled {
            return;
        }
        if let Some(cur) = &self.cur {
            if cut && cur.first_dts.is_some_and(|first| f.dts - first >= self.interval_ms as i64) {
                self.close(ctx, false);
            }
        }
        if self.cur.is_none() {
            // A new file is only worth starting with media (not a lone header or metadata).
            if !f.is_sample() {
                if f.config || f.kind == FrameKind::Data {
                    return; // kept in ctx and replayed when the file opens
                }
            }
            self.cur = self.open(ctx);
        }
        let Some(cur) = &mut self.cur else { return };
        if let Err(e) = cur.push(f, self.format) {
            self.fail(ctx, &e);
            self.close(ctx, true);
        }
    }

    async fn flush(&mut self, ctx: &StreamCtx) {
        let Some(cur) = &mut self.cur else { return };
        if cur.pending.is_empty() || cur.write_failed {
            return;
        }
        let chunks = std::mem::take(&mut cur.pending);
        cur.pending_bytes = 0;
        let writer = cur.writer.take();
        let storage = self.storage.clone();
        let hint = cur.hint.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut w = match writer {
                Some(w) => w,
                None => storage.create(&hint)?,
            };
            let r = w.write(&chunks);
            Ok::<_, crate::storage::StorageError>((w, r))
        })
        .await;
        match res {
            Ok(Ok((w, Ok(())))) => cur.writer = Some(w),
            Ok(Ok((w, Err(e)))) => {
                tracing::error!(stream = %ctx.info.name, format = self.format.name(), "write failed, file ends here: {e}");
                cur.writer = Some(w);
                cur.write_failed = true;
            }
            Ok(Err(e)) => {
                tracing::error!(stream = %ctx.info.name, format = self.format.name(), "cannot create file: {e}");
                cur.write_failed = true;
            }
            Err(e) => {
                tracing::error!("write task failed: {e}");
                cur.write_failed = true;
            }
        }
    }

    /// Ends the current file: finalising, naming and announcing run in a tracked task.
    fn close(&mut self, ctx: &StreamCtx, failed: bool) {
        let Some(mut cur) = self.cur.take() else { return };
        let rewrite = if cur.write_failed {
            None
        } else {
            match cur.muxer.finish(&mut cur.pending) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(stream = %ctx.info.name, "finishing {}: {e}", self.format.name());
                    None
                }
            }
        };
        let storage = self.storage.clone();
        let rt = ctx.rt.clone();
        let info = ctx.info.clone();
        let session_id = ctx.session_id.clone();
        let stats = ctx.stats.clone();
        let format = self.format;
        let end_ms = crate::media::time::now_ms();
        ctx.tracker.spawn_blocking(move || {
            if cur.samples == 0 {
                if let Some(w) = cur.writer.take() {
                    w.abort();
                }
                return;
            }
            let mut w = match cur.writer.take() {
                Some(w) => w,
                None => match storage.create(&cur.hint) {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!(stream = %info.name, "cannot create file: {e}");
                        return;
                    }
                },
            };
            let mut rewrite = rewrite;
            if !cur.write_failed {
                if let Err(e) = w.write(&cur.pending) {
                    tracing::error!(stream = %info.name, "write failed at close: {e}");
                    rewrite = None;
                }
            }
            let duration_ms = (cur.last_dts - cur.first_dts.unwrap_or(cur.last_dts)).max(0) as u64;
            let mut fi = FileInfo {
                container: container(format),
                sequence: cur.sequence,
                start_ms: cur.start_ms,
                end_ms,
                size: w.written(),
                duration_ms,
                key: String::new(),
                session_id,
                task_id: None,
                random_id: format!("{:016x}", fastrand::u64(..)),
            };
            let key = rt.policy.name_file(&info, &fi);
            let Rewrite { head, ranges, tail } = rewrite.unwrap_or_default();
            match w.finish(&key, Finalize { head: &head, ranges: &ranges, tail: &tail }) {
                Ok(stored) => {
                    stats.files.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("reel_files_total", "format" => format.name()).increment(1);
                    metrics::counter!("reel_file_bytes_total", "format" => format.name()).increment(stored.size);
                    fi.size = stored.size;
                    fi.key = stored.key.clone();
                    tracing::info!(app = %info.app, stream = %info.name, format = format.name(), file = %stored.location,
                        bytes = stored.size, duration_s = duration_ms as f64 / 1000.0, failed, "file closed");
                }
                Err(e) => {
                    metrics::counter!("reel_file_errors_total", "format" => format.name()).increment(1);
                    tracing::error!(stream = %info.name, format = format.name(), key = %key, "closing file failed: {e}")
                }
            }
        });
    }
}

impl OpenFile {
    fn push(&mut self, f: &Frame, format: Format) -> Result<(), MuxError> {
        if f.kind == FrameKind::Data && format != Format::Flv {
            return Ok(());
        }
        let before = self.pending.len();
        self.muxer.push(f, &mut self.pending)?;
        self.pending_bytes += self.pending[before..].iter().map(|b| b.len()).sum::<usize>();
        if f.is_sample() {
            self.samples += 1;
            self.first_dts.get_or_insert(f.dts);
            self.last_dts = self.last_dts.max(f.dts);
        }
        Ok(())
    }
}
