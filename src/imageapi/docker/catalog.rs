//! The cache seen as a Docker image store. Pure: built from a store snapshot, answers lookups,
//! list and prune selections and delete plans; the handlers do the I/O.
//!
//! What an image is: every cached manifest that is tagged, or that no cached index lists. The
//! platform manifests of a cached index are folded into it, as Docker's containerd store folds
//! them into one multi-platform image (`docker image ls --tree` shows them). Its ID is the
//! manifest digest (containerd-backed Docker's choice too), so one image pulled through several
//! repositories is one row with several tags, and a tag re-pointed upstream leaves the old
//! manifest behind as a dangling `<none>` image, like `docker pull` does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::error::DockerError;
use super::filters::{Filters, glob_match};
use super::names::{ImageName, familiar, familiar_digest, familiar_tag};
use crate::digest::Digest;
use crate::reference::RepoPath;
use crate::store::{Atom, BlobTable, ChildRef, ManifestRecord, Platform, Snapshot, TaggedRecord};

/// Filters `GET /images/json` accepts.
pub const LIST_FILTERS: &[&str] = &["before", "dangling", "label", "reference", "since", "until"];
/// Filters `POST /images/prune` accepts.
pub const PRUNE_FILTERS: &[&str] = &["dangling", "label", "label!", "until"];

/// One platform manifest an index lists, and its record when it is cached.
#[derive(Clone, Debug)]
pub struct Child {
    pub child: ChildRef,
    pub record: Option<Arc<ManifestRecord>>,
}

impl Child {
    pub fn platform(&self) -> Option<&Platform> {
        self.child
            .platform
            .as_ref()
            .or_else(|| self.record.as_ref().and_then(|r| r.platform.as_ref()))
    }

    /// Buildx attestation manifests sit in indexes as `unknown/unknown`.
    pub fn is_attestation(&self) -> bool {
        self.platform()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
    }
}

#[derive(Clone, Debug)]
pub struct Image {
    pub record: Arc<ManifestRecord>,
    /// Sorted.
    pub tags: Vec<(RepoPath, String)>,
    /// For an index: every manifest it lists, in its order.
    pub children: Vec<Child>,
    /// The image config's `created`, else when the cache first stored the manifest.
    pub created: Timestamp,
    /// From the config of the manifest that represents the image (see [`Image::primary`]).
    pub labels: BTreeMap<String, String>,
    /// Bytes of this image's content present in the cache (blobs shared with other images count
    /// for each of them, as in `docker image ls`).
    pub size: u64,
    /// The cached blobs behind `size`.
    pub blobs: BTreeSet<Digest>,
    /// The cached manifest that stands for the image: itself, or for an index the child for
    /// the host's platform (else the first cached non-attestation child).
    primary: Option<Arc<ManifestRecord>>,
}

impl Image {
    pub fn id(&self) -> String {
        self.record.digest.to_string()
    }

    pub fn short_id(&self) -> String {
        self.record.digest.hex().chars().take(12).collect()
    }

    pub fn is_index(&self) -> bool {
        self.record.is_index()
    }

    pub fn primary(&self) -> Option<&ManifestRecord> {
        self.primary.as_deref()
    }

    pub fn repo_tags(&self) -> Vec<String> {
        self.tags.iter().map(|(r, t)| familiar_tag(r, t)).collect()
    }

    /// `name@digest` for every repository it was pulled or tagged through.
    pub fn repo_digests(&self) -> Vec<String> {
        let repos: BTreeSet<&RepoPath> = self
            .record
            .references
            .iter()
            .chain(self.tags.iter().map(|(r, _)| r))
            .collect();
        repos
            .into_iter()
            .map(|r| familiar_digest(r, &self.record.digest))
            .collect()
    }

    /// The cached manifest for `want`: for an index the matching child, for a single image
    /// itself when its platform matches (or is unknown).
    pub fn for_platform(&self, want: &Platform) -> Option<&ManifestRecord> {
        if !self.is_index() {
            let own = self.record.platform.as_ref();
            return own
                .is_none_or(|p| platform_matches(p, want))
                .then_some(&self.record);
        }
        self.children
            .iter()
            .filter(|c| c.platform().is_some_and(|p| platform_matches(p, want)))
            .find_map(|c| c.record.as_deref())
    }

    /// The children whose platform matches any of `wanted`.
    pub fn children_for(&self, wanted: &[Platform]) -> Vec<&Child> {
        self.children
            .iter()
            .filter(|c| {
                c.platform()
                    .is_some_and(|p| wanted.iter().any(|w| platform_matches(p, w)))
            })
            .collect()
    }
}

/// `want` selects `have` when OS and architecture agree and, if `want` names a variant, the
/// variant does (`arm64` without a variant is `arm64/v8`).
pub fn platform_matches(have: &Platform, want: &Platform) -> bool {
    let variant = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
        ("arm64", None) => Some("v8".to_owned()),
        (_, v) => v.map(str::to_owned),
    };
    have.os == want.os
        && have.architecture == want.architecture
        && (want.variant.is_none() || variant(have) == variant(want))
}

/// The platform of this process in OCI terms: what the daemon would call its host platform.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    Platform {
        os: Atom::new(std::env::consts::OS),
        architecture: Atom::new(architecture),
        variant: None,
    }
}

/// How a name found an image.
#[derive(Debug)]
pub enum Target<'a> {
    Tag {
        image: &'a Image,
        repo: RepoPath,
        tag: String,
    },
    Digest {
        image: &'a Image,
    },
    Id {
        image: &'a Image,
    },
}

impl<'a> Target<'a> {
    pub fn image(&self) -> &'a Image {
        match self {
            Target::Tag { image, .. } | Target::Digest { image } | Target::Id { image } => image,
        }
    }
}

/// One row of `GET /images/json`: the image and the references it is listed with (all of them,
/// or only those a `reference` filter matched, as the daemon does).
#[derive(Debug)]
pub struct Listed<'a> {
    pub image: &'a Image,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

/// What `DELETE /images/{name}` will do.
#[derive(Debug, PartialEq, Eq)]
pub enum DeletePlan {
    /// Other tags remain: remove only this one.
    Untag { repo: RepoPath, tag: String },
    /// Remove the manifests (with the children only they hold) and report these untags first.
    Remove {
        digests: Vec<Digest>,
        untagged: Vec<String>,
    },
}

pub struct Catalog {
    /// Newest first, then by ID.
    pub images: Vec<Image>,
    /// Cached bytes per blob.
    blob_sizes: Arc<BlobTable>,
}

impl Catalog {
    pub fn build(snapshot: Snapshot, host: &Platform) -> Catalog {
        let records: HashMap<Digest, TaggedRecord> = snapshot
            .manifests
            .into_iter()
            .map(|(r, t)| (r.digest.clone(), (r, t)))
            .collect();
        let listed: HashSet<&Digest> = records
            .values()
            .flat_map(|(r, _)| r.children.iter().map(|c| &c.digest))
            .filter(|d| records.contains_key(*d))
            .collect();
        let blob_sizes = snapshot.blobs;
        let mut images: Vec<Image> = records
            .values()
            .filter(|(r, tags)| !tags.is_empty() || !listed.contains(&r.digest))
            .map(|(record, tags)| {
                let children: Vec<Child> = record
                    .children
                    .iter()
                    .map(|c| Child {
                        child: c.clone(),
                        record: records.get(&c.digest).map(|(r, _)| r.clone()),
                    })
                    .collect();
                let primary = if record.is_index() {
                    let usable = || {
                        children
                            .iter()
                            .filter(|c| !c.is_attestation())
                            .filter_map(|c| c.record.as_ref().map(|r| (c, r)))
                    };
                    usable()
                        .find(|(c, _)| c.platform().is_some_and(|p| platform_matches(p, host)))
                        .or_else(|| usable().next())
                        .map(|(_, r)| r.clone())
                } else {
                    Some(record.clone())
                };
                let created = primary
                    .as_ref()
                    .and_then(|p| p.image_created.as_deref())
                    .and_then(|c| c.parse::<Timestamp>().ok())
                    .unwrap_or(record.created);
                let labels = primary
                    .as_ref()
                    .map(|p| p.labels.to_btree())
                    .unwrap_or_default();
                let blobs: BTreeSet<Digest> = std::iter::once(record)
                    .chain(children.iter().filter_map(|c| c.record.as_ref()))
                    .flat_map(|r| r.blob_digests())
                    .filter(|d| blob_sizes.contains(d))
                    .cloned()
                    .collect();
                let size = blobs.iter().filter_map(|d| blob_sizes.size(d)).sum();
                let mut tags = tags.clone();
                tags.sort();
                Image {
                    record: record.clone(),
                    tags,
                    children,
                    created,
                    labels,
                    size,
                    blobs,
                    primary,
                }
            })
            .collect();
        images.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then_with(|| a.record.digest.cmp(&b.record.digest))
        });
        Catalog { images, blob_sizes }
    }

    /// Finds an image the way the daemon does: a full or prefixed ID, `name@digest`,
    /// `name[:tag]` (tag `latest` by default), and bare hex that names no repository as an ID
    /// prefix.
    pub fn resolve(&self, input: &str) -> Result<Target<'_>, DockerError> {
        match ImageName::parse(input) {
            Ok(ImageName::Id(prefix)) => self.by_id(&prefix, input),
            Ok(ImageName::Ref {
                repo,
                digest: Some(digest),
                ..
            }) => self
                .images
                .iter()
                .find(|i| {
                    i.record.digest == digest
                        && (i.record.references.contains(&repo)
                            || i.tags.iter().any(|(r, _)| *r == repo))
                })
                .map(|image| Target::Digest { image })
                .ok_or_else(|| DockerError::NoSuchImage(familiar_digest(&repo, &digest))),
            Ok(ImageName::Ref {
                repo,
                tag,
                maybe_id,
                ..
            }) => {
                let tag = tag.unwrap_or_else(|| "latest".to_owned());
                let found = self
                    .images
                    .iter()
                    .find(|i| i.tags.iter().any(|(r, t)| *r == repo && *t == tag));
                match found {
                    Some(image) => Ok(Target::Tag { image, repo, tag }),
                    None if maybe_id => self.by_id(input, input),
                    None => Err(DockerError::NoSuchImage(familiar_tag(&repo, &tag))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    fn by_id(&self, prefix: &str, input: &str) -> Result<Target<'_>, DockerError> {
        let mut hits = self
            .images
            .iter()
            .filter(|i| i.record.digest.hex().starts_with(prefix));
        match (hits.next(), hits.next()) {
            (Some(image), None) => Ok(Target::Id { image }),
            (Some(_), Some(_)) => Err(DockerError::Ambiguous(input.to_owned())),
            (None, _) => Err(DockerError::NoSuchImage(input.to_owned())),
        }
    }

    /// `GET /images/json` with its filters, newest first.
    pub fn list(
        &self,
        filters: &Filters,
        now: Timestamp,
        tz: &TimeZone,
    ) -> Result<Vec<Listed<'_>>, DockerError> {
        filters.validate(LIST_FILTERS)?;
        let dangling = filters.bool("dangling")?;
        let until = filters.until(now, tz)?;
        let patterns = filters.references()?;
        let created_of = |key: &str| -> Result<Vec<Timestamp>, DockerError> {
            filters
                .get(key)
                .iter()
                .map(|n| self.resolve(n).map(|t| t.image().created))
                .collect()
        };
        let (before, since) = (created_of("before")?, created_of("since")?);
        let mut out = Vec::new();
        for image in &self.images {
            let keep = dangling.is_none_or(|d| d == image.tags.is_empty())
                && until.iter().all(|u| image.created <= *u)
                && before.iter().all(|b| image.created < *b)
                && since.iter().all(|s| image.created > *s)
                && filters.labels_match("label", &image.labels);
            if !keep {
                continue;
            }
            let (repo_tags, repo_digests) = if patterns.is_empty() {
                (image.repo_tags(), image.repo_digests())
            } else {
                // Docker matches each pattern against `name:tag` (or `name@digest`) and the
                // bare name, and lists only the references that matched.
                let matches = |full: &str, name: &str| {
                    patterns.iter().any(|p| {
                        glob_match(p, full).unwrap_or(false) || glob_match(p, name).unwrap_or(false)
                    })
                };
                let tags: Vec<String> = image
                    .tags
                    .iter()
                    .filter(|(r, t)| matches(&familiar_tag(r, t), &familiar(r)))
                    .map(|(r, t)| familiar_tag(r, t))
                    .collect();
                let digests: Vec<String> = image
                    .repo_digests()
                    .into_iter()
                    .filter(|d| matches(d, d.split_once('@').map_or(d.as_str(), |(n, _)| n)))
                    .collect();
                if tags.is_empty() && digests.is_empty() {
                    continue;
                }
                (tags, digests)
            };
            out.push(Listed {
                image,
                repo_tags,
                repo_digests,
            });
        }
        Ok(out)
    }

    /// The images `POST /images/prune` selects: dangling ones only unless `dangling=false`
    /// (`docker image prune -a`), created at or before every `until`, matching `label` and not
    /// all of `label!`.
    pub fn prune_candidates(
        &self,
        filters: &Filters,
        now: Timestamp,
        tz: &TimeZone,
    ) -> Result<Vec<&Image>, DockerError> {
        filters.validate(PRUNE_FILTERS)?;
        let dangling_only = filters.bool("dangling")?.unwrap_or(true);
        let until = filters.until(now, tz)?;
        Ok(self
            .images
            .iter()
            .filter(|i| !dangling_only || i.tags.is_empty())
            .filter(|i| until.iter().all(|u| i.created <= *u))
            .filter(|i| filters.prune_labels_match(&i.labels))
            .collect())
    }

    /// Docker's `rmi` rules on the cache: a tag of an image with other tags is only untagged;
    /// the last tag, `name@digest` or the ID removes the image with all its tags, except that an
    /// ID shared by several repositories needs `force`. `platforms` removes only those
    /// platform manifests of an index (the registry fetches them again on the next pull).
    pub fn plan_delete(
        &self,
        input: &str,
        force: bool,
        platforms: &[Platform],
    ) -> Result<DeletePlan, DockerError> {
        let target = self.resolve(input)?;
        let image = target.image();
        if !platforms.is_empty() {
            return self.plan_platform_delete(image, input, platforms);
        }
        match target {
            Target::Tag { repo, tag, .. } if image.tags.len() > 1 => {
                return Ok(DeletePlan::Untag { repo, tag });
            }
            Target::Id { .. } if !force => {
                let repos: BTreeSet<&RepoPath> = image.tags.iter().map(|(r, _)| r).collect();
                if repos.len() > 1 {
                    return Err(DockerError::MultipleRepositories(image.short_id()));
                }
            }
            _ => {}
        }
        let mut untagged = image.repo_tags();
        untagged.extend(image.repo_digests());
        Ok(DeletePlan::Remove {
            digests: vec![image.record.digest.clone()],
            untagged,
        })
    }

    fn plan_platform_delete(
        &self,
        image: &Image,
        input: &str,
        platforms: &[Platform],
    ) -> Result<DeletePlan, DockerError> {
        let no_platform = || DockerError::NoPlatform {
            image: input.to_owned(),
            platform: platforms
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        if !image.is_index() {
            // A single-platform image is all of its one platform.
            let own = image.record.platform.as_ref();
            if own.is_some_and(|p| !platforms.iter().any(|w| platform_matches(p, w))) {
                return Err(no_platform());
            }
            return self.plan_delete(&image.id(), true, &[]);
        }
        let digests: Vec<Digest> = image
            .children_for(platforms)
            .into_iter()
            .filter(|c| c.record.is_some())
            .map(|c| c.child.digest.clone())
            .collect();
        if digests.is_empty() {
            return Err(no_platform());
        }
        Ok(DeletePlan::Remove {
            digests,
            untagged: Vec::new(),
        })
    }

    /// Per image, bytes of its cached blobs that some other image also holds (`SharedSize`).
    pub fn shared_sizes(&self) -> HashMap<&Digest, u64> {
        let mut holders: HashMap<&Digest, u32> = HashMap::new();
        for i in &self.images {
            for b in &i.blobs {
                *holders.entry(b).or_default() += 1;
            }
        }
        self.images
            .iter()
            .map(|i| {
                let shared = i
                    .blobs
                    .iter()
                    .filter(|b| holders.get(b).is_some_and(|n| *n > 1))
                    .filter_map(|b| self.blob_sizes.size(b))
                    .sum();
                (&i.record.digest, shared)
            })
            .collect()
    }

    /// Cached bytes of one manifest's own blobs.
    pub fn cached_bytes(&self, record: &ManifestRecord) -> u64 {
        record
            .blob_digests()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|d| self.blob_sizes.size(d))
            .sum()
    }

    /// Whether every blob of `record` is cached.
    pub fn complete(&self, record: &ManifestRecord) -> bool {
        record.blob_digests().all(|d| self.blob_sizes.contains(d))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{digest, fixture, platform, repo};
    use super::*;

    fn catalog() -> (Catalog, super::super::fixture::Fixture) {
        let (snap, ids) = fixture();
        (Catalog::build(snap, &platform("amd64")), ids)
    }

    fn now() -> Timestamp {
        "2025-06-01T00:00:00Z".parse().unwrap()
    }

    fn filters(json: &str) -> Filters {
        Filters::parse(Some(json)).unwrap()
    }

    fn ids(images: &[&Image]) -> Vec<Digest> {
        images.iter().map(|i| i.record.digest.clone()).collect()
    }

    fn listed(c: &Catalog, json: &str) -> Vec<Digest> {
        c.list(&filters(json), now(), &TimeZone::UTC)
            .unwrap()
            .iter()
            .map(|l| l.image.record.digest.clone())
            .collect()
    }

    #[test]
    fn children_fold_into_their_index() {
        let (c, f) = catalog();
        let all: Vec<_> = c.images.iter().collect();
        // Newest first; the index dates from its amd64 (host) child's config.
        assert_eq!(ids(&all), vec![f.multi.clone(), f.app, f.nginx, f.dangling]);
        let multi = &c.images[0];
        assert_eq!(multi.children.len(), 3);
        assert_eq!(multi.primary().map(|p| &p.digest), Some(&f.amd64));
        assert_eq!(multi.labels.get("arch").map(String::as_str), Some("x86"));
        assert_eq!(multi.created.to_string(), "2024-01-04T00:00:00Z");
        // Index, both cached child manifests, amd64's config and layers (the shared layer
        // once); arm64's own layers are not cached.
        assert_eq!(multi.size, 300 + 100 + 10 + 1000 + 2000 + 100);
        // An arm64 host prefers the arm64 child.
        let (snap, _) = fixture();
        let arm = Catalog::build(snap, &platform("arm64"));
        assert_eq!(arm.images[0].primary().map(|p| &p.digest), Some(&f.arm64));
    }

    #[test]
    fn resolves_names_like_the_daemon() {
        let (c, f) = catalog();
        let id = |n: &str| c.resolve(n).map(|t| t.image().record.digest.clone());
        assert_eq!(id("nginx:1.27").unwrap(), f.nginx);
        assert_eq!(id("nginx").unwrap(), f.nginx, "latest by default");
        assert_eq!(id("docker.io/library/nginx:latest").unwrap(), f.nginx);
        assert_eq!(id("upstream.test/team/app:1").unwrap(), f.app);
        assert_eq!(id(&f.multi.to_string()).unwrap(), f.multi);
        assert_eq!(id(f.multi.hex().as_str()).unwrap(), f.multi);
        assert_eq!(id("dd1").unwrap(), f.multi, "short ID");
        assert_eq!(id("sha256:dd1").unwrap(), f.multi);
        assert_eq!(id(&format!("nginx@{}", f.dangling)).unwrap(), f.dangling);
        assert!(matches!(
            c.resolve(&format!("quay.io/org/multi@{}", f.dangling)),
            Err(DockerError::NoSuchImage(m)) if m.starts_with("quay.io/org/multi@sha256:aa2")
        ));
        assert!(
            matches!(c.resolve("nginx:nope"), Err(DockerError::NoSuchImage(m)) if m == "nginx:nope")
        );
        assert!(matches!(c.resolve("aa"), Err(DockerError::Ambiguous(_))));
        assert!(matches!(c.resolve("ee"), Err(DockerError::NoSuchImage(_))));
        assert!(matches!(
            c.resolve("Nginx"),
            Err(DockerError::InvalidName(_))
        ));
        // A platform manifest of an index is not an image of its own.
        assert!(c.resolve(&f.amd64.to_string()).is_err());
    }

    #[test]
    fn list_filters() {
        let (c, f) = catalog();
        assert_eq!(
            listed(&c, r#"{"dangling":["true"]}"#),
            vec![f.dangling.clone()]
        );
        assert_eq!(listed(&c, r#"{"dangling":["false"]}"#).len(), 3);
        assert_eq!(listed(&c, r#"{"label":["team=a"]}"#), vec![f.nginx.clone()]);
        assert_eq!(
            listed(&c, r#"{"label":["team"]}"#),
            vec![f.app.clone(), f.nginx.clone()]
        );
        assert_eq!(
            listed(&c, r#"{"before":["upstream.test/team/app:1"]}"#),
            vec![f.nginx.clone(), f.dangling.clone()]
        );
        assert_eq!(
            listed(&c, r#"{"since":["nginx:1.27"]}"#),
            vec![f.multi.clone(), f.app.clone()]
        );
        assert_eq!(
            listed(&c, r#"{"until":["2024-01-02T12:00:00Z"]}"#),
            vec![f.nginx.clone(), f.dangling.clone()]
        );
        assert_eq!(
            listed(&c, r#"{"until":["87600h"]}"#).len(),
            0,
            "ten years ago"
        );
        assert!(matches!(
            c.list(
                &filters(r#"{"before":["missing:1"]}"#),
                now(),
                &TimeZone::UTC
            ),
            Err(DockerError::NoSuchImage(_))
        ));
        assert!(matches!(
            c.list(&filters(r#"{"label!":["a"]}"#), now(), &TimeZone::UTC),
            Err(DockerError::Filter(_))
        ));
    }

    #[test]
    fn reference_filter_lists_matching_references_only() {
        let (c, f) = catalog();
        let rows = c
            .list(
                &filters(r#"{"reference":["nginx:1.27"]}"#),
                now(),
                &TimeZone::UTC,
            )
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].repo_tags, vec!["nginx:1.27"]);
        assert!(rows[0].repo_digests.is_empty());
        // The bare name matches every tag and digest of the repository, the dangling
        // manifest's digest reference included.
        let rows = c
            .list(
                &filters(r#"{"reference":["nginx"]}"#),
                now(),
                &TimeZone::UTC,
            )
            .unwrap();
        let got: Vec<_> = rows.iter().map(|r| r.image.record.digest.clone()).collect();
        assert_eq!(got, vec![f.nginx.clone(), f.dangling.clone()]);
        assert_eq!(rows[0].repo_tags, vec!["nginx:1.27", "nginx:latest"]);
        assert_eq!(rows[1].repo_tags, Vec::<String>::new());
        assert_eq!(
            listed(&c, r#"{"reference":["upstream.test/*/*"]}"#),
            vec![f.app.clone(), f.nginx.clone()]
        );
        assert_eq!(
            listed(&c, r#"{"reference":["*"]}"#),
            vec![f.nginx.clone(), f.dangling.clone()]
        );
        assert!(
            c.list(&filters(r#"{"reference":["["]}"#), now(), &TimeZone::UTC)
                .is_err()
        );
    }

    #[test]
    fn prune_selection() {
        let (c, f) = catalog();
        let sel = |json: &str| {
            ids(&c
                .prune_candidates(&filters(json), now(), &TimeZone::UTC)
                .unwrap())
        };
        assert_eq!(
            sel("{}"),
            vec![f.dangling.clone()],
            "dangling only by default"
        );
        assert_eq!(sel(r#"{"dangling":["false"]}"#).len(), 4);
        assert_eq!(
            sel(r#"{"dangling":["false"],"until":["2024-01-02T12:00:00Z"]}"#),
            vec![f.nginx.clone(), f.dangling.clone()]
        );
        assert_eq!(
            sel(r#"{"dangling":["false"],"label":["team"]}"#),
            vec![f.app.clone(), f.nginx.clone()]
        );
        assert_eq!(
            sel(r#"{"dangling":["false"],"label!":["team=a"]}"#),
            vec![f.multi.clone(), f.app.clone(), f.dangling.clone()]
        );
        assert!(
            c.prune_candidates(&filters(r#"{"reference":["x"]}"#), now(), &TimeZone::UTC)
                .is_err()
        );
    }

    #[test]
    fn delete_plans() {
        let (c, f) = catalog();
        assert_eq!(
            c.plan_delete("nginx:1.27", false, &[]).unwrap(),
            DeletePlan::Untag {
                repo: repo("docker.io", "library/nginx"),
                tag: "1.27".into()
            }
        );
        assert_eq!(
            c.plan_delete("upstream.test/team/app:1", false, &[])
                .unwrap(),
            DeletePlan::Remove {
                digests: vec![f.app.clone()],
                untagged: vec![
                    "upstream.test/team/app:1".into(),
                    format!("upstream.test/team/app@{}", f.app)
                ],
            }
        );
        // Tags in two repositories: the ID needs force.
        assert!(matches!(
            c.plan_delete("aa1", false, &[]),
            Err(DockerError::MultipleRepositories(id)) if id == "aa1000000000"
        ));
        let DeletePlan::Remove { digests, untagged } = c.plan_delete("aa1", true, &[]).unwrap()
        else {
            panic!("expected a removal");
        };
        assert_eq!(digests, vec![f.nginx.clone()]);
        assert_eq!(untagged.len(), 5, "{untagged:?}");
        // By digest: the content goes, with its tags.
        assert!(matches!(
            c.plan_delete(&format!("quay.io/org/multi@{}", f.multi), false, &[]),
            Ok(DeletePlan::Remove { .. })
        ));
        // Platforms: only that child.
        assert_eq!(
            c.plan_delete("quay.io/org/multi:v1", false, &[platform("arm64")])
                .unwrap(),
            DeletePlan::Remove {
                digests: vec![f.arm64.clone()],
                untagged: Vec::new()
            }
        );
        assert!(matches!(
            c.plan_delete("quay.io/org/multi:v1", false, &[platform("s390x")]),
            Err(DockerError::NoPlatform { .. })
        ));
        assert!(matches!(
            c.plan_delete("upstream.test/team/app:1", false, &[platform("arm64")]),
            Err(DockerError::NoPlatform { .. })
        ));
        assert!(matches!(
            c.plan_delete("upstream.test/team/app:1", false, &[platform("amd64")]),
            Ok(DeletePlan::Remove { .. })
        ));
        let _ = digest("0");
    }

    #[test]
    fn platforms_and_sharing() {
        let (c, f) = catalog();
        let multi = &c.images[0];
        let mut v8 = platform("arm64");
        v8.variant = Some("v8".into());
        assert_eq!(multi.for_platform(&v8).map(|r| &r.digest), Some(&f.arm64));
        assert_eq!(
            multi.for_platform(&platform("amd64")).map(|r| &r.digest),
            Some(&f.amd64)
        );
        assert!(multi.for_platform(&platform("riscv64")).is_none());
        let mut v7 = platform("arm64");
        v7.variant = Some("v7".into());
        assert!(multi.for_platform(&v7).is_none());
        // No blob is shared between images in the fixture (the shared layer is inside one).
        let shared = c.shared_sizes();
        assert_eq!(shared.get(&f.multi), Some(&0));
        assert!(c.images[0].children[2].is_attestation());
    }
}
