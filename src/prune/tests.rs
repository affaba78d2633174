//! Planner scenarios on hand-built inventories, and the dry-run == real-run property on real
//! stores.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;
use crate::api::{Compiled, Decision, PruneRequest, Report, Totals};
use crate::digest::Digest;
use crate::reference::RepoPath;
use crate::store::{BlobRef, ChildRef, ManifestRecord, SmallSet, StrMap};

fn now() -> Timestamp {
    "2026-06-01T12:00:00Z".parse().unwrap()
}

fn days_ago(d: i64) -> Timestamp {
    now() - SignedDuration::from_hours(24 * d)
}

fn repo(name: &str) -> RepoPath {
    RepoPath {
        registry: "docker.io".into(),
        repository: name.into(),
    }
}

fn blob(name: &str, size: u64) -> BlobRef {
    BlobRef {
        digest: Digest::sha256_of(name.as_bytes()),
        size,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    }
}

/// Builds inventories: images with layers, indexes over them, tags and pull times.
#[derive(Default)]
struct Inv {
    entries: Vec<Entry>,
}

impl Inv {
    fn image(
        &mut self,
        name: &str,
        repository: &str,
        tag: Option<&str>,
        layers: &[(&str, u64)],
        created: i64,
        pulled: Option<i64>,
    ) -> Digest {
        let digest = Digest::sha256_of(format!("manifest-{name}").as_bytes());
        let record = ManifestRecord {
            digest: digest.clone(),
            media_type: crate::store::OCI_MANIFEST.into(),
            size: 100,
            references: SmallSet::from([repo(repository)]),
            created: days_ago(created),
            last_pulled: pulled.map(days_ago),
            pull_count: pulled.map_or(0, |_| 1),
            config: Some(blob(&format!("config-{name}"), 10)),
            layers: layers.iter().map(|(l, s)| blob(l, *s)).collect(),
            children: Box::new([]),
            subject: None,
            artifact_type: None,
            annotations: StrMap::new(),
            platform: None,
            labels: BTreeMap::from([("image".to_owned(), name.to_owned())]).into(),
            image_created: None,
        };
        let tags = tag
            .map(|t| vec![(repo(repository), t.to_owned())])
            .unwrap_or_default();
        self.entries.push(Entry {
            record: record.into(),
            tags,
        });
        digest
    }

    fn index(
        &mut self,
        name: &str,
        repository: &str,
        tag: &str,
        children: &[&Digest],
        created: i64,
        pulled: Option<i64>,
    ) -> Digest {
        let digest = Digest::sha256_of(format!("index-{name}").as_bytes());
        let mut e = Entry {
            record: ManifestRecord {
                digest: digest.clone(),
                media_type: crate::store::OCI_INDEX.into(),
                size: 50,
                references: SmallSet::from([repo(repository)]),
                created: days_ago(created),
                last_pulled: pulled.map(days_ago),
                pull_count: 1,
                config: None,
                layers: Box::new([]),
                children: children
                    .iter()
                    .map(|d| ChildRef {
                        digest: (*d).clone(),
                        size: 100,
                        media_type: crate::store::OCI_MANIFEST.into(),
                        platform: None,
                    })
                    .collect(),
                subject: None,
                artifact_type: None,
                annotations: StrMap::new(),
                platform: None,
                labels: StrMap::new(),
                image_created: None,
            }
            .into(),
            tags: vec![(repo(repository), tag.to_owned())],
        };
        e.tags.sort();
        self.entries.push(e);
        digest
    }

    fn build(&self) -> Inventory {
        let mut blob_sizes = HashMap::new();
        for e in &self.entries {
            blob_sizes.insert(e.record.digest.clone(), e.record.size);
            for b in e.record.config.iter().chain(&e.record.layers) {
                blob_sizes.insert(b.digest.clone(), b.size);
            }
        }
        Inventory {
            manifests: self.entries.clone(),
            blob_sizes: std::sync::Arc::new(blob_sizes.into()),
            volume: Some(Volume {
                total: 100_000,
                free: 50_000,
            }),
        }
    }
}

fn request(f: impl FnOnce(&mut PruneRequest)) -> Compiled {
    let mut r = PruneRequest {
        max_deletion_ratio: Some(1.0),
        count: Some(-1),
        ..Default::default()
    };
    f(&mut r);
    r.compile().unwrap()
}

fn decision(p: &Plan, d: &Digest) -> Option<(Decision, String)> {
    p.items
        .iter()
        .find(|i| &i.digest == d)
        .map(|i| (i.decision, i.reason.clone()))
}

#[test]
fn shared_layers_stay_with_the_image_that_keeps_them() {
    let mut inv = Inv::default();
    let a = inv.image(
        "a",
        "library/a",
        Some("1"),
        &[("shared", 1000), ("only-a", 500)],
        30,
        Some(20),
    );
    let _b = inv.image(
        "b",
        "library/b",
        Some("1"),
        &[("shared", 1000), ("only-b", 700)],
        30,
        Some(1),
    );
    let p = plan(
        &inv.build(),
        &request(|r| r.patterns = vec!["library/a".into()]),
        now(),
    );
    assert_eq!(p.manifests, vec![a.clone()]);
    let blobs: BTreeSet<_> = p.blobs.iter().cloned().collect();
    assert_eq!(
        blobs,
        BTreeSet::from([a, blob("only-a", 0).digest, blob("config-a", 0).digest])
    );
    assert_eq!(p.totals.bytes, 100 + 500 + 10);
}

#[test]
fn an_index_takes_its_children_unless_another_parent_keeps_them() {
    let mut inv = Inv::default();
    let amd = inv.image(
        "amd",
        "library/x",
        None,
        &[("amd-layer", 100)],
        30,
        Some(20),
    );
    let arm = inv.image(
        "arm",
        "library/x",
        None,
        &[("arm-layer", 100)],
        30,
        Some(20),
    );
    let x = inv.index("x", "library/x", "1", &[&amd, &arm], 30, Some(20));
    let _y = inv.index("y", "library/y", "1", &[&arm], 30, Some(1));
    let p = plan(
        &inv.build(),
        &request(|r| r.patterns = vec!["library/x:1".into()]),
        now(),
    );
    assert_eq!(decision(&p, &x).unwrap().0, Decision::Prune);
    assert_eq!(
        decision(&p, &amd),
        Some((Decision::Prune, "childOfPrunedIndex".into()))
    );
    assert_eq!(decision(&p, &arm), None, "arm is still used by index y");
    assert!(p.blobs.contains(&blob("amd-layer", 0).digest));
    assert!(!p.blobs.contains(&blob("arm-layer", 0).digest));
}

#[test]
fn least_recently_pulled_go_first_and_count_caps_the_run() {
    let mut inv = Inv::default();
    let old = inv.image("old", "r/old", Some("1"), &[("l1", 1)], 40, Some(30));
    let mid = inv.image("mid", "r/mid", Some("1"), &[("l2", 1)], 40, Some(20));
    let new = inv.image("new", "r/new", Some("1"), &[("l3", 1)], 40, Some(10));
    let p = plan(
        &inv.build(),
        &request(|r| {
            r.older_than = Some(Duration::from_secs(86400));
            r.count = Some(2);
        }),
        now(),
    );
    assert_eq!(p.manifests, vec![old.clone(), mid.clone()]);
    assert_eq!(
        p.items.iter().map(|i| i.digest.clone()).collect::<Vec<_>>(),
        vec![old, mid, new.clone()]
    );
    assert_eq!(
        decision(&p, &new),
        Some((Decision::Keep, "countLimit".into()))
    );
    assert_eq!(p.kept.get("countLimit"), Some(&1));
}

#[test]
fn an_over_broad_run_is_refused_with_the_reason() {
    let mut inv = Inv::default();
    for i in 0..4 {
        inv.image(
            &format!("i{i}"),
            "r/a",
            None,
            &[(&format!("l{i}"), 10)],
            40,
            Some(30),
        );
    }
    let p = plan(
        &inv.build(),
        &request(|r| {
            r.patterns = vec!["r/a".into()];
            r.max_deletion_ratio = Some(0.5);
        }),
        now(),
    );
    assert!(p.manifests.is_empty() && p.blobs.is_empty());
    assert_eq!(p.totals, Totals::default());
    let why = p.refused.unwrap();
    assert!(
        why.contains("100%") && why.contains("maxDeletionRatio"),
        "{why}"
    );
}

#[test]
fn protections_veto_and_are_counted_by_reason() {
    let mut inv = Inv::default();
    let fresh = inv.image("fresh", "r/fresh", Some("1"), &[("f", 1)], 0, Some(0));
    let pause = inv.image("pause", "pause", Some("3.9"), &[("p", 1)], 40, Some(30));
    let used = inv.image(
        "used",
        "library/nginx",
        Some("1.27"),
        &[("n", 1)],
        40,
        Some(30),
    );
    let by_digest = inv.image("pinned-by-digest", "r/d", None, &[("d", 1)], 40, Some(30));
    let free = inv.image("free", "r/free", Some("1"), &[("x", 1)], 40, Some(30));
    let p = plan(
        &inv.build(),
        &request(|r| {
            r.patterns = vec![".".into()];
            r.in_use = vec![
                "nginx:1.27".into(),
                format!("docker-pullable://docker.io/r/d@{by_digest}"),
            ];
        }),
        now(),
    );
    assert_eq!(
        decision(&p, &fresh),
        Some((Decision::Protected, "minAge".into()))
    );
    assert_eq!(
        decision(&p, &pause),
        Some((Decision::Protected, "pinned".into()))
    );
    assert_eq!(
        decision(&p, &used),
        Some((Decision::Protected, "inUse".into()))
    );
    assert_eq!(
        decision(&p, &by_digest),
        Some((Decision::Protected, "inUse".into()))
    );
    assert_eq!(p.manifests, vec![free]);
    assert_eq!(
        p.protected,
        BTreeMap::from([
            ("inUse".into(), 2),
            ("minAge".into(), 1),
            ("pinned".into(), 1)
        ])
    );
}

#[test]
fn in_use_children_keep_their_index_and_in_use_indexes_their_children() {
    let mut inv = Inv::default();
    let amd = inv.image("amd", "library/x", None, &[("amd-layer", 1)], 40, Some(30));
    let idx = inv.index("x", "library/x", "1", &[&amd], 40, Some(30));
    let p = plan(
        &inv.build(),
        &request(|r| {
            r.patterns = vec![".".into()];
            r.in_use = vec![format!("x@{amd}")];
        }),
        now(),
    );
    assert_eq!(
        decision(&p, &idx).unwrap(),
        (Decision::Protected, "inUse".into())
    );
    let p = plan(
        &inv.build(),
        &request(|r| {
            r.patterns = vec![".".into()];
            r.in_use = vec!["docker.io/library/x:1".into()];
        }),
        now(),
    );
    assert_eq!(
        decision(&p, &amd).unwrap(),
        (Decision::Protected, "inUse".into())
    );
    assert!(p.manifests.is_empty());
}

#[test]
fn unknown_last_pull_is_kept_and_counted() {
    let mut inv = Inv::default();
    let never = inv.image("never", "r/a", Some("1"), &[("a", 1)], 40, None);
    let stale = inv.image("stale", "r/b", Some("1"), &[("b", 1)], 40, Some(35));
    let recent = inv.image("recent", "r/c", Some("1"), &[("c", 1)], 40, Some(2));
    let p = plan(
        &inv.build(),
        &request(|r| r.unused_for = Some(Duration::from_secs(30 * 86400))),
        now(),
    );
    assert_eq!(p.manifests, vec![stale]);
    assert_eq!(
        decision(&p, &never),
        Some((Decision::Keep, "lastPulledUnknown".into()))
    );
    assert_eq!(decision(&p, &recent), None);
    assert_eq!(p.kept.get("lastPulledUnknown"), Some(&1));
}

#[test]
fn keep_rules_override_selectors() {
    let mut inv = Inv::default();
    let a1 = inv.image("a1", "r/a", Some("1"), &[("a1", 1)], 40, Some(30));
    let a2 = inv.image("a2", "r/a", Some("2"), &[("a2", 1)], 40, Some(20));
    let a3 = inv.image("a3", "r/a", Some("3"), &[("a3", 1)], 40, Some(10));
    let b = inv.image("b", "r/b", Some("keep-me"), &[("b", 1)], 40, Some(30));
    let p = plan(
        &inv.build(),
        &request(|r| {
            r.older_than = Some(Duration::from_secs(86400));
            r.most_recently_pulled = Some(1);
            r.keep_patterns = vec!["keep-me".into()];
            r.pulled_within = Some(Duration::from_secs(25 * 86400));
        }),
        now(),
    );
    assert_eq!(p.manifests, vec![a1]);
    assert_eq!(decision(&p, &a2).unwrap().1, "pulledWithin");
    assert_eq!(decision(&p, &a3).unwrap().1, "mostRecentlyPulled");
    assert_eq!(decision(&p, &b).unwrap().1, "keepPattern");
}

#[test]
fn capacity_evicts_lru_past_keep_rules_but_not_protections() {
    let mut inv = Inv::default();
    let pinned = inv.image("pinned", "pause", Some("1"), &[("p", 4000)], 40, Some(50));
    let kept = inv.image("kept", "r/kept", Some("1"), &[("k", 4000)], 40, Some(40));
    let old = inv.image("old", "r/old", Some("1"), &[("o", 4000)], 40, Some(30));
    let _new = inv.image("new", "r/new", Some("1"), &[("n", 4000)], 40, Some(1));
    let total = inv.build().used_bytes();
    let p = plan(
        &inv.build(),
        &request(|r| {
            r.keep_patterns = vec!["r/kept".into()];
            r.max_used_space = Some(format!("{}", total - 6000));
        }),
        now(),
    );
    assert_eq!(
        p.manifests,
        vec![kept.clone(), old.clone()],
        "two evictions free >= 6000 bytes"
    );
    assert_eq!(
        decision(&p, &kept).unwrap(),
        (Decision::Prune, "capacity".into())
    );
    assert!(decision(&p, &pinned).is_none());
    assert!(p.totals.bytes >= 6000);
    // Free space: 50_000 free of 100_000; ask for 55% free -> 5_000 bytes more.
    let p = plan(
        &inv.build(),
        &request(|r| r.min_free_space = Some("55%".into())),
        now(),
    );
    assert_eq!(p.manifests, vec![kept, old]);
}

#[test]
fn untagged_and_label_selectors() {
    let mut inv = Inv::default();
    let tagged = inv.image("tagged", "r/a", Some("1"), &[("a", 1)], 40, Some(30));
    let loose = inv.image("loose", "r/a", None, &[("b", 1)], 40, Some(30));
    let child = inv.image("child", "r/c", None, &[("c", 1)], 40, Some(30));
    inv.index("idx", "r/c", "1", &[&child], 40, Some(30));
    let p = plan(&inv.build(), &request(|r| r.untagged = true), now());
    assert_eq!(
        p.manifests,
        vec![loose.clone()],
        "a child of a tagged index counts as tagged"
    );
    let p = plan(
        &inv.build(),
        &request(|r| r.labels = vec!["image=tagged".into()]),
        now(),
    );
    assert_eq!(p.manifests, vec![tagged]);
    let p = plan(
        &inv.build(),
        &request(|r| {
            r.labels = vec!["image".into(), "image!=tagged".into()];
            r.untagged = true;
        }),
        now(),
    );
    assert_eq!(p.manifests, vec![loose]);
}

#[test]
fn delete_by_digest_takes_children_and_ignores_age() {
    let mut inv = Inv::default();
    let amd = inv.image("amd", "library/x", None, &[("amd-layer", 1)], 0, Some(0));
    let idx = inv.index("x", "library/x", "1", &[&amd], 0, Some(0));
    let other = inv.image("other", "library/y", Some("1"), &[("y", 1)], 0, Some(0));
    let p = plan(
        &inv.build(),
        &PruneRequest::delete(vec![idx.clone()]).compile().unwrap(),
        now(),
    );
    let got: BTreeSet<Digest> = p.manifests.iter().cloned().collect();
    assert_eq!(got, BTreeSet::from([amd, idx]));
    assert!(!p.manifests.contains(&other));
}

#[test]
fn no_selector_selects_nothing() {
    let mut inv = Inv::default();
    inv.image("a", "r/a", Some("1"), &[("a", 1)], 40, Some(30));
    let p = plan(&inv.build(), &request(|_| {}), now());
    assert!(p.items.is_empty() && p.manifests.is_empty());
}

/// (repository number, layers from a pool, tag, created days ago, pulled days ago)
type ImageSpec = (u8, Vec<u8>, Option<u8>, i64, Option<i64>);

/// A random store: images sharing layers from a small pool, some grouped under indexes.
#[derive(Debug, Clone)]
struct StoreSpec {
    images: Vec<ImageSpec>,
    indexes: Vec<(Vec<usize>, u8, i64, Option<i64>)>,
}

fn store_spec() -> impl Strategy<Value = StoreSpec> {
    let image = (
        0u8..4,
        prop::collection::vec(0u8..12, 1..4),
        prop::option::of(0u8..3),
        0i64..60,
        prop::option::of(0i64..60),
    );
    let index = (
        prop::collection::vec(0usize..12, 1..3),
        0u8..3,
        0i64..60,
        prop::option::of(0i64..60),
    );
    (
        prop::collection::vec(image, 1..12),
        prop::collection::vec(index, 0..3),
    )
        .prop_map(|(images, indexes)| StoreSpec { images, indexes })
}

fn request_spec() -> impl Strategy<Value = PruneRequest> {
    (
        prop::option::of(0u64..60),
        prop::option::of(0u64..60),
        prop::option::of(prop::sample::select(vec![
            "r0",
            "r1",
            "idx",
            ":t1",
            "@sha256:[0-7]",
        ])),
        any::<bool>(),
        prop::option::of(0u32..3),
        prop::option::of(-1i64..6),
        prop::option::of(prop::sample::select(vec!["1", "40%", "90%"])),
        prop::option::of(0u64..3),
    )
        .prop_map(
            |(unused, older, pattern, untagged, mrp, count, max_used, min_age)| PruneRequest {
                unused_for: unused.map(|d| Duration::from_secs(d * 86400 + 43200)),
                older_than: older.map(|d| Duration::from_secs(d * 86400 + 43200)),
                patterns: pattern.map(|p| vec![p.to_owned()]).unwrap_or_default(),
                untagged,
                most_recently_pulled: mrp,
                count,
                max_used_space: max_used.map(str::to_owned),
                min_age: min_age.map(|d| Duration::from_secs(d * 86400 + 43200)),
                max_deletion_ratio: Some(1.0),
                ..Default::default()
            },
        )
}

fn build_store(spec: &StoreSpec, dir: &std::path::Path) -> crate::store::Store {
    let (store, _) = crate::store::Store::open(dir).unwrap();
    let at = |d: i64| {
        Timestamp::now() - SignedDuration::from_hours(24 * d) - SignedDuration::from_mins(30)
    };
    let mut digests = Vec::new();
    for (i, (repo_n, layers, tag, created, pulled)) in spec.images.iter().enumerate() {
        let mut layer_descs = Vec::new();
        for l in layers {
            let data = format!("layer-{l}").into_bytes();
            let d = Digest::sha256_of(&data);
            store.put_blob(&d, &data).unwrap();
            layer_descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": data.len(), "digest": d.to_string()}));
        }
        let config =
            format!("{{\"os\":\"linux\",\"architecture\":\"amd64\",\"n\":{i}}}").into_bytes();
        let cd = Digest::sha256_of(&config);
        store.put_blob(&cd, &config).unwrap();
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": crate::store::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": cd.to_string()},
            "layers": layer_descs});
        let bytes = bytes::Bytes::from(serde_json::to_vec(&m).unwrap());
        let d = Digest::sha256_of(&bytes);
        let repo = RepoPath {
            registry: "upstream.test".into(),
            repository: format!("r{repo_n}"),
        };
        let tag = tag.map(|t| format!("t{t}"));
        store
            .put_manifest(&repo, tag.as_deref(), &d, None, &bytes, at(*created))
            .unwrap();
        if let Some(p) = pulled {
            store.record_pull(&d, at(*p));
        }
        digests.push(d);
    }
    for (i, (children, tag, created, pulled)) in spec.indexes.iter().enumerate() {
        let ms: Vec<_> = children
            .iter()
            .filter_map(|c| digests.get(*c))
            .map(|d| serde_json::json!({"mediaType": crate::store::OCI_MANIFEST, "size": 1, "digest": d.to_string(), "platform": {"os": "linux", "architecture": format!("a{i}")}}))
            .collect();
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": crate::store::OCI_INDEX, "manifests": ms});
        let bytes = bytes::Bytes::from(serde_json::to_vec(&m).unwrap());
        let d = Digest::sha256_of(&bytes);
        let repo = RepoPath {
            registry: "upstream.test".into(),
            repository: "idx".into(),
        };
        store
            .put_manifest(
                &repo,
                Some(&format!("t{tag}")),
                &d,
                None,
                &bytes,
                at(*created),
            )
            .unwrap();
        if let Some(p) = pulled {
            store.record_pull(&d, at(*p));
        }
    }
    store
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Dry run reports exactly what the real run then removes, and the store stays whole.
    #[test]
    fn dry_run_matches_the_real_run(spec in store_spec(), req in request_spec()) {
        let dir = tempfile::tempdir().unwrap();
        let store = build_store(&spec, dir.path());
        let dry = run(&store, &PruneRequest { dry_run: true, ..req.clone() }).unwrap();
        let before = store.stats();
        prop_assert_eq!(store.stats(), before, "a dry run changed the store");
        let real = run(&store, &req).unwrap();
        prop_assert_eq!(dry.totals, real.totals);
        let set = |v: &[Digest]| v.iter().cloned().collect::<BTreeSet<_>>();
        prop_assert_eq!(set(&dry.blobs), set(&real.blobs));
        let pruned = |r: &Report| r.items.iter().filter(|i| i.decision == Decision::Prune).map(|i| i.digest.clone()).collect::<BTreeSet<_>>();
        prop_assert_eq!(pruned(&dry), pruned(&real));
        let after = store.stats();
        prop_assert_eq!(after.manifests, before.manifests - real.totals.manifests);
        prop_assert_eq!(after.bytes, before.bytes - real.totals.bytes);
        // Every remaining manifest still has every blob it references that was cached.
        for (r, _) in store.snapshot().manifests {
            prop_assert!(store.blob_size(&r.digest).is_some());
            for b in r.blob_digests() {
                prop_assert!(!real.blobs.contains(b), "removed a blob still referenced");
            }
        }
    }
}
