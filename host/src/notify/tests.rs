use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Instant;

use super::*;
use crate::policy::{Builtin, Format};

/// A request as the test server saw it.
#[derive(Debug)]
struct Seen {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Serves one connection per entry of `statuses`, answering with that status, and reports
/// each request on the returned channel.
fn server(statuses: Vec<u16>) -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook?x=1", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for status in statuses {
            let Ok((stream, _)) = listener.accept() else { return };
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap();
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
            let len = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let mut stream = stream;
            write!(stream, "HTTP/1.1 {status} Whatever\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").unwrap();
            let _ = tx.send(Seen { request_line: request_line.trim_end().to_owned(), headers, body });
        }
    });
    (url, rx)
}

/// An outbox that remembers how each delivery ended.
struct Recording {
    inner: MemoryOutbox,
    finished: Mutex<Vec<(u64, bool)>>,
}

impl Outbox for Recording {
    fn push(&self, d: Delivery) -> Result<u64, NotifyError> {
        self.inner.push(d)
    }
    fn pop(&self) -> Option<Delivery> {
        self.inner.pop()
    }
    fn finish(&self, id: u64, delivered: bool) {
        self.finished.lock().unwrap().push((id, delivered));
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
}

fn recording() -> Arc<Recording> {
    Arc::new(Recording { inner: MemoryOutbox::new(16), finished: Mutex::new(Vec::new()) })
}

async fn wait_finished(o: &Recording, n: usize) -> Vec<(u64, bool)> {
    let start = Instant::now();
    loop {
        let f = o.finished.lock().unwrap().clone();
        if f.len() >= n || start.elapsed() > Duration::from_secs(10) {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn fast() -> NotifierOptions {
    NotifierOptions { backoff: Duration::from_millis(20), concurrency: 2 }
}

fn request(url: &str) -> CallbackRequest {
    CallbackRequest {
        url: url.to_owned(),
        headers: vec![("content-type".into(), "application/json".into()), ("X-Sign".into(), "abc".into())],
        body: br#"{"hello":"world"}"#.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_a_500_then_delivers() {
    let (url, seen) = server(vec![500, 200]);
    let outbox = recording();
    let n = Notifier::new(vec![], outbox.clone(), fast());
    let started = Instant::now();
    let id = n.send(request(&url), Duration::from_secs(5), 3).unwrap();
    assert_eq!(wait_finished(&outbox, 1).await, vec![(id, true)]);
    assert!(started.elapsed() >= Duration::from_millis(20), "waited the backoff");
    for _ in 0..2 {
        let s = seen.recv_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!(s.request_line, "POST /hook?x=1 HTTP/1.1");
        assert!(s.headers.contains(&("x-sign".into(), "abc".into())), "{:?}", s.headers);
        assert!(s.headers.contains(&("content-type".into(), "application/json".into())));
        assert_eq!(s.body, br#"{"hello":"world"}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_final() {
    let (url, seen) = server(vec![404, 200]);
    let outbox = recording();
    let n = Notifier::new(vec![], outbox.clone(), fast());
    let id = n.send(request(&url), Duration::from_secs(5), 3).unwrap();
    assert_eq!(wait_finished(&outbox, 1).await, vec![(id, false)]);
    assert!(seen.recv_timeout(Duration::from_secs(1)).is_ok());
    assert!(seen.recv_timeout(Duration::from_millis(100)).is_err(), "no second attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_the_retries() {
    let (url, seen) = server(vec![503, 500, 502, 200]);
    let outbox = recording();
    let n = Notifier::new(vec![], outbox.clone(), fast());
    let started = Instant::now();
    let id = n.send(request(&url), Duration::from_secs(5), 2).unwrap();
    assert_eq!(wait_finished(&outbox, 1).await, vec![(id, false)]);
    // Backoff 20 ms, then 40 ms.
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(seen.try_iter().count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_when_nobody_listens() {
    // Bind then drop: a port that refuses connections.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let outbox = recording();
    let n = Notifier::new(vec![], outbox.clone(), fast());
    let id = n.send(request(&format!("http://127.0.0.1:{port}/")), Duration::from_secs(1), 1).unwrap();
    assert_eq!(wait_finished(&outbox, 1).await, vec![(id, false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announces_finished_files_with_the_policy() {
    let (url, seen) = server(vec![200]);
    let outbox = recording();
    let cb = CallbackConfig {
        url: url.clone(),
        events: None,
        timeout: Duration::from_secs(5),
        retries: 0,
        domain: "*".into(),
        app: "li*".into(),
        secret: Some("s3cret".into()),
    };
    let skipped = CallbackConfig { events: Some(vec!["other".into()]), ..cb.clone() };
    let other_app = CallbackConfig { app: "radio".into(), ..cb.clone() };
    let n = Notifier::new(vec![cb, skipped, other_app], outbox.clone(), fast());
    let s = StreamInfo { domain: "d".into(), app: "live".into(), name: "cam".into(), ..Default::default() };
    let f = FileInfo {
        container: Format::Mp4,
        sequence: 2,
        start_ms: 1_000,
        end_ms: 61_000,
        size: 1234,
        duration_ms: 60_000,
        key: "live/cam/x.mp4".into(),
        session_id: "s1".into(),
        task_id: None,
        random_id: "r".into(),
    };
    assert_eq!(n.file_finished(&Builtin, &s, &f), 1);
    assert_eq!(wait_finished(&outbox, 1).await.len(), 1);
    let got = seen.recv_timeout(Duration::from_secs(1)).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["event"], "record_file");
    assert_eq!(body["container"], "mp4");
    assert_eq!(body["key"], "live/cam/x.mp4");
    assert_eq!(body["size"], 1234);
    assert_eq!(body["task_id"], serde_json::Value::Null);
    // Signed: HMAC-SHA256 of the raw body with the callback's secret, and an event id.
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&got.body);
    let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let header = |name: &str| got.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(header("x-reel-signature"), Some(format!("sha256={want}")));
    assert_eq!(header("x-reel-event-id").map(|v| v.len()), Some(16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_before_shutdown() {
    let (url, seen) = server(vec![500, 200, 200, 200]);
    let n = Notifier::new(vec![], Arc::new(MemoryOutbox::new(8)), fast());
    for _ in 0..3 {
        n.send(request(&url), Duration::from_secs(5), 2).unwrap();
    }
    assert!(n.drain(Duration::from_secs(10)).await);
    assert_eq!((n.pending(), n.in_flight()), (0, 0));
    assert_eq!(seen.try_iter().count(), 4, "three deliveries, one retried");
    drop(n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_notifier_sends_nothing_new() {
    let outbox = Arc::new(MemoryOutbox::new(8));
    let n = Notifier::new(vec![], outbox.clone(), fast());
    drop(n);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // What a durable outbox would still hold after a restart.
    outbox
        .push(Delivery { id: 0, request: request("http://127.0.0.1:9/"), timeout: Duration::from_secs(1), retries: 0 })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(outbox.len(), 1);
}

#[test]
fn the_memory_outbox_is_bounded() {
    let o = MemoryOutbox::new(2);
    let d = Delivery { id: 0, request: request("http://x/"), timeout: Duration::from_secs(1), retries: 0 };
    assert_eq!(o.push(d.clone()).unwrap(), 1);
    assert_eq!(o.push(d.clone()).unwrap(), 2);
    assert!(matches!(o.push(d), Err(NotifyError::QueueFull(2))));
    assert_eq!(o.pop().unwrap().id, 1);
    assert_eq!(o.len(), 1);
}

#[test]
fn callback_config_defaults_and_validation() {
    let c: CallbackConfig = toml::from_str(r#"url = "https://example.com/cb""#).unwrap();
    assert_eq!((c.timeout, c.retries, c.events.clone()), (Duration::from_secs(5), 3, None));
    assert!(c.wants("record_file"));
    assert!(c.validate(0).is_empty());
    let c: CallbackConfig = toml::from_str(
        r#"
url = "ftp://x"
events = ["record_file", "nope"]
timeout = "250ms"
retries = 1
"#,
    )
    .unwrap();
    assert_eq!(c.timeout, Duration::from_millis(250));
    let errors = c.validate(3);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("callback[3].url"));
    assert!(toml::from_str::<CallbackConfig>("url = \"http://x\"\nretry = 1").is_err(), "unknown keys are errors");
}

#[test]
fn the_notifier_can_be_shared_across_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Notifier>();
}
