//! Retention: recordings made with a template that has `retention` are deleted (their files,
//! then their catalog rows) once they ended longer ago than that. Only what Reel recorded and
//! catalogued under that template is touched.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::record::Recorder;

/// Rows handled per template and round.
const BATCH: u32 = 200;
/// Longest pause between rounds; shorter retentions are checked more often (at half their
/// length, at least every second).
const MAX_PERIOD: Duration = Duration::from_secs(60);

fn period(recorder: &Recorder) -> Duration {
    let shortest =
        recorder.runtime().config.template.values().map(|t| t.retention.std()).filter(|d| !d.is_zero()).min();
    shortest.map_or(MAX_PERIOD, |d| (d / 2).clamp(Duration::from_secs(1), MAX_PERIOD))
}

/// Deletes expired recordings until `shutdown`.
pub async fn run(recorder: Recorder, catalog: Catalog, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period(&recorder)) => {}
            _ = shutdown.cancelled() => return,
        }
        sweep(&recorder, &catalog).await;
    }
}

/// One round over every template with a retention; returns how many recordings went.
pub async fn sweep(recorder: &Recorder, catalog: &Catalog) -> usize {
    let now = super::now_ms();
    let templates: Vec<(String, Duration)> = recorder
        .runtime()
        .config
        .template
        .iter()
        .filter(|(_, t)| !t.retention.std().is_zero())
        .map(|(n, t)| (n.clone(), t.retention.std()))
        .collect();
    let mut deleted = 0;
    for (template, keep) in templates {
        let before = now - keep.as_millis().min(i64::MAX as u128) as i64;
        let rows = match catalog.expired(&template, before, BATCH).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%template, error = &e as &dyn std::error::Error, "retention: cannot list recordings");
                continue;
            }
        };
        for r in rows {
            match recorder.delete_files(&r.storage, &r.key, &r.format).await {
                Ok(_) => match catalog.delete_recording(&r.id).await {
                    Ok(_) => {
                        deleted += 1;
                        metrics::counter!("reel_retention_deleted_total").increment(1);
                        tracing::info!(%template, key = %r.key, storage = %r.storage, "retention: recording deleted");
                    }
                    Err(e) => tracing::warn!(key = %r.key, error = &e as &dyn std::error::Error, "retention: row kept"),
                },
                Err(e) => tracing::warn!(key = %r.key, storage = %r.storage, "retention: files kept: {e}"),
            }
        }
    }
    deleted
}
