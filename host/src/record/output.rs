//! Outputs of a recording: a muxer, its pending bytes and its storage file. Muxing happens on
//! the stream task; storage I/O on the blocking pool; closing a file (finalising, naming,
//! announcing) runs as its own tracked task so the stream never waits for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::stream::StreamCtx;
use crate::config::Format;
use crate::media::{Frame, FrameKind};
use crate::mux::hls::{Playlist, Segment};
use crate::mux::ts::TsMuxer;
use crate::mux::{aac::AdtsMuxer, flv::FlvMuxer, Chunks, MuxError, Muxer, Rewrite};
use crate::policy::{Container, FileInfo, Plan};
use crate::storage::{FileWriter, Finalize, Storage};

pub(crate) fn container(f: Format) -> Container {
    match f {
        Format::Flv => Container::Flv,
        Format::Hls => Container::Hls,
        Format::Mp4 => Container::Mp4,
        Format::Aac => Container::Aac,
    }
}

fn new_muxer(f: Format, interval_ms: u64) -> Option<Box<dyn Muxer>> {
    match f {
        Format::Flv => Some(Box::new(FlvMuxer::reserving(interval_ms))),
        Format::Aac => Some(Box::new(AdtsMuxer::new())),
        Format::Mp4 => Some(Box::new(crate::mux::mp4::Mp4Muxer::new())),
        Format::Hls => None,
    }
}

pub(crate) enum Output {
    File(FileOutput),
    Hls(Box<HlsOutput>),
}

impl Output {
    pub fn new(format: Format, plan: Plan, storage: Arc<dyn Storage>) -> Self {
        match format {
            Format::Hls => Output::Hls(Box::new(HlsOutput {
                storage,
                segment_ms: u64::from(plan.hls_segment_ms),
                ts: TsMuxer::new(),
                playlist: Playlist::new(u64::from(plan.hls_segment_ms).div_ceil(1000)),
                playlist_key: None,
                start_ms: 0,
                seg: None,
                next_index: 0,
                total_bytes: 0,
                first_dts: None,
                last_dts: 0,
                disabled: false,
            })),
            _ => Output::File(FileOutput {
                format,
                storage,
                interval_ms: plan.interval_ms,
                sequence: 0,
                cur: None,
                disabled: false,
            }),
        }
    }

    pub async fn push(&mut self, f: &Frame, cut: bool, ctx: &StreamCtx) {
        match self {
            Output::File(o) => o.push(f, cut, ctx),
            Output::Hls(o) => o.push(f, cut, ctx).await,
        }
    }

    pub fn pending_bytes(&self) -> usize {
        match self {
            Output::File(o) => o.cur.as_ref().map_or(0, |c| c.pending_bytes),
            Output::Hls(o) => o.seg.as_ref().map_or(0, |c| c.pending_bytes),
        }
    }

    pub async fn flush(&mut self, ctx: &StreamCtx) {
        match self {
            Output::File(o) => o.flush(ctx).await,
            Output::Hls(o) => {
                if let Some(seg) = &mut o.seg {
                    flush_pending(
                        &o.storage,
                        &mut seg.writer,
                        &seg.hint,
                        &mut seg.pending,
                        &mut seg.pending_bytes,
                        &mut seg.write_failed,
                        ctx,
                        "hls",
                    )
                    .await;
                }
            }
        }
    }

    pub async fn close(&mut self, ctx: &StreamCtx, failed: bool) {
        match self {
            Output::File(o) => o.close(ctx, failed),
            Output::Hls(o) => o.end(ctx).await,
        }
    }
}

/// Writes `pending` to the file (created on first use) on the blocking pool.
#[allow(clippy::too_many_arguments)]
async fn flush_pending(
    storage: &Arc<dyn Storage>,
    writer: &mut Option<Box<dyn FileWriter>>,
    hint: &str,
    pending: &mut Chunks,
    pending_bytes: &mut usize,
    write_failed: &mut bool,
    ctx: &StreamCtx,
    format: &'static str,
) {
    if pending.is_empty() || *write_failed {
        return;
    }
    let chunks = std::mem::take(pending);
    *pending_bytes = 0;
    let w = writer.take();
    let storage = storage.clone();
    let hint = hint.to_string();
    let res = tokio::task::spawn_blocking(move || {
        let mut w = match w {
            Some(w) => w,
            None => storage.create(&hint)?,
        };
        let r = w.write(&chunks);
        Ok::<_, crate::storage::StorageError>((w, r))
    })
    .await;
    match res {
        Ok(Ok((w, Ok(())))) => *writer = Some(w),
        Ok(Ok((w, Err(e)))) => {
            tracing::error!(stream = %ctx.info.name, format, "write failed, file ends here: {e}");
            *writer = Some(w);
            *write_failed = true;
        }
        Ok(Err(e)) => {
            tracing::error!(stream = %ctx.info.name, format, "cannot create file: {e}");
            *write_failed = true;
        }
        Err(e) => {
            tracing::error!("write task failed: {e}");
            *write_failed = true;
        }
    }
}

/// One HLS playlist per publish; segments cut at keyframes after `hls_segment`.
pub(crate) struct HlsOutput {
    storage: Arc<dyn Storage>,
    segment_ms: u64,
    ts: TsMuxer,
    playlist: Playlist,
    playlist_key: Option<String>,
    start_ms: u64,
    seg: Option<OpenSegment>,
    next_index: u32,
    total_bytes: u64,
    first_dts: Option<i64>,
    last_dts: i64,
    disabled: bool,
}

struct OpenSegment {
    writer: Option<Box<dyn FileWriter>>,
    hint: String,
    pending: Chunks,
    pending_bytes: usize,
    first_dts: i64,
    start_ms: u64,
    index: u32,
    write_failed: bool,
}

impl HlsOutput {
    fn playlist_key(&mut self, ctx: &StreamCtx) -> String {
        if let Some(k) = &self.playlist_key {
            return k.clone();
        }
        self.start_ms = crate::media::time::now_ms();
        let fi = FileInfo {
            container: Container::Hls,
            sequence: 1,
            start_ms: self.start_ms,
            end_ms: self.start_ms,
            size: 0,
            duration_ms: 0,
            key: String::new(),
            session_id: ctx.session_id.clone(),
            task_id: None,
            random_id: format!("{:016x}", fastrand::u64(..)),
        };
        let key = ctx.policy.name_file(&ctx.info, &fi);
        self.playlist_key = Some(key.clone());
        key
    }

    async fn push(&mut self, f: &Frame, cut: bool, ctx: &StreamCtx) {
        if self.disabled || f.kind == FrameKind::Data {
            return;
        }
        if let Some(seg) = &self.seg {
            if cut && f.dts - seg.first_dts >= self.segment_ms as i64 {
                self.close_segment(ctx, Some(f.pts())).await;
            }
        }
        if self.seg.is_none() {
            if !f.is_sample() {
                // Sequence headers reach the TS muxer directly; it keeps them across segments.
                if let Err(e) = self.ts.push(f, &mut Vec::new()) {
                    self.fail(ctx, &e);
                }
                return;
            }
            let key = self.playlist_key(ctx);
            self.next_index += 1;
            let mut seg = OpenSegment {
                writer: None,
                hint: format!("{}-{}-{}-{}.ts", ctx.info.app, ctx.info.name, ctx.session_id, self.next_index),
                pending: Vec::with_capacity(256),
                pending_bytes: 0,
                first_dts: f.dts,
                start_ms: crate::media::time::now_ms(),
                index: self.next_index,
                write_failed: false,
            };
            let _ = key;
            if self.next_index == 1 {
                for h in ctx.headers() {
                    if h.kind != FrameKind::Data {
                        if let Err(e) = self.ts.push(h, &mut seg.pending) {
                            self.fail(ctx, &e);
                            return;
                        }
                    }
                }
            }
            self.seg = Some(seg);
        }
        let Some(seg) = &mut self.seg else { return };
        let before = seg.pending.len();
        match self.ts.push(f, &mut seg.pending) {
            Ok(()) => {
                seg.pending_bytes += seg.pending[before..].iter().map(|b| b.len()).sum::<usize>();
                if f.is_sample() {
                    self.first_dts.get_or_insert(f.dts);
                    self.last_dts = self.last_dts.max(f.dts);
                }
            }
            Err(e) => self.fail(ctx, &e),
        }
    }

    fn fail(&mut self, ctx: &StreamCtx, e: &MuxError) {
        match e {
            MuxError::UnsupportedCodec { .. } => {
                tracing::warn!(format = "hls", stream = %ctx.info.name, "skipping format for this stream: {e}");
                self.disabled = true;
            }
            _ => tracing::warn!(format = "hls", stream = %ctx.info.name, "frame not written: {e}"),
        }
    }

    /// Closes the open segment (`next_pts`: where the next segment starts) and rewrites the
    /// playlist.
    async fn close_segment(&mut self, ctx: &StreamCtx, next_pts: Option<i64>) {
        let Some(mut seg) = self.seg.take() else { return };
        if let Err(e) = self.ts.finish(&mut seg.pending) {
            tracing::warn!(stream = %ctx.info.name, "finishing HLS segment: {e}");
        }
        let stats = self.ts.stats();
        let duration_ms = match (next_pts, stats.start_ms()) {
            (Some(next), Some(start)) if next > start => next - start,
            _ => stats.duration_ms(),
        }
        .max(0);
        self.ts.reset_for_next_segment();
        let playlist_key = self.playlist_key(ctx);
        let stem = playlist_key.strip_suffix(".m3u8").unwrap_or(&playlist_key).to_string();
        let seg_key = format!("{stem}_{:05}.ts", seg.index);
        let storage = self.storage.clone();
        let name = ctx.info.name.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut w = match seg.writer.take() {
                Some(w) => w,
                None => storage.create(&seg.hint)?,
            };
            if !seg.write_failed {
                w.write(&seg.pending)?;
            }
            w.finish(&seg_key, Finalize::default())
        })
        .await;
        match res {
            Ok(Ok(stored)) => {
                self.total_bytes += stored.size;
                let uri = stored.key.rsplit('/').next().unwrap_or(&stored.key).to_string();
                self.playlist.segments.push(Segment {
                    uri,
                    duration_secs: duration_ms as f64 / 1000.0,
                    program_date_time_ms: Some(seg.start_ms),
                    discontinuity: false,
                });
                self.write_playlist(ctx, &playlist_key).await;
            }
            Ok(Err(e)) => tracing::error!(stream = %name, "HLS segment lost: {e}"),
            Err(e) => tracing::error!(stream = %name, "HLS segment task failed: {e}"),
        }
    }

    async fn write_playlist(&self, ctx: &StreamCtx, key: &str) {
        let text = self.playlist.render();
        let storage = self.storage.clone();
        let key = key.to_string();
        match tokio::task::spawn_blocking(move || storage.put(&key, text.as_bytes())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(stream = %ctx.info.name, "writing HLS playlist: {e}"),
            Err(e) => tracing::error!("playlist task failed: {e}"),
        }
    }

    async fn end(&mut self, ctx: &StreamCtx) {
        self.close_segment(ctx, None).await;
        let Some(key) = self.playlist_key.clone() else { return };
        if self.playlist.segments.is_empty() {
            return;
        }
        self.playlist.ended = true;
        self.write_playlist(ctx, &key).await;
        let duration_ms = (self.last_dts - self.first_dts.unwrap_or(self.last_dts)).max(0) as u64;
        metrics::counter!("reel_files_total", "format" => "hls").increment(1);
        ctx.stats.files.fetch_add(1, Ordering::Relaxed);
        tracing::info!(app = %ctx.info.app, stream = %ctx.info.name, format = "hls", file = %key,
            segments = self.playlist.segments.len(), bytes = self.total_bytes, duration_s = duration_ms as f64 / 1000.0, "file closed");
        if let Some(n) = &ctx.rt.notifier {
            let fi = FileInfo {
                container: Container::Hls,
                sequence: 1,
                start_ms: self.start_ms,
                end_ms: crate::media::time::now_ms(),
                size: self.total_bytes,
                duration_ms,
                key,
                session_id: ctx.session_id.clone(),
                task_id: None,
                random_id: format!("{:016x}", fastrand::u64(..)),
            };
            let (n, policy, info) = (n.clone(), ctx.policy.clone(), ctx.info.clone());
            // Building the request may call a plugin: off the async worker.
            ctx.tracker.spawn_blocking(move || {
                n.file_finished(&*policy, &info, &fi);
            });
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
        let Some(muxer) = new_muxer(self.format, self.interval_ms) else {
            tracing::warn!(format = self.format.name(), stream = %ctx.info.name, "format not available in this build; skipping it");
            self.disabled = true;
            return None;
        };
        self.sequence += 1;
        let mut file = OpenFile {
            muxer,
            writer: None,
            hint: format!(
                "{}-{}-{}-{}.{}",
                ctx.info.app,
                ctx.info.name,
                ctx.session_id,
                self.sequence,
                self.format.extension()
            ),
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
            _ => {
                tracing::error!(format = self.format.name(), stream = %ctx.info.name, "muxer error, closing file: {e}")
            }
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
                return; // headers and metadata are kept in ctx and replayed when the file opens
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
        let format = self.format.name();
        flush_pending(
            &self.storage,
            &mut cur.writer,
            &cur.hint,
            &mut cur.pending,
            &mut cur.pending_bytes,
            &mut cur.write_failed,
            ctx,
            format,
        )
        .await;
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
        let notifier = ctx.rt.notifier.clone();
        let policy = ctx.policy.clone();
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
            let key = policy.name_file(&info, &fi);
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
                    if let Some(n) = notifier {
                        n.file_finished(&*policy, &info, &fi);
                    }
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
