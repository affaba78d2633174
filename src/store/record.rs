//! What the cache remembers about a manifest, and how it is read out of the manifest and its
//! image config. Pure: bytes in, records out.

use jiff::Timestamp;
use oci_spec::image::{ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use super::compact::{Atom, SmallSet, StrMap};
use crate::digest::Digest;
use crate::reference::{InvalidPlatform, PlatformSpec, RepoPath};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A blob a manifest points at.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
    pub media_type: Atom,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub os: Atom,
    pub architecture: Atom,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<Atom>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl From<PlatformSpec> for Platform {
    fn from(p: PlatformSpec) -> Platform {
        Platform {
            os: p.os.into(),
            architecture: p.architecture.into(),
            variant: p.variant.map(Into::into),
        }
    }
}

/// `os/arch[/variant]`, as the CLI and the config file write it ([`PlatformSpec`]).
impl std::str::FromStr for Platform {
    type Err = InvalidPlatform;

    fn from_str(s: &str) -> Result<Platform, InvalidPlatform> {
        s.parse::<PlatformSpec>().map(Platform::from)
    }
}

/// A manifest an index lists.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChildRef {
    pub digest: Digest,
    pub size: u64,
    pub media_type: Atom,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The persistent record of one cached manifest (`manifests/<alg>/<hex>.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: Atom,
    /// Size of the manifest itself.
    pub size: u64,
    /// Every (registry, repository) it was pulled through.
    pub references: SmallSet<RepoPath>,
    /// First cached.
    pub created: Timestamp,
    #[serde(default)]
    pub last_pulled: Option<Timestamp>,
    #[serde(default)]
    pub pull_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BlobRef>,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub layers: Box<[BlobRef]>,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub children: Box<[ChildRef]>,
    /// Boxed: few manifests have one (signatures, attestations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Box<Digest>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<Atom>,
    #[serde(default, skip_serializing_if = "StrMap::is_empty")]
    pub annotations: StrMap,
    /// From the image config, once the config blob has been cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "StrMap::is_empty")]
    pub labels: StrMap,
    /// The image's own creation time from its config (not when it was cached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_created: Option<Box<str>>,
}

impl ManifestRecord {
    /// A manifest first cached at `created` through `references`: what its bytes say. Its
    /// platform, labels and creation time come from its config ([`ManifestRecord::apply_config`]).
    pub fn new(
        digest: Digest,
        size: u64,
        parsed: ParsedManifest,
        references: SmallSet<RepoPath>,
        created: Timestamp,
    ) -> ManifestRecord {
        ManifestRecord {
            digest,
            media_type: parsed.media_type,
            size,
            references,
            created,
            last_pulled: None,
            pull_count: 0,
            config: parsed.config,
            layers: parsed.layers,
            children: parsed.children,
            subject: parsed.subject,
            artifact_type: parsed.artifact_type,
            annotations: parsed.annotations,
            platform: None,
            labels: StrMap::new(),
            image_created: None,
        }
    }

    /// What the image config says: platform, labels, creation time.
    pub fn apply_config(&mut self, info: &ConfigInfo) {
        self.platform = info.platform.clone();
        self.labels = info.labels.clone();
        self.image_created = info.created.clone();
    }

    pub fn is_index(&self) -> bool {
        !self.children.is_empty() || is_index_media_type(&self.media_type)
    }

    /// Every blob this manifest keeps alive, its own bytes included.
    pub fn blob_digests(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.digest)
            .chain(self.config.iter().map(|c| &c.digest))
            .chain(self.layers.iter().map(|l| &l.digest))
    }

    /// Manifest plus config plus layers, as the upstream declares them.
    pub fn image_size(&self) -> u64 {
        self.size
            + self.config.as_ref().map_or(0, |c| c.size)
            + self.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest has no media type")]
    NoMediaType,
    #[error("manifest refers to an invalid digest: {0}")]
    Digest(String),
}

/// What a manifest's bytes say about it, before any cache bookkeeping.
#[derive(Debug, Default, PartialEq)]
pub struct ParsedManifest {
    pub media_type: Atom,
    pub config: Option<BlobRef>,
    pub layers: Box<[BlobRef]>,
    pub children: Box<[ChildRef]>,
    pub subject: Option<Box<Digest>>,
    pub artifact_type: Option<Atom>,
    pub annotations: StrMap,
}

/// Parses a manifest or index. `content_type` is the upstream's header, which wins over the
/// body's own `mediaType` (Docker schema2 manifests carry both; some OCI ones carry neither).
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<ParsedManifest, ManifestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        schema_version: Option<u32>,
    }
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let media_type = match (content_type, probe.media_type) {
        (Some(c), _) => Atom::new(c),
        (None, Some(m)) => Atom::from(m),
        (None, None) if probe.manifests.is_some() => Atom::new(OCI_INDEX),
        (None, None) if probe.schema_version == Some(2) => Atom::new(OCI_MANIFEST),
        (None, None) => return Err(ManifestError::NoMediaType),
    };
    let digest = |d: &oci_spec::image::Digest| {
        d.to_string()
            .parse::<Digest>()
            .map_err(|e| ManifestError::Digest(e.to_string()))
    };
    let mut parsed = ParsedManifest {
        media_type,
        ..Default::default()
    };
    if is_index_media_type(&parsed.media_type) || probe.manifests.is_some() {
        let index: ImageIndex =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        parsed.children = index
            .manifests()
            .iter()
            .map(|m| {
                Ok(ChildRef {
                    digest: digest(m.digest())?,
                    size: m.size(),
                    media_type: Atom::from(m.media_type().to_string()),
                    platform: m.platform().as_ref().map(|p| Platform {
                        os: Atom::from(p.os().to_string()),
                        architecture: Atom::from(p.architecture().to_string()),
                        variant: p.variant().as_deref().map(Atom::new),
                    }),
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        parsed.subject = index
            .subject()
            .as_ref()
            .map(|s| digest(s.digest()).map(Box::new))
            .transpose()?;
        parsed.artifact_type = index
            .artifact_type()
            .as_ref()
            .map(|a| Atom::from(a.to_string()));
        parsed.annotations = index
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
    } else if probe.schema_version == Some(2) {
        let m: ImageManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        let blob = |d: &oci_spec::image::Descriptor| -> Result<BlobRef, ManifestError> {
            Ok(BlobRef {
                digest: digest(d.digest())?,
                size: d.size(),
                media_type: Atom::from(d.media_type().to_string()),
            })
        };
        parsed.config = Some(blob(m.config())?);
        parsed.layers = m.layers().iter().map(blob).collect::<Result<_, _>>()?;
        parsed.subject = m
            .subject()
            .as_ref()
            .map(|s| digest(s.digest()).map(Box::new))
            .transpose()?;
        parsed.artifact_type = m
            .artifact_type()
            .as_ref()
            .map(|a| a.to_string())
            .or_else(|| Some(m.config().media_type().to_string()).filter(|t| !is_image_config(t)))
            .map(Atom::from);
        parsed.annotations = m
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
    }
    // Anything else (Docker schema1, unknown artifacts) is cached opaquely, with no blob links.
    Ok(parsed)
}

fn is_image_config(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.config.v1+json"
        || media_type == "application/vnd.docker.container.image.v1+json"
}

/// The parts of an image config the cache records. Lenient: a config that does not parse just
/// leaves these unknown.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigInfo {
    pub platform: Option<Platform>,
    pub labels: StrMap,
    pub created: Option<Box<str>>,
}

pub fn parse_config(bytes: &[u8]) -> ConfigInfo {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Inner {
        #[serde(rename = "Labels")]
        labels: Option<StrMap>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Raw {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
        created: Option<String>,
        config: Option<Inner>,
    }
    let raw: Raw = serde_json::from_slice(bytes).unwrap_or_default();
    let platform = match (raw.os, raw.architecture) {
        (Some(os), Some(architecture)) => Some(Platform {
            os: Atom::from(os),
            architecture: Atom::from(architecture),
            variant: raw.variant.map(Atom::from),
        }),
        _ => None,
    };
    ConfigInfo {
        platform,
        labels: raw.config.and_then(|c| c.labels).unwrap_or_default(),
        created: raw.created.map(String::into_boxed_str),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_docker_schema2() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":7,"digest":"{}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":100,"digest":"{}"}}]}}"#,
            d('a'),
            d('b')
        );
        let p = parse_manifest(m.as_bytes(), None).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST);
        assert_eq!(p.config.unwrap().size, 7);
        assert_eq!(p.layers.len(), 1);
        assert_eq!(p.artifact_type, None);
    }

    #[test]
    fn parses_index_with_platforms() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","size":10,"digest":"{}","platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}}]}}"#,
            d('c')
        );
        let p = parse_manifest(m.as_bytes(), Some(&format!("{OCI_INDEX}; charset=utf-8"))).unwrap();
        assert_eq!(p.children.len(), 1);
        assert_eq!(
            p.children[0].platform.as_ref().unwrap().to_string(),
            "linux/arm/v7"
        );
    }

    #[test]
    fn rejects_bad_json_and_bad_digests() {
        assert!(parse_manifest(b"not json", None).is_err());
        let m = r#"{"schemaVersion":2,"config":{"mediaType":"x","size":1,"digest":"sha256:zz"},"layers":[]}"#;
        assert!(parse_manifest(m.as_bytes(), Some(OCI_MANIFEST)).is_err());
    }

    #[test]
    fn reads_config_labels() {
        let c = br#"{"os":"linux","architecture":"amd64","created":"2024-01-01T00:00:00Z","config":{"Labels":{"a":"b"}}}"#;
        let info = parse_config(c);
        assert_eq!(info.platform.unwrap().to_string(), "linux/amd64");
        assert_eq!(info.labels.get("a"), Some("b"));
        assert_eq!(parse_config(b"garbage"), ConfigInfo::default());
    }
}
