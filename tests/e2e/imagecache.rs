//! An ImageCache on the real control plane: its children by server-side apply with owner
//! references, the StatefulSet controller's Pods, a status that follows the registry process
//! as it goes and comes back (with an Event per transition), spec changes that converge, the
//! printer columns as kubectl prints them, and the garbage collector removing everything.

use std::time::Duration;

use imagecache::crd::ImageCache;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::fixture::Fixture;
use crate::harness::{WAIT, event_count, events_for, eventually, kubectl, rows, wait_event};

const CACHE: &str = "cache";

/// The condition `type_` of the cache: (status, reason).
async fn condition(caches: &Api<ImageCache>, type_: &str) -> Option<(String, String)> {
    let s = caches.get(CACHE).await.ok()?.status?;
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn wait_condition(caches: &Api<ImageCache>, type_: &str, status: &str, reason: &str) {
    eventually(&format!("{type_}={status} ({reason})"), WAIT, || async {
        (condition(caches, type_).await? == (status.to_owned(), reason.to_owned())).then_some(())
    })
    .await;
}

/// Whether `meta` has a controller owner reference to the ImageCache `uid`, and the operator
/// wrote it with server-side apply.
/// A merge patch of the test's ImageCache, which the apiserver must accept.
async fn patch_cache(caches: &Api<ImageCache>, change: serde_json::Value) {
    caches
        .patch(CACHE, &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap_or_else(|e| panic!("{change}: {e}"));
}

fn owned_and_applied<K: Resource>(obj: &K, uid: &str) -> bool {
    let owned = obj
        .owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true) && o.kind == "ImageCache");
    let applied = obj.meta().managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some("imagecache-operator")
            && m.operation.as_deref() == Some("Apply")
    });
    owned && applied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the test cluster: scripts/test runs it"]
async fn imagecache_lifecycle() {
    let fx = Fixture::new("ic", &["one", "two", "three"]).await;
    let client = fx.client().clone();
    let ns = fx.ns().to_owned();
    let caches = fx.caches();
    let created = fx.create_cache(CACHE, json!({})).await;
    let uid = created.uid().expect("uid");

    // Children, each applied by the operator and owned by the cache.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = eventually("the StatefulSet", WAIT, || async {
        sts_api.get_opt(CACHE).await.ok().flatten()
    })
    .await;
    assert!(owned_and_applied(&sts, &uid), "{:?}", sts.metadata);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for name in [CACHE.to_owned(), format!("{CACHE}-headless")] {
        let svc = services.get(&name).await.expect("Service");
        assert!(owned_and_applied(&svc, &uid), "Service {name}");
    }
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(&format!("{CACHE}-config"))
        .await
        .expect("ConfigMap");
    assert!(owned_and_applied(&cm, &uid));
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&format!("{CACHE}-admin-token"))
        .await
        .expect("Secret");
    assert!(owned_and_applied(&secret, &uid));
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get(&format!("{CACHE}-pdb"))
        .await
        .expect("PodDisruptionBudget");
    assert!(owned_and_applied(&pdb, &uid));

    // The StatefulSet controller makes the Pod; the kubelet runs it; the cache is Ready.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = eventually(
        "Pod cache-0 from the StatefulSet controller",
        WAIT,
        || async { pods.get_opt("cache-0").await.ok().flatten() },
    )
    .await;
    assert!(
        pod.owner_references()
            .iter()
            .any(|o| o.kind == "StatefulSet" && o.name == CACHE),
        "{:?}",
        pod.metadata.owner_references
    );
    let status = fx.ready(CACHE, 1).await;
    assert_eq!(status.replicas, 1);
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("{CACHE}.{ns}.svc:5000").as_str())
    );
    wait_condition(&caches, "Progressing", "False", "RolledOut").await;
    wait_condition(&caches, "Degraded", "False", "Healthy").await;

    // Pulls show in the status and in the printer columns.
    for image in ["one", "two", "three"] {
        fx.pull("cache-0", image);
    }
    let status = eventually("three images in the status", WAIT, || async {
        let s = caches.get(CACHE).await.ok()?.status?;
        (s.images == 3).then_some(s)
    })
    .await;
    let size = status.size.clone().expect("status.size");
    let table = kubectl(&["get", "imagecache", CACHE, "-n", &ns]);
    let row = &rows(&table)[0];
    assert_eq!(row["NAME"], CACHE, "{table}");
    assert_eq!(row["READY"], "True", "{table}");
    assert_eq!(row["IMAGES"], "3", "{table}");
    assert_eq!(row["SIZE"], size, "{table}");
    assert!(size.ends_with("KiB") || size.ends_with("MiB"), "{size}");
    assert_eq!(row["ENDPOINT"], format!("{CACHE}.{ns}.svc:5000"), "{table}");
    assert!(
        row["AGE"].ends_with('s') || row["AGE"].ends_with('m'),
        "{table}"
    );

    // The registry process goes away: the kubelet sees it exit, the Pod turns unready, the
    // cache says so; the kubelet restarts it, the cache is Ready again. An Event for each.
    fx.kubelet.kill_container("cache-0");
    wait_condition(&caches, "Ready", "False", "NoReadyPods").await;
    let row = &rows(&kubectl(&["get", "ic", CACHE, "-n", &ns]))[0];
    assert_eq!(row["READY"], "False");
    wait_condition(&caches, "Ready", "True", "Serving").await;
    assert_eq!(fx.kubelet.restarts("cache-0"), 1);
    let ic = |reason: &'static str, times: i32| {
        let (client, ns) = (client.clone(), ns.clone());
        async move { wait_event(&client, &ns, "ImageCache", CACHE, reason, times).await }
    };
    ic("Created", 1).await;
    ic("NotReady", 1).await;
    ic("Ready", 2).await;

    // The admin API hangs while the Pod still looks ready: Degraded names the Pod.
    let pid = fx.kubelet.pid("cache-0").expect("running");
    signal(pid, "STOP");
    // Any change to a watched object makes the operator look at once; a label on the Pod does.
    pods.patch(
        "cache-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"e2e-poke": "1"}}})),
    )
    .await
    .expect("label the pod");
    wait_condition(&caches, "Degraded", "True", "PodUnreachable").await;
    signal(pid, "CONT");
    wait_condition(&caches, "Degraded", "False", "Healthy").await;
    ic("Degraded", 1).await;
    ic("Recovered", 1).await;
    let events = events_for(&client, &ns, "ImageCache", CACHE).await;
    assert!(
        events
            .iter()
            .any(|e| e.reason == "Degraded" && e.type_ == "Warning" && e.note.contains("cache-0")),
        "{events:?}"
    );

    // Spec changes converge: more replicas, a new tag TTL (a new config: a rolling update),
    // container resources (a new Pod template), a NodePort Service and fewer replicas.
    // observedGeneration follows each.
    for (change, replicas) in [
        (json!({"spec": {"replicas": 2}}), 2),
        (json!({"spec": {"tagTTL": "1h"}}), 2),
        (
            json!({"spec": {"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}}),
            2,
        ),
        (
            json!({"spec": {"service": {"type": "NodePort"}, "replicas": 1}}),
            1,
        ),
    ] {
        let before = caches.get(CACHE).await.expect("cache");
        patch_cache(&caches, change).await;
        let after = caches.get(CACHE).await.expect("cache");
        assert!(after.metadata.generation > before.metadata.generation);
        let status = fx.ready(CACHE, replicas).await;
        assert_eq!(status.observed_generation, after.metadata.generation);
        wait_condition(&caches, "Progressing", "False", "RolledOut").await;
    }
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(&format!("{CACHE}-config"))
        .await
        .expect("ConfigMap");
    assert!(cm.data.expect("data")["config.yaml"].contains("tagTTL: 1h"));
    let svc = services.get(CACHE).await.expect("client Service");
    assert_eq!(svc.spec.and_then(|s| s.type_).as_deref(), Some("NodePort"));
    let pod = pods.get("cache-0").await.expect("cache-0");
    let requests = pod.spec.expect("spec").containers[0]
        .resources
        .clone()
        .and_then(|r| r.requests)
        .unwrap_or_default();
    assert_eq!(requests.get("memory").map(|q| q.0.as_str()), Some("32Mi"));
    // One rollout per change, each begun and ended with an Event (the first RolledOut came
    // with the cache's creation).
    ic("RollingOut", 4).await;
    ic("RolledOut", 5).await;
    assert!(event_count(&client, &ns, "ImageCache", CACHE, "RollingOut").await >= 4);

    // Node mirroring on: the node-config DaemonSet appears, owned by the cache; off: it goes.
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), &ns);
    let ds_name = format!("{CACHE}-node-config");
    patch_cache(&caches, json!({"spec": {"nodeMirror": {"enabled": true}}})).await;
    let ds = eventually("the node-config DaemonSet", WAIT, || async {
        daemonsets.get_opt(&ds_name).await.ok().flatten()
    })
    .await;
    assert!(owned_and_applied(&ds, &uid));
    ic("NodeMirrorEnabled", 1).await;
    patch_cache(&caches, json!({"spec": {"nodeMirror": {"enabled": false}}})).await;
    eventually("the node-config DaemonSet to go", WAIT, || async {
        daemonsets
            .get_opt(&ds_name)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    ic("NodeMirrorDisabled", 1).await;
    // The storage cannot change (volume claims are immutable): refused at admission, so no
    // reconcile is left stuck on a 422.
    let err = caches
        .patch(
            CACHE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storage": {"emptyDir": null, "size": "5Gi"}}})),
        )
        .await
        .expect_err("a storage change is refused");
    assert!(err.to_string().contains("spec.storage"), "{err}");

    // Deleting the ImageCache: the garbage collector removes every child, Pods included.
    caches
        .delete(CACHE, &DeleteParams::background())
        .await
        .expect("delete the cache");
    let selector = format!("app.kubernetes.io/instance={CACHE}");
    let lp = ListParams::default().labels(&selector);
    eventually("every child to be collected", WAIT, || async {
        let left = sts_api.list(&lp).await.ok()?.items.len()
            + services.list(&lp).await.ok()?.items.len()
            + Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .list(&lp)
                .await
                .ok()?
                .items
                .len()
            + Api::<Secret>::namespaced(client.clone(), &ns)
                .list(&lp)
                .await
                .ok()?
                .items
                .len()
            + Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
                .list(&lp)
                .await
                .ok()?
                .items
                .len()
            + pods.list(&lp).await.ok()?.items.len();
        (left == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        sts_api.get_opt(CACHE).await.expect("get").is_none(),
        "the operator does not bring a deleted cache's children back"
    );
    fx.finish().await;
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}
