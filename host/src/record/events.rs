//! Events for the callbacks: what happened to a recording, built into the exact requests each
//! subscribed `[[callback]]` receives and queued in the catalog's outbox before any attempt
//! (the notifier delivers from there, also after a restart).
//!
//! Without a callbacks plugin the body is Reel's JSON: `id` (also in `X-Reel-Event-Id`), `event`,
//! `time` (RFC 3339, UTC) and `time_ms`, the stream (`domain`, `app`, `stream`, `params`), then
//! the event's own fields. With a plugin exporting `callbacks`, a `file_created` request is the
//! plugin's. A callback with a `secret` gets `X-Reel-Signature: sha256=<hex HMAC-SHA256(secret,
//! body)>`, computed here so that what is stored is what is sent, on every retry.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::catalog::{new_id, NewEvent};
use crate::config::{CallbackConfig, Config, EVENT_FILE_CREATED};
use crate::policy::{CallbackRequest, FileInfo, Policy, StreamInfo};

/// One event about a stream, before it is addressed to the callbacks.
pub(crate) struct Spec<'a> {
    pub kind: &'static str,
    pub stream: &'a StreamInfo,
    pub task_id: Option<&'a str>,
    /// The event's own fields, after the common ones.
    pub fields: Map<String, Value>,
    /// For `file_created`: the file and the policy that may build the request.
    pub file: Option<(&'a dyn Policy, &'a FileInfo)>,
}

/// RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The outbox rows for `spec`: one per callback that subscribes to it and covers its stream.
pub(crate) fn rows(config: &Config, spec: &Spec<'_>, now_ms: u64) -> Vec<NewEvent> {
    let expires_ms = now_ms.saturating_add(config.events.max_age.as_millis() as u64);
    config
        .callback
        .iter()
        .filter(|cb| cb.wants(spec.kind) && cb.covers(&spec.stream.domain, &spec.stream.app))
        .filter_map(|cb| {
            let id = new_id();
            let request = match spec.file {
                Some((policy, file)) if spec.kind == EVENT_FILE_CREATED && policy.builds_callbacks() => {
                    policy.on_file(spec.stream, file, &cb.url)?
                }
                _ => CallbackRequest {
                    url: cb.url.clone(),
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: body(&id, spec, now_ms),
                },
            };
            let request = sign(request, &id, spec.kind, cb);
            Some(NewEvent {
                id,
                event: spec.kind.into(),
                domain: spec.stream.domain.clone(),
                app: spec.stream.app.clone(),
                stream: spec.stream.name.clone(),
                task_id: spec.task_id.map(Into::into),
                created_ms: now_ms as i64,
                url: request.url,
                headers: request.headers,
                body: request.body,
                timeout_ms: cb.timeout.as_millis().min(i64::MAX as u128) as i64,
                max_attempts: cb.retries.map_or(0, |r| r.saturating_add(1)),
                expires_ms: expires_ms as i64,
            })
        })
        .collect()
}

/// Reel's own JSON body of an event.
fn body(id: &str, spec: &Spec<'_>, now_ms: u64) -> Vec<u8> {
    let s = spec.stream;
    let mut m = Map::new();
    m.insert("id".into(), id.into());
    m.insert("event".into(), spec.kind.into());
    m.insert("time".into(), rfc3339(now_ms).into());
    m.insert("time_ms".into(), now_ms.into());
    m.insert("domain".into(), s.domain.clone().into());
    m.insert("app".into(), s.app.clone().into());
    m.insert("stream".into(), s.name.clone().into());
    let params: Map<String, Value> = s.params.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
    m.insert("params".into(), params.into());
    if let Some(t) = spec.task_id {
        m.insert("task_id".into(), t.into());
    }
    for (k, v) in &spec.fields {
        m.insert(k.clone(), v.clone());
    }
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// Adds `X-Reel-Event-Id`, `X-Reel-Event` and, with a secret, `X-Reel-Signature`.
fn sign(mut request: CallbackRequest, id: &str, kind: &str, cb: &CallbackConfig) -> CallbackRequest {
    use hmac::{Hmac, Mac};
    request.headers.push(("X-Reel-Event-Id".into(), id.into()));
    request.headers.push(("X-Reel-Event".into(), kind.into()));
    if let Ok(Some(secret)) = cb.resolved_secret() {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(&request.body);
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        request.headers.push(("X-Reel-Signature".into(), format!("sha256={hex}")));
    }
    request
}

/// The fields of a `file_created` event.
pub(crate) fn file_fields(f: &FileInfo, storage: &str, url: &str, recording_id: Option<&str>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(id) = recording_id {
        m.insert("recording_id".into(), id.into());
    }
    m.insert("format".into(), f.container.name().into());
    m.insert("storage".into(), storage.into());
    m.insert("key".into(), f.key.clone().into());
    m.insert("url".into(), url.into());
    m.insert("size".into(), f.size.into());
    m.insert("duration_ms".into(), f.duration_ms.into());
    m.insert("start_time".into(), rfc3339(f.start_ms).into());
    m.insert("end_time".into(), rfc3339(f.end_ms).into());
    m.insert("start_ms".into(), f.start_ms.into());
    m.insert("end_ms".into(), f.end_ms.into());
    m.insert("sequence".into(), f.sequence.into());
    m.insert("session_id".into(), f.session_id.clone().into());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;

    fn config(toml: &str) -> Config {
        toml::from_str(toml).unwrap()
    }

    fn stream() -> StreamInfo {
        StreamInfo {
            domain: "push.example.com".into(),
            app: "live".into(),
            name: "cam1".into(),
            params: vec![("k".into(), "v".into())],
            ..Default::default()
        }
    }

    #[test]
    fn one_signed_row_per_subscribed_callback() {
        let c = config(
            r#"
            [[callback]]
            url = "http://127.0.0.1:1/a"
            secret = "s3cret"
            [[callback]]
            url = "http://127.0.0.1:1/b"
            events = ["record_file"]
            retries = 2
            [[callback]]
            url = "http://127.0.0.1:1/c"
            app = "other"
            [[callback]]
            url = "http://127.0.0.1:1/d"
            events = ["segment_created"]
            "#,
        );
        let s = stream();
        let f = FileInfo {
            container: Format::Flv,
            sequence: 0,
            start_ms: 1_000,
            end_ms: 2_000,
            size: 10,
            duration_ms: 1_000,
            key: "live/cam1/a.flv".into(),
            session_id: "s".into(),
            task_id: None,
            random_id: "r".into(),
        };
        let spec = Spec {
            kind: EVENT_FILE_CREATED,
            stream: &s,
            task_id: None,
            fields: file_fields(&f, "local", "/x/a.flv", Some("abc")),
            file: Some((&crate::policy::Builtin, &f)),
        };
        let rows = rows(&c, &spec, 1_795_000_000_000);
        assert_eq!(
            rows.iter().map(|r| r.url.as_str()).collect::<Vec<_>>(),
            ["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"]
        );
        assert_eq!((rows[0].max_attempts, rows[1].max_attempts), (0, 3));
        assert_eq!(rows[0].expires_ms - rows[0].created_ms, 24 * 3600 * 1000);
        let v: Value = serde_json::from_slice(&rows[0].body).unwrap();
        assert_eq!(v["id"], rows[0].id.as_str());
        assert_eq!(v["event"], "file_created");
        assert_eq!(v["time"], "2026-11-18T11:06:40.000Z");
        assert_eq!(v["params"]["k"], "v");
        assert_eq!(v["key"], "live/cam1/a.flv");
        assert_eq!(v["recording_id"], "abc");
        let header = |r: &NewEvent, k: &str| r.headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
        assert_eq!(header(&rows[0], "X-Reel-Event-Id").as_deref(), Some(rows[0].id.as_str()));
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&rows[0].body);
        let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(header(&rows[0], "X-Reel-Signature"), Some(format!("sha256={want}")));
        assert_eq!(header(&rows[1], "X-Reel-Signature"), None);
        assert_ne!(rows[0].id, rows[1].id);
    }
}
