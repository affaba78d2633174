//! What a run did, from the pods' prune reports: the `lastRun` record, the history, the
//! `Ready` condition and the event text. Pure.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{Decision, Report, human_size};
use crate::crd::{
    HISTORY_LIMIT, ITEMS_LIMIT, PrunePolicyStatus, PruneRun, PruneRunItem, PruneRunPod,
    PruneRunTotals,
};
use crate::operator::conditions::{self, Cond, READY};

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
                for item in report
                    .items
                    .iter()
                    .filter(|i| i.decision == Decision::Prune)
                {
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
    // Bounded where it is published (report::publish).
    note
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Item, Totals};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn digest(n: u32) -> String {
        format!("sha256:{n:064x}")
    }

    fn item(n: u32, decision: Decision, reason: &str) -> Item {
        Item {
            reference: format!("docker.io/library/app:{n}"),
            digest: digest(n).parse().unwrap(),
            decision,
            reason: reason.to_owned(),
        }
    }

    fn report(items: Vec<Item>, manifests: u64, bytes: u64) -> Report {
        Report {
            dry_run: false,
            items,
            totals: Totals {
                manifests,
                blobs: manifests * 2,
                bytes,
            },
            protected: BTreeMap::from([("inUse".to_owned(), 2), ("minAge".to_owned(), 1)]),
            kept: BTreeMap::from([("keepPattern".to_owned(), 3)]),
            refused: None,
            blobs: Vec::new(),
            started: ts("2026-01-01T03:00:00Z"),
            duration_ms: 12,
        }
    }

    const T0: &str = "2026-01-01T03:00:00Z";
    const T1: &str = "2026-01-01T03:00:07Z";

    #[test]
    fn totals_are_summed_over_pods_and_items_listed_once() {
        let a = report(
            vec![
                item(1, Decision::Prune, "unusedFor"),
                item(2, Decision::Protected, "inUse"),
                item(3, Decision::Prune, "childOfPrunedIndex"),
            ],
            2,
            3 << 30,
        );
        let b = report(vec![item(1, Decision::Prune, "unusedFor")], 1, 512 << 20);
        let run = summarize(
            &[("cache-0".into(), Ok(a)), ("cache-1".into(), Ok(b))],
            false,
            ts(T0),
            ts(T1),
        );
        assert_eq!(run.result.as_deref(), Some(SUCCEEDED));
        assert_eq!(run.totals.manifests, 3);
        assert_eq!(run.totals.blobs, 6);
        assert_eq!(run.totals.bytes, (3 << 30) + (512 << 20));
        assert_eq!(run.totals.reclaimed.as_deref(), Some("3.5GiB"));
        assert_eq!(run.totals.kept, 6);
        assert_eq!(
            run.totals.protected,
            BTreeMap::from([("inUse".to_owned(), 4), ("minAge".to_owned(), 2)])
        );
        assert_eq!(run.per_pod.len(), 2);
        assert_eq!(run.per_pod[1].totals.reclaimed.as_deref(), Some("512MiB"));
        let digests: Vec<&str> = run.items.iter().map(|i| i.digest.as_str()).collect();
        assert_eq!(digests, [digest(1), digest(3)], "pruned only, each once");
        assert_eq!(run.items[0].decision, "pruned");
        assert_eq!(run.items[0].reason.as_deref(), Some("unusedFor"));
        assert!(!run.items_truncated);
        assert_eq!(run.start_time, Some(Time(ts(T0))));
        assert_eq!(run.completion_time, Some(Time(ts(T1))));
        assert_eq!(
            run.message.as_deref(),
            Some(
                "pruned 3 manifests and 6 blobs (3.5GiB) on 2 pods; kept 6, protected inUse=4 minAge=2"
            )
        );
    }

    #[test]
    fn a_failed_pod_fails_the_run_and_the_others_still_count() {
        let run = summarize(
            &[
                ("cache-0".into(), Ok(report(vec![], 2, 2048))),
                ("cache-1".into(), Err("HTTP 500: disk full".into())),
                ("cache-2".into(), Err("pod not ready".into())),
            ],
            true,
            ts(T0),
            ts(T1),
        );
        assert_eq!(run.result.as_deref(), Some(FAILED));
        assert!(run.dry_run);
        assert_eq!(
            run.message.as_deref(),
            Some("2 of 3 pods failed: cache-1: HTTP 500: disk full; cache-2: pod not ready")
        );
        assert_eq!(run.totals.manifests, 2);
        assert_eq!(run.per_pod[1].error.as_deref(), Some("HTTP 500: disk full"));
        assert_eq!(run.per_pod[1].totals, PruneRunTotals::default());
        assert_eq!(
            event_note(&run),
            "2 of 3 pods failed: cache-1: HTTP 500: disk full; cache-2: pod not ready; totals: would prune 2 manifests and 4 blobs (2.0KiB) on 1 pods; kept 3, protected inUse=2 minAge=1"
        );
        assert_eq!(removed(&run), (0, 0), "a dry run removes nothing");
    }

    #[test]
    fn a_refusal_lists_no_items_and_no_pods_is_a_failure() {
        let mut r = report(vec![item(1, Decision::Prune, "unusedFor")], 0, 0);
        r.refused = Some("refused: this run would delete 90% of the cache".into());
        let run = summarize(&[("cache-0".into(), Ok(r))], false, ts(T0), ts(T1));
        assert_eq!(run.result.as_deref(), Some(REFUSED));
        assert_eq!(
            run.message.as_deref(),
            Some("cache-0: refused: this run would delete 90% of the cache")
        );
        assert!(run.items.is_empty());
        assert!(run.per_pod[0].error.is_some());

        let none = summarize(&[], false, ts(T0), ts(T1));
        assert_eq!(none.result.as_deref(), Some(FAILED));
        assert_eq!(
            none.message.as_deref(),
            Some("the cache has no registry pods")
        );
    }

    #[test]
    fn items_are_bounded() {
        let items = (0..ITEMS_LIMIT as u32 + 5)
            .map(|n| item(n, Decision::Prune, "unusedFor"))
            .collect();
        let run = summarize(
            &[("cache-0".into(), Ok(report(items, 105, 1)))],
            false,
            ts(T0),
            ts(T1),
        );
        assert_eq!(run.items.len(), ITEMS_LIMIT);
        assert!(run.items_truncated);
        assert_eq!(run.totals.manifests, 105, "totals are not cut");
    }

    #[test]
    fn history_keeps_previous_runs_newest_first_without_items() {
        let mut status = PrunePolicyStatus::default();
        for n in 0..(HISTORY_LIMIT as u32 + 3) {
            let items = vec![item(n, Decision::Prune, "unusedFor")];
            let mut run = summarize(
                &[("cache-0".into(), Ok(report(items, 1, 1)))],
                false,
                ts(T0),
                ts(T1),
            );
            run.message = Some(format!("run {n}"));
            record(&mut status, run);
        }
        let last = status.last_run.as_ref().unwrap();
        assert_eq!(last.message.as_deref(), Some("run 12"));
        assert_eq!(last.items.len(), 1, "the last run keeps its items");
        assert_eq!(status.history.len(), HISTORY_LIMIT);
        assert_eq!(status.history[0].message.as_deref(), Some("run 11"));
        assert_eq!(status.history[9].message.as_deref(), Some("run 2"));
        assert!(status.history.iter().all(|r| r.items.is_empty()));
    }

    #[test]
    fn ready_reflects_spec_cache_and_last_run() {
        let ok = Health::Ok {
            suspend: false,
            next: Some(ts("2026-01-02T03:00:00Z")),
        };
        let c = ready(ok, None);
        assert!(c.status);
        assert_eq!(c.reason, REASON_SCHEDULED);
        assert_eq!(c.message, "next run at 2026-01-02T03:00:00Z");
        let c = ready(
            Health::Ok {
                suspend: true,
                next: None,
            },
            None,
        );
        assert_eq!((c.status, c.reason), (true, REASON_SUSPENDED));
        let c = ready(Health::InvalidSpec("spec.timeZone: unknown"), None);
        assert_eq!((c.status, c.reason), (false, REASON_INVALID_SPEC));
        assert_eq!(c.message, "spec.timeZone: unknown");
        let c = ready(Health::CacheNotFound("main"), None);
        assert_eq!((c.status, c.reason), (false, REASON_CACHE_NOT_FOUND));
        let failed = summarize(&[], false, ts(T0), ts(T1));
        let c = ready(ok, Some(&failed));
        assert_eq!((c.status, c.reason), (false, REASON_LAST_RUN_FAILED));
        assert_eq!(c.message, "last run failed: the cache has no registry pods");
        // The spec being wrong says more than the last run.
        let c = ready(Health::InvalidSpec("x"), Some(&failed));
        assert_eq!(c.reason, REASON_INVALID_SPEC);
    }

    #[test]
    fn status_times_are_whole_seconds() {
        assert_eq!(
            time(ts("2026-01-01T03:00:00.987Z")),
            Time(ts("2026-01-01T03:00:00Z"))
        );
        let old = PrunePolicyStatus::default();
        let health = Health::Ok {
            suspend: false,
            next: Some(ts("2026-01-02T03:00:00Z")),
        };
        let a = with_health(&old, health, Some(3), ts("2026-01-01T04:00:00.5Z"));
        let b = with_health(&a, health, Some(3), ts("2026-01-01T04:10:00Z"));
        assert_eq!(a, b, "nothing changed, nothing to write");
        assert!(ready_changed(&old, &a));
        assert!(!ready_changed(&a, &b));
        assert_eq!(a.observed_generation, Some(3));
        assert_eq!(a.next_schedule_time, Some(Time(ts("2026-01-02T03:00:00Z"))));
    }
}
