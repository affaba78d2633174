//! Applying a plan to the live store, and the [`Report`] every surface returns.

use jiff::Timestamp;

use super::plan::{Entry, Inventory, Volume, plan};
use crate::api::{Decision, PruneRequest, Report, RequestError, Totals};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("invalid prune request: {0}")]
    Request(#[from] RequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Size and free space of the volume holding the cache, when the file system tells.
pub fn volume(store: &Store) -> Option<Volume> {
    fs4::statvfs(store.root()).ok().map(|s| Volume {
        total: s.total_space(),
        free: s.available_space(),
    })
}

/// A snapshot of the store for the planner, with the volume's size.
pub fn inventory(store: &Store) -> Inventory {
    let snap = store.snapshot();
    let volume = volume(store);
    Inventory {
        manifests: snap
            .manifests
            .into_iter()
            .map(|(record, tags)| Entry { record, tags })
            .collect(),
        blob_sizes: snap.blobs,
        volume,
    }
}

/// Plans against a fresh snapshot and, unless dry or refused, removes what the plan says.
/// Manifests fetched or pulled after the snapshot are left alone.
pub fn run(store: &Store, request: &PruneRequest) -> Result<Report, PruneError> {
    let compiled = request.compile()?;
    let started = Timestamp::now();
    let clock = std::time::Instant::now();
    let inv = inventory(store);
    let p = plan(&inv, &compiled, started);
    let mut report = Report {
        dry_run: compiled.dry_run,
        items: p.items,
        totals: p.totals,
        protected: p.protected,
        kept: p.kept,
        refused: p.refused,
        blobs: p.blobs,
        started,
        duration_ms: 0,
    };
    if !compiled.dry_run && report.refused.is_none() && !p.manifests.is_empty() {
        let removed = store.remove_manifests(&p.manifests, Some(started))?;
        for item in &mut report.items {
            if removed.skipped.contains(&item.digest) {
                item.decision = Decision::Keep;
                item.reason = "pulledDuringRun".to_owned();
                *report.kept.entry(item.reason.clone()).or_default() += 1;
            }
        }
        report.totals = Totals {
            manifests: removed.manifests.len() as u64,
            blobs: removed.blobs.len() as u64,
            bytes: removed.bytes,
        };
        report.blobs = removed.blobs;
    }
    report.duration_ms = clock.elapsed().as_millis() as u64;
    Ok(report)
}
