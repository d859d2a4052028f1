//! HTTP API: `/healthz`, `/metrics` (Prometheus), `GET /v1/streams`, `POST /v1/reload`.

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
        .route("/metrics", get(metrics))
        .route("/v1/streams", get(streams))
        .route("/v1/reload", post(reload))
        .with_state(state)
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
