//! The outbox after an outage: 10,000 events queued while the callback endpoint answers 503,
//! then the endpoint returns. How long until every one is delivered?
//!
//! `cargo bench -p reel --bench outbox` (SQLite in a temporary directory; `BENCH_EVENTS`
//! changes the count, `BENCH_DOWN_S` the outage, `BENCH_CATALOG_URL=postgres://…` measures a
//! PostgreSQL catalog). The deliverer runs with the default `[events]` settings. The peer,
//! measured in the same run: the same POSTs sent straight from the same HTTP client at the same
//! concurrency, with no outbox.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use reel::catalog::{Catalog, EventStatus, NewEvent};
use reel::config::{CatalogConfig, EventsConfig};

/// The endpoint: 503 while `down`, else 200; counts requests of each kind.
struct Endpoint {
    down: AtomicBool,
    refused: AtomicU64,
    accepted: AtomicU64,
}

async fn serve(listener: tokio::net::TcpListener, ep: Arc<Endpoint>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else { return };
        let ep = ep.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ep = ep.clone();
                async move {
                    // Read the body, as a receiver would.
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    let status = if ep.down.load(Ordering::Relaxed) {
                        ep.refused.fetch_add(1, Ordering::Relaxed);
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        ep.accepted.fetch_add(1, Ordering::Relaxed);
                        StatusCode::OK
                    };
                    let mut r = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), svc).await;
        });
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn event(i: usize, url: &str) -> NewEvent {
    let now = now_ms();
    let body = format!(
        r#"{{"id":"{i:016x}","event":"file_created","time_ms":{now},"domain":"d","app":"live","stream":"cam{}","key":"live/cam/{i}.flv","size":123456}}"#,
        i % 100
    );
    NewEvent {
        id: format!("{i:016x}"),
        event: "file_created".into(),
        domain: "d".into(),
        app: "live".into(),
        stream: format!("cam{}", i % 100),
        task_id: None,
        created_ms: now,
        url: url.into(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("X-Reel-Event-Id".into(), format!("{i:016x}")),
        ],
        body: body.into_bytes(),
        timeout_ms: 5_000,
        max_attempts: 0,
        expires_ms: now + 86_400_000,
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let down_s: u64 = std::env::var("BENCH_DOWN_S").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let dir = std::env::temp_dir().join(format!("reel-bench-outbox-{}", std::process::id()));
        let config = CatalogConfig { url: std::env::var("BENCH_CATALOG_URL").ok(), ..Default::default() };
        let catalog = Catalog::open(&config, &dir, "bench".into()).await.expect("open the catalog");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let ep =
            Arc::new(Endpoint { down: AtomicBool::new(true), refused: AtomicU64::new(0), accepted: AtomicU64::new(0) });
        tokio::spawn(serve(listener, ep.clone()));
        let defaults = EventsConfig::default();

        // The peer: the same requests straight from the client, `concurrency` at a time.
        ep.down.store(false, Ordering::Relaxed);
        let client = reel::notify::http_client();
        let t = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(defaults.concurrency));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let (client, url, e) = (client.clone(), url.clone(), event(i, &url));
            let permit = sem.clone().acquire_owned().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut r = client.post(&url);
                for (k, v) in &e.headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                let ok = r.body(e.body).send().await.is_ok_and(|r| r.status().is_success());
                drop(permit);
                ok
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        let direct = t.elapsed();
        ep.accepted.store(0, Ordering::Relaxed);
        ep.down.store(true, Ordering::Relaxed);

        // Queued one event at a time, as recordings queue them, while the endpoint is down.
        let deliverer = reel::notify::Deliverer::start(catalog.clone(), (&defaults).into(), client.clone());
        let t = Instant::now();
        for i in 0..n {
            catalog.enqueue_events(&[event(i, &url)]).await.unwrap();
        }
        let queued = t.elapsed();
        let outage = Duration::from_secs(down_s).saturating_sub(queued);
        tokio::time::sleep(outage).await;
        let refused = ep.refused.load(Ordering::Relaxed);

        ep.down.store(false, Ordering::Relaxed);
        let back = Instant::now();
        let mut first = None;
        loop {
            if first.is_none() && ep.accepted.load(Ordering::Relaxed) > 0 {
                first = Some(back.elapsed());
            }
            let done = catalog.count_events(EventStatus::Delivered).await.unwrap();
            if done as usize >= n {
                break;
            }
            assert!(back.elapsed() < Duration::from_secs(600), "only {done} of {n} delivered after 600 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all = back.elapsed();
        let first = first.unwrap_or(all);
        let drain = all.saturating_sub(first);
        deliverer.stop();
        println!(
            "outbox: {n} events queued in {:.2} s ({:.0}/s) while the endpoint was down {} s; {refused} requests \
             reached it meanwhile",
            queued.as_secs_f64(),
            n as f64 / queued.as_secs_f64(),
            down_s.max(queued.as_secs())
        );
        println!(
            "after it returned: first delivery {:.2} s, all {n} delivered in {:.2} s ({:.2} s draining at {:.0}/s); \
             target: all within 60 s",
            first.as_secs_f64(),
            all.as_secs_f64(),
            drain.as_secs_f64(),
            n as f64 / drain.as_secs_f64().max(1e-3)
        );
        println!(
            "peer: the same {n} POSTs straight from the client: {:.2} s ({:.0}/s); outbox drain / direct = {:.2}",
            direct.as_secs_f64(),
            n as f64 / direct.as_secs_f64(),
            drain.as_secs_f64() / direct.as_secs_f64()
        );
        catalog.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
