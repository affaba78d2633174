//! The status of an ImageCache from what one reconcile observed: the StatefulSet as applied,
//! the client Service as applied, the registry pods and what each ready pod's admin API answered.
//! Pure: the reconciler gathers the observations and writes the result.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{CacheStatus, Quantity, human_size};
use crate::crd::{ImageCache, ImageCacheStatus, LastPrune, PodSummary, ServiceType};
use crate::operator::conditions::{self, Cond, DEGRADED, PROGRESSING, READY};
use crate::operator::desired::{self, CLIENT_SERVICE_PORT, DEFAULT_STORAGE_SIZE};
use crate::operator::error::OperatorError;
use crate::operator::pods::RegistryPod;

/// Requeue while the cache rolls out or is not ready.
pub const REQUEUE_BUSY: Duration = Duration::from_secs(15);
/// Requeue when steady: keeps the image counts fresh.
pub const REQUEUE_STEADY: Duration = Duration::from_secs(60);

pub const REASON_SERVING: &str = "Serving";
pub const REASON_NO_READY_PODS: &str = "NoReadyPods";
pub const REASON_POD_UNREACHABLE: &str = "PodUnreachable";
pub const REASON_ROLLING_OUT: &str = "RollingOut";
pub const REASON_ROLLED_OUT: &str = "RolledOut";
pub const REASON_HEALTHY: &str = "Healthy";

/// One registry pod and, when it is ready, what its admin API answered (`None`: not asked).
#[derive(Clone, Debug)]
pub struct PodObservation {
    pub pod: RegistryPod,
    pub answer: Option<Result<CacheStatus, String>>,
}

/// What a successful reconcile saw.
#[derive(Clone, Debug, Default)]
pub struct Observation<'a> {
    /// The StatefulSet as the API server returned it from the apply (with its status).
    pub statefulset: Option<&'a StatefulSet>,
    /// The client Service as applied (its allocated node port, if any).
    pub client_service: Option<&'a Service>,
    pub pods: &'a [PodObservation],
}

/// The status after a successful reconcile. Conditions keep their transition times from the
/// ImageCache's current status.
pub fn status(ic: &ImageCache, obs: &Observation<'_>, now: Time) -> ImageCacheStatus {
    let generation = ic.metadata.generation;
    let replicas = ic.spec.replicas;
    let ready_replicas = obs
        .statefulset
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let answers: Vec<&CacheStatus> = obs
        .pods
        .iter()
        .filter_map(|p| p.answer.as_ref()?.as_ref().ok())
        .collect();
    let bytes_used = answers.iter().map(|a| a.bytes).max().unwrap_or(0);
    let capacity_bytes = answers
        .iter()
        .filter_map(|a| a.capacity_bytes)
        .max()
        .or_else(|| spec_capacity(ic));
    let last_prune = answers
        .iter()
        .filter_map(|a| a.last_prune.as_ref())
        .max_by_key(|p| p.started)
        .map(|p| LastPrune {
            time: whole_seconds(p.started),
            trigger: Some(p.trigger.clone()),
            dry_run: p.dry_run,
            manifests: to_i64(p.manifests),
            bytes: to_i64(p.bytes),
        });
    let pods = obs
        .pods
        .iter()
        .map(|p| {
            let answer = p.answer.as_ref().and_then(|a| a.as_ref().ok());
            PodSummary {
                name: p.pod.name.clone(),
                ready: p.pod.ready,
                images: answer.map_or(0, |a| to_i64(a.manifests)),
                bytes: answer.map_or(0, |a| to_i64(a.bytes)),
            }
        })
        .collect();

    let mut conds = previous_conditions(ic);
    conditions::set(&mut conds, ready(obs, replicas), generation, now.clone());
    conditions::set(
        &mut conds,
        progressing(obs.statefulset, replicas),
        generation,
        now.clone(),
    );
    conditions::set(&mut conds, degraded(obs), generation, now);

    ImageCacheStatus {
        conditions: conds,
        observed_generation: generation,
        ready_replicas,
        replicas,
        endpoint: endpoint(ic, obs.client_service),
        images: answers
            .iter()
            .map(|a| to_i64(a.manifests))
            .max()
            .unwrap_or(0),
        blobs: answers.iter().map(|a| to_i64(a.blobs)).max().unwrap_or(0),
        bytes_used: to_i64(bytes_used),
        size: Some(human_size(bytes_used)),
        capacity_bytes: capacity_bytes.map(to_i64),
        pods,
        last_prune,
    }
}

/// The status after a failed reconcile: the current status with `Degraded` set to the failure.
/// Everything else is kept (the whole status is applied, so nothing the operator wrote before
/// is dropped by server-side apply).
pub fn failed(ic: &ImageCache, err: &OperatorError, now: Time) -> ImageCacheStatus {
    let mut status = ic.status.clone().unwrap_or_default();
    if status.replicas == 0 {
        status.replicas = ic.spec.replicas;
    }
    conditions::set(
        &mut status.conditions,
        Cond::new(DEGRADED, true, err.reason(), err.to_string()),
        ic.metadata.generation,
        now,
    );
    status
}

/// Where clients pull from. ClusterIP: `<service>.<namespace>.svc:5000`. NodePort:
/// `<node-ip>:<nodePort>` (any node's address; `<node-ip>` is a placeholder, as the Service
/// answers on every node), or the in-cluster name until the node port is known.
pub fn endpoint(ic: &ImageCache, client_service: Option<&Service>) -> Option<String> {
    let name = desired::statefulset_name(ic).ok()?;
    let namespace = ic.metadata.namespace.as_deref()?;
    let service = ic.spec.service.clone().unwrap_or_default();
    if service.type_ == ServiceType::NodePort {
        let node_port = client_service
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find_map(|p| p.node_port))
            .or(service.node_port);
        if let Some(port) = node_port {
            return Some(format!("<node-ip>:{port}"));
        }
    }
    Some(format!("{name}.{namespace}.svc:{CLIENT_SERVICE_PORT}"))
}

/// How soon to look again: soon while rolling out or not ready, else at the steady pace.
pub fn requeue_after(status: &ImageCacheStatus) -> Duration {
    let busy = conditions::is_true(&status.conditions, PROGRESSING)
        || !conditions::is_true(&status.conditions, READY);
    if busy { REQUEUE_BUSY } else { REQUEUE_STEADY }
}

fn previous_conditions(ic: &ImageCache) -> Vec<Condition> {
    ic.status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}

/// `Ready`: at least one ready pod answers its admin API.
fn ready(obs: &Observation<'_>, replicas: i32) -> Cond<'static> {
    let ready: Vec<&PodObservation> = obs.pods.iter().filter(|p| p.pod.ready).collect();
    let serving = ready
        .iter()
        .filter(|p| matches!(p.answer, Some(Ok(_))))
        .count();
    if serving > 0 {
        Cond::new(
            READY,
            true,
            REASON_SERVING,
            format!("{serving}/{replicas} registry pods serving"),
        )
    } else if ready.is_empty() {
        Cond::new(
            READY,
            false,
            REASON_NO_READY_PODS,
            format!("0/{replicas} registry pods ready"),
        )
    } else {
        Cond::new(
            READY,
            false,
            REASON_POD_UNREACHABLE,
            format!(
                "{} registry pods ready but none answers its admin API",
                ready.len()
            ),
        )
    }
}

/// `Progressing`: the StatefulSet has not yet rolled out the current spec to every replica.
fn progressing(sts: Option<&StatefulSet>, replicas: i32) -> Cond<'static> {
    let rolling = |message: String| Cond::new(PROGRESSING, true, REASON_ROLLING_OUT, message);
    let Some(sts) = sts else {
        return rolling("the StatefulSet is not there yet".to_owned());
    };
    let status = sts.status.clone().unwrap_or_default();
    let generation = sts.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return rolling(format!(
            "the StatefulSet controller has not seen generation {generation} yet"
        ));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    if updated < replicas {
        return rolling(format!("{updated}/{replicas} registry pods updated"));
    }
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < replicas {
        return rolling(format!("{ready}/{replicas} registry pods ready"));
    }
    Cond::new(
        PROGRESSING,
        false,
        REASON_ROLLED_OUT,
        format!("{replicas}/{replicas} registry pods updated and ready"),
    )
}

/// `Degraded`: a ready pod's admin API fails.
fn degraded(obs: &Observation<'_>) -> Cond<'static> {
    let failing: Vec<String> = obs
        .pods
        .iter()
        .filter_map(|p| match &p.answer {
            Some(Err(e)) => Some(format!("{}: {e}", p.pod.name)),
            _ => None,
        })
        .collect();
    if failing.is_empty() {
        Cond::new(
            DEGRADED,
            false,
            REASON_HEALTHY,
            "every ready registry pod answers its admin API",
        )
    } else {
        Cond::new(
            DEGRADED,
            true,
            REASON_POD_UNREACHABLE,
            format!("admin API failing on {}", failing.join("; ")),
        )
    }
}

/// The volume size the spec asks for (no pod has told its file system's size yet); none for an
/// emptyDir, which has no fixed size.
fn spec_capacity(ic: &ImageCache) -> Option<u64> {
    let storage = ic.spec.storage.clone().unwrap_or_default();
    if storage.empty_dir {
        return None;
    }
    let size = storage
        .size
        .map_or_else(|| DEFAULT_STORAGE_SIZE.to_owned(), |q| q.0);
    match Quantity::parse("storage.size", &size) {
        Ok(Quantity::Bytes(b)) => Some(b),
        _ => None,
    }
}

/// `t` without its fraction: what a status time becomes once written (Kubernetes `Time` has
/// second precision), so an unchanged status compares equal to the one read back.
pub fn whole_seconds(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
