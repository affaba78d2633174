//! The CachedImage controller: it only keeps the `imagecache.io/prune` finalizer. On deletion it
//! prunes the digest from every ready registry pod of the cache, then lets the object go.
//!
//! - The ImageCache is gone, being deleted, or replaced by a new one of the same name: the
//!   object is let go at once (there is nothing of its cache left to prune).
//! - A pod fails: a `Pruned=False` condition is written to the object's status and the error
//!   returned; the controller retries with backoff and the object stays until every ready pod
//!   has pruned the digest. A pod that is not ready is skipped: if it still holds the image when
//!   it comes back, the sync creates the CachedImage again.
//!
//! The finalizer list is changed only by kube's finalizer helper (JSON patches), never by the
//! sync's server-side applies, so the two never fight over it.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::FINALIZER;
use crate::api::PruneRequest;
use crate::crd::{CachedImage, ImageCache};
use crate::operator::conditions::{self, Cond};
use crate::operator::context::{Context, object_key, requeue_after_failure, scoped_api};
use crate::operator::error::OperatorError;
use crate::operator::metrics::Controller as Ctl;
use crate::operator::pods;
use crate::operator::report;

/// The condition saying whether the deletion's prune went through.
pub const PRUNED: &str = "Pruned";

/// Ensures the finalizer; on deletion prunes the digest and releases the object.
pub async fn reconcile(obj: Arc<CachedImage>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let started = Instant::now();
    let result = reconcile_inner(obj.clone(), &ctx).await;
    ctx.metrics
        .reconciled(Ctl::cachedimage, started, result.as_ref().err());
    if result.is_ok() {
        ctx.reset_backoff(&object_key(&*obj));
    }
    result
}

async fn reconcile_inner(obj: Arc<CachedImage>, ctx: &Context) -> Result<Action, OperatorError> {
    let key = object_key(&*obj);
    let ns = obj
        .namespace()
        .ok_or(OperatorError::MissingField("namespace"))?;
    let api: Api<CachedImage> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer::finalizer(&api, FINALIZER, obj, |event| async move {
        match event {
            Event::Apply(_) => Ok(Action::await_change()),
            Event::Cleanup(obj) => cleanup(&obj, ctx).await,
        }
    })
    .await;
    match result {
        Ok(action) => Ok(action),
        // The finalizer patch tests the finalizer list it read; 422 means the object changed
        // since (the watch has not caught up with a finalizer just added): read again soon,
        // it is not a failure.
        Err(
            finalizer::Error::AddFinalizer(kube::Error::Api(s))
            | finalizer::Error::RemoveFinalizer(kube::Error::Api(s)),
        ) if s.code == 422 => {
            tracing::debug!(cachedimage = %key, "finalizer list changed since it was read; again");
            Ok(Action::requeue(STALE_RETRY))
        }
        Err(finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e)) => Err(e),
        Err(finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e)) => {
            Err(e.into())
        }
        Err(other) => Err(other.into()),
    }
}

/// How soon a reconcile that read a stale finalizer list runs again.
const STALE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Prunes the digest from every ready pod of the cache; an error keeps the finalizer and is
/// recorded in the object's `Pruned` condition (best effort).
async fn cleanup(obj: &CachedImage, ctx: &Context) -> Result<Action, OperatorError> {
    let result = prune_everywhere(obj, ctx).await;
    if let Err(err) = &result
        && let Err(e) = record_failure(obj, ctx, err).await
    {
        tracing::warn!(cachedimage = %obj.name_any(), error = %e, "cannot record the failed prune");
    }
    result
}

async fn prune_everywhere(obj: &CachedImage, ctx: &Context) -> Result<Action, OperatorError> {
    let ns = obj
        .namespace()
        .ok_or(OperatorError::MissingField("namespace"))?;
    let caches: Api<ImageCache> = Api::namespaced(ctx.client.clone(), &ns);
    let cache = &obj.spec.cache_ref.name;
    let Some(ic) = caches.get_opt(cache).await? else {
        tracing::info!(cachedimage = %obj.name_any(), %cache, "cache gone, releasing");
        return Ok(Action::await_change());
    };
    if !same_cache(obj, &ic) {
        tracing::info!(cachedimage = %obj.name_any(), %cache, "cache going or replaced, releasing");
        return Ok(Action::await_change());
    }

    let request = PruneRequest::delete(vec![obj.spec.digest.clone()]);
    // Every ready pod is asked even after a failure, so a retry finds less to do.
    let mut failed: Vec<(String, String)> = Vec::new();
    for pod in pods::list(&ctx.client, &ic).await? {
        let Some(target) = pod.target else { continue };
        match ctx.registry.prune(&target, &request).await {
            Ok(report) => match report.refused {
                Some(why) => failed.push((pod.name, format!("prune refused: {why}"))),
                None => tracing::info!(
                    cachedimage = %obj.name_any(), pod = %pod.name,
                    manifests = report.totals.manifests, bytes = report.totals.bytes,
                    "pruned"
                ),
            },
            Err(e) => failed.push((pod.name, e.to_string())),
        }
    }
    if failed.is_empty() {
        return Ok(Action::await_change());
    }
    let (pods, messages): (Vec<String>, Vec<String>) = failed.into_iter().unzip();
    Err(OperatorError::Registry {
        pod: pods.join(", "),
        message: messages.join("; "),
    })
}

/// Whether the object belongs to this ImageCache (its controller owner, when it names one),
/// and the cache is not being deleted.
fn same_cache(obj: &CachedImage, ic: &ImageCache) -> bool {
    if ic.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let owner = obj
        .owner_references()
        .iter()
        .find(|o| o.kind == "ImageCache" && o.controller == Some(true));
    match (owner, ic.metadata.uid.as_deref()) {
        (Some(o), Some(uid)) => o.uid == uid,
        _ => true,
    }
}

/// Writes `Pruned=False` with the error to the object's status (server-side apply).
async fn record_failure(
    obj: &CachedImage,
    ctx: &Context,
    err: &OperatorError,
) -> Result<(), OperatorError> {
    let mut status = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    conditions::set(
        &mut status.conditions,
        Cond::new(PRUNED, false, err.reason(), err.to_string()),
        generation,
        Time(ctx.now()),
    );
    status.observed_generation = generation;
    report::apply_status(ctx, obj, &status).await
}

/// Requeues after the object's backoff.
pub fn error_policy(obj: Arc<CachedImage>, err: &OperatorError, ctx: Arc<Context>) -> Action {
    requeue_after_failure(&*obj, err, &ctx)
}

/// Runs the CachedImage controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let api: Api<CachedImage> = scoped_api(&ctx.client, namespace.as_deref());
    // Spec changes reconcile too; with the finalizer in place those make no API call.
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "CachedImage controller");
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
