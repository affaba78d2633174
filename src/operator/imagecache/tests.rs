//! The ImageCache reconciler against a mocked API server and fake registry pods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::api::CacheStatus;
use crate::operator::mock::{self, ApiServer, Exchange, FakeRegistry};

const NOW: &str = "2026-01-01T00:00:00Z";
const CORE: &str = "/api/v1/namespaces/ns";
const APPS: &str = "/apis/apps/v1/namespaces/ns";
const STATUS_PATH: &str = "/apis/imagecache.io/v1alpha1/namespaces/ns/imagecaches/x/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
const EXISTING_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn cache(spec: Value) -> ImageCache {
    let mut ic = ImageCache::new("x", serde_json::from_value(spec).unwrap());
    ic.metadata.namespace = Some("ns".to_owned());
    ic.metadata.uid = Some("uid-1".to_owned());
    ic.metadata.generation = Some(1);
    ic
}

fn secret_with(token: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "x-admin-token", "namespace": "ns"},
        "data": {"token": base64::engine::general_purpose::STANDARD.encode(token)}})
}

fn pod(name: &str, ready: bool) -> Value {
    json!({"metadata": {"name": name, "namespace": "ns"},
        "spec": {"containers": [{"name": "registry",
            "ports": [{"name": "admin", "containerPort": 8081}]}]},
        "status": {"podIP": "10.1.0.1",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn rolled_out() -> Value {
    json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2})
}

fn serving(manifests: u64) -> CacheStatus {
    CacheStatus {
        manifests,
        blobs: 30,
        bytes: 3 << 30,
        capacity_bytes: Some(50 << 30),
        revision: 7,
        ..CacheStatus::default()
    }
}

/// Asserts a server-side apply of `kind` by the operator, controlled by the ImageCache.
async fn expect_apply(server: &mut ApiServer, path: &str, kind: &str) -> Exchange {
    let ex = server.expect(Method::PATCH, path).await;
    assert_eq!(
        ex.query("fieldManager").as_deref(),
        Some("imagecache-operator"),
        "{path}"
    );
    assert_eq!(ex.query("force").as_deref(), Some("true"), "{path}");
    assert_eq!(ex.body["kind"], kind, "{path}");
    assert!(ex.body["apiVersion"].is_string(), "{path}");
    let owners = &ex.body["metadata"]["ownerReferences"];
    assert_eq!(
        owners,
        &json!([{"apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache", "name": "x",
            "uid": "uid-1", "controller": true, "blockOwnerDeletion": true}]),
        "{path}"
    );
    ex
}

/// Answers an apply with its body plus `extra` merged in at the top (what the server adds).
fn answer(ex: Exchange, extra: Value) -> Value {
    let mut body = ex.body.clone();
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    ex.respond(200, body.clone());
    body
}

/// How the mocked server answers the children's applies.
struct Cluster {
    /// The admin token Secret as it exists, if it does.
    secret: Option<Value>,
    /// The client Service's `spec` as allocated (merged into the applied one).
    cluster_ip: Option<&'static str>,
    /// The StatefulSet's status.
    sts_status: Value,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            secret: None,
            cluster_ip: Some("10.96.0.12"),
            sts_status: rolled_out(),
        }
    }
}

/// Answers the token read and the six child applies; returns the applied bodies by path.
async fn answer_children(server: &mut ApiServer, cluster: &Cluster) -> BTreeMap<String, Value> {
    let mut applied = BTreeMap::new();
    let ex = server
        .expect(Method::GET, &format!("{CORE}/secrets/x-admin-token"))
        .await;
    match &cluster.secret {
        Some(s) => ex.respond(200, s.clone()),
        None => ex.not_found(),
    }
    for (path, kind) in [
        (format!("{CORE}/configmaps/x-config"), "ConfigMap"),
        (format!("{CORE}/secrets/x-admin-token"), "Secret"),
        (format!("{CORE}/services/x-headless"), "Service"),
    ] {
        let ex = expect_apply(server, &path, kind).await;
        applied.insert(path, ex.body.clone());
        ex.echo();
    }
    let path = format!("{CORE}/services/x");
    let ex = expect_apply(server, &path, "Service").await;
    applied.insert(path, ex.body.clone());
    let mut spec = ex.body["spec"].clone();
    if let Some(ip) = cluster.cluster_ip {
        spec["clusterIP"] = ip.into();
    }
    answer(ex, json!({"spec": spec}));

    let path = format!("{APPS}/statefulsets/x");
    let ex = expect_apply(server, &path, "StatefulSet").await;
    applied.insert(path, ex.body.clone());
    let mut meta = ex.body["metadata"].clone();
    meta["generation"] = 1.into();
    answer(ex, json!({"metadata": meta, "status": cluster.sts_status}));

    let path = "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/x-pdb".to_owned();
    let ex = expect_apply(server, &path, "PodDisruptionBudget").await;
    applied.insert(path, ex.body.clone());
    ex.echo();
    applied
}

/// Answers `pods::list`: the token Secret, then the pods.
async fn answer_pods(server: &mut ApiServer, pods: Vec<Value>) {
    let ex = server.expect(Method::GET, &format!("{CORE}/pods")).await;
    assert_eq!(
        ex.query("labelSelector").as_deref(),
        Some(
            "app.kubernetes.io/component=registry,app.kubernetes.io/instance=x,app.kubernetes.io/name=imagecache"
        )
    );
    ex.respond(
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
    );
}

/// Answers the node-config DaemonSet read with `existing` (404 when `None`).
async fn answer_daemonset_get(server: &mut ApiServer, existing: Option<Value>) {
    let ex = server
        .expect(Method::GET, &format!("{APPS}/daemonsets/x-node-config"))
        .await;
    match existing {
        Some(ds) => ex.respond(200, ds),
        None => ex.not_found(),
    }
}

/// Answers the status apply and returns its body.
async fn answer_status(server: &mut ApiServer) -> Value {
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    assert_eq!(
        ex.query("fieldManager").as_deref(),
        Some("imagecache-operator")
    );
    assert_eq!(ex.query("force").as_deref(), Some("true"));
    assert_eq!(ex.body["kind"], "ImageCache");
    assert_eq!(ex.body["apiVersion"], "imagecache.io/v1alpha1");
    let body = ex.body.clone();
    // The server answers with the whole object.
    let mut object = body.clone();
    object["metadata"] = json!({"name": "x", "namespace": "ns", "uid": "uid-1"});
    object["spec"] = json!({});
    ex.respond(200, object);
    body
}

/// Answers the next event and returns `(type, reason, note)`.
async fn answer_event(server: &mut ApiServer) -> (String, String, String) {
    let ex = server.expect(Method::POST, EVENTS_PATH).await;
    let b = &ex.body;
    assert_eq!(b["regarding"]["kind"], "ImageCache");
    assert_eq!(b["regarding"]["name"], "x");
    assert_eq!(b["reportingController"], "imagecache-operator");
    let out = (
        b["type"].as_str().unwrap_or_default().to_owned(),
        b["reason"].as_str().unwrap_or_default().to_owned(),
        b["note"].as_str().unwrap_or_default().to_owned(),
    );
    ex.echo();
    out
}

/// The reconcile's result; fails the test rather than hang when it waits for an unanswered call.
async fn finish(
    task: tokio::task::JoinHandle<Result<Action, OperatorError>>,
) -> Result<Action, OperatorError> {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the reconcile did not finish: an API call is left unanswered")
        .unwrap()
}

fn token_in(secret_apply: &Value) -> String {
    let b64 = secret_apply["data"]["token"].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

fn condition<'v>(status: &'v Value, type_: &str) -> &'v Value {
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn create_applies_every_child_and_reports_two_pods() {
    let registry = FakeRegistry::new();
    registry.set_status("x-0", Ok(serving(12)));
    let (ctx, mut server) = mock::context(registry, NOW);
    let ic = cache(json!({"replicas": 2, "storage": {"size": "50Gi"}}));
    let task = tokio::spawn(reconcile(Arc::new(ic), ctx.clone()));

    let cluster = Cluster {
        sts_status: json!({"observedGeneration": 1, "replicas": 2, "readyReplicas": 1,
            "updatedReplicas": 2}),
        ..Cluster::default()
    };
    let applied = answer_children(&mut server, &cluster).await;
    // A fresh token: 32 random bytes, hex.
    let token = token_in(&applied[&format!("{CORE}/secrets/x-admin-token")]);
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    assert_ne!(token, EXISTING_TOKEN);
    // The StatefulSet runs the configured image and rolls on config change.
    let sts = &applied[&format!("{APPS}/statefulsets/x")];
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        crate::operator::DEFAULT_REGISTRY_IMAGE
    );
    assert_eq!(
        sts["spec"]["template"]["metadata"]["annotations"]["imagecache.io/config-hash"]
            .as_str()
            .map(str::len),
        Some(64)
    );
    assert_eq!(
        applied[&format!("{CORE}/configmaps/x-config")]["data"]["config.yaml"]
            .as_str()
            .map(|c| c.contains("imagePath: /var/lib/imagecache")),
        Some(true)
    );
    answer_daemonset_get(&mut server, None).await;
    answer_pods(&mut server, vec![pod("x-0", true), pod("x-1", false)]).await;

    let status = answer_status(&mut server).await;
    let s = &status["status"];
    assert_eq!(s["replicas"], 2);
    assert_eq!(s["readyReplicas"], 1);
    assert_eq!(s["observedGeneration"], 1);
    assert_eq!(s["endpoint"], "x.ns.svc:5000");
    assert_eq!(s["images"], 12);
    assert_eq!(s["blobs"], 30);
    assert_eq!(s["bytesUsed"], 3i64 << 30);
    assert_eq!(s["size"], "3.0GiB");
    assert_eq!(s["capacityBytes"], 50i64 << 30);
    assert_eq!(
        s["pods"],
        json!([{"name": "x-0", "ready": true, "images": 12, "bytes": 3i64 << 30},
            {"name": "x-1", "ready": false, "images": 0, "bytes": 0}])
    );
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Ready")["reason"], "Serving");
    assert_eq!(condition(&status, "Ready")["lastTransitionTime"], NOW);
    assert_eq!(condition(&status, "Progressing")["status"], "True");
    assert_eq!(condition(&status, "Progressing")["reason"], "RollingOut");
    assert_eq!(condition(&status, "Degraded")["status"], "False");

    let (type_, reason, _) = answer_event(&mut server).await;
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Created"));
    let (type_, reason, note) = answer_event(&mut server).await;
    assert_eq!((type_.as_str(), reason.as_str()), ("Normal", "Ready"));
    assert_eq!(note, "1/2 registry pods serving");

    let action = finish(task).await.unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(15)),
        "still rolling out"
    );
    assert!(
        ctx.metrics
            .render()
            .contains("imagecache_operator_reconciles_total{controller=\"imagecache\"} 1")
    );
}

#[tokio::test]
async fn a_cache_being_deleted_gets_no_call() {
    let (ctx, mut server) = mock::context(FakeRegistry::new(), NOW);
    let mut ic = cache(json!({"replicas": 2}));
    ic.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        ctx.now(),
    ));
    // An API call would wait for the mock's answer: the reconcile would not return.
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(ic), ctx.clone()))
        .await
        .expect("no API call")
        .unwrap();
    assert_eq!(action, Action::await_change());
    server.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn existing_token_is_kept_and_a_second_reconcile_is_quiet() {
    let registry = FakeRegistry::new();
    registry.set_status("x-0", Ok(serving(3)));
    registry.set_status("x-1", Ok(serving(5)));
    let (ctx, mut server) = mock::context(registry, NOW);
    let cluster = Cluster {
        secret: Some(secret_with(EXISTING_TOKEN)),
        ..Cluster::default()
    };
    let pods = || vec![pod("x-0", true), pod("x-1", true)];

    let ic = cache(json!({"replicas": 2}));
    let task = tokio::spawn(reconcile(Arc::new(ic.clone()), ctx.clone()));
    let first = answer_children(&mut server, &cluster).await;
    assert_eq!(
        token_in(&first[&format!("{CORE}/secrets/x-admin-token")]),
        EXISTING_TOKEN
    );
    answer_daemonset_get(&mut server, None).await;
    answer_pods(&mut server, pods()).await;
    let status = answer_status(&mut server).await;
    assert_eq!(status["status"]["images"], 5);
    // The Secret existed: no "Created", only Ready gained.
    let (_, reason, _) = answer_event(&mut server).await;
    assert_eq!(reason, "Ready");
    let action = finish(task).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)), "steady");

    // The next reconcile sees the status it wrote: same applies, no status write, no event.
    let mut ic = ic;
    ic.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let task = tokio::spawn(reconcile(Arc::new(ic), ctx.clone()));
    let second = answer_children(&mut server, &cluster).await;
    assert_eq!(first, second);
    answer_daemonset_get(&mut server, None).await;
    answer_pods(&mut server, pods()).await;
    let action = finish(task).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    server.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_failing_admin_api_degrades_the_cache() {
    let registry = FakeRegistry::new();
    registry.set_status("x-0", Err("connection reset".into()));
    let (ctx, mut server) = mock::context(registry, NOW);
    let task = tokio::spawn(reconcile(Arc::new(cache(json!({}))), ctx.clone()));
    answer_children(
        &mut server,
        &Cluster {
            secret: Some(secret_with(EXISTING_TOKEN)),
            sts_status: json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                "updatedReplicas": 1}),
            ..Cluster::default()
        },
    )
    .await;
    answer_daemonset_get(&mut server, None).await;
    answer_pods(&mut server, vec![pod("x-0", true)]).await;
    let status = answer_status(&mut server).await;
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "PodUnreachable");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("x-0: connection reset"),
        "{degraded}"
    );
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Ready")["reason"], "PodUnreachable");
    let (type_, reason, note) = answer_event(&mut server).await;
    assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "Degraded"));
    assert!(note.starts_with("PodUnreachable: "), "{note}");
    let action = finish(task).await.unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(15)),
        "not ready"
    );
}

#[tokio::test]
async fn an_apply_error_is_returned_and_recorded_in_degraded() {
    let (ctx, mut server) = mock::context(FakeRegistry::new(), NOW);
    let task = tokio::spawn(reconcile(Arc::new(cache(json!({}))), ctx.clone()));
    server
        .expect(Method::GET, &format!("{CORE}/secrets/x-admin-token"))
        .await
        .respond(200, secret_with(EXISTING_TOKEN));
    expect_apply(
        &mut server,
        &format!("{CORE}/configmaps/x-config"),
        "ConfigMap",
    )
    .await
    .respond(
        500,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "InternalError", "code": 500, "message": "etcd timeout"}),
    );
    let status = answer_status(&mut server).await;
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "KubernetesAPIError");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("etcd timeout"),
        "{degraded}"
    );
    assert_eq!(status["status"]["replicas"], 1);
    let (type_, reason, _) = answer_event(&mut server).await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Warning", "KubernetesAPIError")
    );
    let err = finish(task).await.unwrap_err();
    assert!(matches!(err, OperatorError::Kube(_)), "{err}");
    assert!(ctx.metrics.render().contains(
        "imagecache_operator_reconcile_errors_total{controller=\"imagecache\",error=\"kube\"} 1"
    ));
}

#[tokio::test]
async fn a_repeated_failure_raises_no_new_event_and_a_failed_status_write_is_tolerated() {
    let (ctx, mut server) = mock::context(FakeRegistry::new(), NOW);
    let mut ic = cache(json!({}));
    let err = OperatorError::Kube(kube::Error::Api(Box::new(
        kube::core::Status::failure("etcd timeout", "InternalError").with_code(500),
    )));
    ic.status = Some(status::failed(&ic, &err, whole_seconds(ctx.now())));
    let task = tokio::spawn(reconcile(Arc::new(ic), ctx.clone()));
    server
        .expect(Method::GET, &format!("{CORE}/secrets/x-admin-token"))
        .await
        .respond(
            500,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "InternalError", "code": 500, "message": "etcd timeout"}),
        );
    // The status write fails too: the reconcile still returns its own error.
    server.expect(Method::PATCH, STATUS_PATH).await.respond(
        500,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "InternalError", "code": 500, "message": "still down"}),
    );
    let err = finish(task).await.unwrap_err();
    assert!(err.to_string().contains("etcd timeout"), "{err}");
    server.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn error_policy_backs_off_per_cache() {
    let (ctx, _server) = mock::context(FakeRegistry::new(), NOW);
    let ic = Arc::new(cache(json!({})));
    let err = OperatorError::InvalidSpec("x".into());
    // Doubles per consecutive failure of the same cache.
    for secs in [5, 10, 20] {
        assert_eq!(
            error_policy(ic.clone(), &err, ctx.clone()),
            Action::requeue(Duration::from_secs(secs))
        );
    }
    let other = Arc::new({
        let mut c = cache(json!({}));
        c.metadata.name = Some("y".to_owned());
        c
    });
    assert_eq!(
        error_policy(other, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5)),
        "another cache has its own backoff"
    );
    ctx.reset_backoff(&object_key(&*ic));
    assert_eq!(
        error_policy(ic, &err, ctx),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn node_mirror_on_applies_the_daemonset_with_the_cluster_ip() {
    let registry = FakeRegistry::new();
    registry.set_status("x-0", Ok(serving(1)));
    let (ctx, mut server) = mock::context(registry, NOW);
    let ic = cache(
        json!({"upstreams": [{"name": "docker.io"}, {"name": "ghcr.io"}],
        "nodeMirror": {"enabled": true}}),
    );
    let task = tokio::spawn(reconcile(Arc::new(ic), ctx.clone()));
    answer_children(
        &mut server,
        &Cluster {
            secret: Some(secret_with(EXISTING_TOKEN)),
            sts_status: json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
                "updatedReplicas": 1}),
            ..Cluster::default()
        },
    )
    .await;
    answer_daemonset_get(&mut server, None).await;
    let ex = expect_apply(
        &mut server,
        &format!("{APPS}/daemonsets/x-node-config"),
        "DaemonSet",
    )
    .await;
    let container = &ex.body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], crate::operator::DEFAULT_REGISTRY_IMAGE);
    assert_eq!(
        container["args"],
        json!([
            "node-config",
            "--mirror",
            "http://10.96.0.12:5000",
            "--runtime",
            "containerd",
            "--hosts-dir",
            "/etc/containerd/certs.d",
            "--registry",
            "docker.io",
            "--registry",
            "ghcr.io",
            "--stay"
        ])
    );
    ex.echo();
    answer_pods(&mut server, vec![pod("x-0", true)]).await;
    answer_status(&mut server).await;
    let (_, reason, note) = answer_event(&mut server).await;
    assert_eq!(reason, "NodeMirrorEnabled");
    assert!(
        note.contains("docker.io, ghcr.io through http://10.96.0.12:5000"),
        "{note}"
    );
    let (_, reason, _) = answer_event(&mut server).await;
    assert_eq!(reason, "Ready");
    assert_eq!(
        finish(task).await.unwrap(),
        Action::requeue(Duration::from_secs(60))
    );
}

#[tokio::test]
async fn node_mirror_waits_for_the_cluster_ip() {
    let (ctx, mut server) = mock::context(FakeRegistry::new(), NOW);
    let ic = cache(json!({"nodeMirror": {"enabled": true}}));
    let task = tokio::spawn(reconcile(Arc::new(ic), ctx.clone()));
    answer_children(
        &mut server,
        &Cluster {
            secret: Some(secret_with(EXISTING_TOKEN)),
            cluster_ip: None,
            ..Cluster::default()
        },
    )
    .await;
    answer_daemonset_get(&mut server, None).await;
    // No DaemonSet apply: straight to the pods.
    answer_pods(&mut server, vec![]).await;
    answer_status(&mut server).await;
    assert_eq!(
        finish(task).await.unwrap(),
        Action::requeue(REQUEUE_NODE_CONFIG)
    );
}

fn daemonset(owner_uid: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "x-node-config", "namespace": "ns",
            "ownerReferences": [{"apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
                "name": "x", "uid": owner_uid, "controller": true}]},
        "spec": {"selector": {}, "template": {}}})
}

#[tokio::test]
async fn node_mirror_off_deletes_our_daemonset_and_tolerates_404() {
    let (ctx, mut server) = mock::context(FakeRegistry::new(), NOW);
    let task = tokio::spawn(reconcile(Arc::new(cache(json!({}))), ctx.clone()));
    answer_children(
        &mut server,
        &Cluster {
            secret: Some(secret_with(EXISTING_TOKEN)),
            ..Cluster::default()
        },
    )
    .await;
    answer_daemonset_get(&mut server, Some(daemonset("uid-1"))).await;
    let ex = server
        .expect(Method::DELETE, &format!("{APPS}/daemonsets/x-node-config"))
        .await;
    assert_eq!(ex.body["propagationPolicy"], "Background");
    // Gone already (a concurrent delete): fine.
    ex.not_found();
    answer_pods(&mut server, vec![]).await;
    answer_status(&mut server).await;
    let (_, reason, note) = answer_event(&mut server).await;
    assert_eq!(reason, "NodeMirrorDisabled");
    assert_eq!(note, "deleted DaemonSet x-node-config");
    finish(task).await.unwrap();
}

#[tokio::test]
async fn node_mirror_off_leaves_a_daemonset_it_does_not_own() {
    let (ctx, mut server) = mock::context(FakeRegistry::new(), NOW);
    let task = tokio::spawn(reconcile(Arc::new(cache(json!({}))), ctx.clone()));
    answer_children(
        &mut server,
        &Cluster {
            secret: Some(secret_with(EXISTING_TOKEN)),
            ..Cluster::default()
        },
    )
    .await;
    answer_daemonset_get(&mut server, Some(daemonset("someone-else"))).await;
    // No DELETE: the pods are listed next.
    answer_pods(&mut server, vec![]).await;
    answer_status(&mut server).await;
    finish(task).await.unwrap();
}

#[test]
fn registry_pods_map_to_their_cache() {
    let pod = |labels: Value| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns",
            "labels": labels}}))
        .unwrap()
    };
    let ours = pod(json!({"app.kubernetes.io/instance": "x",
        "app.kubernetes.io/component": "registry",
        "app.kubernetes.io/managed-by": "imagecache-operator"}));
    assert_eq!(cache_of_pod(&ours), Some(ObjectRef::new("x").within("ns")));
    let node_config = pod(json!({"app.kubernetes.io/instance": "x",
        "app.kubernetes.io/component": "node-config",
        "app.kubernetes.io/managed-by": "imagecache-operator"}));
    assert_eq!(cache_of_pod(&node_config), None);
    let foreign = pod(json!({"app.kubernetes.io/instance": "x",
        "app.kubernetes.io/component": "registry"}));
    assert_eq!(cache_of_pod(&foreign), None);
}

#[test]
fn losing_ready_is_a_warning_and_staying_ready_is_silent() {
    use crate::operator::conditions::{Cond, set};
    let now = whole_seconds(NOW.parse().unwrap());
    let mut before = cache(json!({}));
    let mut ready = ImageCacheStatus::default();
    set(
        &mut ready.conditions,
        Cond::new(READY, true, "Serving", "1/1 registry pods serving"),
        Some(1),
        now.clone(),
    );
    before.status = Some(ready.clone());
    assert!(transition_events(&before, &ready, false, &NodeConfig::Off).is_empty());
    let mut lost = ready;
    set(
        &mut lost.conditions,
        Cond::new(READY, false, "NoReadyPods", "0/1 registry pods ready"),
        Some(1),
        now,
    );
    let events = transition_events(&before, &lost, false, &NodeConfig::Off);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].type_, EventType::Warning);
    assert_eq!(events[0].reason, "NotReady");
    assert_eq!(
        events[0].note.as_deref(),
        Some("NoReadyPods: 0/1 registry pods ready")
    );
}

#[test]
fn rollouts_and_recoveries_raise_events_once() {
    use crate::operator::conditions::{Cond, DEGRADED, PROGRESSING, set};
    let now = whole_seconds(NOW.parse().unwrap());
    let status = |progressing: bool, degraded: bool| {
        let mut s = ImageCacheStatus::default();
        set(
            &mut s.conditions,
            Cond::new(READY, true, "Serving", "1/1 registry pods serving"),
            Some(1),
            now.clone(),
        );
        let (reason, message) = if progressing {
            ("RollingOut", "1/2 registry pods updated")
        } else {
            ("RolledOut", "2/2 registry pods updated and ready")
        };
        set(
            &mut s.conditions,
            Cond::new(PROGRESSING, progressing, reason, message),
            Some(1),
            now.clone(),
        );
        let (reason, message) = if degraded {
            ("PodUnreachable", "admin API failing on cache-0: timeout")
        } else {
            ("Healthy", "every ready registry pod answers its admin API")
        };
        set(
            &mut s.conditions,
            Cond::new(DEGRADED, degraded, reason, message),
            Some(1),
            now.clone(),
        );
        s
    };
    let with = |s: ImageCacheStatus| {
        let mut ic = cache(json!({}));
        ic.status = Some(s);
        ic
    };
    let reasons = |before: ImageCacheStatus, after: ImageCacheStatus| -> Vec<String> {
        transition_events(&with(before), &after, false, &NodeConfig::Off)
            .into_iter()
            .map(|e| e.reason)
            .collect()
    };
    assert_eq!(
        reasons(status(false, false), status(true, false)),
        ["RollingOut"]
    );
    assert_eq!(
        reasons(status(true, false), status(false, false)),
        ["RolledOut"]
    );
    assert!(reasons(status(true, false), status(true, false)).is_empty());
    assert_eq!(
        reasons(status(false, true), status(false, false)),
        ["Recovered"]
    );
    assert_eq!(
        reasons(status(false, false), status(false, true)),
        ["Degraded"]
    );
    // The first rollout of a new cache is told by `Created`, not `RollingOut`.
    let fresh = cache(json!({}));
    let events = transition_events(&fresh, &status(true, false), true, &NodeConfig::Off);
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert!(!reasons.contains(&"RollingOut"), "{reasons:?}");
}
