//! The PrunePolicy controller (design sections 3 and 6): on the policy's cron schedule, on a
//! missed schedule after a restart, or when asked through the `imagecache.io/run-now`
//! annotation, it computes the images the cluster uses and runs the policy's prune request on
//! every registry pod of the cache, then records the run in the status and an event.
//!
//! - [`due`]: whether a run is due now and when the next one is (pure).
//! - [`outcome`]: the run record, history, `Ready` condition and event text (pure).
//! - here: the IO around them, [`reconcile`], [`error_policy`] and the [`run`] loop.

pub mod due;
pub mod outcome;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::conditions::{self, Cond, READY};
use super::context::{Context, object_key, requeue_after_failure, scoped_api};
use super::error::OperatorError;
use super::inuse;
use super::metrics::{Controller as ControllerLabel, PruneLabels, PruneResult};
use super::pods::{self, RegistryPod};
use super::report;
use crate::api::{PruneRequest, RequestError};
use crate::crd::{ImageCache, PrunePolicy, PrunePolicySpec, PrunePolicyStatus};
use crate::schedule::{Schedule, ScheduleError};
use due::{Due, RUN_NOW, Reason};
use outcome::{Health, PodResult};

/// How soon a policy whose ImageCache is missing looks again.
pub const CACHE_RETRY: Duration = Duration::from_secs(60);

/// What the CRD schema cannot catch in a PrunePolicy spec: a bad schedule or time zone, a bad
/// prune request, or both. The message names every bad field; the first cause is the source.
#[derive(Debug)]
pub struct InvalidPolicy {
    schedule: Option<ScheduleError>,
    request: Option<RequestError>,
}

impl std::fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(e) = &self.schedule {
            match e {
                ScheduleError::TimeZone(_) => write!(f, "spec.timeZone: {e}")?,
                _ => write!(f, "spec.schedule: {e}")?,
            }
        }
        if let Some(e) = &self.request {
            if self.schedule.is_some() {
                f.write_str("; ")?;
            }
            let field = match e {
                RequestError::Regex { field, .. } | RequestError::Quantity { field, .. } => field,
                RequestError::Label(_) => "labels",
                RequestError::Count(_) => "count",
                RequestError::Ratio(_) => "maxDeletionRatio",
            };
            write!(f, "spec.request.{field}: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidPolicy {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match (&self.schedule, &self.request) {
            (Some(e), _) => Some(e),
            (None, Some(e)) => Some(e),
            (None, None) => None,
        }
    }
}

/// Checks what the CRD schema cannot: the cron expression, the time zone and the prune
/// request (regexes, label selectors, quantities).
pub fn validate(spec: &PrunePolicySpec) -> Result<Schedule, InvalidPolicy> {
    let schedule = Schedule::cron(&spec.schedule, spec.time_zone.as_deref());
    let request = spec.request.compile();
    match (schedule, request) {
        (Ok(s), Ok(_)) => Ok(s),
        (schedule, request) => Err(InvalidPolicy {
            schedule: schedule.err(),
            request: request.err(),
        }),
    }
}

/// The request sent to every pod: the spec's, dry when the policy or the request says so, with
/// the cluster's in-use images added to those the spec lists.
pub fn prune_request(spec: &PrunePolicySpec, in_use: Vec<String>) -> PruneRequest {
    let mut request = spec.request.clone();
    request.dry_run = spec.dry_run || request.dry_run;
    request.in_use.extend(in_use);
    request.in_use.sort();
    request.in_use.dedup();
    request
}

/// What the schedule decision reads from a policy.
fn inputs(pp: &PrunePolicy) -> due::Inputs<'_> {
    let status = pp.status.as_ref();
    due::Inputs {
        suspend: pp.spec.suspend,
        last_schedule_time: status
            .and_then(|s| s.last_schedule_time.as_ref())
            .map(|t| t.0),
        run_now: pp.annotations().get(RUN_NOW).map(String::as_str),
        last_manual_run: status.and_then(|s| s.last_manual_run.as_deref()),
        created: pp.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }
}

fn plan(pp: &PrunePolicy, now: Timestamp) -> Result<Due, String> {
    let schedule = validate(&pp.spec).map_err(|e| e.to_string())?;
    Ok(due::decide(&schedule, &inputs(pp), now))
}

/// Reconciles one PrunePolicy: validates it, finds its cache, runs it when due, and requeues
/// for the next scheduled time (at most [`due::MAX_REQUEUE`] away).
pub async fn reconcile(pp: Arc<PrunePolicy>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let started = Instant::now();
    let key = object_key(&*pp);
    let result = reconcile_policy(&pp, &ctx).await;
    match &result {
        Ok(_) => ctx.reset_backoff(&key),
        Err(e) => record_error(&pp, &ctx, e).await,
    }
    ctx.metrics
        .reconciled(ControllerLabel::prunepolicy, started, result.as_ref().err());
    result
}

/// Requeues a failed reconcile with per-object backoff.
pub fn error_policy(pp: Arc<PrunePolicy>, err: &OperatorError, ctx: Arc<Context>) -> Action {
    requeue_after_failure(&*pp, err, &ctx)
}

/// Runs the PrunePolicy controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let api: Api<PrunePolicy> = scoped_api(&ctx.client, namespace.as_deref());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "PrunePolicy controller");
            }
        })
        .await;
}

async fn reconcile_policy(cached: &PrunePolicy, ctx: &Context) -> Result<Action, OperatorError> {
    let ns = cached
        .namespace()
        .ok_or(OperatorError::MissingField("namespace"))?;
    let now = ctx.now();
    let mut planned = plan(cached, now);
    let fresh;
    let mut pp = cached;
    if matches!(&planned, Ok(d) if d.run.is_some()) {
        // The controller's cache may not have this policy's last status write yet (a run
        // just recorded); a run is only started on a fresh read.
        let policies: Api<PrunePolicy> = Api::namespaced(ctx.client.clone(), &ns);
        fresh = policies.get(&cached.name_any()).await?;
        pp = &fresh;
        planned = plan(pp, now);
    }
    let old = pp.status.clone().unwrap_or_default();
    let generation = pp.metadata.generation;
    let due = match planned {
        Ok(due) => due,
        Err(msg) => {
            let status = outcome::with_health(&old, Health::InvalidSpec(&msg), generation, now);
            update_status(ctx, pp, &old, &status).await?;
            if outcome::ready_changed(&old, &status) {
                publish(
                    ctx,
                    pp,
                    EventType::Warning,
                    outcome::REASON_INVALID_SPEC,
                    msg,
                )
                .await;
            }
            // Nothing changes until the spec does.
            return Ok(Action::await_change());
        }
    };
    let caches: Api<ImageCache> = Api::namespaced(ctx.client.clone(), &ns);
    let cache_name = &pp.spec.cache_ref.name;
    let Some(cache) = caches.get_opt(cache_name).await? else {
        let status = outcome::with_health(&old, Health::CacheNotFound(cache_name), generation, now);
        update_status(ctx, pp, &old, &status).await?;
        if outcome::ready_changed(&old, &status) {
            let note = format!("ImageCache {cache_name} not found in namespace {ns}");
            publish(
                ctx,
                pp,
                EventType::Warning,
                outcome::REASON_CACHE_NOT_FOUND,
                note,
            )
            .await;
        }
        return Ok(Action::requeue(CACHE_RETRY.min(due.requeue)));
    };
    match due.run {
        Some(reason) => run_prune(pp, ctx, &cache, &due, reason, now).await,
        None => {
            let health = Health::Ok {
                suspend: pp.spec.suspend,
                next: due.next,
            };
            let status = outcome::with_health(&old, health, generation, now);
            update_status(ctx, pp, &old, &status).await?;
            Ok(Action::requeue(due.requeue))
        }
    }
}

async fn prune_pod(ctx: &Context, pod: &RegistryPod, request: &PruneRequest) -> PodResult {
    let result = match &pod.target {
        Some(target) => ctx
            .registry
            .prune(target, request)
            .await
            .map_err(|e| e.to_string()),
        None => Err("pod not ready".to_owned()),
    };
    (pod.name.clone(), result)
}

async fn run_prune(
    pp: &PrunePolicy,
    ctx: &Context,
    cache: &ImageCache,
    due: &Due,
    reason: Reason,
    now: Timestamp,
) -> Result<Action, OperatorError> {
    let key = object_key(pp);
    let pods = pods::list(&ctx.client, cache).await?;
    // Without the whole in-use set a prune could remove a running image: a failed list
    // fails the reconcile before any pod is asked.
    let in_use = inuse::through_cache(
        inuse::compute(&ctx.client).await?,
        &inuse::cache_hosts(cache),
    );
    let request = prune_request(&pp.spec, in_use);
    tracing::info!(policy = %key, reason = reason.as_str(), pods = pods.len(),
        in_use = request.in_use.len(), dry_run = request.dry_run, "PrunePolicy run");
    let results = join_all(pods.iter().map(|p| prune_pod(ctx, p, &request))).await;
    let run = outcome::summarize(&results, request.dry_run, now, ctx.now());

    let old = pp.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.last_schedule_time = Some(outcome::time(now));
    if reason == Reason::Manual {
        status.last_manual_run = pp.annotations().get(RUN_NOW).cloned();
    }
    outcome::record(&mut status, run.clone());
    let health = Health::Ok {
        suspend: pp.spec.suspend,
        next: due.next,
    };
    let status = outcome::with_health(&status, health, pp.metadata.generation, now);
    update_status(ctx, pp, &old, &status).await?;

    let result = run.result.as_deref().unwrap_or_default();
    let (metric, event_type, event_reason) = match result {
        outcome::SUCCEEDED => (PruneResult::succeeded, EventType::Normal, "PruneSucceeded"),
        outcome::REFUSED => (PruneResult::refused, EventType::Warning, "PruneRefused"),
        _ => (PruneResult::failed, EventType::Warning, "PruneFailed"),
    };
    ctx.metrics
        .prune_runs
        .get_or_create(&PruneLabels {
            result: metric,
            dry_run: run.dry_run,
        })
        .inc();
    let (manifests, bytes) = outcome::removed(&run);
    ctx.metrics.pruned_manifests.inc_by(manifests);
    ctx.metrics.pruned_bytes.inc_by(bytes);
    tracing::info!(policy = %key, result, message = run.message.as_deref().unwrap_or_default(),
        "PrunePolicy run finished");
    publish(ctx, pp, event_type, event_reason, outcome::event_note(&run)).await;
    Ok(Action::requeue(due.requeue))
}

/// Applies `status` to the status subresource unless it equals `old` (a reconcile that
/// changes nothing writes nothing, so it does not wake the watch either).
async fn update_status(
    ctx: &Context,
    pp: &PrunePolicy,
    old: &PrunePolicyStatus,
    status: &PrunePolicyStatus,
) -> Result<(), OperatorError> {
    if status == old {
        return Ok(());
    }
    report::apply_status(ctx, pp, status).await
}

/// An Event on the policy (its runs are the `Prune` action).
async fn publish(ctx: &Context, pp: &PrunePolicy, type_: EventType, reason: &str, note: String) {
    report::publish(ctx, pp, report::event(type_, reason, "Prune", note)).await;
}

/// Best effort: shows a failed reconcile in the `Ready` condition. The status is read afresh
/// so a stale cached copy never rolls back a run's record.
async fn record_error(pp: &PrunePolicy, ctx: &Context, err: &OperatorError) {
    let Some(ns) = pp.namespace() else { return };
    let policies: Api<PrunePolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let fresh = match policies.get(&pp.name_any()).await {
        Ok(fresh) => fresh,
        Err(e) => {
            tracing::debug!(policy = %object_key(pp), error = %e, "cannot record the error in the status");
            return;
        }
    };
    let old = fresh.status.clone().unwrap_or_default();
    let mut status = old.clone();
    conditions::set(
        &mut status.conditions,
        Cond::new(READY, false, err.reason(), err.to_string()),
        fresh.metadata.generation,
        outcome::time(ctx.now()),
    );
    if let Err(e) = update_status(ctx, &fresh, &old, &status).await {
        tracing::debug!(policy = %object_key(pp), error = %e, "cannot record the error in the status");
    }
}
