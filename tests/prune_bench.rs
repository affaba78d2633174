//! Prune engine benchmarks (run with `bench/run` or
//! `cargo test --release --test prune_bench -- --ignored --nocapture`): planning over 100k
//! synthetic manifests, and executing a 10k-manifest prune on a real store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use imagecache::api::PruneRequest;
use imagecache::digest::Digest;
use imagecache::prune::{self, Entry, Inventory, Volume};
use imagecache::reference::RepoPath;
use imagecache::store::{BlobRef, ManifestRecord, OCI_MANIFEST, SmallSet, Store, StrMap};
use jiff::{SignedDuration, Timestamp};

fn digest(kind: &str, i: usize) -> Digest {
    Digest::sha256_of(format!("{kind}-{i}").as_bytes())
}

/// 100k manifests over 1,000 repositories, 3 layers each from a pool of 30k, pulled at
/// spread-out times.
fn synthetic(n: usize) -> Inventory {
    let now = Timestamp::now();
    let mut blob_sizes = HashMap::new();
    let manifests = (0..n)
        .map(|i| {
            let layers: Vec<BlobRef> = (0..3)
                .map(|k| {
                    let d = digest("layer", (i * 7 + k * 13) % 30_000);
                    blob_sizes.insert(d.clone(), 1_000_000);
                    BlobRef {
                        digest: d,
                        size: 1_000_000,
                        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    }
                })
                .collect();
            let config = BlobRef {
                digest: digest("config", i),
                size: 1000,
                media_type: "application/vnd.oci.image.config.v1+json".into(),
            };
            blob_sizes.insert(config.digest.clone(), 1000);
            let d = digest("manifest", i);
            blob_sizes.insert(d.clone(), 500);
            let repo = RepoPath {
                registry: "docker.io".into(),
                repository: format!("team{}/app{}", i % 100, i % 1000),
            };
            let record = ManifestRecord {
                digest: d,
                media_type: OCI_MANIFEST.into(),
                size: 500,
                references: SmallSet::from([repo.clone()]),
                created: now - SignedDuration::from_hours(24 * 90),
                last_pulled: Some(now - SignedDuration::from_mins((i % 100_000) as i64 * 3)),
                pull_count: 1,
                config: Some(config),
                layers: layers.into(),
                children: Box::new([]),
                subject: None,
                artifact_type: None,
                annotations: StrMap::new(),
                platform: None,
                labels: StrMap::from_iter([("team".to_owned(), format!("t{}", i % 10))]),
                image_created: None,
            };
            Entry {
                record: record.into(),
                tags: vec![(repo, format!("v{i}"))],
            }
        })
        .collect();
    Inventory {
        manifests,
        blob_sizes: std::sync::Arc::new(blob_sizes.into()),
        volume: Some(Volume {
            total: u64::MAX / 2,
            free: u64::MAX / 4,
        }),
    }
}

#[test]
#[ignore = "benchmark"]
fn plan_100k_manifests() {
    let inv = synthetic(100_000);
    let requests = [
        (
            "unusedFor 30d, count -1",
            PruneRequest {
                unused_for: Some(Duration::from_secs(30 * 86400)),
                count: Some(-1),
                max_deletion_ratio: Some(1.0),
                ..Default::default()
            },
        ),
        (
            "patterns + labels + keep 3/repo",
            PruneRequest {
                patterns: vec!["team1.*/app".into(), "app9".into()],
                labels: vec!["team!=t3".into()],
                most_recently_pulled: Some(3),
                count: Some(-1),
                max_deletion_ratio: Some(1.0),
                ..Default::default()
            },
        ),
        (
            "capacity: maxUsedSpace 50%",
            PruneRequest {
                max_used_space: Some(format!("{}", inv.used_bytes() / 2)),
                count: Some(-1),
                max_deletion_ratio: Some(1.0),
                ..Default::default()
            },
        ),
    ];
    println!(
        "\nprune planning over {} manifests, {} blobs",
        inv.manifests.len(),
        inv.blob_sizes.len()
    );
    for (name, r) in requests {
        let c = r.compile().unwrap();
        let t = Instant::now();
        let p = prune::plan(&inv, &c, Timestamp::now());
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "  {name:<34} {ms:>8.1} ms  -> prune {} manifests, {} blobs",
            p.totals.manifests, p.totals.blobs
        );
        assert!(p.totals.manifests > 0, "{name} pruned nothing");
    }
}

#[test]
#[ignore = "benchmark"]
fn execute_10k_manifest_prune() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    let n = 10_000;
    let t = Instant::now();
    let old = Timestamp::now() - SignedDuration::from_hours(24 * 60);
    for i in 0..n {
        let layer = format!("layer-{i}").into_bytes();
        let ld = Digest::sha256_of(&layer);
        store.put_blob(&ld, &layer).unwrap();
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": layer.len(), "digest": ld.to_string()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": layer.len(), "digest": ld.to_string()}]});
        let bytes = Bytes::from(serde_json::to_vec(&m).unwrap());
        let d = Digest::sha256_of(&bytes);
        let repo = RepoPath {
            registry: "docker.io".into(),
            repository: format!("r/app{}", i % 500),
        };
        store
            .put_manifest(&repo, Some(&format!("v{i}")), &d, None, &bytes, old)
            .unwrap();
    }
    let fill = t.elapsed();
    drop(store);
    let t = Instant::now();
    let (store, report) = Store::open(dir.path()).unwrap();
    let load = t.elapsed();
    assert_eq!(report.manifests, n);
    let t = Instant::now();
    let r = prune::run(
        &store,
        &PruneRequest {
            older_than: Some(Duration::from_secs(86400)),
            count: Some(-1),
            max_deletion_ratio: Some(1.0),
            ..Default::default()
        },
    )
    .unwrap();
    let exec = t.elapsed();
    assert_eq!(r.totals.manifests, n as u64);
    assert_eq!(store.stats().manifests, 0);
    println!(
        "\nprune execution on a real store: fill {n} manifests {:.1} s, index load {:.0} ms, prune {} manifests + {} blobs {:.2} s",
        fill.as_secs_f64(),
        load.as_secs_f64() * 1000.0,
        r.totals.manifests,
        r.totals.blobs,
        exec.as_secs_f64()
    );
}
