//! The response shapes of the reference (`ImageSummary`, `ImageInspect`,
//! `HistoryResponseItem`, `ImageDeleteResponseItem`, `ImagePruneResponse`) and how a cached
//! image fills them. Pure: the image config arrives as bytes the handler read.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, Child, Image, Listed};
use crate::store::{Atom, ManifestRecord, Platform};

/// Fields the daemon stopped sending at API 1.44 (`VirtualSize`) are sent to older clients.
pub const VIRTUAL_SIZE_REMOVED: u32 = 44;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OciPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl From<&Platform> for OciPlatform {
    fn from(p: &Platform) -> Self {
        OciPlatform {
            architecture: p.architecture.to_string(),
            os: p.os.to_string(),
            variant: p.variant.as_ref().map(|v| v.to_string()),
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<OciPlatform>,
}

impl Descriptor {
    fn of(r: &ManifestRecord) -> Descriptor {
        Descriptor {
            media_type: r.media_type.to_string(),
            digest: r.digest.to_string(),
            size: r.size,
            platform: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    pub id: String,
    pub parent_id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: i64,
    pub size: u64,
    /// -1 unless `shared-size=1` asked for it, as the daemon does.
    pub shared_size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
    pub labels: BTreeMap<String, String>,
    /// Nothing runs containers from the cache.
    pub containers: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<ManifestSummary>>,
    pub descriptor: Descriptor,
}

#[derive(Debug, Serialize)]
pub struct ManifestSize {
    #[serde(rename = "Total")]
    pub total: u64,
    #[serde(rename = "Content")]
    pub content: u64,
}

#[derive(Debug, Serialize)]
pub struct UnpackedSize {
    #[serde(rename = "Unpacked")]
    pub unpacked: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageData {
    pub platform: OciPlatform,
    pub containers: Vec<String>,
    pub size: UnpackedSize,
}

/// One platform manifest of an image (`manifests=1`, what `docker image ls --tree` shows).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManifestSummary {
    #[serde(rename = "ID")]
    pub id: String,
    pub descriptor: Descriptor,
    /// All of its blobs are cached.
    pub available: bool,
    /// Cached bytes; nothing is unpacked here, so both figures are the same.
    pub size: ManifestSize,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_data: Option<ImageData>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    #[serde(rename = "Type")]
    pub kind: String,
    pub layers: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Metadata {
    pub last_tag_time: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub comment: String,
    pub created: String,
    pub docker_version: String,
    pub author: String,
    pub config: serde_json::Value,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
    #[serde(rename = "RootFS")]
    pub root_fs: RootFs,
    pub metadata: Metadata,
    pub descriptor: Descriptor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<ManifestSummary>>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryItem {
    pub id: String,
    pub created: i64,
    pub created_by: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub comment: String,
}

/// `{"Untagged": ref}` or `{"Deleted": id}`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub enum DeleteItem {
    Untagged(String),
    Deleted(String),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PruneResponse {
    /// `null` when nothing went, as the daemon sends it.
    pub images_deleted: Option<Vec<DeleteItem>>,
    pub space_reclaimed: u64,
}

/// The parts of an image config these views read. Lenient: what does not parse is absent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConfigFile {
    pub created: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub variant: Option<String>,
    #[serde(rename = "os.version")]
    pub os_version: Option<String>,
    pub config: Option<serde_json::Value>,
    pub rootfs: Option<ConfigRootFs>,
    pub history: Vec<ConfigHistory>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConfigRootFs {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConfigHistory {
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: bool,
}

impl ConfigFile {
    pub fn parse(bytes: &[u8]) -> ConfigFile {
        serde_json::from_slice(bytes).unwrap_or_default()
    }
}

fn seconds(t: Option<&str>) -> Option<i64> {
    t.and_then(|c| c.parse::<Timestamp>().ok())
        .map(|t| t.as_second())
}

pub fn summary(
    catalog: &Catalog,
    listed: Listed<'_>,
    shared_size: Option<u64>,
    manifests: bool,
    api_minor: u32,
) -> ImageSummary {
    let image = listed.image;
    ImageSummary {
        id: image.id(),
        parent_id: String::new(),
        repo_tags: listed.repo_tags,
        repo_digests: listed.repo_digests,
        created: image.created.as_second(),
        size: image.size,
        shared_size: shared_size.map_or(-1, |s| s as i64),
        virtual_size: (api_minor < VIRTUAL_SIZE_REMOVED).then_some(image.size),
        labels: image.labels.clone(),
        containers: 0,
        manifests: manifests.then(|| manifest_summaries(catalog, image)),
        descriptor: Descriptor::of(&image.record),
    }
}

/// An index lists its platform manifests (cached or not); a single image lists itself.
pub fn manifest_summaries(catalog: &Catalog, image: &Image) -> Vec<ManifestSummary> {
    let entry =
        |id: String, descriptor: Descriptor, record: Option<&ManifestRecord>, attestation| {
            let bytes = record.map_or(0, |r| catalog.cached_bytes(r));
            let platform = descriptor.platform.clone();
            ManifestSummary {
                id,
                available: record.is_some_and(|r| catalog.complete(r)),
                size: ManifestSize {
                    total: bytes,
                    content: bytes,
                },
                kind: if attestation {
                    "attestation"
                } else if platform.is_some() {
                    "image"
                } else {
                    "unknown"
                },
                image_data: platform.filter(|_| !attestation).map(|platform| ImageData {
                    platform,
                    containers: Vec::new(),
                    size: UnpackedSize { unpacked: 0 },
                }),
                descriptor,
            }
        };
    if !image.is_index() {
        let mut d = Descriptor::of(&image.record);
        d.platform = image.record.platform.as_ref().map(OciPlatform::from);
        return vec![entry(image.id(), d, Some(&image.record), false)];
    }
    image
        .children
        .iter()
        .map(|c: &Child| {
            let d = Descriptor {
                media_type: c.child.media_type.to_string(),
                digest: c.child.digest.to_string(),
                size: c.child.size,
                platform: c.platform().map(OciPlatform::from),
            };
            entry(
                c.child.digest.to_string(),
                d,
                c.record.as_deref(),
                c.is_attestation(),
            )
        })
        .collect()
}

/// `platform`: the manifest described (the image's own, or a child of an index: the requested
/// platform's when `requested`, else the host's); `config`: its image config when cached. The
/// size is the whole image's, as `docker image ls` shows it, unless a platform was requested.
pub fn inspect(
    catalog: &Catalog,
    image: &Image,
    platform: Option<&ManifestRecord>,
    requested: bool,
    config: &ConfigFile,
    manifests: bool,
    api_minor: u32,
) -> ImageInspect {
    let size = match platform {
        Some(p) if requested && image.is_index() => catalog.cached_bytes(p),
        _ => image.size,
    };
    let own = platform.and_then(|p| p.platform.as_ref());
    let pick = |from_config: &Option<String>, from_record: Option<&Atom>| {
        from_config
            .clone()
            .or_else(|| from_record.map(|a| a.to_string()))
            .unwrap_or_default()
    };
    let labels = platform.map_or_else(|| image.labels.clone(), |p| p.labels.to_btree());
    let mut container_config = config
        .config
        .clone()
        .filter(|c| c.is_object())
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(obj) = container_config.as_object_mut()
        && !obj.contains_key("Labels")
        && !labels.is_empty()
    {
        obj.insert("Labels".into(), serde_json::json!(labels));
    }
    let created = config
        .created
        .as_deref()
        .and_then(|c| c.parse::<Timestamp>().ok())
        .unwrap_or(image.created);
    ImageInspect {
        id: image.id(),
        repo_tags: image.repo_tags(),
        repo_digests: image.repo_digests(),
        parent: String::new(),
        comment: config.comment.clone().unwrap_or_default(),
        created: created.to_string(),
        docker_version: String::new(),
        author: config.author.clone().unwrap_or_default(),
        config: container_config,
        architecture: pick(&config.architecture, own.map(|p| &p.architecture)),
        variant: config
            .variant
            .clone()
            .or_else(|| own.and_then(|p| p.variant.as_ref().map(|v| v.to_string()))),
        os: pick(&config.os, own.map(|p| &p.os)),
        os_version: config.os_version.clone(),
        size,
        virtual_size: (api_minor < VIRTUAL_SIZE_REMOVED).then_some(size),
        root_fs: RootFs {
            kind: config
                .rootfs
                .as_ref()
                .and_then(|r| r.kind.clone())
                .unwrap_or_else(|| "layers".into()),
            layers: config
                .rootfs
                .as_ref()
                .map(|r| r.diff_ids.clone())
                .unwrap_or_default(),
        },
        // The cache tags an image when it first stores it; later re-checks are not re-tags.
        metadata: Metadata {
            last_tag_time: if image.tags.is_empty() {
                "0001-01-01T00:00:00Z".into()
            } else {
                image.record.created.to_string()
            },
        },
        descriptor: Descriptor::of(&image.record),
        manifests: manifests.then(|| manifest_summaries(catalog, image)),
    }
}

/// Newest first, like the daemon. Each history entry that made a layer gets that layer's
/// (compressed: nothing is unpacked here) size; the newest entry carries the image ID and tags,
/// the rest `<missing>`. A config without history (or not cached) gives one entry per layer.
pub fn history(
    image: &Image,
    platform: Option<&ManifestRecord>,
    config: &ConfigFile,
) -> Vec<HistoryItem> {
    let fallback = image.created.as_second();
    let layers: Vec<u64> =
        platform.map_or_else(Vec::new, |p| p.layers.iter().map(|l| l.size).collect());
    let mut items: Vec<HistoryItem> = Vec::new();
    if config.history.is_empty() {
        for size in &layers {
            items.push(HistoryItem {
                id: "<missing>".into(),
                created: fallback,
                created_by: String::new(),
                tags: Vec::new(),
                size: *size,
                comment: String::new(),
            });
        }
        if items.is_empty() {
            items.push(HistoryItem {
                id: "<missing>".into(),
                created: fallback,
                created_by: String::new(),
                tags: Vec::new(),
                size: image.size,
                comment: String::new(),
            });
        }
    } else {
        let mut next_layer = layers.iter();
        for h in &config.history {
            let size = if h.empty_layer {
                0
            } else {
                next_layer.next().copied().unwrap_or(0)
            };
            items.push(HistoryItem {
                id: "<missing>".into(),
                created: seconds(h.created.as_deref()).unwrap_or(fallback),
                created_by: h.created_by.clone().unwrap_or_default(),
                tags: Vec::new(),
                size,
                comment: h.comment.clone().unwrap_or_default(),
            });
        }
    }
    items.reverse();
    if let Some(top) = items.first_mut() {
        top.id = image.id();
        top.tags = image.repo_tags();
    }
    items
}

#[cfg(test)]
mod tests {
    use super::super::catalog::Catalog;
    use super::super::fixture::{fixture, platform};
    use super::*;

    fn catalog() -> Catalog {
        Catalog::build(fixture().0, &platform("amd64"))
    }

    fn image<'a>(c: &'a Catalog, name: &str) -> &'a Image {
        c.resolve(name).unwrap().image()
    }

    const CONFIG: &str = r#"{"created":"2024-01-02T00:00:00Z","author":"me","architecture":"amd64","os":"linux",
        "config":{"Env":["PATH=/bin"],"Cmd":["nginx"],"Labels":{"team":"a"}},
        "rootfs":{"type":"layers","diff_ids":["sha256:1","sha256:2"]},
        "history":[{"created":"2024-01-01T00:00:00Z","created_by":"ADD rootfs"},
                   {"created":"2024-01-01T00:00:01Z","created_by":"ENV x=y","empty_layer":true},
                   {"created":"2024-01-02T00:00:00Z","created_by":"RUN make","comment":"buildkit"}]}"#;

    #[test]
    fn history_newest_first_with_layer_sizes() {
        let c = catalog();
        let img = image(&c, "nginx:1.27");
        let h = history(img, img.primary(), &ConfigFile::parse(CONFIG.as_bytes()));
        let rows: Vec<(&str, &str, u64)> = h
            .iter()
            .map(|i| (i.id.as_str(), i.created_by.as_str(), i.size))
            .collect();
        assert_eq!(
            rows,
            vec![
                (img.id().as_str(), "RUN make", 2000),
                ("<missing>", "ENV x=y", 0),
                ("<missing>", "ADD rootfs", 1000),
            ]
        );
        assert_eq!(h[0].tags, img.repo_tags());
        assert!(h[1].tags.is_empty());
        assert_eq!(h[0].created, 1704153600);
        assert_eq!(h[0].comment, "buildkit");
        // Without a config: one entry per layer, dated like the image.
        let h = history(img, img.primary(), &ConfigFile::default());
        assert_eq!(
            h.iter().map(|i| i.size).collect::<Vec<_>>(),
            vec![2000, 1000]
        );
        assert_eq!(h[1].created, img.created.as_second());
    }

    #[test]
    fn summary_shape() {
        let c = catalog();
        let rows = c
            .list(
                &Default::default(),
                Timestamp::now(),
                &jiff::tz::TimeZone::UTC,
            )
            .unwrap();
        let v = serde_json::to_value(
            rows.into_iter()
                .map(|l| summary(&c, l, None, true, 50))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let multi = &v[0];
        for key in [
            "Id",
            "ParentId",
            "RepoTags",
            "RepoDigests",
            "Created",
            "Size",
            "SharedSize",
            "Labels",
            "Containers",
            "Descriptor",
            "Manifests",
        ] {
            assert!(multi.get(key).is_some(), "{key} missing: {multi}");
        }
        assert!(multi.get("VirtualSize").is_none());
        assert_eq!(
            multi["RepoTags"],
            serde_json::json!(["quay.io/org/multi:v1"])
        );
        assert_eq!(multi["SharedSize"], -1);
        assert_eq!(multi["Created"], 1704326400);
        assert_eq!(multi["Descriptor"]["mediaType"], crate::store::OCI_INDEX);
        let m = multi["Manifests"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0]["ImageData"]["Platform"]["architecture"], "arm64");
        assert_eq!(m[0]["Available"], false, "arm64 layers are not cached");
        assert_eq!(m[1]["Available"], true);
        assert_eq!(m[1]["Size"]["Content"], 100 + 10 + 1000 + 2000);
        assert_eq!(m[2]["Kind"], "attestation");
        assert!(m[2].get("ImageData").is_none());
        let dangling = &v[3];
        assert_eq!(dangling["RepoTags"], serde_json::json!([]));
        assert_eq!(dangling["Manifests"][0]["Kind"], "image");
        // Old clients still get VirtualSize.
        let rows = c
            .list(
                &Default::default(),
                Timestamp::now(),
                &jiff::tz::TimeZone::UTC,
            )
            .unwrap();
        let old = serde_json::to_value(summary(
            &c,
            rows.into_iter().next().unwrap(),
            Some(5),
            false,
            41,
        ))
        .unwrap();
        assert_eq!(old["VirtualSize"], old["Size"]);
        assert_eq!(old["SharedSize"], 5);
        assert!(old.get("Manifests").is_none());
    }

    #[test]
    fn inspect_shape() {
        let c = catalog();
        let img = image(&c, "nginx:1.27");
        let v = serde_json::to_value(inspect(
            &c,
            img,
            img.primary(),
            false,
            &ConfigFile::parse(CONFIG.as_bytes()),
            false,
            51,
        ))
        .unwrap();
        assert_eq!(v["Id"], img.id());
        assert_eq!(v["Created"], "2024-01-02T00:00:00Z");
        assert_eq!(v["Author"], "me");
        assert_eq!(v["Config"]["Cmd"], serde_json::json!(["nginx"]));
        assert_eq!(v["RootFS"]["Layers"].as_array().unwrap().len(), 2);
        assert_eq!(v["Architecture"], "amd64");
        assert_eq!(v["Size"], img.size);
        assert_eq!(
            v["RepoDigests"],
            serde_json::json!([
                format!("nginx@{}", img.id()),
                format!("upstream.test/team/app@{}", img.id())
            ])
        );
        assert!(v.get("Manifests").is_none());
        // An index inspected for a platform describes that platform; without its config the
        // record's platform and labels fill in.
        let multi = image(&c, "quay.io/org/multi:v1");
        let arm = multi.for_platform(&platform("arm64"));
        let v = serde_json::to_value(inspect(
            &c,
            multi,
            arm,
            true,
            &ConfigFile::default(),
            true,
            51,
        ))
        .unwrap();
        assert_eq!(v["Architecture"], "arm64");
        assert_eq!(v["Config"]["Labels"]["arch"], "arm");
        // Its manifest and the layer it shares with amd64 are cached; its own blobs are not.
        assert_eq!(v["Size"], 100 + 2000);
        assert_eq!(v["Manifests"].as_array().unwrap().len(), 3);
        assert_eq!(v["Metadata"]["LastTagTime"], "2025-01-01T00:00:00Z");
        // Without a requested platform: the host's platform, the whole image's size.
        let v = serde_json::to_value(inspect(
            &c,
            multi,
            multi.primary(),
            false,
            &ConfigFile::default(),
            false,
            51,
        ))
        .unwrap();
        assert_eq!(v["Architecture"], "amd64");
        assert_eq!(v["Size"], multi.size);
    }

    #[test]
    fn delete_items_serialise_like_docker() {
        let items = vec![
            DeleteItem::Untagged("nginx:1.27".into()),
            DeleteItem::Deleted("sha256:abc".into()),
        ];
        assert_eq!(
            serde_json::to_value(&items).unwrap(),
            serde_json::json!([{"Untagged": "nginx:1.27"}, {"Deleted": "sha256:abc"}])
        );
        let r = PruneResponse {
            images_deleted: Some(items),
            space_reclaimed: 7,
        };
        assert_eq!(serde_json::to_value(&r).unwrap()["SpaceReclaimed"], 7);
    }
}
