//! What finding recordings costs: one stream's files by time range among 1,000,000 rows.
//!
//! `cargo bench -p reel --bench catalog` (SQLite in a temporary directory; `BENCH_ROWS` changes
//! the row count, `BENCH_CATALOG_URL=postgres://…` measures a PostgreSQL catalog instead).
//! 1,000 streams × 1,000 thirty-minute files each (about three weeks of recording), over 4
//! domains. Prints the fill rate and p50/p99/max per listing for: one stream and a one-day
//! window (the player's page), the same without the domain, the newest page of a stream, and
//! the next page through a cursor.

use std::time::{Duration, Instant};

use reel::catalog::{Catalog, Recording, RecordingQuery};
use reel::config::CatalogConfig;

const STREAMS: usize = 1000;
const FILE_MS: i64 = 30 * 60 * 1000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01
const QUERIES: usize = 2000;

type MakeQuery<'a> = Box<dyn Fn() -> RecordingQuery + 'a>;

fn row(i: usize) -> Recording {
    let stream = i % STREAMS;
    let n = (i / STREAMS) as i64;
    let start = T0 + n * FILE_MS + (stream as i64 * 7_919) % 60_000;
    Recording {
        id: format!("{:016x}", fastrand::u64(..)),
        domain: format!("d{}.example.com", stream % 4),
        app: "live".into(),
        stream: format!("cam{stream:04}"),
        format: ["flv", "hls", "mp4"][i % 3].into(),
        storage: "local".into(),
        key: format!("live/cam{stream:04}/{start}.flv"),
        size: 500_000_000,
        duration_ms: FILE_MS as u64,
        first_ts_ms: 0,
        last_ts_ms: FILE_MS,
        start_ms: start,
        end_ms: start + FILE_MS,
        session_id: format!("s{n}"),
        task_id: None,
        template: "default".into(),
        node_id: "bench".into(),
        video_codec: Some("h264".into()),
        audio_codec: Some("aac".into()),
        failed: false,
        etag: None,
        upload_state: "stored".into(),
    }
}

fn pct(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[v.len() * 99 / 100]), ms(*v.last().unwrap()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rows: usize = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let per_stream = rows / STREAMS;
    let dir = std::env::temp_dir().join(format!("reel-bench-catalog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = CatalogConfig { url: std::env::var("BENCH_CATALOG_URL").ok(), ..Default::default() };
    let catalog = Catalog::open(&config, &dir, "bench".into()).await.expect("open catalog");

    let t = Instant::now();
    let batch = 10_000;
    let mut i = 0;
    while i < rows {
        let chunk: Vec<_> = (i..(i + batch).min(rows)).map(row).collect();
        catalog.insert_recordings(&chunk).await.expect("insert");
        i += batch;
    }
    let fill = t.elapsed();
    println!(
        "catalog ({:?}): {rows} rows inserted in {:.1} s ({:.0} rows/s)",
        catalog.backend(),
        fill.as_secs_f64(),
        rows as f64 / fill.as_secs_f64()
    );

    let span = per_stream as i64 * FILE_MS;
    let day = 24 * 3600 * 1000;
    let query = |with_domain: bool| {
        let s = fastrand::usize(..STREAMS);
        let from = T0 + fastrand::i64(0..(span - day).max(1));
        RecordingQuery {
            domain: with_domain.then(|| format!("d{}.example.com", s % 4)),
            app: Some("live".into()),
            stream: Some(format!("cam{s:04}")),
            from_ms: Some(from),
            to_ms: Some(from + day),
            limit: 100,
            ..Default::default()
        }
    };
    let cases: [(&str, MakeQuery); 3] = [
        ("one stream, one day (domain, app, stream, from, to)", Box::new(|| query(true))),
        ("one stream, one day, no domain", Box::new(|| query(false))),
        (
            "one stream, newest 100",
            Box::new(|| RecordingQuery {
                app: Some("live".into()),
                stream: Some(format!("cam{:04}", fastrand::usize(..STREAMS))),
                limit: 100,
                ..Default::default()
            }),
        ),
    ];
    for (name, make) in &cases {
        let mut times = Vec::with_capacity(QUERIES);
        let mut found = 0;
        for _ in 0..QUERIES {
            let q = make();
            let t = Instant::now();
            let page = catalog.recordings(&q).await.expect("list");
            times.push(t.elapsed());
            found += page.items.len();
        }
        let (p50, p99, max) = pct(times);
        println!(
            "{name}: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({:.1} rows per page)",
            found as f64 / QUERIES as f64
        );
    }
    // Paging on: the second page of a stream's newest.
    let mut times = Vec::with_capacity(QUERIES);
    for _ in 0..QUERIES {
        let mut q = RecordingQuery {
            app: Some("live".into()),
            stream: Some(format!("cam{:04}", fastrand::usize(..STREAMS))),
            limit: 100,
            ..Default::default()
        };
        q.cursor = catalog.recordings(&q).await.expect("list").next;
        let t = Instant::now();
        catalog.recordings(&q).await.expect("list");
        times.push(t.elapsed());
    }
    let (p50, p99, max) = pct(times);
    println!("one stream, next page by cursor: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
    catalog.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
