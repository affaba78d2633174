//! An ImageCache with two replicas is one cache: the operator gives its pods `peerDiscovery`
//! (the headless Service, which lists only ready pods), the replicas find each other through
//! it (the stand-in kubelet answers the Service's name from its EndpointSlices, as cluster DNS
//! would), and a pull through one replica and then through the other fetches each blob from
//! the upstream once.

use std::collections::BTreeMap;

use imagecache::config::Config;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::Api;
use serde_json::json;

use crate::fixture::Fixture;
use crate::harness::{WAIT, eventually};

const CACHE: &str = "pair";

/// A family's value in a pod's `/metrics`.
async fn metric(fx: &Fixture, token: &str, pod: &str, name: &str) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", fx.kubelet.admin_url(pod)))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(crate::support::metric_sum(&text, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the test cluster: scripts/test runs it"]
async fn two_replicas_fetch_each_blob_upstream_once() {
    let fx = Fixture::new("peers", &["one", "two"]).await;
    let ns = fx.ns().to_owned();
    fx.create_cache(CACHE, json!({"replicas": 2})).await;

    // The operator configures peerDiscovery: the headless Service, ready pods only.
    let maps = Api::<ConfigMap>::namespaced(fx.client().clone(), &ns);
    let cm = eventually("the ConfigMap", WAIT, || async {
        maps.get_opt(&format!("{CACHE}-config"))
            .await
            .ok()
            .flatten()
    })
    .await;
    let yaml = cm.data.expect("data")["config.yaml"].clone();
    let config = Config::from_yaml(&yaml).expect("the registry config");
    let discovery = config
        .peer_discovery
        .expect("peerDiscovery with replicas: 2");
    assert_eq!(discovery.name, format!("{CACHE}-headless.{ns}.svc"));
    let headless = Api::<Service>::namespaced(fx.client().clone(), &ns)
        .get(&format!("{CACHE}-headless"))
        .await
        .expect("headless Service");
    let spec = headless.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_ne!(spec.publish_not_ready_addresses, Some(true));

    fx.ready(CACHE, 2).await;
    let token = fx.admin_token(CACHE).await;
    let pods = [format!("{CACHE}-0"), format!("{CACHE}-1")];
    // Each replica sees the other live, found through the Service's name.
    for pod in &pods {
        eventually(&format!("{pod} sees one live peer"), WAIT, || async {
            (metric(&fx, &token, pod, "imagecache_peers{state=\"live\"}").await? == 1.0)
                .then_some(())
        })
        .await;
    }

    // One image through each replica, then each through the other.
    fx.pull(&pods[0], "one");
    fx.pull(&pods[1], "two");
    fx.pull(&pods[1], "one");
    fx.pull(&pods[0], "two");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let blobs: BTreeMap<String, usize> = fx.upstream.blob_gets_by_digest();
    assert!(!blobs.is_empty());
    for (digest, n) in &blobs {
        assert_eq!(
            *n, 1,
            "{digest} fetched {n} times from the upstream: {blobs:?}"
        );
    }
    let mut from_peers = 0.0;
    for pod in &pods {
        from_peers += metric(
            &fx,
            &token,
            pod,
            "imagecache_served_requests_total{kind=\"blob\",source=\"peer\"}",
        )
        .await
        .expect("metrics");
    }
    assert!(from_peers > 0.0, "no blob came from a peer");
    fx.finish().await;
}
