//! The one ffmpeg test harness: media made by ffmpeg at test time, and ffmpeg/ffprobe as the
//! judges. The muxers' golden tests use it as `crate::mux::golden` (they run with `--features
//! golden`, which `tests/run` sets, so `cargo test --lib` needs no ffmpeg); the end-to-end
//! tests include this same file (`tests/e2e/main.rs`), with `media` and `mux` in scope.
// Each of the two test crates uses part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;

use crate::media::flv::FileReader;
use crate::media::Frame;
use crate::mux::{Chunks, Muxer};

/// Six seconds of 25 fps H.264 with B-frames (keyframe every 2 s) and 44.1 kHz AAC.
pub const AV_ARGS: &str = "-f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i sine=frequency=440:sample_rate=44100 \
     -t 6 -c:v libx264 -preset veryfast -g 50 -bf 2 -c:a aac -b:a 96k";
/// Five seconds of 48 kHz mono AAC.
pub const AUDIO_ARGS: &str = "-f lavfi -i sine=frequency=440:sample_rate=48000 -t 5 -c:a aac -ac 1";

/// Whether `tool` is installed (it can be started).
pub fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// A scratch directory unique to one test; removed unless the test failed or
/// `REEL_KEEP_GOLDEN` is set.
pub struct Dir {
    path: PathBuf,
}

impl Dir {
    pub fn new(name: &str) -> Self {
        assert!(
            have("ffmpeg") && have("ffprobe"),
            "golden test {name} needs ffmpeg and ffprobe: tests/run installs them"
        );
        let path = std::env::temp_dir().join(format!("reel-mux-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Self { path }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    /// Runs ffmpeg with `args` and `-f flv` into `file`.
    pub fn make_flv(&self, file: &str, args: &str) -> PathBuf {
        let out = self.path(file);
        ffmpeg(&format!("-y -v error {args} -f flv {{}}"), &[&out]);
        out
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("REEL_KEEP_GOLDEN").is_some() {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs ffmpeg with whitespace-separated `args`, each `{}` replaced by the next path;
/// returns its standard output.
pub fn ffmpeg(args: &str, paths: &[&Path]) -> String {
    run("ffmpeg", args, paths)
}

pub fn ffprobe(args: &str, paths: &[&Path]) -> String {
    run("ffprobe", args, paths)
}

fn output(tool: &str, args: &str, paths: &[&Path]) -> std::process::Output {
    let mut paths = paths.iter();
    let argv: Vec<OsString> = args
        .split_whitespace()
        .map(|a| match a {
            "{}" => paths.next().expect("a path for each {}").as_os_str().to_owned(),
            a => a.into(),
        })
        .collect();
    let mut cmd = Command::new(tool);
    if tool == "ffmpeg" {
        cmd.arg("-nostdin");
    }
    cmd.args(argv).output().expect("run tool")
}

fn run(tool: &str, args: &str, paths: &[&Path]) -> String {
    let o = output(tool, args, paths);
    assert!(o.status.success(), "{tool} {args} {paths:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn read_frames(path: &Path) -> Vec<Frame> {
    let data = std::fs::read(path).expect("read flv");
    let mut r = FileReader::new(Bytes::from(data)).expect("flv header");
    let mut v = Vec::new();
    while let Some(f) = r.next_frame().expect("flv tag") {
        v.push(f);
    }
    v
}

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

/// What `ffmpeg -v error -i path -f null -` reports: nothing for a clean file.
pub fn decode_errors(path: &Path) -> String {
    let o = output("ffmpeg", "-v error -i {} -f null -", &[path]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if o.status.success() {
        err
    } else {
        format!("ffmpeg failed: {err}")
    }
}

/// Fails the test unless `path` decodes without a word from ffmpeg.
pub fn assert_decodes_cleanly(path: &Path) {
    let err = decode_errors(path);
    assert!(err.trim().is_empty(), "decoding {} reported: {err}", path.display());
}

/// One line of `ffmpeg -f framemd5`: stream, dts, pts, size, hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub stream: u32,
    pub dts: i64,
    pub pts: i64,
    pub size: u64,
    pub hash: String,
}

pub fn parse_framemd5(text: &str) -> Vec<Packet> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            if f.len() < 6 {
                return None;
            }
            Some(Packet {
                stream: f[0].parse().ok()?,
                dts: f[1].parse().ok()?,
                pts: f[2].parse().ok()?,
                size: f[4].parse().ok()?,
                hash: f[5].to_string(),
            })
        })
        .collect()
}

/// Packets of stream type `map` (`v` or `a`) as ffmpeg demuxes them (`-c copy`, timestamps
/// as in the file).
pub fn packets(path: &Path, map: &str) -> Vec<Packet> {
    parse_framemd5(&ffmpeg(&format!("-v error -copyts -i {{}} -map 0:{map} -c copy -f framemd5 -"), &[path]))
}

/// Decoded frames of stream type `map` (each picture or audio frame once, as decoded).
pub fn decoded(path: &Path, map: &str) -> Vec<Packet> {
    parse_framemd5(&ffmpeg(&format!("-v error -i {{}} -map 0:{map} -fps_mode passthrough -f framemd5 -"), &[path]))
}

/// Hashes of the decoded frames of stream `v` or `a`.
pub fn frame_hashes(path: &Path, stream: &str) -> Vec<String> {
    decoded(path, stream).into_iter().map(|p| p.hash).collect()
}

/// Key frame flags of the video packets, in order.
pub fn video_key_flags(path: &Path) -> Vec<bool> {
    let out = ffprobe("-v error -select_streams v:0 -show_entries packet=flags -of csv=p=0 {}", &[path]);
    out.lines().map(|l| l.contains('K')).collect()
}

/// `ffprobe -show_format -show_streams` as JSON.
pub fn ffprobe_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&ffprobe("-v error -show_format -show_streams -of json {}", &[path])).expect("ffprobe JSON")
}

pub fn assert_same_frames(src: &Path, out: &Path, stream: &str) {
    let a = frame_hashes(src, stream);
    let b = frame_hashes(out, stream);
    assert!(!a.is_empty(), "source has {stream} frames");
    assert_eq!(a.len(), b.len(), "decoded {stream} frame count");
    assert!(a == b, "decoded {stream} frames differ");
}

/// Presentation span of a stream's packets, in seconds: max(pts + duration) - min(pts).
pub fn span(path: &Path, stream: &str) -> f64 {
    let args =
        format!("-v error -select_streams {stream} -show_entries packet=pts_time,duration_time -of csv=p=0 {{}}");
    let out = ffprobe(&args, &[path]);
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for l in out.lines() {
        let mut it = l.split(',');
        let Some(Ok(pts)) = it.next().map(str::parse::<f64>) else { continue };
        let dur = it.next().and_then(|d| d.parse::<f64>().ok()).unwrap_or(0.0);
        lo = lo.min(pts);
        hi = hi.max(pts + dur);
    }
    assert!(hi >= lo, "no packets with timestamps in {}", path.display());
    hi - lo
}

pub fn assert_same_duration(src: &Path, s1: &str, out: &Path, s2: &str, tolerance: f64) {
    let (a, b) = (span(src, s1), span(out, s2));
    assert!((a - b).abs() <= tolerance, "durations {a} vs {b}");
}

/// Fails the test unless ffmpeg has the encoder `name`.
pub fn need_encoder(name: &str) {
    let out = Command::new("ffmpeg").args(["-hide_banner", "-encoders"]).output();
    let found = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().any(|w| w == name));
    assert!(found, "this golden test needs ffmpeg's {name} encoder (Debian's ffmpeg has it)");
}

/// Runs `cmd` with `args`; returns (stdout, stderr) and fails the test if it fails.
pub fn tool(cmd: &str, args: &[&str]) -> (String, String) {
    let o = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(o.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Runs ffmpeg quietly (`-hide_banner -nostdin -v error -y`) with `args`.
pub fn ffmpeg_argv(args: &[&str]) {
    let mut all = vec!["-hide_banner", "-nostdin", "-v", "error", "-y"];
    all.extend_from_slice(args);
    tool("ffmpeg", &all);
}
