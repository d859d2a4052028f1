//! End-to-end tests: the real `reel` binary, real publishers, verified with ffprobe/ffmpeg.

mod allocator;
mod auth;
mod bench;
mod browser;
mod common;
mod config_errors;
mod disk_full;
mod errors;
mod events;
mod flv_record;
mod formats;
mod index;
mod limits;
mod naming;
mod plugins;
mod pull;
mod remux;
mod resume;
mod s3;
mod slow_plugin;
mod tasks;
mod validators;
