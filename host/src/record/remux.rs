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

/// Flush to disk every this many bytes of output.
const BATCH_BYTES: usize = 4 << 20;

pub fn remux(input: &Path, format: Format, output: &Path) -> Result<RemuxReport, RemuxError> {
    let started = Instant::now();
    let data = std::fs::read(input).map_err(|source| RemuxError::Read { path: input.display().to_string(), source })?;
    let bytes_in = data.len() as u64;
    let mut reader = FileReader::new(Bytes::from(data))?;
    let mut muxer: Box<dyn Muxer> = match format {
        Format::Flv => Box::new(crate::mux::flv::FlvMuxer::new()),
        other => return Err(RemuxError::Unsupported(format!("remux to {} is not available in this build", other.name()))),
    };
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    };
    let name = output
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| RemuxError::Unsupported(format!("bad output path {}", output.display())))?
        .to_string();
    let storage = FsStorage::new(&dir)?;
    let mut w = storage.create(&format!("remux-{}-{name}", std::process::id()))?;
    let mut out: Chunks = Vec::with_capacity(4096);
    let mut pending = 0usize;
    let mut frames = 0u64;
    while let Some(f) = reader.next_frame()? {
        frames += 1;
        let before = out.len();
        muxer.push(&f, &mut out)?;
        pending += out[before..].iter().map(Bytes::len).sum::<usize>();
        if pending >= BATCH_BYTES {
            w.write(&out)?;
            out.clear();
            pending = 0;
        }
    }
    let rw = muxer.finish(&mut out)?;
    w.write(&out)?;
    let Rewrite { head, ranges, tail } = rw.unwrap_or_default();
    let stored = w.finish(&name, Finalize { head: &head, ranges: &ranges, tail: &tail })?;
    Ok(RemuxReport { frames, bytes_in, bytes_out: stored.size, seconds: started.elapsed().as_secs_f64() })
}
