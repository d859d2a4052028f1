//! Object storage against a real S3 server (SeaweedFS, checking SigV4): recordings land in the
//! bucket whole, an outage and a restart lose nothing, wrong credentials are reported.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use reel_test_support::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use serde_json::Value;

use crate::common::*;

fn server(bucket: &str) -> S3Server {
    S3Server::start(bucket).unwrap_or_else(|| panic!("SeaweedFS is not installed: run tests/run, which installs it"))
}

/// A client of the test server's bucket, apart from Reel's.
fn client(s3: &S3Server) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&s3.endpoint)
        .with_bucket_name(&s3.bucket)
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_allow_http(true)
        .build()
        .unwrap()
}

/// Downloads `key` from the bucket into `dir`.
fn download(s3: &S3Server, key: &str, dir: &Path) -> PathBuf {
    let store = client(s3);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let data = rt
        .block_on(async { store.get(&object_store::path::Path::parse(key).unwrap()).await?.bytes().await })
        .unwrap_or_else(|e| panic!("download {key}: {e}"));
    let out = dir.join(key);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, data).unwrap();
    out
}

/// Whether `key` is in the bucket.
fn exists(s3: &S3Server, key: &str) -> bool {
    let store = client(s3);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    match rt.block_on(store.head(&object_store::path::Path::parse(key).unwrap())) {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head {key}: {e}"),
    }
}

/// Waits until the catalog lists `n` recordings of `stream`, all with `upload_state`.
fn wait_rows(reel: &Reel, stream: &str, n: usize, state: &str, limit: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let (_, v) = reel.api("GET", &format!("/v1/recordings?stream={stream}"), None);
        let rows = v["recordings"].as_array().cloned().unwrap_or_default();
        if rows.len() >= n && rows.iter().all(|r| r["upload_state"] == state) {
            return rows;
        }
        assert!(start.elapsed() < limit, "{stream}: want {n} rows {state}, have {rows:#?}\n{}", reel.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn recordings_land_in_the_bucket_whole_within_seconds_of_unpublish() {
    let s3 = server("land");
    let src = fixture("s3-land", 6, true, true);
    let reel = Reel::start(
        "s3-land",
        &format!(
            "{}\n[template.all]\nformats = [\"flv\", \"hls\", \"mp4\"]\nhls_segment = \"2s\"\nstorage = \"bucket\"\n[[rule]]\ntemplate = \"all\"\n",
            s3.storage_toml("bucket", SECRET_KEY)
        ),
    );
    ffmpeg_publish(&src, &reel.url("live", "cam"), false);
    let unpublished = Instant::now();
    let rows = wait_rows(&reel, "cam", 3, "stored", Duration::from_secs(20));
    eprintln!("3 recordings stored in the bucket {:?} after unpublish", unpublished.elapsed());
    assert!(unpublished.elapsed() < Duration::from_secs(3), "{:?}", unpublished.elapsed());
    let dl = test_dir("s3-land-download");
    for r in &rows {
        assert!(r["etag"].is_string(), "{r:#}");
        let key = r["key"].as_str().unwrap();
        let file = download(&s3, key, &dl);
        if r["format"] == "hls" {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
            let dir = Path::new(key).parent().unwrap();
            for seg in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
                download(&s3, &dir.join(seg).to_string_lossy(), &dl);
            }
        }
        assert_eq!(decode_errors(&file), "", "{key}");
        if r["format"] != "hls" {
            // The source's video packets, untouched.
            let hashes = |p: &Path| packets(p, "v").into_iter().map(|p| p.hash).collect::<Vec<_>>();
            assert_eq!(hashes(&src), hashes(&file), "{key}");
        }
    }
    // Served from the bucket: a presigned URL, which the bucket honours.
    let flv = rows.iter().find(|r| r["format"] == "flv").unwrap();
    let id = flv["id"].as_str().unwrap();
    let (status, head, _) = http_raw(reel.http_port, &format!("/v1/recordings/{id}/content"), "");
    assert_eq!(status, 302, "{head}");
    let location =
        head.lines().find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: "))).unwrap();
    let rest = location.strip_prefix(s3.endpoint.as_str()).expect("a URL of the S3 endpoint");
    let port: u16 = s3.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let (status, head, body) = http_raw(port, rest, "");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body.len() as u64, flv["size"].as_u64().unwrap());
    // Deleting the HLS recording removes its playlist and every segment from the bucket (the
    // playlist is read back to find them).
    let hls = rows.iter().find(|r| r["format"] == "hls").unwrap();
    let playlist = std::fs::read_to_string(dl.join(hls["key"].as_str().unwrap())).unwrap();
    let dir = Path::new(hls["key"].as_str().unwrap()).parent().unwrap().to_path_buf();
    let (status, _) = reel.api("DELETE", &format!("/v1/recordings/{}", hls["id"].as_str().unwrap()), None);
    assert_eq!(status, 204, "{}", reel.log_text());
    let mut gone = vec![hls["key"].as_str().unwrap().to_string()];
    gone.extend(
        playlist
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| dir.join(l).to_string_lossy().into_owned()),
    );
    assert!(gone.len() > 2, "{playlist}");
    for key in gone {
        assert!(!exists(&s3, &key), "{key} is still in the bucket");
    }
    // Nothing stays in the spool.
    let spool = reel.dir.join("reel-data/spool/bucket");
    assert!(files(&spool, "flv").is_empty() && files(&spool, "mp4").is_empty() && files(&spool, "ts").is_empty());
}

#[test]
fn an_outage_and_a_restart_lose_nothing_the_spool_uploads_in_order() {
    let mut s3 = server("outage");
    let src = fixture("s3-outage", 12, true, true);
    let config = format!(
        "{}\n[template.t]\nformats = [\"flv\"]\ninterval = \"4s\"\nstorage = \"bucket\"\n[[rule]]\ntemplate = \"t\"\n",
        s3.storage_toml("bucket", SECRET_KEY)
    );
    let mut reel = Reel::start("s3-outage", &config);
    let url = reel.url("live", "cam");
    let publisher = std::thread::spawn(move || ffmpeg_publish(&src, &url, true));
    std::thread::sleep(Duration::from_millis(1000));
    s3.pause();
    publisher.join().unwrap();
    // Every file closed while S3 was down: all spooled, none lost.
    let rows = wait_rows(&reel, "cam", 3, "spooled", Duration::from_secs(20));
    let spool = reel.dir.join("reel-data/spool/bucket");
    assert_eq!(files(&spool, "flv").len(), rows.len(), "{rows:#?}");
    // Reel restarts before S3 returns; the new process uploads what the spool holds.
    assert!(reel.stop().success());
    let dir = reel.dir.clone();
    drop(reel);
    let reel = Reel::start_in(dir, &config);
    s3.resume();
    let rows = wait_rows(&reel, "cam", rows.len(), "stored", Duration::from_secs(60));
    assert!(files(&spool, "flv").is_empty(), "spool drained");
    let dl = test_dir("s3-outage-download");
    let mut total = 0.0;
    for r in &rows {
        let file = download(&s3, r["key"].as_str().unwrap(), &dl);
        assert_eq!(decode_errors(&file), "", "{r:#}");
        total += r["duration_ms"].as_f64().unwrap() / 1000.0;
    }
    assert!(total > 11.0, "{total} s of 12 s recorded: {rows:#?}");
    assert!(reel.log_text().contains("spooled file uploaded"));
}

#[test]
fn wrong_credentials_are_reported_and_not_retried() {
    let s3 = server("creds");
    let src = fixture("s3-creds", 3, true, true);
    let reel = Reel::start(
        "s3-creds",
        &format!(
            "{}\n[template.t]\nformats = [\"flv\"]\nstorage = \"bucket\"\n[[rule]]\ntemplate = \"t\"\n",
            s3.storage_toml("bucket", "not-the-secret")
        ),
    );
    ffmpeg_publish(&src, &reel.url("live", "cam"), false);
    let rows = wait_rows(&reel, "cam", 1, "failed", Duration::from_secs(20));
    let log = reel.log_text();
    assert!(log.contains("upload refused") && log.contains("storage bucket"), "{log}");
    // The data is kept locally for when the credentials are fixed.
    let spool = reel.dir.join("reel-data/spool/bucket");
    assert_eq!(files(&spool, "flv").len(), 1, "{rows:#?}");
}

#[test]
fn an_object_storage_that_never_answers_stalls_no_recording() {
    never_answering(false);
}

#[test]
fn a_full_spool_refuses_new_files_with_a_clear_error() {
    never_answering(true);
}

fn never_answering(small_spool: bool) {
    // Accepts connections and never answers: every request runs into its deadline.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming().flatten() {
            held.push(s);
        }
    });
    let src = fixture("s3-blackhole", 8, true, true);
    let reel = Reel::start(
        if small_spool { "s3-spool-full" } else { "s3-blackhole" },
        &format!(
            "[storage.bucket]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:{port}\"\nbucket = \"b\"\n\
             access_key = \"k\"\nsecret_key = \"s\"\nrequest_timeout = \"1s\"\n{}\
             [template.t]\nformats = [\"flv\", \"hls\"]\nhls_segment = \"2s\"\nstorage = \"bucket\"\n[[rule]]\ntemplate = \"t\"\n",
            if small_spool { "spool_max_bytes = \"100KiB\"\n" } else { "" }
        ),
    );
    ffmpeg_publish(&src, &reel.url("live", "cam"), true);
    if small_spool {
        std::thread::sleep(Duration::from_secs(1));
        let log = reel.log_text();
        assert!(log.contains("the spool of storage bucket is full"), "{log}");
        // The publisher was never refused: other streams and the API go on.
        assert_eq!(reel.api("GET", "/healthz", None).0, 200);
        return;
    }
    let rows = wait_rows(&reel, "cam", 2, "spooled", Duration::from_secs(30));
    let log = reel.log_text();
    assert!(!log.contains("fell behind"), "{log}");
    assert!(log.contains("files wait in the spool"), "{log}");
    let spool = reel.dir.join("reel-data/spool/bucket");
    let flv = files(&spool, "flv");
    assert_eq!(flv.len(), 1, "{rows:#?}");
    assert_eq!(decode_errors(&flv[0]), "");
    assert!(reel_test_support::ffmpeg::format_seconds(&flv[0], "duration") > 7.5);
    assert!(files(&spool, "ts").len() >= 4, "every HLS segment is kept: {:?}", files(&spool, "ts"));
}

/// The bucket's object keys under the folder `prefix`.
fn list(s3: &S3Server, prefix: &str) -> Vec<String> {
    let store = client(s3);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut out = Vec::new();
    let mut dirs = vec![object_store::path::Path::from(prefix)];
    while let Some(d) = dirs.pop() {
        let r = rt.block_on(store.list_with_delimiter(Some(&d))).unwrap();
        out.extend(
            r.objects.into_iter().map(|o| o.location.to_string()).filter(|k| k.starts_with(&format!("{prefix}/"))),
        );
        dirs.extend(r.common_prefixes);
    }
    out
}

#[test]
fn growing_flv_and_mp4_stream_into_the_bucket_while_they_record() {
    let s3 = server("stream");
    // 8 s at about 14 Mbit/s: three 5 MiB parts per file.
    let src = test_dir("s3-stream-src").join("big.flv");
    run(std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25", "-f", "lavfi"])
        .args(["-i", "sine=frequency=440:sample_rate=44100", "-t", "8", "-c:v", "libx264", "-preset", "ultrafast"])
        .args(["-qp", "4", "-g", "50", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(&src));
    let reel = Reel::start(
        "s3-stream",
        &format!(
            "{}part_size = \"5MiB\"\n[template.both]\nformats = [\"flv\", \"mp4\"]\ninterval = \"30s\"\nstorage = \"bucket\"\n[[rule]]\ntemplate = \"both\"\n",
            s3.storage_toml("bucket", SECRET_KEY)
        ),
    );
    ffmpeg_publish(&src, &reel.url("live", "big"), true);
    let unpublished = Instant::now();
    // Parts went up while the files grew, before they closed: at least one of each.
    let (_, _, metrics) = http_raw(reel.http_port, "/metrics", "");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let streamed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("reel_upload_parts_streamed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(streamed >= 2.0, "parts sent while recording: {streamed}\n{}", reel.log_text());
    let rows = wait_rows(&reel, "big", 2, "stored", Duration::from_secs(20));
    eprintln!("{streamed} parts streamed while recording; stored {:?} after unpublish", unpublished.elapsed());
    assert!(unpublished.elapsed() < Duration::from_secs(3), "{:?}", unpublished.elapsed());
    let log = reel.log_text();
    assert!(!log.contains("uploading the file whole"), "the streamed uploads completed:\n{log}");
    for row in &rows {
        let key = row["key"].as_str().unwrap();
        let file = download(&s3, key, &test_dir("s3-stream-download"));
        assert_eq!(std::fs::metadata(&file).unwrap().len(), row["size"].as_u64().unwrap());
        assert_eq!(decode_errors(&file), "", "{key}");
        if key.ends_with(".flv") {
            assert_eq!(packets(&file, "v"), packets(&src, "v"), "video packets, timestamps included");
            assert_eq!(packets(&file, "a"), packets(&src, "a"));
        } else {
            let hashes = |v: Vec<Packet>| v.into_iter().map(|p| p.hash).collect::<Vec<_>>();
            assert_eq!(hashes(packets(&file, "v")), hashes(packets(&src, "v")), "{key}");
            assert_eq!(hashes(packets(&file, "a")), hashes(packets(&src, "a")), "{key}");
        }
    }
    // The temporary uploads are gone; the spool is empty.
    assert_eq!(list(&s3, ".uploading"), Vec::<String>::new());
    for ext in ["flv", "mp4"] {
        assert!(files(&reel.dir.join("reel-data/spool/bucket"), ext).is_empty());
    }
}
