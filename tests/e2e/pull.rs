//! Pull tasks end to end: Reel fetches a stream from an HTTP-FLV server in the test and from
//! nginx-rtmp fed by ffmpeg, and records it packet-identical; bad sources fail with a reason.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const TEMPLATE: &str = r#"
[storage.local]
kind = "fs"
root = "recordings"
[template.t]
formats = ["flv"]
storage = "local"
"#;

/// An HTTP server on 127.0.0.1 answering each GET by its path: `/live.flv` streams `flv` then
/// holds the connection `hold`; `/404`; `/html` (a web page); `/garbage` (an FLV header, then
/// junk); `/silent` (reads the request, never answers).
fn http_server(flv: Vec<u8>, hold: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let flv = std::sync::Arc::new(flv);
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let flv = flv.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let mut w = conn;
                let head = |status: &str, ctype: &str| {
                    format!("HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\nconnection: close\r\n\r\n")
                };
                match path.as_str() {
                    "/live.flv" => {
                        let _ = w.write_all(head("200 OK", "video/x-flv").as_bytes());
                        let _ = w.write_all(&flv);
                        std::thread::sleep(hold);
                    }
                    "/html" => {
                        let _ = w.write_all(head("200 OK", "text/html").as_bytes());
                        let _ = w.write_all(b"<!DOCTYPE html><html><body>Sign in</body></html>");
                    }
                    "/garbage" => {
                        let _ = w.write_all(head("200 OK", "video/x-flv").as_bytes());
                        let _ = w.write_all(&flv[..13]);
                        let _ = w.write_all(&[0x42; 4096]);
                    }
                    "/silent" => std::thread::sleep(Duration::from_secs(30)),
                    _ => {
                        let _ =
                            w.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    }
                }
            });
        }
    });
    port
}

/// A TCP server that accepts and never sends.
fn mute_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    port
}

/// A server that answers in plain HTTP at once, whatever the client says (a TLS client sees a
/// corrupt handshake).
fn plain_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    port
}

fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn create_pull(reel: &Reel, body: Value) -> String {
    let (status, v) = reel.api("POST", "/v1/pull-tasks", Some(&body));
    assert_eq!(status, 201, "{v:#}\n{}", reel.log_text());
    v["task_id"].as_str().unwrap().to_string()
}

fn task_file(reel: &Reel, id: &str) -> PathBuf {
    let v = wait_for(reel, &format!("/v1/pull-tasks/{id}"), Duration::from_secs(15), |v| {
        v["files"].as_array().is_some_and(|f| !f.is_empty())
    });
    reel.recordings().join(v["files"][0]["key"].as_str().unwrap())
}

/// Packets of `path` as (kind, size, hash): what a relay must not change.
fn payloads(path: &Path) -> Vec<(u32, u64, String)> {
    let mut v: Vec<_> = packets(path, "v").into_iter().map(|p| (0, p.size, p.hash)).collect();
    v.extend(packets(path, "a").into_iter().map(|p| (1, p.size, p.hash)));
    v
}

#[test]
fn an_http_flv_source_is_recorded_packet_identical() {
    let src = fixture("pull-http", 6, true, true);
    let port = http_server(std::fs::read(&src).unwrap(), Duration::from_secs(30));
    let reel = Reel::start("pull-http", TEMPLATE);
    let id = create_pull(
        &reel,
        json!({"url": format!("http://127.0.0.1:{port}/live.flv"), "app": "live", "stream": "pulled",
               "template": "t", "end_time": unix_now() + 6}),
    );
    let (_, v) = reel.api("GET", &format!("/v1/pull-tasks/{id}"), None);
    assert_eq!(v["url"], format!("http://127.0.0.1:{port}/live.flv"), "{v:#}");
    wait_for(&reel, &format!("/v1/pull-tasks/{id}"), Duration::from_secs(15), |v| v["status"] == "recording");
    wait_for(&reel, &format!("/v1/pull-tasks/{id}"), Duration::from_secs(15), |v| v["status"] == "completed");
    let file = task_file(&reel, &id);
    assert_eq!(packets(&file, "v"), packets(&src, "v"), "video packets, timestamps included");
    assert_eq!(packets(&file, "a"), packets(&src, "a"), "audio packets, timestamps included");
    assert_eq!(decode_errors(&file), "");
    // Listed with the pull tasks, not the record tasks; the stream's domain is the source host.
    let (_, pulls) = reel.api("GET", "/v1/pull-tasks", None);
    assert_eq!(pulls["tasks"][0]["id"], json!(id));
    let (_, records) = reel.api("GET", "/v1/record-tasks", None);
    assert_eq!(records["tasks"], json!([]));
    let (_, rows) = reel.api("GET", "/v1/recordings?app=live&stream=pulled", None);
    assert_eq!(rows["recordings"][0]["domain"], "127.0.0.1", "{rows:#}");
}

/// nginx with the RTMP module on a free port (`live on`); stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path) -> Option<Nginx> {
        let module = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
        if !have("nginx") || !Path::new(module).exists() {
            return None;
        }
        let port = closed_port();
        let conf = dir.join("nginx.conf");
        let user = if is_root() { "user root;\n" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "load_module {module};\ndaemon off;\nmaster_process off;\n{user}pid {d}/nginx.pid;\nerror_log {d}/nginx.log warn;\n\
                 events {{ worker_connections 64; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096; application live {{ live on; }} }} }}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .args(["-p"])
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("nginx.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Nginx { child, port })
    }
}

/// Whether this process runs as root (nginx then needs `user root;` to read its files).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_rtmp_source_played_from_nginx_rtmp_is_recorded_packet_identical() {
    let src = fixture("pull-rtmp", 6, true, true);
    let reel = Reel::start("pull-rtmp", TEMPLATE);
    let nginx_dir = reel.dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let Some(nginx) = Nginx::start(&nginx_dir) else {
        panic!("nginx with its RTMP module is not installed (tests/run installs nginx and libnginx-mod-rtmp)");
    };
    // The pull starts first: nginx holds the player until the publisher comes.
    let id = create_pull(
        &reel,
        json!({"url": format!("rtmp://127.0.0.1:{}/live/origin", nginx.port), "app": "live", "stream": "relayed",
               "template": "t", "end_time": unix_now() + 120}),
    );
    std::thread::sleep(Duration::from_secs(1));
    ffmpeg_publish(&src, &format!("rtmp://127.0.0.1:{}/live/origin", nginx.port), true);
    std::thread::sleep(Duration::from_secs(1));
    let (status, v) = reel.api("POST", &format!("/v1/pull-tasks/{id}/stop"), None);
    assert_eq!(status, 200, "{v:#}");
    let file = task_file(&reel, &id);
    assert_eq!(payloads(&file), payloads(&src), "every audio and video payload, in order\n{}", reel.log_text());
    assert_eq!(decode_errors(&file), "");
    drop(nginx);
}

#[test]
fn a_dead_source_fails_after_its_retries_within_15_s() {
    let reel = Reel::start("pull-dead", TEMPLATE);
    let t = Instant::now();
    let id = create_pull(
        &reel,
        json!({"url": format!("rtmp://127.0.0.1:{}/live/x", closed_port()), "app": "live", "stream": "dead", "template": "t"}),
    );
    let v = wait_for(&reel, &format!("/v1/pull-tasks/{id}"), Duration::from_secs(15), |v| v["status"] == "failed");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.starts_with("cannot connect to 127.0.0.1:") && reason.ends_with("(after 3 retries)"), "{reason}");
    // 1 s, 2 s, 4 s between the four tries.
    assert!(t.elapsed() >= Duration::from_secs(7), "{:?}", t.elapsed());
}

#[test]
fn bad_sources_fail_with_a_clear_reason() {
    let src = fixture("pull-bad", 2, true, true);
    let port = http_server(std::fs::read(&src).unwrap(), Duration::from_secs(1));
    let mute = mute_server();
    let config = format!(
        "{TEMPLATE}\n[pull]\nretries = 1\nbackoff = \"100ms\"\nconnect_timeout = \"2s\"\nread_timeout = \"2s\"\n"
    );
    let reel = Reel::start("pull-bad", &config);
    let cases = [
        (format!("http://127.0.0.1:{port}/404"), "the source answered HTTP 404"),
        (format!("http://127.0.0.1:{port}/html"), "not an FLV stream: it starts with \"<!DOCTYPE html><\""),
        (format!("http://127.0.0.1:{port}/garbage"), "malformed FLV at byte 13: tag type 2"),
        (format!("http://127.0.0.1:{port}/silent"), "no answer within 2s"),
        (format!("rtmp://127.0.0.1:{mute}/live/x"), "no answer within 2s"),
        (format!("https://127.0.0.1:{}/live.flv", plain_server()), "error sending request"),
        (format!("http://127.0.0.1:{}/live.flv", closed_port()), "error sending request"),
    ];
    let ids: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (url, _))| {
            create_pull(&reel, json!({"url": url, "app": "live", "stream": format!("bad{i}"), "template": "t"}))
        })
        .collect();
    for (id, (url, want)) in ids.iter().zip(&cases) {
        let v = wait_for(&reel, &format!("/v1/pull-tasks/{id}"), Duration::from_secs(20), |v| v["status"] == "failed");
        let reason = v["reason"].as_str().unwrap();
        assert!(reason.starts_with(want), "{url}: {reason}");
    }
    // Refused at creation: not a source Reel can pull.
    let (status, v) = reel.api(
        "POST",
        "/v1/pull-tasks",
        Some(&json!({"url": "ftp://x/y", "app": "live", "stream": "s", "template": "t"})),
    );
    assert_eq!((status, v["error"]["field"].as_str()), (400, Some("url")), "{v}");
    assert!(reel.log_text().contains("pull task failed"));
    assert_eq!(reel.api("GET", "/healthz", None).0, 200, "Reel goes on");
}

#[test]
fn in_a_fleet_one_node_pulls_and_another_takes_over_when_it_dies() {
    let Some(pg) = reel_test_support::postgres::Postgres::start() else {
        panic!("PostgreSQL is not installed: run tests/run, which installs it");
    };
    let src = fixture("pull-fleet", 40, true, true);
    let config = |node: &str| format!("{TEMPLATE}\n[catalog]\nurl = \"{}\"\nnode_id = \"{node}\"\n", pg.url);
    let mut nodes = [Reel::start("pull-fleet-a", &config("node-a")), Reel::start("pull-fleet-b", &config("node-b"))];
    let nginx_dir = nodes[0].dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let nginx = Nginx::start(&nginx_dir).expect("nginx with its RTMP module (tests/run installs it)");
    let origin = format!("rtmp://127.0.0.1:{}/live/origin", nginx.port);
    let publisher = {
        let (src, origin) = (src.clone(), origin.clone());
        std::thread::spawn(move || ffmpeg_publish(&src, &origin, true))
    };
    let id = create_pull(
        &nodes[0],
        json!({"url": origin, "app": "live", "stream": "fleet", "template": "t", "end_time": unix_now() + 120}),
    );
    let path = format!("/v1/pull-tasks/{id}");
    let v = wait_for(&nodes[1], &path, Duration::from_secs(15), |v| v["status"] == "recording");
    let holder = v["node_id"].as_str().unwrap().to_string();
    let (dead, alive) = if holder == "node-a" { (0, 1) } else { (1, 0) };
    // Only the holder pulls: the other node has no such stream.
    std::thread::sleep(Duration::from_secs(3));
    let (_, streams) = nodes[alive].api("GET", "/v1/streams", None);
    assert_eq!(streams["streams"].as_array().map(Vec::len), Some(0), "{streams:#}");
    // The holder dies without a word; the other takes over within the lease (10 s) and a round.
    let killed = Instant::now();
    nodes[dead].child.take().unwrap().kill().unwrap();
    let other = if holder == "node-a" { "node-b" } else { "node-a" };
    wait_for(&nodes[alive], &path, Duration::from_secs(20), |v| v["status"] == "recording" && v["node_id"] == other);
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(16), "took over after {took:?}");
    eprintln!("{other} took the pull task over {took:?} after {holder} died");
    std::thread::sleep(Duration::from_secs(2));
    let (status, _) = nodes[alive].api("POST", &format!("{path}/stop"), None);
    assert_eq!(status, 200);
    let rows = wait_for(&nodes[alive], &format!("/v1/recordings?task_id={id}"), Duration::from_secs(10), |v| {
        v["recordings"].as_array().unwrap().iter().any(|r| r["node_id"] == other)
    });
    let row = rows["recordings"].as_array().unwrap().iter().find(|r| r["node_id"] == other).unwrap().clone();
    let file = nodes[alive].recordings().join(row["key"].as_str().unwrap());
    assert_eq!(decode_errors(&file), "");
    assert!(row["duration_ms"].as_u64().unwrap() >= 1500, "{row}");
    drop(nginx);
    let _ = publisher;
}
