//! One prune at a time on a live cache, with logs and metrics: what `/cmd/prune`,
//! `POST /admin/v1/prune` and background pruning share.

use std::sync::Arc;

use super::exec::{PruneError, run};
use crate::api::{PruneRequest, PruneSummary, Report};
use crate::metrics::{Metrics, PruneLabels, RunOutcome, Trigger};
use crate::store::Store;

pub struct PruneService {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// Runs are serialised: two plans over the same snapshot would double-count.
    lock: tokio::sync::Mutex<()>,
    last: std::sync::Mutex<Option<PruneSummary>>,
}

impl PruneService {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> PruneService {
        PruneService {
            store,
            metrics,
            lock: tokio::sync::Mutex::new(()),
            last: std::sync::Mutex::new(None),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub async fn run(&self, request: PruneRequest, trigger: Trigger) -> Result<Report, PruneError> {
        let _guard = self.lock.lock().await;
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || run(&store, &request))
            .await
            .unwrap_or_else(|e| {
                Err(PruneError::Store(crate::store::StoreError::Io {
                    path: self.store.root().to_owned(),
                    source: std::io::Error::other(e.to_string()),
                }))
            });
        record(&self.metrics, trigger, &result);
        if let Ok(r) = &result {
            let summary = PruneSummary {
                started: r.started,
                trigger: format!("{trigger:?}"),
                dry_run: r.dry_run,
                refused: r.refused.clone(),
                manifests: r.totals.manifests,
                blobs: r.totals.blobs,
                bytes: r.totals.bytes,
            };
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(summary);
        }
        result
    }

    /// The latest successful run (dry, refused or real) since the process started.
    pub fn last_run(&self) -> Option<PruneSummary> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Logs a run and counts it in the metrics.
pub fn record(metrics: &Metrics, trigger: Trigger, result: &Result<Report, PruneError>) {
    let outcome = match result {
        Err(_) => RunOutcome::failed,
        Ok(r) if r.refused.is_some() => RunOutcome::refused,
        Ok(r) if r.dry_run => RunOutcome::dry_run,
        Ok(_) => RunOutcome::pruned,
    };
    metrics
        .prune_runs
        .get_or_create(&PruneLabels { trigger, outcome })
        .inc();
    match result {
        Ok(r) => {
            if !r.dry_run {
                metrics.prune_manifests.inc_by(r.totals.manifests);
                metrics.prune_blobs.inc_by(r.totals.blobs);
                metrics.prune_bytes.inc_by(r.totals.bytes);
            }
            metrics.prune_seconds.observe(r.duration_ms as f64 / 1000.0);
            tracing::info!(
                ?trigger,
                dry_run = r.dry_run,
                manifests = r.totals.manifests,
                blobs = r.totals.blobs,
                bytes = r.totals.bytes,
                protected = ?r.protected,
                kept = ?r.kept,
                refused = r.refused.as_deref().unwrap_or(""),
                duration_ms = r.duration_ms,
                "prune run"
            );
        }
        Err(e) => tracing::warn!(?trigger, error = %e, "prune run failed"),
    }
}
