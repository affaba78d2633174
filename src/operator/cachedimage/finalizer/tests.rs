use axum::http::Method;
use serde_json::{Value, json};

use super::*;
use crate::api::Report;
use crate::digest::Digest;
use crate::operator::MANAGER;
use crate::operator::mock::{self, ApiServer, FakeRegistry};

const NOW: &str = "2026-01-01T00:00:00Z";
const PATH: &str = "/apis/imagecache.io/v1alpha1/namespaces/ns/cachedimages/mirror-sha256-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn digest() -> Digest {
    format!("sha256:{}", "a".repeat(64)).parse().unwrap()
}

fn cimg(finalizers: &[&str], deleting: bool) -> Arc<CachedImage> {
    let mut v = json!({
        "apiVersion": "imagecache.io/v1alpha1", "kind": "CachedImage",
        "metadata": {
            "name": format!("mirror-sha256-{}", "a".repeat(64)),
            "namespace": "ns", "uid": "cimg-uid", "generation": 3,
            "ownerReferences": [{"apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
                "name": "mirror", "uid": "ic-uid", "controller": true}],
        },
        "spec": {"cacheRef": {"name": "mirror"}, "digest": digest().to_string(),
            "reference": "docker.io/library/x", "mediaType": "application/vnd.oci.image.manifest.v1+json"}
    });
    if !finalizers.is_empty() {
        v["metadata"]["finalizers"] = json!(finalizers);
    }
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    Arc::new(serde_json::from_value(v).unwrap())
}

fn image_cache() -> Value {
    json!({
        "apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
        "metadata": {"name": "mirror", "namespace": "ns", "uid": "ic-uid"},
        "spec": {}
    })
}

fn pod(name: &str, ip: &str, ready: bool) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"containers": [{"name": "registry"}]},
        "status": {"podIP": ip, "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn report() -> Report {
    serde_json::from_value(json!({
        "dryRun": false, "items": [], "totals": {"manifests": 1, "blobs": 2, "bytes": 300},
        "protected": {}, "kept": {}, "blobs": [], "started": NOW, "durationMs": 4
    }))
    .unwrap()
}

/// Answers the cache lookup and `pods::list` (its token Secret, then its pods).
async fn answer_cache_and_pods(server: &mut ApiServer) {
    server
        .expect(
            Method::GET,
            "/apis/imagecache.io/v1alpha1/namespaces/ns/imagecaches/mirror",
        )
        .await
        .respond(200, image_cache());
    server
        .expect(
            Method::GET,
            "/api/v1/namespaces/ns/secrets/mirror-admin-token",
        )
        .await
        .respond(
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mirror-admin-token"},
                "data": {"token": "dG9r"}}),
        );
    let pods = server
        .expect(Method::GET, "/api/v1/namespaces/ns/pods")
        .await;
    assert_eq!(
        pods.query("labelSelector").as_deref(),
        Some(
            "app.kubernetes.io/component=registry,app.kubernetes.io/instance=mirror,app.kubernetes.io/name=imagecache"
        )
    );
    pods.respond(
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod("mirror-0", "10.0.0.1", true),
            pod("mirror-1", "10.0.0.2", true),
            pod("mirror-2", "10.0.0.3", false),
        ]}),
    );
}

/// Expects the finalizer helper's JSON patch removing the finalizer, and answers it.
async fn answer_release(server: &mut ApiServer) {
    let ex = server.expect(Method::PATCH, PATH).await;
    assert_eq!(
        ex.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    let mut released = serde_json::to_value(&*cimg(&[], true)).unwrap();
    released["metadata"]["finalizers"] = json!([]);
    ex.respond(200, released);
}

#[tokio::test]
async fn the_finalizer_is_added_with_a_json_patch() {
    let registry = FakeRegistry::new();
    let (ctx, mut server) = mock::context(registry.clone(), NOW);
    let task = tokio::spawn(reconcile(cimg(&[], false), ctx.clone()));
    let ex = server.expect(Method::PATCH, PATH).await;
    assert_eq!(
        ex.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
    ex.respond(
        200,
        serde_json::to_value(&*cimg(&[FINALIZER], false)).unwrap(),
    );
    let action = task.await.unwrap().unwrap();
    assert_eq!(action, Action::await_change());
    assert!(registry.prunes().is_empty());

    // With the finalizer in place, nothing more is done.
    let task = tokio::spawn(reconcile(cimg(&[FINALIZER], false), ctx));
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    server
        .expect_silence(std::time::Duration::from_millis(100))
        .await;
}

#[tokio::test]
async fn deletion_prunes_the_digest_on_each_ready_pod_then_releases() {
    let registry = FakeRegistry::new();
    registry.set_report("mirror-0", Ok(report()));
    registry.set_report("mirror-1", Ok(report()));
    registry.set_report("mirror-2", Err("must not be asked: not ready".into()));
    let (ctx, mut server) = mock::context(registry.clone(), NOW);
    let task = tokio::spawn(reconcile(cimg(&[FINALIZER], true), ctx));
    answer_cache_and_pods(&mut server).await;
    answer_release(&mut server).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    let want = PruneRequest::delete(vec![digest()]);
    assert_eq!(
        registry.prunes(),
        vec![
            ("mirror-0".to_owned(), want.clone()),
            ("mirror-1".to_owned(), want)
        ]
    );
}

#[tokio::test]
async fn a_failing_pod_keeps_the_finalizer_and_sets_a_condition() {
    let registry = FakeRegistry::new();
    registry.set_report("mirror-0", Ok(report()));
    registry.set_report("mirror-1", Err("disk on fire".into()));
    let (ctx, mut server) = mock::context(registry.clone(), NOW);
    let obj = cimg(&[FINALIZER], true);
    let task = tokio::spawn(reconcile(obj.clone(), ctx.clone()));
    answer_cache_and_pods(&mut server).await;
    let status = server
        .expect(Method::PATCH, &format!("{PATH}/status"))
        .await;
    assert_eq!(status.query("fieldManager").as_deref(), Some(MANAGER));
    assert_eq!(status.query("force").as_deref(), Some("true"));
    let cond = &status.body["status"]["conditions"][0];
    assert_eq!(status.body["kind"], "CachedImage");
    assert_eq!(cond["type"], PRUNED);
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "RegistryUnreachable");
    assert_eq!(cond["observedGeneration"], 3);
    assert_eq!(cond["lastTransitionTime"], NOW);
    assert!(
        cond["message"].as_str().unwrap().contains("mirror-1")
            && cond["message"].as_str().unwrap().contains("disk on fire"),
        "{cond}"
    );
    status.echo();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, OperatorError::Registry { pod, .. } if pod == "mirror-1"),
        "{err:?}"
    );
    // No finalizer removal: the object stays.
    server
        .expect_silence(std::time::Duration::from_millis(100))
        .await;
    assert_eq!(registry.prunes().len(), 2, "the healthy pod was pruned too");
    // The controller retries with backoff.
    let action = error_policy(obj, &err, ctx);
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
}

#[tokio::test]
async fn a_refused_prune_counts_as_a_failure() {
    let registry = FakeRegistry::new();
    let mut refused = report();
    refused.refused = Some("another prune is running".into());
    registry.set_report("mirror-0", Ok(refused));
    registry.set_report("mirror-1", Ok(report()));
    let (ctx, mut server) = mock::context(registry.clone(), NOW);
    let task = tokio::spawn(reconcile(cimg(&[FINALIZER], true), ctx));
    answer_cache_and_pods(&mut server).await;
    server
        .expect(Method::PATCH, &format!("{PATH}/status"))
        .await
        .echo();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("another prune is running"),
        "{err}"
    );
}

#[tokio::test]
async fn every_failing_pod_is_named_and_api_errors_are_recorded_too() {
    let registry = FakeRegistry::new();
    registry.set_report("mirror-0", Err("disk on fire".into()));
    // mirror-1 has no answer at all: connection refused.
    let (ctx, mut server) = mock::context(registry.clone(), NOW);
    let task = tokio::spawn(reconcile(cimg(&[FINALIZER], true), ctx.clone()));
    answer_cache_and_pods(&mut server).await;
    let status = server
        .expect(Method::PATCH, &format!("{PATH}/status"))
        .await;
    status.echo();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, OperatorError::Registry { pod, message }
            if pod == "mirror-0, mirror-1" && message.contains("disk on fire")
                && message.contains("connection refused")),
        "{err:?}"
    );

    // The cache cannot be read: the error is recorded as well.
    let task = tokio::spawn(reconcile(cimg(&[FINALIZER], true), ctx));
    server
        .expect(
            Method::GET,
            "/apis/imagecache.io/v1alpha1/namespaces/ns/imagecaches/mirror",
        )
        .await
        .respond(
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Forbidden", "code": 403, "message": "forbidden"}),
        );
    let status = server
        .expect(Method::PATCH, &format!("{PATH}/status"))
        .await;
    assert_eq!(
        status.body["status"]["conditions"][0]["reason"],
        "KubernetesAPIError"
    );
    status.echo();
    assert!(matches!(task.await.unwrap(), Err(OperatorError::Kube(_))));
}

#[tokio::test]
async fn a_missing_cache_releases_at_once() {
    let registry = FakeRegistry::new();
    let (ctx, mut server) = mock::context(registry.clone(), NOW);
    let task = tokio::spawn(reconcile(cimg(&[FINALIZER], true), ctx));
    server
        .expect(
            Method::GET,
            "/apis/imagecache.io/v1alpha1/namespaces/ns/imagecaches/mirror",
        )
        .await
        .not_found();
    answer_release(&mut server).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert!(registry.prunes().is_empty());
}

#[tokio::test]
async fn a_replaced_cache_releases_at_once() {
    let registry = FakeRegistry::new();
    let (ctx, mut server) = mock::context(registry.clone(), NOW);
    let task = tokio::spawn(reconcile(cimg(&[FINALIZER], true), ctx));
    let mut newer = image_cache();
    newer["metadata"]["uid"] = json!("another-uid");
    server
        .expect(
            Method::GET,
            "/apis/imagecache.io/v1alpha1/namespaces/ns/imagecaches/mirror",
        )
        .await
        .respond(200, newer);
    answer_release(&mut server).await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    assert!(registry.prunes().is_empty());
}
