//! The Image object of the OpenShift image API (`images.image.openshift.io/v1`) as this cache
//! serves it: its fields, the labels and annotations it carries, and the label-value rule they
//! follow. The Image API builds it from a cached record (`imageapi::openshift::types`); the
//! operator lists and watches it with a kube-rs client, through [`kube::Resource`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub const GROUP: &str = "image.openshift.io";
pub const VERSION: &str = "v1";
pub const API_VERSION: &str = "image.openshift.io/v1";
/// What objects served under the legacy `/oapi/v1` prefix call their API version.
pub const LEGACY_API_VERSION: &str = "v1";
pub const KIND: &str = "Image";
pub const LIST_KIND: &str = "ImageList";
pub const PLURAL: &str = "images";
pub const SINGULAR: &str = "image";

/// Upstream registry of the image's primary reference, as a label value (see [`label_value`]).
pub const LABEL_REGISTRY: &str = "imagecache.io/registry";
/// Repository of the image's primary reference, as a label value (`library/nginx` ->
/// `library.nginx`).
pub const LABEL_REPOSITORY: &str = "imagecache.io/repository";
/// `index`, `image` or `artifact`.
pub const LABEL_TYPE: &str = "imagecache.io/type";
/// `true` when a tag points at the manifest, else `false`.
pub const LABEL_TAGGED: &str = "imagecache.io/tagged";
/// Platform of a single-platform image, under the well-known Kubernetes keys.
pub const LABEL_OS: &str = "kubernetes.io/os";
pub const LABEL_ARCH: &str = "kubernetes.io/arch";

/// Comma-separated `registry/repository:tag` of every tag pointing at the manifest, sorted.
pub const ANNOTATION_TAGS: &str = "imagecache.io/tags";
/// Comma-separated `registry/repository` of every repository it was pulled through, sorted.
pub const ANNOTATION_REFERENCES: &str = "imagecache.io/references";
/// When it was last pulled (RFC 3339); absent when never pulled since it was cached.
pub const ANNOTATION_LAST_PULLED: &str = "imagecache.io/last-pulled";
/// How many times it was pulled.
pub const ANNOTATION_PULL_COUNT: &str = "imagecache.io/pull-count";

/// Longest Kubernetes label value.
const MAX_LABEL_VALUE: usize = 63;

/// One OpenShift Image: a cached manifest or index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// First on the wire: the legacy alias rewrites this prefix (see `Image::encode`).
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `registry/repository@digest` of the primary reference (the first repository it was
    /// pulled through, in sorted order).
    #[serde(default)]
    pub docker_image_reference: String,
    #[serde(default)]
    pub docker_image_manifest_media_type: String,
    /// Layers of an image manifest; empty for an index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub docker_image_layers: Vec<ImageLayer>,
    /// Manifests of an index; empty for an image manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub docker_image_manifests: Vec<ImageManifest>,
    #[serde(default)]
    pub docker_image_metadata: DockerImageMetadata,
    #[serde(default)]
    pub docker_image_metadata_version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageLayer {
    /// The layer's digest.
    pub name: String,
    pub size: u64,
    pub media_type: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub digest: String,
    pub media_type: String,
    pub manifest_size: u64,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// OpenShift's `DockerImage` (metadata version 1.0): Docker's capitalised field names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DockerImageMetadata {
    #[serde(default)]
    pub kind: String,
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    /// The config digest, as OpenShift reports it for schema 2 images.
    #[serde(rename = "Id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The image's own creation time from its config.
    #[serde(rename = "Created", default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(
        rename = "Architecture",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub architecture: Option<String>,
    #[serde(rename = "Os", default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(rename = "Variant", default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "Config", default, skip_serializing_if = "Option::is_none")]
    pub config: Option<DockerConfig>,
    /// Manifest, config and layers as declared: what a pull transfers.
    #[serde(rename = "Size", default)]
    pub size: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerConfig {
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl kube::Resource for Image {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Kubernetes timestamps carry whole seconds.
pub fn k8s_time(t: Timestamp) -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t).unwrap_or_else(|_| t.to_string())
}

/// Makes a label value of `raw`: `/` becomes `.`, any other character a label value cannot
/// hold (the `:` of a port, say) becomes `_`, and ends that are not alphanumeric are trimmed.
/// A result longer than 63 characters keeps its first 46 and ends in `-` and 16 hex digits of
/// the SHA-256 of `raw`, so it stays unique and selectable.
pub fn label_value(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => c,
            _ => '_',
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.len() <= MAX_LABEL_VALUE {
        return trimmed.to_owned();
    }
    let hash = hex::encode(Sha256::digest(raw.as_bytes()));
    let prefix = trimmed[..46].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{prefix}-{}", &hash[..16])
}

impl Image {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid_and_documented() {
        assert_eq!(label_value("docker.io"), "docker.io");
        assert_eq!(label_value("library/nginx"), "library.nginx");
        assert_eq!(label_value("127.0.0.1:5000"), "127.0.0.1_5000");
        assert_eq!(label_value("[::1]:5000"), "1__5000");
        let long = "org/".repeat(30);
        let v = label_value(&long);
        assert_eq!(v.len(), 63);
        assert!(v.starts_with("org.org.org"));
        assert_ne!(v, label_value(&"org/".repeat(31)));
        let valid = regex::Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").unwrap();
        for raw in ["a", "-a-", "x".repeat(200).as_str(), "a/b/c", "ü", "a..b"] {
            let v = label_value(raw);
            assert!(v.len() <= 63 && valid.is_match(&v), "{raw:?} -> {v:?}");
        }
    }
}
