//! The sync of one ImageCache as a pure state machine: inputs (the cache, its pods, the pods'
//! Image watch events, the CachedImage objects seen, the results of our writes, clock ticks) go
//! in through [`CacheSync::handle`], the writes to make come out. No IO, no clock of its own.
//!
//! What it keeps:
//! - per present pod, the images it reported (`None` until its first complete list), and the
//!   list being rebuilt while its watch relists;
//! - the CachedImage objects of the cache as last seen (watch or write response);
//! - per digest, when a rate-limited or failed write is due again.
//!
//! Rules:
//! - A digest is held by the pods that reported it; a pod that is present but has never
//!   completed a list (operator restart, pod not ready yet) is taken to hold what the existing
//!   object says it holds, and a pod that stops being ready keeps its last list until it is back
//!   (its next complete list replaces it) or gone (its contribution is dropped).
//! - Nothing is written before the pods were listed and the CachedImage objects were listed
//!   (so stale objects from before a restart are judged against a full view), and nothing is
//!   deleted while a ready pod has not completed its first list (the finalizer would prune the
//!   image from that pod too, should it hold it).
//! - Held by a pod with a known Image: apply the desired object, unless the object is being
//!   deleted (the finalizer owns it then); when only `lastPulled` changed, at most once per
//!   `min_update_interval`. Held only by pods of unknown content: leave it. Held by none: delete.
//! - Objects not named as [`object_name`] gives (made by hand) are deleted when no pod holds
//!   their digest, and otherwise left alone.
//! - When an object whose finalizer pruned it disappears, the digest is dropped from the ready
//!   pods' lists (they were pruned; their watch will say so too) so it is not re-created in the
//!   meantime.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::watcher;

use super::mapping::{self, object_name};
use crate::api::Image;
use crate::crd::{CachedImage, ImageCache};
use crate::digest::Digest;
use crate::operator::MANAGER;
use crate::operator::pods::RegistryPod;

use super::FINALIZER;

/// How long after a failed write it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// What happens to the sync of a cache.
#[derive(Debug)]
pub enum Input {
    /// The ImageCache, or `None` when it is gone (or being deleted).
    Cache(Option<Arc<ImageCache>>),
    /// The cache's registry pods, as listed (ready or not).
    Pods(Vec<RegistryPod>),
    /// An event of a pod's Image watch.
    Images {
        pod: String,
        event: watcher::Event<Image>,
    },
    /// The complete list of the cache's CachedImage objects.
    ObjectsListed(Vec<CachedImage>),
    /// An object created or changed.
    Object(CachedImage),
    /// An object gone, in its last state.
    ObjectGone(CachedImage),
    /// Our apply succeeded; the object as the server returned it.
    Applied(CachedImage),
    /// Our delete succeeded; the object if it is still there (finalizer pending).
    Deleted {
        name: String,
        remaining: Option<CachedImage>,
    },
    /// A write for this digest failed; try again after [`RETRY_AFTER`].
    Failed(Digest),
    /// Time passed: due writes are made.
    Tick,
}

/// A write to make, in the cache's namespace.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Server-side apply of the whole object (never status, never finalizers).
    Apply {
        digest: Digest,
        object: Box<CachedImage>,
    },
    Delete {
        digest: Digest,
        name: String,
    },
}

#[derive(Debug, Default)]
struct PodState {
    ready: bool,
    /// `None` until the pod's watch completed a list.
    images: Option<BTreeMap<Digest, Arc<Image>>>,
    /// The list being received after an `Init`.
    relist: Option<BTreeMap<Digest, Arc<Image>>>,
}

/// How an observed object differs from the desired one.
#[derive(Debug, PartialEq)]
enum Diff {
    None,
    LastPulledOnly,
    Other,
}

/// The sync state of one ImageCache.
#[derive(Debug)]
pub struct CacheSync {
    /// Name of the ImageCache (set even before the object itself is seen).
    name: String,
    min_update_interval: Duration,
    cache: Option<Arc<ImageCache>>,
    pods: BTreeMap<String, PodState>,
    pods_listed: bool,
    objects: BTreeMap<String, CachedImage>,
    by_digest: BTreeMap<Digest, BTreeSet<String>>,
    objects_listed: bool,
    /// When we last wrote each object (in this process).
    last_write: BTreeMap<String, Timestamp>,
    /// Digests with a write held back, and when it is due.
    pending: BTreeMap<Digest, Timestamp>,
    dirty: BTreeSet<Digest>,
    full: bool,
}

impl CacheSync {
    pub fn new(name: &str, min_update_interval: Duration) -> CacheSync {
        CacheSync {
            name: name.to_owned(),
            min_update_interval,
            cache: None,
            pods: BTreeMap::new(),
            pods_listed: false,
            objects: BTreeMap::new(),
            by_digest: BTreeMap::new(),
            objects_listed: false,
            last_write: BTreeMap::new(),
            pending: BTreeMap::new(),
            dirty: BTreeSet::new(),
            full: false,
        }
    }

    /// Whether the ImageCache is there (else no writes are made).
    pub fn has_cache(&self) -> bool {
        self.cache.is_some()
    }

    /// The names of the pods currently known, ready or not.
    pub fn pod_names(&self) -> impl Iterator<Item = &str> {
        self.pods.keys().map(String::as_str)
    }

    /// How many CachedImage objects of the cache are known.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// The earliest time a held-back write is due.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.pending.values().min().copied()
    }

    /// Takes one input; returns the writes to make now.
    pub fn handle(&mut self, input: Input, now: Timestamp) -> Vec<Write> {
        match input {
            Input::Cache(cache) => {
                if cache.is_none() {
                    self.pods.clear();
                    self.pods_listed = false;
                    self.pending.clear();
                }
                self.cache = cache;
                self.full = true;
            }
            Input::Pods(list) => self.set_pods(list),
            Input::Images { pod, event } => self.image_event(&pod, event),
            Input::ObjectsListed(list) => {
                self.objects.clear();
                self.by_digest.clear();
                for obj in list {
                    self.put_object(obj);
                }
                self.objects_listed = true;
                self.full = true;
            }
            Input::Object(obj) => {
                self.dirty.insert(obj.spec.digest.clone());
                self.put_object(obj);
            }
            Input::ObjectGone(obj) => self.object_gone(obj),
            Input::Applied(obj) => {
                self.pending.remove(&obj.spec.digest);
                self.last_write.insert(obj.name_any(), now);
                self.put_object(obj);
            }
            Input::Deleted { name, remaining } => match remaining {
                Some(obj) => self.put_object(obj),
                None => self.drop_object(&name),
            },
            Input::Failed(digest) => {
                let due = now.checked_add(RETRY_AFTER).unwrap_or(now);
                self.pending.insert(digest, due);
            }
            Input::Tick => {
                let due: Vec<Digest> = self
                    .pending
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(d, _)| d.clone())
                    .collect();
                for d in due {
                    self.pending.remove(&d);
                    self.dirty.insert(d);
                }
            }
        }
        self.plan(now)
    }

    fn set_pods(&mut self, list: Vec<RegistryPod>) {
        let mut pods = BTreeMap::new();
        let mut changed = !self.pods_listed;
        for p in list {
            let mut state = self.pods.remove(&p.name).unwrap_or_else(|| {
                changed = true;
                PodState::default()
            });
            changed |= state.ready != p.ready;
            state.ready = p.ready;
            pods.insert(p.name, state);
        }
        // Pods no longer listed drop their contribution (also what they held provisionally).
        changed |= !self.pods.is_empty();
        for gone in std::mem::take(&mut self.pods).into_values() {
            self.dirty
                .extend(gone.images.into_iter().flat_map(|m| m.into_keys()));
        }
        self.pods = pods;
        if changed {
            // A new pod may hold objects provisionally; a readiness change may allow deletes.
            self.full = true;
        }
        self.pods_listed = true;
    }

    fn image_event(&mut self, pod: &str, event: watcher::Event<Image>) {
        let Some(state) = self.pods.get_mut(pod) else {
            return; // A pod that is gone; its late events do not count.
        };
        let digest_of = |img: &Image| img.name().parse::<Digest>().ok();
        match event {
            watcher::Event::Init => state.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(img) => {
                if let Some(d) = digest_of(&img) {
                    state
                        .relist
                        .get_or_insert_with(BTreeMap::new)
                        .insert(d, Arc::new(img));
                }
            }
            watcher::Event::InitDone => {
                let new = state.relist.take().unwrap_or_default();
                match state.images.take() {
                    // First list: the pod stops holding objects provisionally.
                    None => self.full = true,
                    Some(old) => {
                        let removed = old.keys().filter(|d| !new.contains_key(*d));
                        let changed = new
                            .iter()
                            .filter(|(d, img)| old.get(*d) != Some(*img))
                            .map(|(d, _)| d);
                        self.dirty.extend(removed.chain(changed).cloned());
                    }
                }
                state.images = Some(new);
            }
            watcher::Event::Apply(img) => {
                if let Some(d) = digest_of(&img) {
                    state
                        .images
                        .get_or_insert_with(BTreeMap::new)
                        .insert(d.clone(), Arc::new(img));
                    self.dirty.insert(d);
                }
            }
            watcher::Event::Delete(img) => {
                if let Some(d) = digest_of(&img) {
                    if let Some(m) = state.images.as_mut() {
                        m.remove(&d);
                    }
                    self.dirty.insert(d);
                }
            }
        }
    }

    fn object_gone(&mut self, obj: CachedImage) {
        let name = obj.name_any();
        let digest = obj.spec.digest.clone();
        let previous = self.objects.get(&name);
        let deleting = obj.metadata.deletion_timestamp.is_some()
            || previous.is_some_and(|p| p.metadata.deletion_timestamp.is_some());
        let finalized = obj.finalizers().iter().any(|f| f == FINALIZER)
            || previous.is_some_and(|p| p.finalizers().iter().any(|f| f == FINALIZER));
        if deleting && finalized {
            // The finalizer pruned it from every ready pod before letting it go.
            for state in self.pods.values_mut().filter(|p| p.ready) {
                if let Some(m) = state.images.as_mut() {
                    m.remove(&digest);
                }
            }
        }
        self.drop_object(&name);
        self.last_write.remove(&name);
        self.dirty.insert(digest);
    }

    fn put_object(&mut self, obj: CachedImage) {
        let name = obj.name_any();
        if let Some(old) = self.objects.get(&name)
            && old.spec.digest != obj.spec.digest
        {
            // The digest is immutable; this only happens with a replaced object.
            let old = old.spec.digest.clone();
            self.unindex(&old, &name);
        }
        self.by_digest
            .entry(obj.spec.digest.clone())
            .or_default()
            .insert(name.clone());
        self.objects.insert(name, obj);
    }

    fn drop_object(&mut self, name: &str) {
        if let Some(obj) = self.objects.remove(name) {
            self.unindex(&obj.spec.digest, name);
        }
    }

    fn unindex(&mut self, digest: &Digest, name: &str) {
        if let Some(names) = self.by_digest.get_mut(digest) {
            names.remove(name);
            if names.is_empty() {
                self.by_digest.remove(digest);
            }
        }
    }

    fn can_write(&self) -> bool {
        self.pods_listed
            && self.objects_listed
            && self
                .cache
                .as_ref()
                .is_some_and(|c| c.metadata.deletion_timestamp.is_none())
    }

    /// Whether every ready pod has completed a list (deleting before that could prune an
    /// image such a pod holds).
    fn ready_pods_listed(&self) -> bool {
        self.pods.values().all(|p| !p.ready || p.images.is_some())
    }

    fn plan(&mut self, now: Timestamp) -> Vec<Write> {
        if !self.can_write() {
            return Vec::new();
        }
        let digests: BTreeSet<Digest> = if std::mem::take(&mut self.full) {
            self.dirty.clear();
            self.pods
                .values()
                .filter_map(|p| p.images.as_ref())
                .flat_map(|m| m.keys().cloned())
                .chain(self.by_digest.keys().cloned())
                .collect()
        } else {
            std::mem::take(&mut self.dirty)
        };
        let mut writes = Vec::new();
        for d in digests {
            self.plan_digest(&d, now, &mut writes);
        }
        writes
    }

    fn plan_digest(&mut self, digest: &Digest, now: Timestamp, writes: &mut Vec<Write>) {
        let Some(ic) = self.cache.clone() else {
            return;
        };
        let name = object_name(&self.name, digest);
        let current = self.objects.get(&name);

        // Pods holding it with a known Image, then pods holding it per the existing object.
        let mut images: Vec<&Image> = Vec::new();
        let mut pods: Vec<String> = Vec::new();
        for (pod, state) in &self.pods {
            match &state.images {
                Some(m) => {
                    if let Some(img) = m.get(digest) {
                        images.push(img);
                        pods.push(pod.clone());
                    }
                }
                None => {
                    let listed = self.by_digest.get(digest).is_some_and(|names| {
                        names
                            .iter()
                            .filter_map(|n| self.objects.get(n))
                            .any(|o| o.spec.pods.iter().any(|p| p == pod))
                    });
                    if listed {
                        pods.push(pod.clone());
                    }
                }
            }
        }

        if pods.is_empty() {
            if !self.ready_pods_listed() {
                // A pod we can reach may hold it; decided on the full pass after its list.
                return;
            }
            self.pending.remove(digest);
            let names = self.by_digest.get(digest).cloned().unwrap_or_default();
            for n in names {
                let deleting = self
                    .objects
                    .get(&n)
                    .is_some_and(|o| o.metadata.deletion_timestamp.is_some());
                if !deleting {
                    writes.push(Write::Delete {
                        digest: digest.clone(),
                        name: n,
                    });
                }
            }
            return;
        }
        if images.is_empty() {
            return; // Held only by pods whose content is not known yet.
        }
        if current.is_some_and(|o| o.metadata.deletion_timestamp.is_some()) {
            return; // The finalizer has it; re-created once gone if still held.
        }
        let want = match mapping::desired(&ic, &images, &pods) {
            Ok(obj) => obj,
            Err(e) => {
                tracing::warn!(cache = %self.name, %digest, error = %e, "cannot map image");
                return;
            }
        };
        let diff = match current {
            None => Diff::Other,
            Some(have) => diff(&want, have),
        };
        match diff {
            Diff::None => {
                self.pending.remove(digest);
            }
            Diff::LastPulledOnly => {
                let last = self
                    .last_write
                    .get(&name)
                    .copied()
                    .or_else(|| current.and_then(last_applied));
                let due = last.and_then(|t| t.checked_add(self.min_update_interval).ok());
                match due {
                    Some(due) if due > now => {
                        self.pending.insert(digest.clone(), due);
                    }
                    _ => {
                        self.pending.remove(digest);
                        writes.push(Write::Apply {
                            digest: digest.clone(),
                            object: Box::new(want),
                        });
                    }
                }
            }
            Diff::Other => {
                self.pending.remove(digest);
                writes.push(Write::Apply {
                    digest: digest.clone(),
                    object: Box::new(want),
                });
            }
        }
    }
}

/// When the operator last applied the object, from its managed fields (survives restarts).
fn last_applied(obj: &CachedImage) -> Option<Timestamp> {
    obj.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .filter(|m| {
            m.manager.as_deref() == Some(MANAGER) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max()
}

/// Compares what we would apply with what is there: the spec, our labels and our owner
/// reference (others may add labels and owners; those are theirs).
fn diff(want: &CachedImage, have: &CachedImage) -> Diff {
    let labels_ok = want
        .labels()
        .iter()
        .all(|(k, v)| have.labels().get(k) == Some(v));
    let owners_ok = want.owner_references().iter().all(|w| {
        have.owner_references()
            .iter()
            .any(|h| h.uid == w.uid && h.controller == w.controller)
    });
    if !labels_ok || !owners_ok {
        return Diff::Other;
    }
    if want.spec == have.spec {
        return Diff::None;
    }
    let mut masked = want.spec.clone();
    masked.last_pulled = have.spec.last_pulled.clone();
    if masked == have.spec {
        Diff::LastPulledOnly
    } else {
        Diff::Other
    }
}

#[cfg(test)]
mod tests;
