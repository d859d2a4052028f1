//! Callback events end to end: the outbox keeps every event while the endpoint is down, also
//! across a restart of Reel, and delivers each, signed, once the endpoint answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::common::*;

/// What the endpoint saw: every request (status it answered, event id, body, signature ok).
#[derive(Default)]
struct Seen {
    requests: Vec<(u16, String, Vec<u8>, bool)>,
}

/// A callback endpoint on 127.0.0.1 answering 503 until `down_until`, then 200.
fn endpoint(secret: &'static str, down_until: Instant) -> (String, Arc<Mutex<Seen>>) {
    let (url, rx) = http_receiver("/events", move |_| if Instant::now() < down_until { 503 } else { 200 });
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for r in rx {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(&r.body);
            let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
            let signed = r.headers.get("x-reel-signature") == Some(&format!("sha256={want}"));
            let id = r.headers.get("x-reel-event-id").cloned().unwrap_or_default();
            // The status it was answered with: the same clock the answer read.
            let status = if Instant::now() < down_until { 503 } else { 200 };
            s.lock().unwrap().requests.push((status, id, r.body, signed));
        }
    });
    (url, seen)
}

fn bodies_len(seen: &Seen) -> usize {
    seen.requests.iter().map(|r| &r.1).collect::<std::collections::BTreeSet<_>>().len()
}

#[test]
fn events_survive_an_endpoint_down_for_40_s_and_a_restart_and_arrive_signed_once_each() {
    let src = fixture("events", 5, true, true);
    let down_until = Instant::now() + Duration::from_secs(40);
    let (url, seen) = endpoint("k3y", down_until);
    let config = format!(
        r#"
[storage.local]
kind = "fs"
root = "recordings"
[template.default]
formats = ["flv", "hls"]
hls_segment = "2s"
storage = "local"
[[rule]]
template = "default"
[[callback]]
url = "{url}"
secret = "k3y"
[[callback]]
url = "{url}"
secret = "k3y"
events = ["segment_created"]
[events]
backoff = "1s"
max_backoff = "4s"
"#
    );
    let mut reel = Reel::start("events-outbox", &config);
    ffmpeg_publish(&src, &reel.url("live", "cam"), true);
    // A record-now task of 3 s on a stream nobody publishes: it completes.
    let (status, v) = reel.api(
        "POST",
        "/v1/record-tasks",
        Some(&json!({"app": "live", "stream": "nobody", "end_time": unix_now() + 3, "template": "default"})),
    );
    assert_eq!(status, 201, "{v}");
    let task = v["task_id"].as_str().unwrap().to_string();
    wait_for(&reel, &format!("/v1/record-tasks/{task}"), Duration::from_secs(10), |v| v["status"] == "completed");
    // Queued, none delivered: the endpoint says 503.
    let v = wait_for(&reel, "/v1/events?status=pending", Duration::from_secs(10), |v| {
        let kinds: Vec<&str> = v["events"].as_array().unwrap().iter().filter_map(|e| e["event"].as_str()).collect();
        ["record_started", "file_created", "segment_created", "record_ended", "task_completed"]
            .iter()
            .all(|k| kinds.contains(k))
    });
    let queued: Vec<String> =
        v["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert!(Instant::now() < down_until, "the publish took too long for this test");

    // Restart while the endpoint is still down: the outbox is in the catalog.
    assert!(reel.stop().success());
    let dir = reel.dir.clone();
    drop(reel);
    let reel = Reel::start_in(dir, &config);

    // Everything is delivered within seconds of the endpoint's return.
    let v = wait_for(
        &reel,
        "/v1/events?status=delivered&limit=1000",
        down_until.saturating_duration_since(Instant::now()) + Duration::from_secs(15),
        |v| queued.iter().all(|id| v["events"].as_array().unwrap().iter().any(|e| e["id"] == json!(id))),
    );
    let back = Instant::now().saturating_duration_since(down_until);
    assert!(back < Duration::from_secs(12), "delivered {back:?} after the endpoint returned");
    let (_, pending) = reel.api("GET", "/v1/events?status=pending", None);
    assert_eq!(pending["events"], json!([]), "{pending:#}");
    let delivered = v["events"].as_array().unwrap();

    let seen = seen.lock().unwrap();
    let down = seen.requests.iter().filter(|r| r.0 == 503).count();
    assert!(down >= 1, "the endpoint was tried while down");
    assert!(down < 60, "{down} requests while down: probed, not flooded");
    eprintln!(
        "{} events; {down} requests while the endpoint was down; all delivered {back:?} after it returned",
        bodies_len(&seen)
    );
    // Each event id: one body, signed; the body names the event id and its time.
    let mut bodies: BTreeMap<&str, &Vec<u8>> = BTreeMap::new();
    for (status, id, body, signed) in &seen.requests {
        assert!(signed, "unsigned or badly signed request {id}");
        if let Some(prev) = bodies.insert(id, body) {
            assert_eq!(prev, body, "event {id} sent with two bodies");
        }
        let b: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(b["id"], json!(id), "answered {status}");
        assert!(b["time"].as_str().unwrap().ends_with('Z'), "{b}");
    }
    for e in delivered {
        let id = e["id"].as_str().unwrap();
        assert!(bodies.contains_key(id), "delivered event {id} never arrived");
    }
    let kind = |k: &str| {
        seen.requests
            .iter()
            .filter(|r| r.0 == 200)
            .map(|r| serde_json::from_slice::<Value>(&r.2).unwrap())
            .filter(|b| b["event"] == k)
            .collect::<Vec<_>>()
    };
    let files = kind("file_created");
    assert!(files.iter().any(|f| f["format"] == "flv") && files.iter().any(|f| f["format"] == "hls"), "{files:#?}");
    for f in &files {
        let path = std::path::Path::new(f["url"].as_str().unwrap());
        assert!(path.is_absolute(), "{f}");
        if f["format"] == "flv" {
            assert_eq!(std::fs::metadata(path).unwrap().len(), f["size"].as_u64().unwrap(), "{f}");
        } else {
            // A playlist's size is its segments'.
            assert!(std::fs::read_to_string(path).unwrap().contains("#EXT-X-ENDLIST"), "{f}");
        }
        assert_eq!(f["stream"], "cam");
        let (status, r) = reel.api("GET", &format!("/v1/recordings/{}", f["recording_id"].as_str().unwrap()), None);
        assert_eq!(status, 200, "{r}");
    }
    assert!(!kind("segment_created").is_empty());
    assert_eq!(kind("record_started").len(), 1);
    assert_eq!(kind("record_ended")[0]["failed"], false);
    assert_eq!(kind("task_completed")[0]["task_id"], json!(task));
}

#[test]
fn a_refused_event_is_kept_failed_and_can_be_retried_through_the_api() {
    // The first request is refused with 410 Gone, the next accepted.
    let answers = Arc::new(Mutex::new(vec![200u16, 410]));
    let a = answers.clone();
    let (url, _rx) = http_receiver("/hook", move |_| a.lock().unwrap().pop().unwrap_or(200));
    let config = format!("{BASE_CONFIG}\n[[callback]]\nurl = \"{url}\"\nevents = [\"record_started\"]\n");
    let reel = Reel::start("events-retry", &config);
    ffmpeg_publish(&fixture("events-retry", 2, true, true), &reel.url("live", "cam"), false);
    let v = wait_for(&reel, "/v1/events?status=failed", Duration::from_secs(10), |v| v["events"][0].is_object());
    let e = &v["events"][0];
    assert_eq!(
        (e["event"].as_str(), e["last_status"].as_u64(), e["attempts"].as_u64()),
        (Some("record_started"), Some(410), Some(1)),
        "{e:#}"
    );
    let id = e["id"].as_str().unwrap();
    assert_eq!(reel.api("POST", "/v1/events/0000000000000000/retry", None).0, 404);
    let (status, r) = reel.api("POST", &format!("/v1/events/{id}/retry"), None);
    assert_eq!(status, 200, "{r}");
    wait_for(&reel, &format!("/v1/events/{id}"), Duration::from_secs(10), |v| v["status"] == "delivered");
    assert_eq!(reel.api("POST", &format!("/v1/events/{id}/retry"), None).0, 409);
    let (status, v) = reel.api("GET", "/v1/events?status=nope", None);
    assert_eq!((status, v["error"]["field"].as_str()), (400, Some("status")));
}
