//! End-to-end tests: the real `reel` binary, real publishers, verified with ffprobe/ffmpeg.

// The ffmpeg harness the muxers' golden tests use; it names these through `crate::`.
use reel::{media, mux};
#[path = "../../host/src/mux/golden.rs"]
mod golden;

mod auth;
mod bench;
mod browser;
mod common;
mod config_errors;
mod errors;
mod flv_record;
mod formats;
mod limits;
mod plugins;
mod remux;
mod slow_plugin;
mod validators;
