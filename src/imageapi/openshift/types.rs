//! Building the [`Image`] (a wire shape in [`crate::api::image`]) from a [`ManifestRecord`] and
//! the tags pointing at it, and encoding it. Pure: record in, object out.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::api::image::{
    ANNOTATION_LAST_PULLED, ANNOTATION_PULL_COUNT, ANNOTATION_REFERENCES, ANNOTATION_TAGS,
    API_VERSION, DockerConfig, DockerImageMetadata, Image, ImageLayer, ImageManifest, KIND,
    LABEL_ARCH, LABEL_OS, LABEL_REGISTRY, LABEL_REPOSITORY, LABEL_TAGGED, LABEL_TYPE, k8s_time,
    label_value,
};
use crate::reference::RepoPath;
use crate::store::ManifestRecord;

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

/// JSON of the object as served under `api_version` (the group's, or the legacy `v1`).
pub fn encode(image: &Image, api_version: &str) -> Vec<u8> {
    relabel_api_version(encode_json(image), api_version)
}

/// The fields a field selector may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Name,
    DockerImageReference,
}

impl Field {
    /// The value of this field in `image`.
    pub fn of(self, image: &Image) -> &str {
        match self {
            Field::Name => image.name(),
            Field::DockerImageReference => &image.docker_image_reference,
        }
    }

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
    use crate::api::image::LEGACY_API_VERSION;
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
        let img = from_record(&r, &tags, 42);
        let v: serde_json::Value = serde_json::from_slice(&encode(&img, API_VERSION)).unwrap();
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
        let img = from_record(&r, &[], 1);
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
    fn legacy_alias_relabels_api_version() {
        let img = from_record(&record('a'), &[], 3);
        let legacy: serde_json::Value =
            serde_json::from_slice(&encode(&img, LEGACY_API_VERSION)).unwrap();
        assert_eq!(legacy["apiVersion"], "v1");
        assert_eq!(legacy["kind"], "Image");
        assert_eq!(legacy["metadata"]["name"], img.name());
    }

    #[test]
    fn image_without_references_is_named_by_digest() {
        let mut r = record('a');
        r.references.clear();
        let img = from_record(&r, &[], 3);
        assert_eq!(img.docker_image_reference, d('a').to_string());
        assert!(!img.labels().contains_key(LABEL_REGISTRY));
        let tagged = from_record(&r, &[(repo("ghcr.io", "o/x"), "v1".into())], 3);
        assert_eq!(
            tagged.docker_image_reference,
            format!("ghcr.io/o/x@{}", d('a'))
        );
    }
}
