//! Pure mapping from what the registry pods' Image API reports to the desired [`CachedImage`].
//!
//! **Names.** A CachedImage is named `<cache>-<algorithm>-<hex>` (`mirror-sha256-4f2a...`):
//! deterministic, a valid DNS subdomain (the cache name is one, the rest is lowercase
//! alphanumerics and dashes), and unique per cache in a namespace because the suffix has a fixed
//! shape per algorithm. When that would exceed 253 characters (cache names over 181 characters
//! with sha256), the cache part is cut and followed by `-` and 8 hex digits of the SHA-256 of the
//! full cache name, so two long cache names sharing a prefix still get distinct names.
//!
//! **Merging pods.** Each pod has its own store, so tags and the last pull may differ between the
//! pods holding a digest: the CachedImage lists the union of their tags and the latest pull. The
//! reference, labels and content come from the first holder by pod name.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use sha2::{Digest as _, Sha256};

use crate::api::image::{
    ANNOTATION_LAST_PULLED, ANNOTATION_TAGS, Image, LABEL_REGISTRY, LABEL_REPOSITORY, LABEL_TYPE,
    label_value,
};
use crate::crd::{CacheRef, CachedImage, CachedImageSpec, ImageCache, ImageLayer};
use crate::digest::Digest;
use crate::operator::desired::{self, DesiredError};

/// Label every CachedImage carries: the (label-safe) name of its ImageCache.
pub const CACHE_LABEL: &str = "imagecache.io/cache";
/// Labels copied from the primary Image.
const COPIED_LABELS: [&str; 3] = [LABEL_REGISTRY, LABEL_REPOSITORY, LABEL_TYPE];
/// Longest object name (DNS subdomain).
const MAX_NAME: usize = 253;

/// Why an Image cannot be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("no registry pod reports the image")]
    NoImage,
    #[error("image {image}: {source}")]
    BadDigest {
        image: String,
        #[source]
        source: crate::digest::InvalidDigest,
    },
    #[error(transparent)]
    Cache(#[from] DesiredError),
}

/// The CachedImage name of `digest` in `cache` (see the module doc).
pub fn object_name(cache: &str, digest: &Digest) -> String {
    let suffix = format!("-{}-{}", digest.algorithm().as_str(), digest.hex());
    if cache.len() + suffix.len() <= MAX_NAME {
        return format!("{cache}{suffix}");
    }
    let hash = hex::encode(Sha256::digest(cache.as_bytes()));
    let tag = &hash[..8];
    let room = MAX_NAME - suffix.len() - 1 - tag.len();
    let prefix: String = cache.chars().take(room).collect();
    // A DNS label may not end in `.` or `-`.
    let prefix = prefix.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{prefix}-{tag}{suffix}")
}

/// The value of [`CACHE_LABEL`] for a cache (names over 63 characters are shortened).
pub fn cache_label_value(cache: &str) -> String {
    label_value(cache)
}

fn parse_digest(image: &Image, raw: &str) -> Result<Digest, MappingError> {
    raw.parse().map_err(|source| MappingError::BadDigest {
        image: image.name().to_owned(),
        source,
    })
}

fn time(raw: Option<&str>) -> Option<Timestamp> {
    raw.and_then(|s| s.parse::<Timestamp>().ok())
}

/// The CachedImage for the images the pods report for one digest (`images` sorted by pod name,
/// first one primary) held by `pods` (which may name more pods than `images`: pods whose
/// contribution is known only from the existing object, after an operator restart).
pub fn desired(
    ic: &ImageCache,
    images: &[&Image],
    pods: &[String],
) -> Result<CachedImage, MappingError> {
    let primary = *images.first().ok_or(MappingError::NoImage)?;
    let cache = ic.name_any();
    let digest = parse_digest(primary, primary.name())?;

    let layers = primary
        .docker_image_layers
        .iter()
        .map(|l| {
            Ok(ImageLayer {
                name: parse_digest(primary, &l.name)?,
                size: i64::try_from(l.size).unwrap_or(i64::MAX),
                media_type: l.media_type.clone(),
            })
        })
        .collect::<Result<Vec<_>, MappingError>>()?;
    let manifests = primary
        .docker_image_manifests
        .iter()
        .map(|m| parse_digest(primary, &m.digest))
        .collect::<Result<Vec<_>, _>>()?;
    let tags: BTreeSet<String> = images
        .iter()
        .filter_map(|i| i.annotation(ANNOTATION_TAGS))
        .flat_map(|t| t.split(','))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let last_pulled = images
        .iter()
        .filter_map(|i| time(i.annotation(ANNOTATION_LAST_PULLED)))
        .max();
    let pods: BTreeSet<String> = pods.iter().cloned().collect();

    let spec = CachedImageSpec {
        cache_ref: CacheRef {
            name: cache.clone(),
        },
        digest: digest.clone(),
        reference: primary.docker_image_reference.clone(),
        media_type: primary.docker_image_manifest_media_type.clone(),
        size: i64::try_from(primary.docker_image_metadata.size).unwrap_or(i64::MAX),
        layers,
        manifests,
        tags: tags.into_iter().collect(),
        created: time(primary.docker_image_metadata.created.as_deref()).map(Time),
        last_pulled: last_pulled.map(Time),
        pods: pods.into_iter().collect(),
    };

    let mut labels = BTreeMap::from([(CACHE_LABEL.to_owned(), cache_label_value(&cache))]);
    for key in COPIED_LABELS {
        if let Some(v) = primary.labels().get(key) {
            labels.insert(key.to_owned(), v.clone());
        }
    }
    let mut obj = CachedImage::new(&object_name(&cache, &digest), spec);
    obj.metadata = ObjectMeta {
        name: obj.metadata.name.take(),
        namespace: ic.namespace(),
        labels: Some(labels),
        owner_references: Some(vec![desired::owner_reference(ic)?]),
        ..Default::default()
    };
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::image::{DockerImageMetadata, ImageLayer as ApiLayer, ImageManifest};
    use serde_json::json;

    pub(crate) fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn cache() -> ImageCache {
        serde_json::from_value(json!({
            "apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
            "metadata": {"name": "mirror", "namespace": "ns", "uid": "ic-uid"},
            "spec": {}
        }))
        .unwrap()
    }

    fn single(tags: &str, last_pulled: Option<&str>) -> Image {
        let mut annotations = BTreeMap::from([(ANNOTATION_TAGS.to_owned(), tags.to_owned())]);
        if let Some(t) = last_pulled {
            annotations.insert(ANNOTATION_LAST_PULLED.to_owned(), t.to_owned());
        }
        Image {
            api_version: "image.openshift.io/v1".into(),
            kind: "Image".into(),
            metadata: ObjectMeta {
                name: Some(d('a').to_string()),
                labels: Some(BTreeMap::from([
                    (LABEL_REGISTRY.to_owned(), "docker.io".to_owned()),
                    (LABEL_REPOSITORY.to_owned(), "library.nginx".to_owned()),
                    (LABEL_TYPE.to_owned(), "image".to_owned()),
                    ("imagecache.io/tagged".to_owned(), "true".to_owned()),
                ])),
                annotations: Some(annotations),
                ..Default::default()
            },
            docker_image_reference: format!("docker.io/library/nginx@{}", d('a')),
            docker_image_manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            docker_image_layers: vec![ApiLayer {
                name: d('e').to_string(),
                size: 1000,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            }],
            docker_image_metadata: DockerImageMetadata {
                created: Some("2024-01-01T00:00:00Z".into()),
                size: 1600,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn single_image_maps_to_spec_labels_and_owner() {
        let img = single(
            "docker.io/library/nginx:1.27,docker.io/library/nginx:latest",
            Some("2024-05-02T11:00:00Z"),
        );
        let obj = desired(&cache(), &[&img], &["mirror-0".into()]).unwrap();
        let v = serde_json::to_value(&obj).unwrap();
        let name = format!("mirror-sha256-{}", "a".repeat(64));
        assert_eq!(
            v,
            json!({
                "apiVersion": "imagecache.io/v1alpha1",
                "kind": "CachedImage",
                "metadata": {
                    "name": name,
                    "namespace": "ns",
                    "labels": {
                        "imagecache.io/cache": "mirror",
                        "imagecache.io/registry": "docker.io",
                        "imagecache.io/repository": "library.nginx",
                        "imagecache.io/type": "image",
                    },
                    "ownerReferences": [{
                        "apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
                        "name": "mirror", "uid": "ic-uid",
                        "controller": true, "blockOwnerDeletion": true,
                    }],
                },
                "spec": {
                    "cacheRef": {"name": "mirror"},
                    "digest": d('a').to_string(),
                    "reference": format!("docker.io/library/nginx@{}", d('a')),
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "size": 1600,
                    "layers": [{"name": d('e').to_string(), "size": 1000,
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}],
                    "tags": ["docker.io/library/nginx:1.27", "docker.io/library/nginx:latest"],
                    "created": "2024-01-01T00:00:00Z",
                    "lastPulled": "2024-05-02T11:00:00Z",
                    "pods": ["mirror-0"],
                },
            })
        );
    }

    #[test]
    fn multi_arch_index_lists_its_manifests_and_merges_pods() {
        let mut index = single("", None);
        index.metadata.name = Some(d('b').to_string());
        index.docker_image_reference = format!("docker.io/library/nginx@{}", d('b'));
        index.docker_image_manifest_media_type = "application/vnd.oci.image.index.v1+json".into();
        index.docker_image_layers.clear();
        index.docker_image_metadata = DockerImageMetadata {
            size: 900,
            ..Default::default()
        };
        index
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_TYPE.into(), "index".into());
        index.docker_image_manifests = ['c', 'f']
            .into_iter()
            .map(|c| ImageManifest {
                digest: d(c).to_string(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                manifest_size: 400,
                architecture: if c == 'c' { "amd64" } else { "arm64" }.into(),
                os: "linux".into(),
                variant: None,
            })
            .collect();
        // The second pod was pulled through a tag and more recently.
        let mut on_b = index.clone();
        on_b.metadata.annotations = Some(BTreeMap::from([
            (
                ANNOTATION_TAGS.to_owned(),
                "docker.io/library/nginx:1.27".to_owned(),
            ),
            (
                ANNOTATION_LAST_PULLED.to_owned(),
                "2024-06-01T00:00:00Z".to_owned(),
            ),
        ]));
        let obj = desired(
            &cache(),
            &[&index, &on_b],
            &["mirror-1".into(), "mirror-0".into()],
        )
        .unwrap();
        assert_eq!(
            obj.metadata.name.as_deref(),
            Some(format!("mirror-sha256-{}", "b".repeat(64)).as_str())
        );
        assert_eq!(obj.spec.manifests, vec![d('c'), d('f')]);
        assert!(obj.spec.layers.is_empty());
        assert_eq!(obj.spec.size, 900);
        assert_eq!(obj.spec.created, None);
        assert_eq!(obj.spec.tags, ["docker.io/library/nginx:1.27"]);
        assert_eq!(
            obj.spec.last_pulled,
            Some(Time("2024-06-01T00:00:00Z".parse().unwrap()))
        );
        assert_eq!(obj.spec.pods, ["mirror-0", "mirror-1"]);
        assert_eq!(obj.labels()["imagecache.io/type"], "index");
        let v = serde_json::to_value(&obj).unwrap();
        assert!(v["spec"].get("layers").is_none());
        assert!(v.get("status").is_none(), "the sync never writes status");
        assert!(v["metadata"].get("finalizers").is_none());
    }

    #[test]
    fn names_are_dns_subdomains_unique_and_bounded() {
        let valid =
            regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
                .unwrap();
        let sha512: Digest = format!("sha512:{}", "9".repeat(128)).parse().unwrap();
        let long_a = format!("{}.a", "x".repeat(250));
        let long_b = format!("{}.b", "x".repeat(250));
        let cut_at_dot = format!("{}.{}", "y".repeat(171), "z".repeat(60));
        let mut seen = BTreeSet::new();
        for cache in ["c", "my.cache", &long_a, &long_b, &cut_at_dot] {
            for digest in [d('a'), d('b'), sha512.clone()] {
                let n = object_name(cache, &digest);
                assert!(n.len() <= 253, "{n}");
                assert!(valid.is_match(&n), "{n}");
                assert!(n.ends_with(digest.hex().as_str()));
                assert!(seen.insert(n), "names must be unique");
            }
        }
        assert_eq!(
            object_name("c", &d('a')),
            format!("c-sha256-{}", "a".repeat(64))
        );
        assert_eq!(object_name(&long_a, &d('a')).len(), 253);
    }

    #[test]
    fn a_bad_digest_is_an_error_not_a_panic() {
        let mut img = single("", None);
        img.metadata.name = Some("not-a-digest".into());
        assert!(matches!(
            desired(&cache(), &[&img], &[]),
            Err(MappingError::BadDigest { .. })
        ));
        assert!(matches!(
            desired(&cache(), &[], &[]),
            Err(MappingError::NoImage)
        ));
    }
}
