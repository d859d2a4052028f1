//! The catalog and record tasks, end to end: rules chosen by specificity, record-now and
//! scheduled tasks, stop, overlaps, a restart, two nodes sharing PostgreSQL, listings, errors.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const STORAGE: &str = r#"
[storage.local]
kind = "fs"
root = "recordings"

[template.t]
formats = ["flv"]
interval = "30m"
storage = "local"
"#;

/// Polls `GET path` until `done` holds for its JSON (or panics after `limit`).
fn recordings(reel: &Reel, query: &str) -> Vec<Value> {
    let (status, v) = reel.api("GET", &format!("/v1/recordings?{query}"), None);
    assert_eq!(status, 200, "{v:#}");
    v["recordings"].as_array().unwrap().clone()
}

fn create_task(reel: &Reel, body: Value) -> String {
    let (status, v) = reel.api("POST", "/v1/record-tasks", Some(&body));
    assert_eq!(status, 201, "{v:#}\n{}", reel.log_text());
    v["task_id"].as_str().unwrap().to_string()
}

fn path_of(reel: &Reel, r: &Value) -> PathBuf {
    reel.recordings().join(r["key"].as_str().unwrap())
}

fn publish_in_background(src: &Path, url: String) -> std::thread::JoinHandle<()> {
    let src = src.to_path_buf();
    std::thread::spawn(move || ffmpeg_publish(&src, &url, true))
}

#[test]
fn the_most_specific_rule_records_and_an_empty_template_records_nothing() {
    let src = fixture("rules", 3, true, true);
    let reel = Reel::start(
        "rules-priority",
        r#"
[storage.local]
kind = "fs"
root = "recordings"
[template.by_domain]
formats = ["aac"]
storage = "local"
[template.by_app]
formats = ["mp4"]
storage = "local"
[template.by_stream]
formats = ["flv"]
storage = "local"
# No formats, no storage: streams bound to it are not recorded.
[template.silent]
formats = []

# Specificity beats priority: exact stream > exact app > exact domain.
[[rule]]
domain = "127.0.0.1"
template = "by_domain"
priority = 100
[[rule]]
app = "live"
template = "by_app"
[[rule]]
app = "live"
stream = "special"
template = "by_stream"
[[rule]]
app = "live"
stream = "quiet"
template = "silent"
"#,
    );
    for (app, stream) in [("live", "special"), ("live", "other"), ("radio", "x"), ("live", "quiet")] {
        ffmpeg_publish(&src, &reel.url(app, stream), false);
    }
    let want = [("special", "flv"), ("other", "mp4"), ("x", "aac")];
    for (stream, format) in want {
        let v = wait_for(&reel, &format!("/v1/recordings?stream={stream}"), Duration::from_secs(20), |v| {
            !v["recordings"].as_array().unwrap().is_empty()
        });
        let rows = v["recordings"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{stream}: {v:#}");
        assert_eq!(rows[0]["format"], format, "{stream}: {v:#}");
        let file = path_of(&reel, &rows[0]);
        assert!(file.exists(), "{}", file.display());
        assert_eq!(decode_errors(&file), "", "{}", file.display());
        assert!(rows[0]["duration_ms"].as_u64().unwrap() > 2500, "{v:#}");
        assert_eq!(rows[0]["task_id"], Value::Null);
    }
    // The files on disk are exactly those: one per recorded stream, none for the quiet one.
    let all: Vec<_> = ["flv", "mp4", "aac", "m3u8"].iter().flat_map(|e| files(&reel.recordings(), e)).collect();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(!reel.recordings().join("live/quiet").exists());
    assert!(recordings(&reel, "stream=quiet").is_empty());

    let (status, m) = reel.api("GET", "/v1/rules/match?domain=127.0.0.1&app=live&stream=special", None);
    assert_eq!(status, 200);
    assert_eq!(m["template"], "by_stream", "{m:#}");
    let order: Vec<_> = m["candidates"].as_array().unwrap().iter().map(|c| c["template"].clone()).collect();
    assert_eq!(order, [json!("by_stream"), json!("by_app"), json!("by_domain")], "{m:#}");
    assert!(m["why"].as_str().unwrap().contains("most specific"), "{m:#}");
    let (_, m) = reel.api("GET", "/v1/rules/match?domain=127.0.0.1&app=live&stream=quiet", None);
    assert_eq!((m["template"].clone(), m["records"].clone()), (json!("silent"), json!(false)), "{m:#}");
    let (_, t) = reel.api("GET", "/v1/templates", None);
    assert_eq!(t["templates"]["silent"]["storage"], Value::Null, "{t:#}");
}

#[test]
fn record_now_on_an_unrecorded_stream_overlapping_tasks_and_stop_within_a_second() {
    let src = fixture("tasks-now", 12, true, true);
    // A rule records another app only: live/cam is recorded by its tasks alone.
    let reel = Reel::start("tasks-now", &format!("{STORAGE}\n[[rule]]\napp = \"other\"\ntemplate = \"t\"\n"));
    let publisher = publish_in_background(&src, reel.url("live", "cam"));
    wait_for(&reel, "/v1/streams", Duration::from_secs(10), |v| v["streams"].as_array().unwrap().len() == 1);
    let end = unix_now() + 600;
    let first =
        create_task(&reel, json!({"app": "live", "stream": "cam", "end_time": end, "template": "t", "note": "goal"}));
    std::thread::sleep(Duration::from_millis(1500));
    // RFC 3339 works as well as Unix seconds.
    let second = create_task(
        &reel,
        json!({"app": "live", "stream": "cam", "end_time": rfc3339(end), "template": "t", "domain": "127.0.0.1"}),
    );
    let v =
        wait_for(&reel, &format!("/v1/record-tasks/{first}"), Duration::from_secs(5), |v| v["status"] == "recording");
    assert_eq!(v["note"], "goal");
    let (_, s) = reel.api("GET", "/v1/streams", None);
    let recs = s["streams"][0]["recordings"].as_array().unwrap().len();
    assert_eq!(recs, 2, "{s:#}");
    assert_eq!(s["streams"][0]["width"], 320, "{s:#}");

    std::thread::sleep(Duration::from_secs(3));
    let before = files(&reel.recordings(), "flv").len();
    let t0 = Instant::now();
    let (status, v) = reel.api("POST", &format!("/v1/record-tasks/{first}/stop"), None);
    assert_eq!((status, v["status"].clone()), (200, json!("stopped")), "{v:#}");
    let (closed, _) = wait_files(&reel.recordings(), "flv", before + 1, Duration::from_secs(5));
    let closed_after = t0.elapsed();
    assert_eq!(closed.len(), before + 1, "the stopped task's file closes");
    assert!(closed_after < Duration::from_secs(1), "closed after {closed_after:?}");
    eprintln!("stop → file closed in {closed_after:?}");
    // Stopped is final; stopping again says so without error.
    let (status, v) = reel.api("POST", &format!("/v1/record-tasks/{first}/stop"), None);
    assert_eq!((status, v["status"].clone()), (200, json!("stopped")));

    publisher.join().unwrap();
    let v = wait_for(&reel, &format!("/v1/record-tasks/{second}"), Duration::from_secs(10), |v| {
        v["files"].as_array().unwrap().len() == 1 && v["status"] == "waiting"
    });
    let second_file = &v["files"][0];
    let (_, v1) = reel.api("GET", &format!("/v1/record-tasks/{first}"), None);
    let first_file = &v1["files"][0];
    assert_eq!(v1["files"].as_array().unwrap().len(), 1, "{v1:#}");
    assert_ne!(first_file["key"], second_file["key"]);
    for f in [first_file, second_file] {
        let p = reel.recordings().join(f["key"].as_str().unwrap());
        assert_eq!(decode_errors(&p), "", "{}", p.display());
        assert_eq!(video_key_flags(&p).first(), Some(&true), "a task's file starts at a keyframe");
    }
    // The first ran ~4.5 s, the second until the publisher left (~10 s).
    let (d1, d2) = (first_file["duration_ms"].as_u64().unwrap(), second_file["duration_ms"].as_u64().unwrap());
    assert!((2000..8000).contains(&d1) && d2 > d1 + 1000, "{d1} {d2}");
    assert_eq!(recordings(&reel, &format!("task_id={second}")).len(), 1);
    assert_eq!(recordings(&reel, "stream=cam").len(), 2);
    // Nothing else recorded the stream.
    assert_eq!(files(&reel.recordings(), "flv").len(), 2);
    // A publish again before end_time records into the same task, a new file.
    ffmpeg_publish(&fixture("tasks-again", 3, true, true), &reel.url("live", "cam"), false);
    wait_for(&reel, &format!("/v1/record-tasks/{second}"), Duration::from_secs(10), |v| {
        v["files"].as_array().unwrap().len() == 2
    });
    assert_eq!(recordings(&reel, &format!("task_id={first}")).len(), 1, "a stopped task records no more");
}

#[test]
fn a_task_scheduled_for_later_survives_a_restart_and_fires() {
    let src = fixture("tasks-later", 12, true, true);
    let config = format!("{STORAGE}\n[[rule]]\napp = \"live\"\ntemplate = \"t\"\n");
    let mut first = Reel::start("tasks-restart", &config);
    let start = unix_now() + 6;
    let id = create_task(
        &first,
        json!({"app": "live", "stream": "cam", "start_time": start, "end_time": start + 600, "template": "t"}),
    );
    let (_, v) = first.api("GET", &format!("/v1/record-tasks/{id}"), None);
    assert_eq!(v["status"], "scheduled", "{v:#}");
    assert!(first.stop().success());
    let dir = first.dir.clone();
    drop(first);

    let reel = Reel::start_in(dir, &config);
    let publisher = publish_in_background(&src, reel.url("live", "cam"));
    let v = wait_for(&reel, &format!("/v1/record-tasks/{id}"), Duration::from_secs(20), |v| v["status"] == "recording");
    assert!(unix_now() >= start, "recording before its start: {v:#}");
    publisher.join().unwrap();
    let v = wait_for(&reel, &format!("/v1/record-tasks/{id}"), Duration::from_secs(10), |v| {
        v["files"].as_array().unwrap().len() == 1
    });
    assert!(v["files"][0]["start_ms"].as_i64().unwrap() >= start * 1000 - 100, "{v:#}");
    // The rule's recording and the task's are distinct files.
    let v = wait_for(&reel, "/v1/recordings?app=live&stream=cam", Duration::from_secs(10), |v| {
        v["recordings"].as_array().unwrap().len() == 2
    });
    let rows = v["recordings"].as_array().unwrap();
    let rule = rows.iter().find(|r| r["task_id"].is_null()).expect("the rule's file");
    let task = rows.iter().find(|r| r["task_id"] == json!(id)).expect("the task's file");
    assert_ne!(rule["key"], task["key"]);
    assert!(rule["duration_ms"].as_u64() > task["duration_ms"].as_u64(), "{rows:#?}");
    for r in [rule, task] {
        assert_eq!(decode_errors(&path_of(&reel, r)), "");
    }
    // Gone publisher: the task waits for it until its end.
    wait_for(&reel, &format!("/v1/record-tasks/{id}"), Duration::from_secs(5), |v| v["status"] == "waiting");
}

#[test]
fn two_nodes_share_postgres_a_task_made_on_one_records_on_the_other() {
    let Some(pg) = reel_test_support::postgres::Postgres::start() else {
        panic!("PostgreSQL is not installed: run tests/run, which installs it");
    };
    let src = fixture("tasks-fleet", 4, true, true);
    let config = |node: &str| format!("{STORAGE}\n[catalog]\nurl = \"{}\"\nnode_id = \"{node}\"\n", pg.url);
    let a = Reel::start("fleet-a", &config("node-a"));
    let b = Reel::start("fleet-b", &config("node-b"));
    let id = create_task(&a, json!({"app": "live", "stream": "cam", "end_time": unix_now() + 600, "template": "t"}));
    // Node B learns of it within its refresh period.
    wait_for(&b, "/v1/rules/match?app=live&stream=cam", Duration::from_secs(5), |v| {
        v["tasks"].as_array().unwrap().iter().any(|t| t["id"] == json!(id))
    });
    let published = unix_now();
    ffmpeg_publish(&src, &b.url("live", "cam"), false);
    let v = wait_for(&a, &format!("/v1/record-tasks/{id}"), Duration::from_secs(10), |v| {
        v["files"].as_array().unwrap().len() == 1
    });
    let rows = recordings(&a, &format!("task_id={id}"));
    assert_eq!(rows[0]["node_id"], "node-b", "{rows:#?}");
    assert_eq!(decode_errors(&path_of(&b, &rows[0])), "");
    assert!(files(&a.recordings(), "flv").is_empty(), "node A recorded nothing itself");
    assert_eq!(v["files"][0]["key"], rows[0]["key"]);
    // By time range, from either node.
    let t = |s: i64| s.to_string();
    let around = format!("stream=cam&from={}&to={}", t(published - 5), t(unix_now() + 5));
    assert_eq!(recordings(&a, &around).len(), 1);
    assert_eq!(recordings(&b, &around).len(), 1);
    let before = format!("stream=cam&from={}&to={}", t(published - 100), t(published - 50));
    assert!(recordings(&a, &before).is_empty());
    // Stopped on A: B's recording of it would end within its refresh; the task is stopped.
    let (status, v) = a.api("POST", &format!("/v1/record-tasks/{id}/stop"), None);
    assert_eq!((status, v["status"].clone()), (200, json!("stopped")), "{v:#}");
    let (_, v) = b.api("GET", &format!("/v1/record-tasks/{id}"), None);
    assert_eq!(v["status"], "stopped");
}

#[test]
fn api_refusals_name_the_field_and_deleting_a_recording_removes_its_file() {
    let src = fixture("tasks-api", 3, true, true);
    let reel = Reel::start("tasks-api", &format!("{STORAGE}\n[[rule]]\napp = \"live\"\ntemplate = \"t\"\n"));
    let now = unix_now();
    let cases = [
        (json!({"app": "live", "stream": "a", "end_time": now - 10, "template": "t"}), 400, "end_time", "past"),
        (
            json!({"app": "live", "stream": "a", "start_time": now + 100, "end_time": now + 50, "template": "t"}),
            400,
            "end_time",
            "after",
        ),
        (
            json!({"app": "live", "stream": "a", "end_time": now + 25 * 3600, "template": "t"}),
            400,
            "end_time",
            "24 hours",
        ),
        (
            json!({"app": "live", "stream": "a", "end_time": now + 60, "template": "nope"}),
            400,
            "template",
            "not configured",
        ),
        (json!({"app": "live", "stream": "a/../b", "end_time": now + 60, "template": "t"}), 400, "stream", "contains"),
        (json!({"app": "live", "stream": "a", "end_time": "tomorrow", "template": "t"}), 400, "end_time", "RFC 3339"),
    ];
    for (body, status, field, words) in cases {
        let (got, v) = reel.api("POST", "/v1/record-tasks", Some(&body));
        assert_eq!(got, status, "{body}: {v:#}");
        assert_eq!(v["error"]["field"], field, "{body}: {v:#}");
        assert!(v["error"]["message"].as_str().unwrap().contains(words), "{body}: {v:#}");
    }
    let (got, v) = reel.api("POST", "/v1/record-tasks", Some(&json!({"app": "live"})));
    assert_eq!((got, v["error"]["code"].clone()), (400, json!("invalid")), "{v:#}");
    let big = json!({"app": "live", "stream": "a", "end_time": now + 60, "template": "t", "note": "x".repeat(100_000)});
    let (got, v) = reel.api("POST", "/v1/record-tasks", Some(&big));
    assert_eq!((got, v["error"]["code"].clone()), (413, json!("too_large")), "{v:#}");
    let (got, v) = reel.api("GET", "/v1/record-tasks/0123456789abcdef", None);
    assert_eq!((got, v["error"]["code"].clone()), (404, json!("not_found")), "{v:#}");
    let (got, _) = reel.api("GET", "/v1/recordings?from=yesterday", None);
    assert_eq!(got, 400);
    // The per-stream limit of active tasks.
    for _ in 0..16 {
        create_task(
            &reel,
            json!({"app": "live", "stream": "busy", "start_time": now + 3600, "end_time": now + 7200, "template": "t"}),
        );
    }
    let (got, v) = reel.api(
        "POST",
        "/v1/record-tasks",
        Some(&json!({"app": "live", "stream": "busy", "start_time": now + 3600, "end_time": now + 7200, "template": "t"})),
    );
    assert_eq!((got, v["error"]["field"].clone()), (409, json!("stream")), "{v:#}");
    let (_, v) = reel.api("GET", "/v1/record-tasks?stream=busy&status=scheduled&limit=10", None);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 10);
    let (_, v) = reel.api(
        "GET",
        &format!("/v1/record-tasks?stream=busy&limit=10&cursor={}", v["next_cursor"].as_str().unwrap()),
        None,
    );
    assert_eq!((v["tasks"].as_array().unwrap().len(), v["next_cursor"].clone()), (6, Value::Null));
    let id = v["tasks"][0]["id"].as_str().unwrap().to_string();
    let (got, _) = reel.api("DELETE", &format!("/v1/record-tasks/{id}"), None);
    assert_eq!(got, 204);
    let (got, _) = reel.api("GET", &format!("/v1/record-tasks/{id}"), None);
    assert_eq!(got, 404);

    ffmpeg_publish(&src, &reel.url("live", "gone"), false);
    let v = wait_for(&reel, "/v1/recordings?stream=gone", Duration::from_secs(10), |v| {
        v["recordings"].as_array().unwrap().len() == 1
    });
    let r = &v["recordings"][0];
    let file = path_of(&reel, r);
    assert!(file.exists());
    let rid = r["id"].as_str().unwrap();
    let (got, one) = reel.api("GET", &format!("/v1/recordings/{rid}"), None);
    assert_eq!((got, &one["key"]), (200, &r["key"]));
    let (got, _) = reel.api("DELETE", &format!("/v1/recordings/{rid}"), None);
    assert_eq!(got, 204);
    assert!(!file.exists(), "{}", file.display());
    let (got, _) = reel.api("GET", &format!("/v1/recordings/{rid}"), None);
    assert_eq!(got, 404);
}

/// `secs` as RFC 3339 in UTC.
fn rfc3339(secs: i64) -> String {
    let out =
        std::process::Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"]).output();
    String::from_utf8(out.unwrap().stdout).unwrap().trim().to_string()
}

#[test]
fn recordings_are_served_with_ranges_and_retention_deletes_only_what_expired() {
    let src = fixture("retention", 3, true, true);
    let reel = Reel::start(
        "retention",
        &format!(
            "{STORAGE}\n[template.brief]\nformats = [\"flv\"]\nstorage = \"local\"\nretention = \"2s\"\n\
             [[rule]]\napp = \"live\"\ntemplate = \"t\"\n[[rule]]\napp = \"brief\"\ntemplate = \"brief\"\n"
        ),
    );
    ffmpeg_publish(&src, &reel.url("live", "kept"), false);
    ffmpeg_publish(&src, &reel.url("brief", "gone"), false);
    let v = wait_for(&reel, "/v1/recordings?stream=kept", Duration::from_secs(10), |v| {
        v["recordings"].as_array().unwrap().len() == 1
    });
    let kept = v["recordings"][0].clone();
    let file = std::fs::read(path_of(&reel, &kept)).unwrap();
    let id = kept["id"].as_str().unwrap();
    let (status, head, body) = http_raw(reel.http_port, &format!("/v1/recordings/{id}/content"), "");
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: video/x-flv"), "{head}");
    assert_eq!(body, file);
    let (status, head, body) =
        http_raw(reel.http_port, &format!("/v1/recordings/{id}/content"), "Range: bytes=13-112\r\n");
    assert_eq!(status, 206, "{head}");
    assert!(head.contains(&format!("bytes 13-112/{}", file.len())), "{head}");
    assert_eq!(body, &file[13..113]);
    let (status, _, _) =
        http_raw(reel.http_port, &format!("/v1/recordings/{id}/content"), &format!("Range: bytes={}-\r\n", file.len()));
    assert_eq!(status, 416);

    // The brief template's recording goes 2 s after it ended; the other stays.
    let v = wait_for(&reel, "/v1/recordings?stream=gone", Duration::from_secs(10), |v| {
        v["recordings"].as_array().unwrap().len() == 1
    });
    let gone = path_of(&reel, &v["recordings"][0]);
    wait_for(&reel, "/v1/recordings?stream=gone", Duration::from_secs(15), |v| {
        v["recordings"].as_array().unwrap().is_empty()
    });
    assert!(!gone.exists(), "{}", gone.display());
    assert!(path_of(&reel, &kept).exists());
    assert_eq!(recordings(&reel, "stream=kept").len(), 1);
    assert!(reel.log_text().contains("retention: recording deleted"));
}

#[test]
fn files_a_sigkill_left_unfinished_are_recovered_at_the_next_start() {
    let src = fixture("sigkill", 8, true, true);
    let config = format!(
        "{STORAGE}\n[template.three]\nformats = [\"flv\", \"mp4\", \"aac\", \"hls\"]\nhls_segment = \"2s\"\nstorage = \"local\"\n[[rule]]\ntemplate = \"three\"\n"
    );
    let mut reel = Reel::start("sigkill", &config);
    let url = reel.url("live", "cam");
    let publisher = std::thread::spawn(move || {
        // The publish breaks when Reel dies: its status does not matter.
        let _ = std::process::Command::new("ffmpeg")
            .args(["-v", "quiet", "-re", "-i"])
            .arg(&src)
            .args(["-c", "copy", "-f", "flv", &url])
            .status();
    });
    std::thread::sleep(Duration::from_millis(6500));
    let mut child = reel.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no file is closed
    child.wait().unwrap();
    publisher.join().unwrap();
    assert!(files(&reel.recordings(), "flv").is_empty(), "nothing was finished before the kill");
    let dir = reel.dir.clone();
    drop(reel);

    let reel = Reel::start_in(dir, &config);
    let v = wait_for(&reel, "/v1/recordings?stream=cam", Duration::from_secs(20), |v| {
        v["recordings"].as_array().unwrap().len() == 4
    });
    for r in v["recordings"].as_array().unwrap() {
        let file = path_of(&reel, r);
        assert_eq!(decode_errors(&file), "", "{}", file.display());
        let seconds = reel_test_support::ffmpeg::format_seconds(&file, "duration");
        assert!(seconds >= 5.0, "{}: {seconds} s of ~6.5 s recovered", file.display());
        eprintln!("{}: {seconds:.2} s recovered", r["format"]);
    }
    assert!(reel.log_text().contains("recovered an unfinished file"));
    assert!(files(&reel.recordings().join(".partial"), "part").is_empty());
    let playlists = files(&reel.recordings(), "m3u8");
    assert_eq!(playlists.len(), 1, "the live playlist gave way to the final one: {playlists:?}");
    assert!(std::fs::read_to_string(&playlists[0]).unwrap().contains("#EXT-X-ENDLIST"));
}

#[test]
fn a_task_that_was_recording_records_again_after_a_restart() {
    let src = fixture("tasks-again-restart", 3, true, true);
    let config = format!("{STORAGE}\n");
    let mut first = Reel::start("tasks-recording-restart", &config);
    let id =
        create_task(&first, json!({"app": "live", "stream": "cam", "end_time": unix_now() + 600, "template": "t"}));
    ffmpeg_publish(&src, &first.url("live", "cam"), false);
    wait_for(&first, &format!("/v1/record-tasks/{id}"), Duration::from_secs(10), |v| {
        v["files"].as_array().unwrap().len() == 1
    });
    assert!(first.stop().success());
    let dir = first.dir.clone();
    drop(first);

    let reel = Reel::start_in(dir, &config);
    ffmpeg_publish(&src, &reel.url("live", "cam"), false);
    let v = wait_for(&reel, &format!("/v1/record-tasks/{id}"), Duration::from_secs(10), |v| {
        v["files"].as_array().unwrap().len() == 2
    });
    assert_ne!(v["files"][0]["key"], v["files"][1]["key"]);
    assert_eq!(files(&reel.recordings(), "flv").len(), 2, "no rule records this stream: both files are the task's");
}
