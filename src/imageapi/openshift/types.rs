//! The Image object of the OpenShift image API as this cache serves it, built from a
//! [`ManifestRecord`] and the tags pointing at it. Pure: record in, object out.
//!
//! The same type is what a kube-rs client (the operator) lists and watches: it implements
//! [`kube::Resource`] for the cluster-scoped `images.image.openshift.io/v1`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::reference::RepoPath;
use crate::store::ManifestRecord;

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

/// A UID that stays the same for the life of a cached manifest (across restarts and watches)
/// and changes when it is pruned and cached again: a hash of the digest and when it was first
/// cached, shaped as an RFC 9562 version 8 UUID.
pub fn uid(record: &ManifestRecord) -> String {
    let mut h = Sha256::new();
    h.update(record.digest.to_string().as_bytes());
    h.update(b"\n");
    h.update(k8s_time(record.created).as_bytes());
    let mut b: [u8; 16] = [0; 16];
    b.copy_from_slice(&h.finalize()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// The repository named by `dockerImageReference` and the labels: the first reference in
/// sorted order, else the first tag's repository.
fn primary<'a>(record: &'a ManifestRecord, tags: &'a [(RepoPath, String)]) -> Option<&'a RepoPath> {
    record
        .references
        .iter()
        .next()
        .or_else(|| tags.iter().map(|(r, _)| r).min())
}

/// Image creation times from configs vary in precision; normalise parseable ones.
fn normalise_created(raw: &str) -> String {
    raw.parse::<Timestamp>()
        .map(k8s_time)
        .unwrap_or_else(|_| raw.to_owned())
}

impl Image {
    /// The Image for a cached manifest with the tags pointing at it, at `resource_version`.
    pub fn from_record(
        record: &ManifestRecord,
        tags: &[(RepoPath, String)],
        resource_version: u64,
    ) -> Image {
        let name = record.digest.to_string();
        let primary = primary(record, tags);
        let mut labels = BTreeMap::new();
        if let Some(p) = primary {
            labels.insert(LABEL_REGISTRY.to_owned(), label_value(&p.registry));
            labels.insert(LABEL_REPOSITORY.to_owned(), label_value(&p.repository));
        }
        let kind = if record.is_index() {
            "index"
        } else if record.artifact_type.is_some() {
            "artifact"
        } else {
            "image"
        };
        labels.insert(LABEL_TYPE.to_owned(), kind.to_owned());
        labels.insert(LABEL_TAGGED.to_owned(), (!tags.is_empty()).to_string());
        if let Some(p) = &record.platform {
            if !p.os.is_empty() {
                labels.insert(LABEL_OS.to_owned(), label_value(&p.os));
            }
            if !p.architecture.is_empty() {
                labels.insert(LABEL_ARCH.to_owned(), label_value(&p.architecture));
            }
        }

        let mut tag_refs: Vec<String> = tags.iter().map(|(r, t)| format!("{r}:{t}")).collect();
        tag_refs.sort();
        tag_refs.dedup();
        let references: Vec<String> = record.references.iter().map(|r| r.to_string()).collect();
        let mut annotations = BTreeMap::from([
            (ANNOTATION_TAGS.to_owned(), tag_refs.join(",")),
            (ANNOTATION_REFERENCES.to_owned(), references.join(",")),
            (
                ANNOTATION_PULL_COUNT.to_owned(),
                record.pull_count.to_string(),
            ),
        ]);
        if let Some(t) = record.last_pulled {
            annotations.insert(ANNOTATION_LAST_PULLED.to_owned(), k8s_time(t));
        }

        let platform = record.platform.as_ref();
        Image {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta {
                name: Some(name.clone()),
                uid: Some(uid(record)),
                resource_version: Some(resource_version.to_string()),
                // Whole seconds, as the wire format carries them, so objects round-trip.
                creation_timestamp: Some(Time(
                    Timestamp::from_second(record.created.as_second()).unwrap_or(record.created),
                )),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            docker_image_reference: match primary {
                Some(p) => format!("{p}@{name}"),
                None => name,
            },
            docker_image_manifest_media_type: record.media_type.to_string(),
            docker_image_layers: record
                .layers
                .iter()
                .map(|l| ImageLayer {
                    name: l.digest.to_string(),
                    size: l.size,
                    media_type: l.media_type.to_string(),
                })
                .collect(),
            docker_image_manifests: record
                .children
                .iter()
                .map(|c| ImageManifest {
                    digest: c.digest.to_string(),
                    media_type: c.media_type.to_string(),
                    manifest_size: c.size,
                    architecture: c
                        .platform
                        .as_ref()
                        .map(|p| p.architecture.to_string())
                        .unwrap_or_default(),
                    os: c
                        .platform
                        .as_ref()
                        .map(|p| p.os.to_string())
                        .unwrap_or_default(),
                    variant: c
                        .platform
                        .as_ref()
                        .and_then(|p| p.variant.as_ref().map(|v| v.to_string())),
                })
                .collect(),
            docker_image_metadata: DockerImageMetadata {
                kind: "DockerImage".to_owned(),
                api_version: "1.0".to_owned(),
                id: record.config.as_ref().map(|c| c.digest.to_string()),
                created: record.image_created.as_deref().map(normalise_created),
                architecture: platform.map(|p| p.architecture.to_string()),
                os: platform.map(|p| p.os.to_string()),
                variant: platform.and_then(|p| p.variant.as_ref().map(|v| v.to_string())),
                config: (!record.labels.is_empty()).then(|| DockerConfig {
                    labels: record.labels.to_btree(),
                }),
                size: record.image_size(),
            },
            docker_image_metadata_version: "1.0".to_owned(),
        }
    }

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

    /// The value of a field a field selector can name.
    pub fn field(&self, field: Field) -> &str {
        match field {
            Field::Name => self.name(),
            Field::DockerImageReference => &self.docker_image_reference,
        }
    }

    /// JSON of the object as served under `api_version` (the group's, or the legacy `v1`).
    pub fn encode(&self, api_version: &str) -> Vec<u8> {
        let bytes = encode_json(self);
        relabel_api_version(bytes, api_version)
    }
}

/// The fields a field selector may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Name,
    DockerImageReference,
}

impl Field {
    pub fn parse(s: &str) -> Option<Field> {
        match s {
            "metadata.name" => Some(Field::Name),
            "dockerImageReference" => Some(Field::DockerImageReference),
            _ => None,
        }
    }
}

/// Serialises plain data; these types cannot fail to serialise, and an empty object keeps the
/// output JSON if that ever changed.
pub fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

/// Objects are encoded once for the group version; the legacy alias swaps the leading
/// `"apiVersion"` member rather than encoding again.
pub fn relabel_api_version(bytes: Vec<u8>, api_version: &str) -> Vec<u8> {
    const PREFIX: &[u8] = br#"{"apiVersion":"image.openshift.io/v1""#;
    if api_version == API_VERSION || !bytes.starts_with(PREFIX) {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(br#"{"apiVersion":"#);
    out.extend_from_slice(&encode_json(&api_version));
    out.extend_from_slice(&bytes[PREFIX.len()..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::store::{BlobRef, ChildRef, OCI_INDEX, OCI_MANIFEST, Platform, SmallSet, StrMap};

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn repo(registry: &str, repository: &str) -> RepoPath {
        RepoPath {
            registry: registry.into(),
            repository: repository.into(),
        }
    }

    pub(crate) fn record(c: char) -> ManifestRecord {
        ManifestRecord {
            digest: d(c),
            media_type: OCI_MANIFEST.into(),
            size: 500,
            references: SmallSet::from([
                repo("docker.io", "library/nginx"),
                repo("quay.io", "mirror/nginx"),
            ]),
            created: "2024-05-01T10:00:00.123Z".parse().unwrap(),
            last_pulled: Some("2024-05-02T11:00:00Z".parse().unwrap()),
            pull_count: 7,
            config: Some(BlobRef {
                digest: d('c'),
                size: 100,
                media_type: "application/vnd.oci.image.config.v1+json".into(),
            }),
            layers: vec![BlobRef {
                digest: d('e'),
                size: 1000,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            }]
            .into(),
            children: Box::new([]),
            subject: None,
            artifact_type: None,
            annotations: StrMap::new(),
            platform: Some(Platform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: Some("v8".into()),
            }),
            labels: BTreeMap::from([("team".to_owned(), "a b".to_owned())]).into(),
            image_created: Some("2024-01-01T00:00:00.5Z".into()),
        }
    }

    #[test]
    fn image_from_record_follows_the_openshift_shape() {
        let r = record('a');
        let tags = vec![
            (repo("docker.io", "library/nginx"), "1.27".to_owned()),
            (repo("docker.io", "library/nginx"), "latest".to_owned()),
        ];
        let img = Image::from_record(&r, &tags, 42);
        let v: serde_json::Value = serde_json::from_slice(&img.encode(API_VERSION)).unwrap();
        let name = d('a').to_string();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["kind"], "Image");
        assert_eq!(v["metadata"]["name"], name.as_str());
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["creationTimestamp"], "2024-05-01T10:00:00Z");
        assert_eq!(
            v["metadata"]["labels"],
            serde_json::json!({
                "imagecache.io/registry": "docker.io",
                "imagecache.io/repository": "library.nginx",
                "imagecache.io/type": "image",
                "imagecache.io/tagged": "true",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "arm64",
            })
        );
        let ann = &v["metadata"]["annotations"];
        assert_eq!(
            ann["imagecache.io/tags"],
            "docker.io/library/nginx:1.27,docker.io/library/nginx:latest"
        );
        assert_eq!(
            ann["imagecache.io/references"],
            "docker.io/library/nginx,quay.io/mirror/nginx"
        );
        assert_eq!(ann["imagecache.io/last-pulled"], "2024-05-02T11:00:00Z");
        assert_eq!(ann["imagecache.io/pull-count"], "7");
        assert_eq!(
            v["dockerImageReference"],
            format!("docker.io/library/nginx@{name}")
        );
        assert_eq!(v["dockerImageManifestMediaType"], OCI_MANIFEST);
        assert_eq!(v["dockerImageLayers"][0]["size"], 1000);
        assert_eq!(
            v["dockerImageLayers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert!(v.get("dockerImageManifests").is_none());
        let m = &v["dockerImageMetadata"];
        assert_eq!(m["kind"], "DockerImage");
        assert_eq!(m["apiVersion"], "1.0");
        assert_eq!(m["Id"], d('c').to_string().as_str());
        assert_eq!(m["Created"], "2024-01-01T00:00:00Z");
        assert_eq!(m["Architecture"], "arm64");
        assert_eq!(m["Os"], "linux");
        assert_eq!(m["Variant"], "v8");
        assert_eq!(m["Config"]["Labels"]["team"], "a b");
        assert_eq!(m["Size"], 1600);
        assert_eq!(v["dockerImageMetadataVersion"], "1.0");
        // Round trip through the client-side type.
        let back: Image = serde_json::from_value(v).unwrap();
        assert_eq!(back, img);
    }

    #[test]
    fn index_lists_its_manifests_and_has_no_platform_labels() {
        let mut r = record('b');
        r.media_type = OCI_INDEX.into();
        r.config = None;
        r.layers = Box::new([]);
        r.platform = None;
        r.labels = StrMap::new();
        r.image_created = None;
        r.last_pulled = None;
        r.children = Box::new([ChildRef {
            digest: d('f'),
            size: 321,
            media_type: OCI_MANIFEST.into(),
            platform: Some(Platform {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v7".into()),
            }),
        }]);
        let img = Image::from_record(&r, &[], 1);
        assert_eq!(img.labels()[LABEL_TYPE], "index");
        assert_eq!(img.labels()[LABEL_TAGGED], "false");
        assert!(!img.labels().contains_key(LABEL_ARCH));
        assert_eq!(img.annotation(ANNOTATION_LAST_PULLED), None);
        assert_eq!(img.annotation(ANNOTATION_TAGS), Some(""));
        assert_eq!(
            img.docker_image_manifests,
            vec![ImageManifest {
                digest: d('f').to_string(),
                media_type: OCI_MANIFEST.into(),
                manifest_size: 321,
                architecture: "arm".into(),
                os: "linux".into(),
                variant: Some("v7".into()),
            }]
        );
        assert!(img.docker_image_layers.is_empty());
        assert_eq!(img.docker_image_metadata.size, 500);
    }

    #[test]
    fn uid_is_stable_per_digest_and_creation() {
        let a = record('a');
        let mut again = record('a');
        again.pull_count = 99;
        assert_eq!(uid(&a), uid(&again));
        let mut recached = record('a');
        recached.created = "2025-01-01T00:00:00Z".parse().unwrap();
        assert_ne!(uid(&a), uid(&recached));
        assert_ne!(uid(&a), uid(&record('b')));
        let u = uid(&a);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8");
    }

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

    #[test]
    fn legacy_alias_relabels_api_version() {
        let img = Image::from_record(&record('a'), &[], 3);
        let legacy: serde_json::Value =
            serde_json::from_slice(&img.encode(LEGACY_API_VERSION)).unwrap();
        assert_eq!(legacy["apiVersion"], "v1");
        assert_eq!(legacy["kind"], "Image");
        assert_eq!(legacy["metadata"]["name"], img.name());
    }

    #[test]
    fn image_without_references_is_named_by_digest() {
        let mut r = record('a');
        r.references.clear();
        let img = Image::from_record(&r, &[], 3);
        assert_eq!(img.docker_image_reference, d('a').to_string());
        assert!(!img.labels().contains_key(LABEL_REGISTRY));
        let tagged = Image::from_record(&r, &[(repo("ghcr.io", "o/x"), "v1".into())], 3);
        assert_eq!(
            tagged.docker_image_reference,
            format!("ghcr.io/o/x@{}", d('a'))
        );
    }
}
