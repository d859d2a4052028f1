//! `/v1/events`: the outbox of callback events, and retrying one by hand.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{ApiError, ApiState};
use crate::catalog::{Event, EventQuery, EventStatus, DEFAULT_PAGE, MAX_PAGE};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    status: Option<String>,
    event: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// An event as the API shows it: the stored request, its body as text when it is UTF-8.
fn view(e: &Event) -> Value {
    let mut v = json!(e);
    match std::str::from_utf8(&e.body) {
        Ok(text) => v["body"] = text.into(),
        Err(_) => v["body_base64"] = base64::engine::general_purpose::STANDARD.encode(&e.body).into(),
    }
    v
}

/// `GET /v1/events?status=pending|delivered|failed&event=…`: newest first, paged.
pub async fn list(
    State(s): State<ApiState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = q?;
    let status = match p.status.as_deref() {
        None => None,
        Some(v) => Some(EventStatus::parse(v).ok_or_else(|| {
            ApiError::invalid("status", format!("status {v:?} is none of pending, delivered, failed"))
        })?),
    };
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("limit must be 1 to {MAX_PAGE}")));
    }
    let q = EventQuery { status, event: p.event, limit, cursor: p.cursor };
    let page = s.tasks.catalog().events(&q).await?;
    Ok(Json(json!({"events": page.items.iter().map(view).collect::<Vec<_>>(), "next_cursor": page.next})))
}

/// `GET /v1/events/{id}`.
pub async fn get(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    match s.tasks.catalog().event(&id).await? {
        Some(e) => Ok(Json(view(&e))),
        None => Err(ApiError::not_found(format!("no event {id:?}"))),
    }
}

/// `POST /v1/events/{id}/retry`: a failed (or waiting) event is due now, with a new max age.
pub async fn retry(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let catalog = s.tasks.catalog();
    let now = crate::tasks::now_ms();
    let max_age = s.recorder.runtime().config.events.max_age.as_millis() as i64;
    match catalog.retry_event(&id, now, now + max_age).await? {
        Some(true) => {}
        Some(false) => {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message: format!("event {id:?} was delivered already"),
                field: None,
            })
        }
        None => return Err(ApiError::not_found(format!("no event {id:?}"))),
    }
    get(State(s), Path(id)).await
}
