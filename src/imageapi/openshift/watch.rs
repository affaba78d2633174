//! One watch connection: optional initial ADDED events, then the changes after a revision from
//! the shared feed, bookmarks, and the end at `timeoutSeconds`.
//!
//! Events are produced only as fast as the client reads them (the body is pulled by the
//! connection), so a slow watcher holds at most one batch. One that falls behind the retained
//! history gets an ERROR event with a 410 `Expired` Status and the stream ends, which is how
//! the API server reports a too-old resourceVersion on a watch and what makes client-go and
//! kube-rs relist.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::feed::{EventType, Feed, FeedEvent, Filter, event_line};
use super::status::ApiError;
use super::table::{self, TableFormat};
use super::types::{self, encode_json, relabel_api_version};
use crate::api::image::{API_VERSION, Image, KIND};
use crate::store::{Expired, Store};

/// How often a watcher that asked for bookmarks gets one.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(15);
/// Events taken from the feed at a time: what one watcher may hold.
const BATCH: usize = 256;
/// Initial events encoded at a time.
const INITIAL_BATCH: usize = 64;
/// The annotation that ends the initial events of a `sendInitialEvents` watch.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// How objects are written: as Images of an API version, or as one-row tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    pub api_version: &'static str,
    pub table: Option<TableFormat>,
}

pub struct WatchRequest {
    /// Resume after this revision; `None` starts with ADDED events for every current object.
    pub after: Option<u64>,
    pub bookmarks: bool,
    /// Mark the end of the initial events with a bookmark (`sendInitialEvents=true`).
    pub initial_events_end: bool,
    pub timeout: Duration,
    pub filter: Filter,
    pub output: Output,
    /// Cancelled when the server shuts down: open watches end so shutdown need not wait.
    pub stop: CancellationToken,
}

struct Watch {
    feed: Arc<Feed>,
    store: Arc<Store>,
    revisions: tokio::sync::watch::Receiver<u64>,
    after: u64,
    initial: std::vec::IntoIter<Image>,
    initial_events_end: bool,
    pending: VecDeque<Bytes>,
    bookmarks: bool,
    filter: Filter,
    output: Output,
    deadline: Instant,
    next_bookmark: Instant,
    stop: CancellationToken,
    done: bool,
}

/// The stream of event lines for one watch request.
pub fn watch(
    feed: Arc<Feed>,
    store: Arc<Store>,
    req: WatchRequest,
) -> impl Stream<Item = Bytes> + Send + 'static {
    // Subscribe before reading anything, so no change can slip between the read and the wait.
    let revisions = store.subscribe();
    let (after, initial) = match req.after {
        Some(r) => (r, Vec::new()),
        None => {
            let snap = store.snapshot();
            let revs = feed.object_revisions(&store, snap.revision);
            let mut images: Vec<Image> = snap
                .manifests
                .iter()
                .map(|(r, tags)| types::from_record(r, tags, revs.of(&r.digest.to_string())))
                .filter(|i| req.filter.matches(i))
                .collect();
            images.sort_by(|a, b| a.name().cmp(b.name()));
            (snap.revision, images)
        }
    };
    let now = Instant::now();
    let state = Watch {
        feed,
        store,
        revisions,
        after,
        initial: initial.into_iter(),
        initial_events_end: req.initial_events_end && req.bookmarks,
        pending: VecDeque::new(),
        bookmarks: req.bookmarks,
        filter: req.filter,
        output: req.output,
        deadline: now + req.timeout,
        next_bookmark: now + BOOKMARK_INTERVAL,
        stop: req.stop,
        done: false,
    };
    futures_util::stream::unfold(state, |mut w| async move {
        let line = w.next_line().await?;
        Some((line, w))
    })
}

impl Watch {
    async fn next_line(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if self.done {
                return None;
            }
            if self.initial.len() > 0 {
                let batch: Vec<Image> = self.initial.by_ref().take(INITIAL_BATCH).collect();
                for image in &batch {
                    let line = self.image_line(EventType::Added, image);
                    self.pending.push_back(line);
                }
                continue;
            }
            if self.initial_events_end {
                self.initial_events_end = false;
                let line = self.bookmark(true);
                self.pending.push_back(line);
                continue;
            }
            match self.feed.since(&self.store, self.after, BATCH) {
                Err(e) => {
                    self.pending.push_back(expired_line(&e));
                    self.done = true;
                    continue;
                }
                Ok(events) if !events.is_empty() => {
                    for e in &events {
                        self.after = e.revision;
                        if e.matches(&self.filter)
                            && let Some(line) = self.feed_line(e)
                        {
                            self.pending.push_back(line);
                        }
                    }
                    continue;
                }
                Ok(_) => {}
            }
            tokio::select! {
                changed = self.revisions.changed() => {
                    if changed.is_err() {
                        // The store is gone: the server is stopping.
                        self.done = true;
                    }
                }
                _ = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    self.next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
                    let line = self.bookmark(false);
                    self.pending.push_back(line);
                }
                _ = self.stop.cancelled() => self.done = true,
                _ = tokio::time::sleep_until(self.deadline) => {
                    // A last bookmark lets a filtered watcher resume from the newest revision.
                    if self.bookmarks {
                        let line = self.bookmark(false);
                        self.pending.push_back(line);
                    }
                    self.done = true;
                }
            }
        }
    }

    fn feed_line(&self, e: &FeedEvent) -> Option<Bytes> {
        Some(match self.output.table {
            None if self.output.api_version == API_VERSION => e.line.clone(),
            None => {
                let object = relabel_api_version(e.object().to_vec(), self.output.api_version);
                Bytes::from(event_line(e.kind.as_str(), &object).0)
            }
            // Our own encoding always parses back; were it not to, the event is skipped.
            Some(format) => {
                let image = serde_json::from_slice::<Image>(e.object()).ok()?;
                self.table_line(e.kind, &image, format)
            }
        })
    }

    fn image_line(&self, kind: EventType, image: &Image) -> Bytes {
        match self.output.table {
            None => Bytes::from(
                event_line(
                    kind.as_str(),
                    &types::encode(image, self.output.api_version),
                )
                .0,
            ),
            Some(format) => self.table_line(kind, image, format),
        }
    }

    fn table_line(&self, kind: EventType, image: &Image, format: TableFormat) -> Bytes {
        let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta {
            resource_version: image.metadata.resource_version.clone(),
            ..Default::default()
        };
        let t = table::table(
            std::slice::from_ref(image),
            meta,
            format,
            jiff::Timestamp::now(),
        );
        Bytes::from(event_line(kind.as_str(), &encode_json(&t)).0)
    }

    fn bookmark(&self, initial_end: bool) -> Bytes {
        let object = match self.output.table {
            Some(format) if !initial_end => table::bookmark_table(self.after, format),
            _ => {
                let mut metadata = json!({"resourceVersion": self.after.to_string()});
                if initial_end {
                    metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
                }
                json!({
                    "kind": KIND,
                    "apiVersion": self.output.api_version,
                    "metadata": metadata,
                })
            }
        };
        Bytes::from(event_line("BOOKMARK", &encode_json(&object)).0)
    }
}

/// The ERROR event that tells a watcher to relist.
pub fn expired_line(e: &Expired) -> Bytes {
    let status = ApiError::Expired {
        requested: e.requested,
        oldest: e.oldest,
    }
    .status();
    Bytes::from(event_line("ERROR", &encode_json(&status)).0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::reference::RepoPath;
    use futures_util::StreamExt;
    use jiff::Timestamp;
    use serde_json::Value;

    fn put(store: &Store, seed: u32) -> Digest {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{}"}},"layers":[],"annotations":{{"seed":"{seed}"}}}}"#,
            Digest::sha256_of(b"{}")
        );
        let d = Digest::sha256_of(body.as_bytes());
        let repo = RepoPath {
            registry: "docker.io".into(),
            repository: format!("team/app{seed}"),
        };
        store
            .put_manifest(&repo, Some("v1"), &d, None, &body.into(), Timestamp::now())
            .unwrap();
        d
    }

    fn request(after: Option<u64>) -> WatchRequest {
        WatchRequest {
            after,
            bookmarks: false,
            initial_events_end: false,
            timeout: Duration::from_secs(30),
            filter: Filter::default(),
            output: Output {
                api_version: API_VERSION,
                table: None,
            },
            stop: CancellationToken::new(),
        }
    }

    async fn next(s: &mut (impl Stream<Item = Bytes> + Unpin)) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("an event in time")
            .expect("stream open");
        assert!(line.ends_with(b"\n"));
        serde_json::from_slice(&line).unwrap()
    }

    #[tokio::test]
    async fn initial_events_then_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let store = Arc::new(store);
        let feed = Arc::new(Feed::default());
        let a = put(&store, 1);
        let mut s = Box::pin(watch(feed.clone(), store.clone(), request(None)));
        let e = next(&mut s).await;
        assert_eq!(e["type"], "ADDED");
        assert_eq!(e["object"]["metadata"]["name"], a.to_string());
        let b = put(&store, 2);
        let e = next(&mut s).await;
        assert_eq!(e["type"], "ADDED");
        assert_eq!(e["object"]["metadata"]["name"], b.to_string());
        store.delete_manifest(&a).unwrap();
        let e = next(&mut s).await;
        assert_eq!(e["type"], "DELETED");
        assert_eq!(e["object"]["metadata"]["name"], a.to_string());
        assert_eq!(
            e["object"]["metadata"]["resourceVersion"],
            store.revision().to_string()
        );
    }

    #[tokio::test]
    async fn too_old_gets_an_expired_error_event_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.set_change_history(2);
        let store = Arc::new(store);
        let start = store.revision();
        for i in 0..5 {
            put(&store, i);
        }
        let mut s = Box::pin(watch(
            Arc::new(Feed::default()),
            store.clone(),
            request(Some(start)),
        ));
        let e = next(&mut s).await;
        assert_eq!(e["type"], "ERROR");
        assert_eq!(e["object"]["kind"], "Status");
        assert_eq!(e["object"]["code"], 410);
        assert_eq!(e["object"]["reason"], "Expired");
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn bookmarks_selectors_tables_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let store = Arc::new(store);
        let feed = Arc::new(Feed::default());
        let start = store.revision();
        let mut req = request(Some(start));
        req.bookmarks = true;
        req.timeout = Duration::from_millis(300);
        req.filter.labels =
            super::super::selector::LabelSelector::parse("imagecache.io/repository=team.app2")
                .unwrap();
        req.output.table = Some(TableFormat {
            version: "v1",
            include: table::IncludeObject::Metadata,
        });
        let mut s = Box::pin(watch(feed, store.clone(), req));
        put(&store, 1);
        let b = put(&store, 2);
        let e = next(&mut s).await;
        assert_eq!(e["type"], "ADDED");
        assert_eq!(e["object"]["kind"], "Table");
        assert_eq!(e["object"]["rows"][0]["cells"][0], b.to_string());
        // The filtered-out change still advances the bookmark.
        let bm = next(&mut s).await;
        assert_eq!(bm["type"], "BOOKMARK");
        assert_eq!(
            bm["object"]["metadata"]["resourceVersion"],
            store.revision().to_string()
        );
        assert!(s.next().await.is_none(), "ends at timeoutSeconds");
    }

    #[tokio::test]
    async fn send_initial_events_ends_with_an_annotated_bookmark() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let store = Arc::new(store);
        put(&store, 1);
        let mut req = request(None);
        req.bookmarks = true;
        req.initial_events_end = true;
        let mut s = Box::pin(watch(Arc::new(Feed::default()), store.clone(), req));
        assert_eq!(next(&mut s).await["type"], "ADDED");
        let bm = next(&mut s).await;
        assert_eq!(bm["type"], "BOOKMARK");
        assert_eq!(
            bm["object"]["metadata"]["annotations"][INITIAL_EVENTS_END],
            "true"
        );
        assert_eq!(
            bm["object"]["metadata"]["resourceVersion"],
            store.revision().to_string()
        );
    }
}
