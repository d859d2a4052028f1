//! The muxers' golden tests: media made by ffmpeg at test time, remuxed by Reel's pure muxers
//! through the `reel` crate's public API, and judged by ffmpeg and ffprobe (clean decoding, the
//! same frames and packets, durations) and by the readers of `reel-test-support`.
//!
//!     cargo test -p reel --test golden
//!
//! They need ffmpeg and ffprobe (tests/run installs them); `cargo test --lib` does not.

use std::path::Path;

use bytes::Bytes;
use reel::media::flv::FileReader;
use reel::media::Frame;
use reel::mux::{Chunks, Muxer};

mod aac;
mod mp4;
mod ts;

/// Every frame of the FLV file at `path`.
pub fn read_frames(path: &Path) -> Vec<Frame> {
    let data = std::fs::read(path).expect("read flv");
    let mut r = FileReader::new(Bytes::from(data)).expect("flv header");
    let mut v = Vec::new();
    while let Some(f) = r.next_frame().expect("flv tag") {
        v.push(f);
    }
    v
}

/// Writes a muxer's output to `path`.
pub fn write(path: &Path, chunks: &Chunks) {
    let v: Vec<u8> = chunks.iter().flat_map(|b| b.iter().copied()).collect();
    std::fs::write(path, v).expect("write output");
}

/// Muxes every frame of the FLV file `src` into `out`.
pub fn mux_file(src: &Path, out: &Path, m: &mut dyn Muxer) {
    let mut chunks = Vec::new();
    for f in read_frames(src) {
        m.push(&f, &mut chunks).expect("push");
    }
    assert!(m.finish(&mut chunks).expect("finish").is_none());
    write(out, &chunks);
}
