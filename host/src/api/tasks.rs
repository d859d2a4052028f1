//! `/v1/record-tasks`: record a stream for a time window, or now until stopped.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::common::{parse_time, ApiError, ApiState};
use crate::catalog::{RecordingQuery, TaskQuery, TaskStatus, DEFAULT_PAGE, MAX_PAGE};
use crate::tasks::NewTask;

/// Files listed with a task at most (the rest through `/v1/recordings?task_id=`).
const TASK_FILES: u32 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    domain: Option<String>,
    app: String,
    stream: String,
    start_time: Option<serde_json::Value>,
    end_time: serde_json::Value,
    template: String,
    note: Option<String>,
}

/// A time field that may be absent or `null`.
fn optional_time(field: &'static str, v: &Option<serde_json::Value>) -> Result<Option<i64>, ApiError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => parse_time(field, v).map(Some),
    }
}

/// `POST /v1/record-tasks` → `201 {"task_id": …}`.
pub async fn create(
    State(s): State<ApiState>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let start_ms = optional_time("start_time", &b.start_time)?;
    let end_ms = parse_time("end_time", &b.end_time)?;
    let t = s
        .tasks
        .create(NewTask {
            domain: b.domain,
            app: b.app,
            stream: b.stream,
            start_ms,
            end_ms,
            template: b.template,
            note: b.note,
            url: None,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"task_id": t.id, "task": t}))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    url: String,
    domain: Option<String>,
    app: String,
    stream: String,
    start_time: Option<serde_json::Value>,
    end_time: Option<serde_json::Value>,
    template: String,
    note: Option<String>,
}

/// `POST /v1/pull-tasks` → `201 {"task_id": …}`: pull `url` into `app/stream` from
/// `start_time` (default now) to `end_time` (default 24 hours later).
pub async fn create_pull(
    State(s): State<ApiState>,
    body: Result<Json<PullBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let start_ms = optional_time("start_time", &b.start_time)?;
    let end_ms = match optional_time("end_time", &b.end_time)? {
        Some(t) => t,
        None => start_ms.unwrap_or_else(crate::tasks::now_ms) + crate::tasks::MAX_WINDOW_MS,
    };
    let t = s
        .tasks
        .create(NewTask {
            domain: b.domain,
            app: b.app,
            stream: b.stream,
            start_ms,
            end_ms,
            template: b.template,
            note: b.note,
            url: Some(b.url),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"task_id": t.id, "task": t}))).into_response())
}

/// `GET /v1/pull-tasks`: as `GET /v1/record-tasks`, the pull tasks only.
pub async fn list_pull(
    s: State<ApiState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    listing(s, q, true).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    domain: Option<String>,
    app: Option<String>,
    stream: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /v1/record-tasks`: newest first, paged like recordings (pull tasks are listed under
/// `/v1/pull-tasks`).
pub async fn list(
    s: State<ApiState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    listing(s, q, false).await
}

async fn listing(
    State(s): State<ApiState>,
    q: Result<Query<ListParams>, QueryRejection>,
    pull: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(p) = q?;
    let status = match p.status.as_deref() {
        None => None,
        Some(v) => Some(TaskStatus::parse(v).ok_or_else(|| {
            ApiError::invalid(
                "status",
                format!("status {v:?} is none of scheduled, waiting, recording, completed, stopped, failed"),
            )
        })?),
    };
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("limit must be 1 to {MAX_PAGE}")));
    }
    let q =
        TaskQuery { pull: Some(pull), domain: p.domain, app: p.app, stream: p.stream, status, limit, cursor: p.cursor };
    let page = s.tasks.list(&q).await?;
    Ok(Json(json!({"tasks": page.items, "next_cursor": page.next})))
}

/// `GET /v1/record-tasks/{id}`: the task and its files.
pub async fn get(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let t = s.tasks.get(&id).await?;
    let q = RecordingQuery { task_id: Some(id), limit: TASK_FILES, ..Default::default() };
    let files = s.tasks.catalog().recordings(&q).await?;
    let files: Vec<_> = files
        .items
        .iter()
        .map(|r| {
            json!({"id": r.id, "key": r.key, "format": r.format, "size": r.size, "start_ms": r.start_ms,
                   "end_ms": r.end_ms, "duration_ms": r.duration_ms, "storage": r.storage})
        })
        .collect();
    let mut v = json!(t);
    v["files"] = json!(files);
    Ok(Json(v))
}

/// `POST /v1/record-tasks/{id}/stop`: its files close now; it never records again.
pub async fn stop(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!(s.tasks.stop(&id).await?)))
}

/// `DELETE /v1/record-tasks/{id}`: stopped and forgotten; its recordings stay.
pub async fn delete(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    s.tasks.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
