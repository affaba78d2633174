//! What a run did, from the pods' prune reports: the `lastRun` record, the history, the
//! `Ready` condition and the event text. Pure.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{
    HISTORY_LIMIT, ITEMS_LIMIT, PrunePolicyStatus, PruneRun, PruneRunItem, PruneRunPod,
    PruneRunTotals,
};
use crate::imageapi::openshift::table::human_size;
use crate::operator::conditions::{self, Cond, READY};
use crate::prune::{Decision, Report};

pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
pub const REFUSED: &str = "Refused";

/// Condition and event reasons.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
pub const REASON_CACHE_NOT_FOUND: &str = "CacheNotFound";
pub const REASON_LAST_RUN_FAILED: &str = "LastRunFailed";
pub const REASON_LAST_RUN_REFUSED: &str = "LastRunRefused";
pub const REASON_SCHEDULED: &str = "Scheduled";
pub const REASON_SUSPENDED: &str = "Suspended";

/// A status time: whole seconds, as the API stores it, so a status computed twice compares
/// equal to the one read back.
pub fn time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// What one pod answered.
pub type PodResult = (String, Result<Report, String>);

fn totals_of(report: &Report) -> PruneRunTotals {
    PruneRunTotals {
        manifests: clamp(report.totals.manifests),
        blobs: clamp(report.totals.blobs),
        bytes: clamp(report.totals.bytes),
        reclaimed: Some(human_size(report.totals.bytes)),
        kept: clamp(report.kept.values().sum()),
        protected: report
            .protected
            .iter()
            .map(|(k, v)| (k.clone(), clamp(*v)))
            .collect(),
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn add(sum: &mut PruneRunTotals, t: &PruneRunTotals) {
    sum.manifests = sum.manifests.saturating_add(t.manifests);
    sum.blobs = sum.blobs.saturating_add(t.blobs);
    sum.bytes = sum.bytes.saturating_add(t.bytes);
    sum.kept = sum.kept.saturating_add(t.kept);
    for (k, v) in &t.protected {
        let e = sum.protected.entry(k.clone()).or_default();
        *e = e.saturating_add(*v);
    }
}

/// The record of a run over `results` (one per registry pod, in pod order): totals summed
/// over the pods that answered, per-pod counts and errors, the pruned (or, dry, prunable)
/// manifests up to [`ITEMS_LIMIT`]. `Failed` when a pod failed or none was there, `Refused`
/// when a limit stopped a pod, `Succeeded` otherwise.
pub fn summarize(
    results: &[PodResult],
    dry_run: bool,
    started: Timestamp,
    completed: Timestamp,
) -> PruneRun {
    let mut totals = PruneRunTotals::default();
    let mut per_pod = Vec::new();
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    let mut truncated = false;
    let mut failures = Vec::new();
    let mut refusals = Vec::new();
    for (pod, result) in results {
        match result {
            Err(e) => {
                failures.push(format!("{pod}: {e}"));
                per_pod.push(PruneRunPod {
                    pod: pod.clone(),
                    error: Some(e.clone()),
                    totals: PruneRunTotals::default(),
                });
            }
            Ok(report) => {
                let t = totals_of(report);
                add(&mut totals, &t);
                per_pod.push(PruneRunPod {
                    pod: pod.clone(),
                    error: report.refused.clone(),
                    totals: t,
                });
                if let Some(r) = &report.refused {
                    refusals.push(format!("{pod}: {r}"));
                    // Nothing was removed; the plan's choices are not what happened.
                    continue;
                }
                // A manifest held by several pods is listed once.
                for item in report.items.iter().filter(|i| i.decision == Decision::Prune) {
                    if !seen.insert(item.digest.clone()) {
                        continue;
                    }
                    if items.len() == ITEMS_LIMIT {
                        truncated = true;
                        continue;
                    }
                    items.push(PruneRunItem {
                        reference: item.reference.clone(),
                        digest: item.digest.to_string(),
                        decision: "pruned".to_owned(),
                        reason: Some(item.reason.clone()).filter(|r| !r.is_empty()),
                    });
                }
            }
        }
    }
    totals.reclaimed = Some(human_size(u64::try_from(totals.bytes).unwrap_or(0)));
    let answered = results.len() - failures.len();
    let (result, message) = if results.is_empty() {
        (FAILED, "the cache has no registry pods".to_owned())
    } else if !failures.is_empty() {
        (
            FAILED,
            format!(
                "{} of {} pods failed: {}",
                failures.len(),
                results.len(),
                failures.join("; ")
            ),
        )
    } else if !refusals.is_empty() {
        (REFUSED, refusals.join("; "))
    } else {
        (SUCCEEDED, summary(&totals, dry_run, answered))
    };
    PruneRun {
        start_time: Some(time(started)),
        completion_time: Some(time(completed)),
        dry_run,
        result: Some(result.to_owned()),
        message: Some(message),
        totals,
        per_pod,
        items,
        items_truncated: truncated,
    }
}

fn summary(t: &PruneRunTotals, dry_run: bool, pods: usize) -> String {
    let verb = if dry_run { "would prune" } else { "pruned" };
    let mut s = format!(
        "{verb} {} manifests and {} blobs ({}) on {pods} pods; kept {}",
        t.manifests,
        t.blobs,
        t.reclaimed.as_deref().unwrap_or("0B"),
        t.kept
    );
    if !t.protected.is_empty() {
        s.push_str(&format!(", protected {}", protected_text(&t.protected)));
    }
    s
}

/// Makes `run` the last run, moving the previous one (without its items) to the front of the
/// history, which keeps at most [`HISTORY_LIMIT`] runs.
pub fn record(status: &mut PrunePolicyStatus, run: PruneRun) {
    if let Some(mut previous) = status.last_run.replace(run) {
        previous.items.clear();
        previous.items_truncated = false;
        status.history.insert(0, previous);
    }
    status.history.truncate(HISTORY_LIMIT);
}

/// Why the policy is or is not ready, besides the last run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Health<'a> {
    /// The spec cannot be acted on; the message names the field.
    InvalidSpec(&'a str),
    /// The ImageCache of `cacheRef` does not exist.
    CacheNotFound(&'a str),
    /// Valid and the cache exists.
    Ok {
        suspend: bool,
        next: Option<Timestamp>,
    },
}

/// The `Ready` condition: false for a spec that cannot run, a missing cache, or a last run
/// that failed or was refused; true otherwise.
pub fn ready(health: Health<'_>, last_run: Option<&PruneRun>) -> Cond<'static> {
    let last = last_run.and_then(|r| r.result.as_deref().map(|res| (res, r)));
    let message_of = |r: &PruneRun| r.message.clone().unwrap_or_default();
    match (health, last) {
        (Health::InvalidSpec(msg), _) => Cond::new(READY, false, REASON_INVALID_SPEC, msg),
        (Health::CacheNotFound(name), _) => Cond::new(
            READY,
            false,
            REASON_CACHE_NOT_FOUND,
            format!("ImageCache {name} not found in this namespace"),
        ),
        (Health::Ok { .. }, Some((FAILED, r))) => Cond::new(
            READY,
            false,
            REASON_LAST_RUN_FAILED,
            format!("last run failed: {}", message_of(r)),
        ),
        (Health::Ok { .. }, Some((REFUSED, r))) => Cond::new(
            READY,
            false,
            REASON_LAST_RUN_REFUSED,
            format!("last run refused: {}", message_of(r)),
        ),
        (Health::Ok { suspend: true, .. }, _) => Cond::new(
            READY,
            true,
            REASON_SUSPENDED,
            "scheduled runs are suspended; the imagecache.io/run-now annotation still runs one",
        ),
        (Health::Ok { next, .. }, _) => Cond::new(
            READY,
            true,
            REASON_SCHEDULED,
            match next {
                Some(t) => format!("next run at {}", time(t).0),
                None => "the schedule has no next run".to_owned(),
            },
        ),
    }
}

/// The status with the spec's health, next run and generation applied to `old`.
pub fn with_health(
    old: &PrunePolicyStatus,
    health: Health<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> PrunePolicyStatus {
    let mut status = old.clone();
    status.next_schedule_time = match health {
        Health::Ok { next, .. } => next.map(time),
        _ => None,
    };
    status.observed_generation = generation;
    let cond = ready(health, status.last_run.as_ref());
    conditions::set(&mut status.conditions, cond, generation, time(now));
    status
}

/// Whether the `Ready` condition went to something worth an event (a new reason or message).
pub fn ready_changed(old: &PrunePolicyStatus, new: &PrunePolicyStatus) -> bool {
    let key = |s: &PrunePolicyStatus| {
        conditions::get(&s.conditions, READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    key(old) != key(new)
}

/// The note of a run's event: the outcome, with the totals of the pods that answered when
/// the run did not succeed everywhere.
pub fn event_note(run: &PruneRun) -> String {
    let message = run.message.clone().unwrap_or_default();
    let note = if run.result.as_deref() == Some(SUCCEEDED) {
        message
    } else {
        let pods = run.per_pod.iter().filter(|p| p.error.is_none()).count();
        format!(
            "{message}; totals: {}",
            summary(&run.totals, run.dry_run, pods)
        )
    };
    // Event notes are limited to 1 kB.
    truncate(&note, 1000)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Totals for metrics: manifests and bytes actually removed (zero on a dry run).
pub fn removed(run: &PruneRun) -> (u64, u64) {
    if run.dry_run {
        return (0, 0);
    }
    (
        u64::try_from(run.totals.manifests).unwrap_or(0),
        u64::try_from(run.totals.bytes).unwrap_or(0),
    )
}

/// Protected counts as `inUse=3 minAge=1`.
fn protected_text(p: &BTreeMap<String, i64>) -> String {
    p.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
