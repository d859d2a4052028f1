//! Hostile and broken peers meet deadlines and bounds: a peer that stops reading, a truncated
//! handshake, a slow HTTP client, too many connections, a 10 KB stream name. Each is dropped in
//! time, SIGTERM still completes, and a healthy stream beside them keeps recording.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;

fn config(server: &str) -> String {
    // The `[server]` keys go before the tables; Reel::start writes its own `[server]` first,
    // so these are appended to it.
    format!("{server}\n{BASE_CONFIG}")
}

/// RTMP simple handshake (C0 C1, read S0 S1 S2, send C2).
fn handshake(s: &mut TcpStream) {
    let mut c1 = vec![3u8];
    c1.extend((0..1536).map(|i| (i * 7) as u8));
    c1[1..9].fill(0);
    s.write_all(&c1).unwrap();
    let mut s0s1s2 = vec![0u8; 1 + 1536 * 2];
    s.read_exact(&mut s0s1s2).unwrap();
    s.write_all(&s0s1s2[1..1537]).unwrap();
}

/// One User Control Ping Request on chunk stream 2 (18 bytes).
const PING: [u8; 18] = [0x02, 0, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0, 0, 6, 0, 0, 0, 1];

/// Floods pings without reading the pongs until the server drops the connection; returns how
/// long after the first write stalled it did (None: still open after `limit`).
fn flood_without_reading(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let batch: Vec<u8> = PING.iter().copied().cycle().take(PING.len() * 4096).collect();
    let start = Instant::now();
    let mut stalled: Option<Instant> = None;
    while start.elapsed() < limit {
        match s.write(&batch) {
            Ok(0) => return Some(stalled.unwrap_or(start).elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                stalled.get_or_insert_with(Instant::now);
            }
            Err(_) => return Some(stalled.unwrap_or(start).elapsed()),
        }
    }
    None
}

/// Whether Reel's log says `needle` within 3 s (the peer may see the close before the line).
fn log_shows(reel: &Reel, needle: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if reel.log_text().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Whether the server closed `s` within `limit` (a read sees EOF or a reset).
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut b = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut b) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn a_peer_that_stops_reading_is_dropped_and_sigterm_completes() {
    let mut reel = Reel::start("limits-write", &config("write_timeout = \"2s\"\nshutdown_timeout = \"5s\"\n"));
    let src = fixture("av", 6, true, true);
    let healthy = {
        let (src, url) = (src.clone(), reel.url("live", "beside"));
        std::thread::spawn(move || ffmpeg_publish(&src, &url, true))
    };
    let mut flooder = connect(reel.rtmp_port);
    handshake(&mut flooder);
    let dropped = flood_without_reading(&mut flooder, Duration::from_secs(20));
    let after = dropped.expect("a peer that reads nothing is disconnected");
    assert!(after < Duration::from_secs(6), "dropped {after:?} after its writes stalled (write_timeout 2 s)");
    assert!(log_shows(&reel, "stopped reading"), "{}", reel.log_text());
    healthy.join().unwrap();
    let (flv, _) = wait_files(&reel.recordings().join("live/beside"), "flv", 1, Duration::from_secs(10));
    assert_eq!(packets(&flv[0], "v"), packets(&src, "v"), "the stream beside it is packet-identical");

    // SIGTERM with such a peer attached (and one that never finished its handshake) completes.
    let mut again = connect(reel.rtmp_port);
    handshake(&mut again);
    let stuck = std::thread::spawn(move || flood_without_reading(&mut again, Duration::from_secs(30)));
    let mut half = connect(reel.rtmp_port);
    half.write_all(&[3, 0, 0]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let status = reel.stop();
    assert!(status.success(), "clean exit");
    assert!(t.elapsed() < Duration::from_secs(8), "SIGTERM took {:?}", t.elapsed());
    let _ = stuck.join();
}

#[test]
fn a_truncated_handshake_is_dropped_at_the_handshake_deadline() {
    let reel = Reel::start("limits-handshake", &config("handshake_timeout = \"1s\"\n"));
    let mut s = connect(reel.rtmp_port);
    let mut c0c1 = vec![3u8];
    c0c1.extend([0u8; 100]);
    s.write_all(&c0c1).unwrap();
    let t = closed_within(&mut s, Duration::from_secs(10)).expect("closed");
    assert!(t < Duration::from_secs(3), "closed after {t:?} (handshake_timeout 1 s, idle_timeout 30 s)");
    // One byte a second does not keep it alive either.
    let mut s = connect(reel.rtmp_port);
    let start = Instant::now();
    let mut open = true;
    while open && start.elapsed() < Duration::from_secs(8) {
        open = s.write_all(&[3]).is_ok() && closed_within(&mut s, Duration::from_millis(500)).is_none();
    }
    assert!(!open, "a trickled handshake is dropped too");
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
}

#[test]
fn slow_http_clients_are_dropped_at_the_header_deadline_and_bounded() {
    let mut reel = Reel::start(
        "limits-http",
        &config("http_header_timeout = \"1s\"\nmax_http_connections = 30\nshutdown_timeout = \"5s\"\n"),
    );
    let port = reel.http_port;
    // Fifty slowloris clients (1 byte every 300 ms): each is dropped at the deadline or, past
    // the connection bound, at once.
    let clients: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect(port);
                let start = Instant::now();
                for b in b"GET /healthz HTTP/1.1\r\nhost: x\r\n".iter().cycle() {
                    if s.write_all(&[*b]).is_err() || closed_within(&mut s, Duration::from_millis(300)).is_some() {
                        return start.elapsed();
                    }
                    if start.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                }
                start.elapsed()
            })
        })
        .collect();
    let held: Vec<Duration> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let worst = held.iter().max().unwrap();
    assert!(*worst < Duration::from_secs(4), "a slow client held a connection {worst:?}");
    // Healthy requests are served meanwhile and after.
    let mut s = connect(port);
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // SIGTERM with a half-sent request open completes.
    let mut half = connect(port);
    half.write_all(b"GET /hea").unwrap();
    let t = Instant::now();
    assert!(reel.stop().success());
    assert!(t.elapsed() < Duration::from_secs(8), "SIGTERM took {:?}", t.elapsed());
}

#[test]
fn connections_past_the_bound_are_closed_on_arrival() {
    let reel = Reel::start("limits-conns", &config("max_connections = 2\n"));
    // Reel::start's readiness probe held a slot for a moment.
    std::thread::sleep(Duration::from_millis(500));
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(reel.rtmp_port)).collect();
    for s in &mut held {
        handshake(s);
    }
    let mut third = connect(reel.rtmp_port);
    assert!(closed_within(&mut third, Duration::from_secs(3)).is_some(), "the third connection is closed");
    assert!(log_shows(&reel, "max_connections"), "{}", reel.log_text());
    // A slot frees when a connection goes.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(500));
    let mut fourth = connect(reel.rtmp_port);
    handshake(&mut fourth);
}

#[test]
fn a_stream_name_of_10_kb_is_refused_with_a_clear_status() {
    let reel = Reel::start("limits-name", BASE_CONFIG);
    let src = fixture("av", 2, true, true);
    let long = "a".repeat(10_000);
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&src)
        .args(["-c", "copy", "-f", "flv", &reel.url("live", &long)])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the publish is refused");
    std::thread::sleep(Duration::from_millis(300));
    let log = reel.log_text();
    // (ffmpeg cuts its URL at about 1 KB: the name arrives 1017 bytes long.)
    assert!(log.contains("publish refused") && log.contains("bytes long; at most 255"), "{log}");
    assert!(files(&reel.recordings(), "flv").is_empty());
    // A name at the limit records (its temporary file names stay within the file system's).
    let ok = "b".repeat(255);
    ffmpeg_publish(&src, &reel.url("live", &ok), false);
    let (flv, _) = wait_files(&reel.recordings().join("live").join(&ok), "flv", 1, Duration::from_secs(10));
    assert_eq!(flv.len(), 1, "{}", reel.log_text());
}

#[test]
fn messages_being_reassembled_have_a_global_budget() {
    let reel = Reel::start("limits-reassembly", &config("max_reassembly_bytes = \"20MiB\"\n"));
    let src = fixture("av", 6, true, true);
    let healthy = {
        let (src, url) = (src.clone(), reel.url("live", "beside"));
        std::thread::spawn(move || ffmpeg_publish(&src, &url, true))
    };
    std::thread::sleep(Duration::from_millis(500));
    // Six peers each announce an 8 MiB message and send its first chunk, then wait.
    let mut parked = Vec::new();
    for _ in 0..6 {
        let mut s = connect(reel.rtmp_port);
        handshake(&mut s);
        let mut msg = vec![0x06, 0, 0, 0, 0x80, 0, 0, 9, 1, 0, 0, 0];
        msg.extend([0u8; 128]);
        s.write_all(&msg).unwrap();
        parked.push(s);
    }
    let closed = parked.iter_mut().map(|s| closed_within(s, Duration::from_secs(2))).filter(Option::is_some).count();
    assert_eq!(closed, 4, "two 8 MiB messages fit in 20 MiB, the other four peers are closed");
    assert!(log_shows(&reel, "reassembly budget"), "{}", reel.log_text());
    healthy.join().unwrap();
    let (flv, _) = wait_files(&reel.recordings().join("live/beside"), "flv", 1, Duration::from_secs(10));
    assert_eq!(packets(&flv[0], "v"), packets(&src, "v"), "the stream beside them is packet-identical");
}
