//! `helm install` on the real node, then every claim of the product in the order a cluster
//! lives them: the mirror comes up (operator leading, two registry Pods on their claims, the
//! node's hosts.toml written) without depending on itself; a workload's image is pulled by the
//! node's containerd through the mirror, and again from the mirror's cache alone; the two
//! replicas are one cache (they find each other through the cluster DNS, and an image pulled
//! through both costs one upstream fetch per blob); a PrunePolicy
//! spares the running workload's image and prunes it once the workload is gone; the operator
//! survives SIGKILL without running a prune twice; with the registry Pods gone the node falls
//! back to the upstream within seconds; `helm uninstall` takes it all away.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use imagecache::config::Config;
use imagecache::crd::{CachedImage, ImageCache, PrunePolicy, PrunePolicyStatus};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::harness::{
    self, TestNs, create_prune_policy, eventually, helm, kubectl, kubectl_output, path_str,
    policy_status, run_now,
};
use crate::images;
use crate::node::Node;
use crate::support::Distribution;
use crate::support::distribution::{Access, Secure};
use crate::support::oci::Built;
use crate::support::ok;
use crate::support::{metric_sum, sha256_digest};

/// How long the node gets for Pods, pulls and rollouts.
const WAIT: Duration = Duration::from_secs(180);
/// Payload of each workload image: big enough that its bytes show in every counter.
const PAYLOAD: usize = 3 << 20;
const CA_SECRET: &str = "upstream-ca";
/// The containerd namespace of the suite's timing pulls (never the kubelet's `k8s.io`).
const FALLBACK_NS: &str = "e2e-fallback";
/// Pulls timed each way (with and without the mirror in front of the upstream).
const TIMING_ROUNDS: usize = 3;

/// Everything the phases share.
struct World {
    client: Client,
    node: Node,
    ns: String,
    release: String,
    mirror: String,
    upstream: Distribution,
    /// `host:port` of the upstream: the registry the images are named in.
    registry: String,
}

impl World {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn image(&self, repo: &str) -> String {
        format!("{}/e2e/{repo}:1", self.registry)
    }

    fn registry_selector(&self) -> String {
        format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=registry",
            self.mirror
        )
    }

    fn operator_selector(&self) -> String {
        format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/component=operator",
            self.release
        )
    }

    async fn list_pods(&self, selector: &str) -> Vec<Pod> {
        self.pods()
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list pods")
            .items
    }

    /// The registry Pods that are Ready, with their IPs.
    async fn ready_registry_pods(&self) -> Vec<(String, String)> {
        self.list_pods(&self.registry_selector())
            .await
            .into_iter()
            .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                Some((p.name_any(), ip))
            })
            .collect()
    }

    /// Sum over the Ready registry Pods of a metric's samples whose line contains `filter`.
    async fn registry_metric(&self, name: &str, filter: &str) -> f64 {
        self.registry_metric_by_pod(name, filter)
            .await
            .values()
            .sum()
    }

    /// Per Ready registry Pod, the sum of a metric's samples whose line contains `filter`.
    async fn registry_metric_by_pod(&self, name: &str, filter: &str) -> BTreeMap<String, f64> {
        let mut by_pod = BTreeMap::new();
        for (pod, ip) in self.ready_registry_pods().await {
            let text = self
                .node
                .http_get(&format!("http://{ip}:8081/metrics"))
                .unwrap_or_else(|| panic!("metrics of {pod}"));
            let lines: String = text
                .lines()
                .filter(|l| l.contains(filter))
                .map(|l| format!("{l}\n"))
                .collect();
            by_pod.insert(pod, metric_sum(&lines, name));
        }
        by_pod
    }

    /// The registry Pod the client Service sends `source`'s connections to (ClientIP affinity):
    /// the one whose tag-list requests went up by one for a tag list asked from `source`
    /// (clients ask for tag lists, peers never do).
    async fn replica_for(&self, source: &str, base: &str) -> String {
        let count =
            || self.registry_metric_by_pod("imagecache_http_requests_total", "endpoint=\"tags\"");
        let before = count().await;
        self.node.get_from(
            source,
            &format!("{base}/v2/e2e/peers/tags/list"),
            "application/json",
        );
        let after = count().await;
        let moved: Vec<&String> = after
            .iter()
            .filter(|(pod, n)| **n == before.get(*pod).copied().unwrap_or(0.0) + 1.0)
            .map(|(pod, _)| pod)
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "one replica answered: {before:?} -> {after:?}"
        );
        moved[0].clone()
    }

    /// Pulls `image` (pushed as `e2e/peers`) through `base` from `source` as a registry client
    /// does, every digest checked; returns the bytes of its blobs.
    fn pull_from(&self, source: &str, base: &str, image: &Built) -> u64 {
        let manifest = self.node.get_from(
            source,
            &format!("{base}/v2/e2e/peers/manifests/1"),
            "application/vnd.oci.image.manifest.v1+json",
        );
        assert_eq!(sha256_digest(&manifest), image.manifest_digest);
        let manifest: Value = serde_json::from_slice(&manifest).expect("manifest JSON");
        let digests = std::iter::once(&manifest["config"])
            .chain(manifest["layers"].as_array().expect("layers"))
            .map(|d| d["digest"].as_str().expect("digest").to_owned());
        let mut bytes = 0;
        for digest in digests {
            let blob = self.node.get_from(
                source,
                &format!("{base}/v2/e2e/peers/blobs/{digest}"),
                "*/*",
            );
            assert_eq!(sha256_digest(&blob), digest, "blob {digest} from {source}");
            bytes += blob.len() as u64;
        }
        bytes
    }

    /// The upstream's access log from entry `from` on.
    fn upstream_log_since(&self, from: usize) -> Vec<Access> {
        self.upstream.access_log().into_iter().skip(from).collect()
    }

    async fn run_pod(&self, name: &str, image: &str, tolerate_cordon: bool) -> Pod {
        let mut spec = json!({
            "containers": [{"name": "app", "image": image}],
            "terminationGracePeriodSeconds": 5,
        });
        if tolerate_cordon {
            spec["tolerations"] = json!([{"key": "node.kubernetes.io/unschedulable",
                "operator": "Exists", "effect": "NoSchedule"}]);
        }
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec,
        }))
        .expect("pod");
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
        let pods = self.pods();
        eventually(&format!("Pod {name} Running"), WAIT, || async {
            let p = pods.get(name).await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        })
        .await
    }

    fn delete_registry_pods(&self) {
        kubectl(&[
            "delete",
            "pod",
            "-n",
            &self.ns,
            "-l",
            &self.registry_selector(),
            "--wait",
        ]);
    }

    async fn delete_pod(&self, name: &str) {
        kubectl(&["delete", "pod", "-n", &self.ns, name, "--wait"]);
    }

    /// The kubelet's `Pulled` event of a Pod.
    async fn pulled_event(&self, pod: &str) -> String {
        let client = self.client.clone();
        let ns = self.ns.clone();
        eventually(&format!("the Pulled event of {pod}"), WAIT, || async {
            harness::events_for(&client, &ns, "Pod", pod)
                .await
                .into_iter()
                .find(|e| e.reason == "Pulled")
                .map(|e| e.note)
        })
        .await
    }

    async fn cached_images(&self) -> Vec<CachedImage> {
        Api::<CachedImage>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("list CachedImages")
            .items
    }

    async fn cached_image_of(&self, digest: &str) -> Option<CachedImage> {
        self.cached_images()
            .await
            .into_iter()
            .find(|c| c.spec.digest.to_string() == digest)
    }

    async fn wait_mirror_ready(&self, replicas: i32) {
        let caches: Api<ImageCache> = Api::namespaced(self.client.clone(), &self.ns);
        eventually(
            &format!(
                "ImageCache {} Ready with {replicas} ready replicas",
                self.mirror
            ),
            WAIT,
            || async {
                let s = caches.get(&self.mirror).await.ok()?.status?;
                let ready = s
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                (ready && s.ready_replicas == replicas).then_some(())
            },
        )
        .await;
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn blob_gets<'a>(log: &'a [Access], digest: &str) -> Vec<&'a Access> {
    log.iter()
        .filter(|a| a.method == "GET" && a.path.contains(&format!("/blobs/{digest}")))
        .collect()
}

fn blob_bytes(log: &[Access]) -> u64 {
    log.iter()
        .filter(|a| a.method == "GET" && a.path.contains("/blobs/"))
        .map(|a| a.size)
        .sum()
}

/// The layer digest of a one-layer workload image.
fn layer_of(image: &Built) -> String {
    let manifest = std::fs::read(
        image
            .layout
            .join("blobs/sha256")
            .join(&image.manifest_digest["sha256:".len()..]),
    )
    .expect("manifest");
    let v: Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    v["layers"][0]["digest"].as_str().expect("layer").to_owned()
}

/// Waits for the manual run answering `value` to complete.
async fn manual_run(api: &Api<PrunePolicy>, name: &str, value: &str) -> PrunePolicyStatus {
    run_now(api, name, value).await;
    eventually(&format!("run {value} of {name}"), WAIT, || async {
        let s = policy_status(api, name).await?;
        (s.last_manual_run.as_deref() == Some(value)
            && s.last_run.as_ref()?.completion_time.is_some())
        .then_some(s)
    })
    .await
}

/// Cluster-scoped objects of releases whose namespace is gone (a killed earlier run).
fn sweep_stale_release_objects() {
    let out = kubectl(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        "app.kubernetes.io/part-of=imagecache,app.kubernetes.io/managed-by=Helm",
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).expect("JSON");
    for item in list["items"].as_array().into_iter().flatten() {
        let ns = item["metadata"]["annotations"]["meta.helm.sh/release-namespace"]
            .as_str()
            .unwrap_or_default();
        let gone = !kubectl_output(&["get", "namespace", ns], None)
            .status
            .success();
        if !ns.is_empty() && gone {
            let kind = item["kind"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            eprintln!("deleting {kind} {name} left by an earlier run");
            kubectl(&["delete", &kind, name, "--ignore-not-found"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the test cluster with its node: scripts/test runs it"]
async fn helm_install_gives_a_mirror_the_node_pulls_through() {
    let env = harness::exclusive().await;
    let node = Node::load();
    let client = env.client.clone();
    let work = harness::workdir("node");
    sweep_stale_release_objects();
    let ns = TestNs::create(&client, "node").await;
    let release = format!("imagecache-{}", std::process::id());
    let mirror = format!("{release}-mirror");

    // --- images: the project's (imported), workloads' (upstream only) ----------------------
    let (repository, tag) = images::import_project_image(&node, work.path());
    let upstream = Distribution::start_secure_on(
        node.host_addr(),
        &Secure {
            cert: Some(node.fact("UPSTREAM_CERT").into()),
            key: Some(node.fact("UPSTREAM_KEY").into()),
            ..Secure::default()
        },
    );
    let registry = upstream.addr();
    // Content new to the node on every run (seeded by the run): an image the node's containerd
    // kept from an earlier run would be pulled without a byte crossing the network.
    let run_seed = u64::from(std::process::id()) << 8;
    let mut workloads: BTreeMap<&str, Built> = BTreeMap::new();
    for (seed, repo) in ["app", "peers", "outage", "timing-fallback", "timing-direct"]
        .into_iter()
        .enumerate()
    {
        let image = images::workload_image(
            &node,
            &work.path().join(format!("image-{repo}")),
            run_seed | seed as u64,
            PAYLOAD,
        );
        images::push(&image, &registry, &format!("e2e/{repo}"));
        workloads.insert(repo, image);
    }
    let w = World {
        client: client.clone(),
        node,
        ns: ns.name.clone(),
        release: release.clone(),
        mirror: mirror.clone(),
        upstream,
        registry: registry.clone(),
    };
    // Nothing of the cluster's networks is on this machine: Pod and Service addresses exist
    // only in the node's namespaces; the upstream listens on the host end of the node's link.
    let routes = ok(
        "ip route",
        &std::process::Command::new("ip")
            .args(["-o", "route"])
            .output()
            .expect("ip"),
    );
    let addrs = ok(
        "ip addr",
        &std::process::Command::new("ip")
            .args(["-o", "addr"])
            .output()
            .expect("ip"),
    );
    for prefix in [" 10.244.", " 10.96."] {
        assert!(
            !format!(" {routes}{addrs}").contains(prefix),
            "{prefix} on this machine:\n{routes}{addrs}"
        );
    }
    assert!(
        addrs.contains(&format!("inet {}/30", w.node.host_addr())),
        "{addrs}"
    );

    // --- helm install ------------------------------------------------------------------------
    let ca = std::fs::read(w.node.fact("REGISTRY_CA")).expect("registry CA");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": CA_SECRET},
        "data": {"ca.crt": k8s_openapi::ByteString(ca)},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &w.ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the CA Secret");
    let values = json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "operator": {"minUpdateInterval": "1s"},
        "mirror": {
            "replicas": 2,
            "storage": {"size": "1Gi"},
            "defaultRegistry": registry,
            "upstreams": [{"name": registry, "endpoint": format!("https://{registry}"),
                "caSecretRef": {"name": CA_SECRET, "key": "ca.crt"}}],
        },
    });
    let values_file = work.path().join("values.json");
    std::fs::write(&values_file, values.to_string()).expect("values");
    let helm_home = work.path().join("helm");
    let installed_at = Instant::now();
    helm(
        &helm_home,
        &[
            "install",
            &release,
            path_str(&harness::root().join("charts/imagecache")),
            "-n",
            &w.ns,
            "-f",
            path_str(&values_file),
        ],
    );

    // The operator Pod runs and leads.
    let operator = eventually("the operator Pod Ready", WAIT, || async {
        w.list_pods(&w.operator_selector())
            .await
            .into_iter()
            .find(is_ready)
    })
    .await;
    let operator_name = operator.name_any();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &w.ns);
    let lease_name = format!("{release}-operator");
    eventually("the operator Pod to hold the Lease", WAIT, || async {
        let holder = leases.get(&lease_name).await.ok()?.spec?.holder_identity?;
        (holder == operator_name).then_some(())
    })
    .await;
    let operator_ip = operator
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");
    let leads = |ip: String| {
        let node = &w.node;
        async move {
            node.http_get(&format!("http://{ip}:8080/metrics"))
                .is_some_and(|m| metric_sum(&m, "imagecache_operator_leader") == 1.0)
        }
    };
    assert!(
        leads(operator_ip.clone()).await,
        "the operator's metrics say it leads"
    );

    // The ImageCache is Ready with two registry Pods on their claims.
    w.wait_mirror_ready(2).await;
    let ready_after = installed_at.elapsed();
    let registry_pods = w.list_pods(&w.registry_selector()).await;
    assert_eq!(registry_pods.len(), 2);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &w.ns);
    for pod in &registry_pods {
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some(w.node.name()));
        let claim = format!("data-{}", pod.name_any());
        let pvc = pvcs.get(&claim).await.expect("the Pod's claim");
        let status = pvc.status.as_ref().and_then(|s| s.phase.clone());
        let volume = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        assert_eq!(status.as_deref(), Some("Bound"), "{claim}");
        assert!(
            volume.starts_with(&format!("{}-pv-", w.node.name())),
            "{claim} on {volume}"
        );
        eprintln!(
            "registry Pod {} on {}: claim {claim} bound to {volume}",
            pod.name_any(),
            w.node.name()
        );
    }

    // The node-config DaemonSet runs, and the node's hosts directory holds its hosts.toml,
    // pointing containerd at the client Service's ClusterIP, the upstream as the fallback.
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &w.ns);
    eventually(
        "the node-config DaemonSet Ready on the node",
        WAIT,
        || async {
            let ds = daemonsets
                .get(&format!("{mirror}-node-config"))
                .await
                .ok()?;
            (ds.status?.number_ready == 1).then_some(())
        },
    )
    .await;
    let service: Service = Api::namespaced(client.clone(), &w.ns)
        .get(&mirror)
        .await
        .expect("client Service");
    let cluster_ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("ClusterIP");
    assert!(cluster_ip.starts_with("10.96."), "{cluster_ip}");
    let hosts_toml = w.node.hosts_dir().join(&registry).join("hosts.toml");
    let hosts = eventually("hosts.toml on the node", WAIT, || async {
        std::fs::read_to_string(&hosts_toml).ok()
    })
    .await;
    assert!(
        hosts.contains(&format!("[host.\"http://{cluster_ip}:5000\"]")),
        "{hosts}"
    );
    assert!(
        hosts.contains(&format!("server = \"https://{registry}\"")),
        "{hosts}"
    );
    eprintln!(
        "helm install: operator {operator_name} leads; {mirror} Ready with 2 Pods {:.0?} after install; \
         {} holds:\n{hosts}",
        ready_after,
        hosts_toml.display()
    );

    // --- no bootstrap deadlock -----------------------------------------------------------------
    // The registry Pods' own image is in a registry the node does not mirror; restarted on a
    // node whose runtime already points at the mirror, they come back without pulling.
    let mirrored: BTreeSet<String> = std::fs::read_dir(w.node.hosts_dir())
        .expect("hosts dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(mirrored, BTreeSet::from([registry.clone()]));
    assert!(!mirrored.contains(images::LOCAL_REGISTRY));
    let restarted = Instant::now();
    w.delete_registry_pods();
    w.wait_mirror_ready(2).await;
    for pod in w.list_pods(&w.registry_selector()).await {
        let events = harness::events_for(&client, &w.ns, "Pod", &pod.name_any()).await;
        assert!(
            events
                .iter()
                .any(|e| e.reason == "Pulled" && e.note.contains("already present")),
            "{}: {events:?}",
            pod.name_any()
        );
    }
    eprintln!(
        "bootstrap: both registry Pods deleted with hosts.toml in place, Ready again in {:.0?} \
         (their image {repository}:{tag} is not mirrored: already present on the node)",
        restarted.elapsed()
    );

    // --- a workload's image through the mirror ------------------------------------------------
    let app = &workloads["app"];
    let app_layer = layer_of(app);
    let app_image = w.image("app");
    let log_mark = w.upstream.access_log().len();
    let fetched_before = w
        .registry_metric("imagecache_upstream_bytes_total", "blob")
        .await;
    let served_before = w
        .registry_metric("imagecache_served_bytes_total", "blob")
        .await;
    w.run_pod("app", &app_image, false).await;
    let pulled = w.pulled_event("app").await;
    let log = w.upstream_log_since(log_mark);
    let through_mirror = blob_gets(&log, &app_layer);
    assert!(
        !through_mirror.is_empty(),
        "the upstream served the layer: {log:?}"
    );
    assert!(
        through_mirror
            .iter()
            .all(|a| a.user_agent.starts_with("imagecache/")),
        "only the mirror fetched it from the upstream: {through_mirror:?}"
    );
    assert!(
        !log.iter().any(|a| a.user_agent.starts_with("containerd")),
        "the node's containerd never asked the upstream: {log:?}"
    );
    let fetched = w
        .registry_metric("imagecache_upstream_bytes_total", "blob")
        .await
        - fetched_before;
    let served = w
        .registry_metric("imagecache_served_bytes_total", "blob")
        .await
        - served_before;
    assert!(
        fetched >= app.layer_size as f64,
        "{fetched} upstream blob bytes"
    );
    assert!(
        served >= app.layer_size as f64,
        "{served} served blob bytes"
    );
    let cached = eventually("a CachedImage of the app image", WAIT, || async {
        w.cached_image_of(&app.manifest_digest).await
    })
    .await;
    eprintln!(
        "pull through the mirror: kubelet: {pulled}; upstream: {} blob bytes in {} GETs, all by \
         {}; mirror: fetched {fetched} and served {served} blob bytes; CachedImage {}",
        blob_bytes(&log),
        log.iter().filter(|a| a.path.contains("/blobs/")).count(),
        through_mirror[0].user_agent,
        cached.name_any()
    );

    // Pulled again after `crictl rmi`: from the mirror's cache, zero bytes from the upstream.
    w.delete_pod("app").await;
    eventually("the app container removed", WAIT, || async {
        let out = ok(
            "crictl ps",
            &w.node.crictl(&["ps", "-a", "-q", "--name", "app"]),
        );
        out.trim().is_empty().then_some(())
    })
    .await;
    ok("crictl rmi", &w.node.crictl(&["rmi", &app_image]));
    assert!(!w.node.images().contains(&app_image));
    assert!(
        !w.node.content_digests().contains(&app_layer),
        "the layer left the node"
    );
    let log_mark = w.upstream.access_log().len();
    let served_before = w
        .registry_metric("imagecache_served_bytes_total", "blob")
        .await;
    let fetched_before = w
        .registry_metric("imagecache_upstream_bytes_total", "blob")
        .await;
    ok("crictl pull", &w.node.crictl(&["pull", &app_image]));
    let log = w.upstream_log_since(log_mark);
    let served = w
        .registry_metric("imagecache_served_bytes_total", "blob")
        .await
        - served_before;
    let fetched = w
        .registry_metric("imagecache_upstream_bytes_total", "blob")
        .await
        - fetched_before;
    assert_eq!(blob_bytes(&log), 0, "the upstream served no blob: {log:?}");
    assert_eq!(fetched, 0.0);
    assert!(
        served >= app.layer_size as f64,
        "the mirror served the layer: {served}"
    );
    assert!(w.node.content_digests().contains(&app_layer));
    eprintln!(
        "pulled again after crictl rmi: the mirror served {served} blob bytes, the upstream 0 \
         ({} requests, {} blob GETs)",
        log.len(),
        blob_gets(&log, &app_layer).len()
    );

    // --- two replicas, one cache --------------------------------------------------------------
    // With two replicas the operator gives the registry Pods `peerDiscovery`: the headless
    // Service's name, which the cluster DNS (CoreDNS on the node's link) answers with the Ready
    // Pods. Each finds the other through it.
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), &w.ns)
        .get(&format!("{mirror}-config"))
        .await
        .expect("the registry ConfigMap");
    let config = Config::from_yaml(&config_map.data.expect("data")["config.yaml"])
        .expect("the registry config");
    assert_eq!(
        config.peer_discovery.map(|d| d.name),
        Some(format!("{mirror}-headless.{}.svc", w.ns))
    );
    for (pod, ip) in w.ready_registry_pods().await {
        let node = &w.node;
        eventually(&format!("{pod} to see one live peer"), WAIT, || async {
            let text = node.http_get(&format!("http://{ip}:8081/metrics"))?;
            (metric_sum(&text, "imagecache_peers{state=\"live\"}") == 1.0).then_some(())
        })
        .await;
    }
    // The client Service keeps a client on one replica (ClientIP affinity): the node's
    // containerd (whose connections leave from the node's address) pulls through one replica,
    // then a client at a second address inside the node, one the Service sends to the other
    // replica, pulls the same image.
    let peers_image = &workloads["peers"];
    let base = format!("http://{cluster_ip}:5000");
    let node_addr = w.node.fact("NODE_ADDR").to_owned();
    let first = w.replica_for(&node_addr, &base).await;
    let mut second = None;
    let mut sources = Vec::new();
    for i in 1..=32 {
        let source = format!("192.0.2.{i}");
        w.node.source_address(&source, true);
        sources.push(source.clone());
        let replica = w.replica_for(&source, &base).await;
        if replica != first {
            second = Some((source, replica));
            break;
        }
    }
    let (source, second) = second.expect("a client address the Service sends to the other replica");
    let log_mark = w.upstream.access_log().len();
    let peer_before = w
        .registry_metric("imagecache_served_requests_total", "source=\"peer\"")
        .await;
    ok("crictl pull", &w.node.crictl(&["pull", &w.image("peers")]));
    let pulled_bytes = w.pull_from(&source, &base, peers_image);
    std::thread::sleep(Duration::from_secs(1));
    let log = w.upstream_log_since(log_mark);
    let peer_served = w
        .registry_metric("imagecache_served_requests_total", "source=\"peer\"")
        .await
        - peer_before;
    let peers_layer = layer_of(peers_image);
    for digest in [&peers_layer, &peers_image.config_digest] {
        let gets = blob_gets(&log, digest);
        assert_eq!(
            gets.len(),
            1,
            "{digest} fetched once from the upstream for both replicas: {log:?}"
        );
        assert!(gets[0].user_agent.starts_with("imagecache/"), "{gets:?}");
    }
    assert!(peer_served > 0.0, "a replica served a blob from its peer");
    for source in &sources {
        w.node.source_address(source, false);
    }
    ok("crictl rmi", &w.node.crictl(&["rmi", &w.image("peers")]));
    eprintln!(
        "two replicas, one cache: peerDiscovery {mirror}-headless.{}.svc resolved by the cluster \
         DNS; containerd pulled through {first}, a client at {source} through {second} \
         ({pulled_bytes} blob bytes, digests checked); the upstream served each blob once \
         ({} blob GETs), {peer_served} requests answered from a peer",
        w.ns,
        log.iter().filter(|a| a.path.contains("/blobs/")).count(),
    );

    // --- a PrunePolicy never prunes a running workload's image --------------------------------
    w.run_pod("app-again", &app_image, false).await;
    let policies: Api<PrunePolicy> = Api::namespaced(client.clone(), &w.ns);
    create_prune_policy(
        &policies,
        "app",
        json!({"cacheRef": {"name": mirror}, "schedule": "0 0 1 1 *",
            "request": {"patterns": ["/e2e/app:"], "minAge": "0", "count": -1,
                "maxDeletionRatio": 1.0}}),
    )
    .await;
    let s = manual_run(&policies, "app", "while-running").await;
    let run = s.last_run.expect("run");
    assert_eq!(run.result.as_deref(), Some("Succeeded"), "{run:?}");
    assert_eq!(run.totals.manifests, 0, "nothing pruned: {run:?}");
    assert!(
        run.totals.protected.get("inUse").copied().unwrap_or(0) >= 1,
        "{run:?}"
    );
    assert!(w.cached_image_of(&app.manifest_digest).await.is_some());
    eprintln!(
        "prune while app-again runs: 0 pruned, protected {:?}",
        run.totals.protected
    );
    w.delete_pod("app-again").await;
    let s = manual_run(&policies, "app", "after-delete").await;
    let run = s.last_run.expect("run");
    assert_eq!(run.result.as_deref(), Some("Succeeded"), "{run:?}");
    assert!(
        run.items
            .iter()
            .any(|i| i.digest == app.manifest_digest && i.decision == "pruned"),
        "{run:?}"
    );
    eventually("the app image's CachedImage to go", WAIT, || async {
        w.cached_image_of(&app.manifest_digest)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    eprintln!(
        "prune after the workload went: {} manifest(s), {} bytes reclaimed; its CachedImage is gone",
        run.totals.manifests, run.totals.bytes
    );

    // --- the operator killed: it comes back, leads, and no prune runs twice -------------------
    create_prune_policy(
        &policies,
        "every-minute",
        json!({"cacheRef": {"name": mirror}, "schedule": "* * * * *",
            "request": {"patterns": ["^nothing-matches$"], "minAge": "0"}}),
    )
    .await;
    let first = eventually("the first scheduled run", WAIT, || async {
        let s = policy_status(&policies, "every-minute").await?;
        s.last_run.as_ref()?.completion_time.as_ref()?;
        Some(s)
    })
    .await;
    let runs_before = w.registry_metric("imagecache_prune_runs_total", "").await;
    let recorded_before = 1 + first.history.len();
    let pid = w
        .node
        .container_pid(&operator_name, "operator")
        .expect("the operator's process");
    let killed_at = jiff::Timestamp::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let killed = Instant::now();
    let back = eventually("the operator back and Ready", WAIT, || async {
        let p = w.pods().get(&operator_name).await.ok()?;
        let restarts = p
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .restart_count;
        (restarts >= 1 && is_ready(&p)).then_some(p)
    })
    .await;
    let back_after = killed.elapsed();
    let back_ip = back
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");
    eventually("the restarted operator to lead", WAIT, || async {
        leads(back_ip.clone()).await.then_some(())
    })
    .await;
    let holder = leases
        .get(&lease_name)
        .await
        .ok()
        .and_then(|l| l.spec?.holder_identity);
    assert_eq!(holder.as_deref(), Some(operator_name.as_str()));
    let after = eventually("a scheduled run after the restart", WAIT, || async {
        let s = policy_status(&policies, "every-minute").await?;
        let run = s.last_run.as_ref()?;
        run.completion_time.as_ref()?;
        (run.start_time.as_ref()?.0 > killed_at).then_some(s)
    })
    .await;
    let runs_after = w.registry_metric("imagecache_prune_runs_total", "").await;
    let starts: Vec<jiff::Timestamp> = after
        .last_run
        .iter()
        .chain(after.history.iter())
        .filter_map(|r| r.start_time.as_ref().map(|t| t.0))
        .collect();
    let minutes: BTreeSet<i64> = starts.iter().map(|t| t.as_second() / 60).collect();
    assert_eq!(
        minutes.len(),
        starts.len(),
        "one run per scheduled minute: {starts:?}"
    );
    let recorded = starts.len() - recorded_before;
    assert_eq!(
        runs_after - runs_before,
        2.0 * recorded as f64,
        "each registry Pod pruned once per recorded run ({recorded} since the kill)"
    );
    eprintln!(
        "operator SIGKILLed: back and Ready in {back_after:.0?}, leading again; {} scheduled \
         runs recorded, one per minute ({starts:?}), each run once on each registry Pod",
        starts.len()
    );
    policies
        .delete("every-minute", &Default::default())
        .await
        .expect("delete the policy");

    // --- mirror outage: the registry Pods gone, the node falls back to the upstream ----------
    kubectl(&["cordon", w.node.name()]);
    w.delete_registry_pods();
    eventually("no registry Pod Ready", WAIT, || async {
        w.ready_registry_pods().await.is_empty().then_some(())
    })
    .await;
    assert!(
        hosts_toml.is_file(),
        "hosts.toml stays while the mirror is down"
    );
    // The same pull with containerd's resolver, inside the node: through the node's hosts.toml
    // (the mirror first, down) and straight to the upstream (a hosts.toml without the mirror).
    let direct_dir = work.path().join("direct-hosts").join(&registry);
    std::fs::create_dir_all(&direct_dir).expect("direct hosts dir");
    std::fs::write(
        direct_dir.join("hosts.toml"),
        format!("server = \"https://{registry}\"\n"),
    )
    .expect("direct hosts.toml");
    let timed_pull = |hosts_dir: String, image: String| {
        let started = Instant::now();
        ok(
            "ctr images pull",
            &w.node.ctr_inside(&[
                "-n",
                FALLBACK_NS,
                "images",
                "pull",
                "--hosts-dir",
                &hosts_dir,
                &image,
            ]),
        );
        started.elapsed()
    };
    // Rounds of the two pulls, alternating, each image forgotten after its pull (so every pull
    // fetches its blobs): the medians are compared.
    let direct_hosts = work
        .path()
        .join("direct-hosts")
        .to_string_lossy()
        .into_owned();
    let node_hosts = w.node.fact("NODE_HOSTS_DIR").to_owned();
    let (mut directs, mut fallbacks) = (Vec::new(), Vec::new());
    for _ in 0..TIMING_ROUNDS {
        for (hosts, image, times) in [
            (&direct_hosts, w.image("timing-direct"), &mut directs),
            (&node_hosts, w.image("timing-fallback"), &mut fallbacks),
        ] {
            times.push(timed_pull(hosts.clone(), image.clone()));
            ok(
                "ctr images rm",
                &w.node
                    .ctr(&["-n", FALLBACK_NS, "images", "rm", "--sync", &image]),
            );
        }
    }
    directs.sort();
    fallbacks.sort();
    let direct = directs[TIMING_ROUNDS / 2];
    let fallback = fallbacks[TIMING_ROUNDS / 2];
    let log_mark = w.upstream.access_log().len();
    let started = Instant::now();
    w.run_pod("outage", &w.image("outage"), true).await;
    let pod_start = started.elapsed();
    let pulled = w.pulled_event("outage").await;
    let log = w.upstream_log_since(log_mark);
    let outage_layer = layer_of(&workloads["outage"]);
    let gets = blob_gets(&log, &outage_layer);
    assert!(
        !gets.is_empty() && gets.iter().all(|a| a.user_agent.starts_with("containerd")),
        "the node's containerd fetched the layer itself: {log:?}"
    );
    let added = fallback.as_secs_f64() - direct.as_secs_f64();
    eprintln!(
        "mirror outage: the Pod's image pulled from the upstream (kubelet: {pulled}), Pod Running \
         {pod_start:.1?} after creation; containerd's resolver (median of {TIMING_ROUNDS} pulls of a {} MiB image): \
         {fallback:.3?} through hosts.toml with the mirror down ({fallbacks:.3?}), {direct:.3?} \
         straight to the upstream ({directs:.3?}): the fallback added {:.0} ms",
        PAYLOAD >> 20,
        added * 1000.0
    );
    assert!(
        fallbacks.iter().all(|f| *f < Duration::from_secs(20)),
        "the fallback must cost seconds, not minutes: {fallbacks:?}"
    );
    kubectl(&["uncordon", w.node.name()]);
    w.wait_mirror_ready(2).await;
    w.delete_pod("outage").await;

    // --- helm uninstall ------------------------------------------------------------------------
    // The mirror holds images, so CachedImages with their prune finalizer exist: the chart's
    // pre-delete hook deletes the mirror while the operator still runs, and they all go.
    let held = w.cached_images().await.len();
    assert!(held > 0, "CachedImages exist before the uninstall");
    let instance = format!("app.kubernetes.io/instance={release}");
    helm(&helm_home, &["uninstall", &release, "-n", &w.ns, "--wait"]);
    eventually(
        "the release's objects, the cache and its Pods to go",
        WAIT,
        || async {
            let left = kubectl(&[
                "get",
                "deployments,statefulsets,daemonsets,jobs,pods,services,configmaps,serviceaccounts,\
             roles,rolebindings,clusterroles,clusterrolebindings,imagecaches,cachedimages",
                "-A",
                "-l",
                &instance,
                "-o",
                "name",
            ]);
            let pods = w.pods().list(&ListParams::default()).await.ok()?.items;
            (left.trim().is_empty() && pods.is_empty()).then_some(())
        },
    )
    .await;
    let cimgs = w.cached_images().await;
    assert!(
        cimgs.is_empty(),
        "CachedImages left: {:?}",
        cimgs.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    );
    eventually("the node's hosts.toml files to go", WAIT, || async {
        (!hosts_toml.exists()).then_some(())
    })
    .await;
    let left_dirs: Vec<_> = std::fs::read_dir(w.node.hosts_dir())
        .expect("hosts dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left_dirs.is_empty(), "{left_dirs:?}");
    eprintln!(
        "helm uninstall: the pre-delete hook deleted the mirror first; the release's objects, the \
         cache, its Pods, its {held} CachedImage(s) and the node's hosts.toml are gone"
    );

    // The node forgets this run's workload images, so that a next run starts from the node as
    // `up` left it.
    for repo in ["app", "outage"] {
        ok("crictl rmi", &w.node.crictl(&["rmi", &w.image(repo)]));
    }
    ok(
        "ctr namespaces rm",
        &w.node.ctr(&["namespaces", "rm", FALLBACK_NS]),
    );
    ns.delete().await;
}
