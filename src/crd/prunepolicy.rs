//! `PrunePolicy`: a scheduled prune of one ImageCache, with the prune request of design
//! section 3 ([`PruneRequest`]) and a bounded record of its runs.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CRON_PATTERN, CacheRef};
use crate::api::PruneRequest;

/// Most runs kept in `status.history`.
pub const HISTORY_LIMIT: usize = 10;
/// Most manifests listed in `status.lastRun.items`.
pub const ITEMS_LIMIT: usize = 100;

/// Which cache to prune, when, and what to prune.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "imagecache.io",
    version = "v1alpha1",
    kind = "PrunePolicy",
    plural = "prunepolicies",
    namespaced,
    shortname = "pp",
    category = "imagecache-all", // super::CATEGORY
    status = "PrunePolicyStatus",
    derive = "PartialEq",
    doc = "A scheduled prune of an ImageCache, run by the imagecache operator on every registry pod.",
    printcolumn(
        name = "CACHE",
        type_ = "string",
        json_path = ".spec.cacheRef.name",
        description = "The ImageCache pruned"
    ),
    printcolumn(
        name = "SCHEDULE",
        type_ = "string",
        json_path = ".spec.schedule",
        description = "Cron schedule"
    ),
    printcolumn(
        name = "DRY-RUN",
        type_ = "boolean",
        json_path = ".spec.dryRun",
        description = "Report only, delete nothing"
    ),
    printcolumn(
        name = "LAST RUN",
        type_ = "date",
        json_path = ".status.lastScheduleTime",
        description = "When the last run started"
    ),
    printcolumn(
        name = "PRUNED",
        type_ = "integer",
        json_path = ".status.lastRun.totals.manifests",
        description = "Manifests pruned by the last run"
    ),
    printcolumn(
        name = "RECLAIMED",
        type_ = "string",
        json_path = ".status.lastRun.totals.reclaimed",
        description = "Space reclaimed by the last run"
    ),
    // A string, not a date: kubectl prints a date column as an age, and an age to come as
    // `<invalid>`.
    printcolumn(
        name = "NEXT",
        type_ = "string",
        json_path = ".status.nextScheduleTime",
        description = "When the next run starts (UTC)"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PrunePolicySpec {
    /// The ImageCache to prune (same namespace; cannot be changed).
    #[x_kube(validation = Rule::new("self == oldSelf").message("cacheRef is immutable"))]
    pub cache_ref: CacheRef,
    /// Cron schedule, 5 fields: minute hour day-of-month month day-of-week.
    #[schemars(length(min = 9, max = 128), regex(pattern = CRON_PATTERN))]
    #[x_kube(validation = Rule::new("self.matches('^ *[^ ]+( +[^ ]+){4} *$')").message("schedule must have exactly 5 fields: minute hour day-of-month month day-of-week"))]
    #[x_kube(validation = Rule::new(super::cron_rule()).message("schedule has a field out of range or malformed: minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT; each field *, a value, a range a-b, a step */n or a-b/n, or a list of these"))]
    pub schedule: String,
    /// IANA time zone of the schedule (`Europe/Paris`); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")
    )]
    pub time_zone: Option<String>,
    /// Skip scheduled runs while true (a manual run by annotation still goes).
    // Always written, so the apiserver defaults it and `kubectl get` shows `false`.
    #[serde(default)]
    pub suspend: bool,
    /// Report what would be pruned without deleting anything.
    #[serde(default)]
    pub dry_run: bool,
    /// What to prune: selectors, keep rules, protections, capacity and limits. `inUse` is
    /// computed by the operator from the cluster and added to what is given here.
    #[serde(default)]
    pub request: PruneRequest,
}

/// What the operator observed of the policy's runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrunePolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the last run started.
    pub last_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the next run is due.
    pub next_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<PruneRun>,
    /// Earlier runs, newest first, without their items (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub history: Vec<PruneRun>,
    /// The value of the `imagecache.io/run-now` annotation the last manual run answered; a
    /// different value asks for another run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_manual_run: Option<String>,
}

/// One run of the policy over every registry pod of the cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneRun {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the run started.
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the run finished on every pod.
    pub completion_time: Option<Time>,
    #[serde(default)]
    pub dry_run: bool,
    /// `Succeeded`, `Failed` (on some pod) or `Refused` (a limit stopped it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub totals: PruneRunTotals,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_pod: Vec<PruneRunPod>,
    /// Pruned (or, on a dry run, prunable) manifests, at most 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub items: Vec<PruneRunItem>,
    /// Whether `items` was cut to its bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub items_truncated: bool,
}

/// Counts of a run, for one pod or all of them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneRunTotals {
    #[serde(default)]
    pub manifests: i64,
    #[serde(default)]
    pub blobs: i64,
    #[serde(default)]
    pub bytes: i64,
    /// `bytes` for people (`1.2GiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaimed: Option<String>,
    /// Manifests kept by a keep rule.
    #[serde(default)]
    pub kept: i64,
    /// Manifests a protection vetoed, by reason (`minAge`, `pinned`, `inUse`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protected: BTreeMap<String, i64>,
}

/// A run on one registry pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneRunPod {
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub totals: PruneRunTotals,
}

/// One manifest of a run's report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneRunItem {
    pub reference: String,
    pub digest: String,
    /// `pruned`, `kept`, `protected`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
