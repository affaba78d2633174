//! The pure prune planner: (inventory, request, now) -> plan. No I/O, no clock, no store.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use crate::api::{Compiled, Decision, Item, Labels, Totals};
use crate::digest::{Digest, DigestMap, DigestSet};
use crate::reference::{RepoPath, select_upstream};
use crate::store::{BlobTable, ManifestRecord, StrMap};

/// One cached manifest as the planner sees it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Shared with the store's index: an inventory does not copy the records.
    pub record: Arc<ManifestRecord>,
    /// Every (repository, tag) pointing at it.
    pub tags: Vec<(RepoPath, String)>,
}

impl Entry {
    /// `registry/repo:tag` for every tag, then `registry/repo@digest` for every repository.
    pub fn urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.tags.iter().map(|(r, t)| format!("{r}:{t}")).collect();
        urls.sort();
        urls.extend(
            self.record
                .references
                .iter()
                .map(|r| format!("{r}@{}", self.record.digest)),
        );
        urls
    }

    /// The URL a person would use: the first tag, else the first digest reference.
    pub fn primary_url(&self) -> String {
        self.urls()
            .into_iter()
            .next()
            .unwrap_or_else(|| self.record.digest.to_string())
    }

    /// When it was last pulled, or first cached if never pulled: the LRU key.
    pub fn last_used(&self) -> Timestamp {
        self.record.last_pulled.unwrap_or(self.record.created)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Volume {
    pub total: u64,
    pub free: u64,
}

/// The planner matches label selectors against the records' compact label maps.
impl Labels for StrMap {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

/// A snapshot of the cache.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub manifests: Vec<Entry>,
    pub blob_sizes: Arc<BlobTable>,
    pub volume: Option<Volume>,
}

impl Inventory {
    /// Bytes of every cached blob.
    pub fn used_bytes(&self) -> u64 {
        self.blob_sizes.bytes()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Every manifest considered, least recently pulled first.
    pub items: Vec<Item>,
    /// Manifests to remove, in order.
    #[serde(skip)]
    pub manifests: Vec<Digest>,
    /// Blobs no remaining manifest references once the manifests are gone.
    #[serde(skip)]
    pub blobs: Vec<Digest>,
    pub totals: Totals,
    pub protected: BTreeMap<String, u64>,
    pub kept: BTreeMap<String, u64>,
    /// Why nothing is removed, when the run was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// What the cluster uses, as digests and (repository, tag) pairs.
#[derive(Default)]
struct InUse {
    digests: HashSet<Digest>,
    tags: HashSet<(RepoPath, String)>,
}

impl InUse {
    fn parse(refs: &[String]) -> InUse {
        let mut out = InUse::default();
        for r in refs {
            // Kubelet image IDs: `docker-pullable://repo@sha256:..`, or a bare digest.
            let r = r
                .trim()
                .trim_start_matches("docker-pullable://")
                .trim_start_matches("docker://");
            if let Ok(d) = r.parse::<Digest>() {
                out.digests.insert(d);
                continue;
            }
            let (name, digest) = match r.rsplit_once('@') {
                Some((n, d)) => (n, d.parse::<Digest>().ok()),
                None => (r, None),
            };
            if let Some(d) = digest {
                out.digests.insert(d);
                continue;
            }
            // `host:port/repo` has a colon before the last slash; a tag's colon comes after it.
            let (name, tag) = match name.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, t),
                _ => (name, "latest"),
            };
            if let Ok(repo) = select_upstream(name, None, "docker.io") {
                out.tags.insert((repo, tag.to_owned()));
            }
        }
        out
    }
}

/// Plans a prune. Deterministic for a given inventory, request and `now`.
pub fn plan(inv: &Inventory, c: &Compiled, now: Timestamp) -> Plan {
    let mut order: Vec<&Entry> = inv.manifests.iter().collect();
    order.sort_by(|a, b| (a.last_used(), &a.record.digest).cmp(&(b.last_used(), &b.record.digest)));
    let by_digest: DigestMap<&Digest, &Entry> =
        order.iter().map(|e| (&e.record.digest, *e)).collect();
    let mut parents: DigestMap<&Digest, Vec<&Digest>> = DigestMap::default();
    for e in &order {
        for child in &e.record.children {
            if by_digest.contains_key(&child.digest) {
                parents
                    .entry(&child.digest)
                    .or_default()
                    .push(&e.record.digest);
            }
        }
    }
    // Sized up front: growing these maps (rehashing every digest) dominated planning time.
    let mut refs: DigestMap<&Digest, u32> =
        DigestMap::with_capacity_and_hasher(inv.blob_sizes.len() + order.len(), Default::default());
    for e in &order {
        for d in e.record.blob_digests() {
            *refs.entry(d).or_default() += 1;
        }
    }
    // URLs are what patterns match and reports show; build each once.
    let urls: DigestMap<&Digest, Vec<String>> =
        order.iter().map(|e| (&e.record.digest, e.urls())).collect();
    let mut p = Planner {
        c,
        inv,
        urls: &urls,
        since: |d: std::time::Duration| {
            jiff::SignedDuration::try_from(d)
                .ok()
                .and_then(|d| now.checked_sub(d).ok())
                .unwrap_or(Timestamp::MIN)
        },
        in_use: in_use_set(&order, &parents, &InUse::parse(&c.in_use)),
        kept_by_rank: most_recently_pulled(&order, c.most_recently_pulled),
        by_digest,
        parents,
        refs,
        out: Plan::default(),
        decided: DigestMap::with_capacity_and_hasher(order.len(), Default::default()),
        pruned: DigestSet::with_capacity_and_hasher(order.len(), Default::default()),
        freed: 0,
        blobs: Vec::new(),
        roots: 0,
    };

    for e in &order {
        if p.pruned.contains(&e.record.digest) {
            continue;
        }
        let urls = &urls[&e.record.digest];
        match p.selected(e, urls) {
            Ok(false) => continue,
            Err(reason) => {
                p.record(e, Decision::Keep, reason);
                continue;
            }
            Ok(true) => {}
        }
        if let Some(reason) = p.protection(e, urls) {
            p.record(e, Decision::Protected, reason);
        } else if let Some(reason) = p.keep_rule(e, urls) {
            p.record(e, Decision::Keep, reason);
        } else if p.limit_reached() {
            p.record(e, Decision::Keep, "countLimit");
        } else {
            p.prune_root(e, "selected");
        }
    }

    // Capacity: evict least recently pulled unprotected images until below the target. Keep
    // rules yield here; protections do not.
    let need = capacity_need(inv, c);
    for e in &order {
        if p.freed >= need || p.limit_reached() {
            break;
        }
        if !p.pruned.contains(&e.record.digest)
            && p.protection(e, &urls[&e.record.digest]).is_none()
        {
            p.prune_root(e, "capacity");
        }
    }

    p.finish(&order)
}

struct Planner<'a, F: Fn(std::time::Duration) -> Timestamp> {
    c: &'a Compiled,
    inv: &'a Inventory,
    urls: &'a DigestMap<&'a Digest, Vec<String>>,
    /// now minus a duration, saturating.
    since: F,
    in_use: DigestSet<Digest>,
    kept_by_rank: DigestSet<Digest>,
    by_digest: DigestMap<&'a Digest, &'a Entry>,
    parents: DigestMap<&'a Digest, Vec<&'a Digest>>,
    /// Blob -> references from manifests not (yet) pruned.
    refs: DigestMap<&'a Digest, u32>,
    out: Plan,
    decided: DigestMap<&'a Digest, usize>,
    pruned: DigestSet<&'a Digest>,
    freed: u64,
    blobs: Vec<&'a Digest>,
    roots: usize,
}

impl<'a, F: Fn(std::time::Duration) -> Timestamp> Planner<'a, F> {
    fn limit_reached(&self) -> bool {
        self.c.count.is_some_and(|n| self.roots >= n)
    }

    fn protection(&self, e: &Entry, urls: &[String]) -> Option<&'static str> {
        if e.record.created > (self.since)(self.c.min_age) {
            Some("minAge")
        } else if self.in_use.contains(&e.record.digest) {
            Some("inUse")
        } else if urls
            .iter()
            .any(|u| self.c.pinned.iter().any(|p| p.is_match(u)))
        {
            Some("pinned")
        } else {
            None
        }
    }

    fn keep_rule(&self, e: &Entry, urls: &[String]) -> Option<&'static str> {
        let c = self.c;
        if urls
            .iter()
            .any(|u| c.keep_patterns.iter().any(|p| p.is_match(u)))
        {
            Some("keepPattern")
        } else if self.kept_by_rank.contains(&e.record.digest) {
            Some("mostRecentlyPulled")
        } else if c
            .pulled_within
            .is_some_and(|d| e.record.last_pulled.is_some_and(|t| t > (self.since)(d)))
        {
            Some("pulledWithin")
        } else {
            None
        }
    }

    /// Whether every given selector picks it; `Err` when the answer needs a last-pull time
    /// the cache does not know (such images are kept and counted).
    fn selected(&self, e: &Entry, urls: &[String]) -> Result<bool, &'static str> {
        let c = self.c;
        if !c.has_selector() {
            return Ok(false);
        }
        let r = &e.record;
        if let Some(d) = c.unused_for {
            match r.last_pulled {
                None => return Err("lastPulledUnknown"),
                Some(t) if t > (self.since)(d) => return Ok(false),
                Some(_) => {}
            }
        }
        Ok(c.older_than.is_none_or(|d| r.created < (self.since)(d))
            && c.created_before.is_none_or(|t| r.created < t)
            && (c.patterns.is_empty()
                || urls
                    .iter()
                    .any(|u| c.patterns.iter().any(|p| p.is_match(u))))
            && c.labels.iter().all(|l| l.matches(&r.labels))
            && (c.digests.is_empty() || c.digests.contains(&r.digest))
            && (!c.untagged
                || (e.tags.is_empty() && !has_tagged_parent(e, &self.parents, &self.by_digest))))
    }

    fn record(&mut self, e: &'a Entry, decision: Decision, reason: &str) {
        let item = Item {
            reference: self.urls[&e.record.digest]
                .first()
                .cloned()
                .unwrap_or_else(|| e.record.digest.to_string()),
            digest: e.record.digest.clone(),
            decision,
            reason: reason.to_owned(),
        };
        match self.decided.get(&e.record.digest) {
            Some(&i) => self.out.items[i] = item,
            None => {
                self.decided.insert(&e.record.digest, self.out.items.len());
                self.out.items.push(item);
            }
        }
    }

    fn prune_root(&mut self, e: &'a Entry, reason: &str) {
        self.roots += 1;
        self.prune(e, reason);
    }

    /// Marks one manifest pruned, releases its blobs, and takes along the children no other
    /// parent keeps (unless they are protected themselves).
    fn prune(&mut self, e: &'a Entry, reason: &str) {
        if !self.pruned.insert(&e.record.digest) {
            return;
        }
        self.record(e, Decision::Prune, reason);
        for d in e.record.blob_digests() {
            if let Some(n) = self.refs.get_mut(d) {
                *n -= 1;
                if *n == 0
                    && let Some(size) = self.inv.blob_sizes.size(d)
                {
                    self.freed += size;
                    self.blobs.push(d);
                }
            }
        }
        for child in &e.record.children {
            let Some(&ce) = self.by_digest.get(&child.digest) else {
                continue;
            };
            if self.pruned.contains(&ce.record.digest) {
                continue;
            }
            let orphaned = self
                .parents
                .get(&ce.record.digest)
                .is_some_and(|ps| ps.iter().all(|p| self.pruned.contains(p)));
            if !orphaned {
                continue;
            }
            match self.protection(ce, &self.urls[&ce.record.digest]) {
                Some(reason) => self.record(ce, Decision::Protected, reason),
                None => self.prune(ce, "childOfPrunedIndex"),
            }
        }
    }

    fn finish(mut self, order: &[&'a Entry]) -> Plan {
        let mut out = std::mem::take(&mut self.out);
        for item in &out.items {
            let counts = match item.decision {
                Decision::Protected => &mut out.protected,
                Decision::Keep => &mut out.kept,
                Decision::Prune => continue,
            };
            *counts.entry(item.reason.clone()).or_default() += 1;
        }
        out.manifests = order
            .iter()
            .filter(|e| self.pruned.contains(&e.record.digest))
            .map(|e| e.record.digest.clone())
            .collect();
        out.blobs = self.blobs.iter().map(|d| (*d).clone()).collect();
        out.totals = Totals {
            manifests: out.manifests.len() as u64,
            blobs: out.blobs.len() as u64,
            bytes: self.freed,
        };
        let inv = self.inv;
        let share = (out.totals.manifests as f64 / inv.manifests.len().max(1) as f64)
            .max(out.totals.bytes as f64 / inv.used_bytes().max(1) as f64);
        if out.totals.manifests > 0 && share > self.c.max_deletion_ratio {
            out.refused = Some(format!(
                "refused: this run would delete {:.0}% of the cache ({} of {} manifests, {} bytes), more than maxDeletionRatio {:.0}%; narrow the request or raise maxDeletionRatio",
                share * 100.0,
                out.totals.manifests,
                inv.manifests.len(),
                out.totals.bytes,
                self.c.max_deletion_ratio * 100.0
            ));
            out.manifests.clear();
            out.blobs.clear();
            out.totals = Totals::default();
        }
        out
    }
}

fn has_tagged_parent(
    e: &Entry,
    parents: &DigestMap<&Digest, Vec<&Digest>>,
    by_digest: &DigestMap<&Digest, &Entry>,
) -> bool {
    parents.get(&e.record.digest).is_some_and(|ps| {
        ps.iter()
            .any(|p| by_digest.get(p).is_some_and(|pe| !pe.tags.is_empty()))
    })
}

/// In-use manifests, with the whole family: an in-use index keeps its children, and an in-use
/// child keeps its indexes (the kubelet resolves the tag through them).
fn in_use_set<'a>(
    order: &[&'a Entry],
    parents: &DigestMap<&'a Digest, Vec<&'a Digest>>,
    refs: &InUse,
) -> DigestSet<Digest> {
    let mut set: DigestSet<Digest> = order
        .iter()
        .filter(|e| {
            refs.digests.contains(&e.record.digest)
                || e.record
                    .config
                    .as_ref()
                    .is_some_and(|c| refs.digests.contains(&c.digest))
                || e.tags.iter().any(|t| refs.tags.contains(t))
        })
        .map(|e| e.record.digest.clone())
        .collect();
    let children: Vec<Digest> = order
        .iter()
        .filter(|e| set.contains(&e.record.digest))
        .flat_map(|e| e.record.children.iter().map(|c| c.digest.clone()))
        .collect();
    let ancestors: Vec<Digest> = set
        .iter()
        .filter_map(|d| parents.get(d))
        .flatten()
        .map(|d| (*d).clone())
        .collect();
    set.extend(children);
    set.extend(ancestors);
    set
}

/// The N most recently pulled manifests of each repository.
fn most_recently_pulled(order: &[&Entry], n: Option<u32>) -> DigestSet<Digest> {
    let Some(n) = n else {
        return DigestSet::default();
    };
    let mut by_repo: BTreeMap<&RepoPath, Vec<&Entry>> = BTreeMap::new();
    for e in order {
        // Children are pulled with their index; ranking roots only keeps N images, not N
        // platform manifests.
        for r in &e.record.references {
            by_repo.entry(r).or_default().push(e);
        }
    }
    let mut keep = DigestSet::default();
    for entries in by_repo.values() {
        // `order` is least recently pulled first, so the newest are at the end.
        for e in entries
            .iter()
            .rev()
            .filter(|e| e.record.last_pulled.is_some())
            .take(n as usize)
        {
            keep.insert(e.record.digest.clone());
            keep.extend(e.record.children.iter().map(|c| c.digest.clone()));
        }
    }
    keep
}

/// Bytes needed to get under `maxUsedSpace` and over `minFreeSpace`.
fn capacity_need(inv: &Inventory, c: &Compiled) -> u64 {
    let total = inv.volume.map_or(0, |v| v.total);
    let over_max = c
        .max_used_space
        .map_or(0, |q| inv.used_bytes().saturating_sub(q.bytes_of(total)));
    let under_free = match (c.min_free_space, inv.volume) {
        (Some(q), Some(v)) => q.bytes_of(total).saturating_sub(v.free),
        _ => 0,
    };
    over_max.max(under_free)
}
