//! `imagecache verify`: a full check of the cache files while no server holds them, and the
//! repair that drops what is broken.
//!
//! Three steps, so the decisions are testable without a disk:
//! - [`scan`] (IO) walks the layout, hashes every blob (streamed) and reads every record and
//!   tag index;
//! - [`check`] (pure) turns the scan into findings;
//! - [`repair`] (IO) removes or rewrites the files the findings name.
//!
//! What counts as broken follows the rules the store rebuilds its index by (see `load_index`),
//! made stricter by hashing: content present under a digest it does not hash to, a manifest
//! record whose manifest content is missing, wrong or disagrees with the record, a tag that
//! points at no healthy manifest, and leftover temp files. Blobs are pulled lazily, so a
//! record whose config, layers or child manifests were never fetched is healthy, and so is a
//! blob no manifest references (it may have been pulled by digest, or outlived a cut prune).
//! Reference counts live only in memory and are derived from the records at open, so healthy
//! records make coherent counts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{ManifestRecord, StoreError, TagFile, io_err, parse_manifest, record_path};
use crate::digest::{Algorithm, Digest, Hasher};

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

/// One blob file, named by a digest, and what its content hashes to.
#[derive(Debug)]
pub struct BlobFile {
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
    /// The digest of the content (same algorithm), or why it could not be read.
    pub content: Result<Digest, String>,
}

/// One file under `manifests/`.
#[derive(Debug)]
pub struct RecordFile {
    pub path: PathBuf,
    /// Where the store would keep this record; `None` when it does not parse.
    pub expected_path: Option<PathBuf>,
    pub record: Result<ManifestRecord, String>,
}

/// One file under `tags/`.
pub struct TagIndexFile {
    pub path: PathBuf,
    parsed: Result<TagFile, String>,
}

impl std::fmt::Debug for TagIndexFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagIndexFile")
            .field("path", &self.path)
            .field("parsed", &self.parsed.is_ok())
            .finish()
    }
}

/// Everything [`check`] looks at.
#[derive(Debug, Default)]
pub struct Scan {
    pub blobs: Vec<BlobFile>,
    /// Files in the blob tree that are not named like a blob where they are.
    pub unexpected: Vec<(PathBuf, String)>,
    pub records: Vec<RecordFile>,
    /// Content of the manifest blobs that records name and that hash right.
    pub manifests: HashMap<Digest, Vec<u8>>,
    pub tag_files: Vec<TagIndexFile>,
    pub temp_files: Vec<PathBuf>,
}

/// Something wrong with the cache files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Finding {
    /// A blob whose content does not hash to its name (or cannot be read).
    #[serde(rename_all = "camelCase")]
    CorruptBlob {
        path: PathBuf,
        digest: Digest,
        actual: String,
    },
    /// A file in the blob tree the store does not know; left alone by repair.
    #[serde(rename_all = "camelCase")]
    UnexpectedFile { path: PathBuf, reason: String },
    /// A manifest record that does not parse.
    #[serde(rename_all = "camelCase")]
    DamagedRecord { path: PathBuf, error: String },
    /// A manifest record that cannot be served or disagrees with its content.
    #[serde(rename_all = "camelCase")]
    BrokenRecord {
        path: PathBuf,
        digest: Digest,
        problem: String,
    },
    /// A tag index that does not parse.
    #[serde(rename_all = "camelCase")]
    DamagedTagFile { path: PathBuf, error: String },
    /// A tag pointing at a manifest that is not (healthily) cached.
    #[serde(rename_all = "camelCase")]
    DanglingTag {
        path: PathBuf,
        repository: String,
        tag: String,
        digest: Digest,
    },
    /// A partial download or metadata write a crash left behind.
    #[serde(rename_all = "camelCase")]
    TempFile { path: PathBuf },
}

impl Finding {
    /// Whether [`repair`] fixes it (unknown files are never deleted).
    pub fn repairable(&self) -> bool {
        !matches!(self, Finding::UnexpectedFile { .. })
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::CorruptBlob {
                path,
                digest,
                actual,
            } => write!(
                f,
                "corrupt blob {digest}: content is {actual} ({})",
                path.display()
            ),
            Finding::UnexpectedFile { path, reason } => {
                write!(f, "unexpected file {}: {reason}", path.display())
            }
            Finding::DamagedRecord { path, error } => {
                write!(f, "damaged manifest record {}: {error}", path.display())
            }
            Finding::BrokenRecord {
                path,
                digest,
                problem,
            } => write!(f, "manifest {digest}: {problem} ({})", path.display()),
            Finding::DamagedTagFile { path, error } => {
                write!(f, "damaged tag index {}: {error}", path.display())
            }
            Finding::DanglingTag {
                path,
                repository,
                tag,
                digest,
            } => write!(
                f,
                "tag {repository}:{tag} points at {digest}, which is not cached ({})",
                path.display()
            ),
            Finding::TempFile { path } => write!(f, "leftover temp file {}", path.display()),
        }
    }
}

/// The outcome of [`check`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub blobs: usize,
    pub manifests: usize,
    pub tags: usize,
    /// Blobs no healthy manifest references (not a problem: blobs may be pulled by digest).
    pub unreferenced_blobs: usize,
    pub findings: Vec<Finding>,
}

impl Verdict {
    /// `checked N blobs, M manifests, T tags: K problems`.
    pub fn summary(&self, problems: usize) -> String {
        format!(
            "checked {} blobs, {} manifests, {} tags: {problems} problems",
            self.blobs, self.manifests, self.tags
        )
    }
}

/// Decides what is broken. Pure.
pub fn check(scan: &Scan) -> Verdict {
    let mut out = Verdict {
        blobs: scan.blobs.len(),
        manifests: scan.records.len(),
        ..Default::default()
    };
    let blobs: HashMap<&Digest, &BlobFile> = scan.blobs.iter().map(|b| (&b.digest, b)).collect();
    let healthy_blob = |d: &Digest| {
        blobs
            .get(d)
            .filter(|b| b.content.as_ref().is_ok_and(|c| c == d))
    };
    for b in &scan.blobs {
        match &b.content {
            Ok(actual) if *actual == b.digest => {}
            other => out.findings.push(Finding::CorruptBlob {
                path: b.path.clone(),
                digest: b.digest.clone(),
                actual: match other {
                    Ok(actual) => actual.to_string(),
                    Err(e) => format!("unreadable: {e}"),
                },
            }),
        }
    }
    for (path, reason) in &scan.unexpected {
        out.findings.push(Finding::UnexpectedFile {
            path: path.clone(),
            reason: reason.clone(),
        });
    }

    let mut healthy: HashSet<&Digest> = HashSet::new();
    let mut referenced: HashSet<&Digest> = HashSet::new();
    for rf in &scan.records {
        let r = match &rf.record {
            Ok(r) => r,
            Err(e) => {
                out.findings.push(Finding::DamagedRecord {
                    path: rf.path.clone(),
                    error: e.clone(),
                });
                continue;
            }
        };
        match record_problem(r, rf, &blobs, scan) {
            Some(problem) => out.findings.push(Finding::BrokenRecord {
                path: rf.path.clone(),
                digest: r.digest.clone(),
                problem,
            }),
            None => {
                healthy.insert(&r.digest);
                referenced.extend(r.blob_digests());
            }
        }
    }
    out.unreferenced_blobs = scan
        .blobs
        .iter()
        .filter(|b| !referenced.contains(&b.digest) && healthy_blob(&b.digest).is_some())
        .count();

    for tf in &scan.tag_files {
        let file = match &tf.parsed {
            Ok(f) => f,
            Err(e) => {
                out.findings.push(Finding::DamagedTagFile {
                    path: tf.path.clone(),
                    error: e.clone(),
                });
                continue;
            }
        };
        out.tags += file.tags.len();
        for (tag, entry) in &file.tags {
            if !healthy.contains(&entry.digest) {
                out.findings.push(Finding::DanglingTag {
                    path: tf.path.clone(),
                    repository: format!("{}/{}", file.registry, file.repository),
                    tag: tag.clone(),
                    digest: entry.digest.clone(),
                });
            }
        }
    }
    for path in &scan.temp_files {
        out.findings.push(Finding::TempFile { path: path.clone() });
    }
    out
}

/// Why a parsed record cannot stand, if it cannot.
fn record_problem(
    r: &ManifestRecord,
    rf: &RecordFile,
    blobs: &HashMap<&Digest, &BlobFile>,
    scan: &Scan,
) -> Option<String> {
    if rf.expected_path.as_deref() != Some(rf.path.as_path()) {
        return Some("record is not where the store keeps it".into());
    }
    let Some(blob) = blobs.get(&r.digest) else {
        return Some("manifest content is missing".into());
    };
    if blob.content.as_ref() != Ok(&r.digest) {
        return Some("manifest content is corrupt".into());
    }
    let Some(bytes) = scan.manifests.get(&r.digest) else {
        return Some("manifest content could not be read".into());
    };
    if bytes.len() as u64 != r.size {
        return Some(format!(
            "record says {} bytes, content is {}",
            r.size,
            bytes.len()
        ));
    }
    let parsed = match parse_manifest(bytes, Some(&r.media_type)) {
        Ok(p) => p,
        Err(e) => return Some(format!("manifest content does not parse: {e}")),
    };
    let refs = |v: &mut dyn Iterator<Item = (&Digest, u64)>| -> Vec<(Digest, u64)> {
        v.map(|(d, s)| (d.clone(), s)).collect()
    };
    let record_blobs = refs(
        &mut r
            .config
            .iter()
            .chain(&r.layers)
            .map(|b| (&b.digest, b.size)),
    );
    let content_blobs = refs(
        &mut parsed
            .config
            .iter()
            .chain(&parsed.layers)
            .map(|b| (&b.digest, b.size)),
    );
    let record_children = refs(&mut r.children.iter().map(|c| (&c.digest, c.size)));
    let content_children = refs(&mut parsed.children.iter().map(|c| (&c.digest, c.size)));
    if record_blobs != content_blobs || record_children != content_children {
        return Some("record's config, layers or children disagree with the manifest".into());
    }
    // Referenced content may be absent (pulled lazily), but what is present must be the
    // size the manifest declares.
    for (d, size) in record_blobs.iter().chain(&record_children) {
        if let Some(b) = blobs.get(d)
            && b.content.as_ref() == Ok(d)
            && b.size != *size
        {
            return Some(format!(
                "manifest declares {size} bytes for {d}, the cached blob has {}",
                b.size
            ));
        }
    }
    None
}

/// Holds the cache's lock file for the length of a verify run.
pub struct Lock(#[allow(dead_code)] File);

/// Takes the cache's lock, or fails with [`StoreError::Locked`] when a server holds it.
pub fn lock(root: &Path) -> Result<Lock, StoreError> {
    super::lock_cache(root).map(Lock)
}

fn entries(dir: &Path) -> Vec<fs::DirEntry> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|rd| rd.flatten().collect())
        .unwrap_or_default();
    v.sort_by_key(|e| e.file_name());
    v
}

fn is_dir(e: &fs::DirEntry) -> bool {
    e.file_type().is_ok_and(|t| t.is_dir())
}

/// Reads every file of the cache at `root` (the caller holds its [`lock`]).
pub fn scan(root: &Path) -> Scan {
    let mut scan = Scan::default();
    for alg in ALGORITHMS {
        let alg_dir = root.join("blobs").join(alg.as_str());
        for shard in entries(&alg_dir) {
            let shard_name = shard.file_name().to_string_lossy().into_owned();
            if !is_dir(&shard) {
                scan.unexpected
                    .push((shard.path(), "not in a shard directory".into()));
                continue;
            }
            for f in entries(&shard.path()) {
                let name = f.file_name().to_string_lossy().into_owned();
                let digest = format!("{}:{name}", alg.as_str()).parse::<Digest>().ok();
                match digest {
                    Some(d) if !is_dir(&f) && name.starts_with(&shard_name) => {
                        scan.blobs.push(BlobFile {
                            path: f.path(),
                            size: f.metadata().map(|m| m.len()).unwrap_or(0),
                            content: hash_file(&f.path(), alg).map_err(|e| e.to_string()),
                            digest: d,
                        });
                    }
                    _ => scan.unexpected.push((
                        f.path(),
                        "not a blob named by its digest in its shard".into(),
                    )),
                }
            }
        }
        for f in entries(&root.join("manifests").join(alg.as_str())) {
            let path = f.path();
            let record = fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<ManifestRecord>(&b).map_err(|e| e.to_string())
            });
            scan.records.push(RecordFile {
                expected_path: record.as_ref().ok().map(|r| record_path(root, &r.digest)),
                path,
                record,
            });
        }
    }
    let healthy: HashSet<Digest> = scan
        .blobs
        .iter()
        .filter(|b| b.content.as_ref() == Ok(&b.digest))
        .map(|b| b.digest.clone())
        .collect();
    for r in scan.records.iter().filter_map(|r| r.record.as_ref().ok()) {
        if healthy.contains(&r.digest)
            && let Ok(bytes) = fs::read(super::blob_path(root, &r.digest))
        {
            scan.manifests.insert(r.digest.clone(), bytes);
        }
    }
    for f in entries(&root.join("tags")) {
        let path = f.path();
        let parsed = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<TagFile>(&b).map_err(|e| e.to_string()));
        scan.tag_files.push(TagIndexFile { path, parsed });
    }
    scan.temp_files = entries(&root.join("tmp"))
        .iter()
        .map(|e| e.path())
        .collect();
    scan
}

fn hash_file(path: &Path, alg: Algorithm) -> io::Result<Digest> {
    let mut f = File::open(path)?;
    let mut h = Hasher::new(alg);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// One thing [`repair`] did (or could not do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// `removed`, `rewritten`, `leftAlone` or `failed`.
    pub action: &'static str,
    pub path: PathBuf,
    pub detail: String,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match self.action {
            "leftAlone" => "left alone",
            other => other,
        };
        write!(f, "{verb} {}: {}", self.path.display(), self.detail)
    }
}

impl Action {
    /// Whether the finding it answers is still there.
    pub fn unresolved(&self) -> bool {
        matches!(self.action, "leftAlone" | "failed")
    }
}

/// Removes corrupt blobs, broken records, damaged tag indexes and temp files, and drops
/// dangling tags from their index. Only files the findings name are touched, so a healthy
/// file is never deleted. The caller holds the cache's [`lock`].
pub fn repair(root: &Path, findings: &[Finding]) -> Vec<Action> {
    let mut actions = Vec::new();
    // Temp files first: rewriting a tag index writes through tmp/.
    for f in findings {
        if let Finding::TempFile { path } = f {
            actions.push(remove(path, "leftover temp file".into()));
        }
    }
    let mut dangling: BTreeMap<&Path, Vec<&str>> = BTreeMap::new();
    for f in findings {
        match f {
            Finding::CorruptBlob { path, digest, .. } => {
                actions.push(remove(path, format!("corrupt blob {digest}")));
            }
            Finding::DamagedRecord { path, .. } => {
                actions.push(remove(path, "damaged manifest record".into()));
            }
            Finding::BrokenRecord {
                path,
                digest,
                problem,
            } => actions.push(remove(path, format!("manifest record {digest}: {problem}"))),
            Finding::DamagedTagFile { path, .. } => {
                actions.push(remove(path, "damaged tag index".into()));
            }
            Finding::DanglingTag { path, tag, .. } => {
                dangling.entry(path).or_default().push(tag);
            }
            Finding::UnexpectedFile { path, .. } => actions.push(Action {
                action: "leftAlone",
                path: path.clone(),
                detail: "not a cache file; move or delete it by hand".into(),
            }),
            Finding::TempFile { .. } => {}
        }
    }
    for (path, tags) in dangling {
        actions.push(drop_tags(root, path, &tags));
    }
    actions
}

fn remove(path: &Path, detail: String) -> Action {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    let (action, detail) = match result {
        Ok(()) => ("removed", detail),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            ("removed", format!("{detail} (already gone)"))
        }
        Err(e) => ("failed", format!("{detail}: {e}")),
    };
    Action {
        action,
        path: path.to_owned(),
        detail,
    }
}

fn drop_tags(root: &Path, path: &Path, tags: &[&str]) -> Action {
    let detail = format!("dropped dangling tags {}", tags.join(", "));
    let result = (|| -> Result<&'static str, StoreError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let mut file: TagFile =
            serde_json::from_slice(&bytes).map_err(|e| io_err(path)(e.into()))?;
        for t in tags {
            file.tags.remove(*t);
        }
        if file.tags.is_empty() {
            super::remove_file_if_exists(path)?;
            Ok("removed")
        } else {
            super::write_atomic(root, path, &super::json_bytes(&file))?;
            Ok("rewritten")
        }
    })();
    match result {
        Ok(action) => Action {
            action,
            path: path.to_owned(),
            detail,
        },
        Err(e) => Action {
            action: "failed",
            path: path.to_owned(),
            detail: format!("{detail}: {e}"),
        },
    }
}

/// The result of a whole `verify` run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Empty without `--repair`.
    pub repairs: Vec<Action>,
    /// Problems still there after the run (all findings, without `--repair`).
    pub problems: usize,
}

impl Report {
    /// One line per finding, one per repair action, then the summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.verdict.findings {
            out.push_str(&f.to_string());
            out.push('\n');
        }
        for a in &self.repairs {
            out.push_str(&a.to_string());
            out.push('\n');
        }
        out.push_str(&self.verdict.summary(self.problems));
        out.push('\n');
        out
    }
}

/// Verifies (and with `repair`, fixes) the cache at `root`; fails when a server holds it.
pub fn run(root: &Path, repair_too: bool) -> Result<Report, StoreError> {
    let _lock = lock(root)?;
    let verdict = check(&scan(root));
    let (repairs, problems) = if repair_too {
        let actions = repair(root, &verdict.findings);
        let unresolved = actions.iter().filter(|a| a.unresolved()).count();
        (actions, unresolved)
    } else {
        (Vec::new(), verdict.findings.len())
    };
    Ok(Report {
        verdict,
        repairs,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use jiff::Timestamp;

    use super::super::{DOCKER_MANIFEST, OCI_INDEX, Store};
    use super::*;
    use crate::reference::RepoPath;

    fn repo(r: &str) -> RepoPath {
        RepoPath {
            registry: "upstream.test".into(),
            repository: r.into(),
        }
    }

    const CONFIG: &[u8] = br#"{"os":"linux","architecture":"amd64"}"#;

    /// Caches a schema2 manifest over `layers` (tagged `tag` in `repo`); `store_layers` false
    /// leaves the layers unfetched, as a lazy pull does.
    fn image(store: &Store, name: &str, tag: &str, layers: &[&[u8]], store_layers: bool) -> Digest {
        let desc = |b: &[u8], mt: &str| {
            let d = Digest::sha256_of(b);
            if store_layers {
                store.put_blob(&d, b).unwrap();
            }
            serde_json::json!({"mediaType": mt, "size": b.len(), "digest": d.to_string()})
        };
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": desc(CONFIG, "application/vnd.docker.container.image.v1+json"),
            "layers": layers.iter().map(|l| desc(l, "application/vnd.docker.image.rootfs.diff.tar.gzip")).collect::<Vec<_>>(),
        });
        let bytes = Bytes::from(serde_json::to_vec(&m).unwrap());
        let d = Digest::sha256_of(&bytes);
        store
            .put_manifest(&repo(name), Some(tag), &d, None, &bytes, Timestamp::now())
            .unwrap();
        d
    }

    /// A cache with a full image `a:v1`, a lazily pulled `b:v1` (no layers), and an index
    /// `multi:v1` over `a`'s manifest and one child that was never fetched.
    struct Fixture {
        dir: tempfile::TempDir,
        a: Digest,
        b: Digest,
        layer: Digest,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let a = image(&store, "a", "v1", &[b"layer-a1", b"layer-a2"], true);
        let b = image(&store, "b", "v1", &[b"layer-b"], false);
        let size = fs::metadata(store.blob_path(&a)).unwrap().len();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "size": size, "digest": a.to_string(),
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": DOCKER_MANIFEST, "size": 7, "digest": Digest::sha256_of(b"never").to_string(),
                 "platform": {"os": "linux", "architecture": "arm64"}},
            ],
        });
        let bytes = Bytes::from(serde_json::to_vec(&index).unwrap());
        let d = Digest::sha256_of(&bytes);
        store
            .put_manifest(
                &repo("multi"),
                Some("v1"),
                &d,
                Some(OCI_INDEX),
                &bytes,
                Timestamp::now(),
            )
            .unwrap();
        Fixture {
            dir,
            a,
            b,
            layer: Digest::sha256_of(b"layer-a1"),
        }
    }

    impl Fixture {
        fn root(&self) -> &Path {
            self.dir.path()
        }
        fn verify(&self) -> Report {
            run(self.root(), false).unwrap()
        }
        fn kinds(&self) -> Vec<String> {
            let mut k: Vec<String> = self
                .verify()
                .verdict
                .findings
                .iter()
                .map(|f| {
                    serde_json::to_value(f).unwrap()["kind"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            k.sort();
            k
        }
        /// Repairs, then checks that a second run is clean and the store opens cleanly.
        fn repair_to_clean(&self) -> Report {
            let r = run(self.root(), true).unwrap();
            assert_eq!(r.problems, 0, "{}", r.text());
            let again = self.verify();
            assert!(again.verdict.findings.is_empty(), "{}", again.text());
            let (_, open) = Store::open(self.root()).unwrap();
            assert_eq!(open.damaged, 0);
            r
        }
    }

    #[test]
    fn healthy_store_with_lazy_content_has_no_findings() {
        let f = fixture();
        let r = f.verify();
        assert!(r.verdict.findings.is_empty(), "{}", r.text());
        assert_eq!(r.problems, 0);
        // a: manifest, config, 2 layers; b: manifest, config (shared); index.
        assert_eq!(
            (r.verdict.blobs, r.verdict.manifests, r.verdict.tags),
            (6, 3, 3)
        );
        assert_eq!(r.verdict.unreferenced_blobs, 0);
        assert!(
            r.text()
                .ends_with("checked 6 blobs, 3 manifests, 3 tags: 0 problems\n")
        );
        let repaired = run(f.root(), true).unwrap();
        assert!(repaired.repairs.is_empty());
    }

    #[test]
    fn corrupt_blob_is_found_and_removed() {
        let f = fixture();
        let path = blob_path_of(&f, &f.layer);
        let mut data = fs::read(&path).unwrap();
        data[0] ^= 1;
        fs::write(&path, &data).unwrap();
        assert_eq!(f.kinds(), ["corruptBlob"]);
        let r = f.repair_to_clean();
        assert_eq!(r.repairs.len(), 1);
        assert_eq!(r.repairs[0].action, "removed");
        assert!(!path.exists());
        // The manifest that referenced it stays: the layer is fetched again on the next pull.
        assert!(record_path(f.root(), &f.a).exists());
    }

    fn blob_path_of(f: &Fixture, d: &Digest) -> PathBuf {
        super::super::blob_path(f.root(), d)
    }

    #[test]
    fn truncated_manifest_drops_record_and_tags() {
        let f = fixture();
        let path = blob_path_of(&f, &f.b);
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() / 2]).unwrap();
        assert_eq!(
            f.kinds(),
            ["brokenRecord", "corruptBlob", "danglingTag"],
            "{}",
            f.verify().text()
        );
        f.repair_to_clean();
        assert!(!path.exists());
        assert!(!record_path(f.root(), &f.b).exists());
        // b's only tag is gone with its tag index; the other repositories are untouched.
        let (store, _) = Store::open(f.root()).unwrap();
        assert!(store.resolve_tag(&repo("b"), "v1").is_none());
        assert_eq!(store.resolve_tag(&repo("a"), "v1").unwrap().digest, f.a);
        assert_eq!(store.stats().manifests, 2);
    }

    #[test]
    fn deleted_referenced_manifest_is_found() {
        let f = fixture();
        // a is also a child of the index: the index stays (children are lazy), a's record
        // and tag go.
        fs::remove_file(blob_path_of(&f, &f.a)).unwrap();
        assert_eq!(f.kinds(), ["brokenRecord", "danglingTag"]);
        let text = f.verify().text();
        assert!(text.contains("manifest content is missing"), "{text}");
        f.repair_to_clean();
        let (store, _) = Store::open(f.root()).unwrap();
        assert!(store.resolve_tag(&repo("multi"), "v1").is_some());
    }

    #[test]
    fn dangling_tag_is_dropped_and_the_rest_of_its_index_kept() {
        let f = fixture();
        {
            let (store, _) = Store::open(f.root()).unwrap();
            let now = Timestamp::now();
            store
                .set_tag(&repo("a"), "ghost", &Digest::sha256_of(b"gone"), now)
                .unwrap();
        }
        assert_eq!(f.kinds(), ["danglingTag"]);
        let r = f.repair_to_clean();
        assert_eq!(r.repairs[0].action, "rewritten");
        let (store, _) = Store::open(f.root()).unwrap();
        assert_eq!(store.tags(&repo("a")), ["v1"]);
    }

    #[test]
    fn temp_files_damaged_files_and_unknown_files() {
        let f = fixture();
        fs::write(f.root().join("tmp/0123456789abcdef"), b"half").unwrap();
        fs::write(f.root().join("tags/junk.json"), b"[").unwrap();
        let bad_record = f
            .root()
            .join(format!("manifests/sha256/{}.json", "e".repeat(64)));
        fs::write(&bad_record, b"{").unwrap();
        // A record copied under another name is not where the store keeps it.
        let misplaced = f
            .root()
            .join(format!("manifests/sha256/{}.json", "d".repeat(64)));
        fs::copy(record_path(f.root(), &f.a), &misplaced).unwrap();
        let stray = f.root().join("blobs/sha256/zz-notes.txt");
        fs::write(&stray, b"mine").unwrap();
        assert_eq!(
            f.kinds(),
            [
                "brokenRecord",
                "damagedRecord",
                "damagedTagFile",
                "tempFile",
                "unexpectedFile"
            ]
        );
        let r = run(f.root(), true).unwrap();
        // The unknown file is never deleted, so one problem remains.
        assert_eq!(r.problems, 1, "{}", r.text());
        assert!(stray.exists());
        assert!(!misplaced.exists() && !bad_record.exists());
        assert!(record_path(f.root(), &f.a).exists());
        fs::remove_file(&stray).unwrap();
        f.repair_to_clean();
    }

    #[test]
    fn record_disagreeing_with_its_manifest_is_found() {
        let f = fixture();
        let path = record_path(f.root(), &f.a);
        let mut r: ManifestRecord = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        let mut layers = r.layers.into_vec();
        layers.pop();
        r.layers = layers.into();
        fs::write(&path, serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(f.kinds(), ["brokenRecord", "danglingTag"]);
    }

    #[test]
    fn sha512_blobs_are_hashed_with_sha512() {
        let f = fixture();
        let data = b"sha512 content";
        let mut h = Hasher::new(Algorithm::Sha512);
        h.update(data);
        let d = h.finish();
        let path = blob_path_of(&f, &d);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        let r = f.verify();
        assert!(r.verdict.findings.is_empty(), "{}", r.text());
        assert_eq!(r.verdict.unreferenced_blobs, 1);
        fs::write(&path, b"other").unwrap();
        assert_eq!(f.kinds(), ["corruptBlob"]);
    }

    #[test]
    fn a_held_cache_is_refused() {
        let f = fixture();
        let _held = Store::open(f.root()).unwrap();
        assert!(matches!(run(f.root(), false), Err(StoreError::Locked(_))));
    }

    #[test]
    fn check_is_pure_over_a_scan() {
        let d = Digest::sha256_of(b"x");
        let scan = Scan {
            blobs: vec![BlobFile {
                path: "/c/blobs/x".into(),
                digest: d.clone(),
                size: 1,
                content: Err("permission denied".into()),
            }],
            temp_files: vec!["/c/tmp/1".into()],
            ..Default::default()
        };
        let v = check(&scan);
        assert_eq!(v.findings.len(), 2);
        assert_eq!(
            v.findings[0].to_string(),
            format!("corrupt blob {d}: content is unreadable: permission denied (/c/blobs/x)")
        );
        assert_eq!(
            v.summary(2),
            "checked 1 blobs, 0 manifests, 0 tags: 2 problems"
        );
    }
}
