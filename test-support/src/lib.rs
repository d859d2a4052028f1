//! What Reel's tests share, in one place:
//!
//! - [`ffmpeg`]: the one ffmpeg/ffprobe harness. Media fixtures made by ffmpeg at test time,
//!   scratch directories, and ffmpeg and ffprobe (and tstools' `tsreport`) as the judges: clean
//!   decoding, identical packets and frames, durations. The muxers' golden tests
//!   (`tests/golden`) and the end-to-end tests (`tests/e2e`) both use it.
//! - [`ts`] and [`mp4`]: small MPEG-TS and MP4 readers for assertions, written apart from the
//!   muxers they judge. The muxers' unit tests use them too.
//! - [`plugins`]: the example plugins of `plugins/`, built for `wasm32-wasip2` once per
//!   process; the policy tests, the end-to-end tests and the policy bench load them.
//! - [`postgres`]: a real, throw-away PostgreSQL server on 127.0.0.1, in a temporary directory.
//! - [`s3`]: a real S3 server (SeaweedFS) on 127.0.0.1, that can be stopped and started again.
//!
//! This crate does not depend on `reel`, so `reel` can take it as a dev-dependency. Helpers
//! that need Reel's types (frames, muxers) live in the test targets.

pub mod ffmpeg;
pub mod mp4;
pub mod plugins;
pub mod postgres;
pub mod s3;
pub mod ts;
