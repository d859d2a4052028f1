//! The one ffmpeg test harness: media made by ffmpeg at test time (nothing binary is
//! committed), scratch directories, and ffmpeg, ffprobe and tstools' `tsreport` as the judges.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// Six seconds of 25 fps H.264 with B-frames (keyframe every 2 s) and 44.1 kHz AAC.
pub const AV_ARGS: &str = "-f lavfi -i testsrc2=size=320x240:rate=25 -f lavfi -i sine=frequency=440:sample_rate=44100 \
     -t 6 -c:v libx264 -preset veryfast -g 50 -bf 2 -c:a aac -b:a 96k";
/// Five seconds of 48 kHz mono AAC.
pub const AUDIO_ARGS: &str = "-f lavfi -i sine=frequency=440:sample_rate=48000 -t 5 -c:a aac -ac 1";

/// Whether `tool` is installed (it can be started).
pub fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// A fresh, empty directory for one test of this process (kept afterwards; see [`Dir`] for one
/// that cleans up).
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reel-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    d
}

/// A scratch directory for one test that needs ffmpeg and ffprobe; removed unless the test
/// failed or `REEL_KEEP_TEST_DIRS` is set.
pub struct Dir {
    path: PathBuf,
}

impl Dir {
    /// Fails the test unless ffmpeg and ffprobe are installed.
    pub fn new(name: &str) -> Self {
        assert!(have("ffmpeg") && have("ffprobe"), "test {name} needs ffmpeg and ffprobe: tests/run installs them");
        Self { path: scratch_dir(name) }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    /// Runs ffmpeg with `args` (see [`AV_ARGS`]) and `-f flv` into `file`.
    pub fn make_flv(&self, file: &str, args: &str) -> PathBuf {
        let out = self.path(file);
        ffmpeg(&format!("-y -v error {args} -f flv {{}}"), &[&out]);
        out
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("REEL_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs `cmd` to its end; fails the test if it cannot start or fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
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

/// Runs ffmpeg with whitespace-separated `args`, each `{}` replaced by the next path;
/// returns its standard output.
pub fn ffmpeg(args: &str, paths: &[&Path]) -> String {
    templated("ffmpeg", args, paths)
}

/// Runs ffprobe like [`ffmpeg`].
pub fn ffprobe(args: &str, paths: &[&Path]) -> String {
    templated("ffprobe", args, paths)
}

fn output(tool: &str, args: &str, paths: &[&Path]) -> Output {
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
    cmd.args(argv).output().unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

fn templated(tool: &str, args: &str, paths: &[&Path]) -> String {
    let o = output(tool, args, paths);
    assert!(o.status.success(), "{tool} {args} {paths:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Fails the test unless ffmpeg has the encoder `name`.
pub fn need_encoder(name: &str) {
    let out = Command::new("ffmpeg").args(["-hide_banner", "-encoders"]).output();
    let found = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().any(|w| w == name));
    assert!(found, "this test needs ffmpeg's {name} encoder (Debian's ffmpeg has it)");
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// An FLV of `seconds` of 320x240 25 fps H.264 (keyframe every 2 s, `bframes` B-frames; no
/// video for `None`) and, with `audio`, 44.1 kHz AAC. Made once per process for each set of
/// arguments.
pub fn flv_fixture(name: &str, seconds: u32, audio: bool, bframes: Option<u32>) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let dir = DIR.get_or_init(|| scratch_dir("fixtures"));
    let video = bframes.map_or("none".to_string(), |b| format!("bf{b}"));
    let path = dir.join(format!("{name}-{seconds}s-a{}-v{video}.flv", u8::from(audio)));
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if path.exists() {
        return path;
    }
    let tmp = path.with_extension("tmp.flv");
    let mut c = Command::new("ffmpeg");
    c.args(["-nostdin", "-v", "error", "-y"]);
    if bframes.is_some() {
        c.args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"]);
    }
    if audio {
        c.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
    }
    c.args(["-t", &seconds.to_string()]);
    if let Some(bf) = bframes {
        let bf = bf.to_string();
        c.args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "50",
            "-keyint_min",
            "50",
            "-sc_threshold",
            "0",
            "-bf",
            &bf,
            "-pix_fmt",
            "yuv420p",
        ]);
    }
    if audio {
        c.args(["-c:a", "aac", "-b:a", "64k"]);
    }
    c.args(["-f", "flv"]).arg(&tmp);
    run(&mut c);
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// [`flv_fixture`] with two B-frames, or audio only without `video`.
pub fn fixture(name: &str, seconds: u32, audio: bool, video: bool) -> PathBuf {
    flv_fixture(name, seconds, audio, video.then_some(2))
}

// ---------------------------------------------------------------------------------------------
// Judges

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

/// One line of `ffmpeg -f framemd5`: stream, dts, pts, size, hash (times in the stream's
/// time base).
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

/// Fails the test unless `src` and `out` decode to the same frames of stream `v` or `a`.
pub fn assert_same_frames(src: &Path, out: &Path, stream: &str) {
    let a = frame_hashes(src, stream);
    let b = frame_hashes(out, stream);
    assert!(!a.is_empty(), "source has {stream} frames");
    assert_eq!(a.len(), b.len(), "decoded {stream} frame count");
    assert!(a == b, "decoded {stream} frames differ");
}

/// A packet of [`timed_packets`]: times in milliseconds from the first packet's dts.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedPacket {
    pub dts_ms: f64,
    pub pts_ms: f64,
    pub size: u64,
    pub hash: String,
}

/// Packets of one stream (`map` as in `-map`, e.g. `0:v`) as `ffmpeg -c copy -f framemd5`
/// sees them, with times in milliseconds relative to the first packet's dts.
pub fn timed_packets(path: &Path, map: &str) -> Vec<TimedPacket> {
    let p = path.to_str().expect("a UTF-8 path");
    let (out, _) =
        tool("ffmpeg", &["-nostdin", "-v", "error", "-i", p, "-map", map, "-c", "copy", "-f", "framemd5", "-"]);
    let mut ms_per_tick = 1.0;
    let mut rows = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("#tb 0: ") {
            let (n, d) = rest.split_once('/').expect("a time base n/d");
            ms_per_tick = n.trim().parse::<f64>().unwrap() / d.trim().parse::<f64>().unwrap() * 1000.0;
        }
    }
    for p in parse_framemd5(&out) {
        rows.push(TimedPacket {
            dts_ms: p.dts as f64 * ms_per_tick,
            pts_ms: p.pts as f64 * ms_per_tick,
            size: p.size,
            hash: p.hash,
        });
    }
    if let Some(first) = rows.first().map(|r| r.dts_ms) {
        for r in &mut rows {
            r.dts_ms -= first;
            r.pts_ms -= first;
        }
    }
    rows
}

/// Fails the test unless `src` and `out` hold the same packets of stream `map` (`0:v`): same
/// bytes, same relative timing within `tolerance_ms` (for time bases that do not map exactly).
/// Returns the packet count.
pub fn assert_same_packets(src: &Path, out: &Path, map: &str, tolerance_ms: f64) -> usize {
    let a = timed_packets(src, map);
    let b = timed_packets(out, map);
    assert!(!a.is_empty(), "no {map} packets in the source");
    assert_eq!(a.len(), b.len(), "{map}: packet count");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!((x.size, &x.hash), (y.size, &y.hash), "{map} packet {i}: size/hash");
        assert!((x.dts_ms - y.dts_ms).abs() <= tolerance_ms, "{map} packet {i}: dts {} vs {}", x.dts_ms, y.dts_ms);
        assert!((x.pts_ms - y.pts_ms).abs() <= tolerance_ms, "{map} packet {i}: pts {} vs {}", x.pts_ms, y.pts_ms);
    }
    a.len()
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

/// A `format` entry of ffprobe (`duration`, `start_time`) in seconds.
pub fn format_seconds(path: &Path, entry: &str) -> f64 {
    let out = ffprobe(&format!("-v error -show_entries format={entry} -of csv=p=0 {{}}"), &[path]);
    out.trim().parse().unwrap_or_else(|_| panic!("{entry} of {}: {out:?}", path.display()))
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

/// Fails the test unless stream `s1` of `src` and `s2` of `out` span the same time, within
/// `tolerance` seconds.
pub fn assert_same_duration(src: &Path, s1: &str, out: &Path, s2: &str, tolerance: f64) {
    let (a, b) = (span(src, s1), span(out, s2));
    assert!((a - b).abs() <= tolerance, "durations {a} vs {b}");
}

/// What tstools' `tsreport -buffering` finds wrong with an MPEG-TS file.
#[derive(Clone, Debug)]
pub struct TsReport {
    /// PCR gaps over 100 ms.
    pub bad_pcr_gaps: usize,
    /// Access units complete only after their decode time (`DTS < PCR`).
    pub late: usize,
    /// PCRs that repeat the previous one.
    pub repeated_pcrs: usize,
    /// Whether tsreport exited with success.
    pub exit_ok: bool,
    /// The whole report, for messages.
    pub text: String,
}

/// Runs `tsreport -buffering` on `path`; fails the test if tstools is missing.
pub fn tsreport(path: &Path) -> TsReport {
    let out = Command::new("tsreport")
        .arg("-buffering")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("tstools' tsreport is needed (tests/run installs it): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let bad_pcr_gaps = text
        .lines()
        .find_map(|l| l.split("Bad (>.1s) gaps:").nth(1))
        .and_then(|r| r.split(',').next())
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no PCR summary for {}:\n{text}", path.display()));
    let late = text.lines().filter(|l| l.contains("< PCR")).count();
    let repeated_pcrs = text.lines().filter(|l| l.contains("repeats the previous PCR")).count();
    TsReport { bad_pcr_gaps, late, repeated_pcrs, exit_ok: out.status.success(), text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framemd5_lines_parse_and_comments_are_skipped() {
        let text = "#format: frame checksums\n#tb 0: 1/1000\n0,        -80,          0,       40,     1234, 0123abcd\n\n1, 0, 0, 23, 5, ff\nbad line\n";
        let p = parse_framemd5(text);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], Packet { stream: 0, dts: -80, pts: 0, size: 1234, hash: "0123abcd".into() });
        assert_eq!((p[1].stream, p[1].size), (1, 5));
    }
}
