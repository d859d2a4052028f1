//! Reel: a live-stream recorder for edge nodes.
//!
//! Data flows one way: `ingest` (RTMP, sans-IO) turns bytes into [`media::Frame`]s, `record`
//! fans them out to per-recording muxers (`mux`), whose bytes go to a `storage` sink.
//! `policy` decides naming, rule priority and segmentation; `api` serves HTTP.

pub mod api;
pub mod catalog;
pub mod config;
pub mod ingest;
pub mod media;
pub mod mux;
pub mod notify;
pub mod policy;
pub mod record;
pub mod storage;
pub mod tasks;
