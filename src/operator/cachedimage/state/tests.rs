use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};
use serde_json::json;

use super::*;
use crate::api::image::{ANNOTATION_LAST_PULLED, ANNOTATION_TAGS};

const INTERVAL: Duration = Duration::from_secs(300);

fn d(c: char) -> Digest {
    format!("sha256:{}", c.to_string().repeat(64))
        .parse()
        .unwrap()
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn t0() -> Timestamp {
    t("2026-01-01T00:00:00Z")
}

fn cache() -> Arc<ImageCache> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
            "metadata": {"name": "mirror", "namespace": "ns", "uid": "ic-uid"},
            "spec": {}
        }))
        .unwrap(),
    )
}

fn image(c: char, tags: &str, last_pulled: Option<&str>) -> Image {
    let mut annotations = BTreeMap::from([(ANNOTATION_TAGS.to_owned(), tags.to_owned())]);
    if let Some(lp) = last_pulled {
        annotations.insert(ANNOTATION_LAST_PULLED.to_owned(), lp.to_owned());
    }
    Image {
        metadata: ObjectMeta {
            name: Some(d(c).to_string()),
            annotations: Some(annotations),
            ..Default::default()
        },
        docker_image_reference: format!("docker.io/library/x@{}", d(c)),
        docker_image_manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        ..Default::default()
    }
}

fn pod(name: &str, ready: bool) -> RegistryPod {
    RegistryPod {
        name: name.into(),
        ready,
        target: None,
    }
}

fn name(c: char) -> String {
    object_name("mirror", &d(c))
}

/// The object as the API server would hold it after our apply at `at`.
fn stored(obj: &CachedImage, at: Timestamp) -> CachedImage {
    let mut o = obj.clone();
    o.metadata.uid = Some(format!("uid-{}", o.spec.digest.hex()));
    o.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(MANAGER.into()),
        operation: Some("Apply".into()),
        time: Some(Time(at)),
        ..Default::default()
    }]);
    o
}

/// What `desired` gives for these pods' images (for building "existing" objects).
fn object(images: &[&Image], pods: &[&str]) -> CachedImage {
    let pods: Vec<String> = pods.iter().map(|p| p.to_string()).collect();
    mapping::desired(&cache(), images, &pods).unwrap()
}

fn list(sync: &mut CacheSync, pod: &str, images: Vec<Image>, now: Timestamp) -> Vec<Write> {
    let mut writes = sync.handle(
        Input::Images {
            pod: pod.into(),
            event: watcher::Event::Init,
        },
        now,
    );
    for img in images {
        writes.extend(sync.handle(
            Input::Images {
                pod: pod.into(),
                event: watcher::Event::InitApply(img),
            },
            now,
        ));
    }
    writes.extend(sync.handle(
        Input::Images {
            pod: pod.into(),
            event: watcher::Event::InitDone,
        },
        now,
    ));
    writes
}

/// Lists and completes the writes that causes.
fn list_done(sync: &mut CacheSync, pod: &str, images: Vec<Image>) {
    let writes = list(sync, pod, images, t0());
    complete(sync, &writes, t0());
}

fn event(sync: &mut CacheSync, pod: &str, ev: watcher::Event<Image>, now: Timestamp) -> Vec<Write> {
    sync.handle(
        Input::Images {
            pod: pod.into(),
            event: ev,
        },
        now,
    )
}

/// Feeds back a successful result of every write, as the sync's IO does.
fn complete(sync: &mut CacheSync, writes: &[Write], now: Timestamp) {
    for w in writes {
        let more = match w {
            Write::Apply { object, .. } => sync.handle(Input::Applied(stored(object, now)), now),
            Write::Delete { name, .. } => sync.handle(
                Input::Deleted {
                    name: name.clone(),
                    remaining: None,
                },
                now,
            ),
        };
        assert!(more.is_empty(), "a write result caused writes: {more:?}");
    }
}

fn started(pods: &[RegistryPod], objects: Vec<CachedImage>) -> CacheSync {
    let mut sync = CacheSync::new("mirror", INTERVAL);
    assert!(sync.handle(Input::Cache(Some(cache())), t0()).is_empty());
    assert!(sync.handle(Input::Pods(pods.to_vec()), t0()).is_empty());
    let writes = sync.handle(Input::ObjectsListed(objects), t0());
    assert!(
        writes.is_empty(),
        "nothing known of the pods yet: {writes:?}"
    );
    sync
}

fn applied(writes: &[Write]) -> Vec<(&str, &CachedImageSpecView)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Apply { object, .. } => {
                Some((object.metadata.name.as_deref().unwrap(), &object.spec))
            }
            Write::Delete { .. } => None,
        })
        .collect()
}

type CachedImageSpecView = crate::crd::CachedImageSpec;

fn deleted(writes: &[Write]) -> Vec<&str> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Delete { name, .. } => Some(name.as_str()),
            Write::Apply { .. } => None,
        })
        .collect()
}

#[test]
fn nothing_is_written_until_pods_and_objects_are_listed() {
    let mut sync = CacheSync::new("mirror", INTERVAL);
    sync.handle(Input::Cache(Some(cache())), t0());
    sync.handle(Input::Pods(vec![pod("mirror-0", true)]), t0());
    let writes = list(&mut sync, "mirror-0", vec![image('a', "", None)], t0());
    assert!(writes.is_empty(), "objects not listed yet: {writes:?}");
    let writes = sync.handle(Input::ObjectsListed(vec![]), t0());
    assert_eq!(applied(&writes).len(), 1);
    assert_eq!(applied(&writes)[0].0, name('a'));
}

#[test]
fn images_added_modified_and_deleted() {
    let mut sync = started(&[pod("mirror-0", true)], vec![]);
    let writes = list(&mut sync, "mirror-0", vec![image('a', "", None)], t0());
    let a = applied(&writes);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].1.pods, ["mirror-0"]);
    assert!(a[0].1.tags.is_empty());
    complete(&mut sync, &writes, t0());

    // The echo of our own write changes nothing.
    let echo = stored(
        match &writes[0] {
            Write::Apply { object, .. } => object,
            _ => unreachable!(),
        },
        t0(),
    );
    assert!(sync.handle(Input::Object(echo), t0()).is_empty());

    // A tag is added: written at once.
    let tagged = image('a', "docker.io/library/x:1", None);
    let writes = event(&mut sync, "mirror-0", watcher::Event::Apply(tagged), t0());
    assert_eq!(applied(&writes)[0].1.tags, ["docker.io/library/x:1"]);
    complete(&mut sync, &writes, t0());

    // A second image.
    let writes = event(
        &mut sync,
        "mirror-0",
        watcher::Event::Apply(image('b', "", None)),
        t0(),
    );
    assert_eq!(applied(&writes)[0].0, name('b'));
    complete(&mut sync, &writes, t0());

    // Pruned from the pod: the object goes.
    let writes = event(
        &mut sync,
        "mirror-0",
        watcher::Event::Delete(image('a', "", None)),
        t0(),
    );
    assert_eq!(deleted(&writes), [name('a')]);
    assert!(applied(&writes).is_empty());
    complete(&mut sync, &writes, t0());
    // Already gone: nothing more to do on the next tick.
    assert!(sync.handle(Input::Tick, t0()).is_empty());
}

#[test]
fn two_pods_holding_a_digest_and_one_leaving() {
    let pods = [pod("mirror-0", true), pod("mirror-1", true)];
    let mut sync = started(&pods, vec![]);
    let writes = list(&mut sync, "mirror-0", vec![image('a', "r/x:1", None)], t0());
    assert_eq!(applied(&writes)[0].1.pods, ["mirror-0"]);
    complete(&mut sync, &writes, t0());
    let writes = list(&mut sync, "mirror-1", vec![image('a', "r/x:2", None)], t0());
    let a = applied(&writes);
    assert_eq!(a.len(), 1, "one object per digest");
    assert_eq!(a[0].1.pods, ["mirror-0", "mirror-1"]);
    assert_eq!(a[0].1.tags, ["r/x:1", "r/x:2"], "tags of both pods");
    complete(&mut sync, &writes, t0());

    // mirror-1 is scaled away: its contribution goes, the object stays for mirror-0.
    let writes = sync.handle(Input::Pods(vec![pod("mirror-0", true)]), t0());
    let a = applied(&writes);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].1.pods, ["mirror-0"]);
    assert_eq!(a[0].1.tags, ["r/x:1"]);
    assert!(deleted(&writes).is_empty());
    complete(&mut sync, &writes, t0());

    // Late events of the gone pod are ignored.
    let late = event(
        &mut sync,
        "mirror-1",
        watcher::Event::Apply(image('c', "", None)),
        t0(),
    );
    assert!(late.is_empty());
}

#[test]
fn a_pod_briefly_not_ready_keeps_its_contribution_until_gone() {
    let pods = [pod("mirror-0", true), pod("mirror-1", true)];
    let mut sync = started(&pods, vec![]);
    list_done(&mut sync, "mirror-0", vec![]);
    let writes = list(&mut sync, "mirror-1", vec![image('a', "", None)], t0());
    complete(&mut sync, &writes, t0());

    let not_ready = vec![pod("mirror-0", true), pod("mirror-1", false)];
    assert!(sync.handle(Input::Pods(not_ready), t0()).is_empty());
    assert!(sync.handle(Input::Tick, t0()).is_empty());

    // Back and ready: its new list replaces the old one.
    sync.handle(Input::Pods(pods.to_vec()), t0());
    let writes = list(&mut sync, "mirror-1", vec![image('a', "", None)], t0());
    assert!(writes.is_empty(), "same content: {writes:?}");

    // Gone: what only it held goes.
    let writes = sync.handle(Input::Pods(vec![pod("mirror-0", true)]), t0());
    assert_eq!(deleted(&writes), [name('a')]);
}

#[test]
fn a_relist_replaces_the_pods_list() {
    let mut sync = started(&[pod("mirror-0", true)], vec![]);
    let writes = list(
        &mut sync,
        "mirror-0",
        vec![image('a', "", None), image('b', "", None)],
        t0(),
    );
    complete(&mut sync, &writes, t0());
    // The watch got 410 Expired and relisted: b was pruned meanwhile, c cached.
    let writes = list(
        &mut sync,
        "mirror-0",
        vec![image('a', "", None), image('c', "", None)],
        t0(),
    );
    assert_eq!(deleted(&writes), [name('b')]);
    let a = applied(&writes);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].0, name('c'));
}

#[test]
fn last_pulled_only_changes_are_rate_limited() {
    let mut sync = started(&[pod("mirror-0", true)], vec![]);
    let writes = list(
        &mut sync,
        "mirror-0",
        vec![image('a', "", Some("2026-01-01T00:00:00Z"))],
        t0(),
    );
    complete(&mut sync, &writes, t0());

    let at = |s| t(s);
    let pulled = |lp| watcher::Event::Apply(image('a', "", Some(lp)));
    let w = event(
        &mut sync,
        "mirror-0",
        pulled("2026-01-01T00:01:00Z"),
        at("2026-01-01T00:01:00Z"),
    );
    assert!(w.is_empty(), "within the interval: {w:?}");
    let w = event(
        &mut sync,
        "mirror-0",
        pulled("2026-01-01T00:02:00Z"),
        at("2026-01-01T00:02:00Z"),
    );
    assert!(w.is_empty());
    assert_eq!(sync.next_due(), Some(at("2026-01-01T00:05:00Z")));
    assert!(
        sync.handle(Input::Tick, at("2026-01-01T00:04:59Z"))
            .is_empty()
    );

    let w = sync.handle(Input::Tick, at("2026-01-01T00:05:00Z"));
    let a = applied(&w);
    assert_eq!(a.len(), 1);
    assert_eq!(
        a[0].1.last_pulled,
        Some(Time(at("2026-01-01T00:02:00Z"))),
        "the latest pull"
    );
    complete(&mut sync, &w, at("2026-01-01T00:05:00Z"));
    assert_eq!(sync.next_due(), None);

    // Any other change is written at once, lastPulled with it.
    let w = event(
        &mut sync,
        "mirror-0",
        watcher::Event::Apply(image('a', "r/x:1", Some("2026-01-01T00:06:00Z"))),
        at("2026-01-01T00:06:00Z"),
    );
    let a = applied(&w);
    assert_eq!(a[0].1.tags, ["r/x:1"]);
    assert_eq!(a[0].1.last_pulled, Some(Time(at("2026-01-01T00:06:00Z"))));
}

#[test]
fn restart_reconciles_existing_objects() {
    let a = image('a', "", None);
    let c = image('c', "", None);
    let existing_a = stored(&object(&[&a], &["mirror-0"]), t0());
    // Held by a pod that no longer exists.
    let stale_b = stored(&object(&[&image('b', "", None)], &["mirror-9"]), t0());
    // Held by mirror-0 per the object, but mirror-0 no longer has it.
    let stale_e = stored(&object(&[&image('e', "", None)], &["mirror-0"]), t0());
    // Held by mirror-1, not ready and never listed since the restart: kept as it is.
    let kept_9 = stored(&object(&[&image('9', "", None)], &["mirror-1"]), t0());
    // Made by hand under another name, digest held: left alone.
    let mut foreign_c = stored(&object(&[&c], &[]), t0());
    foreign_c.metadata.name = Some("by-hand".into());
    // Made by hand, digest not held: deleted.
    let mut foreign_f = stored(&object(&[&image('f', "", None)], &[]), t0());
    foreign_f.metadata.name = Some("by-hand-f".into());

    let pods = [pod("mirror-0", true), pod("mirror-1", false)];
    let objects = vec![existing_a, stale_b, stale_e, kept_9, foreign_c, foreign_f];
    // Before mirror-0 (ready) has listed, nothing is deleted: it might hold any of them.
    let mut sync = started(&pods, objects);
    assert!(sync.handle(Input::Tick, t0()).is_empty());

    let writes = list(&mut sync, "mirror-0", vec![a, c], t0());
    let mut del = deleted(&writes);
    del.sort();
    assert_eq!(del, ["by-hand-f", name('b').as_str(), name('e').as_str()]);
    let ap = applied(&writes);
    assert_eq!(
        ap.len(),
        1,
        "a is unchanged; c gets its own object: {writes:?}"
    );
    assert_eq!(ap[0].0, name('c'));
    complete(&mut sync, &writes, t0());
    assert!(sync.handle(Input::Tick, t0()).is_empty());

    // mirror-1 goes for good: 9 goes with it.
    let writes = sync.handle(Input::Pods(vec![pod("mirror-0", true)]), t0());
    assert_eq!(deleted(&writes), [name('9')]);
}

#[test]
fn rate_limit_after_restart_counts_from_the_last_apply() {
    let a = image('a', "", Some("2026-01-01T00:00:00Z"));
    // Last applied four minutes before the restart.
    let existing = stored(&object(&[&a], &["mirror-0"]), t("2025-12-31T23:56:00Z"));
    let mut sync = started(&[pod("mirror-0", true)], vec![existing]);
    let newer = image('a', "", Some("2026-01-01T00:00:30Z"));
    assert!(list(&mut sync, "mirror-0", vec![newer], t0()).is_empty());
    assert_eq!(sync.next_due(), Some(t("2026-01-01T00:01:00Z")));
    assert_eq!(
        applied(&sync.handle(Input::Tick, t("2026-01-01T00:01:00Z"))).len(),
        1
    );
}

#[test]
fn objects_being_deleted_are_left_to_the_finalizer() {
    let mut sync = started(&[pod("mirror-0", true), pod("mirror-1", false)], vec![]);
    let writes = list(&mut sync, "mirror-0", vec![image('a', "", None)], t0());
    complete(&mut sync, &writes, t0());
    let Write::Apply { object, .. } = &writes[0] else {
        panic!("{writes:?}")
    };
    let mut deleting = stored(object, t0());
    deleting.metadata.finalizers = Some(vec![FINALIZER.into()]);
    deleting.metadata.deletion_timestamp = Some(Time(t0()));
    assert!(
        sync.handle(Input::Object(deleting.clone()), t0())
            .is_empty()
    );

    // Changes while the finalizer works: not applied, not deleted again.
    let w = event(
        &mut sync,
        "mirror-0",
        watcher::Event::Apply(image('a', "r/x:1", None)),
        t0(),
    );
    assert!(w.is_empty(), "{w:?}");

    // Released by the finalizer (pruned from the ready pods): not re-created.
    let mut released = deleting.clone();
    released.metadata.finalizers = None;
    assert!(sync.handle(Input::ObjectGone(released), t0()).is_empty());
    // The pod's own delete event follows.
    let w = event(
        &mut sync,
        "mirror-0",
        watcher::Event::Delete(image('a', "", None)),
        t0(),
    );
    assert!(w.is_empty());

    // Pulled again later: a new object.
    let w = event(
        &mut sync,
        "mirror-0",
        watcher::Event::Apply(image('a', "", None)),
        t0(),
    );
    assert_eq!(applied(&w)[0].0, name('a'));
}

#[test]
fn a_not_ready_pod_still_holding_a_finalized_image_gets_it_back() {
    let pods = [pod("mirror-0", true), pod("mirror-1", true)];
    let mut sync = started(&pods, vec![]);
    list_done(&mut sync, "mirror-0", vec![image('a', "", None)]);
    let writes = list(&mut sync, "mirror-1", vec![image('a', "", None)], t0());
    complete(&mut sync, &writes, t0());
    sync.handle(
        Input::Pods(vec![pod("mirror-0", true), pod("mirror-1", false)]),
        t0(),
    );
    let Write::Apply { object, .. } = &writes[0] else {
        panic!("{writes:?}")
    };
    let mut gone = stored(object, t0());
    gone.metadata.deletion_timestamp = Some(Time(t0()));
    gone.metadata.finalizers = Some(vec![FINALIZER.into()]);
    sync.handle(Input::Object(gone.clone()), t0());
    let w = sync.handle(Input::ObjectGone(gone), t0());
    // The finalizer skipped mirror-1 (not ready), which still holds it.
    let a = applied(&w);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].1.pods, ["mirror-1"]);
}

#[test]
fn failed_writes_are_retried() {
    let mut sync = started(&[pod("mirror-0", true)], vec![]);
    let writes = list(&mut sync, "mirror-0", vec![image('a', "", None)], t0());
    assert_eq!(writes.len(), 1);
    assert!(sync.handle(Input::Failed(d('a')), t0()).is_empty());
    assert!(
        sync.handle(Input::Tick, t("2026-01-01T00:00:09Z"))
            .is_empty()
    );
    let w = sync.handle(Input::Tick, t("2026-01-01T00:00:10Z"));
    assert_eq!(w, writes);
}

#[test]
fn no_writes_without_the_cache() {
    let mut sync = started(&[pod("mirror-0", true)], vec![]);
    list_done(&mut sync, "mirror-0", vec![image('a', "", None)]);
    assert!(sync.handle(Input::Cache(None), t0()).is_empty());
    assert_eq!(sync.pod_names().count(), 0);
    assert!(!sync.has_cache());
    assert!(
        event(
            &mut sync,
            "mirror-0",
            watcher::Event::Delete(image('a', "", None)),
            t0()
        )
        .is_empty(),
        "the owner reference takes the objects away with the cache"
    );
}
