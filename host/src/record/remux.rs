//! Offline remux: the live recorder's muxers over an FLV file (`reel remux`).

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use crate::config::Format;
use crate::media::flv::FileReader;
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
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Media(#[from] crate::media::MediaError),
    #[error("{0}")]
    Mux(#[from] crate::mux::MuxError),
    #[error("{0}")]
    Storage(#[from] crate::storage::StorageError),
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

/// Remuxes `input` (FLV) into `output`. For HLS, `output` is the playlist and segments of
/// `segment_ms` (cut at keyframes) go beside it.
pub fn remux(input: &Path, format: Format, output: &Path, segment_ms: u64) -> Result<RemuxReport, RemuxError> {
    let started = Instant::now();
    let data = map(input)?;
    let bytes_in = data.len() as u64;
    let new_muxer = || -> Box<dyn Muxer> {
        match format {
            Format::Flv => Box::new(crate::mux::flv::FlvMuxer::new()),
            Format::Aac => Box::new(crate::mux::aac::AdtsMuxer::new()),
            _ => Box::new(crate::mux::mp4::Mp4Muxer::new()),
        }
    };
    if format == Format::Hls {
        return remux_hls(FileReader::new(data)?, output, segment_ms, started, bytes_in);
    }
    let (dir, name) = split_output(output)?;
    let storage = FsStorage::new(&dir)?;
    let mut out: Chunks = Vec::with_capacity(4096);

    // Pass 1 builds the index a container wants up front (FLV onMetaData, MP4 moov): muxing
    // costs only header building here, payloads are refcounted slices and nothing is written.
    let mut muxer = new_muxer();
    let mut reader = FileReader::new(data.clone())?;
    let mut frames = 0u64;
    while let Some(f) = reader.next_frame()? {
        frames += 1;
        muxer.push(&f, &mut out)?;
        out.clear();
    }
    let rewrite = muxer.finish(&mut out)?;
    out.clear();

    // Pass 2 writes the final file once, in order: the index, then the body bytes the final
    // file keeps (the same muxer output, filtered by the rewrite's ranges), then the tail.
    // The live recorder cannot know the future and finalises by copying; a file can.
    let mut w = storage.create(&format!("remux-{}-{name}", std::process::id()))?;
    let mut filter = rewrite.as_ref().map(|r| RangeFilter::new(&r.ranges));
    if let Some(r) = &rewrite {
        w.write(std::slice::from_ref(&r.head))?;
    }
    let mut muxer = new_muxer();
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
        muxer.push(&f, &mut out)?;
        push(&mut out, &mut batch, &mut w, false)?;
    }
    muxer.finish(&mut out)?;
    push(&mut out, &mut batch, &mut w, true)?;
    if let Some(r) = &rewrite {
        w.write(std::slice::from_ref(&r.tail))?;
    }
    let stored = w.finish(&name, Finalize::default())?;
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

fn remux_hls(
    mut reader: FileReader,
    output: &Path,
    segment_ms: u64,
    started: Instant,
    bytes_in: u64,
) -> Result<RemuxReport, RemuxError> {
    use crate::media::FrameKind;
    use crate::mux::hls::{Playlist, Segment};
    use crate::mux::ts::TsMuxer;

    let (dir, name) = split_output(output)?;
    let stem = name.strip_suffix(".m3u8").unwrap_or(&name).to_string();
    let storage = FsStorage::new(&dir)?;
    let has_video = reader.has_video;
    let mut ts = TsMuxer::new();
    let mut playlist = Playlist::new(segment_ms.div_ceil(1000));
    let mut out: Chunks = Vec::with_capacity(4096);
    let mut pending = 0usize;
    let mut w = None;
    let mut seg_first: Option<i64> = None;
    let mut frames = 0u64;
    let mut bytes_out = 0u64;
    let mut close = |w: Option<Box<dyn crate::storage::FileWriter>>,
                     ts: &mut TsMuxer,
                     out: &mut Chunks,
                     next_pts: Option<i64>,
                     playlist: &mut Playlist|
     -> Result<(), RemuxError> {
        let Some(mut w) = w else { return Ok(()) };
        ts.finish(out)?;
        w.write(out)?;
        out.clear();
        let stats = ts.stats();
        let dur = match (next_pts, stats.start_ms()) {
            (Some(n), Some(s)) if n > s => n - s,
            _ => stats.duration_ms(),
        };
        ts.reset_for_next_segment();
        let key = format!("{stem}{:05}.ts", playlist.segments.len());
        let stored = w.finish(&key, Finalize::default())?;
        bytes_out += stored.size;
        playlist.segments.push(Segment {
            uri: stored.key,
            duration_secs: dur.max(0) as f64 / 1000.0,
            program_date_time_ms: None,
            discontinuity: false,
        });
        Ok(())
    };
    while let Some(f) = reader.next_frame()? {
        frames += 1;
        let cut_point = f.is_sample()
            && if has_video { f.kind == FrameKind::Video && f.keyframe } else { f.kind == FrameKind::Audio };
        if cut_point && seg_first.is_some_and(|s| f.dts - s >= segment_ms as i64) {
            close(w.take(), &mut ts, &mut out, Some(f.pts()), &mut playlist)?;
            pending = 0;
            seg_first = None;
        }
        if w.is_none() && f.is_sample() {
            w = Some(storage.create(&format!("remux-{}-{stem}-{}", std::process::id(), playlist.segments.len()))?);
            seg_first = Some(f.dts);
        }
        let before = out.len();
        match ts.push(&f, &mut out) {
            Ok(()) => {}
            Err(e @ crate::mux::MuxError::UnsupportedCodec { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!("frame {frames} skipped: {e}");
                continue;
            }
        }
        pending += out[before..].iter().map(Bytes::len).sum::<usize>();
        if pending >= BATCH_BYTES {
            if let Some(w) = &mut w {
                w.write(&out)?;
                out.clear();
                pending = 0;
            }
        }
    }
    close(w.take(), &mut ts, &mut out, None, &mut playlist)?;
    playlist.ended = true;
    let text = playlist.render();
    let stored = storage.put(&name, text.as_bytes())?;
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
        return remux(input, Format::Flv, output, 0);
    }
    if &magic[4..8] != b"ftyp" {
        return Err(RemuxError::Unsupported(format!("{}: neither FLV nor MP4", input.display())));
    }
    let err = |source| RemuxError::Read { path: input.display().to_string(), source };
    let file = std::fs::File::open(input).map_err(err)?;
    let bytes_in = file.metadata().map_err(err)?.len();
    let rw = crate::mux::mp4::recover_from(std::io::BufReader::new(file))
        .map_err(|e| RemuxError::Unsupported(format!("{}: {e}", input.display())))?;
    let Some(Rewrite { head, ranges, tail }) = rw else {
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
