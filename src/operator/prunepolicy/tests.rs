//! The controller against a mocked API server and fake registry pods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use jiff::Timestamp;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::due::MAX_REQUEUE;
use super::*;
use crate::api::{Decision, Item, Report, Totals};
use crate::operator::MANAGER;
use crate::operator::mock::{self, ApiServer, FakeRegistry};

const PP_PATH: &str = "/apis/imagecache.io/v1alpha1/namespaces/ns/prunepolicies/daily";
const STATUS_PATH: &str = "/apis/imagecache.io/v1alpha1/namespaces/ns/prunepolicies/daily/status";
const IC_PATH: &str = "/apis/imagecache.io/v1alpha1/namespaces/ns/imagecaches/cache";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
const SECRET_PATH: &str = "/api/v1/namespaces/ns/secrets/cache-admin-token";
const PODS_PATH: &str = "/api/v1/namespaces/ns/pods";
/// The cluster-wide lists of the in-use set, in the order they are made.
const WORKLOAD_PATHS: [&str; 6] = [
    "/apis/apps/v1/deployments",
    "/apis/apps/v1/statefulsets",
    "/apis/apps/v1/daemonsets",
    "/apis/apps/v1/replicasets",
    "/apis/batch/v1/jobs",
    "/apis/batch/v1/cronjobs",
];

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A daily 03:00 UTC policy created in December whose last run was on 2026-01-01 at 03:00.
fn policy_json() -> Value {
    json!({
        "apiVersion": "imagecache.io/v1alpha1", "kind": "PrunePolicy",
        "metadata": {"name": "daily", "namespace": "ns", "uid": "pp-uid", "generation": 4,
                     "resourceVersion": "100", "creationTimestamp": "2025-12-01T00:00:00Z"},
        "spec": {
            "cacheRef": {"name": "cache"},
            "schedule": "0 3 * * *",
            "request": {"unusedFor": "30d", "patterns": ["^docker.io/"], "inUse": ["pinned/by-spec:1"]}
        },
        "status": {"lastScheduleTime": "2026-01-01T03:00:00Z"}
    })
}

fn policy(v: Value) -> Arc<PrunePolicy> {
    Arc::new(serde_json::from_value(v).unwrap())
}

fn cache_json() -> Value {
    json!({
        "apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
        "metadata": {"name": "cache", "namespace": "ns", "uid": "ic-uid"},
        "spec": {"replicas": 2},
        "status": {"endpoint": "cache.ns.svc:5000"}
    })
}

fn registry_pod(name: &str, ip: &str, ready: bool) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"containers": [{"name": "registry", "image": "ghcr.io/imagecache/imagecache:0.1.0"}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn digest(n: u32) -> String {
    format!("sha256:{n:064x}")
}

fn report(pruned: &[u32], bytes: u64) -> Report {
    Report {
        dry_run: false,
        items: pruned
            .iter()
            .map(|n| Item {
                reference: format!("docker.io/library/old:{n}"),
                digest: digest(*n).parse().unwrap(),
                decision: Decision::Prune,
                reason: "unusedFor".into(),
            })
            .collect(),
        totals: Totals {
            manifests: pruned.len() as u64,
            blobs: pruned.len() as u64 * 3,
            bytes,
        },
        protected: BTreeMap::from([("inUse".to_owned(), 1)]),
        kept: BTreeMap::new(),
        refused: None,
        blobs: Vec::new(),
        started: ts("2026-01-02T03:00:00Z"),
        duration_ms: 5,
    }
}

/// Answers `pods::list` for the cache: the admin token Secret, then the pods.
async fn serve_registry_pods(server: &mut ApiServer, pods: Vec<Value>) {
    server.expect(Method::GET, SECRET_PATH).await.respond(
        200,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "cache-admin-token", "namespace": "ns"},
               "data": {"token": "c2VjcmV0"}}),
    );
    let ex = server.expect(Method::GET, PODS_PATH).await;
    assert_eq!(
        ex.query("labelSelector").as_deref(),
        Some(
            "app.kubernetes.io/component=registry,app.kubernetes.io/instance=cache,app.kubernetes.io/name=imagecache"
        )
    );
    ex.respond(200, list("PodList", pods));
}

/// Answers the cluster-wide lists of the in-use set: pods in two pages, then one workload
/// of each kind.
async fn serve_workloads(server: &mut ApiServer) {
    let ex = server.expect(Method::GET, "/api/v1/pods").await;
    assert_eq!(ex.query("limit").as_deref(), Some("500"));
    assert_eq!(ex.query("continue"), None);
    let mut first = list(
        "PodList",
        vec![json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            "status": {"containerStatuses": [{"name": "web", "ready": true, "restartCount": 0,
                "image": "docker.io/library/nginx:1.27",
                "imageID": format!("docker-pullable://docker.io/library/nginx@{}", digest(77))}]}
        })],
    );
    first["metadata"]["continue"] = json!("page-2");
    ex.respond(200, first);
    let ex = server.expect(Method::GET, "/api/v1/pods").await;
    assert_eq!(ex.query("continue").as_deref(), Some("page-2"));
    ex.respond(
        200,
        list(
            "PodList",
            vec![json!({
                "metadata": {"name": "pull-through", "namespace": "shop"},
                "spec": {"containers": [{"name": "c", "image": "cache.ns.svc:5000/quay.io/acme/tool:2"}]}
            })],
        ),
    );
    let template = |image: &str| json!({"spec": {"containers": [{"name": "c", "image": image}]}});
    let selector = json!({"matchLabels": {"app": "x"}});
    let objects = [
        json!({"metadata": {"name": "idle"},
               "spec": {"replicas": 0, "selector": selector, "template": template("redis:7")}}),
        json!({"metadata": {"name": "db"},
               "spec": {"serviceName": "db", "selector": selector, "template": template("postgres:16")}}),
        json!({"metadata": {"name": "agent"},
               "spec": {"selector": selector, "template": template("fluent/fluent-bit:3.1")}}),
        json!({"metadata": {"name": "old"},
               "spec": {"replicas": 0, "selector": selector, "template": template("nginx:1.25")}}),
        json!({"metadata": {"name": "once"}, "spec": {"template": template("python:3.12")}}),
        json!({"metadata": {"name": "nightly"},
               "spec": {"schedule": "0 1 * * *", "jobTemplate": {"spec": {"template": template("ghcr.io/acme/report:1")}}}}),
    ];
    for (path, obj) in WORKLOAD_PATHS.iter().zip(objects) {
        let ex = server.expect(Method::GET, path).await;
        assert_eq!(ex.query("limit").as_deref(), Some("500"), "{path}");
        ex.respond(200, list("List", vec![obj]));
    }
}

/// What the cluster above uses, plus what the spec lists.
fn expected_in_use() -> Vec<String> {
    let mut v: Vec<String> = [
        "cache.ns.svc:5000/quay.io/acme/tool:2",
        "docker.io/library/nginx:1.27",
        "fluent/fluent-bit:3.1",
        "ghcr.io/acme/report:1",
        "nginx:1.25",
        "nginx:1.27",
        "pinned/by-spec:1",
        "postgres:16",
        "python:3.12",
        "quay.io/acme/tool:2",
        "redis:7",
    ]
    .map(String::from)
    .to_vec();
    v.push(format!("docker.io/library/nginx@{}", digest(77)));
    v.sort();
    v
}

/// The policy as the API server holds it after `patch` (a status apply).
fn with_status(pp: &Value, patch: &Value) -> Value {
    let mut pp = pp.clone();
    pp["status"] = patch["status"].clone();
    pp
}

fn applied(pp: Value, patch: &Value) -> Arc<PrunePolicy> {
    policy(with_status(&pp, patch))
}

/// Answers a status apply as the API server does, with the whole object; returns the patch.
fn answer_apply(ex: mock::Exchange, pp: &Value) -> Value {
    let patch = ex.body.clone();
    ex.respond(200, with_status(pp, &patch));
    patch
}

type Task = tokio::task::JoinHandle<Result<Action, OperatorError>>;

fn start(pp: Arc<PrunePolicy>, ctx: &Arc<Context>) -> Task {
    tokio::spawn(reconcile(pp, ctx.clone()))
}

async fn finish(task: Task) -> Action {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the reconcile made a request nobody answered, or hung")
        .unwrap()
        .expect("reconcile")
}

#[tokio::test]
async fn a_due_run_prunes_every_pod_with_the_in_use_set_and_records_it() {
    let registry = FakeRegistry::new();
    registry.set_report("cache-0", Ok(report(&[1, 2], 3 << 20)));
    registry.set_report("cache-1", Ok(report(&[2], 1 << 20)));
    let (ctx, mut server) = mock::context(registry.clone(), "2026-01-02T03:00:00Z");
    let pp = policy(policy_json());
    let task = start(pp, &ctx);

    server
        .expect(Method::GET, PP_PATH)
        .await
        .respond(200, policy_json());
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    serve_registry_pods(
        &mut server,
        vec![
            registry_pod("cache-0", "10.0.0.10", true),
            registry_pod("cache-1", "10.0.0.11", true),
        ],
    )
    .await;
    serve_workloads(&mut server).await;

    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    assert_eq!(ex.query("fieldManager").as_deref(), Some(MANAGER));
    assert_eq!(ex.query("force").as_deref(), Some("true"));
    let body = answer_apply(ex, &policy_json());
    assert_eq!(body["apiVersion"], "imagecache.io/v1alpha1");
    assert_eq!(body["kind"], "PrunePolicy");
    let status = &body["status"];
    assert_eq!(status["lastScheduleTime"], "2026-01-02T03:00:00Z");
    assert_eq!(status["nextScheduleTime"], "2026-01-03T03:00:00Z");
    assert_eq!(status["observedGeneration"], 4);
    let last = &status["lastRun"];
    assert_eq!(last["result"], "Succeeded");
    assert_eq!(last["dryRun"], false);
    assert_eq!(last["startTime"], "2026-01-02T03:00:00Z");
    assert_eq!(
        last["totals"],
        json!({"manifests": 3, "blobs": 9, "bytes": 4 << 20, "reclaimed": "4.0MiB",
               "kept": 0, "protected": {"inUse": 2}})
    );
    assert_eq!(last["perPod"][0]["pod"], "cache-0");
    assert_eq!(last["perPod"][1]["totals"]["manifests"], 1);
    let items: Vec<&str> = last["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap())
        .collect();
    assert_eq!(items, [digest(1), digest(2)]);
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][0]["reason"], "Scheduled");
    assert!(status.get("history").is_none(), "no earlier run");

    let ev = server.expect(Method::POST, EVENTS_PATH).await;
    assert_eq!(ev.body["type"], "Normal");
    assert_eq!(ev.body["reason"], "PruneSucceeded");
    assert_eq!(ev.body["regarding"]["name"], "daily");
    assert_eq!(
        ev.body["note"],
        "pruned 3 manifests and 9 blobs (4.0MiB) on 2 pods; kept 0, protected inUse=2"
    );
    ev.echo();

    assert_eq!(
        finish(task).await,
        Action::requeue(MAX_REQUEUE),
        "the next slot is a day away: capped"
    );
    let prunes = registry.prunes();
    let pods: Vec<&str> = prunes.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(pods, ["cache-0", "cache-1"]);
    for (_, request) in &prunes {
        assert_eq!(request.in_use, expected_in_use());
        assert!(!request.dry_run);
        assert_eq!(request.patterns, ["^docker.io/"]);
        assert_eq!(request.unused_for, Some(Duration::from_secs(30 * 86400)));
    }
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(
            r#"imagecache_operator_prune_runs_total{result="succeeded",dry_run="false"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("imagecache_operator_pruned_manifests_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "imagecache_operator_pruned_bytes_total {}",
            4 << 20
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn not_due_writes_the_next_time_once_and_requeues_for_the_slot() {
    let registry = FakeRegistry::new();
    let (ctx, mut server) = mock::context(registry.clone(), "2026-01-02T02:50:00Z");
    let mut pp_json = policy_json();
    let task = start(policy(pp_json.clone()), &ctx);
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    let body = answer_apply(ex, &pp_json);
    assert_eq!(body["status"]["nextScheduleTime"], "2026-01-02T03:00:00Z");
    assert_eq!(body["status"]["lastScheduleTime"], "2026-01-01T03:00:00Z");
    assert_eq!(body["status"]["conditions"][0]["reason"], "Scheduled");
    assert_eq!(
        body["status"]["conditions"][0]["message"],
        "next run at 2026-01-02T03:00:00Z"
    );
    assert_eq!(
        finish(task).await,
        Action::requeue(Duration::from_secs(600))
    );

    // Reconciled again with that status: nothing to write, nothing to run.
    pp_json["status"] = body["status"].clone();
    let task = start(policy(pp_json), &ctx);
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    assert_eq!(
        finish(task).await,
        Action::requeue(Duration::from_secs(600))
    );
    assert!(registry.prunes().is_empty());
}

#[tokio::test]
async fn suspended_policies_skip_their_slots() {
    let registry = FakeRegistry::new();
    let (ctx, mut server) = mock::context(registry.clone(), "2026-01-02T03:00:00Z");
    let mut pp_json = policy_json();
    pp_json["spec"]["suspend"] = json!(true);
    let task = start(policy(pp_json.clone()), &ctx);
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    let status = answer_apply(ex, &pp_json)["status"].clone();
    assert!(status.get("nextScheduleTime").is_none());
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][0]["reason"], "Suspended");
    assert_eq!(finish(task).await, Action::requeue(MAX_REQUEUE));
    assert!(registry.prunes().is_empty());
}

#[tokio::test]
async fn the_run_now_annotation_runs_once_even_while_suspended_and_dry() {
    let registry = FakeRegistry::new();
    registry.set_report("cache-0", Ok(report(&[5], 100)));
    let (ctx, mut server) = mock::context(registry.clone(), "2026-01-01T12:00:00Z");
    let mut pp_json = policy_json();
    pp_json["metadata"]["annotations"] = json!({"imagecache.io/run-now": "try-1"});
    pp_json["spec"]["suspend"] = json!(true);
    pp_json["spec"]["dryRun"] = json!(true);
    let stale = policy(pp_json.clone());

    let task = start(stale.clone(), &ctx);
    server
        .expect(Method::GET, PP_PATH)
        .await
        .respond(200, pp_json.clone());
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    serve_registry_pods(
        &mut server,
        vec![registry_pod("cache-0", "10.0.0.10", true)],
    )
    .await;
    serve_workloads(&mut server).await;
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    let patch = answer_apply(ex, &pp_json);
    let status = &patch["status"];
    assert_eq!(status["lastManualRun"], "try-1");
    assert_eq!(status["lastScheduleTime"], "2026-01-01T12:00:00Z");
    assert_eq!(status["lastRun"]["dryRun"], true);
    assert_eq!(status["conditions"][0]["reason"], "Suspended");
    let ev = server.expect(Method::POST, EVENTS_PATH).await;
    assert_eq!(ev.body["reason"], "PruneSucceeded");
    assert_eq!(
        ev.body["note"],
        "would prune 1 manifests and 3 blobs (100B) on 1 pods; kept 0, protected inUse=1"
    );
    ev.echo();
    assert_eq!(finish(task).await, Action::requeue(MAX_REQUEUE));
    let prunes = registry.prunes();
    assert_eq!(prunes.len(), 1);
    assert!(prunes[0].1.dry_run, "spec.dryRun makes the request dry");
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(
            r#"imagecache_operator_prune_runs_total{result="succeeded",dry_run="true"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("imagecache_operator_pruned_manifests_total 0"),
        "{metrics}"
    );

    // The controller's cache still has the object without the new status: the fresh read
    // shows the annotation answered, so no second run.
    let task = start(stale, &ctx);
    server
        .expect(Method::GET, PP_PATH)
        .await
        .respond(200, with_status(&pp_json, &patch));
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    assert_eq!(finish(task).await, Action::requeue(MAX_REQUEUE));
    // And once the cache has caught up, not even a read.
    let task = start(applied(pp_json, &patch), &ctx);
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    assert_eq!(finish(task).await, Action::requeue(MAX_REQUEUE));
    assert_eq!(registry.prunes().len(), 1, "one run per annotation value");
}

#[tokio::test]
async fn slots_missed_while_down_run_once_at_start() {
    let registry = FakeRegistry::new();
    registry.set_report("cache-0", Ok(report(&[], 0)));
    // Last run three days ago; started at 09:41.
    let (ctx, mut server) = mock::context(registry.clone(), "2026-01-04T09:41:00Z");
    let pp_json = policy_json();
    let task = start(policy(pp_json.clone()), &ctx);
    server
        .expect(Method::GET, PP_PATH)
        .await
        .respond(200, pp_json.clone());
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    serve_registry_pods(
        &mut server,
        vec![registry_pod("cache-0", "10.0.0.10", true)],
    )
    .await;
    serve_workloads(&mut server).await;
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    let patch = answer_apply(ex, &pp_json);
    assert_eq!(patch["status"]["lastScheduleTime"], "2026-01-04T09:41:00Z");
    assert_eq!(patch["status"]["nextScheduleTime"], "2026-01-05T03:00:00Z");
    server.expect(Method::POST, EVENTS_PATH).await.echo();
    finish(task).await;
    assert_eq!(registry.prunes().len(), 1, "three missed slots, one run");

    let task = start(applied(pp_json, &patch), &ctx);
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    finish(task).await;
    assert_eq!(registry.prunes().len(), 1);
}

#[tokio::test]
async fn a_bad_regex_is_reported_once_and_nothing_runs() {
    let registry = FakeRegistry::new();
    let (ctx, mut server) = mock::context(registry.clone(), "2026-01-02T03:00:00Z");
    let mut pp_json = policy_json();
    pp_json["spec"]["request"]["keepPatterns"] = json!(["(unclosed"]);
    let task = start(policy(pp_json.clone()), &ctx);
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    let patch = answer_apply(ex, &pp_json);
    let cond = &patch["status"]["conditions"][0];
    assert_eq!(cond["type"], "Ready");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "InvalidSpec");
    let message = cond["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.request.keepPatterns: invalid regex \"(unclosed\""),
        "{message}"
    );
    assert!(patch["status"].get("nextScheduleTime").is_none());
    let ev = server.expect(Method::POST, EVENTS_PATH).await;
    assert_eq!(ev.body["type"], "Warning");
    assert_eq!(ev.body["reason"], "InvalidSpec");
    assert_eq!(ev.body["note"], message);
    ev.echo();
    assert_eq!(finish(task).await, Action::await_change());

    // Reconciled again (our own status write wakes it): no write, no event, no loop.
    let task = start(applied(pp_json, &patch), &ctx);
    assert_eq!(finish(task).await, Action::await_change());
    assert!(registry.prunes().is_empty());
}

#[tokio::test]
async fn an_unknown_time_zone_and_a_bad_schedule_name_their_fields() {
    let (ctx, mut server) = mock::context(FakeRegistry::new(), "2026-01-02T03:00:00Z");
    let mut pp_json = policy_json();
    pp_json["spec"]["timeZone"] = json!("Mars/Olympus");
    let task = start(policy(pp_json.clone()), &ctx);
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    let patch = answer_apply(ex, &pp_json);
    let message = patch["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with("spec.timeZone: unknown time zone \"Mars/Olympus\""),
        "{message}"
    );
    server.expect(Method::POST, EVENTS_PATH).await.echo();
    assert_eq!(finish(task).await, Action::await_change());

    let mut spec = policy_json()["spec"].clone();
    spec["schedule"] = json!("0 25 * * *");
    spec["request"]["count"] = json!(-5);
    let spec: PrunePolicySpec = serde_json::from_value(spec).unwrap();
    let err = validate(&spec).unwrap_err().to_string();
    assert!(
        err.starts_with("spec.schedule: invalid cron schedule"),
        "{err}"
    );
    assert!(
        err.contains("; spec.request.count: count must be -1"),
        "{err}"
    );
}

#[tokio::test]
async fn one_failing_pod_fails_the_run_while_the_others_count() {
    let registry = FakeRegistry::new();
    registry.set_report("cache-0", Ok(report(&[1], 2048)));
    registry.set_report("cache-1", Err("disk I/O error".into()));
    let (ctx, mut server) = mock::context(registry.clone(), "2026-01-02T03:00:00Z");
    let mut pp_json = policy_json();
    // A previous run moves to the history.
    pp_json["status"]["lastRun"] = json!({"result": "Succeeded", "dryRun": false,
        "totals": {"manifests": 7}, "items": [{"reference": "a", "digest": digest(9), "decision": "pruned"}]});
    let task = start(policy(pp_json.clone()), &ctx);
    server
        .expect(Method::GET, PP_PATH)
        .await
        .respond(200, pp_json.clone());
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    serve_registry_pods(
        &mut server,
        vec![
            registry_pod("cache-0", "10.0.0.10", true),
            registry_pod("cache-1", "10.0.0.11", true),
            registry_pod("cache-2", "10.0.0.12", false),
        ],
    )
    .await;
    serve_workloads(&mut server).await;
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    let status = answer_apply(ex, &pp_json)["status"].clone();
    let last = &status["lastRun"];
    assert_eq!(last["result"], "Failed");
    assert_eq!(
        last["message"],
        "2 of 3 pods failed: cache-1: HTTP 500: disk I/O error; cache-2: pod not ready"
    );
    assert_eq!(last["totals"]["manifests"], 1);
    assert_eq!(last["totals"]["bytes"], 2048);
    assert_eq!(last["perPod"][0]["totals"]["manifests"], 1);
    assert_eq!(last["perPod"][1]["error"], "HTTP 500: disk I/O error");
    assert_eq!(last["perPod"][2]["error"], "pod not ready");
    assert_eq!(status["history"][0]["totals"]["manifests"], 7);
    assert!(status["history"][0].get("items").is_none());
    let cond = &status["conditions"][0];
    assert_eq!(
        (cond["status"].as_str(), cond["reason"].as_str()),
        (Some("False"), Some("LastRunFailed"))
    );
    let ev = server.expect(Method::POST, EVENTS_PATH).await;
    assert_eq!(ev.body["type"], "Warning");
    assert_eq!(ev.body["reason"], "PruneFailed");
    assert!(
        ev.body["note"]
            .as_str()
            .unwrap()
            .contains("totals: pruned 1 manifests")
    );
    ev.echo();
    finish(task).await;
    let pods: Vec<String> = registry.prunes().into_iter().map(|(p, _)| p).collect();
    assert_eq!(pods, ["cache-0", "cache-1"], "a pod not ready is not asked");
    let metrics = ctx.metrics.render();
    assert!(
        metrics
            .contains(r#"imagecache_operator_prune_runs_total{result="failed",dry_run="false"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("imagecache_operator_pruned_manifests_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_missing_cache_is_a_condition_and_a_retry_in_a_minute() {
    let registry = FakeRegistry::new();
    let (ctx, mut server) = mock::context(registry.clone(), "2026-01-02T02:00:00Z");
    let pp_json = policy_json();
    let task = start(policy(pp_json.clone()), &ctx);
    server.expect(Method::GET, IC_PATH).await.not_found();
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    let patch = answer_apply(ex, &pp_json);
    let cond = &patch["status"]["conditions"][0];
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "CacheNotFound");
    assert_eq!(
        cond["message"],
        "ImageCache cache not found in this namespace"
    );
    let ev = server.expect(Method::POST, EVENTS_PATH).await;
    assert_eq!(ev.body["reason"], "CacheNotFound");
    assert_eq!(ev.body["type"], "Warning");
    ev.echo();
    assert_eq!(finish(task).await, Action::requeue(CACHE_RETRY));

    // Still missing: same condition, no new write or event.
    let task = start(applied(pp_json, &patch), &ctx);
    server.expect(Method::GET, IC_PATH).await.not_found();
    assert_eq!(finish(task).await, Action::requeue(CACHE_RETRY));
    assert!(registry.prunes().is_empty());
}

#[tokio::test]
async fn a_failed_in_use_list_stops_the_run_before_any_prune() {
    let registry = FakeRegistry::new();
    registry.set_report("cache-0", Ok(report(&[1], 1)));
    let (ctx, mut server) = mock::context(registry.clone(), "2026-01-02T03:00:00Z");
    let pp_json = policy_json();
    let task = start(policy(pp_json.clone()), &ctx);
    server
        .expect(Method::GET, PP_PATH)
        .await
        .respond(200, pp_json.clone());
    server
        .expect(Method::GET, IC_PATH)
        .await
        .respond(200, cache_json());
    serve_registry_pods(
        &mut server,
        vec![registry_pod("cache-0", "10.0.0.10", true)],
    )
    .await;
    server.expect(Method::GET, "/api/v1/pods").await.respond(
        403,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
               "code": 403, "message": "pods is forbidden"}),
    );
    // The failure lands in the condition of the status as the API server has it (here with
    // a manual run the cached copy did not show yet, which must not be rolled back).
    let mut current = pp_json.clone();
    current["status"]["lastManualRun"] = json!("earlier");
    server
        .expect(Method::GET, PP_PATH)
        .await
        .respond(200, current.clone());
    let ex = server.expect(Method::PATCH, STATUS_PATH).await;
    assert_eq!(ex.body["status"]["lastManualRun"], "earlier");
    assert_eq!(
        ex.body["status"]["lastScheduleTime"],
        "2026-01-01T03:00:00Z"
    );
    let cond = answer_apply(ex, &current)["status"]["conditions"][0].clone();
    assert_eq!(cond["reason"], "KubernetesAPIError");
    assert!(
        registry.prunes().is_empty(),
        "no prune without the in-use set"
    );
    let err = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), "kube");
    assert!(registry.prunes().is_empty());
}
