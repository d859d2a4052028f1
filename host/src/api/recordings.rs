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

/// How long a presigned URL handed out for a recording stays valid.
const PRESIGNED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// A single byte range of a `Range: bytes=…` header against `len` bytes: `(start, end)`
/// inclusive; `Err(())` when unsatisfiable, `Ok(None)` when absent or not a single range.
fn byte_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None); // Several ranges: the whole body (RFC 9110 allows it).
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            if n == 0 || len == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| ())?;
            let end = if b.is_empty() { len.saturating_sub(1) } else { b.parse::<u64>().map_err(|_| ())?.min(len - 1) };
            if start >= len || end < start {
                return Err(());
            }
            (start, end)
        }
        _ => return Err(()),
    };
    Ok(Some(range))
}

fn content_type(format: &str) -> &'static str {
    match format {
        "flv" => "video/x-flv",
        "mp4" => "video/mp4",
        "aac" => "audio/aac",
        "hls" => "application/vnd.apple.mpegurl",
        _ => "application/octet-stream",
    }
}

/// `GET /v1/recordings/{id}/content`: the file, with byte ranges, from local storage (or the
/// spool); from object storage, a redirect to a presigned URL valid for an hour.
pub async fn content(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    use axum::http::header;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Some(r) = s.tasks.catalog().recording(&id).await? else {
        return Err(ApiError::not_found(format!("no recording {id:?}")));
    };
    let located = s.recorder.locate(&r.storage, &r.key, PRESIGNED_FOR).await.map_err(|message| ApiError {
        status: StatusCode::BAD_GATEWAY,
        code: "storage_error",
        message,
        field: None,
    })?;
    let path = match located {
        None => return Err(ApiError::not_found(format!("recording {id:?} has no file at {:?} any more", r.key))),
        Some(crate::record::Located::Url(url)) => {
            return Ok((StatusCode::FOUND, [(header::LOCATION, url)]).into_response());
        }
        Some(crate::record::Located::File(p)) => p,
    };
    let io = |e: std::io::Error| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "storage_error",
        message: format!("reading {}: {e}", r.key),
        field: None,
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(io)?;
    let len = file.metadata().await.map_err(io)?.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match byte_range(range, len) {
        Ok(None) => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b),
        Err(()) => {
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))])
                .into_response())
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    file.seek(std::io::SeekFrom::Start(start)).await.map_err(io)?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type(&r.format))
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    resp.body(body).map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: e.to_string(),
        field: None,
    })
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range(None, 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(byte_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(byte_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=9-3"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=x-"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=-0"), 100), Err(()));
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexBody {
    domain: Option<String>,
    app: String,
    stream: String,
    start_time: serde_json::Value,
    end_time: serde_json::Value,
    name: Option<String>,
}

/// `POST /v1/recordings/index`: a VOD playlist over the stream's stored HLS segments in the
/// range → `201 {key, url, storage, segments, discontinuities, duration_ms}`; 404 when there
/// are none.
pub async fn index(
    State(s): State<ApiState>,
    body: Result<Json<IndexBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    use crate::record::{IndexError, IndexRequest};
    let Json(b) = body?;
    let start_ms = super::common::parse_time("start_time", &b.start_time)?;
    let end_ms = super::common::parse_time("end_time", &b.end_time)?;
    if end_ms <= start_ms {
        return Err(ApiError::invalid("end_time", "end_time must be after start_time"));
    }
    let req = IndexRequest { domain: b.domain, app: b.app, stream: b.stream, start_ms, end_ms, name: b.name };
    match s.recorder.write_index(&req).await {
        Ok(index) => Ok((StatusCode::CREATED, Json(json!(index))).into_response()),
        Err(IndexError::Invalid(m)) => Err(ApiError::invalid("name", m)),
        Err(e @ IndexError::Range) => Err(ApiError::invalid("end_time", e.to_string())),
        Err(e @ IndexError::Empty { .. }) => Err(ApiError::not_found(e.to_string())),
        Err(IndexError::Catalog(c)) => Err(c.into()),
        Err(e) => {
            let mut message = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                message = format!("{message}: {c}");
                src = c.source();
            }
            tracing::error!("index not written: {message}");
            Err(ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "storage_error", message, field: None })
        }
    }
}
