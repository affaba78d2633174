//! `ImageCache`: one caching registry (a StatefulSet of registry pods) and how it is exposed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{NAME_PATTERN, PLATFORM_PATTERN, STORAGE_SIZE_PATTERN};
use crate::duration::DURATION_PATTERN;

/// The desired cache: its pods, volumes, upstreams and how nodes and clients reach it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "imagecache.io",
    version = "v1alpha1",
    kind = "ImageCache",
    plural = "imagecaches",
    namespaced,
    shortname = "ic",
    category = "imagecache-all", // super::CATEGORY
    status = "ImageCacheStatus",
    derive = "PartialEq",
    doc = "A pull-through caching OCI registry run in the cluster by the imagecache operator.",
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the cache serves pulls"
    ),
    printcolumn(
        name = "IMAGES",
        type_ = "integer",
        json_path = ".status.images",
        description = "Manifests cached"
    ),
    printcolumn(
        name = "SIZE",
        type_ = "string",
        json_path = ".status.size",
        description = "Bytes used by the cache"
    ),
    printcolumn(
        name = "ENDPOINT",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "Where nodes and clients pull from"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // Names every child can carry (see each message).
    validation = Rule::new("size(self.metadata.name) <= 52").message("metadata.name must be at most 52 characters: the registry Pods are named <name>-<ordinal> and carry a <name>-<revision> label, which must fit in 63"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label (lowercase letters, digits and '-', no '.') that starts with a letter: it names the cache's Services"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.storage) == has(oldSelf.storage) && (!has(self.storage) || self.storage == oldSelf.storage)").message("spec.storage cannot be changed once the ImageCache exists: the StatefulSet's volume claim templates are immutable; create a new ImageCache with the new storage"))]
pub struct ImageCacheSpec {
    /// Registry pods (each with its own cache volume).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: i32,
    /// The cache volume of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Registries the cache pulls through; only these are served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(u, self.exists_one(v, v.name == u.name))").message("upstream names must be unique"))]
    pub upstreams: Vec<UpstreamSpec>,
    /// Registry for references without one (`nginx` → `docker.io/library/nginx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub default_registry: Option<String>,
    /// How long a tag resolved upstream is trusted before it is checked again (`5m`, `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "tagTTL")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub tag_ttl: Option<String>,
    /// Never contact upstreams: serve only what is cached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub air_gapped: bool,
    /// Images pulled into the cache as soon as it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload: Option<PreloadSpec>,
    /// The client Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// Point the nodes' container runtime at the cache for chosen registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mirror: Option<NodeMirrorSpec>,
    /// Where registry pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<SchedulingSpec>,
    /// Compute resources of each registry container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_replicas() -> i32 {
    1
}

/// The cache volume: a PersistentVolumeClaim per pod (`size`, `storageClassName`) or `emptyDir`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.emptyDir) && self.emptyDir) || (!has(self.size) && !has(self.storageClassName))").message("storage.emptyDir excludes size and storageClassName"))]
pub struct StorageSpec {
    /// Size of each pod's volume claim (`20Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = STORAGE_SIZE_PATTERN))]
    pub size: Option<Quantity>,
    /// Storage class of the claims (the cluster default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// Cache in an emptyDir (lost when a pod goes) instead of a volume claim.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_dir: bool,
}

/// An upstream registry the cache pulls through.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// The registry host as clients name it (`docker.io`, `ghcr.io`, `registry.local:5000`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Where to reach it when not `https://<name>` (`https://registry-1.docker.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/]+')").message("endpoint must be an http:// or https:// URL"))]
    pub endpoint: Option<String>,
    /// Secret with the pull credentials (`username`/`password` or `.dockerconfigjson`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Secret with the CA bundle (`ca.crt`) that signs the upstream's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
    /// Skip TLS verification (testing only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// A Secret in the ImageCache's namespace, optionally one key of it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// The key to read (a per-use default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub key: Option<String>,
}

/// Images pulled into the cache ahead of use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreloadSpec {
    /// Image references (`nginx:1.27`, `quay.io/x/y@sha256:...`).
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub images: Vec<String>,
    /// Platforms to fetch from indexes (`linux/amd64`, `linux/arm64/v8`); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = PLATFORM_PATTERN)), length(max = 16))]
    pub platforms: Vec<String>,
}

/// How the client Service is exposed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.nodePort) || self.type == 'NodePort'").message("nodePort needs type NodePort"))]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// The node port for type NodePort (allocated when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
}

/// Configure nodes' container runtimes to pull chosen registries through the cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeMirrorSpec {
    #[serde(default)]
    pub enabled: bool,
    /// Registries to mirror (`docker.io`); every upstream when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub registries: Vec<String>,
    /// The runtime's config format: containerd `hosts.toml` or CRI-O `registries.conf.d`.
    #[serde(default)]
    pub runtime: MirrorRuntime,
    /// Host directory of the runtime's registry config (the runtime's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = 4096))]
    pub hosts_dir: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MirrorRuntime {
    #[default]
    Containerd,
    Crio,
}

/// Pod placement of the registry pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// What the operator observed of the cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheStatus {
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub replicas: i32,
    /// Where clients pull from (`<service>.<namespace>.svc:5000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Manifests cached (the most any pod holds).
    #[serde(default)]
    pub images: i64,
    #[serde(default)]
    pub blobs: i64,
    #[serde(default)]
    pub bytes_used: i64,
    /// `bytesUsed` for people (`12.3GiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<LastPrune>,
}

/// One registry pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSummary {
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub images: i64,
    #[serde(default)]
    pub bytes: i64,
}

/// The latest prune run on this cache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastPrune {
    /// When the run started.
    pub time: Time,
    /// What started it on the pod: `api` (a PrunePolicy or `POST /admin/v1/prune`),
    /// `background` (the registry's own `pruneConfig`) or `cli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub manifests: i64,
    #[serde(default)]
    pub bytes: i64,
}
