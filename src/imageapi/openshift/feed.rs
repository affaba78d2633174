//! The store's change log, encoded once for every watcher.
//!
//! Each change becomes a ready-to-send watch event line (`{"type":..,"object":..}\n`) plus what
//! selectors need (name, reference, labels), shared by `Arc` among all watchers: a burst of
//! changes is serialised once, not once per watcher, and a watcher holds at most one batch.
//! The feed is only a cache of [`Store::changes_since`]: it never keeps a change the store has
//! forgotten (so `changeHistory` decides what is Expired), and a watcher further behind than the
//! feed reaches reads the store directly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::selector::{FieldSelector, LabelSelector};
use super::types::{self, Field, encode_json};
use crate::api::Image;
use crate::store::{Change, ChangeKind, Expired, Store};

/// Most events the feed keeps; older ones are read from the store when someone needs them.
const FEED_CAP: usize = 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

impl From<ChangeKind> for EventType {
    fn from(k: ChangeKind) -> Self {
        match k {
            ChangeKind::Added => EventType::Added,
            ChangeKind::Modified => EventType::Modified,
            ChangeKind::Deleted => EventType::Deleted,
        }
    }
}

/// What a watcher's selectors test.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches_parts(
        &self,
        name: &str,
        reference: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        self.labels.matches(labels)
            && self.fields.matches(|f| match f {
                Field::Name => name,
                Field::DockerImageReference => reference,
            })
    }

    pub fn matches(&self, image: &Image) -> bool {
        self.matches_parts(image.name(), &image.docker_image_reference, image.labels())
    }
}

/// One change, encoded.
#[derive(Debug)]
pub struct FeedEvent {
    pub revision: u64,
    pub kind: EventType,
    pub name: String,
    pub reference: String,
    pub labels: BTreeMap<String, String>,
    /// `{"type":"ADDED","object":{...}}\n` with the group's API version.
    pub line: Bytes,
    object_start: usize,
}

impl FeedEvent {
    pub fn from_change(c: &Change) -> FeedEvent {
        let image = types::from_record(&c.record, &c.tags, c.revision);
        let kind = EventType::from(c.kind);
        let (line, object_start) = event_line(kind.as_str(), &encode_json(&image));
        FeedEvent {
            revision: c.revision,
            kind,
            name: image.name().to_owned(),
            reference: image.docker_image_reference.clone(),
            labels: image.metadata.labels.clone().unwrap_or_default(),
            line: Bytes::from(line),
            object_start,
        }
    }

    /// The object's JSON.
    pub fn object(&self) -> &[u8] {
        &self.line[self.object_start..self.line.len() - 2]
    }

    pub fn matches(&self, filter: &Filter) -> bool {
        filter.matches_parts(&self.name, &self.reference, &self.labels)
    }
}

/// `{"type":TYPE,"object":OBJECT}\n`, and where the object starts.
pub fn event_line(kind: &str, object: &[u8]) -> (Vec<u8>, usize) {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(br#"{"type":""#);
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(br#"","object":"#);
    let start = line.len();
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    (line, start)
}

#[derive(Default)]
struct Inner {
    /// Consecutive changes, oldest first, ending at `latest`.
    events: VecDeque<Arc<FeedEvent>>,
    /// The revision the feed is complete up to.
    latest: u64,
}

impl Inner {
    /// The feed holds every change after this revision.
    fn base(&self) -> u64 {
        self.events
            .front()
            .map_or(self.latest, |e| e.revision.saturating_sub(1))
    }
}

#[derive(Default)]
pub struct Feed {
    inner: Mutex<Inner>,
}

/// The oldest revision the store still has a change for.
pub fn oldest_retained(store: &Store) -> u64 {
    store.oldest_revision()
}

/// Per-object resource versions for a list at some revision.
pub struct ObjectRevisions {
    last: HashMap<String, u64>,
    floor: u64,
}

impl ObjectRevisions {
    /// The revision of the object's last change, when the history still has it; otherwise
    /// the revision before the oldest retained change (it has not changed since).
    pub fn of(&self, name: &str) -> u64 {
        self.last.get(name).copied().unwrap_or(self.floor)
    }
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes the changes the store made since the last refresh and forgets what the store
    /// forgot.
    fn refresh(inner: &mut Inner, store: &Store) {
        if store.revision() > inner.latest {
            let changes = match store.changes_since(inner.latest) {
                Ok(c) => c,
                Err(e) => {
                    // Nobody asked for a while and the store moved on: start from what it has.
                    inner.events.clear();
                    inner.latest = e.oldest.saturating_sub(1);
                    store.changes_since(inner.latest).unwrap_or_else(|_| {
                        inner.latest = store.revision();
                        Vec::new()
                    })
                }
            };
            for c in &changes {
                if c.revision > inner.latest {
                    inner.events.push_back(Arc::new(FeedEvent::from_change(c)));
                    inner.latest = c.revision;
                }
            }
        }
        let oldest = oldest_retained(store);
        while inner
            .events
            .front()
            .is_some_and(|e| e.revision < oldest || inner.events.len() > FEED_CAP)
        {
            inner.events.pop_front();
        }
    }

    /// Up to `max` changes after revision `after`, oldest first; `Expired` when the store no
    /// longer has all of them.
    pub fn since(
        &self,
        store: &Store,
        after: u64,
        max: usize,
    ) -> Result<Vec<Arc<FeedEvent>>, Expired> {
        {
            let mut inner = self.lock();
            Self::refresh(&mut inner, store);
            if after >= inner.latest {
                return Ok(Vec::new());
            }
            let oldest = oldest_retained(store);
            if after + 1 < oldest {
                return Err(Expired {
                    requested: after,
                    oldest,
                });
            }
            if after >= inner.base() {
                let from = inner.events.partition_point(|e| e.revision <= after);
                return Ok(inner.events.range(from..).take(max).cloned().collect());
            }
        }
        // Behind the feed but not the store: encode privately, outside the feed's lock.
        Ok(store
            .changes_since(after)?
            .iter()
            .take(max)
            .map(|c| Arc::new(FeedEvent::from_change(c)))
            .collect())
    }

    /// Resource versions of objects in a list taken at revision `upto`.
    pub fn object_revisions(&self, store: &Store, upto: u64) -> ObjectRevisions {
        let mut inner = self.lock();
        Self::refresh(&mut inner, store);
        let mut last = HashMap::new();
        for e in inner.events.iter().take_while(|e| e.revision <= upto) {
            last.insert(e.name.clone(), e.revision);
        }
        ObjectRevisions {
            last,
            floor: inner.base().min(upto),
        }
    }

    /// The resource version of one object at the current revision.
    pub fn object_revision(&self, store: &Store, name: &str) -> u64 {
        let mut inner = self.lock();
        Self::refresh(&mut inner, store);
        inner
            .events
            .iter()
            .rev()
            .find(|e| e.name == name)
            .map_or_else(|| inner.base(), |e| e.revision)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::reference::RepoPath;
    use bytes::Bytes as B;
    use jiff::Timestamp;

    fn manifest(seed: u32) -> (Digest, B) {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{}"}},"layers":[],"annotations":{{"seed":"{seed}"}}}}"#,
            Digest::sha256_of(b"{}")
        );
        (Digest::sha256_of(body.as_bytes()), B::from(body))
    }

    fn repo() -> RepoPath {
        RepoPath {
            registry: "docker.io".into(),
            repository: "library/x".into(),
        }
    }

    fn put(store: &Store, seed: u32) -> Digest {
        let (d, b) = manifest(seed);
        store
            .put_manifest(&repo(), None, &d, None, &b, Timestamp::now())
            .unwrap();
        d
    }

    #[test]
    fn serves_every_change_in_order_and_expires_like_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.set_change_history(8);
        let feed = Feed::default();
        let start = store.revision();
        let digests: Vec<Digest> = (0..5).map(|i| put(&store, i)).collect();
        let events = feed.since(&store, start, 100).unwrap();
        assert_eq!(events.len(), 5);
        for (e, d) in events.iter().zip(&digests) {
            assert_eq!(e.kind, EventType::Added);
            assert_eq!(e.name, d.to_string());
        }
        let revs: Vec<u64> = events.iter().map(|e| e.revision).collect();
        assert!(revs.windows(2).all(|w| w[1] == w[0] + 1));
        // Batches resume where they left off.
        let first = feed.since(&store, start, 2).unwrap();
        let rest = feed.since(&store, first[1].revision, 100).unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].revision, first[1].revision + 1);
        // Nothing new.
        assert!(feed.since(&store, store.revision(), 10).unwrap().is_empty());
        // The object bytes parse back into the image.
        let img: Image = serde_json::from_slice(events[0].object()).unwrap();
        assert_eq!(img.name(), digests[0].to_string());
        let line: serde_json::Value = serde_json::from_slice(&events[0].line).unwrap();
        assert_eq!(line["type"], "ADDED");
        // Past the store's history: Expired, even though nothing asked in between.
        for i in 5..20 {
            put(&store, i);
        }
        let e = feed.since(&store, start, 100).unwrap_err();
        assert_eq!(e.requested, start);
        assert!(feed.len() <= 8);
        let oldest = e.oldest;
        assert_eq!(feed.since(&store, oldest - 1, 100).unwrap().len(), 8);
        assert!(feed.since(&store, oldest - 2, 100).is_err());
    }

    #[test]
    fn deletions_and_object_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let feed = Feed::default();
        let a = put(&store, 1);
        let b = put(&store, 2);
        let before = store.revision();
        let revs = feed.object_revisions(&store, before);
        assert_eq!(revs.of(&b.to_string()), before);
        assert_eq!(revs.of(&a.to_string()), before - 1);
        assert_eq!(feed.object_revision(&store, &a.to_string()), before - 1);
        store.delete_manifest(&a).unwrap();
        let events = feed.since(&store, before, 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventType::Deleted);
        assert_eq!(events[0].name, a.to_string());
        // A list taken before the deletion does not see its revision.
        assert_eq!(
            feed.object_revisions(&store, before).of(&a.to_string()),
            before - 1
        );
        // An object the history never saw changing gets the floor.
        let fresh = Feed::default();
        let dir2 = tempfile::tempdir().unwrap();
        let (quiet, _) = Store::open(dir2.path()).unwrap();
        let r = quiet.revision();
        assert_eq!(fresh.object_revisions(&quiet, r).of("sha256:nothing"), r);
    }

    #[test]
    fn filters_use_the_encoded_labels() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let feed = Feed::default();
        let start = store.revision();
        put(&store, 1);
        let e = &feed.since(&store, start, 1).unwrap()[0];
        let yes = Filter {
            labels: LabelSelector::parse("imagecache.io/repository=library.x").unwrap(),
            fields: FieldSelector::parse(&format!("metadata.name={}", e.name)).unwrap(),
        };
        let no = Filter {
            labels: LabelSelector::parse("imagecache.io/registry!=docker.io").unwrap(),
            ..Default::default()
        };
        assert!(e.matches(&yes));
        assert!(!e.matches(&no));
    }
}
