//! HTTP API: `/healthz`, `/metrics` (Prometheus), `GET /v1/streams`, `POST /v1/reload`, and
//! the HTTP/1.1 server that carries it, with a deadline for request headers and a bound on
//! connections.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::record::Recorder;

/// Re-reads the configuration and swaps it in; returns a user-facing error.
pub type ReloadFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub struct ApiState {
    pub recorder: Recorder,
    pub metrics: Option<PrometheusHandle>,
    pub reload: ReloadFn,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/streams", get(streams))
        .route("/v1/reload", post(reload))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Paths that answer without the API token: probes and the metrics scraper.
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// With `[server] api_token` set (as of the running configuration), everything else needs
/// `Authorization: Bearer <token>`.
async fn require_token(
    State(s): State<ApiState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = s.recorder.runtime().config.server.api_token() {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
        });
        if !ok && !OPEN_PATHS.contains(&req.uri().path()) {
            let body = json!({"error": {"code": "unauthorized", "message": "this API needs Authorization: Bearer <server.api_token>"}});
            return (StatusCode::UNAUTHORIZED, [("www-authenticate", "Bearer")], Json(body)).into_response();
        }
    }
    next.run(req).await
}

async fn metrics(State(s): State<ApiState>) -> Response {
    match &s.metrics {
        Some(h) => {
            metrics::gauge!("reel_streams_active").set(s.recorder.active().len() as f64);
            ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics exporter not installed\n").into_response(),
    }
}

async fn streams(State(s): State<ApiState>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let list: Vec<_> = s
        .recorder
        .active()
        .into_iter()
        .map(|(k, a)| {
            json!({
                "domain": k.domain, "app": k.app, "stream": k.name, "session_id": a.session_id,
                "template": a.template, "started_at_ms": a.started_at_ms,
                "frames": a.stats.frames.load(Relaxed), "bytes": a.stats.bytes.load(Relaxed),
                "files": a.stats.files.load(Relaxed),
            })
        })
        .collect();
    Json(json!({ "streams": list }))
}

async fn reload(State(s): State<ApiState>) -> Response {
    let f = s.reload.clone();
    match tokio::task::spawn_blocking(move || f()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"reloaded": true}))).into_response(),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, Json(json!({"reloaded": false, "error": e}))).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"reloaded": false, "error": e.to_string()})))
            .into_response(),
    }
}

/// Deadlines and bounds of the HTTP server (`[server]` in the configuration).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// A request's headers must arrive within this long (slow clients are closed).
    pub header_timeout: std::time::Duration,
    /// Connections at once; more are closed as they arrive.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` fires, then lets requests in flight finish for at
/// most `grace`. Idle keep-alive connections and half-sent requests end at the header deadline.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: tokio_util::sync::CancellationToken,
    grace: std::time::Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let service = hyper_util::service::TowerToHyperService::new(app);
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = &e as &dyn std::error::Error, "http accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("reel_http_connections_refused_total").increment(1);
            tracing::warn!(%peer, max = limits.max_connections, "http connection refused: server.max_http_connections reached");
            continue;
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(sock), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = &e as &dyn std::error::Error, "http connection ended");
            }
            drop(slot);
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("http connections still open after the shutdown deadline; closing them");
    }
}
