//! The IO of the CachedImage sync: one task owning a [`CacheSync`] per ImageCache, fed by
//!
//! - a watch of ImageCaches (a cache appears, changes, goes);
//! - a metadata watch of registry pods (any change re-lists the cache's pods with
//!   [`pods::list`], at most once a second; every cache is also re-listed every minute);
//! - a watch of CachedImages carrying the cache label (what exists, what is being deleted);
//! - one Image API watch per ready registry pod (kube-rs `watcher`: list, watch, relist on
//!   410 Expired), started and stopped as pods become ready, go, or the cache goes;
//! - a one-second tick for held-back writes.
//!
//! Writes are made in the task, one at a time, and their results fed back to the state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::mapping::CACHE_LABEL;
use super::state::{CacheSync, Input, Write};
use crate::api::Image;
use crate::crd::{CachedImage, ImageCache};
use crate::operator::context::{Context, MANAGER, scoped_api};
use crate::operator::desired::{APP_NAME, COMPONENT};
use crate::operator::pods::{self, PodTarget};

/// How often every cache's pods are listed even without a pod event.
const RESYNC_PODS: Duration = Duration::from_secs(60);
/// How soon a failed pod list is tried again.
const RETRY_PODS: Duration = Duration::from_secs(5);
/// Pending Image events between the pod watches and the sync task.
const CHANNEL: usize = 1024;

/// A cache: its namespace and name.
type CacheKey = (String, String);

/// An event of a pod's Image watch, tagged with the watch it came from.
struct ImageMsg {
    cache: CacheKey,
    pod: String,
    id: u64,
    event: Event<Image>,
}

struct WatchTask {
    id: u64,
    target: PodTarget,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

struct Entry {
    state: CacheSync,
    ic: Option<Arc<ImageCache>>,
    tasks: BTreeMap<String, WatchTask>,
    /// Pods must be listed again (a pod event, or never listed).
    refresh: bool,
    /// When the pods are listed again anyway.
    next_list: Instant,
}

struct Supervisor {
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    caches: BTreeMap<CacheKey, Entry>,
    tx: mpsc::Sender<ImageMsg>,
    next_id: u64,
    /// ImageCaches seen during a relist of the ImageCache watch.
    caches_relist: Option<Vec<Arc<ImageCache>>>,
    /// CachedImages seen during a relist of their watch.
    objects_relist: Option<Vec<CachedImage>>,
    /// The CachedImage watch has completed its first list.
    objects_synced: bool,
}

/// Runs the sync until `shutdown`; `namespace` limits it to one namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let caches: Api<ImageCache> = scoped_api(&client, namespace.as_deref());
    // Metadata only: a pod event just triggers a re-list.
    let pods: Api<PartialObjectMeta<Pod>> = scoped_api(&client, namespace.as_deref());
    let objects: Api<CachedImage> = scoped_api(&client, namespace.as_deref());
    let pod_selector =
        format!("app.kubernetes.io/name={APP_NAME},app.kubernetes.io/component={COMPONENT}");
    let mut cache_events = watcher::watcher(caches, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut pod_events = watcher::watcher(pods, watcher::Config::default().labels(&pod_selector))
        .default_backoff()
        .boxed();
    let mut object_events =
        watcher::watcher(objects, watcher::Config::default().labels(CACHE_LABEL))
            .default_backoff()
            .boxed();
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let mut sup = Supervisor {
        ctx,
        shutdown: shutdown.clone(),
        caches: BTreeMap::new(),
        tx,
        next_id: 0,
        caches_relist: None,
        objects_relist: None,
        objects_synced: false,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(ev) = cache_events.next() => match ev {
                Ok(ev) => sup.cache_event(ev).await,
                Err(e) => tracing::warn!(error = %e, "ImageCache watch"),
            },
            Some(ev) = pod_events.next() => match ev {
                Ok(ev) => sup.pod_event(ev),
                Err(e) => tracing::warn!(error = %e, "registry pod watch"),
            },
            Some(ev) = object_events.next() => match ev {
                Ok(ev) => sup.object_event(ev).await,
                Err(e) => tracing::warn!(error = %e, "CachedImage watch"),
            },
            Some(msg) = rx.recv() => sup.image_event(msg).await,
            _ = tick.tick() => sup.tick().await,
        }
    }
    sup.stop_all().await;
}

fn key_of<K: kube::Resource>(obj: &K) -> CacheKey {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

impl Supervisor {
    fn entry(&mut self, key: &CacheKey) -> &mut Entry {
        let interval = self.ctx.settings.min_update_interval;
        let objects_synced = self.objects_synced;
        let now = self.ctx.now();
        self.caches.entry(key.clone()).or_insert_with(|| {
            let mut state = CacheSync::new(&key.1, interval);
            if objects_synced {
                // Past the first list, a cache with no entry has no objects.
                state.handle(Input::ObjectsListed(Vec::new()), now);
            }
            Entry {
                state,
                ic: None,
                tasks: BTreeMap::new(),
                refresh: true,
                next_list: Instant::now(),
            }
        })
    }

    async fn cache_event(&mut self, ev: Event<ImageCache>) {
        match ev {
            Event::Init => self.caches_relist = Some(Vec::new()),
            Event::InitApply(ic) => self
                .caches_relist
                .get_or_insert_with(Vec::new)
                .push(Arc::new(ic)),
            Event::InitDone => {
                let listed = self.caches_relist.take().unwrap_or_default();
                let keys: Vec<CacheKey> = listed.iter().map(|ic| key_of(&**ic)).collect();
                let gone: Vec<CacheKey> = self
                    .caches
                    .iter()
                    .filter(|(k, e)| e.ic.is_some() && !keys.contains(k))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in gone {
                    self.set_cache(&key, None).await;
                }
                for ic in listed {
                    self.set_cache(&key_of(&*ic), Some(ic)).await;
                }
            }
            Event::Apply(ic) => self.set_cache(&key_of(&ic), Some(Arc::new(ic))).await,
            Event::Delete(ic) => self.set_cache(&key_of(&ic), None).await,
        }
    }

    /// A cache appears, changes or goes (a cache being deleted counts as gone).
    async fn set_cache(&mut self, key: &CacheKey, ic: Option<Arc<ImageCache>>) {
        let ic = ic.filter(|ic| ic.metadata.deletion_timestamp.is_none());
        let entry = self.entry(key);
        let same = match (&entry.ic, &ic) {
            (Some(old), Some(new)) => {
                old.metadata.uid == new.metadata.uid
                    && old.metadata.generation == new.metadata.generation
            }
            (None, None) => true,
            _ => false,
        };
        if same {
            // A status update of the cache: nothing the sync depends on changed.
            return;
        }
        entry.ic = ic.clone();
        if ic.is_none() {
            for (_, task) in std::mem::take(&mut entry.tasks) {
                stop(task).await;
            }
        } else {
            entry.refresh = true;
        }
        self.feed(key, Input::Cache(ic)).await;
    }

    fn pod_event(&mut self, ev: Event<PartialObjectMeta<Pod>>) {
        let pod = match ev {
            Event::Apply(p) | Event::Delete(p) | Event::InitApply(p) => p,
            Event::Init | Event::InitDone => return,
        };
        let Some(instance) = pod.labels().get("app.kubernetes.io/instance").cloned() else {
            return;
        };
        let key = (pod.namespace().unwrap_or_default(), instance);
        if let Some(entry) = self.caches.get_mut(&key) {
            entry.refresh = true;
        }
    }

    async fn object_event(&mut self, ev: Event<CachedImage>) {
        let cache_of = |o: &CachedImage| {
            (
                o.namespace().unwrap_or_default(),
                o.spec.cache_ref.name.clone(),
            )
        };
        match ev {
            Event::Init => self.objects_relist = Some(Vec::new()),
            Event::InitApply(o) => self.objects_relist.get_or_insert_with(Vec::new).push(o),
            Event::InitDone => {
                let mut by_cache: BTreeMap<CacheKey, Vec<CachedImage>> = self
                    .caches
                    .keys()
                    .map(|k| (k.clone(), Vec::new()))
                    .collect();
                for o in self.objects_relist.take().unwrap_or_default() {
                    by_cache.entry(cache_of(&o)).or_default().push(o);
                }
                self.objects_synced = true;
                for (key, list) in by_cache {
                    self.entry(&key);
                    self.feed(&key, Input::ObjectsListed(list)).await;
                }
            }
            Event::Apply(o) => {
                let key = cache_of(&o);
                self.entry(&key);
                self.feed(&key, Input::Object(o)).await;
            }
            Event::Delete(o) => {
                let key = cache_of(&o);
                self.entry(&key);
                self.feed(&key, Input::ObjectGone(o)).await;
            }
        }
    }

    async fn image_event(&mut self, msg: ImageMsg) {
        let current = self
            .caches
            .get(&msg.cache)
            .and_then(|e| e.tasks.get(&msg.pod))
            .is_some_and(|t| t.id == msg.id);
        if current {
            let input = Input::Images {
                pod: msg.pod,
                event: msg.event,
            };
            self.feed(&msg.cache, input).await;
        }
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        // Forget caches with nothing left: no ImageCache, no watches, no objects.
        self.caches
            .retain(|_, e| e.ic.is_some() || !e.tasks.is_empty() || e.state.object_count() > 0);
        let keys: Vec<CacheKey> = self.caches.keys().cloned().collect();
        for key in keys {
            let due = self
                .caches
                .get(&key)
                .is_some_and(|e| e.ic.is_some() && (e.refresh || now >= e.next_list));
            if due {
                self.refresh_pods(&key).await;
            }
            self.feed(&key, Input::Tick).await;
        }
    }

    /// Lists the cache's pods, tells the state, and makes the Image watches match the ready
    /// pods.
    async fn refresh_pods(&mut self, key: &CacheKey) {
        let Some(ic) = self.caches.get(key).and_then(|e| e.ic.clone()) else {
            return;
        };
        let listed = pods::list(&self.ctx.client, &ic).await;
        let entry = self.entry(key);
        entry.refresh = false;
        let after = if listed.is_ok() {
            RESYNC_PODS
        } else {
            RETRY_PODS
        };
        entry.next_list = Instant::now() + after;
        let list = match listed {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(namespace = %key.0, cache = %key.1, error = %e, "cannot list registry pods");
                return;
            }
        };
        let targets: BTreeMap<String, PodTarget> = list
            .iter()
            .filter_map(|p| p.target.clone().map(|t| (p.name.clone(), t)))
            .collect();
        // Stop the watches of pods that went, stopped being ready, or moved.
        let stale: Vec<String> = entry
            .tasks
            .iter()
            .filter(|(pod, t)| targets.get(*pod) != Some(&t.target))
            .map(|(pod, _)| pod.clone())
            .collect();
        for pod in stale {
            if let Some(task) = entry.tasks.remove(&pod) {
                stop(task).await;
            }
        }
        self.feed(key, Input::Pods(list)).await;
        for (pod, target) in targets {
            if self
                .caches
                .get(key)
                .is_some_and(|e| e.tasks.contains_key(&pod))
            {
                continue;
            }
            let client = match self.ctx.registry.image_client(&target) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%pod, error = %e, "no Image API client");
                    continue;
                }
            };
            self.next_id += 1;
            let id = self.next_id;
            let stop = self.shutdown.child_token();
            let handle = tokio::spawn(watch_images(
                client,
                key.clone(),
                pod.clone(),
                id,
                self.tx.clone(),
                stop.clone(),
                self.ctx.clone(),
            ));
            self.entry(key).tasks.insert(
                pod,
                WatchTask {
                    id,
                    target,
                    stop,
                    handle,
                },
            );
        }
    }

    /// Hands an input to a cache's state and makes the writes it asks for, feeding their
    /// results back.
    async fn feed(&mut self, key: &CacheKey, input: Input) {
        let now = self.ctx.now();
        let mut writes = self.entry(key).state.handle(input, now);
        while !writes.is_empty() {
            let mut results = Vec::new();
            for w in writes {
                results.push(execute(&self.ctx, &key.0, w).await);
            }
            writes = Vec::new();
            for r in results {
                writes.extend(self.entry(key).state.handle(r, now));
            }
        }
    }

    async fn stop_all(&mut self) {
        for entry in self.caches.values_mut() {
            for (_, task) in std::mem::take(&mut entry.tasks) {
                stop(task).await;
            }
        }
    }
}

async fn stop(task: WatchTask) {
    task.stop.cancel();
    if let Err(e) = task.handle.await {
        tracing::warn!(error = %e, "Image watch task ended abnormally");
    }
}

/// Makes one write; the input telling the state how it went.
pub async fn execute(ctx: &Context, namespace: &str, write: Write) -> Input {
    let api: Api<CachedImage> = Api::namespaced(ctx.client.clone(), namespace);
    match write {
        Write::Apply { digest, object } => {
            let name = object.name_any();
            match api
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&*object),
                )
                .await
            {
                Ok(obj) => {
                    ctx.metrics.cachedimage_writes.inc();
                    Input::Applied(obj)
                }
                Err(e) => {
                    tracing::warn!(%namespace, cachedimage = %name, error = %e, "cannot apply CachedImage");
                    Input::Failed(digest)
                }
            }
        }
        Write::Delete { digest, name } => match api.delete(&name, &DeleteParams::default()).await {
            Ok(either) => {
                ctx.metrics.cachedimage_writes.inc();
                Input::Deleted {
                    name,
                    remaining: either.left(),
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Input::Deleted {
                name,
                remaining: None,
            },
            Err(e) => {
                tracing::warn!(%namespace, cachedimage = %name, error = %e, "cannot delete CachedImage");
                Input::Failed(digest)
            }
        },
    }
}

/// Decrements the watch gauge however the task ends.
struct WatchGauge(Arc<Context>);

impl Drop for WatchGauge {
    fn drop(&mut self) {
        self.0.metrics.image_watches.dec();
    }
}

/// Watches one pod's Image API until stopped, forwarding every event.
async fn watch_images(
    client: Client,
    cache: CacheKey,
    pod: String,
    id: u64,
    tx: mpsc::Sender<ImageMsg>,
    stop: CancellationToken,
    ctx: Arc<Context>,
) {
    ctx.metrics.image_watches.inc();
    let _gauge = WatchGauge(ctx);
    let api: Api<Image> = Api::all(client);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.next() => ev,
        };
        match ev {
            Some(Ok(event)) => {
                let msg = ImageMsg {
                    cache: cache.clone(),
                    pod: pod.clone(),
                    id,
                    event,
                };
                // A full channel waits; a stop while waiting ends the task.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    sent = tx.send(msg) => if sent.is_err() { return },
                }
            }
            Some(Err(e)) => tracing::warn!(%pod, error = %e, "Image API watch"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use serde_json::json;

    use super::*;
    use crate::digest::Digest;
    use crate::operator::mock::{self, FakeRegistry};

    const PATH: &str = "/apis/imagecache.io/v1alpha1/namespaces/ns/cachedimages/x";

    fn digest() -> Digest {
        format!("sha256:{}", "a".repeat(64)).parse().unwrap()
    }

    fn object() -> CachedImage {
        serde_json::from_value(json!({
            "apiVersion": "imagecache.io/v1alpha1", "kind": "CachedImage",
            "metadata": {"name": "x", "namespace": "ns", "labels": {CACHE_LABEL: "mirror"}},
            "spec": {"cacheRef": {"name": "mirror"}, "digest": digest().to_string(),
                "reference": "r", "mediaType": "m"}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn apply_is_a_forced_server_side_apply_without_finalizers_or_status() {
        let (ctx, mut server) = mock::context(FakeRegistry::new(), "2026-01-01T00:00:00Z");
        let write = Write::Apply {
            digest: digest(),
            object: Box::new(object()),
        };
        let task = tokio::spawn({
            let ctx = ctx.clone();
            async move { execute(&ctx, "ns", write).await }
        });
        let ex = server.expect(Method::PATCH, PATH).await;
        assert_eq!(ex.query("fieldManager").as_deref(), Some(MANAGER));
        assert_eq!(ex.query("force").as_deref(), Some("true"));
        assert_eq!(ex.body["apiVersion"], "imagecache.io/v1alpha1");
        assert_eq!(ex.body["kind"], "CachedImage");
        assert!(ex.body["metadata"].get("finalizers").is_none());
        assert!(ex.body.get("status").is_none());
        ex.echo();
        assert!(matches!(task.await.unwrap(), Input::Applied(o) if o.spec.digest == digest()));
        assert_eq!(ctx.metrics.cachedimage_writes.get(), 1);
    }

    #[tokio::test]
    async fn delete_reports_what_remains_and_failures() {
        let (ctx, mut server) = mock::context(FakeRegistry::new(), "2026-01-01T00:00:00Z");
        let delete = || Write::Delete {
            digest: digest(),
            name: "x".into(),
        };
        let run = |w| {
            let ctx = ctx.clone();
            tokio::spawn(async move { execute(&ctx, "ns", w).await })
        };

        // Held back by the finalizer: the object comes back with a deletionTimestamp.
        let task = run(delete());
        let mut deleting = serde_json::to_value(object()).unwrap();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        deleting["metadata"]["finalizers"] = json!([super::super::FINALIZER]);
        server
            .expect(Method::DELETE, PATH)
            .await
            .respond(200, deleting);
        assert!(matches!(
            task.await.unwrap(),
            Input::Deleted { remaining: Some(o), .. } if o.metadata.deletion_timestamp.is_some()
        ));

        // Already gone.
        let task = run(delete());
        server.expect(Method::DELETE, PATH).await.not_found();
        assert!(matches!(
            task.await.unwrap(),
            Input::Deleted {
                remaining: None,
                ..
            }
        ));

        // Refused: retried later.
        let task = run(delete());
        server.expect(Method::DELETE, PATH).await.respond(
            500,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "InternalError", "code": 500, "message": "etcd"}),
        );
        assert!(matches!(task.await.unwrap(), Input::Failed(d) if d == digest()));
        // Only the delete that deleted something was a write.
        assert_eq!(ctx.metrics.cachedimage_writes.get(), 1);
    }

    /// Registry pods whose Image API is the test's second mocked server.
    struct ImageApiRegistry(Client);

    impl pods::RegistryApi for ImageApiRegistry {
        fn status<'a>(
            &'a self,
            _: &'a PodTarget,
        ) -> pods::BoxFuture<'a, Result<crate::api::CacheStatus, pods::RegistryError>> {
            Box::pin(async { Err(pods::RegistryError::Http("not in this test".into())) })
        }
        fn prune<'a>(
            &'a self,
            _: &'a PodTarget,
            _: &'a crate::api::PruneRequest,
        ) -> pods::BoxFuture<'a, Result<crate::api::Report, pods::RegistryError>> {
            Box::pin(async { Err(pods::RegistryError::Http("not in this test".into())) })
        }
        fn image_client(&self, _: &PodTarget) -> Result<Client, pods::RegistryError> {
            Ok(self.0.clone())
        }
    }

    fn is_watch(ex: &mock::Exchange) -> bool {
        ex.query("watch").as_deref() == Some("true")
    }

    fn list(kind: &str, api_version: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "7"},
            "items": items})
    }

    /// The whole sync against mocked API servers: the cache's pod is listed, its Image API
    /// listed and watched, its image mirrored, an object left from before a restart deleted,
    /// and the watch stopped on shutdown.
    #[tokio::test]
    async fn sync_mirrors_a_pods_images_and_deletes_stale_objects() {
        let (image_client, mut image_api) = mock::mock_client();
        let (client, mut server) = mock::mock_client();
        let ctx = Arc::new(
            Context::new(
                client,
                Arc::new(ImageApiRegistry(image_client)),
                Arc::new(crate::operator::metrics::OperatorMetrics::new()),
                crate::operator::Settings::default(),
            )
            .with_clock("2026-01-01T00:00:00Z".parse().unwrap()),
        );
        let shutdown = CancellationToken::new();
        let sync = tokio::spawn(run(ctx.clone(), Some("ns".into()), shutdown.clone()));

        // mirror-0's Image API: one image, then a watch left open.
        let image = json!({"apiVersion": "image.openshift.io/v1", "kind": "Image",
            "metadata": {"name": digest().to_string(), "resourceVersion": "5",
                "labels": {"imagecache.io/registry": "docker.io"},
                "annotations": {"imagecache.io/tags": "docker.io/library/x:1"}},
            "dockerImageReference": format!("docker.io/library/x@{}", digest()),
            "dockerImageManifestMediaType": "application/vnd.oci.image.manifest.v1+json",
            "dockerImageMetadata": {"Size": 1234}});
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let images = tokio::spawn(async move {
            let ex = image_api
                .expect(Method::GET, "/apis/image.openshift.io/v1/images")
                .await;
            assert!(!is_watch(&ex));
            ex.respond(200, list("ImageList", "image.openshift.io/v1", vec![image]));
            let watch = image_api
                .expect(Method::GET, "/apis/image.openshift.io/v1/images")
                .await;
            assert!(is_watch(&watch));
            let _ = done_rx.await;
            drop(watch);
        });

        let base = "/apis/imagecache.io/v1alpha1/namespaces/ns";
        let stale = format!("mirror-sha256-{}", "b".repeat(64));
        let mine = format!("mirror-sha256-{}", "a".repeat(64));
        let mut held = Vec::new();
        let mut applied = None;
        let mut deleted = false;
        while applied.is_none() || !deleted {
            let ex = server.next().await;
            let path = ex.uri.split('?').next().unwrap_or_default().to_owned();
            if is_watch(&ex) {
                held.push(ex);
                continue;
            }
            match (ex.method.as_str(), path.as_str()) {
                ("GET", p) if p == format!("{base}/imagecaches") => ex.respond(
                    200,
                    list(
                        "ImageCacheList",
                        "imagecache.io/v1alpha1",
                        vec![
                            json!({"apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
                            "metadata": {"name": "mirror", "namespace": "ns", "uid": "ic-uid",
                                "generation": 1},
                            "spec": {}}),
                        ],
                    ),
                ),
                ("GET", p) if p == format!("{base}/cachedimages") => {
                    assert_eq!(ex.query("labelSelector").as_deref(), Some(CACHE_LABEL));
                    ex.respond(
                        200,
                        list(
                            "CachedImageList",
                            "imagecache.io/v1alpha1",
                            vec![json!({"apiVersion": "imagecache.io/v1alpha1",
                                "kind": "CachedImage",
                                "metadata": {"name": stale, "namespace": "ns",
                                    "labels": {CACHE_LABEL: "mirror"},
                                    "finalizers": [super::super::FINALIZER]},
                                "spec": {"cacheRef": {"name": "mirror"},
                                    "digest": format!("sha256:{}", "b".repeat(64)),
                                    "reference": "r", "mediaType": "m",
                                    "pods": ["mirror-0"]}})],
                        ),
                    )
                }
                ("GET", "/api/v1/namespaces/ns/pods") => {
                    let selector = ex.query("labelSelector").unwrap_or_default();
                    if selector.contains("instance=mirror") {
                        ex.respond(
                            200,
                            list(
                                "PodList",
                                "v1",
                                vec![json!({"metadata": {"name": "mirror-0", "namespace": "ns"},
                                    "spec": {"containers": [{"name": "registry"}]},
                                    "status": {"podIP": "10.0.0.1",
                                        "conditions": [{"type": "Ready", "status": "True"}]}})],
                            ),
                        )
                    } else {
                        ex.respond(
                            200,
                            list("PartialObjectMetadataList", "meta.k8s.io/v1", vec![]),
                        )
                    }
                }
                ("GET", "/api/v1/namespaces/ns/secrets/mirror-admin-token") => ex.not_found(),
                ("PATCH", p) if p == format!("{base}/cachedimages/{mine}") => {
                    assert_eq!(ex.query("fieldManager").as_deref(), Some(MANAGER));
                    applied = Some(ex.body.clone());
                    ex.echo();
                }
                ("DELETE", p) if p == format!("{base}/cachedimages/{stale}") => {
                    deleted = true;
                    ex.respond(
                        200,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    );
                }
                (m, p) => panic!("unexpected request {m} {p}"),
            }
        }
        let applied = applied.unwrap();
        assert_eq!(applied["spec"]["pods"], json!(["mirror-0"]));
        assert_eq!(applied["spec"]["tags"], json!(["docker.io/library/x:1"]));
        assert_eq!(applied["spec"]["size"], 1234);
        assert_eq!(applied["metadata"]["labels"][CACHE_LABEL], "mirror");
        assert_eq!(applied["metadata"]["ownerReferences"][0]["uid"], "ic-uid");
        assert_eq!(
            ctx.metrics.image_watches.get(),
            1,
            "one watch per ready pod"
        );

        shutdown.cancel();
        sync.await.unwrap();
        // The last response is handled before the shutdown is noticed.
        assert_eq!(ctx.metrics.cachedimage_writes.get(), 2);
        assert_eq!(
            ctx.metrics.image_watches.get(),
            0,
            "watches stop on shutdown"
        );
        let _ = done_tx.send(());
        images.await.unwrap();
        drop(held);
    }
}
