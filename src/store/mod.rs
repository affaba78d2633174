//! The content-addressed disk cache and its in-memory index.
//!
//! Layout under the image path:
//! ```text
//! blobs/<alg>/<2 hex>/<hex>     content, manifests included, named by digest
//! manifests/<alg>/<hex>.json    one ManifestRecord per cached manifest
//! tags/<sha256(registry/repo)>.json   the tag index of one repository
//! tmp/                          partial downloads; swept at open
//! .lock                         held by the process that owns the cache
//! ```
//! Every file is written to `tmp/`, fsynced and renamed into place, so a crash leaves either the
//! old state or the new one, plus temp files that the next open removes. The API is synchronous
//! and free of HTTP types; async callers wrap it in `spawn_blocking` where it touches the disk.
//!
//! Layer: the bottom of the server side. It imports only the value modules (digest,
//! reference): it knows no HTTP, no Kubernetes, no configuration and no prune policy.

mod blob_table;
mod compact;
mod record;
pub mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use blob_table::BlobTable;
pub use compact::{Atom, SmallSet, StrMap};
pub use record::{
    BlobRef, ChildRef, ConfigInfo, DOCKER_LIST, DOCKER_MANIFEST, ManifestError, ManifestRecord,
    OCI_INDEX, OCI_MANIFEST, ParsedManifest, Platform, is_index_media_type, parse_config,
    parse_manifest,
};

use crate::digest::{Digest, DigestMap};
use crate::reference::RepoPath;

/// Manifest bytes kept in memory so hot manifests are served without touching the disk.
const MANIFEST_MEMORY_BUDGET: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the cache at {0} is in use by another imagecache process (stop the server, or use its admin API)"
    )]
    Locked(PathBuf),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("content does not match digest {expected} (got {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a tag pointed, and when that was last confirmed with the upstream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagEntry {
    pub digest: Digest,
    pub checked: Timestamp,
    /// Loaded from a tarball: the upstream may not have it, so it is never re-checked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

#[derive(Serialize, Deserialize)]
struct TagFile {
    registry: String,
    repository: String,
    tags: BTreeMap<String, TagEntry>,
}

/// Totals for metrics and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
}

/// How many changes the store remembers for watchers that resume from a revision.
pub const CHANGE_HISTORY: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One change of one cached manifest, numbered by the store-wide revision.
#[derive(Clone, Debug)]
pub struct Change {
    pub revision: u64,
    pub kind: ChangeKind,
    /// The manifest as it is after the change (as it was, for a deletion).
    pub record: Arc<ManifestRecord>,
    pub tags: Vec<(RepoPath, String)>,
}

/// A revision older than the retained history: the caller must list again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("revision {requested} is too old (oldest retained: {oldest})")]
pub struct Expired {
    pub requested: u64,
    pub oldest: u64,
}

/// What a removal took away.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub manifests: Vec<Digest>,
    pub blobs: Vec<Digest>,
    pub bytes: u64,
    pub tags: u64,
    /// Manifests left in place because they were fetched or pulled during the run.
    pub skipped: Vec<Digest>,
}

/// A cached manifest and every (repository, tag) pointing at it.
pub type TaggedRecord = (Arc<ManifestRecord>, Vec<(RepoPath, String)>);

/// Every manifest with its tags, and the cached blobs with their sizes. Records and the blob
/// map are shared with the index, not copied: a snapshot of 100k manifests costs pointers.
pub struct Snapshot {
    /// The revision this snapshot is consistent with.
    pub revision: u64,
    pub manifests: Vec<TaggedRecord>,
    pub blobs: Arc<BlobTable>,
}

/// One page of manifests in digest order (see [`Store::page`]).
pub struct Page {
    /// The revision the page is consistent with.
    pub revision: u64,
    pub manifests: Vec<TaggedRecord>,
    /// Manifests after the page's start, those on the page included.
    pub remaining: usize,
}

/// What a manifest GET needs, cheap to clone.
#[derive(Clone, Debug)]
pub struct ManifestContent {
    pub digest: Digest,
    pub media_type: Atom,
    pub bytes: Bytes,
}

/// Records and the blob map are behind `Arc`s so snapshots share them. A change while a
/// snapshot holds them copies first (`Arc::make_mut`): the one record it changes, or the blob
/// map once per snapshot.
#[derive(Default)]
struct Index {
    manifests: DigestMap<Digest, Arc<ManifestRecord>>,
    /// Cached blobs with their sizes, and references from cached manifests.
    blobs: Arc<BlobTable>,
    tags: BTreeMap<RepoPath, BTreeMap<String, TagEntry>>,
    /// Store-wide change counter: every visible change of a manifest bumps it.
    revision: u64,
    /// The last `history` changes, oldest first.
    changes: std::collections::VecDeque<Change>,
    history: usize,
    /// Config digest -> manifests cached before their config blob (blobs are pulled lazily).
    awaiting_config: HashMap<Digest, Vec<Digest>>,
}

impl Index {
    fn tags_of(&self, digest: &Digest) -> Vec<(RepoPath, String)> {
        self.tags
            .iter()
            .flat_map(|(repo, tags)| {
                tags.iter()
                    .filter(|(_, e)| &e.digest == digest)
                    .map(move |(t, _)| (repo.clone(), t.clone()))
            })
            .collect()
    }

    /// Records a change of `digest` (which must still be cached, unless `deleted` is given).
    fn emit(&mut self, kind: ChangeKind, digest: &Digest, deleted: Option<Arc<ManifestRecord>>) {
        let Some(record) = deleted.or_else(|| self.manifests.get(digest).cloned()) else {
            return;
        };
        self.revision += 1;
        // A deleted image has no tags left worth reporting (and scanning for them would cost
        // a pass over every repository per deletion).
        let tags = match kind {
            ChangeKind::Deleted => Vec::new(),
            _ => self.tags_of(digest),
        };
        while self.changes.len() >= self.history.max(1) {
            self.changes.pop_front();
        }
        self.changes.push_back(Change {
            revision: self.revision,
            kind,
            record,
            tags,
        });
    }

    /// Applies a change to one repository's tags; returns the digests that gained or lost a tag.
    fn retag(
        &mut self,
        repo: &RepoPath,
        change: impl FnOnce(&mut BTreeMap<String, TagEntry>),
    ) -> Vec<Digest> {
        let tags = self.tags.entry(repo.clone()).or_default();
        let before: BTreeMap<String, Digest> = tags
            .iter()
            .map(|(t, e)| (t.clone(), e.digest.clone()))
            .collect();
        change(tags);
        let mut affected: Vec<Digest> = Vec::new();
        for (t, d) in &before {
            if tags.get(t).map(|e| &e.digest) != Some(d) {
                affected.push(d.clone());
            }
        }
        for (t, e) in tags.iter() {
            if before.get(t) != Some(&e.digest) {
                affected.push(e.digest.clone());
            }
        }
        affected.sort();
        affected.dedup();
        affected
    }
}

#[derive(Default)]
struct MemoryCache {
    entries: HashMap<Digest, Bytes>,
    bytes: usize,
}

pub struct Store {
    root: PathBuf,
    index: RwLock<Index>,
    /// Manifests whose pull statistics changed since the last flush.
    dirty: Mutex<HashSet<Digest>>,
    memory: Mutex<MemoryCache>,
    /// The latest revision, for watchers to wait on.
    revisions: tokio::sync::watch::Sender<u64>,
    _lock: File,
}

/// What opening the cache found, for the start-up log line.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub manifests: usize,
    pub blobs: usize,
    pub damaged: usize,
    pub temp_files_removed: usize,
}

/// Takes the cache's exclusive lock (`<root>/.lock`), held while the returned file is open;
/// [`StoreError::Locked`] when another process (a server, a CLI run) holds it.
pub(crate) fn lock_cache(root: &Path) -> Result<File, StoreError> {
    let path = root.join(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match fs4::fs_std::FileExt::try_lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(StoreError::Locked(root.to_owned())),
        Err(e) => Err(io_err(&path)(e)),
    }
}

impl Store {
    /// Opens (creating if needed) the cache at `root`, takes its lock, sweeps temp files and
    /// rebuilds the index. Damaged entries are logged and skipped.
    pub fn open(root: &Path) -> Result<(Store, OpenReport), StoreError> {
        for dir in ["blobs", "manifests", "tags", "tmp"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let lock = lock_cache(root)?;
        let mut report = OpenReport::default();
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            if fs::remove_file(entry.path()).is_ok() {
                report.temp_files_removed += 1;
            }
        }
        let mut index = load_index(root, &mut report);
        index.history = CHANGE_HISTORY;
        // Revisions start from the clock, so every revision handed out before a restart is
        // older than the new history: watchers resuming from one get Expired and relist.
        index.revision = u64::try_from(Timestamp::now().as_microsecond()).unwrap_or(0);
        report.manifests = index.manifests.len();
        report.blobs = index.blobs.len();
        Ok((
            Store {
                root: root.to_owned(),
                index: RwLock::new(index),
                dirty: Mutex::default(),
                memory: Mutex::default(),
                revisions: tokio::sync::watch::Sender::new(0),
                _lock: lock,
            },
            report,
        ))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.root, digest)
    }

    /// The size of a cached blob, if it is cached.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        self.read().blobs.size(digest)
    }

    pub fn stats(&self) -> Stats {
        let ix = self.read();
        Stats {
            manifests: ix.manifests.len() as u64,
            blobs: ix.blobs.len() as u64,
            bytes: ix.blobs.bytes(),
        }
    }

    /// A new temp file for a download; commit it with [`Store::commit_blob`].
    pub fn temp_file(&self) -> Result<(PathBuf, File), StoreError> {
        let path = self
            .root
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        let file = File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((path, file))
    }

    /// Moves a fully written, fsynced and verified temp file into the cache.
    pub fn commit_blob(&self, temp: &Path, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::rename(temp, &dest).map_err(io_err(&dest))?;
        self.insert_blob(digest, size);
        self.fill_config_info(digest);
        Ok(())
    }

    /// Writes `data` as a blob after checking it against `digest`.
    pub fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        if !digest.verifies(data) {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual: Digest::sha256_of(data),
            });
        }
        if self.blob_size(digest).is_some() {
            return Ok(());
        }
        let (path, mut file) = self.temp_file()?;
        let result = file
            .write_all(data)
            .and_then(|_| file.sync_all())
            .map_err(io_err(&path))
            .and_then(|_| self.commit_blob(&path, digest, data.len() as u64));
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    fn insert_blob(&self, digest: &Digest, size: u64) {
        Arc::make_mut(&mut self.write().blobs).insert(digest, size);
    }

    /// When a config blob arrives, the manifests that were waiting for it learn their platform
    /// and labels.
    fn fill_config_info(&self, digest: &Digest) {
        let Some(waiting) = self.write().awaiting_config.remove(digest) else {
            return;
        };
        let Ok(bytes) = fs::read(self.blob_path(digest)) else {
            return;
        };
        let info = parse_config(&bytes);
        for m in waiting {
            let updated = {
                let mut ix = self.write();
                let updated = ix.manifests.get_mut(&m).map(|r| {
                    Arc::make_mut(r).apply_config(&info);
                    r.clone()
                });
                if updated.is_some() {
                    ix.emit(ChangeKind::Modified, &m, None);
                }
                self.publish(ix);
                updated
            };
            if let Some(r) = updated
                && let Err(e) = self.write_record(&r)
            {
                tracing::warn!(digest = %m, error = %e, "cannot update manifest record");
            }
        }
    }

    /// Caches a manifest fetched through `repo` (and `tag`, when pulled by tag). Idempotent: a
    /// manifest already cached gains the reference and keeps its history.
    pub fn put_manifest(
        &self,
        repo: &RepoPath,
        tag: Option<&str>,
        digest: &Digest,
        content_type: Option<&str>,
        bytes: &Bytes,
        now: Timestamp,
    ) -> Result<ManifestContent, StoreError> {
        let existing = self.read().manifests.get(digest).map(|r| (**r).clone());
        let (record, is_new, mut reference_added) = match existing {
            // A new reference is written under the lock below, where a prune cannot remove
            // the manifest between the check and the write.
            Some(r) => (r, false, false),
            None => {
                let parsed = parse_manifest(bytes, content_type)?;
                self.put_blob(digest, bytes)?;
                let mut r = ManifestRecord::new(
                    digest.clone(),
                    bytes.len() as u64,
                    parsed,
                    SmallSet::from([repo.clone()]),
                    now,
                );
                if let Some(c) = &r.config
                    && self.blob_size(&c.digest).is_some()
                    && let Ok(b) = fs::read(self.blob_path(&c.digest))
                {
                    r.apply_config(&parse_config(&b));
                }
                self.write_record(&r)?;
                (r, true, false)
            }
        };
        // Record and tag land in one critical section with one event, so a watcher sees one
        // ADDED (or MODIFIED) for a pull, never a half-made image.
        let config_present = {
            let mut ix = self.write();
            let mut config_present = None;
            let mut inserted = false;
            if !is_new {
                let Some(r) = ix.manifests.get_mut(digest) else {
                    // Pruned since the read above: cache it anew (content and record).
                    drop(ix);
                    return self.put_manifest(repo, tag, digest, content_type, bytes, now);
                };
                if !r.references.contains(repo) {
                    let mut updated = (**r).clone();
                    updated.references.insert(repo.clone());
                    self.write_record(&updated)?;
                    *r = Arc::new(updated);
                    reference_added = true;
                }
            } else if let Some(r) = ix.manifests.get_mut(digest) {
                // Another request (a pull by tag next to one by digest) cached it since the
                // read above: its record stays (one ADDED, its history kept) and gains our
                // reference. The file is rewritten under the lock, over the one written above,
                // so the last of such racing writes holds every reference. This is rare.
                reference_added = Arc::make_mut(r).references.insert(repo.clone());
                let merged = r.clone();
                if let Err(e) = self.write_record(&merged) {
                    tracing::warn!(digest = %digest, error = %e, "cannot update manifest record");
                }
            } else {
                ix.manifests
                    .insert(digest.clone(), Arc::new(record.clone()));
                inserted = true;
                let blobs = Arc::make_mut(&mut ix.blobs);
                for b in record.blob_digests() {
                    blobs.add_ref(b);
                }
                // Registered under the lock so a config blob committed concurrently is seen
                // either here or by its own commit.
                if let Some(c) = &record.config
                    && record.platform.is_none()
                {
                    ix.awaiting_config
                        .entry(c.digest.clone())
                        .or_default()
                        .push(digest.clone());
                    config_present = ix.blobs.contains(&c.digest).then(|| c.digest.clone());
                }
            }
            let affected = match tag {
                Some(tag) => self.retag_locked(&mut ix, repo, |tags| {
                    let pinned = tags
                        .get(tag)
                        .is_some_and(|e| e.pinned && &e.digest == digest);
                    tags.insert(
                        tag.to_owned(),
                        TagEntry {
                            digest: digest.clone(),
                            checked: now,
                            pinned,
                        },
                    );
                })?,
                None => Vec::new(),
            };
            if inserted {
                ix.emit(ChangeKind::Added, digest, None);
            } else if reference_added || affected.contains(digest) {
                ix.emit(ChangeKind::Modified, digest, None);
            }
            for d in affected.iter().filter(|d| *d != digest) {
                ix.emit(ChangeKind::Modified, d, None);
            }
            self.publish(ix);
            config_present
        };
        if let Some(c) = config_present {
            self.fill_config_info(&c);
        }
        self.remember(digest, bytes);
        Ok(ManifestContent {
            digest: digest.clone(),
            media_type: record.media_type,
            bytes: bytes.clone(),
        })
    }

    /// Whether a manifest is cached (no disk access).
    pub fn has_manifest(&self, digest: &Digest) -> bool {
        self.read().manifests.contains_key(digest)
    }

    /// A cached manifest's bytes and media type. Served from memory when hot.
    pub fn manifest(&self, digest: &Digest) -> Result<Option<ManifestContent>, StoreError> {
        let Some(media_type) = self
            .read()
            .manifests
            .get(digest)
            .map(|r| r.media_type.clone())
        else {
            return Ok(None);
        };
        let cached = self
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .get(digest)
            .cloned();
        let bytes = match cached {
            Some(b) => b,
            None => {
                let path = self.blob_path(digest);
                match fs::read(&path) {
                    Ok(b) => {
                        let b = Bytes::from(b);
                        self.remember(digest, &b);
                        b
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        };
        Ok(Some(ManifestContent {
            digest: digest.clone(),
            media_type,
            bytes,
        }))
    }

    /// Whether a cached manifest is known to have been pulled through `repo` (true when it is
    /// not cached: there is nothing to record).
    pub fn has_reference(&self, digest: &Digest, repo: &RepoPath) -> bool {
        self.read()
            .manifests
            .get(digest)
            .is_none_or(|r| r.references.contains(repo))
    }

    /// The record of a cached manifest.
    pub fn manifest_record(&self, digest: &Digest) -> Option<ManifestRecord> {
        self.read().manifests.get(digest).map(|r| (**r).clone())
    }

    fn remember(&self, digest: &Digest, bytes: &Bytes) {
        let mut mem = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if mem.entries.contains_key(digest) || bytes.len() > MANIFEST_MEMORY_BUDGET / 16 {
            return;
        }
        // Evicting arbitrary entries is enough: the disk copy is one page-cache read away.
        while mem.bytes + bytes.len() > MANIFEST_MEMORY_BUDGET {
            let Some(k) = mem.entries.keys().next().cloned() else {
                break;
            };
            if let Some(v) = mem.entries.remove(&k) {
                mem.bytes -= v.len();
            }
        }
        mem.bytes += bytes.len();
        mem.entries.insert(digest.clone(), bytes.clone());
    }

    /// Counts a pull in memory; [`Store::flush_access`] persists it later.
    pub fn record_pull(&self, digest: &Digest, now: Timestamp) {
        let mut ix = self.write();
        if let Some(r) = ix.manifests.get_mut(digest) {
            let r = Arc::make_mut(r);
            r.last_pulled = Some(now);
            r.pull_count += 1;
            drop(ix);
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(digest.clone());
        }
    }

    /// Adds `repo` to a cached manifest's references (pulled by digest through another repo).
    pub fn add_reference(&self, digest: &Digest, repo: &RepoPath) -> Result<(), StoreError> {
        let updated = {
            let mut ix = self.write();
            let updated = ix
                .manifests
                .get_mut(digest)
                .filter(|r| !r.references.contains(repo))
                .map(|r| {
                    Arc::make_mut(r).references.insert(repo.clone());
                    r.clone()
                });
            if updated.is_some() {
                ix.emit(ChangeKind::Modified, digest, None);
            }
            self.publish(ix);
            updated
        };
        match updated {
            Some(r) => self.write_record(&r),
            None => Ok(()),
        }
    }

    /// Writes the batched pull statistics. Returns how many records were written.
    pub fn flush_access(&self) -> Result<usize, StoreError> {
        let dirty: Vec<Digest> =
            std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        let mut written = Vec::new();
        for d in dirty {
            let record = self.read().manifests.get(&d).cloned();
            if let Some(r) = record {
                self.write_record(&r)?;
                written.push(d);
            }
        }
        // One event per flushed record: last-pull times reach watchers in batches too.
        if !written.is_empty() {
            let mut ix = self.write();
            for d in &written {
                ix.emit(ChangeKind::Modified, d, None);
            }
            self.publish(ix);
        }
        Ok(written.len())
    }

    pub fn resolve_tag(&self, repo: &RepoPath, tag: &str) -> Option<TagEntry> {
        self.read().tags.get(repo).and_then(|t| t.get(tag)).cloned()
    }

    /// Tags of a repository, sorted.
    pub fn tags(&self, repo: &RepoPath) -> Vec<String> {
        self.read()
            .tags
            .get(repo)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every (repository, tag) pointing at `digest`.
    pub fn tags_of(&self, digest: &Digest) -> Vec<(RepoPath, String)> {
        self.read().tags_of(digest)
    }

    pub fn set_tag(
        &self,
        repo: &RepoPath,
        tag: &str,
        digest: &Digest,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.update_tags(repo, |tags| {
            tags.insert(
                tag.to_owned(),
                TagEntry {
                    digest: digest.clone(),
                    checked: now,
                    pinned: false,
                },
            );
        })
    }

    /// Marks a tag as loaded locally: served as is, never re-checked with the upstream.
    pub fn pin_tag(&self, repo: &RepoPath, tag: &str) -> Result<(), StoreError> {
        self.update_tags(repo, |tags| {
            if let Some(e) = tags.get_mut(tag) {
                e.pinned = true;
            }
        })
    }

    pub fn remove_tag(&self, repo: &RepoPath, tag: &str) -> Result<(), StoreError> {
        self.update_tags(repo, |tags| {
            tags.remove(tag);
        })
    }

    fn update_tags(
        &self,
        repo: &RepoPath,
        change: impl FnOnce(&mut BTreeMap<String, TagEntry>),
    ) -> Result<(), StoreError> {
        let mut ix = self.write();
        let affected = self.retag_locked(&mut ix, repo, change)?;
        for d in &affected {
            ix.emit(ChangeKind::Modified, d, None);
        }
        self.publish(ix);
        Ok(())
    }

    /// Changes one repository's tags and persists them. The caller holds the write lock
    /// across the file write, so two updates of one repository cannot persist out of order.
    fn retag_locked(
        &self,
        ix: &mut Index,
        repo: &RepoPath,
        change: impl FnOnce(&mut BTreeMap<String, TagEntry>),
    ) -> Result<Vec<Digest>, StoreError> {
        let affected = ix.retag(repo, change);
        let path = tag_path(&self.root, repo);
        let tags = ix.tags.get(repo).cloned().unwrap_or_default();
        if tags.is_empty() {
            ix.tags.remove(repo);
            remove_file_if_exists(&path)?;
            return Ok(affected);
        }
        write_atomic(&self.root, &path, &encode_tags(repo, tags))?;
        Ok(affected)
    }

    /// Releases the write lock and wakes watchers if the revision moved.
    fn publish(&self, ix: std::sync::RwLockWriteGuard<'_, Index>) {
        let revision = ix.revision;
        drop(ix);
        self.revisions.send_if_modified(|r| {
            let moved = *r != revision;
            *r = revision;
            moved
        });
    }

    /// How many changes are retained for watchers resuming from a revision.
    pub fn set_change_history(&self, changes: usize) {
        let mut ix = self.write();
        ix.history = changes.max(1);
        while ix.changes.len() > ix.history {
            ix.changes.pop_front();
        }
    }

    /// The oldest revision the history still holds a change for (the next revision when the
    /// history is empty).
    pub fn oldest_revision(&self) -> u64 {
        let ix = self.read();
        ix.changes.front().map_or(ix.revision + 1, |c| c.revision)
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Waits on this for new revisions.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revisions.subscribe()
    }

    /// Changes after `revision`, oldest first; `Expired` when they are no longer all retained.
    pub fn changes_since(&self, revision: u64) -> Result<Vec<Change>, Expired> {
        let ix = self.read();
        let oldest = ix.changes.front().map_or(ix.revision + 1, |c| c.revision);
        if revision + 1 < oldest && revision < ix.revision {
            return Err(Expired {
                requested: revision,
                oldest,
            });
        }
        Ok(ix
            .changes
            .iter()
            .filter(|c| c.revision > revision)
            .cloned()
            .collect())
    }

    /// Manifests whose `subject` is `digest` (the local answer of the referrers API).
    pub fn referrers(&self, digest: &Digest) -> Vec<ManifestRecord> {
        let mut out: Vec<_> = self
            .read()
            .manifests
            .values()
            .filter(|m| m.subject.as_deref() == Some(digest))
            .map(|m| (**m).clone())
            .collect();
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        out
    }

    /// Removes one manifest, the tags pointing at it, and every blob no remaining manifest
    /// references. Returns false when it was not cached.
    pub fn delete_manifest(&self, digest: &Digest) -> Result<bool, StoreError> {
        let removed = self.remove_manifests(std::slice::from_ref(digest), None)?;
        Ok(!removed.manifests.is_empty())
    }

    /// Removes manifests, the tags pointing at them and the blobs nothing else references.
    /// A manifest created or pulled at or after `untouched_since` is skipped: it was fetched
    /// while a prune was planned, so someone is using it. Open readers keep reading unlinked
    /// files, so a pull in flight is not broken.
    pub fn remove_manifests(
        &self,
        digests: &[Digest],
        untouched_since: Option<Timestamp>,
    ) -> Result<Removed, StoreError> {
        let mut out = Removed::default();
        let mut records = Vec::new();
        let mut blob_files = Vec::new();
        {
            let mut guard = self.write();
            let ix = &mut *guard;
            for d in digests {
                let Some(r) = ix.manifests.get(d) else {
                    continue;
                };
                let touched = untouched_since
                    .is_some_and(|t| r.created >= t || r.last_pulled.is_some_and(|p| p >= t));
                if touched {
                    out.skipped.push(d.clone());
                    continue;
                }
                let Some(r) = ix.manifests.remove(d) else {
                    continue;
                };
                if let Some(c) = &r.config
                    && let Some(waiting) = ix.awaiting_config.get_mut(&c.digest)
                {
                    waiting.retain(|m| m != d);
                }
                let blobs = Arc::make_mut(&mut ix.blobs);
                for b in r.blob_digests() {
                    if let Some(size) = blobs.drop_ref(b) {
                        out.bytes += size;
                        out.blobs.push(b.clone());
                        blob_files.push(self.blob_path(b));
                    }
                }
                out.manifests.push(d.clone());
                records.push(r);
            }
            for r in &records {
                ix.emit(ChangeKind::Deleted, &r.digest, Some(r.clone()));
            }
            self.publish(guard);
        }
        {
            let mut mem = self.memory.lock().unwrap_or_else(|p| p.into_inner());
            for d in &out.manifests {
                if let Some(b) = mem.entries.remove(d) {
                    mem.bytes -= b.len();
                }
            }
        }
        let gone: HashSet<&Digest> = out.manifests.iter().collect();
        let stale_tags: Vec<(RepoPath, String)> = {
            let ix = self.read();
            ix.tags
                .iter()
                .flat_map(|(repo, tags)| {
                    tags.iter()
                        .filter(|(_, e)| gone.contains(&e.digest))
                        .map(move |(t, _)| (repo.clone(), t.clone()))
                })
                .collect()
        };
        // One rewrite per repository, not one per tag.
        let mut by_repo: BTreeMap<&RepoPath, Vec<&str>> = BTreeMap::new();
        for (repo, tag) in &stale_tags {
            by_repo.entry(repo).or_default().push(tag);
        }
        for (repo, tags) in by_repo {
            self.update_tags(repo, |t| {
                for tag in tags {
                    t.remove(tag);
                }
            })?;
        }
        out.tags = stale_tags.len() as u64;
        for r in &records {
            remove_file_if_exists(&record_path(&self.root, &r.digest))?;
        }
        for p in &blob_files {
            remove_file_if_exists(p)?;
        }
        Ok(out)
    }

    /// Reference counts of cached blobs (manifests referencing each), for listing.
    pub fn blob_refs(&self) -> Vec<(Digest, u64, u32)> {
        let ix = self.read();
        let mut out: Vec<_> = ix
            .blobs
            .iter()
            .map(|(d, size, refs)| (d.clone(), size, refs))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Manifests after `after` in digest order, at most `limit` of them, with their tags, read
    /// under one lock; and how many manifests come after `after` in all. Costs one pass over
    /// the index, not a sort of it: what a paginated list needs per page.
    pub fn page(&self, after: Option<&Digest>, limit: Option<usize>) -> Page {
        let ix = self.read();
        let mut records: Vec<&Arc<ManifestRecord>> = ix
            .manifests
            .values()
            .filter(|r| after.is_none_or(|a| &r.digest > a))
            .collect();
        let remaining = records.len();
        if let Some(n) = limit
            && n < records.len()
        {
            records.select_nth_unstable_by(n, |a, b| a.digest.cmp(&b.digest));
            records.truncate(n);
        }
        records.sort_unstable_by(|a, b| a.digest.cmp(&b.digest));
        let at: DigestMap<&Digest, usize> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (&r.digest, i))
            .collect();
        let mut manifests: Vec<TaggedRecord> = records
            .iter()
            .map(|r| (Arc::clone(r), Vec::new()))
            .collect();
        for (repo, ts) in &ix.tags {
            for (t, e) in ts {
                if let Some(&i) = at.get(&e.digest) {
                    manifests[i].1.push((repo.clone(), t.clone()));
                }
            }
        }
        Page {
            revision: ix.revision,
            manifests,
            remaining,
        }
    }

    /// A consistent view of every manifest, its tags, and the cached blobs.
    pub fn snapshot(&self) -> Snapshot {
        let ix = self.read();
        let mut tags: DigestMap<Digest, Vec<(RepoPath, String)>> = DigestMap::default();
        for (repo, ts) in &ix.tags {
            for (t, e) in ts {
                tags.entry(e.digest.clone())
                    .or_default()
                    .push((repo.clone(), t.clone()));
            }
        }
        Snapshot {
            revision: ix.revision,
            manifests: ix
                .manifests
                .values()
                .map(|r| {
                    let t = tags.remove(&r.digest).unwrap_or_default();
                    (r.clone(), t)
                })
                .collect(),
            blobs: ix.blobs.clone(),
        }
    }

    fn write_record(&self, r: &ManifestRecord) -> Result<(), StoreError> {
        write_atomic(
            &self.root,
            &record_path(&self.root, &r.digest),
            &encode_record(r),
        )
    }
}

fn remove_file_if_exists(p: &Path) -> Result<(), StoreError> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(p)(e)),
        _ => Ok(()),
    }
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail; an empty object keeps the file parseable.
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

/// The bytes of a manifest record file. Public with [`encode_tags`] and the path functions so
/// tools that write a cache offline (the scale test's generator) use the store's own format.
pub fn encode_record(r: &ManifestRecord) -> Vec<u8> {
    json_bytes(r)
}

/// The bytes of the tag index file of `repo`.
pub fn encode_tags(repo: &RepoPath, tags: BTreeMap<String, TagEntry>) -> Vec<u8> {
    json_bytes(&TagFile {
        registry: repo.registry.clone(),
        repository: repo.repository.clone(),
        tags,
    })
}

pub fn blob_path(root: &Path, d: &Digest) -> PathBuf {
    root.join("blobs")
        .join(d.algorithm().as_str())
        .join(&d.hex()[..2])
        .join(d.hex().as_str())
}

/// Where the record of manifest `d` lives.
pub fn record_path(root: &Path, d: &Digest) -> PathBuf {
    root.join("manifests")
        .join(d.algorithm().as_str())
        .join(format!("{}.json", d.hex()))
}

/// Where the tag index of `repo` lives.
pub fn tag_path(root: &Path, repo: &RepoPath) -> PathBuf {
    let key = Digest::sha256_of(format!("{}/{}", repo.registry, repo.repository).as_bytes());
    root.join("tags").join(format!("{}.json", key.hex()))
}

/// Temp file, fsync, rename: readers see the old file or the new one, never a torn one.
fn write_atomic(root: &Path, dest: &Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = root
        .join("tmp")
        .join(format!("{:016x}.meta", rand::random::<u64>()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(dest))
}

/// Threads reading the cache at open: the work is file reads, stats and JSON parsing, which
/// scale with cores until the disk is the limit.
fn load_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Runs `f` over `items` split into one chunk per thread, results in order; each thread
/// passes `f` its own scratch value.
fn parallel_map<T: Sync, R: Send, S: Default>(
    items: &[T],
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let chunk = items.len().div_ceil(load_threads()).max(1);
    std::thread::scope(|s| {
        let f = &f;
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut scratch = S::default();
                    part.iter().map(|t| f(&mut scratch, t)).collect::<Vec<R>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The files of one blob shard directory: the digests of those named like a blob, and the
/// paths of the others. Names only: sizes come from the records (see [`BlobTable::declare`]).
fn scan_shard(alg: &str, dir: &Path) -> (Vec<Digest>, Vec<PathBuf>) {
    let mut blobs = Vec::new();
    let mut unexpected = Vec::new();
    let Ok(files) = fs::read_dir(dir) else {
        return (blobs, unexpected);
    };
    let mut name = String::with_capacity(alg.len() + 1 + 128);
    for f in files.flatten() {
        name.clear();
        name.push_str(alg);
        name.push(':');
        let parsed = f.file_name().to_str().and_then(|n| {
            name.push_str(n);
            name.parse::<Digest>().ok()
        });
        match parsed {
            Some(d) => blobs.push(d),
            None => unexpected.push(f.path()),
        }
    }
    (blobs, unexpected)
}

/// Reads and parses one record into the thread's reused buffer. (Plain reads: `fs::read`
/// would also stat every file to size its buffer, 100k extra system calls at scale.)
fn read_record(buf: &mut Vec<u8>, path: &Path) -> Result<ManifestRecord, String> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    serde_json::from_slice::<ManifestRecord>(buf).map_err(|e| e.to_string())
}

fn load_index(root: &Path, report: &mut OpenReport) -> Index {
    let mut ix = Index::default();
    // Blobs: names are digests; anything else is not ours and is left alone.
    let mut shards = Vec::new();
    for alg in ["sha256", "sha512"] {
        if let Ok(dirs) = fs::read_dir(root.join("blobs").join(alg)) {
            shards.extend(dirs.flatten().map(|d| (alg, d.path())));
        }
    }
    let scanned = parallel_map(&shards, |_: &mut (), (alg, dir)| scan_shard(alg, dir));
    let mut blobs = BlobTable::with_capacity(scanned.iter().map(|(b, _)| b.len()).sum());
    for (found, unexpected) in scanned {
        for path in unexpected {
            tracing::warn!(path = %path.display(), "skipping unexpected file in blob store");
            report.damaged += 1;
        }
        for digest in found {
            blobs.found(digest);
        }
    }
    // A record is named after its manifest's digest, so the list of records to read is a list
    // of inline digests (4 MiB at 100k), not of paths.
    let mut names = Vec::new();
    for alg in ["sha256", "sha512"] {
        let Ok(files) = fs::read_dir(root.join("manifests").join(alg)) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            match name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|hex| format!("{alg}:{hex}").parse::<Digest>().ok())
            {
                Some(d) => names.push(d),
                None => {
                    tracing::warn!(path = %f.path().display(), "skipping unexpected file among manifest records");
                    report.damaged += 1;
                }
            }
        }
    }
    // Each thread also checks that a record holds the digest it is named after.
    let records = parallel_map(&names, |buf: &mut Vec<u8>, d: &Digest| {
        read_record(buf, &record_path(root, d)).map(|r| {
            let placed = r.digest == *d;
            (Arc::new(r), placed)
        })
    });
    ix.manifests.reserve(records.len());
    let mut disputed = Vec::new();
    for (name, record) in names.iter().zip(records) {
        let path = || record_path(root, name);
        match record {
            Ok((r, true)) if blobs.contains(&r.digest) => {
                for b in r.blob_digests() {
                    blobs.add_ref(b);
                }
                // The manifest's own size was measured when it was cached; the others are
                // the descriptors'. A disagreement is settled by the file below.
                let declared = std::iter::once((&r.digest, r.size))
                    .chain(
                        r.config
                            .iter()
                            .chain(&r.layers)
                            .map(|b| (&b.digest, b.size)),
                    )
                    .chain(r.children.iter().map(|c| (&c.digest, c.size)));
                for (d, size) in declared {
                    if !blobs.declare(d, size) {
                        disputed.push(d.clone());
                    }
                }
                ix.manifests.insert(r.digest.clone(), r);
            }
            Ok((r, _)) => {
                tracing::warn!(path = %path().display(), digest = %r.digest, "skipping manifest record whose manifest blob is missing or misplaced");
                report.damaged += 1;
            }
            Err(e) => {
                tracing::warn!(path = %path().display(), error = %e, "skipping damaged manifest record");
                report.damaged += 1;
            }
        }
    }
    // Blobs no record declares (fetched alone, or left by an interrupted pull), and disputed
    // ones, are measured.
    let mut measure = blobs.undeclared();
    measure.extend(disputed);
    let sizes = parallel_map(&measure, |_: &mut (), d: &Digest| {
        fs::metadata(blob_path(root, d)).ok().map(|m| m.len())
    });
    for (d, size) in measure.iter().zip(sizes) {
        blobs.measured(d, size);
    }
    blobs.sized();
    ix.blobs = Arc::new(blobs);
    if let Ok(files) = fs::read_dir(root.join("tags")) {
        for f in files.flatten() {
            let path = f.path();
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<TagFile>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(t) => {
                    let repo = RepoPath {
                        registry: t.registry,
                        repository: t.repository,
                    };
                    let tags: BTreeMap<_, _> = t
                        .tags
                        .into_iter()
                        .filter(|(_, e)| ix.manifests.contains_key(&e.digest))
                        .collect();
                    if !tags.is_empty() {
                        ix.tags.insert(repo, tags);
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping damaged tag index");
                    report.damaged += 1;
                }
            }
        }
    }
    ix
}

#[cfg(test)]
mod tests;
