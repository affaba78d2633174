//! Crash consistency: `kill -9` of the server at random moments during cold pulls and during
//! prunes, a restart each time, and `imagecache verify` on the cache files afterwards.
//!
//! The moments are drawn from a seeded RNG; the seed is printed, and
//! `IMAGECACHE_CRASH_SEED=<n>` replays a run. The long run is ignored by default:
//! `cargo test --test crash -- --ignored --nocapture`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::http::{get, send, send_body};
use support::image::CONTAINERD_ACCEPT;
use support::verify::{stop_verify_start, verify};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_imagecache");

/// Repositories the first image is also tagged in upstream, so a prune has many tag indexes
/// and references to rewrite (a window wide enough to be cut).
const FAN_OUT: usize = 8;
/// Repositories holding a manifest of their own over the first image's blobs: many records
/// and tag indexes, so a prune takes long enough to be cut mid-way.
const VARIANTS: usize = 100;
const BROAD_PRUNE: &str = "/cmd/prune?type=pattern&expr=.&count=-1&minAge=0s&maxDeletionRatio=1";

fn finding_kinds(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Right after a kill the files may hold temp files (the next open sweeps them) but nothing
/// else out of place: every write is temp file, fsync, rename.
fn assert_crash_state(cache: &ImageCache, when: &str) {
    let (_, report) = verify(cache.data_dir(), false);
    let kinds = finding_kinds(&report);
    assert!(
        kinds.iter().all(|k| k == "tempFile"),
        "{when}: the crash left more than temp files: {report:#}"
    );
}

/// Pulls everything an image has without asserting: the server may die mid-way.
async fn pull_quietly(c: &reqwest::Client, repo: &Repo, reference: &str, image: &Image) -> bool {
    let mut urls = vec![repo.manifest_url(reference)];
    urls.extend(
        image
            .manifests()
            .iter()
            .map(|m| repo.manifest_url(&m.digest)),
    );
    urls.extend(image.blobs().iter().map(|b| repo.blob_url(&b.digest)));
    for url in urls {
        let r = c.get(&url).header("Accept", CONTAINERD_ACCEPT).send().await;
        let Ok(r) = r else { return false };
        if r.bytes().await.is_err() {
            return false;
        }
    }
    true
}

/// Tags `image` (already in `from`) in repository `to` too, by cross-repository mounts. With a
/// `variant`, the manifest gets an annotation, so it is a manifest of its own over the same
/// blobs. Returns the manifest bytes tagged.
async fn tag_in(
    c: &reqwest::Client,
    dist: &Distribution,
    from: &str,
    to: &str,
    image: &Image,
    variant: Option<usize>,
) -> Vec<u8> {
    for b in image.blobs() {
        let url = format!(
            "{}/v2/{to}/blobs/uploads/?mount={}&from={from}",
            dist.url(),
            b.digest
        );
        let r = send(c, "POST", &url, &[]).await;
        assert_eq!(r.status, 201, "mount {}: {}", b.digest, r.text());
    }
    let m = get(
        c,
        &format!("{}/v2/{from}/manifests/{}", dist.url(), image.digest()),
        &[("Accept", CONTAINERD_ACCEPT)],
    )
    .await;
    let ct = m.header("content-type").unwrap().to_owned();
    let body = match variant {
        None => m.body,
        Some(i) => {
            let mut v: Value = serde_json::from_slice(&m.body).unwrap();
            v["annotations"] = serde_json::json!({"org.example.variant": i.to_string()});
            serde_json::to_vec(&v).unwrap()
        }
    };
    let url = format!("{}/v2/{to}/manifests/v1", dist.url());
    let r = send_body(c, "PUT", &url, &[("Content-Type", &ct)], body.clone()).await;
    assert_eq!(r.status, 201, "tagging {to}: {}", r.text());
    body
}

/// GETs the manifest `v1` of every variant repository; with `check`, asserts the bytes.
async fn pull_variants(
    c: &reqwest::Client,
    cache_url: &str,
    variants: &[(String, Vec<u8>)],
    check: bool,
) {
    let mut tasks = Vec::new();
    for chunk in variants.chunks(variants.len().div_ceil(8).max(1)) {
        let chunk = chunk.to_vec();
        let (c, base) = (c.clone(), cache_url.to_owned());
        tasks.push(tokio::spawn(async move {
            for (repo, bytes) in chunk {
                let url = Repo::new(&base, &format!("{UPSTREAM}/{repo}")).manifest_url("v1");
                let r = c.get(&url).header("Accept", CONTAINERD_ACCEPT).send().await;
                let body = match r {
                    Ok(r) if r.status() == 200 => r.bytes().await.ok(),
                    _ => None,
                };
                if check {
                    assert!(
                        body.is_some_and(|b| b == bytes),
                        "GET {url}: not the manifest"
                    );
                }
            }
        }));
    }
    for t in tasks {
        let r = t.await;
        if check {
            r.unwrap();
        }
    }
}

/// Files under the tag indexes and manifest records: what a prune takes away one by one.
fn index_files(dir: &std::path::Path) -> usize {
    files_under(&dir.join("manifests")).len() + files_under(&dir.join("tags")).len()
}

fn seed() -> u64 {
    let seed = std::env::var("IMAGECACHE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("crash test seed {seed} (IMAGECACHE_CRASH_SEED={seed} replays it)");
    seed
}

fn crash_rounds(rounds: usize) {
    let mut rng = StdRng::seed_from_u64(seed());
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let platforms = [
        Platform::linux_amd64(),
        Platform::new("linux", "arm64", Some("v8")),
    ];
    let images = vec![
        (
            "crash/one".to_owned(),
            gen_image(
                &tmp.path().join("one"),
                71,
                &[600_000, 2_000_000, 3000],
                &platforms[0],
            ),
        ),
        (
            "crash/multi".to_owned(),
            gen_multiarch(
                &tmp.path().join("multi"),
                72,
                &platforms,
                &[900_000, 40_000],
            ),
        ),
        (
            "crash/v2".to_owned(),
            gen_image_v2s2(&tmp.path().join("v2"), 73, &[1_500_000], &platforms[0]),
        ),
    ];
    for (repo, image) in &images {
        dist.push(&image.source_ref(), &format!("{repo}:v1"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = client();
    let mut pulls: Vec<(String, Image)> = images.clone();
    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    rt.block_on(async {
        for i in 0..FAN_OUT {
            let to = format!("crash/fan{i:02}");
            tag_in(&c, &dist, "crash/one", &to, &images[0].1, None).await;
            pulls.push((to, images[0].1.clone()));
        }
        for i in 0..VARIANTS {
            let to = format!("crash/variant{i:03}");
            let bytes = tag_in(&c, &dist, "crash/one", &to, &images[0].1, Some(i)).await;
            variants.push((to, bytes));
        }
    });
    let mut cache = ImageCache::start_for(&dist);

    for round in 0..rounds {
        let c = client();
        // Cold pulls, several clients at once, cut by a kill.
        let delay = Duration::from_millis(rng.random_range(0..600));
        let tasks: Vec<_> = pulls
            .iter()
            .flat_map(|(repo, image)| {
                let r = Repo::new(&cache.url(), &format!("{UPSTREAM}/{repo}"));
                [(r.clone(), image.clone()), (r, image.clone())]
            })
            .map(|(r, image)| {
                let c = c.clone();
                rt.spawn(async move { pull_quietly(&c, &r, "v1", &image).await })
            })
            .collect();
        let manifests = {
            let (c, base, v) = (c.clone(), cache.url(), variants.clone());
            rt.spawn(async move { pull_variants(&c, &base, &v, false).await })
        };
        std::thread::sleep(delay);
        cache.kill9();
        let _ = rt.block_on(manifests);
        let done = rt.block_on(async {
            let mut done = 0;
            for t in tasks {
                done += usize::from(t.await.unwrap_or(false));
            }
            done
        });
        eprintln!(
            "round {round}: killed the server {delay:?} into cold pulls ({done}/{} pulls had finished)",
            pulls.len() * 2
        );
        let when = format!("round {round}, after a kill during pulls");
        assert_crash_state(&cache, &when);
        cache.restart();
        stop_verify_start(&mut cache, &when);
        // Fresh clients after every restart: pooled connections died with the old process.
        let c = client();
        rt.block_on(async {
            for (repo, image) in &pulls {
                let r = Repo::new(&cache.url(), &format!("{UPSTREAM}/{repo}"));
                pull_verify(&c, &r, "v1", image).await;
            }
            pull_variants(&c, &cache.url(), &variants, true).await;
        });

        // A broad prune, cut by a kill once it has taken away a random share of the records
        // and tag indexes (polled as fast as the directory listing goes).
        let before = index_files(cache.data_dir());
        let target = rng.random_range(1..before);
        let url = format!("{}{BROAD_PRUNE}", cache.admin_url());
        let prune = {
            let c = c.clone();
            rt.spawn(async move {
                match c.delete(url).send().await {
                    Ok(r) => r.status().as_u16() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while index_files(cache.data_dir()) > target
            && !prune.is_finished()
            && Instant::now() < deadline
        {
            std::hint::spin_loop();
        }
        cache.kill9();
        let finished = rt.block_on(prune).unwrap_or(false);
        eprintln!(
            "round {round}: killed the server during a prune (response received: {finished}); \
             record and tag files {before} -> {} (aimed at {target})",
            index_files(cache.data_dir())
        );
        let when = format!("round {round}, after a kill during a prune");
        assert_crash_state(&cache, &when);
        cache.restart();
        stop_verify_start(&mut cache, &when);
        // Empty the cache so the next round's pulls are cold again.
        let c = client();
        let start = Instant::now();
        rt.block_on(async {
            let r = send(
                &c,
                "DELETE",
                &format!("{}{BROAD_PRUNE}", cache.admin_url()),
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
        });
        eprintln!("round {round}: a whole prune took {:?}", start.elapsed());
    }
    stop_verify_start(&mut cache, "at the end");
}

/// A few rounds of kills during cold pulls and during prunes; the cache stays consistent.
#[test]
fn kill9_during_pulls_and_prunes_leaves_a_consistent_cache() {
    crash_rounds(6);
}

/// The long run: `cargo test --test crash -- --ignored --nocapture`.
#[test]
#[ignore]
fn kill9_many_rounds() {
    crash_rounds(40);
}

/// A blob corrupted on disk is reported by `verify`, removed by `verify --repair`, and the
/// server fetches it from the upstream again on the next pull.
#[test]
fn corrupt_blob_is_repaired_and_fetched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let image = gen_image(
        &tmp.path().join("img"),
        81,
        &[300_000, 5000],
        &Platform::linux_amd64(),
    );
    dist.push(&image.source_ref(), "team/app:v1");
    let mut cache = ImageCache::start_for(&dist);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = client();
    let repo = Repo::new(&cache.url(), &format!("{UPSTREAM}/team/app"));
    rt.block_on(pull_verify(&c, &repo, "v1", &image));

    // verify refuses while the server holds the cache.
    let out = Command::new(BIN)
        .arg("--image-path")
        .arg(cache.data_dir())
        .arg("verify")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another imagecache process"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    assert!(cache.terminate());
    let layer = image.children[0].layers[0].digest.clone();
    let hex = layer.trim_start_matches("sha256:");
    let path = cache
        .data_dir()
        .join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
    let mut data = std::fs::read(&path).unwrap();
    data[1000] ^= 0x55;
    std::fs::write(&path, &data).unwrap();

    let (ok, report) = verify(cache.data_dir(), false);
    assert!(!ok, "{report:#}");
    assert_eq!(finding_kinds(&report), ["corruptBlob"], "{report:#}");
    assert_eq!(report["findings"][0]["digest"], layer.as_str());
    // Text output: one line per finding and the summary.
    let out = Command::new(BIN)
        .arg("--image-path")
        .arg(cache.data_dir())
        .arg("verify")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("corrupt blob {layer}")), "{text}");
    assert!(
        text.trim_end()
            .ends_with("checked 4 blobs, 1 manifests, 1 tags: 1 problems"),
        "{text}"
    );

    let (ok, report) = verify(cache.data_dir(), true);
    assert!(ok, "{report:#}");
    assert_eq!(report["repairs"][0]["action"], "removed", "{report:#}");
    assert!(!path.exists());
    let (ok, report) = verify(cache.data_dir(), false);
    assert!(ok && finding_kinds(&report).is_empty(), "{report:#}");

    cache.restart();
    // A fresh client: the old one's pooled connections went with the old process.
    let c = client();
    let before = dist.blob_gets_by_digest().get(&layer).copied().unwrap_or(0);
    rt.block_on(pull_verify(&c, &repo, "v1", &image));
    let after = dist.blob_gets_by_digest().get(&layer).copied().unwrap_or(0);
    assert_eq!(after, before + 1, "the removed layer was fetched again");
    assert_eq!(std::fs::read(&path).unwrap(), image.read(&layer));
    stop_verify_start(&mut cache, "after the re-fetch");
}
