//! `/v1/recordings`: what was recorded, found by stream, time, format or task.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::common::{parse_time_query, ApiError, ApiState};
use crate::catalog::{RecordingQuery, DEFAULT_PAGE};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    domain: Option<String>,
    app: Option<String>,
    stream: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
    task_id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /v1/recordings`: newest first, `limit` (1–1000, default 100) per page; `next_cursor`
/// continues.
pub async fn list(
    State(s): State<ApiState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(p) = q?;
    let from_ms = p.from.as_deref().map(|v| parse_time_query("from", v)).transpose()?;
    let to_ms = p.to.as_deref().map(|v| parse_time_query("to", v)).transpose()?;
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if t < f {
            return Err(ApiError::invalid("to", "to is before from"));
        }
    }
    if let Some(f) = &p.format {
        if !["flv", "hls", "mp4", "aac"].contains(&f.as_str()) {
            return Err(ApiError::invalid("format", format!("format {f:?} is none of flv, hls, mp4, aac")));
        }
    }
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=crate::catalog::MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("limit must be 1 to {}", crate::catalog::MAX_PAGE)));
    }
    let query = RecordingQuery {
        domain: p.domain,
        app: p.app,
        stream: p.stream,
        format: p.format,
        task_id: p.task_id,
        from_ms,
        to_ms,
        limit,
        cursor: p.cursor,
    };
    let page = s.tasks.catalog().recordings(&query).await?;
    Ok(Json(json!({"recordings": page.items, "next_cursor": page.next})))
}

pub async fn get(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    match s.tasks.catalog().recording(&id).await? {
        Some(r) => Ok(Json(json!(r))),
        None => Err(ApiError::not_found(format!("no recording {id:?}"))),
    }
}

/// `DELETE /v1/recordings/{id}`: the file (an HLS playlist with its segments) and its row.
pub async fn delete(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let catalog = s.tasks.catalog();
    let Some(r) = catalog.recording(&id).await? else {
        return Err(ApiError::not_found(format!("no recording {id:?}")));
    };
    match s.recorder.delete_files(&r.storage, &r.key, &r.format).await {
        Ok(objects) => {
            catalog.delete_recording(&id).await?;
            tracing::info!(recording = %id, key = %r.key, objects, "recording deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(message) => Err(ApiError {
            status: StatusCode::BAD_GATEWAY,
            code: "storage_error",
            message: format!("the recording's files could not be deleted (the row stays): {message}"),
            field: None,
        }),
    }
}
