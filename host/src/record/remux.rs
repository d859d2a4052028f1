//! Offline remux: the live recorder's muxers over an FLV file (`reel remux`).

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use super::output::{relative_uri, segment_key, Event, Output};
use super::segmenter::{Layout, Segmenter};
use crate::config::Format;
use crate::media::flv::FileReader;
use crate::mux::hls::{Playlist, Segment};
use crate::mux::{Chunks, Muxer, Rewrite};
use crate::storage::fs::FsStorage;
use crate::storage::{Finalize, Storage};

/// What a remux did.
#[derive(Debug, Clone)]
pub struct RemuxReport {
    pub frames: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RemuxError {
    #[error("reading {path}")]
    Read { path: String, source: std::io::Error },
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    #[error(transparent)]
    Mux(#[from] crate::mux::MuxError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("{path} exists: choose another output, or pass -y to replace it")]
    Exists { path: String },
    #[error("replacing {path}")]
    Write { path: String, source: std::io::Error },
    #[error("{0}")]
    Unsupported(String),
}

/// Flush to disk every this many bytes of output (HLS segments).
const BATCH_BYTES: usize = 4 << 20;

/// Maps the input file: tags are then slices of the page cache, never copied.
fn map(input: &Path) -> Result<Bytes, RemuxError> {
    let err = |source| RemuxError::Read { path: input.display().to_string(), source };
    let file = std::fs::File::open(input).map_err(err)?;
    // SAFETY: the mapping is read-only and private to this process; like every reader of a
    // file, we assume nobody truncates it while we read (an offline tool's input).
    // Populated up front: one pass of page-table setup instead of a fault per page.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(err)?;
    Ok(Bytes::from_owner(map))
}

/// How `reel remux` writes.
#[derive(Clone, Copy, Debug)]
pub struct RemuxOptions {
    /// HLS segment target (cut at the first keyframe shown at or after it).
    pub segment_ms: u64,
    /// Replace an existing output (for HLS: the playlist and the segments it lists).
    pub overwrite: bool,
}

impl Default for RemuxOptions {
    fn default() -> Self {
        RemuxOptions { segment_ms: 6000, overwrite: false }
    }
}

/// Refuses an existing `output` unless overwriting, in which case it (and for a playlist, the
/// segments it lists) is removed first.
fn make_room(output: &Path, overwrite: bool) -> Result<(), RemuxError> {
    if !output.exists() {
        return Ok(());
    }
    if !overwrite {
        return Err(RemuxError::Exists { path: output.display().to_string() });
    }
    let err = |source| RemuxError::Write { path: output.display().to_string(), source };
    if output.extension().is_some_and(|e| e == "m3u8") {
        if let Ok(p) = std::fs::read_to_string(output)
            .map_err(err)
            .and_then(|t| crate::mux::hls::Playlist::parse(&t).map_err(|e| err(std::io::Error::other(e))))
        {
            let dir = output.parent().unwrap_or(Path::new("."));
            for s in p.segments.iter().filter(|s| !s.uri.contains("..") && !s.uri.starts_with('/')) {
                let _ = std::fs::remove_file(dir.join(&s.uri));
            }
        }
    }
    std::fs::remove_file(output).map_err(err)
}

/// The storage for an output's folder; its scratch folder goes when the remux is done.
struct OutDir {
    storage: FsStorage,
    name: String,
}

impl OutDir {
    fn open(output: &Path) -> Result<Self, RemuxError> {
        let (dir, name) = split_output(output)?;
        Ok(OutDir { storage: FsStorage::new(&dir)?, name })
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        // Only removed when empty: a concurrent recorder's files stay.
        let _ = std::fs::remove_dir(self.storage.root().join(crate::storage::fs::PARTIAL_DIR));
    }
}

/// Remuxes `input` (FLV) into `output`. For HLS, `output` is the playlist and its segments
/// go beside it, named and cut as the live recorder does.
pub fn remux(input: &Path, format: Format, output: &Path, opts: RemuxOptions) -> Result<RemuxReport, RemuxError> {
    let started = Instant::now();
    let data = map(input)?;
    let bytes_in = data.len() as u64;
    make_room(output, opts.overwrite)?;
    if format == Format::Hls {
        return remux_hls(data, output, opts.segment_ms, started, bytes_in);
    }
    let new_muxer = || -> Box<dyn Muxer> {
        match format {
            Format::Flv => Box::new(crate::mux::flv::FlvMuxer::new()),
            Format::Aac => Box::new(crate::mux::aac::AdtsMuxer::new()),
            _ => Box::new(crate::mux::mp4::Mp4Muxer::new()),
        }
    };
    // One file: the segmenter only orders headers before media, as it does live.
    let layout = Layout { file_ms: 0, segment_ms: None, split_on_config_change: false };
    let out_dir = OutDir::open(output)?;
    let mut out: Chunks = Vec::with_capacity(4096);
    let mut actions = Vec::with_capacity(8);

    // Pass 1 builds the index a container wants up front (FLV onMetaData, MP4 moov): muxing
    // costs only header building here, payloads are refcounted slices and nothing is written.
    let mut muxer = new_muxer();
    let mut segmenter = Segmenter::new(layout);
    let mut reader = FileReader::new(data.clone())?;
    let mut frames = 0u64;
    while let Some(f) = reader.next_frame()? {
        frames += 1;
        segmenter.push(&f, &mut actions);
        for f in actions.drain(..).filter_map(|a| a.frame().cloned()) {
            muxer.push(&f, &mut out)?;
        }
        out.clear();
    }
    let rewrite = muxer.finish(&mut out)?;
    out.clear();

    // Pass 2 writes the final file once, in order: the index, then the body bytes the final
    // file keeps (the same muxer output, filtered by the rewrite's ranges), then the tail.
    // The live recorder cannot know the future and reserves room instead; a file can.
    let mut w = out_dir.storage.create(&format!("remux-{}-{}", std::process::id(), out_dir.name))?;
    let mut filter = rewrite.as_ref().map(|r| RangeFilter::new(&r.ranges));
    if let Some(r) = &rewrite {
        w.write(std::slice::from_ref(&r.head))?;
    }
    let mut muxer = new_muxer();
    let mut segmenter = Segmenter::new(layout);
    let mut reader = FileReader::new(data)?;
    let mut batch: Chunks = Vec::with_capacity(BATCH_CHUNKS + 64);
    let mut push = |out: &mut Chunks, batch: &mut Chunks, w: &mut Box<dyn crate::storage::FileWriter>, force: bool| {
        match &mut filter {
            Some(f) => out.drain(..).for_each(|c| f.keep(c, batch)),
            None => batch.append(out),
        }
        if force || batch.len() >= BATCH_CHUNKS {
            let r = w.write(batch);
            batch.clear();
            return r;
        }
        Ok(())
    };
    while let Some(f) = reader.next_frame()? {
        segmenter.push(&f, &mut actions);
        for f in actions.drain(..).filter_map(|a| a.frame().cloned()) {
            muxer.push(&f, &mut out)?;
        }
        push(&mut out, &mut batch, &mut w, false)?;
    }
    muxer.finish(&mut out)?;
    push(&mut out, &mut batch, &mut w, true)?;
    if let Some(r) = &rewrite {
        w.write(std::slice::from_ref(&r.tail))?;
    }
    let stored = w.finish(&out_dir.name, Finalize::default())?;
    Ok(RemuxReport { frames, bytes_in, bytes_out: stored.size, seconds: started.elapsed().as_secs_f64() })
}

/// Chunks per write call in pass 2.
const BATCH_CHUNKS: usize = 4096;

/// Keeps the parts of a stream of chunks that fall in ascending byte ranges of the stream.
struct RangeFilter<'a> {
    ranges: &'a [std::ops::Range<u64>],
    idx: usize,
    pos: u64,
}

impl<'a> RangeFilter<'a> {
    fn new(ranges: &'a [std::ops::Range<u64>]) -> Self {
        Self { ranges, idx: 0, pos: 0 }
    }

    fn keep(&mut self, chunk: Bytes, out: &mut Chunks) {
        let start = self.pos;
        let end = start + chunk.len() as u64;
        self.pos = end;
        while let Some(r) = self.ranges.get(self.idx) {
            if r.start >= end {
                break;
            }
            if r.end > start {
                let s = (r.start.max(start) - start) as usize;
                let e = (r.end.min(end) - start) as usize;
                if s == 0 && e == chunk.len() {
                    out.push(chunk.clone());
                } else {
                    out.push(chunk.slice(s..e));
                }
            }
            if r.end <= end {
                self.idx += 1;
            } else {
                break;
            }
        }
    }
}

fn split_output(output: &Path) -> Result<(std::path::PathBuf, String), RemuxError> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    };
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| RemuxError::Unsupported(format!("bad output path {}", output.display())))?
        .to_string();
    Ok((dir, name))
}

/// HLS through the live recorder's output: the same segmenter, TS muxer and segment names.
fn remux_hls(
    data: Bytes,
    output: &Path,
    segment_ms: u64,
    started: Instant,
    bytes_in: u64,
) -> Result<RemuxReport, RemuxError> {
    let out_dir = OutDir::open(output)?;
    let storage = &out_dir.storage;
    let key = out_dir.name.clone();
    let mut reader = FileReader::new(data)?;
    let mut out = Output::new(Format::Hls, 0, segment_ms);
    let mut events = Vec::with_capacity(8);
    let mut frames = 0u64;
    let mut bytes_out = 0u64;
    let mut playlist = Playlist::new(segment_ms.div_ceil(1000).max(1));
    let mut handle = |events: &mut Vec<Event>, out: &mut Output, playlist: &mut Playlist| -> Result<(), RemuxError> {
        for ev in events.drain(..) {
            match ev {
                Event::Segment { piece, mut body, discontinuity } => {
                    let mut w = match body.writer.take() {
                        Some(w) => w,
                        None => storage.create(&format!("remux-{}-{}-{}", std::process::id(), key, piece.seq))?,
                    };
                    w.write(&body.pending)?;
                    let stored = w.finish(&segment_key(&key, piece.seq), Finalize::default())?;
                    bytes_out += stored.size;
                    playlist.segments.push(Segment {
                        uri: relative_uri(&key, &stored.key),
                        duration_secs: piece.duration_ms as f64 / 1000.0,
                        program_date_time_ms: None,
                        discontinuity,
                    });
                }
                Event::Disabled(e, writer) => {
                    if let Some(w) = writer {
                        w.abort();
                    }
                    return Err(e.into());
                }
                Event::Skipped(e) => tracing::warn!(error = &e as &dyn std::error::Error, "frame skipped"),
                Event::Opened { .. } | Event::File { .. } => {}
            }
        }
        // Large segments are written as they grow.
        if out.pending_bytes() >= BATCH_BYTES {
            if let Some(body) = &mut out.body {
                let chunks = body.take_pending();
                let w = match body.writer.take() {
                    Some(w) => w,
                    None => storage.create(&format!("remux-{}-{}-open", std::process::id(), key))?,
                };
                let w = body.writer.insert(w);
                w.write(&chunks)?;
            }
        }
        Ok(())
    };
    while let Some(f) = reader.next_frame()? {
        frames += 1;
        out.push(&f, 0, &mut events);
        handle(&mut events, &mut out, &mut playlist)?;
    }
    out.finish(0, &mut events);
    handle(&mut events, &mut out, &mut playlist)?;
    playlist.ended = true;
    let mut w = storage.create(&format!("remux-{}-{}", std::process::id(), key))?;
    w.write(&[playlist.render().into()])?;
    let stored = w.finish(&key, Finalize::default())?;
    bytes_out += stored.size;
    Ok(RemuxReport { frames, bytes_in, bytes_out, seconds: started.elapsed().as_secs_f64() })
}

/// Finishes a file a crash left under `.partial/`: an FLV gets its index rebuilt (a torn last
/// tag is dropped), a fragmented MP4 becomes a faststart MP4 holding every complete fragment.
pub fn recover(input: &Path, output: &Path) -> Result<RemuxReport, RemuxError> {
    let started = Instant::now();
    let mut magic = [0u8; 8];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(input)
            .map_err(|source| RemuxError::Read { path: input.display().to_string(), source })?;
        let _ = f.read(&mut magic).map_err(|source| RemuxError::Read { path: input.display().to_string(), source })?;
    }
    if &magic[..3] == b"FLV" {
        return remux(input, Format::Flv, output, RemuxOptions::default());
    }
    if &magic[4..8] != b"ftyp" {
        return Err(RemuxError::Unsupported(format!("{}: neither FLV nor MP4", input.display())));
    }
    let err = |source| RemuxError::Read { path: input.display().to_string(), source };
    let file = std::fs::File::open(input).map_err(err)?;
    let bytes_in = file.metadata().map_err(err)?.len();
    let rw = crate::mux::mp4::recover_from(std::io::BufReader::new(file))
        .map_err(|e| RemuxError::Unsupported(format!("{}: {e}", input.display())))?;
    let Some(Rewrite { head, ranges, tail, .. }) = rw else {
        return Err(RemuxError::Unsupported(format!("{}: no complete fragment to recover", input.display())));
    };
    let (dir, name) = split_output(output)?;
    let storage = FsStorage::new(&dir)?;
    let mut w = storage.create(&format!("recover-{}-{name}", std::process::id()))?;
    let data = map(input)?;
    w.write(&[data])?;
    let stored = w.finish(&name, Finalize { head: &head, ranges: &ranges, tail: &tail })?;
    Ok(RemuxReport { frames: 0, bytes_in, bytes_out: stored.size, seconds: started.elapsed().as_secs_f64() })
}
