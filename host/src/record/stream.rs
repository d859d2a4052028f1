//! One task per recorded publish: receives frames, keeps the stream's sequence headers and
//! metadata, decides cut points, and drives the outputs (one per format).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::task::TaskTracker;

use super::output::Output;
use super::{Msg, Runtime};
use crate::config::Template;
use crate::media::{Frame, FrameKind};
use crate::policy::{Plan, Policy, StreamInfo};

/// Counters of one publish, readable while it runs.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

/// What every output of a stream shares: who it is and the headers a new file starts with.
pub(crate) struct StreamCtx {
    pub rt: Arc<Runtime>,
    /// Decides naming and callbacks for this stream's files (the template's plugin chain).
    pub policy: Arc<dyn Policy>,
    pub template_name: String,
    pub info: StreamInfo,
    pub session_id: String,
    pub tracker: TaskTracker,
    pub stats: Arc<StreamStats>,
    pub video_config: Option<Frame>,
    pub audio_config: Option<Frame>,
    pub metadata: Option<Frame>,
    pub has_video: bool,
}

impl StreamCtx {
    /// Frames a new file starts with: metadata, then the current sequence headers.
    pub fn headers(&self) -> impl Iterator<Item = &Frame> {
        self.metadata.iter().chain(self.video_config.iter()).chain(self.audio_config.iter())
    }

    /// Whether `f` may start a new file: a video keyframe, or any audio frame when the stream
    /// has no video.
    pub fn is_cut_point(&self, f: &Frame) -> bool {
        match f.kind {
            FrameKind::Video => f.keyframe && !f.config,
            FrameKind::Audio => !self.has_video && !f.config,
            FrameKind::Data => false,
        }
    }
}

pub(crate) struct StreamTask {
    ctx: StreamCtx,
    /// The recorder's current runtime: a reload reaches this recording at its next cut.
    live: Arc<RwLock<Arc<Runtime>>>,
    outputs: Vec<Output>,
    overflow: Arc<AtomicBool>,
}

impl StreamTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rt: Arc<Runtime>,
        live: Arc<RwLock<Arc<Runtime>>>,
        info: StreamInfo,
        (template_name, template): (String, Template),
        session_id: String,
        overflow: Arc<AtomicBool>,
        stats: Arc<StreamStats>,
        tracker: TaskTracker,
    ) -> Self {
        let storage = rt.storages.get(&template.storage).cloned();
        let policy = rt.policy_for(&template);
        let mut outputs = Vec::new();
        if let Some(storage) = storage {
            let default = Plan {
                interval_ms: template.interval.as_millis(),
                hls_segment_ms: template.hls_segment.as_millis().min(u64::from(u32::MAX)) as u32,
                resume_window_ms: 0,
            };
            for &format in &template.formats {
                // Segmentation is a policy decision, made once per stream and format.
                let plan = policy.plan(&info, super::output::container(format), default);
                outputs.push(Output::new(format, plan, storage.clone()));
            }
        } else {
            tracing::error!(storage = %template.storage, "template names a storage that is not configured; not recording");
        }
        let ctx = StreamCtx {
            rt,
            policy,
            template_name,
            info,
            session_id,
            tracker,
            stats,
            video_config: None,
            audio_config: None,
            metadata: None,
            has_video: false,
        };
        Self { ctx, live, outputs, overflow }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let server = &self.ctx.rt.config.server;
        let flush_every = server.flush_interval.std();
        let flush_bytes = server.flush_bytes;
        let mut next_flush = Instant::now() + flush_every;
        let mut batch = Vec::with_capacity(256);
        let started = Instant::now();
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    for Msg::Frame(f) in batch.drain(..) {
                        self.on_frame(f).await;
                    }
                    if self.overflow.load(Ordering::Acquire) {
                        break;
                    }
                    for o in &mut self.outputs {
                        if o.pending_bytes() >= flush_bytes {
                            o.flush(&self.ctx).await;
                        }
                    }
                }
                _ = sleep_until(next_flush) => {
                    for o in &mut self.outputs {
                        o.flush(&self.ctx).await;
                    }
                    next_flush = Instant::now() + flush_every;
                }
            }
        }
        let failed = self.overflow.load(Ordering::Acquire);
        for o in &mut self.outputs {
            o.close(&self.ctx, failed).await;
        }
        let s = &self.ctx.stats;
        tracing::info!(
            app = %self.ctx.info.app, stream = %self.ctx.info.name, session = %self.ctx.session_id,
            duration_s = started.elapsed().as_secs_f64(), frames = s.frames.load(Ordering::Relaxed),
            bytes = s.bytes.load(Ordering::Relaxed), files = s.files.load(Ordering::Relaxed),
            error = failed, "unpublish"
        );
    }

    async fn on_frame(&mut self, f: Frame) {
        let ctx = &mut self.ctx;
        ctx.stats.frames.fetch_add(1, Ordering::Relaxed);
        ctx.stats.bytes.fetch_add(f.tag.len() as u64, Ordering::Relaxed);
        match f.kind {
            FrameKind::Video => {
                ctx.has_video = true;
                if ctx.info.video_codec.is_none() {
                    ctx.info.video_codec = Some(f.codec.name().into());
                }
                if f.config {
                    ctx.video_config = Some(f.owned());
                }
            }
            FrameKind::Audio => {
                if ctx.info.audio_codec.is_none() {
                    ctx.info.audio_codec = Some(f.codec.name().into());
                }
                if f.config {
                    ctx.audio_config = Some(f.owned());
                }
            }
            FrameKind::Data => {
                if is_metadata(&f) {
                    ctx.metadata = Some(f.owned());
                }
            }
        }
        let cut = ctx.is_cut_point(&f);
        if cut {
            // Files opened from here on follow the latest reload (naming, callbacks).
            let rt = self.live.read().unwrap_or_else(|e| e.into_inner()).clone();
            if !Arc::ptr_eq(&rt, &ctx.rt) {
                if let Some(t) = rt.config.template.get(&ctx.template_name) {
                    ctx.policy = rt.policy_for(t);
                }
                ctx.rt = rt;
            }
        }
        for o in &mut self.outputs {
            o.push(&f, cut, &self.ctx).await;
        }
    }
}

fn is_metadata(f: &Frame) -> bool {
    // `@setDataFrame` / `onMetaData` as the first AMF0 string, without decoding the rest.
    let b = &f.tag[..];
    let first = |b: &[u8]| -> Option<Vec<u8>> {
        if b.len() < 3 || b[0] != 2 {
            return None;
        }
        let n = usize::from(u16::from_be_bytes([b[1], b[2]]));
        b.get(3..3 + n).map(<[u8]>::to_vec)
    };
    match first(b).as_deref() {
        Some(b"onMetaData") => true,
        Some(b"@setDataFrame") => {
            let n = usize::from(u16::from_be_bytes([b[1], b[2]]));
            first(&b[3 + n..]).as_deref() == Some(b"onMetaData")
        }
        _ => false,
    }
}
