//! `CachedImage`: one manifest held by a cache, mirrored from the registry pods' image watch.
//! Deleting one prunes the image from the cache (the operator's finalizer does it).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CacheRef;
use crate::digest::Digest;

/// The manifest, as the registry pods report it (maintained by the operator).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "imagecache.io",
    version = "v1alpha1",
    kind = "CachedImage",
    plural = "cachedimages",
    namespaced,
    shortname = "cimg",
    category = "imagecache-all", // super::CATEGORY
    status = "CachedImageStatus",
    derive = "PartialEq",
    doc = "A manifest held by an ImageCache; deleting it prunes the image from the cache.",
    printcolumn(
        name = "REFERENCE",
        type_ = "string",
        json_path = ".spec.reference",
        description = "Where the manifest was pulled from"
    ),
    printcolumn(
        name = "TAGS",
        type_ = "string",
        json_path = ".spec.tags",
        description = "Tags pointing at it"
    ),
    printcolumn(
        name = "SIZE",
        type_ = "integer",
        json_path = ".spec.size",
        description = "Bytes of the manifest and its layers"
    ),
    printcolumn(
        name = "PODS",
        type_ = "string",
        json_path = ".spec.pods",
        description = "Registry pods holding it"
    ),
    printcolumn(
        name = "LAST-PULLED",
        type_ = "date",
        json_path = ".spec.lastPulled",
        description = "Last pull through the cache"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CachedImageSpec {
    /// The ImageCache holding it (cannot be changed).
    #[x_kube(validation = Rule::new("self == oldSelf").message("cacheRef is immutable"))]
    pub cache_ref: CacheRef,
    /// The manifest digest (cannot be changed).
    #[x_kube(validation = Rule::new("self == oldSelf").message("digest is immutable"))]
    pub digest: Digest,
    /// `registry/repository@digest` or `registry/repository:tag`.
    pub reference: String,
    pub media_type: String,
    /// Bytes of the manifest, its config and its layers.
    #[serde(default)]
    pub size: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<ImageLayer>,
    /// Child manifests of an index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Digest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the image was built (its config's `created`).
    pub created: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Last pull through the cache (updated at most once per `minUpdateInterval`).
    pub last_pulled: Option<Time>,
    /// Registry pods holding the manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
}

/// A layer (or the config) of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageLayer {
    /// The blob digest.
    pub name: Digest,
    pub size: i64,
    pub media_type: String,
}

/// What the operator observed (conditions such as a failed prune on deletion).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachedImageStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
