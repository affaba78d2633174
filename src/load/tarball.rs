//! Image tarballs into the cache: OCI image layouts (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`) and `docker save` archives (`manifest.json`, layers as `<id>/layer.tar`
//! or, from Docker 25, `blobs/sha256/<hex>`), plain or gzipped.
//!
//! Tar entries come in any order (both formats write their index last), so one pass streams
//! every file into a temp file of the store while hashing it; then the metadata is read, every
//! image is checked for completeness, and only then are the blobs it needs committed and its
//! manifests recorded. A bad tarball therefore adds nothing; whatever was not committed is
//! removed when the import ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use indicatif::ProgressBar;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::reference::{RepoPath, parse_image_reference};
use crate::registry::pull::platform_matches;
use crate::store::{
    DOCKER_MANIFEST, Platform, Store, StoreError, is_index_media_type, parse_manifest,
};

/// Docker's media types for what `docker save` holds.
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The same bound the registry puts on upstream manifests.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// `index.json` / `manifest.json` larger than this are not metadata we can trust.
const MAX_METADATA_BYTES: u64 = 16 << 20;
const METADATA_FILES: &[&str] = &["index.json", "manifest.json", "oci-layout", "repositories"];
/// How deep indexes may nest, and how many links a path may go through.
const MAX_DEPTH: usize = 8;
/// Docker's name rule: a name without a registry host is on Docker Hub.
const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    #[error("{0}")]
    Io(String),
    #[error("not a readable tar archive: {0}")]
    Tar(String),
    #[error("{0}")]
    Format(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn format_err(message: impl Into<String>) -> TarballError {
    TarballError::Format(message.into())
}

/// A name to record an image under: a repository and, optionally, a tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Name {
    pub repo: RepoPath,
    pub tag: Option<String>,
}

pub struct Options<'a> {
    pub platforms: &'a [Platform],
    /// `--repository`: the name for every image of the tarball (its tag used only when the
    /// tarball has none).
    pub repository: Option<&'a Name>,
    /// The upstream allowlist: the server refuses other registries, so load refuses them too.
    pub allowed: &'a dyn Fn(&str) -> bool,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    /// Every image: its names (`repo:tag`, or `repo` when untagged) and digest.
    pub images: Vec<(Vec<String>, Digest)>,
    pub manifests_added: u64,
    pub manifests_cached: u64,
    pub blobs_added: u64,
    pub blobs_cached: u64,
    pub bytes_added: u64,
    /// Index children missing from the tarball (e.g. the other platforms of a `docker save`).
    pub children_missing: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    /// Recognised but not supported: the name of the format.
    Unsupported(&'static str),
}

/// Tells compressed tarballs by their magic bytes.
pub fn compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Unsupported("zstd")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Unsupported("xz")
    } else if head.starts_with(b"BZh") {
        Compression::Unsupported("bzip2")
    } else {
        Compression::None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Oci,
    DockerSave,
}

/// Which kind of tarball holds these top-level files. Docker 25+ writes both layouts into one
/// archive; the OCI index then carries Docker's own manifests and names, so it wins.
pub fn detect_format(has: impl Fn(&str) -> bool) -> Option<Format> {
    if has("oci-layout") && has("index.json") {
        Some(Format::Oci)
    } else if has("manifest.json") {
        Some(Format::DockerSave)
    } else {
        None
    }
}

/// Resolves `path` (relative to the directory `base`) inside the archive: `.` and empty
/// segments dropped, `..` applied, and `None` for a path that climbs out of the archive.
pub fn normalize(base: &str, path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    let start = if path.starts_with('/') { "" } else { base };
    for seg in start.split('/').chain(path.split('/')) {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(out.join("/"))
}

/// The digest a `blobs/<alg>/<hex>` path names.
fn digest_of_path(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

/// A file of the archive: its content digest, and where its bytes are now.
#[derive(Clone, Debug)]
struct Content {
    digest: Digest,
    size: u64,
    /// The temp file holding it; `None` when the store already had it and it was not read.
    temp: Option<PathBuf>,
    /// Its first bytes, to tell gzip from plain tar.
    head: Vec<u8>,
}

/// Temp files of an import; whatever was not committed is removed when this drops.
#[derive(Default)]
struct Temps(Vec<PathBuf>);

impl Drop for Temps {
    fn drop(&mut self) {
        for p in &self.0 {
            // Committed ones were renamed away; NotFound is expected for them.
            let _ = fs::remove_file(p);
        }
    }
}

/// Everything one pass over the archive found.
struct Scan<'s> {
    store: &'s Store,
    files: HashMap<String, Content>,
    links: HashMap<String, String>,
    metadata: HashMap<String, Vec<u8>>,
    _temps: Temps,
}

/// Imports every image of the tarball at `path`.
pub fn import(
    store: &Store,
    path: &Path,
    options: &Options<'_>,
    bar: &ProgressBar,
) -> Result<Imported, TarballError> {
    let io_err = |e: io::Error| TarballError::Io(format!("cannot read {}: {e}", path.display()));
    let mut file = File::open(path).map_err(io_err)?;
    let mut head = [0u8; 6];
    let n = read_up_to(&mut file, &mut head).map_err(io_err)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let reader = BufReader::with_capacity(1 << 20, bar.wrap_read(file));
    let scan = match compression(&head[..n]) {
        Compression::None => Scan::read(store, reader)?,
        Compression::Gzip => Scan::read(store, flate2::read::MultiGzDecoder::new(reader))?,
        Compression::Unsupported(name) => {
            return Err(format_err(format!(
                "{name}-compressed tarballs are not supported; decompress it or use gzip"
            )));
        }
    };
    let plan = match detect_format(|name| scan.metadata.contains_key(name)) {
        Some(Format::Oci) => plan_oci(&scan, options)?,
        Some(Format::DockerSave) => plan_docker(&scan, options)?,
        None => {
            return Err(format_err(
                "neither an OCI image layout (oci-layout and index.json) nor a docker save archive (manifest.json)",
            ));
        }
    };
    plan.commit(store, Timestamp::now())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<'s> Scan<'s> {
    fn read(store: &'s Store, reader: impl Read) -> Result<Scan<'s>, TarballError> {
        let tar_err = |e: io::Error| TarballError::Tar(e.to_string());
        let mut scan = Scan {
            store,
            files: HashMap::new(),
            links: HashMap::new(),
            metadata: HashMap::new(),
            _temps: Temps::default(),
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let path = normalize("", &raw)
                .ok_or_else(|| format_err(format!("unsafe path {raw:?} in the archive")))?;
            let parent = path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned();
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                // Symlinks are relative to their directory, hard links to the archive root.
                let base = if kind.is_symlink() {
                    parent.as_str()
                } else {
                    ""
                };
                if let Some(target) = normalize(base, &target) {
                    scan.links.insert(path, target);
                }
                continue;
            }
            if !(kind.is_file() || kind.is_contiguous()) || path.is_empty() {
                continue;
            }
            if METADATA_FILES.contains(&path.as_str()) {
                if entry.size() > MAX_METADATA_BYTES {
                    return Err(format_err(format!(
                        "{path} is larger than {MAX_METADATA_BYTES} bytes"
                    )));
                }
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(tar_err)?;
                scan.metadata.insert(path, data);
                continue;
            }
            let named = digest_of_path(&path);
            if let Some(d) = &named
                && let Some(size) = store.blob_size(d)
            {
                // Already cached: its bytes are skipped, not read.
                let content = Content {
                    digest: d.clone(),
                    size,
                    temp: None,
                    head: Vec::new(),
                };
                scan.files.insert(path, content);
                continue;
            }
            let algorithm = named.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
            let content = scan.stream_to_temp(&mut entry, algorithm, &path)?;
            if let Some(d) = named
                && d != content.digest
            {
                return Err(format_err(format!(
                    "{path} does not match its digest (its content hashes to {})",
                    content.digest
                )));
            }
            scan.files.insert(path, content);
        }
        Ok(scan)
    }

    /// Copies one entry into a new temp file of the store, hashing it on the way.
    fn stream_to_temp(
        &mut self,
        entry: &mut impl Read,
        algorithm: Algorithm,
        path: &str,
    ) -> Result<Content, TarballError> {
        let (temp, mut file) = self.store.temp_file()?;
        self._temps.0.push(temp.clone());
        let mut hasher = Hasher::new(algorithm);
        let mut head = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TarballError::Tar(format!("reading {path}: {e}"))),
            };
            let chunk = &buf[..n];
            hasher.update(chunk);
            if head.len() < 8 {
                head.extend_from_slice(&chunk[..chunk.len().min(8 - head.len())]);
            }
            file.write_all(chunk)
                .map_err(|e| TarballError::Io(format!("cannot write {}: {e}", temp.display())))?;
            size += n as u64;
        }
        Ok(Content {
            digest: hasher.finish(),
            size,
            temp: Some(temp),
            head,
        })
    }

    /// A file by its path in the archive, following links.
    fn by_path(&self, path: &str) -> Option<&Content> {
        let mut p = normalize("", path)?;
        for _ in 0..MAX_DEPTH {
            if let Some(c) = self.files.get(&p) {
                return Some(c);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    /// Where the bytes of `digest` are: in the archive (`blobs/<alg>/<hex>`) or in the store.
    fn locate(&self, digest: &Digest) -> Option<Loc> {
        match self.by_path(&blob_path(digest)) {
            Some(c) => Some(Loc::of(c)),
            None => self
                .store
                .blob_size(digest)
                .map(|size| Loc::Cached { size }),
        }
    }

    /// A manifest's bytes, from the archive or the store.
    fn manifest(&self, digest: &Digest) -> Result<Option<Bytes>, TarballError> {
        let Some(loc) = self.locate(digest) else {
            return Ok(None);
        };
        if loc.size() > MAX_MANIFEST_BYTES {
            return Err(format_err(format!(
                "manifest {digest} is larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let path = match &loc {
            Loc::Temp { path, .. } => path.clone(),
            Loc::Cached { .. } => self.store.blob_path(digest),
        };
        fs::read(&path)
            .map(Bytes::from)
            .map(Some)
            .map_err(|e| TarballError::Io(format!("cannot read {}: {e}", path.display())))
    }

    /// The first bytes of a file, read from the store when the archive copy was skipped.
    fn head(&self, c: &Content) -> Vec<u8> {
        if c.temp.is_some() {
            return c.head.clone();
        }
        let mut buf = [0u8; 8];
        File::open(self.store.blob_path(&c.digest))
            .and_then(|mut f| read_up_to(&mut f, &mut buf))
            .map_or_else(|_| Vec::new(), |n| buf[..n].to_vec())
    }
}

/// Where a blob to commit is.
#[derive(Clone, Debug)]
enum Loc {
    Temp { path: PathBuf, size: u64 },
    Cached { size: u64 },
}

impl Loc {
    fn of(c: &Content) -> Loc {
        match &c.temp {
            Some(path) => Loc::Temp {
                path: path.clone(),
                size: c.size,
            },
            None => Loc::Cached { size: c.size },
        }
    }

    fn size(&self) -> u64 {
        match self {
            Loc::Temp { size, .. } | Loc::Cached { size } => *size,
        }
    }
}

struct PlannedManifest {
    media_type: Option<String>,
    bytes: Bytes,
}

/// One image of the tarball: its manifests, children before parents, the top one last.
struct Top {
    digest: Digest,
    names: Vec<Name>,
    closure: Vec<Digest>,
}

/// Everything an import will write, checked complete before anything is.
#[derive(Default)]
struct Plan {
    blobs: BTreeMap<Digest, Loc>,
    manifests: HashMap<Digest, PlannedManifest>,
    tops: Vec<Top>,
    children_missing: u64,
}

fn display_name(n: &Name) -> String {
    match &n.tag {
        Some(t) => format!("{}:{t}", n.repo),
        None => n.repo.to_string(),
    }
}

/// Parses an image name written by Docker or containerd (no host means Docker Hub) and checks
/// it against the allowlist.
fn parse_name(s: &str, options: &Options<'_>) -> Result<Name, TarballError> {
    let r = parse_image_reference(s, DOCKER_HUB)
        .map_err(|e| format_err(format!("image name {s:?}: {e}")))?;
    let name = Name {
        repo: r.repo,
        tag: r.tag,
    };
    check_allowed(&name, options)?;
    Ok(name)
}

fn check_allowed(name: &Name, options: &Options<'_>) -> Result<(), TarballError> {
    if (options.allowed)(&name.repo.registry) {
        Ok(())
    } else {
        Err(format_err(super::not_allowed(&name.repo.registry)))
    }
}

/// The names of an image: `--repository` wins (keeping the image's tags), else the names the
/// tarball carries; without either there is nothing to serve it under.
fn names_for(
    full: Vec<Name>,
    tags: Vec<String>,
    what: &str,
    options: &Options<'_>,
) -> Result<Vec<Name>, TarballError> {
    let mut names = Vec::new();
    if let Some(r) = options.repository {
        check_allowed(r, options)?;
        let mut tags: Vec<String> = full.into_iter().filter_map(|n| n.tag).chain(tags).collect();
        if tags.is_empty() {
            tags.extend(r.tag.clone());
        }
        names.extend(tags.into_iter().map(|t| Name {
            repo: r.repo.clone(),
            tag: Some(t),
        }));
        if names.is_empty() {
            names.push(r.clone());
        }
    } else if !full.is_empty() {
        names = full;
    } else if tags.is_empty() {
        return Err(format_err(format!(
            "{what} carries no image name; pass --repository REGISTRY/REPO[:TAG] to name it"
        )));
    } else {
        return Err(format_err(format!(
            "{what} is only tagged {:?}, without a repository; pass --repository REGISTRY/REPO to name it",
            tags.join(", ")
        )));
    }
    let mut seen = HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

#[derive(Deserialize)]
struct OciIndexFile {
    #[serde(default)]
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciDescriptor {
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

fn plan_oci(scan: &Scan<'_>, options: &Options<'_>) -> Result<Plan, TarballError> {
    let index: OciIndexFile = serde_json::from_slice(&scan.metadata["index.json"])
        .map_err(|e| format_err(format!("index.json: {e}")))?;
    if index.manifests.is_empty() {
        return Err(format_err("index.json lists no images"));
    }
    let mut plan = Plan::default();
    for desc in &index.manifests {
        let digest: Digest = desc
            .digest
            .parse()
            .map_err(|e| format_err(format!("index.json: {e}")))?;
        let mut full = Vec::new();
        let mut tags = Vec::new();
        if let Some(n) = desc.annotations.get(CONTAINERD_NAME) {
            full.push(parse_name(n, options)?);
        }
        if let Some(r) = desc.annotations.get(OCI_REF_NAME) {
            // A full reference has a repository; a bare ref.name is only a tag (the spec's
            // common form, e.g. skopeo's `oci:DIR:TAG`).
            if r.contains(['/', ':', '@']) {
                full.push(parse_name(r, options)?);
            } else {
                tags.push(r.clone());
            }
        }
        let names = names_for(full, tags, &format!("index.json entry {digest}"), options)?;
        // Several entries (one per tag) may name the same image.
        if let Some(top) = plan.tops.iter_mut().find(|t| t.digest == digest) {
            for n in names {
                if !top.names.contains(&n) {
                    top.names.push(n);
                }
            }
            continue;
        }
        let mut closure = Vec::new();
        plan.visit(
            scan,
            &digest,
            desc.media_type.clone(),
            options.platforms,
            0,
            &mut closure,
        )?;
        plan.tops.push(Top {
            digest,
            names,
            closure,
        });
    }
    Ok(plan)
}

impl Plan {
    /// Adds a manifest and what it needs, children first.
    fn visit(
        &mut self,
        scan: &Scan<'_>,
        digest: &Digest,
        media_type: Option<String>,
        platforms: &[Platform],
        depth: usize,
        closure: &mut Vec<Digest>,
    ) -> Result<(), TarballError> {
        if depth > MAX_DEPTH {
            return Err(format_err(format!("indexes nested too deeply at {digest}")));
        }
        if closure.contains(digest) {
            return Ok(());
        }
        let bytes = scan
            .manifest(digest)?
            .ok_or_else(|| format_err(format!("manifest {digest} is not in the tarball")))?;
        let parsed = parse_manifest(&bytes, media_type.as_deref())
            .map_err(|e| format_err(format!("manifest {digest}: {e}")))?;
        let mut wanted = 0;
        for child in &parsed.children {
            if !is_index_media_type(&child.media_type)
                && !platform_matches(platforms, child.platform.as_ref())
            {
                continue;
            }
            if scan.locate(&child.digest).is_none() {
                // Multi-platform saves keep the whole index but only the local platform.
                self.children_missing += 1;
                continue;
            }
            wanted += 1;
            self.visit(
                scan,
                &child.digest,
                Some(child.media_type.to_string()),
                platforms,
                depth + 1,
                closure,
            )?;
        }
        if !parsed.children.is_empty() && wanted == 0 {
            let which = if platforms.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = platforms.iter().map(Platform::to_string).collect();
                format!(" for platform {}", list.join(", "))
            };
            return Err(format_err(format!(
                "index {digest} has no manifest{which} in the tarball"
            )));
        }
        for b in parsed.config.iter().chain(&parsed.layers) {
            match scan.locate(&b.digest) {
                Some(loc) if loc.size() == b.size => {
                    self.blobs.insert(b.digest.clone(), loc);
                }
                Some(loc) => {
                    return Err(format_err(format!(
                        "blob {} is {} bytes, but manifest {digest} says {}",
                        b.digest,
                        loc.size(),
                        b.size
                    )));
                }
                // Non-distributable layers are not expected to travel with the image.
                None if b.media_type.contains("nondistributable")
                    || b.media_type.contains("foreign") => {}
                None => {
                    return Err(format_err(format!(
                        "{} {} of manifest {digest} is not in the tarball",
                        b.media_type, b.digest
                    )));
                }
            }
        }
        self.manifests
            .entry(digest.clone())
            .or_insert(PlannedManifest { media_type, bytes });
        closure.push(digest.clone());
        Ok(())
    }

    /// Commits the blobs, then records the manifests (children first) under every name.
    fn commit(self, store: &Store, now: Timestamp) -> Result<Imported, TarballError> {
        let mut out = Imported {
            children_missing: self.children_missing,
            ..Imported::default()
        };
        for (digest, loc) in &self.blobs {
            match loc {
                Loc::Temp { path, size } if store.blob_size(digest).is_none() => {
                    // The bytes were hashed as they were written; make them durable first.
                    File::options()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| {
                            TarballError::Io(format!("cannot sync {}: {e}", path.display()))
                        })?;
                    store.commit_blob(path, digest, *size)?;
                    out.blobs_added += 1;
                    out.bytes_added += size;
                }
                _ => out.blobs_cached += 1,
            }
        }
        let mut counted = HashSet::new();
        for top in &self.tops {
            for name in &top.names {
                for digest in &top.closure {
                    let Some(m) = self.manifests.get(digest) else {
                        continue;
                    };
                    if counted.insert(digest.clone()) {
                        if store.has_manifest(digest) {
                            out.manifests_cached += 1;
                        } else {
                            out.manifests_added += 1;
                            out.bytes_added += m.bytes.len() as u64;
                        }
                    }
                    let tag = if digest == &top.digest {
                        name.tag.as_deref()
                    } else {
                        None
                    };
                    store.put_manifest(
                        &name.repo,
                        tag,
                        digest,
                        m.media_type.as_deref(),
                        &m.bytes,
                        now,
                    )?;
                    // The upstream may not know this image: keep the tag as loaded.
                    if let Some(t) = tag {
                        store.pin_tag(&name.repo, t)?;
                    }
                }
            }
            out.images.push((
                top.names.iter().map(display_name).collect(),
                top.digest.clone(),
            ));
        }
        Ok(out)
    }
}

/// One image of a `docker save` `manifest.json`.
#[derive(Deserialize)]
struct SaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The Docker schema2 manifest synthesised for a saved image.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Schema2<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    size: u64,
    digest: String,
}

fn plan_docker(scan: &Scan<'_>, options: &Options<'_>) -> Result<Plan, TarballError> {
    let entries: Vec<SaveEntry> = serde_json::from_slice(&scan.metadata["manifest.json"])
        .map_err(|e| format_err(format!("manifest.json: {e}")))?;
    if entries.is_empty() {
        return Err(format_err("manifest.json lists no images"));
    }
    let mut plan = Plan::default();
    for entry in entries {
        let find = |p: &str, what: &str| {
            scan.by_path(p)
                .ok_or_else(|| format_err(format!("{what} {p} is not in the tarball")))
        };
        let config = find(&entry.config, "image config")?;
        // Classic saves name the config `<hex>.json` after its digest: a cheap integrity check.
        if let Some(hex) = entry.config.strip_suffix(".json")
            && hex.len() == 64
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && hex != config.digest.hex().as_str()
        {
            return Err(format_err(format!(
                "{} does not match its name (its content hashes to {})",
                entry.config, config.digest
            )));
        }
        plan.blobs.insert(config.digest.clone(), Loc::of(config));
        let mut layers = Vec::new();
        for p in &entry.layers {
            let layer = find(p, "layer")?;
            let media_type = if compression(&scan.head(layer)) == Compression::Gzip {
                DOCKER_LAYER_GZIP
            } else {
                DOCKER_LAYER_TAR
            };
            layers.push(Descriptor {
                media_type,
                size: layer.size,
                digest: layer.digest.to_string(),
            });
            plan.blobs.insert(layer.digest.clone(), Loc::of(layer));
        }
        let manifest = Schema2 {
            schema_version: 2,
            media_type: DOCKER_MANIFEST,
            config: Descriptor {
                media_type: DOCKER_CONFIG,
                size: config.size,
                digest: config.digest.to_string(),
            },
            layers,
        };
        let bytes = Bytes::from(
            serde_json::to_vec_pretty(&manifest)
                .map_err(|e| format_err(format!("cannot write a manifest: {e}")))?,
        );
        let digest = Digest::sha256_of(&bytes);
        let full = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| parse_name(t, options))
            .collect::<Result<Vec<_>, _>>()?;
        let names = names_for(
            full,
            Vec::new(),
            &format!("image {}", entry.config),
            options,
        )?;
        plan.manifests.insert(
            digest.clone(),
            PlannedManifest {
                media_type: Some(DOCKER_MANIFEST.to_owned()),
                bytes,
            },
        );
        match plan.tops.iter_mut().find(|t| t.digest == digest) {
            Some(top) => top.names.extend(names),
            None => plan.tops.push(Top {
                closure: vec![digest.clone()],
                digest,
                names,
            }),
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::InvalidPlatform;
    use crate::store::OCI_INDEX;

    fn parse_platform(s: &str) -> Result<Platform, InvalidPlatform> {
        s.parse()
    }

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    /// Builds a tar in memory: `(path, Some(data))` files and `(path, None)` with a symlink
    /// target in the data slot via `links`.
    fn tar(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, p, *data).unwrap();
        }
        for (p, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, p, target).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn hex(b: &[u8]) -> String {
        Digest::sha256_of(b).hex().to_string()
    }

    fn allow_all(_: &str) -> bool {
        true
    }

    fn options<'a>(platforms: &'a [Platform], repository: Option<&'a Name>) -> Options<'a> {
        Options {
            platforms,
            repository,
            allowed: &allow_all,
        }
    }

    fn import_bytes(
        store: &Store,
        dir: &Path,
        data: &[u8],
        o: &Options<'_>,
    ) -> Result<Imported, TarballError> {
        let p = dir.join(format!("t-{}.tar", rand::random::<u32>()));
        fs::write(&p, data).unwrap();
        import(store, &p, o, &ProgressBar::hidden())
    }

    fn tmp_is_empty(store: &Store) -> bool {
        fs::read_dir(store.root().join("tmp")).unwrap().count() == 0
    }

    #[test]
    fn pure_parts() {
        assert_eq!(compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(compression(b"blobs/\0\0"), Compression::None);
        assert_eq!(compression(&[]), Compression::None);
        assert_eq!(
            compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Unsupported("zstd")
        );
        let has = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        assert_eq!(
            detect_format(has(&["oci-layout", "index.json", "manifest.json"])),
            Some(Format::Oci)
        );
        assert_eq!(
            detect_format(has(&["manifest.json", "repositories"])),
            Some(Format::DockerSave)
        );
        assert_eq!(detect_format(has(&["index.json"])), None);
        assert_eq!(
            normalize("", "./blobs//sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(
            normalize("abc", "../blobs/sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(normalize("a/b", "/c").as_deref(), Some("c"));
        assert_eq!(normalize("", "../x"), None);
        assert_eq!(normalize("a", "../../x"), None);
        let d = Digest::sha256_of(b"x");
        assert_eq!(digest_of_path(&blob_path(&d)), Some(d));
        assert_eq!(digest_of_path("blobs/sha256/nothex"), None);
    }

    /// A classic `docker save`: `<id>/layer.tar`, `<hex>.json` config, a symlinked duplicate
    /// layer, and names without a registry.
    #[test]
    fn docker_save_classic_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("cache")).unwrap();
        let layer = tar(&[("etc/hello", b"hello")], &[]);
        let config = br#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers"}}"#;
        let manifest = format!(
            r#"[{{"Config":"{c}.json","RepoTags":["nginx:1.27","quay.io/org/img:v1"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}}]"#,
            c = hex(config)
        );
        let archive = tar(
            &[
                ("aaa/layer.tar", &layer),
                ("aaa/VERSION", b"1.0"),
                (&format!("{}.json", hex(config)), config),
                ("manifest.json", manifest.as_bytes()),
                ("repositories", b"{}"),
            ],
            &[("bbb/layer.tar", "../aaa/layer.tar")],
        );
        let got = import_bytes(&store, dir.path(), &gzip(&archive), &options(&[], None)).unwrap();
        assert_eq!(got.images.len(), 1);
        assert_eq!(
            got.images[0].0,
            ["docker.io/library/nginx:1.27", "quay.io/org/img:v1"]
        );
        assert_eq!((got.manifests_added, got.blobs_added), (1, 2));
        let nginx = RepoPath {
            registry: "docker.io".into(),
            repository: "library/nginx".into(),
        };
        let top = store.resolve_tag(&nginx, "1.27").unwrap().digest;
        let record = store.manifest_record(&top).unwrap();
        assert_eq!(record.media_type, DOCKER_MANIFEST);
        assert_eq!(record.layers.len(), 2);
        assert_eq!(record.layers[0].media_type, DOCKER_LAYER_TAR);
        assert_eq!(record.layers[0].digest, Digest::sha256_of(&layer));
        assert_eq!(record.config.unwrap().digest, Digest::sha256_of(config));
        assert_eq!(record.platform.unwrap().to_string(), "linux/amd64");
        assert_eq!(
            fs::read(store.blob_path(&Digest::sha256_of(&layer))).unwrap(),
            layer
        );
        assert!(tmp_is_empty(&store));

        // Again: same manifest digest, everything already cached.
        let again = import_bytes(&store, dir.path(), &archive, &options(&[], None)).unwrap();
        assert_eq!(again.images[0].1, top);
        assert_eq!((again.manifests_added, again.manifests_cached), (0, 1));
        assert_eq!(
            (again.blobs_added, again.blobs_cached, again.bytes_added),
            (0, 2, 0)
        );
        assert!(tmp_is_empty(&store));
    }

    /// Docker 25+: blobs/sha256 paths in manifest.json and an OCI index next to it (which wins).
    #[test]
    fn docker_save_with_oci_index_uses_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("cache")).unwrap();
        let layer = tar(&[("a", b"a")], &[]);
        let config = br#"{"os":"linux","architecture":"arm64"}"#;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":{},"digest":"sha256:{}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":{},"digest":"sha256:{}"}}]}}"#,
            config.len(),
            hex(config),
            layer.len(),
            hex(&layer)
        );
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":{},"annotations":{{"io.containerd.image.name":"docker.io/library/app:v1","org.opencontainers.image.ref.name":"v1"}}}}]}}"#,
            hex(manifest.as_bytes()),
            manifest.len()
        );
        let save = format!(
            r#"[{{"Config":"blobs/sha256/{}","RepoTags":["app:v1"],"Layers":["blobs/sha256/{}"]}}]"#,
            hex(config),
            hex(&layer)
        );
        let archive = tar(
            &[
                (&format!("blobs/sha256/{}", hex(&layer)), &layer),
                (&format!("blobs/sha256/{}", hex(config)), config),
                (
                    &format!("blobs/sha256/{}", hex(manifest.as_bytes())),
                    manifest.as_bytes(),
                ),
                ("index.json", index.as_bytes()),
                ("manifest.json", save.as_bytes()),
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ],
            &[],
        );
        let got = import_bytes(&store, dir.path(), &archive, &options(&[], None)).unwrap();
        assert_eq!(got.images[0].0, ["docker.io/library/app:v1"]);
        assert_eq!(got.images[0].1, Digest::sha256_of(manifest.as_bytes()));
        assert_eq!(got.blobs_added, 2);
    }

    fn oci_layout_multi() -> (Vec<u8>, Vec<Digest>, Digest) {
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut entries = Vec::new();
        let mut children = Vec::new();
        for arch in ["amd64", "arm64"] {
            let layer = tar(&[(arch, arch.as_bytes())], &[]);
            let config = format!(r#"{{"os":"linux","architecture":"{arch}"}}"#).into_bytes();
            let m = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":{},"digest":"sha256:{}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":{},"digest":"sha256:{}"}}]}}"#,
                config.len(),
                hex(&config),
                layer.len(),
                hex(&layer)
            )
            .into_bytes();
            entries.push(format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
                hex(&m),
                m.len()
            ));
            children.push(Digest::sha256_of(&m));
            for b in [layer, config, m] {
                files.push((format!("./blobs/sha256/{}", hex(&b)), b));
            }
        }
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        )
        .into_bytes();
        let top = Digest::sha256_of(&index);
        let layout_index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_INDEX}","digest":"{top}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#,
            index.len()
        );
        files.push((format!("./blobs/sha256/{}", hex(&index)), index));
        files.push(("./index.json".into(), layout_index.into_bytes()));
        files.push((
            "./oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, d)| (p.as_str(), d.as_slice()))
            .collect();
        (tar(&refs, &[]), children, top)
    }

    #[test]
    fn oci_layout_needs_a_repository_for_a_bare_tag() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("cache")).unwrap();
        let (archive, children, top) = oci_layout_multi();
        let err = import_bytes(&store, dir.path(), &archive, &options(&[], None)).unwrap_err();
        assert!(err.to_string().contains("--repository"), "{err}");
        assert_eq!(store.stats().blobs, 0);
        assert!(tmp_is_empty(&store));

        let name = Name {
            repo: RepoPath {
                registry: "upstream.test".into(),
                repository: "team/oci".into(),
            },
            tag: Some("ignored".into()),
        };
        let arm = [parse_platform("linux/arm64").unwrap()];
        let got = import_bytes(&store, dir.path(), &archive, &options(&arm, Some(&name))).unwrap();
        assert_eq!(got.images[0].0, ["upstream.test/team/oci:latest"]);
        assert_eq!((got.manifests_added, got.blobs_added), (2, 2));
        assert!(store.has_manifest(&top));
        assert!(!store.has_manifest(&children[0]));
        assert!(store.has_manifest(&children[1]));
        assert_eq!(store.resolve_tag(&name.repo, "latest").unwrap().digest, top);
        assert!(store.resolve_tag(&name.repo, "ignored").is_none());
        let all = import_bytes(&store, dir.path(), &archive, &options(&[], Some(&name))).unwrap();
        assert_eq!((all.manifests_added, all.manifests_cached), (1, 2));
        assert_eq!((all.blobs_added, all.blobs_cached), (2, 2));
    }

    #[test]
    fn bad_tarballs_add_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("cache")).unwrap();
        let name = Name {
            repo: RepoPath {
                registry: "upstream.test".into(),
                repository: "x".into(),
            },
            tag: None,
        };
        let o = options(&[], Some(&name));
        // A blob whose content does not match its name.
        let bad = tar(
            &[
                (&format!("blobs/sha256/{}", hex(b"other")), b"tampered"),
                ("oci-layout", b"{}"),
                ("index.json", br#"{"manifests":[]}"#),
            ],
            &[],
        );
        let e = import_bytes(&store, dir.path(), &bad, &o).unwrap_err();
        assert!(e.to_string().contains("does not match its digest"), "{e}");
        // A layer the manifest lists but the tarball lacks.
        let config = b"{}";
        let missing = format!(
            r#"[{{"Config":"{}.json","RepoTags":null,"Layers":["nope/layer.tar"]}}]"#,
            hex(config)
        );
        let t = tar(
            &[
                (&format!("{}.json", hex(config)), config),
                ("manifest.json", missing.as_bytes()),
            ],
            &[],
        );
        let e = import_bytes(&store, dir.path(), &t, &o).unwrap_err();
        assert!(e.to_string().contains("nope/layer.tar"), "{e}");
        // Not a tarball of either kind, not a tar at all, and a truncated gzip.
        let e = import_bytes(&store, dir.path(), &tar(&[("x", b"y")], &[]), &o).unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
        assert!(import_bytes(&store, dir.path(), &[7u8; 2000], &o).is_err());
        let gz = gzip(&tar(&[("manifest.json", b"[]")], &[]));
        assert!(import_bytes(&store, dir.path(), &gz[..gz.len() / 2], &o).is_err());
        // Names outside the allowlist are refused.
        let only_quay = |r: &str| r == "quay.io";
        let t = tar(
            &[
                (&format!("{}.json", hex(config)), config),
                (
                    "manifest.json",
                    format!(
                        r#"[{{"Config":"{}.json","RepoTags":["nginx:1"],"Layers":[]}}]"#,
                        hex(config)
                    )
                    .as_bytes(),
                ),
            ],
            &[],
        );
        let o = Options {
            platforms: &[],
            repository: None,
            allowed: &only_quay,
        };
        let e = import_bytes(&store, dir.path(), &t, &o).unwrap_err();
        assert!(e.to_string().contains("allowlist"), "{e}");
        assert_eq!(store.stats(), Default::default());
        assert!(tmp_is_empty(&store));
    }
}
