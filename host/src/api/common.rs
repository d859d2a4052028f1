//! What every API route shares: its state, the error body, and times as the API reads them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::catalog::CatalogError;
use crate::record::Recorder;
use crate::tasks::{TaskError, Tasks};

/// Re-reads the configuration and swaps it in; returns a user-facing error.
pub type ReloadFn = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Largest request body the API reads; larger ones are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub recorder: Recorder,
    pub tasks: Tasks,
    pub metrics: Option<PrometheusHandle>,
    pub reload: ReloadFn,
}

/// An error as the API answers it: `{"error": {"code", "message", "field"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid", message: message.into(), field: Some(field) }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid", message: message.into(), field: None }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into(), field: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        (self.status, Json(body)).into_response()
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Cursor(c) => Self::invalid("cursor", format!("cursor {c:?} is not one this API returned")),
            e => {
                tracing::error!(error = &e as &dyn std::error::Error, "catalog unavailable");
                let mut message = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    message = format!("{message}: {s}");
                    src = s.source();
                }
                Self { status: StatusCode::SERVICE_UNAVAILABLE, code: "catalog_unavailable", message, field: None }
            }
        }
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Invalid { field, message } => Self::invalid(field, message),
            TaskError::Conflict { field, message } => {
                Self { status: StatusCode::CONFLICT, code: "conflict", message, field }
            }
            TaskError::NotFound(_) => Self::not_found(e.to_string()),
            TaskError::Catalog(c) => c.into(),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let message = format!("the request body is larger than {MAX_BODY_BYTES} bytes");
            return Self { status, code: "too_large", message, field: None };
        }
        Self::bad_request(r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

/// A time as the API accepts it, in Unix milliseconds: Unix seconds (a number, or a string of
/// digits) or RFC 3339 (`2026-12-05T08:00:00Z`, `2026-12-05T16:00:00+08:00`, fractions allowed).
pub fn parse_time(field: &'static str, v: &serde_json::Value) -> Result<i64, ApiError> {
    let bad = || ApiError::invalid(field, format!("{field} must be Unix seconds or RFC 3339, not {v}"));
    match v {
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(s), _) => s.checked_mul(1000).ok_or_else(bad),
            (None, Some(f)) if f.is_finite() && f.abs() < 1e15 => Ok((f * 1000.0).round() as i64),
            _ => Err(bad()),
        },
        serde_json::Value::String(s) => parse_time_str(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// [`parse_time`] for a query string value.
pub fn parse_time_query(field: &'static str, s: &str) -> Result<i64, ApiError> {
    parse_time_str(s)
        .ok_or_else(|| ApiError::invalid(field, format!("{field} must be Unix seconds or RFC 3339, not {s:?}")))
}

fn parse_time_str(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok()?.checked_mul(1000);
    }
    // YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        ms = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match &s[i..] {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh: i64 = o[1..3].parse().ok()?;
            let om: i64 = o[4..6].parse().ok()?;
            let m = oh * 60 + om;
            if o.starts_with('-') {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60) * 1000) + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time_str("1764921600"), Some(1_764_921_600_000));
        assert_eq!(parse_time_str("2025-12-05T08:00:00Z"), Some(1_764_921_600_000));
        assert_eq!(parse_time_str("2025-12-05T16:00:00+08:00"), Some(1_764_921_600_000));
        assert_eq!(parse_time_str("2025-12-05T03:00:00.250-05:00"), Some(1_764_921_600_250));
        assert_eq!(parse_time_str("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time_str("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        for bad in ["", "yesterday", "2025-13-01T00:00:00Z", "2025-12-05T08:00:00", "2025-12-05T08:00:00+8", "-5"] {
            assert_eq!(parse_time_str(bad), None, "{bad}");
        }
        assert_eq!(parse_time("end_time", &json!(1.5)).unwrap(), 1500);
        let e = parse_time("end_time", &json!(true)).unwrap_err();
        assert_eq!((e.field, e.status), (Some("end_time"), StatusCode::BAD_REQUEST));
    }
}
