//! The recordings play in a real browser: headless Chromium plays the MP4 in a `<video>` element
//! and the HLS playlist through hls.js, and both seek.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::*;

const HLS_JS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/browser/node_modules/hls.js/dist/hls.min.js");

/// The page: plays each source, seeks near its end, and posts what the player saw to `/result`.
const PAGE: &str = r#"<!doctype html>
<html><body>
<script src="/hls.min.js"></script>
<script>
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, test, ms) {
  const end = Date.now() + ms;
  while (!test()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await wait(20);
  }
}
async function check(kind, src) {
  const r = { kind, src, fatal: [] };
  const v = document.createElement('video');
  v.muted = true;
  document.body.appendChild(v);
  try {
    if (kind === 'hls') {
      if (!Hls.isSupported()) throw new Error('hls.js: MSE not supported');
      const hls = new Hls();
      hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) r.fatal.push(d.details); });
      hls.loadSource(src);
      hls.attachMedia(v);
    } else {
      v.src = src;
    }
    await until('metadata', () => v.readyState >= 1 || v.error, 15000);
    if (v.error) throw new Error('media error ' + v.error.code + ' ' + v.error.message);
    r.duration = v.duration;
    r.width = v.videoWidth;
    r.height = v.videoHeight;
    await v.play();
    await until('playback', () => v.currentTime > 1.0 || v.error, 15000);
    r.played = v.currentTime;
    const target = Math.max(0, v.duration - 3);
    v.currentTime = target;
    await until('seek', () => !v.seeking && v.currentTime >= target, 15000);
    await until('playback after seek', () => v.currentTime > target + 0.5 || v.error, 15000);
    r.seeked_to = v.currentTime;
    r.frames = v.getVideoPlaybackQuality().totalVideoFrames;
    r.dropped = v.getVideoPlaybackQuality().droppedVideoFrames;
  } catch (e) {
    r.failure = String(e && e.message || e);
  }
  if (v.error) r.error = v.error.code + ' ' + v.error.message;
  v.pause();
  return r;
}
(async () => {
  const params = new URLSearchParams(location.search);
  const results = [];
  for (const [kind, src] of params) results.push(await check(kind, src));
  await fetch('/result', { method: 'POST', body: JSON.stringify(results) });
})();
</script>
</body></html>
"#;

/// A static file server for the page, hls.js and the recordings, with byte ranges (players
/// seek by range). `POST /result` hands the body to the test.
fn serve(root: PathBuf, results: mpsc::Sender<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let root = root.clone();
            let results = results.clone();
            std::thread::spawn(move || {
                let _ = handle(conn, &root, &results);
            });
        }
    });
    port
}

fn handle(conn: TcpStream, root: &Path, results: &mpsc::Sender<String>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
        let (mut range, mut length) = (None, 0usize);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((&h, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = value.trim().strip_prefix("bytes=").map(str::to_string),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        if method == "POST" {
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            let _ = results.send(String::from_utf8_lossy(&body).into_owned());
            out.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        let path = target.split('?').next().unwrap_or("/");
        let (body, kind) = match path {
            "/" => (PAGE.as_bytes().to_vec(), "text/html"),
            "/hls.min.js" => (std::fs::read(HLS_JS)?, "application/javascript"),
            p if !p.contains("..") => {
                let file = root.join(p.trim_start_matches('/'));
                let kind = match file.extension().and_then(|e| e.to_str()) {
                    Some("mp4") => "video/mp4",
                    Some("m3u8") => "application/vnd.apple.mpegurl",
                    Some("ts") => "video/mp2t",
                    _ => "application/octet-stream",
                };
                match std::fs::read(&file) {
                    Ok(b) => (b, kind),
                    Err(_) => {
                        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
                        continue;
                    }
                }
            }
            _ => (Vec::new(), "text/plain"),
        };
        let total = body.len();
        let (status, start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
            Some((a, b)) => {
                let start: usize = a.parse().unwrap_or(0).min(total);
                let end: usize = b.parse().map(|e: usize| e + 1).unwrap_or(total).min(total);
                ("206 Partial Content", start, end.max(start))
            }
            None => ("200 OK", 0, total),
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nCache-Control: no-store\r\n",
            end - start
        );
        if status.starts_with("206") {
            head.push_str(&format!("Content-Range: bytes {start}-{}/{total}\r\n", end.saturating_sub(1)));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method != "HEAD" {
            out.write_all(&body[start..end])?;
        }
    }
}

fn chromium() -> &'static str {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| have(c))
        .expect("Chromium is installed (tests/run installs it)")
}

#[test]
fn mp4_and_hls_recordings_play_and_seek_in_chromium() {
    let src = fixture("av", 12, true, true);
    let reel = Reel::start("browser", "[storage.local]\nkind = \"fs\"\nroot = \"recordings\"\n[template.default]\nformats = [\"mp4\", \"hls\"]\ninterval = \"30m\"\nhls_segment = \"4s\"\nstorage = \"local\"\n[[rule]]\ntemplate = \"default\"\n");
    ffmpeg_publish(&src, &reel.url("live", "web"), false);
    let dir = reel.recordings().join("live/web");
    let (mp4, _) = wait_files(&dir, "mp4", 1, Duration::from_secs(10));
    let (m3u8, _) = crate::formats::final_playlist(&dir);
    assert_eq!(mp4.len(), 1, "{}", reel.log_text());
    let rel = |p: &Path| format!("/{}", p.strip_prefix(&reel.dir).unwrap().display());

    let results = play_in_chromium(&reel.dir, &[("mp4", rel(&mp4[0])), ("hls", rel(&m3u8))]);
    for r in results.as_array().unwrap() {
        let kind = r["kind"].as_str().unwrap();
        assert!(r.get("failure").is_none() && r.get("error").is_none(), "{kind} plays: {r}");
        assert_eq!(r["fatal"].as_array().map(Vec::len), Some(0), "{kind}: no fatal player error: {r}");
        assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(320), Some(240)), "{kind}: {r}");
        let duration = r["duration"].as_f64().unwrap();
        assert!((duration - 12.0).abs() < 0.2, "{kind}: duration {duration} s of a 12 s source: {r}");
        assert!(r["seeked_to"].as_f64().unwrap() > 9.0, "{kind}: seeks near the end: {r}");
        assert!(r["frames"].as_u64().unwrap() > 25, "{kind}: decodes frames: {r}");
    }
}

/// Plays each `(kind, path)` (`mp4` in a `<video>`, `hls` through hls.js; paths under `root`)
/// in headless Chromium, which plays, seeks near the end and plays on; returns what the player
/// saw of each.
pub(crate) fn play_in_chromium(root: &Path, sources: &[(&str, String)]) -> serde_json::Value {
    assert!(Path::new(HLS_JS).exists(), "hls.js is installed under tests/browser (tests/run runs npm ci there)");
    let query: Vec<String> = sources.iter().map(|(k, p)| format!("{k}={p}")).collect();
    let (tx, rx) = mpsc::channel();
    let port = serve(root.to_path_buf(), tx);
    let url = format!("http://127.0.0.1:{port}/?{}", query.join("&"));
    let profile = root.join("chromium-profile");
    let mut browser = {
        use std::os::unix::process::CommandExt;
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--mute-audio",
                "--no-first-run",
                "--autoplay-policy=no-user-gesture-required",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromium")
    };
    let got = rx.recv_timeout(Duration::from_secs(90));
    // The browser and its helpers are in their own process group: end the group.
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", browser.id())]).status();
    let _ = browser.wait();
    let got = got.expect("the page reports within 90 s");
    eprintln!("the player saw: {got}");
    serde_json::from_str(&got).unwrap()
}
