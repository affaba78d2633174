//! The images the cluster uses, for the `inUse` protection of a prune: what every Pod runs
//! (spec and status, image IDs included) and what every workload would start (Deployments,
//! also scaled to zero, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs).
//!
//! [`PodImages`] and [`in_use`] are pure; [`compute`] lists the kinds cluster-wide (a cache
//! serves every namespace). The references are passed as written; the prune engine normalises
//! them (`nginx:1.27` is `docker.io/library/nginx:1.27`, a bare `sha256:` digest matches a
//! manifest or an image config). [`through_cache`] adds the upstream form of references that
//! name the cache's own Service (`cache.ns.svc:5000/docker.io/library/nginx:1.27`).

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodSpec, PodTemplateSpec};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;

use super::desired;
use super::error::OperatorError;
use crate::crd::{ImageCache, ServiceType};

/// Objects per list request: a large cluster is read in pages, not in one answer.
const PAGE_SIZE: u32 = 500;

/// An object that names images its pods run or would run.
pub trait PodImages {
    /// Adds every image reference of the object to `out`.
    fn add_images(&self, out: &mut BTreeSet<String>);
}

/// Strips a runtime prefix from a kubelet image ID (`docker-pullable://nginx@sha256:..`,
/// `docker://sha256:..`).
pub fn strip_runtime_prefix(s: &str) -> &str {
    let s = s.trim();
    s.split_once("://").map_or(s, |(_, rest)| rest)
}

fn add(out: &mut BTreeSet<String>, image: Option<&str>) {
    if let Some(image) = image.map(strip_runtime_prefix).filter(|s| !s.is_empty()) {
        out.insert(image.to_owned());
    }
}

fn add_spec(spec: &PodSpec, out: &mut BTreeSet<String>) {
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        add(out, c.image.as_deref());
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        add(out, c.image.as_deref());
    }
}

fn add_statuses(statuses: Option<&Vec<ContainerStatus>>, out: &mut BTreeSet<String>) {
    for s in statuses.into_iter().flatten() {
        add(out, Some(&s.image));
        add(out, Some(&s.image_id));
    }
}

fn add_template(template: Option<&PodTemplateSpec>, out: &mut BTreeSet<String>) {
    if let Some(spec) = template.and_then(|t| t.spec.as_ref()) {
        add_spec(spec, out);
    }
}

impl PodImages for Pod {
    fn add_images(&self, out: &mut BTreeSet<String>) {
        if let Some(spec) = &self.spec {
            add_spec(spec, out);
        }
        if let Some(status) = &self.status {
            add_statuses(status.container_statuses.as_ref(), out);
            add_statuses(status.init_container_statuses.as_ref(), out);
            add_statuses(status.ephemeral_container_statuses.as_ref(), out);
        }
    }
}

impl PodImages for Deployment {
    fn add_images(&self, out: &mut BTreeSet<String>) {
        add_template(Some(&self.spec.template), out);
    }
}

impl PodImages for StatefulSet {
    fn add_images(&self, out: &mut BTreeSet<String>) {
        add_template(Some(&self.spec.template), out);
    }
}

impl PodImages for DaemonSet {
    fn add_images(&self, out: &mut BTreeSet<String>) {
        add_template(Some(&self.spec.template), out);
    }
}

impl PodImages for ReplicaSet {
    fn add_images(&self, out: &mut BTreeSet<String>) {
        add_template(self.spec.template.as_ref(), out);
    }
}

impl PodImages for Job {
    fn add_images(&self, out: &mut BTreeSet<String>) {
        add_template(self.spec.as_ref().map(|s| &s.template), out);
    }
}

impl PodImages for CronJob {
    fn add_images(&self, out: &mut BTreeSet<String>) {
        let template = self.spec.job_template.spec.as_ref().map(|j| &j.template);
        add_template(template, out);
    }
}

/// The sorted, deduplicated image references of `objects`.
pub fn in_use<'a>(objects: impl IntoIterator<Item = &'a dyn PodImages>) -> Vec<String> {
    let mut out = BTreeSet::new();
    for o in objects {
        o.add_images(&mut out);
    }
    out.into_iter().collect()
}

/// A host a pod may pull the cache through: any port of a Service name, or one exact
/// `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheHost {
    AnyPort(String),
    Exact(String),
}

/// The names under which pods reach `ic`'s client Service: its DNS names, the endpoint its
/// status advertises, and `localhost`/`127.0.0.1` on a fixed node port.
pub fn cache_hosts(ic: &ImageCache) -> Vec<CacheHost> {
    let mut hosts = Vec::new();
    if let (Ok(svc), Some(ns)) = (desired::statefulset_name(ic), ic.namespace()) {
        for h in [
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ] {
            hosts.push(CacheHost::AnyPort(h));
        }
    }
    if let Some(endpoint) = ic.status.as_ref().and_then(|s| s.endpoint.as_deref()) {
        let host = strip_runtime_prefix(endpoint).trim_end_matches('/');
        if !host.is_empty() && !host.contains('/') {
            hosts.push(CacheHost::Exact(host.to_ascii_lowercase()));
        }
    }
    if let Some(service) = &ic.spec.service
        && service.type_ == ServiceType::NodePort
        && let Some(port) = service.node_port
    {
        hosts.push(CacheHost::Exact(format!("localhost:{port}")));
        hosts.push(CacheHost::Exact(format!("127.0.0.1:{port}")));
    }
    hosts
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// `refs` plus, for each reference whose registry is the cache itself, the reference without
/// that host (what the cache stores it under); sorted and deduplicated.
pub fn through_cache(refs: Vec<String>, hosts: &[CacheHost]) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for r in refs {
        if let Some((first, rest)) = r.split_once('/') {
            let first_lc = first.to_ascii_lowercase();
            let name = host_without_port(&first_lc);
            let is_cache = hosts.iter().any(|h| match h {
                CacheHost::AnyPort(h) => h == name,
                CacheHost::Exact(h) => *h == first_lc,
            });
            if is_cache && !rest.is_empty() {
                out.insert(rest.to_owned());
            }
        }
        out.insert(r);
    }
    out.into_iter().collect()
}

/// Adds the images of every `K` in the cluster to `out`, a page at a time.
async fn collect<K>(client: &Client, out: &mut BTreeSet<String>) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + PodImages,
{
    let api: Api<K> = Api::all(client.clone());
    let mut params = ListParams::default().limit(PAGE_SIZE);
    loop {
        let page = api.list(&params).await?;
        for o in &page.items {
            o.add_images(out);
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(()),
        }
    }
}

/// The in-use set of the whole cluster: Pods, Deployments, StatefulSets, DaemonSets,
/// ReplicaSets, Jobs and CronJobs, listed in that order. Any list failing fails the whole:
/// a prune without the full set could remove an image in use.
pub async fn compute(client: &Client) -> Result<Vec<String>, OperatorError> {
    let mut out = BTreeSet::new();
    collect::<Pod>(client, &mut out).await?;
    collect::<Deployment>(client, &mut out).await?;
    collect::<StatefulSet>(client, &mut out).await?;
    collect::<DaemonSet>(client, &mut out).await?;
    collect::<ReplicaSet>(client, &mut out).await?;
    collect::<Job>(client, &mut out).await?;
    collect::<CronJob>(client, &mut out).await?;
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<T: DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    const NGINX_ID: &str =
        "sha256:4f4c7a3e9a5a0e3a7b0c5d2e1f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a";

    fn running_pod() -> Pod {
        obj(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-7d9c-abcde", "namespace": "shop"},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "ghcr.io/acme/migrate:v3"}],
                "containers": [
                    {"name": "web", "image": "nginx:1.27"},
                    {"name": "sidecar", "image": "quay.io/prometheus/node-exporter@sha256:1111111111111111111111111111111111111111111111111111111111111111"}
                ],
                "ephemeralContainers": [{"name": "debugger", "image": "busybox"}]
            },
            "status": {
                "phase": "Running",
                "initContainerStatuses": [{
                    "name": "migrate", "ready": false, "restartCount": 0,
                    "image": "ghcr.io/acme/migrate:v3",
                    "imageID": "ghcr.io/acme/migrate@sha256:2222222222222222222222222222222222222222222222222222222222222222"
                }],
                "containerStatuses": [{
                    "name": "web", "ready": true, "restartCount": 0,
                    "image": "docker.io/library/nginx:1.27",
                    "imageID": format!("docker-pullable://nginx@{NGINX_ID}")
                }, {
                    "name": "sidecar", "ready": true, "restartCount": 0,
                    "image": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
                    "imageID": "docker://sha256:3333333333333333333333333333333333333333333333333333333333333333"
                }],
                "ephemeralContainerStatuses": [{
                    "name": "debugger", "ready": false, "restartCount": 0,
                    "image": "docker.io/library/busybox:latest", "imageID": ""
                }]
            }
        }))
    }

    fn template(image: &str) -> serde_json::Value {
        json!({"metadata": {"labels": {"app": "x"}},
               "spec": {"containers": [{"name": "c", "image": image}]}})
    }

    #[test]
    fn a_pod_contributes_spec_and_status_images_with_runtime_prefixes_stripped() {
        let pod = running_pod();
        let got = in_use([&pod as &dyn PodImages]);
        assert_eq!(
            got,
            vec![
                "busybox".to_owned(),
                "docker.io/library/busybox:latest".into(),
                "docker.io/library/nginx:1.27".into(),
                "ghcr.io/acme/migrate:v3".into(),
                "ghcr.io/acme/migrate@sha256:2222222222222222222222222222222222222222222222222222222222222222".into(),
                "nginx:1.27".into(),
                format!("nginx@{NGINX_ID}"),
                "quay.io/prometheus/node-exporter@sha256:1111111111111111111111111111111111111111111111111111111111111111".into(),
                "sha256:3333333333333333333333333333333333333333333333333333333333333333".into(),
            ]
        );
    }

    #[test]
    fn workload_templates_count_including_scaled_to_zero_and_cronjobs() {
        let deploy: Deployment = obj(json!({
            "metadata": {"name": "idle", "namespace": "a"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}},
                     "template": template("registry.example.com/team/idle:2.0")}
        }));
        let sts: StatefulSet = obj(json!({
            "metadata": {"name": "db"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "x"}},
                     "template": template("postgres:16")}
        }));
        let ds: DaemonSet = obj(json!({
            "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "x"}},
                     "template": {"spec": {
                         "initContainers": [{"name": "init", "image": "alpine:3.20"}],
                         "containers": [{"name": "agent", "image": "fluent/fluent-bit:3.1"}]}}}
        }));
        let rs: ReplicaSet = obj(json!({
            "metadata": {"name": "old-rs"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}},
                     "template": template("nginx:1.25")}
        }));
        let rs_without_template: ReplicaSet = obj(json!({
            "metadata": {"name": "bare"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}}
        }));
        let job: Job = obj(json!({
            "metadata": {"name": "once"},
            "spec": {"template": template("python:3.12-slim")}
        }));
        let cron: CronJob = obj(json!({
            "metadata": {"name": "nightly"},
            "spec": {"schedule": "0 1 * * *",
                     "jobTemplate": {"spec": {"template": template("ghcr.io/acme/report:1")}}}
        }));
        let objects: [&dyn PodImages; 7] =
            [&deploy, &sts, &ds, &rs, &rs_without_template, &job, &cron];
        assert_eq!(
            in_use(objects),
            [
                "alpine:3.20",
                "fluent/fluent-bit:3.1",
                "ghcr.io/acme/report:1",
                "nginx:1.25",
                "postgres:16",
                "python:3.12-slim",
                "registry.example.com/team/idle:2.0",
            ]
        );
    }

    #[test]
    fn duplicates_across_objects_collapse_and_empty_images_are_skipped() {
        let a: Deployment = obj(json!({"metadata": {"name": "a"},
            "spec": {"selector": {}, "template": template("nginx:1.27")}}));
        let b: Deployment = obj(json!({"metadata": {"name": "b"},
            "spec": {"selector": {}, "template": template("nginx:1.27")}}));
        let c: Deployment = obj(json!({"metadata": {"name": "c"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "x"}]}}}}));
        let no_spec: Pod = obj(json!({"metadata": {"name": "p"}}));
        assert_eq!(
            in_use([&a as &dyn PodImages, &b, &c, &no_spec]),
            ["nginx:1.27"]
        );
    }

    #[test]
    fn runtime_prefixes() {
        assert_eq!(
            strip_runtime_prefix("docker-pullable://a@sha256:x"),
            "a@sha256:x"
        );
        assert_eq!(strip_runtime_prefix("docker://sha256:x"), "sha256:x");
        assert_eq!(strip_runtime_prefix(" nginx:1.27 "), "nginx:1.27");
        assert_eq!(
            strip_runtime_prefix("localhost:5000/a:1"),
            "localhost:5000/a:1"
        );
    }

    #[test]
    fn references_through_the_cache_also_count_under_their_upstream_name() {
        let ic: ImageCache = obj(json!({
            "apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
            "metadata": {"name": "cache", "namespace": "infra"},
            "spec": {"service": {"type": "NodePort", "nodePort": 30500}},
            "status": {"endpoint": "cache.infra.svc:5000"}
        }));
        let hosts = cache_hosts(&ic);
        let refs = vec![
            "cache.infra.svc:5000/docker.io/library/nginx:1.27".to_owned(),
            "Cache.Infra.svc.cluster.local:5000/quay.io/a/b@sha256:1".into(),
            "localhost:30500/ghcr.io/x/y:1".into(),
            "localhost:5000/ghcr.io/x/other:1".into(),
            "cachex.infra.svc:5000/docker.io/library/redis:7".into(),
            "nginx:1.27".into(),
        ];
        assert_eq!(
            through_cache(refs, &hosts),
            [
                "Cache.Infra.svc.cluster.local:5000/quay.io/a/b@sha256:1",
                "cache.infra.svc:5000/docker.io/library/nginx:1.27",
                "cachex.infra.svc:5000/docker.io/library/redis:7",
                "docker.io/library/nginx:1.27",
                "ghcr.io/x/y:1",
                "localhost:30500/ghcr.io/x/y:1",
                "localhost:5000/ghcr.io/x/other:1",
                "nginx:1.27",
                "quay.io/a/b@sha256:1",
            ]
        );
    }
}
