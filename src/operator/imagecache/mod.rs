//! The ImageCache controller (design section 6): applies a cache's children from
//! [`super::desired`] with server-side apply, asks each ready registry pod for its cache status,
//! and writes the ImageCache status ([`status`]).
//!
//! One reconcile, in order: read the admin token Secret (its token is generated once and kept),
//! apply the ConfigMap, the Secret, the headless and client Services, the StatefulSet and the
//! PodDisruptionBudget, then the node-config DaemonSet when node mirroring is on (deleted when
//! off), list the registry pods, ask the ready ones `GET /admin/v1/status`, and apply the status
//! when it changed. Children carry the controller owner reference: garbage collection removes
//! them with the ImageCache, so there is no finalizer.
//!
//! Events mark transitions only: children created, node mirroring turned on or off, `Ready`
//! gained or lost, `Degraded` raised or cleared (`Recovered`), a rollout starting
//! (`RollingOut`) and ending (`RolledOut`), a reconcile starting to fail.
//!
//! Secrets are read by name, never listed or watched (the operator's RBAC has no list or watch
//! on Secrets): a deleted admin token Secret comes back at the next periodic reconcile.

pub mod status;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use self::status::{Observation, PodObservation, whole_seconds};
use super::conditions::{self, DEGRADED, PROGRESSING, READY};
use super::context::{Context, MANAGER, object_key, requeue_after_failure, scoped_api};
use super::desired::{self, COMPONENT, MANAGED_BY};
use super::error::OperatorError;
use super::metrics::Controller as ControllerLabel;
use super::pods::{self, RegistryPod};
use super::report;
use crate::crd::{ImageCache, ImageCacheStatus};

/// Requeue while the client Service waits for its ClusterIP (the DaemonSet needs it).
pub const REQUEUE_NODE_CONFIG: Duration = Duration::from_secs(5);

/// Label selector of everything the operator creates (the owned-object watches).
const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=imagecache-operator";

/// What happened to the node-config DaemonSet this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeConfig {
    /// Node mirroring off and no DaemonSet of ours.
    Off,
    /// Node mirroring off: our DaemonSet was deleted.
    Deleted,
    /// Applied; `created` when it did not exist before.
    Applied { created: bool, mirror_url: String },
    /// Node mirroring on but the client Service has no address yet.
    Waiting,
}

/// Reconciles one ImageCache. On failure the error is recorded in the `Degraded` condition
/// (best effort) before it is returned.
pub async fn reconcile(ic: Arc<ImageCache>, ctx: Arc<Context>) -> Result<Action, OperatorError> {
    let started = Instant::now();
    let result = reconcile_inner(&ic, &ctx).await;
    match &result {
        Ok(_) => ctx.reset_backoff(&object_key(&*ic)),
        Err(err) => report_failure(&ic, &ctx, err).await,
    }
    ctx.metrics
        .reconciled(ControllerLabel::imagecache, started, result.as_ref().err());
    result
}

/// Requeues a failed ImageCache after the object's backoff.
pub fn error_policy(ic: Arc<ImageCache>, err: &OperatorError, ctx: Arc<Context>) -> Action {
    requeue_after_failure(&*ic, err, &ctx)
}

/// Runs the ImageCache controller until `shutdown`: ImageCaches in `namespace` (all when
/// `None`), their owned children, and their registry pods (readiness changes refresh the status).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let owned = watcher::Config::default().labels(MANAGED_SELECTOR);
    let registry_pods = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/component={COMPONENT},{MANAGED_SELECTOR}"
    ));
    Controller::new(
        scoped_api::<ImageCache>(&client, ns),
        watcher::Config::default(),
    )
    .owns(scoped_api::<StatefulSet>(&client, ns), owned.clone())
    .owns(scoped_api::<Service>(&client, ns), owned.clone())
    .owns(scoped_api::<ConfigMap>(&client, ns), owned.clone())
    .owns(scoped_api::<DaemonSet>(&client, ns), owned)
    .watches(scoped_api::<Pod>(&client, ns), registry_pods, |pod| {
        cache_of_pod(&pod)
    })
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((obj, _)) => tracing::debug!(imagecache = %obj, "reconciled"),
            // Logged with its backoff by error_policy.
            Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
            // A child's event for a cache just deleted: nothing to do.
            Err(e @ kube::runtime::controller::Error::ObjectNotFound(..)) => {
                tracing::debug!(error = %e, "imagecache controller");
            }
            Err(e) => tracing::warn!(error = %e, "imagecache controller"),
        }
    })
    .await;
}

/// The ImageCache a registry pod belongs to: its instance label, when the pod is a registry
/// pod the operator manages.
pub fn cache_of_pod(pod: &Pod) -> Option<ObjectRef<ImageCache>> {
    let labels = pod.metadata.labels.as_ref()?;
    let is_ours = labels
        .get("app.kubernetes.io/component")
        .map(String::as_str)
        == Some(COMPONENT)
        && labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some(MANAGED_BY);
    if !is_ours {
        return None;
    }
    let instance = labels.get("app.kubernetes.io/instance")?;
    Some(ObjectRef::new(instance).within(pod.metadata.namespace.as_deref()?))
}

async fn reconcile_inner(ic: &ImageCache, ctx: &Context) -> Result<Action, OperatorError> {
    // Being deleted (in the foreground, as `operator teardown` does): the garbage collector is
    // removing the children; applying them again would only recreate what it removes.
    if ic.metadata.deletion_timestamp.is_some() {
        tracing::debug!(imagecache = %object_key(ic), "being deleted; nothing to apply");
        return Ok(Action::await_change());
    }
    let ns = ic
        .metadata
        .namespace
        .clone()
        .ok_or(OperatorError::MissingField("metadata.namespace"))?;
    let client = &ctx.client;

    // The admin token: generated once, then reused from the Secret on every reconcile.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let existing = secrets
        .get_opt(&desired::admin_token_secret_name(ic)?)
        .await?;
    let children_created = existing.is_none();
    let token = existing
        .as_ref()
        .and_then(pods::token_of)
        .unwrap_or_else(generate_token);

    let config_hash = desired::config_hash(&desired::config_yaml(ic)?);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        &desired::config_map(ic)?,
    )
    .await?;
    apply(&secrets, &desired::admin_token_secret(ic, &token)?).await?;
    apply(&services, &desired::headless_service(ic)?).await?;
    let client_service = apply(&services, &desired::client_service(ic)?).await?;
    let statefulset = apply(
        &Api::<StatefulSet>::namespaced(client.clone(), &ns),
        &desired::statefulset(ic, &ctx.settings.registry_image, &config_hash)?,
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        &desired::pod_disruption_budget(ic)?,
    )
    .await?;
    let node_config = node_config(ic, ctx, &ns, &client_service).await?;

    let observations = observe(ctx, pods::list_with_token(client, ic, Some(&token)).await?).await;
    let new_status = status::status(
        ic,
        &Observation {
            statefulset: Some(&statefulset),
            client_service: Some(&client_service),
            pods: &observations,
        },
        whole_seconds(ctx.now()),
    );
    if ic.status.as_ref() != Some(&new_status) {
        report::apply_status(ctx, ic, &new_status).await?;
    }
    for event in transition_events(ic, &new_status, children_created, &node_config) {
        report::publish(ctx, ic, event).await;
    }

    let mut requeue = status::requeue_after(&new_status);
    if node_config == NodeConfig::Waiting {
        requeue = requeue.min(REQUEUE_NODE_CONFIG);
    }
    Ok(Action::requeue(requeue))
}

/// Applies the node-config DaemonSet when node mirroring is on, deletes ours when it is off.
async fn node_config(
    ic: &ImageCache,
    ctx: &Context,
    ns: &str,
    client_service: &Service,
) -> Result<NodeConfig, OperatorError> {
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), ns);
    let name = desired::node_config_name(ic)?;
    let existing = api.get_opt(&name).await?;
    let enabled = ic.spec.node_mirror.as_ref().is_some_and(|m| m.enabled);
    if !enabled {
        let Some(ds) = existing.filter(|ds| controlled_by(ds, ic)) else {
            return Ok(NodeConfig::Off);
        };
        match api
            .delete(&ds.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(NodeConfig::Deleted);
    }
    let Some(mirror_url) = desired::node_mirror_url(ic, client_service) else {
        tracing::info!(imagecache = %object_key(ic), "client Service has no address yet; node-config waits");
        return Ok(NodeConfig::Waiting);
    };
    let ds = desired::node_config_daemonset(ic, &ctx.settings.registry_image, &mirror_url)?;
    apply(&api, &ds).await?;
    Ok(NodeConfig::Applied {
        created: existing.is_none(),
        mirror_url,
    })
}

/// Whether `obj` is controlled by `ic` (same uid in a controller owner reference).
fn controlled_by<K: Resource>(obj: &K, ic: &ImageCache) -> bool {
    let Some(uid) = ic.metadata.uid.as_deref() else {
        return false;
    };
    obj.owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Asks every ready pod for its cache status, all at once.
async fn observe(ctx: &Context, pods: Vec<RegistryPod>) -> Vec<PodObservation> {
    let asks = pods.into_iter().map(|pod| async move {
        let answer = match &pod.target {
            Some(target) => Some(ctx.registry.status(target).await.map_err(|e| {
                tracing::warn!(pod = %pod.name, error = %e, "registry pod status failed");
                e.to_string()
            })),
            None => None,
        };
        PodObservation { pod, answer }
    });
    futures_util::future::join_all(asks).await
}

/// Server-side applies `obj` (force: the operator owns these fields) and returns the result.
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, OperatorError>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(OperatorError::MissingField("metadata.name"))?;
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// Records a failed reconcile in `Degraded` (best effort) and raises an event when the
/// failure is new (not already the reason `Degraded` shows).
async fn report_failure(ic: &ImageCache, ctx: &Context, err: &OperatorError) {
    let status = status::failed(ic, err, whole_seconds(ctx.now()));
    if let Err(e) = report::apply_status(ctx, ic, &status).await {
        tracing::warn!(imagecache = %object_key(ic), error = %e, "cannot record the failure in the status");
    }
    let previous = ic
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let already = conditions::get(previous, DEGRADED)
        .is_some_and(|c| c.status == "True" && c.reason == err.reason());
    if !already {
        report::publish(
            ctx,
            ic,
            report::event(
                EventType::Warning,
                err.reason(),
                "Reconcile",
                err.to_string(),
            ),
        )
        .await;
    }
}

/// The events of one successful reconcile: only what changed.
pub fn transition_events(
    before: &ImageCache,
    after: &ImageCacheStatus,
    children_created: bool,
    node_config: &NodeConfig,
) -> Vec<Event> {
    let mut events = Vec::new();
    if children_created {
        events.push(report::event(
            EventType::Normal,
            "Created",
            "Create",
            "created the registry StatefulSet, Services, ConfigMap, admin token Secret and PodDisruptionBudget",
        ));
    }
    match node_config {
        NodeConfig::Applied {
            created: true,
            mirror_url,
        } => events.push(report::event(
            EventType::Normal,
            "NodeMirrorEnabled",
            "Create",
            format!(
                "created DaemonSet {}: nodes pull {} through {mirror_url}",
                desired::node_config_name(before).unwrap_or_default(),
                desired::node_config_registries(before).join(", ")
            ),
        )),
        NodeConfig::Deleted => events.push(report::event(
            EventType::Normal,
            "NodeMirrorDisabled",
            "Delete",
            format!(
                "deleted DaemonSet {}",
                desired::node_config_name(before).unwrap_or_default()
            ),
        )),
        _ => {}
    }
    let previous = before
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let was_ready = conditions::is_true(previous, READY);
    if let Some(ready) = conditions::get(&after.conditions, READY) {
        let is_ready = ready.status == "True";
        if is_ready && !was_ready {
            events.push(report::event(
                EventType::Normal,
                "Ready",
                "Reconcile",
                ready.message.clone(),
            ));
        } else if !is_ready && was_ready {
            events.push(report::event(
                EventType::Warning,
                "NotReady",
                "Reconcile",
                format!("{}: {}", ready.reason, ready.message),
            ));
        }
    }
    if let Some(degraded) = conditions::get(&after.conditions, DEGRADED) {
        let was = conditions::get(previous, DEGRADED)
            .is_some_and(|c| c.status == "True" && c.reason == degraded.reason);
        if degraded.status == "True" && !was {
            events.push(report::event(
                EventType::Warning,
                "Degraded",
                "Reconcile",
                format!("{}: {}", degraded.reason, degraded.message),
            ));
        } else if degraded.status == "False" && conditions::is_true(previous, DEGRADED) {
            events.push(report::event(
                EventType::Normal,
                "Recovered",
                "Reconcile",
                degraded.message.clone(),
            ));
        }
    }
    // A rollout starting (a spec change, a scale) and ending; not the first one, which
    // `Created` already tells.
    if let (Some(progressing), Some(before)) = (
        conditions::get(&after.conditions, PROGRESSING),
        conditions::get(previous, PROGRESSING),
    ) {
        let (is, was) = (progressing.status == "True", before.status == "True");
        if is && !was {
            events.push(report::event(
                EventType::Normal,
                "RollingOut",
                "Reconcile",
                progressing.message.clone(),
            ));
        } else if !is && was {
            events.push(report::event(
                EventType::Normal,
                "RolledOut",
                "Reconcile",
                progressing.message.clone(),
            ));
        }
    }
    events
}

/// The token in an admin token Secret, if it holds a usable one.
/// A new admin token: 32 random bytes, hex.
fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests;
