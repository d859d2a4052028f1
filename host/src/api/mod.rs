//! HTTP API: `/healthz`, `/metrics` (Prometheus), `GET /v1/streams`, `POST /v1/reload`, and
//! the HTTP/1.1 server that carries it, with a deadline for request headers and a bound on
//! connections.

mod common;
mod events;
mod recordings;
mod tasks;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use common::ApiError;
pub use common::{ApiState, ReloadFn, MAX_BODY_BYTES};

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/streams", get(streams))
        .route("/v1/templates", get(templates))
        .route("/v1/rules", get(rules))
        .route("/v1/rules/match", get(rules_match))
        .route("/v1/reload", post(reload))
        .route("/v1/recordings", get(recordings::list))
        .route("/v1/recordings/index", post(recordings::index))
        .route("/v1/recordings/{id}", get(recordings::get).delete(recordings::delete))
        .route("/v1/recordings/{id}/content", get(recordings::content))
        .route("/v1/record-tasks", get(tasks::list).post(tasks::create))
        .route("/v1/record-tasks/{id}", get(tasks::get).delete(tasks::delete))
        .route("/v1/record-tasks/{id}/stop", post(tasks::stop))
        .route("/v1/pull-tasks", get(tasks::list_pull).post(tasks::create_pull))
        .route("/v1/pull-tasks/{id}", get(tasks::get).delete(tasks::delete))
        .route("/v1/pull-tasks/{id}/stop", post(tasks::stop))
        .route("/v1/events", get(events::list))
        .route("/v1/events/{id}", get(events::get))
        .route("/v1/events/{id}/retry", post(events::retry))
        .fallback(|| async { ApiError::not_found("no such API path") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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

async fn readyz(State(s): State<ApiState>) -> Response {
    if s.tasks.catalog().ping().await {
        "ok\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "catalog unreachable\n").into_response()
    }
}

/// `GET /v1/streams`: every live stream, its codecs, rates, and what records it.
async fn streams(State(s): State<ApiState>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let now = crate::tasks::now_ms();
    let list: Vec<_> = s
        .recorder
        .active()
        .into_iter()
        .map(|(k, a)| {
            let uptime_ms = (now - a.started_at_ms as i64).max(0);
            let bytes = a.stats.bytes.load(Relaxed);
            let bitrate = if uptime_ms > 0 { bytes * 8 * 1000 / uptime_ms as u64 } else { 0 };
            json!({
                "domain": k.domain, "app": k.app, "stream": k.name, "session_id": a.session_id,
                "template": a.template, "started_at_ms": a.started_at_ms, "uptime_ms": uptime_ms,
                "video_codec": a.info.video_codec, "audio_codec": a.info.audio_codec,
                "width": a.video.map(|v| v.0), "height": a.video.map(|v| v.1),
                "bitrate_bps": bitrate,
                "frames": a.stats.frames.load(Relaxed), "bytes": bytes,
                "files": a.stats.files.load(Relaxed),
                "recordings": a.recordings,
            })
        })
        .collect();
    Json(json!({ "streams": list }))
}

/// `GET /v1/templates`: the templates of the running configuration.
async fn templates(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let rt = s.recorder.runtime();
    let list: serde_json::Map<_, _> = rt
        .config
        .template
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                json!({
                    "formats": t.formats, "interval_ms": t.interval.as_millis(), "hls_segment_ms": t.hls_segment.as_millis(),
                    "storage": (!t.storage.is_empty()).then_some(&t.storage), "plugins": t.plugins,
                }),
            )
        })
        .collect();
    Json(json!({ "templates": list }))
}

/// `GET /v1/rules`: the rules of the running configuration, in configured order.
async fn rules(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let rt = s.recorder.runtime();
    let list: Vec<_> = rt
        .config
        .rule
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"rule_id": i.to_string(), "domain": r.domain, "app": r.app, "stream": r.stream,
                   "template": r.template, "priority": r.priority})
        })
        .collect();
    Json(json!({ "rules": list }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchParams {
    domain: Option<String>,
    app: String,
    stream: String,
}

/// `GET /v1/rules/match?domain=&app=&stream=`: which template records that stream and why,
/// every matching rule most specific first, and the record tasks that record it now.
async fn rules_match(
    State(s): State<ApiState>,
    q: Result<Query<MatchParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(p) = q?;
    let rt = s.recorder.runtime();
    let domain = p.domain.unwrap_or_default().trim_end_matches('.').to_ascii_lowercase();
    let info = crate::record::StreamInfo {
        domain: domain.clone(),
        app: p.app.clone(),
        name: p.stream.clone(),
        ..Default::default()
    };
    let candidates = rt.candidates(&info);
    let chosen = rt.choose(&info, &candidates);
    let plugins = !rt.config.policy.plugins.is_empty();
    let why = match (&chosen, candidates.first()) {
        (None, _) => "no rule matches this stream: it is not recorded by rules".to_string(),
        (Some(id), Some(first)) if *id == first.rule_id && !plugins => {
            "the most specific matching rule (exact stream > exact app > exact domain > wildcard), then the highest priority, then the first configured".into()
        }
        (Some(_), _) => format!("chosen by the policy plugins {:?}", rt.config.policy.plugins),
    };
    let rule = chosen.as_ref().and_then(|id| candidates.iter().find(|c| &c.rule_id == id));
    let template = rule.and_then(|r| rt.config.template.get(&r.template).map(|t| (r.template.clone(), t)));
    let key = crate::record::StreamKey { domain, app: p.app, name: p.stream };
    let tasks = s.tasks.active_for(&key);
    Ok(Json(json!({
        "template": template.as_ref().map(|(n, _)| n),
        "records": template.as_ref().is_some_and(|(_, t)| !t.formats.is_empty()),
        "formats": template.as_ref().map(|(_, t)| &t.formats),
        "rule": rule.map(|r| json!({"rule_id": r.rule_id, "domain": r.domain, "app": r.app, "stream": r.name,
                                    "template": r.template, "priority": r.priority})),
        "why": why,
        "candidates": candidates.iter().map(|r| json!({"rule_id": r.rule_id, "domain": r.domain, "app": r.app,
                                    "stream": r.name, "template": r.template, "priority": r.priority})).collect::<Vec<_>>(),
        "tasks": tasks,
    })))
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
