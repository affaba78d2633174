//! The status of an ImageCache from observations, without an API server.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;

use super::*;
use crate::api::PruneSummary;
use crate::operator::pods::PodTarget;

fn t(s: &str) -> Time {
    Time(s.parse().unwrap())
}

fn cache(spec_yaml: &str) -> ImageCache {
    let mut ic = ImageCache::new("mirror", serde_saphyr::from_str(spec_yaml).unwrap());
    ic.metadata.namespace = Some("infra".to_owned());
    ic.metadata.uid = Some("uid-1".to_owned());
    ic.metadata.generation = Some(3);
    ic
}

fn sts(generation: i64, status: serde_json::Value) -> StatefulSet {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "mirror", "generation": generation},
        "spec": {"selector": {}, "template": {}},
        "status": status,
    }))
    .unwrap()
}

fn rolled_out(replicas: i32) -> StatefulSet {
    sts(
        5,
        serde_json::json!({"observedGeneration": 5, "replicas": replicas,
            "readyReplicas": replicas, "updatedReplicas": replicas}),
    )
}

fn pod(name: &str, ready: bool, answer: Option<Result<CacheStatus, String>>) -> PodObservation {
    PodObservation {
        pod: RegistryPod {
            name: name.to_owned(),
            ready,
            target: ready.then(|| PodTarget {
                pod: name.to_owned(),
                base_url: "http://10.0.0.1:8081".to_owned(),
                token: None,
            }),
        },
        answer,
    }
}

fn cache_status(manifests: u64, blobs: u64, bytes: u64) -> CacheStatus {
    CacheStatus {
        manifests,
        blobs,
        bytes,
        revision: 1,
        ..CacheStatus::default()
    }
}

fn prune(started: &str, manifests: u64) -> PruneSummary {
    PruneSummary {
        started: started.parse().unwrap(),
        trigger: "Api".to_owned(),
        dry_run: false,
        refused: None,
        manifests,
        blobs: 9,
        bytes: 4096,
    }
}

fn cond<'s>(s: &'s ImageCacheStatus, type_: &str) -> (&'s str, &'s str) {
    let c = conditions::get(&s.conditions, type_).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn two_pods_one_serving_one_starting() {
    let ic = cache("replicas: 2\nstorage: {size: 20Gi}");
    let mut a = cache_status(12, 40, 1610612736);
    a.capacity_bytes = Some(21474836480);
    a.last_prune = Some(prune("2026-01-01T00:00:00.750Z", 3));
    let pods = [
        pod("mirror-0", true, Some(Ok(a))),
        pod("mirror-1", false, None),
    ];
    let set = sts(
        5,
        serde_json::json!({"observedGeneration": 5, "replicas": 2,
            "readyReplicas": 1, "updatedReplicas": 2}),
    );
    let obs = Observation {
        statefulset: Some(&set),
        client_service: None,
        pods: &pods,
    };
    let s = status(&ic, &obs, t("2026-01-02T00:00:00Z"));
    assert_eq!(s.replicas, 2);
    assert_eq!(s.ready_replicas, 1);
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(s.endpoint.as_deref(), Some("mirror.infra.svc:5000"));
    assert_eq!((s.images, s.blobs, s.bytes_used), (12, 40, 1610612736));
    assert_eq!(s.size.as_deref(), Some("1.5GiB"));
    assert_eq!(s.capacity_bytes, Some(21474836480));
    assert_eq!(
        s.pods,
        [
            PodSummary {
                name: "mirror-0".into(),
                ready: true,
                images: 12,
                bytes: 1610612736
            },
            PodSummary {
                name: "mirror-1".into(),
                ready: false,
                images: 0,
                bytes: 0
            },
        ]
    );
    let last = s.last_prune.as_ref().unwrap();
    assert_eq!(last.time, t("2026-01-01T00:00:00Z"), "whole seconds");
    assert_eq!((last.manifests, last.bytes, last.dry_run), (3, 4096, false));
    assert_eq!(cond(&s, READY), ("True", "Serving"));
    assert_eq!(
        conditions::get(&s.conditions, READY).unwrap().message,
        "1/2 registry pods serving"
    );
    assert_eq!(cond(&s, PROGRESSING), ("True", "RollingOut"));
    assert_eq!(cond(&s, DEGRADED), ("False", "Healthy"));
    for c in &s.conditions {
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time, t("2026-01-02T00:00:00Z"));
    }
    assert_eq!(requeue_after(&s), REQUEUE_BUSY);
}

#[test]
fn largest_pod_wins_and_latest_prune_is_kept() {
    let ic = cache("replicas: 2");
    let mut a = cache_status(5, 50, 100);
    a.last_prune = Some(prune("2026-01-01T10:00:00Z", 1));
    let mut b = cache_status(7, 30, 90);
    b.last_prune = Some(prune("2026-01-01T12:00:00Z", 2));
    let pods = [pod("m-0", true, Some(Ok(a))), pod("m-1", true, Some(Ok(b)))];
    let set = rolled_out(2);
    let s = status(
        &ic,
        &Observation {
            statefulset: Some(&set),
            client_service: None,
            pods: &pods,
        },
        t("2026-01-02T00:00:00Z"),
    );
    assert_eq!((s.images, s.blobs, s.bytes_used), (7, 50, 100));
    assert_eq!(s.size.as_deref(), Some("100B"));
    assert_eq!(s.last_prune.as_ref().unwrap().manifests, 2);
    // No pod told its volume size: the claim size of the spec (10Gi by default).
    assert_eq!(s.capacity_bytes, Some(10 * 1024 * 1024 * 1024));
    assert_eq!(cond(&s, READY), ("True", "Serving"));
    assert_eq!(cond(&s, PROGRESSING), ("False", "RolledOut"));
    assert_eq!(requeue_after(&s), REQUEUE_STEADY);
}

#[test]
fn a_failing_admin_api_degrades() {
    let ic = cache("replicas: 2\nstorage: {emptyDir: true}");
    let pods = [
        pod("m-0", true, Some(Ok(cache_status(1, 1, 1)))),
        pod("m-1", true, Some(Err("connection refused".into()))),
    ];
    let set = rolled_out(2);
    let s = status(
        &ic,
        &Observation {
            statefulset: Some(&set),
            client_service: None,
            pods: &pods,
        },
        t("2026-01-02T00:00:00Z"),
    );
    assert_eq!(cond(&s, READY), ("True", "Serving"));
    assert_eq!(cond(&s, DEGRADED), ("True", "PodUnreachable"));
    assert!(
        conditions::get(&s.conditions, DEGRADED)
            .unwrap()
            .message
            .contains("m-1: connection refused")
    );
    assert_eq!(s.capacity_bytes, None, "an emptyDir has no fixed size");
    assert_eq!(s.pods[1].images, 0);

    // Every ready pod failing: not ready either.
    let pods = [pod("m-0", true, Some(Err("timeout".into())))];
    let s = status(
        &ic,
        &Observation {
            statefulset: Some(&set),
            client_service: None,
            pods: &pods,
        },
        t("2026-01-02T00:00:00Z"),
    );
    assert_eq!(cond(&s, READY), ("False", "PodUnreachable"));
}

#[test]
fn no_pods_and_no_statefulset_yet() {
    let ic = cache("{}");
    let s = status(&ic, &Observation::default(), t("2026-01-02T00:00:00Z"));
    assert_eq!(cond(&s, READY), ("False", "NoReadyPods"));
    assert_eq!(cond(&s, PROGRESSING), ("True", "RollingOut"));
    assert_eq!(cond(&s, DEGRADED), ("False", "Healthy"));
    assert_eq!((s.images, s.bytes_used, s.ready_replicas), (0, 0, 0));
    assert_eq!(s.size.as_deref(), Some("0B"));
    assert!(s.last_prune.is_none() && s.pods.is_empty());
}

#[test]
fn progressing_follows_the_statefulset_rollout() {
    let ic = cache("replicas: 3");
    let progressing = |set: StatefulSet| {
        let s = status(
            &ic,
            &Observation {
                statefulset: Some(&set),
                ..Observation::default()
            },
            t("2026-01-02T00:00:00Z"),
        );
        let c = conditions::get(&s.conditions, PROGRESSING).unwrap().clone();
        (c.status, c.message)
    };
    let behind = sts(
        6,
        serde_json::json!({"observedGeneration": 5, "replicas": 3, "readyReplicas": 3,
            "updatedReplicas": 3}),
    );
    assert_eq!(
        progressing(behind),
        (
            "True".to_owned(),
            "the StatefulSet controller has not seen generation 6 yet".to_owned()
        )
    );
    let updating = sts(
        6,
        serde_json::json!({"observedGeneration": 6, "replicas": 3, "readyReplicas": 3,
            "updatedReplicas": 1}),
    );
    assert_eq!(
        progressing(updating),
        ("True".to_owned(), "1/3 registry pods updated".to_owned())
    );
    let starting = sts(
        6,
        serde_json::json!({"observedGeneration": 6, "replicas": 3, "readyReplicas": 2,
            "updatedReplicas": 3}),
    );
    assert_eq!(
        progressing(starting),
        ("True".to_owned(), "2/3 registry pods ready".to_owned())
    );
    assert_eq!(progressing(rolled_out(3)).0, "False");
}

#[test]
fn transition_times_survive_from_the_previous_status() {
    let mut ic = cache("{}");
    let pods = [pod("m-0", true, Some(Ok(cache_status(1, 1, 1))))];
    let set = rolled_out(1);
    let obs = Observation {
        statefulset: Some(&set),
        client_service: None,
        pods: &pods,
    };
    let first = status(&ic, &obs, t("2026-01-02T00:00:00Z"));
    ic.status = Some(first.clone());
    let second = status(&ic, &obs, t("2026-01-02T00:05:00Z"));
    assert_eq!(first, second, "nothing changed, nothing to write");
}

#[test]
fn endpoint_by_service_type() {
    let ic = cache("service: {type: NodePort, nodePort: 30500}");
    assert_eq!(endpoint(&ic, None).as_deref(), Some("<node-ip>:30500"));
    let ic = cache("service: {type: NodePort}");
    assert_eq!(
        endpoint(&ic, None).as_deref(),
        Some("mirror.infra.svc:5000"),
        "until the port is allocated"
    );
    let applied: Service = serde_json::from_value(serde_json::json!({
        "spec": {"type": "NodePort", "ports": [{"port": 5000, "nodePort": 31999}]}
    }))
    .unwrap();
    assert_eq!(
        endpoint(&ic, Some(&applied)).as_deref(),
        Some("<node-ip>:31999")
    );
}

#[test]
fn a_failure_sets_degraded_and_keeps_the_rest() {
    let mut ic = cache("replicas: 2");
    let pods = [pod("m-0", true, Some(Ok(cache_status(4, 4, 4))))];
    let set = rolled_out(2);
    let before = status(
        &ic,
        &Observation {
            statefulset: Some(&set),
            client_service: None,
            pods: &pods,
        },
        t("2026-01-02T00:00:00Z"),
    );
    ic.status = Some(before.clone());
    let err = OperatorError::InvalidSpec("bad".into());
    let after = failed(&ic, &err, t("2026-01-02T01:00:00Z"));
    assert_eq!(cond(&after, DEGRADED), ("True", "InvalidSpec"));
    let degraded = conditions::get(&after.conditions, DEGRADED).unwrap();
    assert_eq!(degraded.message, "invalid spec: bad");
    assert_eq!(degraded.last_transition_time, t("2026-01-02T01:00:00Z"));
    assert_eq!(
        conditions::get(&after.conditions, READY),
        conditions::get(&before.conditions, READY)
    );
    assert_eq!((after.images, after.pods.len()), (4, 1));

    // The very first reconcile failing: only the condition and the desired replicas.
    let fresh = cache("replicas: 2");
    let s = failed(&fresh, &err, t("2026-01-02T01:00:00Z"));
    assert_eq!(s.replicas, 2);
    assert_eq!(s.conditions.len(), 1);
}
