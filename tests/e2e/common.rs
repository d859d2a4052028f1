//! Test harness: a running `reel serve`, publishing to it, and finding what it recorded. Media
//! fixtures, ffmpeg and ffprobe come from `reel_test_support::ffmpeg`, shared with the muxers'
//! golden tests.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REEL: &str = env!("CARGO_BIN_EXE_reel");

pub use reel_test_support::ffmpeg::{fixture, have, run, scratch_dir as test_dir};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `reel serve` in its own directory; stopped with SIGTERM on drop.
pub struct Reel {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub rtmp_port: u16,
    pub http_port: u16,
    pub log: PathBuf,
}

pub const BASE_CONFIG: &str = r#"
[storage.local]
kind = "fs"
root = "recordings"

[template.default]
formats = ["flv"]
interval = "30m"
storage = "local"

[[rule]]
template = "default"
"#;

impl Reel {
    /// Starts Reel with `[server]` filled in and `rest` as the rest of the configuration.
    pub fn start(name: &str, rest: &str) -> Self {
        Self::start_in(test_dir(name), rest)
    }

    /// Like [`Reel::start`] in an existing directory (a restart keeps `reel-data/`).
    pub fn start_in(dir: PathBuf, rest: &str) -> Self {
        Self::start_with_env(dir, rest, &[])
    }

    /// Like [`Reel::start_in`], with these variables added to Reel's environment.
    pub fn start_with_env(dir: PathBuf, rest: &str, env: &[(&str, &str)]) -> Self {
        // A port found free can be taken by another test before Reel binds it: then new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let rtmp_port = free_port();
            let http_port = free_port();
            let config = format!(
                "[server]\nrtmp_listen = \"127.0.0.1:{rtmp_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\ndata_dir = \"reel-data\"\n{rest}"
            );
            std::fs::write(dir.join("reel.toml"), config).unwrap();
            let log = dir.join(format!("reel-{rtmp_port}.log"));
            let child = Command::new(REEL)
                .args(["serve", "--config", "reel.toml"])
                .current_dir(&dir)
                .env("REEL_LOG", "info")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start reel");
            let mut r = Reel { child: Some(child), dir: dir.clone(), rtmp_port, http_port, log };
            // A cold start compiles the configured plugins first (a Python component takes
            // 5-10 s alone, longer beside other tests on a loaded machine).
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if TcpStream::connect(("127.0.0.1", rtmp_port)).is_ok() {
                    return r;
                }
                let exited = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).is_some();
                if exited {
                    assert!(
                        attempt < 5 && r.log_text().contains("Address already in use"),
                        "reel did not start: {}",
                        r.log_text()
                    );
                    r.child = None;
                    break;
                }
                assert!(Instant::now() < deadline, "reel did not start: {}", r.log_text());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn url(&self, app: &str, stream: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{app}/{stream}", self.rtmp_port)
    }

    /// One HTTP/1.1 request to the API: status and body (JSON when it parses, else a string).
    pub fn api(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
        http(self.http_port, method, path, body.map(|b| b.to_string()).as_deref())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn recordings(&self) -> PathBuf {
        self.dir.join("recordings")
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("reel did not exit after SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Reel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Publishes `src` with ffmpeg (`-c copy`); `realtime` paces it with `-re`.
pub fn ffmpeg_publish(src: &Path, url: &str, realtime: bool) {
    let mut c = Command::new("ffmpeg");
    c.args(["-v", "error"]);
    if realtime {
        c.arg("-re");
    }
    c.arg("-i").arg(src).args(["-c", "copy", "-f", "flv", url]);
    run(&mut c);
}

/// Starts publishing `src` with ffmpeg at real time (`-re -c copy`), in the background.
pub fn ffmpeg_publisher(src: &Path, url: &str) -> std::process::Child {
    Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-i"])
        .arg(src)
        .args(["-c", "copy", "-f", "flv", url])
        .spawn()
        .expect("start ffmpeg")
}

/// Files with extension `ext` under `dir`, recursively, sorted by name.
pub fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != ".partial") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|e| e == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Waits until `n` files with extension `ext` exist under `dir`; returns them and the wait.
pub fn wait_files(dir: &Path, ext: &str, n: usize, limit: Duration) -> (Vec<PathBuf>, Duration) {
    let start = Instant::now();
    loop {
        let f = files(dir, ext);
        if f.len() >= n || start.elapsed() > limit {
            return (f, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub use reel_test_support::ffmpeg::{decode_errors, decoded, packets, video_key_flags, Packet};

/// One HTTP/1.1 request to `127.0.0.1:port`, `Connection: close`, with a 10 s deadline.
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let json = serde_json::from_str(rest).unwrap_or_else(|_| serde_json::Value::String(rest.to_string()));
    (status, json)
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `GET path` with extra header lines; status, the response head, and the body bytes.
pub fn http_raw(port: u16, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{headers}\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head, out[split + 4..].to_vec())
}

/// Polls `GET path` until `done` says so; fails the test after `limit`.
pub fn wait_for(
    reel: &Reel,
    path: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (status, v) = reel.api("GET", path, None);
        if status == 200 && done(&v) {
            return v;
        }
        assert!(start.elapsed() < limit, "GET {path} never got there: {status} {v:#}\n{}", reel.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A request an [`http_receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request line and header lines, as sent.
    pub head: String,
    /// Header names lowercased.
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// An HTTP/1.1 server on 127.0.0.1 (keep-alive honoured) answering each request with the status
/// `answer` gives it, and handing each over. Returns the URL of `path` on it.
pub fn http_receiver(
    path: &str,
    answer: impl Fn(&Received) -> u16 + Send + Sync + 'static,
) -> (String, std::sync::mpsc::Receiver<Received>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}{path}", l.local_addr().unwrap().port());
    let (tx, rx) = std::sync::mpsc::channel();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (tx, answer) = (tx.clone(), answer.clone());
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut r = BufReader::new(conn);
                loop {
                    let mut head = String::new();
                    let mut headers = std::collections::BTreeMap::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':').filter(|_| !head.is_empty()) {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                        head.push_str(&line);
                    }
                    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let got = Received { head, headers, body };
                    let status = answer(&got);
                    let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    if r.get_mut().write_all(reply.as_bytes()).is_err() || tx.send(got).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}
