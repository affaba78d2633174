//! A test's world: its namespace, an upstream Distribution registry holding generated images,
//! the operator of that namespace and the stand-in kubelet running its registry Pods.

use std::collections::BTreeMap;
use std::path::PathBuf;

use imagecache::crd::{ImageCache, ImageCacheStatus};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::harness::{self, Env, TestNs, WAIT, eventually};
use crate::kubelet::Kubelet;
use crate::operator::Operator;
use crate::support::{Distribution, Platform, gen_image, skopeo::pull_to_dir};

/// The registry name the ImageCaches list the upstream under.
pub const UPSTREAM: &str = "upstream.test";

pub struct Fixture {
    pub env: Env,
    pub ns: TestNs,
    pub upstream: Distribution,
    /// Image name (`e2e/<name>:1` upstream) → manifest digest.
    pub digests: BTreeMap<String, String>,
    /// The namespace's operator (`None` for a test that runs its own).
    pub operator: Option<Operator>,
    pub kubelet: Kubelet,
    /// Last, so the logs are still there when the processes above print them on a failure.
    pub work: harness::WorkDir,
}

impl Fixture {
    /// A namespace `e2e-<prefix>-<pid>` with the operator and kubelet running, and an upstream
    /// holding one small image per name (`e2e/<name>:1`).
    pub async fn new(prefix: &str, images: &[&str]) -> Fixture {
        let mut fx = Fixture::without_operator(prefix, images).await;
        fx.operator = Some(Operator::for_namespace(fx.ns(), fx.work.path()));
        fx
    }

    /// The same without an operator.
    pub async fn without_operator(prefix: &str, images: &[&str]) -> Fixture {
        let env = harness::shared().await;
        let ns = TestNs::create(&env.client, prefix).await;
        let work = harness::workdir(prefix);
        let upstream = Distribution::start();
        let mut digests = BTreeMap::new();
        for (i, name) in images.iter().enumerate() {
            let img = gen_image(
                &work.path().join("images").join(name),
                1000 + i as u64,
                &[2048, 4096],
                &Platform::linux_amd64(),
            );
            upstream.push(&img.source_ref(), &format!("e2e/{name}:1"));
            digests.insert((*name).to_owned(), img.digest().to_owned());
        }
        let kubelet = Kubelet::start(&env.client, &ns.name, work.path());
        Fixture {
            env,
            ns,
            work,
            upstream,
            digests,
            operator: None,
            kubelet,
        }
    }

    pub fn client(&self) -> &Client {
        &self.env.client
    }

    pub fn ns(&self) -> &str {
        &self.ns.name
    }

    pub fn caches(&self) -> Api<ImageCache> {
        Api::namespaced(self.client().clone(), self.ns())
    }

    /// Creates an ImageCache `name` pulling through the upstream, with `spec` merged over
    /// `replicas: 1`, an emptyDir and the upstream.
    pub async fn create_cache(&self, name: &str, spec: Value) -> ImageCache {
        let mut full = json!({
            "replicas": 1,
            "storage": {"emptyDir": true},
            "defaultRegistry": UPSTREAM,
            "upstreams": [{"name": UPSTREAM, "endpoint": self.upstream.url()}],
        });
        merge(&mut full, spec);
        let ic: ImageCache = serde_json::from_value(json!({
            "apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
            "metadata": {"name": name}, "spec": full,
        }))
        .expect("an ImageCache");
        self.caches()
            .create(&PostParams::default(), &ic)
            .await
            .unwrap_or_else(|e| panic!("create ImageCache {name}: {e}"))
    }

    /// Waits until `name` is Ready with `ready` replicas serving and its status caught up with
    /// its generation.
    pub async fn ready(&self, name: &str, ready: i32) -> ImageCacheStatus {
        let caches = self.caches();
        eventually(
            &format!("ImageCache {name} Ready with {ready} ready replicas"),
            WAIT,
            || async {
                let ic = caches.get(name).await.ok()?;
                let s = ic.status?;
                let is_ready = s
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let current = s.observed_generation == ic.metadata.generation;
                (is_ready && current && s.ready_replicas == ready).then_some(s)
            },
        )
        .await
    }

    /// Pulls `e2e/<image>:1` through a registry Pod; the copy's directory.
    pub fn pull(&self, pod: &str, image: &str) -> PathBuf {
        let dir = self
            .work
            .path()
            .join(format!("pulled-{pod}-{image}-{}", rand_suffix()));
        let reference = format!(
            "docker://{}/{UPSTREAM}/e2e/{image}:1",
            self.kubelet.registry_addr(pod)
        );
        pull_to_dir(&reference, &dir).unwrap_or_else(|e| panic!("pull {image} via {pod}: {e}"));
        dir
    }

    /// The admin token of an ImageCache's registry Pods.
    pub async fn admin_token(&self, cache: &str) -> String {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client().clone(), self.ns());
        let secret = secrets
            .get(&format!("{cache}-admin-token"))
            .await
            .expect("admin token Secret");
        String::from_utf8(secret.data.expect("data")["token"].0.clone()).expect("UTF-8 token")
    }

    /// Digests of the manifests a registry Pod holds (its `/cmd/manifest/list`).
    pub async fn held(&self, cache: &str, pod: &str) -> Vec<String> {
        let token = self.admin_token(cache).await;
        let resp = reqwest::Client::new()
            .get(format!(
                "{}/cmd/manifest/list?format=json&count=-1",
                self.kubelet.admin_url(pod)
            ))
            .bearer_auth(token)
            .send()
            .await
            .expect("manifest list");
        assert!(resp.status().is_success(), "{}", resp.status());
        let v: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON");
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["digest"].as_str().map(str::to_owned))
            .collect()
    }

    /// Tears down in the order a user would: the ImageCaches and PrunePolicies are deleted
    /// while the operator runs (it lets their CachedImages go, the garbage collector removes the
    /// children), then the operator stops, its log free of refusals, then the namespace goes.
    pub async fn finish(self) {
        let client = self.client().clone();
        let ns = self.ns().to_owned();
        let dp = kube::api::DeleteParams::background();
        let lp = kube::api::ListParams::default();
        self.caches()
            .delete_collection(&dp, &lp)
            .await
            .expect("delete the ImageCaches");
        Api::<imagecache::crd::PrunePolicy>::namespaced(client.clone(), &ns)
            .delete_collection(&dp, &lp)
            .await
            .expect("delete the PrunePolicies");
        let cimgs: Api<imagecache::crd::CachedImage> = Api::namespaced(client.clone(), &ns);
        let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> =
            Api::namespaced(client.clone(), &ns);
        let ours = kube::api::ListParams::default()
            .labels("app.kubernetes.io/managed-by=imagecache-operator");
        eventually(
            "the CachedImages and the caches' StatefulSets to go",
            WAIT,
            || async {
                let left = cimgs.list(&lp).await.ok()?.items.len()
                    + sts.list(&ours).await.ok()?.items.len();
                (left == 0).then_some(())
            },
        )
        .await;
        let Fixture {
            env: _env,
            ns,
            operator,
            kubelet,
            work: _work,
            ..
        } = self;
        if let Some(operator) = operator {
            operator.finish();
        }
        drop(kubelet);
        ns.delete().await;
    }
}

/// Merges `patch` into `base` (objects key by key, anything else replaced).
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
