//! Pull tasks: a record task whose stream Reel fetches from a URL (`rtmp://` played,
//! `http(s)://` read as HTTP-FLV) instead of waiting for a publisher. The pulled stream is
//! published into the recorder like a pushed one (rules, templates, plugins and outputs alike),
//! and the task's own template records it.
//!
//! One node pulls a task at a time: the one holding its lease in the catalog ([`LEASE_MS`],
//! renewed every scheduler round). When that node dies, its lease lapses and the next node's
//! round takes the task over, within [`LEASE_MS`] plus a round.
//!
//! A failed connect or a dropped source is tried again `[pull] retries` times (3) after
//! `backoff` doubling (1 s, 2 s, 4 s); then the task is `failed` with the last reason. A source
//! that delivered media before it dropped starts a fresh count.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{now_ms, Tasks};
use crate::catalog::{Task, TaskStatus};
use crate::ingest::pull::{pull, Frame, FrameSink, PullEnd, PullLimits};
use crate::record::{Recorder, StreamHandle, StreamInfo};

/// How long a node's claim on a pull task lasts unless renewed.
pub const LEASE_MS: i64 = 10_000;

/// Publishes pulled frames into the recorder, from the first one on.
struct Publish<'a> {
    recorder: &'a Recorder,
    info: StreamInfo,
    handle: Option<StreamHandle>,
    frames: u64,
}

impl FrameSink for Publish<'_> {
    fn frame(&mut self, f: Frame) -> Result<(), String> {
        if self.handle.is_none() {
            let info = StreamInfo { started_at_ms: now_ms().max(0) as u64, ..self.info.clone() };
            let handle = self.recorder.publish(info).map_err(|r| format!("{}: {}", r.code, r.description))?;
            self.handle = Some(handle);
        }
        self.frames += 1;
        if let Some(h) = &mut self.handle {
            h.push(f);
        }
        Ok(())
    }
}

/// The stream a pull task publishes: its domain (the source's host when the task names none),
/// app and stream, with the source as a parameter.
fn stream_info(t: &Task, url: &str) -> StreamInfo {
    let domain = if t.domain == "*" {
        url.split_once("://")
            .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
            .map(|a| a.rsplit_once('@').map_or(a, |(_, h)| h))
            .map(|a| a.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(a, |(h, _)| h))
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_ascii_lowercase()
    } else {
        t.domain.clone()
    };
    StreamInfo {
        domain,
        app: t.app.clone(),
        name: t.stream.clone(),
        params: vec![("pull".into(), url.into())],
        ..Default::default()
    }
}

impl Tasks {
    /// Pulls `t` until it is told to stop, or its source fails for good (then the task is
    /// `failed`).
    pub(super) async fn pull_task(&self, t: Task, stop: CancellationToken) {
        let Some(url) = t.url.clone() else { return };
        let recorder = &self.inner.recorder;
        let client = self.http_client();
        let mut failures = 0u32;
        loop {
            let cfg = recorder.runtime().config.pull.clone();
            let limits =
                PullLimits { connect_timeout: cfg.connect_timeout.std(), read_timeout: cfg.read_timeout.std() };
            let mut sink = Publish { recorder, info: stream_info(&t, &url), handle: None, frames: 0 };
            tracing::info!(task = %t.id, source = %url, attempt = failures + 1, "pulling");
            let result = pull(&url, limits, &client, &mut sink, &stop).await;
            let delivered = sink.frames > 0;
            drop(sink);
            let why = match result {
                Ok(PullEnd::Stopped) => return,
                Ok(PullEnd::Ended(why)) => format!("the source ended the stream ({why})"),
                Err(e) => e.to_string(),
            };
            metrics::counter!("reel_pull_failures_total").increment(1);
            if delivered {
                failures = 0;
            }
            failures += 1;
            if failures > cfg.retries {
                let id = t.id.clone();
                let reason = format!("{why} (after {} retries)", cfg.retries);
                tracing::error!(task = %t.id, source = %url, "pull task failed: {reason}");
                let now = now_ms();
                match self.inner.catalog.set_task_status(&t.id, TaskStatus::Failed, Some(&reason), now).await {
                    Ok(true) => {
                        let failed = Task { status: TaskStatus::Failed, reason: Some(reason), updated_ms: now, ..t };
                        recorder.task_event("task_failed", &failed).await;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(task = %t.id, error = &e as &dyn std::error::Error, "cannot mark the pull task failed")
                    }
                }
                let _ = self.inner.catalog.release_task(&id).await;
                return;
            }
            let wait = cfg.backoff.std().saturating_mul(1 << (failures - 1).min(16));
            tracing::warn!(task = %t.id, source = %url, "pull failed, retrying in {wait:?}: {why}");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One round for the pull tasks: holds the lease of each in its window and runs its puller
    /// here, or stops the puller of one that ended, stopped or went to another node.
    pub(super) async fn pull_round(&self, tasks: &[Task], now: i64) {
        let catalog = &self.inner.catalog;
        for t in tasks.iter().filter(|t| t.url.is_some()) {
            let running = self.puller_running(&t.id);
            if now >= t.end_ms || now < t.start_ms {
                if running {
                    self.stop_puller(&t.id);
                    let _ = catalog.release_task(&t.id).await;
                }
                continue;
            }
            match catalog.lease_task(&t.id, now, now + LEASE_MS).await {
                Ok(true) if !running => {
                    let stop = CancellationToken::new();
                    self.inner.pullers.lock().unwrap_or_else(|e| e.into_inner()).insert(t.id.clone(), stop.clone());
                    let (me, t) = (self.clone(), t.clone());
                    tokio::spawn(async move {
                        let id = t.id.clone();
                        me.pull_task(t, stop).await;
                        me.inner.pullers.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    });
                }
                Ok(true) => {}
                Ok(false) if running => {
                    tracing::warn!(task = %t.id, "another node holds this pull task now; stopping here");
                    self.stop_puller(&t.id);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(task = %t.id, error = &e as &dyn std::error::Error, "cannot renew a pull lease")
                }
            }
        }
        // Pullers of tasks no longer active (stopped, deleted or failed elsewhere).
        let ids: Vec<String> = self.inner.pullers.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        for id in ids.iter().filter(|id| !tasks.iter().any(|t| &t.id == *id)) {
            self.stop_puller(id);
        }
    }

    fn puller_running(&self, id: &str) -> bool {
        self.inner.pullers.lock().unwrap_or_else(|e| e.into_inner()).get(id).is_some_and(|s| !s.is_cancelled())
    }

    /// Stops this node's puller of `id`, if any (its recording's files close).
    pub(super) fn stop_puller(&self, id: &str) {
        if let Some(stop) = self.inner.pullers.lock().unwrap_or_else(|e| e.into_inner()).remove(id) {
            stop.cancel();
        }
    }

    /// Stops every puller and gives their leases back (shutdown: another node may go on).
    pub(super) async fn stop_pullers(&self) {
        let all: Vec<(String, CancellationToken)> =
            self.inner.pullers.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        for (id, stop) in all {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.catalog.release_task(&id)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_without_a_domain_takes_its_sources_host() {
        let t = Task {
            id: "t".into(),
            domain: "*".into(),
            app: "live".into(),
            stream: "cam".into(),
            start_ms: 0,
            end_ms: 1,
            template: "d".into(),
            note: None,
            status: TaskStatus::Waiting,
            reason: None,
            node_id: None,
            created_ms: 0,
            updated_ms: 0,
            url: None,
        };
        for (url, host) in [
            ("rtmp://Origin.Example.com:1935/live/x", "origin.example.com"),
            ("https://user:pw@cdn.example.com/live/x.flv?t=1", "cdn.example.com"),
            ("http://[::1]:8080/x.flv", "::1"),
            ("rtmp://10.0.0.1/live/x", "10.0.0.1"),
        ] {
            assert_eq!(stream_info(&t, url).domain, host, "{url}");
        }
        let named = Task { domain: "push.example.com".into(), ..t };
        assert_eq!(stream_info(&named, "rtmp://a/b/c").domain, "push.example.com");
    }
}
