use super::*;

fn repo(r: &str) -> RepoPath {
    RepoPath {
        registry: "upstream.test".into(),
        repository: r.into(),
    }
}

/// A schema2 manifest over the given blobs (config first), with the blobs stored.
fn image(store: &Store, config: &[u8], layers: &[&[u8]]) -> (Digest, Bytes) {
    let desc = |b: &[u8], mt: &str| {
        let d = Digest::sha256_of(b);
        store.put_blob(&d, b).unwrap();
        serde_json::json!({"mediaType": mt, "size": b.len(), "digest": d.to_string()})
    };
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(config, "application/vnd.docker.container.image.v1+json"),
        "layers": layers.iter().map(|l| desc(l, "application/vnd.docker.image.rootfs.diff.tar.gzip")).collect::<Vec<_>>(),
    });
    let bytes = Bytes::from(serde_json::to_vec(&m).unwrap());
    (Digest::sha256_of(&bytes), bytes)
}

const CONFIG: &[u8] = br#"{"os":"linux","architecture":"amd64","config":{"Labels":{"team":"a"}}}"#;

#[test]
fn manifests_survive_reopen_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let now = Timestamp::now();
    let digest = {
        let (store, _) = Store::open(dir.path()).unwrap();
        let (d, bytes) = image(&store, CONFIG, &[b"layer-1"]);
        store
            .put_manifest(&repo("a"), Some("v1"), &d, None, &bytes, now)
            .unwrap();
        store.record_pull(&d, now);
        store.record_pull(&d, now);
        assert_eq!(store.flush_access().unwrap(), 1);
        d
    };
    let (store, report) = Store::open(dir.path()).unwrap();
    assert_eq!(report.manifests, 1);
    assert_eq!(report.blobs, 3);
    let r = store.manifest_record(&digest).unwrap();
    assert_eq!(r.pull_count, 2);
    assert_eq!(r.labels.get("team"), Some("a"));
    assert_eq!(r.platform.unwrap().to_string(), "linux/amd64");
    assert_eq!(store.resolve_tag(&repo("a"), "v1").unwrap().digest, digest);
    assert_eq!(
        store.manifest(&digest).unwrap().unwrap().media_type,
        DOCKER_MANIFEST
    );
}

#[test]
fn config_arriving_later_fills_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let (d, bytes) = image(&store, CONFIG, &[]);
    let config = Digest::sha256_of(CONFIG);
    // Drop the config blob, cache the manifest, then let the config arrive.
    Arc::make_mut(&mut store.write().blobs).remove(&config);
    fs::remove_file(store.blob_path(&config)).unwrap();
    store
        .put_manifest(&repo("a"), None, &d, None, &bytes, Timestamp::now())
        .unwrap();
    assert!(store.manifest_record(&d).unwrap().labels.is_empty());
    store.put_blob(&config, CONFIG).unwrap();
    assert_eq!(store.manifest_record(&d).unwrap().labels.len(), 1);
}

#[test]
fn second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _held = Store::open(dir.path()).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked(_))
    ));
}

#[test]
fn damaged_entries_are_skipped_and_temp_files_swept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        let (d, bytes) = image(&store, CONFIG, &[b"x"]);
        store
            .put_manifest(&repo("a"), Some("t"), &d, None, &bytes, Timestamp::now())
            .unwrap();
    }
    fs::write(dir.path().join("tmp/partial"), b"half a blob").unwrap();
    fs::write(
        dir.path()
            .join(format!("manifests/sha256/{}.json", "f".repeat(64))),
        b"{broken",
    )
    .unwrap();
    fs::write(dir.path().join("tags/junk.json"), b"[]").unwrap();
    let (store, report) = Store::open(dir.path()).unwrap();
    assert_eq!(report.temp_files_removed, 1);
    assert_eq!(report.damaged, 2);
    assert_eq!(report.manifests, 1);
    assert_eq!(store.tags(&repo("a")), vec!["t".to_owned()]);
    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn delete_keeps_shared_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let now = Timestamp::now();
    let (a, ab) = image(&store, CONFIG, &[b"shared", b"only-a"]);
    let (b, bb) = image(&store, CONFIG, &[b"shared", b"only-b"]);
    store
        .put_manifest(&repo("a"), Some("latest"), &a, None, &ab, now)
        .unwrap();
    store
        .put_manifest(&repo("b"), Some("latest"), &b, None, &bb, now)
        .unwrap();
    assert!(store.delete_manifest(&a).unwrap());
    assert!(!store.delete_manifest(&a).unwrap());
    assert!(store.blob_size(&Digest::sha256_of(b"shared")).is_some());
    assert!(store.blob_size(&Digest::sha256_of(CONFIG)).is_some());
    assert!(store.blob_size(&Digest::sha256_of(b"only-a")).is_none());
    assert!(!store.blob_path(&Digest::sha256_of(b"only-a")).exists());
    assert!(store.resolve_tag(&repo("a"), "latest").is_none());
    assert_eq!(store.stats().manifests, 1);
}

#[test]
fn put_blob_refuses_wrong_content() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let d = Digest::sha256_of(b"right");
    assert!(matches!(
        store.put_blob(&d, b"wrong"),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(store.blob_size(&d).is_none());
    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn every_change_is_one_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let now = Timestamp::now();
    let rx = store.subscribe();
    let (a, ab) = image(&store, CONFIG, &[b"a"]);
    let (b, bb) = image(&store, CONFIG, &[b"b"]);
    let r0 = store.revision();
    assert!(
        !rx.has_changed().unwrap(),
        "blobs alone are not visible changes"
    );
    // A pull by tag: one ADDED carrying the tag.
    store
        .put_manifest(&repo("x"), Some("v1"), &a, None, &ab, now)
        .unwrap();
    assert!(rx.has_changed().unwrap());
    let c = store.changes_since(r0).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, ChangeKind::Added);
    assert_eq!(c[0].tags, vec![(repo("x"), "v1".to_owned())]);
    // Re-pulling the same tag changes nothing visible.
    store
        .put_manifest(&repo("x"), Some("v1"), &a, None, &ab, now)
        .unwrap();
    assert_eq!(store.revision(), r0 + 1);
    // The tag moves to b: b is ADDED with the tag, a is MODIFIED (lost it).
    store
        .put_manifest(&repo("x"), Some("v1"), &b, None, &bb, now)
        .unwrap();
    let c = store.changes_since(r0 + 1).unwrap();
    assert_eq!(
        c.iter()
            .map(|c| (c.kind, c.record.digest.clone()))
            .collect::<Vec<_>>(),
        vec![
            (ChangeKind::Added, b.clone()),
            (ChangeKind::Modified, a.clone())
        ]
    );
    assert!(c[1].tags.is_empty());
    // Pulls become visible at the flush, one event per record.
    store.record_pull(&a, now);
    store.record_pull(&a, now);
    assert_eq!(store.revision(), r0 + 3);
    store.flush_access().unwrap();
    let c = store.changes_since(r0 + 3).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].record.pull_count, 2);
    // A removal: one DELETED with the last state.
    store.delete_manifest(&a).unwrap();
    let c = store.changes_since(r0 + 4).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].kind, c[0].revision), (ChangeKind::Deleted, r0 + 5));
    assert_eq!(store.snapshot().revision, r0 + 5);
    // After a restart every earlier revision has expired, so watchers relist.
    drop(store);
    let (store, _) = Store::open(dir.path()).unwrap();
    assert!(store.revision() > r0 + 5);
    assert!(matches!(store.changes_since(r0 + 5), Err(Expired { .. })));
}

#[test]
fn concurrent_first_puts_of_one_manifest_make_one_image() {
    // A pull by tag and a pull by digest are separate fetches, so two requests can cache the
    // same new manifest at once (found by the soak, right after a prune removed it): watchers
    // must see one ADDED, and the record keeps every repository it was pulled through.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let store = std::sync::Arc::new(store);
    const PULLS: usize = 4;
    let mut digests = Vec::new();
    for round in 0..20 {
        let layer = format!("layer-{round}");
        let (d, bytes) = image(&store, CONFIG, &[layer.as_bytes()]);
        let r0 = store.revision();
        let start = std::sync::Arc::new(std::sync::Barrier::new(PULLS));
        let pulls: Vec<_> = (0..PULLS)
            .map(|i| {
                let (store, start, d, bytes) =
                    (store.clone(), start.clone(), d.clone(), bytes.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let tag = (i == 0).then_some("v1");
                    store
                        .put_manifest(
                            &repo(&format!("r{i}")),
                            tag,
                            &d,
                            None,
                            &bytes,
                            Timestamp::now(),
                        )
                        .unwrap();
                })
            })
            .collect();
        for p in pulls {
            p.join().unwrap();
        }
        let kinds: Vec<ChangeKind> = store
            .changes_since(r0)
            .unwrap()
            .iter()
            .map(|c| c.kind)
            .collect();
        assert_eq!(kinds[0], ChangeKind::Added, "round {round}: {kinds:?}");
        assert!(
            kinds[1..].iter().all(|k| *k == ChangeKind::Modified),
            "round {round}: {kinds:?}"
        );
        assert_eq!(
            store.manifest_record(&d).unwrap().references.len(),
            PULLS,
            "round {round}"
        );
        assert_eq!(store.resolve_tag(&repo("r0"), "v1").unwrap().digest, d);
        digests.push(d);
    }
    // What is on disk agrees.
    drop(store);
    let (store, _) = Store::open(dir.path()).unwrap();
    for d in &digests {
        assert_eq!(store.manifest_record(d).unwrap().references.len(), PULLS);
    }
}

#[test]
fn old_revisions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let (a, ab) = image(&store, CONFIG, &[b"a"]);
    let r0 = store.revision();
    store
        .put_manifest(&repo("x"), None, &a, None, &ab, Timestamp::now())
        .unwrap();
    store.set_change_history(16);
    for _ in 0..17 {
        store.record_pull(&a, Timestamp::now());
        store.flush_access().unwrap();
    }
    assert!(matches!(store.changes_since(r0), Err(Expired { .. })));
    let latest = store.revision();
    assert_eq!(store.changes_since(latest - 10).unwrap().len(), 10);
    assert!(store.changes_since(latest).unwrap().is_empty());
}

#[test]
fn pages_follow_digest_order_and_carry_tags() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let now = Timestamp::now();
    let mut digests: Vec<Digest> = (0..7)
        .map(|i| {
            let layer = format!("layer-{i}");
            let (d, bytes) = image(&store, CONFIG, &[layer.as_bytes()]);
            let tag = format!("v{i}");
            let tag = (i % 2 == 0).then_some(tag.as_str());
            store
                .put_manifest(&repo("p"), tag, &d, None, &bytes, now)
                .unwrap();
            d
        })
        .collect();
    digests.sort();
    let first = store.page(None, Some(3));
    let names = |p: &Page| {
        p.manifests
            .iter()
            .map(|(r, _)| r.digest.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&first), digests[..3]);
    assert_eq!(first.remaining, 7);
    assert_eq!(first.revision, store.revision());
    let next = store.page(Some(&digests[2]), Some(3));
    assert_eq!(names(&next), digests[3..6]);
    assert_eq!(next.remaining, 4);
    let rest = store.page(Some(&digests[5]), None);
    assert_eq!(names(&rest), digests[6..]);
    // Each record comes with the tags the snapshot gives it.
    let snap = store.snapshot();
    for (r, tags) in first.manifests.iter().chain(&next.manifests) {
        let (_, want) = snap
            .manifests
            .iter()
            .find(|(s, _)| s.digest == r.digest)
            .unwrap();
        assert_eq!(tags, want);
    }
    assert_eq!(
        snap.manifests.iter().filter(|(_, t)| !t.is_empty()).count(),
        4
    );
}
