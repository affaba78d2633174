//! Fault injection between imagecache and a real CNCF Distribution registry: a proxy
//! (`support::faultproxy`) adds latency, resets, truncated bodies, 5xx bursts, 429 with
//! `Retry-After`, corrupted bytes and slow-loris responses to what Distribution sends.
//!
//! What must hold whatever the upstream does: a client gets the exact bytes or a clean error
//! (an OCI error answer, or a blob transfer cut before its announced length), nothing wrong is
//! ever cached (`imagecache verify` after each test), and no request reaches an upstream
//! before the `Retry-After` it gave has passed.
//!
//! The chaos test draws its faults from a seeded RNG; the seed is printed, and
//! `IMAGECACHE_FAULT_SEED=<n>` replays it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::faultproxy::{Fault, FaultProxy, Rule};
use support::http::{get, send};
use support::image::CONTAINERD_ACCEPT;
use support::verify::stop_verify_start;
use support::*;

const BROAD_PRUNE: &str = "/cmd/prune?type=pattern&expr=.&count=-1&minAge=0s&maxDeletionRatio=1";

/// A Distribution registry with `count` single-platform images (`r0` ... as `rN:v1`, two
/// layers each, the second `big` bytes), the fault proxy in front of it, and imagecache
/// using the proxy as `upstream.test` with short timeouts so stalls are found quickly.
struct Rig {
    tmp: tempfile::TempDir,
    _dist: Distribution,
    proxy: FaultProxy,
    cache: ImageCache,
    images: Vec<Image>,
}

/// imagecache with `proxy` as `upstream.test`, with timeouts short enough that stalls are
/// found quickly.
fn cache_in_front_of(proxy: &FaultProxy) -> ImageCache {
    ImageCache::builder()
        .registry_with(json!({
            "name": UPSTREAM,
            "endpoint": proxy.url(),
            "timeouts": {"connect": "2s", "firstByte": "2s", "idle": "1s"},
            "retry": {"attempts": 3, "maxWait": "5s"},
        }))
        .start()
}

/// The chaos tests' seed: `IMAGECACHE_FAULT_SEED` replays a run, else a random one.
fn fault_seed() -> u64 {
    std::env::var("IMAGECACHE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// The faults chaos draws from: every kind, with durations that keep a run short.
fn chaos_faults() -> Vec<Fault> {
    vec![
        Fault::Latency(Duration::from_millis(200)),
        Fault::ResetBeforeResponse,
        Fault::ResetMidBody,
        Fault::Truncate,
        Fault::Corrupt,
        Fault::Status(500),
        Fault::Status(503),
        Fault::RateLimit {
            retry_after_secs: 1,
        },
        Fault::Stall(Duration::from_millis(1500)),
    ]
}

impl Rig {
    fn start(count: usize, big: usize) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let dist = Distribution::start();
        let images: Vec<Image> = (0..count)
            .map(|i| {
                let image = gen_image(
                    &tmp.path().join(format!("img{i}")),
                    100 + i as u64,
                    &[20_000 + i, big + i],
                    &Platform::linux_amd64(),
                );
                dist.push(&image.source_ref(), &format!("r{i}:v1"));
                image
            })
            .collect();
        let proxy = FaultProxy::start(&dist.url());
        let cache = cache_in_front_of(&proxy);
        Rig {
            tmp,
            _dist: dist,
            proxy,
            cache,
            images,
        }
    }

    fn repo(&self, i: usize) -> Repo {
        Repo::new(&self.cache.url(), &format!("{UPSTREAM}/r{i}"))
    }

    /// The first layer's digest of image `i` (the small one).
    fn small_layer(&self, i: usize) -> String {
        self.images[i].children[0].layers[0].digest.clone()
    }

    /// The second layer's digest of image `i` (the big one).
    fn big_layer(&self, i: usize) -> String {
        self.images[i].children[0].layers[1].digest.clone()
    }

    fn blob_cached(&self, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        self.cache
            .data_dir()
            .join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
            .exists()
    }

    /// A sample of the cache's `/metrics` (summed over label sets not named), 0 when absent.
    async fn metric(&self, name: &str) -> f64 {
        let r = get(
            &client(),
            &format!("{}/metrics", self.cache.admin_url()),
            &[],
        )
        .await;
        metric_sum(&r.text(), name)
    }
}

/// How one GET ended, from the client's side.
#[derive(Debug)]
enum Outcome {
    /// 200 with exactly the source's bytes.
    Exact,
    /// An OCI error answer, no answer, or a 200 whose body stopped short of its length: a
    /// client sees the failure and can try again.
    Clean(String),
    /// A complete 200 with other bytes than the source's.
    Wrong(String),
    /// An error answer without the OCI envelope, or cut short.
    Unclean(String),
}

async fn fetch_outcome(c: &reqwest::Client, url: &str, expected: &[u8]) -> Outcome {
    let resp = match c.get(url).header("Accept", CONTAINERD_ACCEPT).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Clean(format!("no answer: {e}")),
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await;
    if status == 200 {
        return match body {
            Err(e) => Outcome::Clean(format!("200, body cut: {e}")),
            Ok(b) if b.as_ref() == expected => Outcome::Exact,
            Ok(b) => Outcome::Wrong(format!(
                "GET {url} answered 200 with {} bytes that differ from the source",
                b.len()
            )),
        };
    }
    let Ok(body) = body else {
        return Outcome::Unclean(format!("GET {url}: {status} with a cut error body"));
    };
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned));
    match code {
        Some(code) if status >= 400 => {
            let retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(|v| format!(" retry-after={v}"))
                .unwrap_or_default();
            Outcome::Clean(format!("{status} {code}{retry_after}"))
        }
        _ => Outcome::Unclean(format!(
            "GET {url}: {status} without an OCI error: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

/// `Ok` for the exact bytes, `Err` describing a clean error; anything else fails the test.
fn checked(outcome: Outcome) -> Result<(), String> {
    match outcome {
        Outcome::Exact => Ok(()),
        Outcome::Clean(e) => Err(e),
        Outcome::Wrong(e) | Outcome::Unclean(e) => panic!("WRONG: {e}"),
    }
}

async fn fetch_checked(c: &reqwest::Client, url: &str, expected: &[u8]) -> Result<(), String> {
    checked(fetch_outcome(c, url, expected).await)
}

/// How a whole pull ended: the first GET that was not exact decides.
async fn pull_outcome(c: &reqwest::Client, repo: &Repo, image: &Image) -> Outcome {
    let mut urls = vec![(repo.manifest_url("v1"), image.digest().to_owned())];
    urls.extend(
        image
            .blobs()
            .into_iter()
            .map(|b| (repo.blob_url(&b.digest), b.digest)),
    );
    for (url, digest) in urls {
        match fetch_outcome(c, &url, &image.read(&digest)).await {
            Outcome::Exact => {}
            other => return other,
        }
    }
    Outcome::Exact
}

/// Pulls image `i` by tag the way a runtime does; the first clean error ends it.
async fn pull_checked(c: &reqwest::Client, repo: &Repo, image: &Image) -> Result<(), String> {
    checked(pull_outcome(c, repo, image).await)
}

/// Every client pulls every image at once (each starting at another image), from `repo_of`.
async fn pull_concurrently(
    clients: usize,
    images: &[Image],
    repo_of: &dyn Fn(usize) -> Repo,
) -> Vec<Outcome> {
    let c = client();
    let mut tasks = Vec::new();
    for client_no in 0..clients {
        for i in 0..images.len() {
            let k = (i + client_no) % images.len();
            let (c, repo, image) = (c.clone(), repo_of(k), images[k].clone());
            tasks.push(tokio::spawn(async move {
                pull_outcome(&c, &repo, &image).await
            }));
        }
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("a pull panicked"));
    }
    outcomes
}

#[tokio::test]
async fn transient_failures_are_retried_and_the_client_never_sees_them() {
    let faults = [
        Fault::Latency(Duration::from_millis(300)),
        Fault::ResetBeforeResponse,
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::Status(504),
    ];
    let mut rig = Rig::start(faults.len(), 100_000);
    let c = client();
    for (i, fault) in faults.iter().enumerate() {
        // Two tries fail on the manifest, one on the small layer: within 3 attempts.
        rig.proxy.inject(Rule::new(
            "GET",
            &format!("/r{i}/manifests/v1"),
            fault.clone(),
            2,
        ));
        rig.proxy
            .inject(Rule::new("GET", &rig.small_layer(i), fault.clone(), 1));
        pull_checked(&c, &rig.repo(i), &rig.images[i])
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: the pull failed: {e}"));
        let manifest_tries = rig.proxy.seen_for(&format!("/r{i}/manifests/v1")).len();
        let layer_tries = rig.proxy.seen_for(&rig.small_layer(i)).len();
        // A slow answer is still an answer: waited for, not retried.
        let expected = match fault {
            Fault::Latency(_) => (1, 1),
            _ => (3, 2),
        };
        assert_eq!((manifest_tries, layer_tries), expected, "{fault:?}");
    }
    assert!(
        rig.metric("imagecache_upstream_retries_total{reason=\"server_error\"}")
            .await
            >= 12.0
    );
    assert!(
        rig.metric("imagecache_upstream_retries_total{reason=\"transport\"}")
            .await
            >= 3.0
    );
    stop_verify_start(&mut rig.cache, "after transient faults");
}

#[tokio::test]
async fn cut_and_stalled_blobs_are_resumed_from_where_they_stopped() {
    let faults = [
        Fault::Truncate,
        Fault::ResetMidBody,
        // Longer than the 1 s idle timeout: the cache gives up on the trickle and resumes.
        Fault::Stall(Duration::from_millis(2500)),
    ];
    let mut rig = Rig::start(faults.len(), 1 << 20);
    let c = client();
    for (i, fault) in faults.iter().enumerate() {
        let big = rig.big_layer(i);
        rig.proxy.inject(Rule::new("GET", &big, fault.clone(), 1));
        pull_checked(&c, &rig.repo(i), &rig.images[i])
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: the pull failed: {e}"));
        let tries = rig.proxy.seen_for(&big);
        assert_eq!(tries.len(), 2, "{fault:?}: {tries:?}");
        assert_eq!(tries[0].header("range"), None);
        let range = tries[1].header("range").unwrap_or_default();
        let offset: u64 = range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| panic!("{fault:?}: the second request is no resume: {range:?}"));
        assert!(offset > 0, "{fault:?}: resumed from {offset}");
        assert!(rig.blob_cached(&big));
    }
    assert_eq!(
        rig.metric("imagecache_upstream_retries_total{reason=\"cut_transfer\"}")
            .await,
        3.0
    );
    stop_verify_start(&mut rig.cache, "after resumed transfers");
}

#[tokio::test]
async fn a_corrupted_or_cut_manifest_is_fetched_again() {
    let faults = [Fault::Corrupt, Fault::Truncate, Fault::ResetMidBody];
    let mut rig = Rig::start(faults.len() * 2, 10_000);
    let c = client();
    for (i, fault) in faults.iter().enumerate() {
        // By tag (checked against Docker-Content-Digest) and by digest.
        let (by_tag, by_digest) = (2 * i, 2 * i + 1);
        rig.proxy.inject(Rule::new(
            "GET",
            &format!("/r{by_tag}/manifests/v1"),
            fault.clone(),
            1,
        ));
        let image = &rig.images[by_tag];
        fetch_checked(
            &c,
            &rig.repo(by_tag).manifest_url("v1"),
            &image.read(image.digest()),
        )
        .await
        .unwrap_or_else(|e| panic!("{fault:?} by tag: {e}"));
        let image = &rig.images[by_digest];
        rig.proxy
            .inject(Rule::new("GET", image.digest(), fault.clone(), 1));
        fetch_checked(
            &c,
            &rig.repo(by_digest).manifest_url(image.digest()),
            &image.read(image.digest()),
        )
        .await
        .unwrap_or_else(|e| panic!("{fault:?} by digest: {e}"));
        assert_eq!(rig.proxy.seen_for(image.digest()).len(), 2, "{fault:?}");
    }
    stop_verify_start(&mut rig.cache, "after refetched manifests");
}

#[tokio::test]
async fn persistent_faults_end_in_clean_errors_and_nothing_wrong_is_cached() {
    let faults = [
        Fault::Corrupt,
        Fault::Truncate,
        Fault::Status(503),
        Fault::ResetBeforeResponse,
        // Longer than the 2 s first-byte timeout.
        Fault::StallHeaders(Duration::from_millis(3000)),
    ];
    let mut rig = Rig::start(faults.len(), 300_000);
    let c = client();
    for (i, fault) in faults.iter().enumerate() {
        let (repo, image, big) = (rig.repo(i), &rig.images[i], rig.big_layer(i));
        // The manifest fails on every try: a clean error, nothing cached.
        let manifest_path = format!("/r{i}/manifests/v1");
        rig.proxy
            .inject(Rule::new("GET", &manifest_path, fault.clone(), usize::MAX));
        let err = fetch_checked(&c, &repo.manifest_url("v1"), &image.read(image.digest()))
            .await
            .expect_err("every try failed");
        eprintln!("{fault:?} on the manifest: {err}");
        // So does the big blob.
        rig.proxy
            .inject(Rule::new("GET", &big, fault.clone(), usize::MAX));
        let err = fetch_checked(&c, &repo.blob_url(&big), &image.read(&big))
            .await
            .expect_err("every try failed");
        eprintln!("{fault:?} on a blob: {err}");
        assert!(
            !rig.blob_cached(&big),
            "{fault:?}: a failed blob was cached"
        );
        // The upstream recovers: the same pull is exact.
        rig.proxy.clear();
        pull_checked(&c, &repo, image)
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: after recovery: {e}"));
        assert!(rig.blob_cached(&big));
    }
    // Every file in the cache verifies, and no temp file was left behind.
    let temp = files_under(&rig.cache.data_dir().join("tmp"));
    assert!(temp.is_empty(), "{temp:?}");
    stop_verify_start(&mut rig.cache, "after persistent faults");
}

#[tokio::test]
async fn retry_after_is_respected_by_the_cache_and_passed_to_clients() {
    let rig = Rig::start(4, 10_000);
    let c = client();
    // Image 0 is cached before the upstream starts limiting.
    pull_checked(&c, &rig.repo(0), &rig.images[0])
        .await
        .unwrap();

    // A short Retry-After fits the request's budget: waited out, then the pull goes on.
    rig.proxy.inject(Rule::new(
        "GET",
        "/r1/manifests/v1",
        Fault::RateLimit {
            retry_after_secs: 1,
        },
        1,
    ));
    pull_checked(&c, &rig.repo(1), &rig.images[1])
        .await
        .unwrap();
    let tries = rig.proxy.seen_for("/r1/manifests/v1");
    assert_eq!(tries.len(), 2, "{tries:?}");
    let gap = tries[1].at - tries[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");

    // A long one does not fit: the client gets the 429 and its Retry-After.
    let limited = rig.proxy.seen().len();
    rig.proxy.inject(Rule::new(
        "GET",
        "/r2/manifests/v1",
        Fault::RateLimit {
            retry_after_secs: 30,
        },
        1,
    ));
    let err = fetch_checked(&c, &rig.repo(2).manifest_url("v1"), b"")
        .await
        .expect_err("rate limited");
    assert_eq!(err, "429 TOOMANYREQUESTS retry-after=30");
    assert_eq!(rig.proxy.seen().len(), limited + 1);

    // While the upstream's window lasts, nothing reaches it, whoever asks...
    let started = Instant::now();
    let err = fetch_checked(&c, &rig.repo(3).manifest_url("v1"), b"")
        .await
        .expect_err("still rate limited");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once"
    );
    let secs: u64 = err
        .strip_prefix("429 TOOMANYREQUESTS retry-after=")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!((28..=30).contains(&secs), "{err}");
    let err = fetch_checked(&c, &rig.repo(3).blob_url(&rig.small_layer(3)), b"")
        .await
        .expect_err("still rate limited");
    assert!(err.starts_with("429 TOOMANYREQUESTS"), "{err}");
    assert_eq!(
        rig.proxy.seen().len(),
        limited + 1,
        "{:?}",
        rig.proxy.seen()
    );
    // ...and what the cache holds is still served.
    let r = get(&c, &rig.repo(0).blob_url(&rig.big_layer(0)), &[]).await;
    assert_eq!(r.status, 200);
    let r = send(
        &c,
        "GET",
        &rig.repo(0).manifest_url(rig.images[0].digest()),
        &[("Accept", CONTAINERD_ACCEPT)],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn chaos_every_pull_is_exact_or_a_clean_error() {
    let seed = fault_seed();
    eprintln!("chaos seed {seed} (IMAGECACHE_FAULT_SEED={seed} replays the fault sequence)");
    const IMAGES: usize = 4;
    const CLIENTS: usize = 3;
    const ROUNDS: usize = 4;
    let mut rig = Rig::start(IMAGES, 400_000);
    let mut faults = chaos_faults();
    faults.push(Fault::StallHeaders(Duration::from_millis(2500)));
    rig.proxy.chaos(seed, 0.3, faults);
    let c = client();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        for outcome in pull_concurrently(CLIENTS, &rig.images, &|i| rig.repo(i)).await {
            let key = match checked(outcome) {
                Ok(()) => "exact".to_owned(),
                Err(e) => e.split(':').next().unwrap_or_default().to_owned(),
            };
            *outcomes.entry(key).or_default() += 1;
        }
        // Empty the cache so the next round fetches (and meets faults) again.
        let r = send(
            &c,
            "DELETE",
            &format!("{}{BROAD_PRUNE}", rig.cache.admin_url()),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
    }
    let faults: BTreeMap<String, usize> = rig
        .proxy
        .seen()
        .iter()
        .filter_map(|s| s.fault.as_ref())
        .fold(BTreeMap::new(), |mut m, f| {
            let name = format!("{f:?}");
            *m.entry(name.split(['(', ' ']).next().unwrap_or_default().to_owned())
                .or_default() += 1;
            m
        });
    eprintln!("faults injected: {faults:?}");
    eprintln!("pull outcomes: {outcomes:?}");
    assert!(
        faults.values().sum::<usize>() >= 10,
        "too few faults to mean anything: {faults:?}"
    );
    assert!(
        outcomes.get("exact").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );

    // Whatever happened, the upstream's recovery makes every pull exact, and the files verify.
    rig.proxy.clear();
    // A Retry-After hold from the last round may still run: at most a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..IMAGES {
        pull_checked(&c, &rig.repo(i), &rig.images[i])
            .await
            .unwrap_or_else(|e| panic!("image {i} after recovery: {e}"));
    }
    let _ = &rig.tmp;
    stop_verify_start(&mut rig.cache, "after chaos");
}

#[derive(Default)]
struct Tally {
    exact: usize,
    clean: usize,
    wrong: usize,
    unclean: usize,
    /// After the upstream recovered: pulls that were not exact (what was cached wrong).
    after_recovery_not_exact: usize,
    after_recovery_wrong: usize,
    pulls_after_recovery: usize,
}

impl Tally {
    fn count(&mut self, o: &Outcome) {
        match o {
            Outcome::Exact => self.exact += 1,
            Outcome::Clean(_) => self.clean += 1,
            Outcome::Wrong(e) => {
                eprintln!("wrong: {e}");
                self.wrong += 1
            }
            Outcome::Unclean(e) => {
                eprintln!("unclean: {e}");
                self.unclean += 1
            }
        }
    }
}

/// The same seeded chaos against imagecache and against the CNCF Distribution proxy, each
/// fresh every round in front of the same faulty upstream; then, faults off, every image is
/// pulled once more from the same instance to see what it kept. Writes
/// `target/faults/report.md`. Run with `bench/faults` (about 3 minutes).
#[tokio::test]
#[ignore]
async fn chaos_compared_with_the_distribution_proxy() {
    let seed = fault_seed();
    let rounds: u64 = std::env::var("IMAGECACHE_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    const IMAGES: usize = 4;
    const CLIENTS: usize = 3;
    eprintln!("seed {seed}, {rounds} rounds");
    let rig = Rig::start(IMAGES, 400_000);
    let faults = chaos_faults();
    let c = client();
    let (mut ours, mut theirs) = (Tally::default(), Tally::default());
    for round in 0..rounds {
        for which in ["ours", "proxy"] {
            // A fresh server per round, so every round fetches (and meets faults) again.
            let (cache, dist_proxy);
            let repo_of: Box<dyn Fn(usize) -> Repo> = if which == "ours" {
                cache = cache_in_front_of(&rig.proxy);
                let base = cache.url();
                Box::new(move |i| Repo::new(&base, &format!("{UPSTREAM}/r{i}")))
            } else {
                dist_proxy = Distribution::start_proxy(&rig.proxy.url());
                let base = dist_proxy.url();
                Box::new(move |i| Repo::new(&base, &format!("r{i}")))
            };
            let tally = if which == "ours" {
                &mut ours
            } else {
                &mut theirs
            };
            rig.proxy
                .chaos(seed.wrapping_add(round), 0.3, faults.clone());
            for outcome in pull_concurrently(CLIENTS, &rig.images, &*repo_of).await {
                tally.count(&outcome);
            }
            rig.proxy.clear();
            tokio::time::sleep(Duration::from_millis(1100)).await;
            for i in 0..IMAGES {
                let o = pull_outcome(&c, &repo_of(i), &rig.images[i]).await;
                tally.pulls_after_recovery += 1;
                match o {
                    Outcome::Exact => {}
                    Outcome::Clean(_) => tally.after_recovery_not_exact += 1,
                    Outcome::Wrong(_) => {
                        tally.after_recovery_not_exact += 1;
                        tally.after_recovery_wrong += 1;
                    }
                    Outcome::Unclean(_) => tally.after_recovery_not_exact += 1,
                }
            }
        }
    }
    let pulls = |t: &Tally| t.exact + t.clean + t.wrong + t.unclean;
    let pct = |n: usize, d: usize| 100.0 * n as f64 / d.max(1) as f64;
    let mut report = format!(
        "## Faults: imagecache and the Distribution proxy under the same chaos\n\n\
         Seed {seed}, {rounds} rounds, {CLIENTS} clients x {IMAGES} images per round, 30% of \
         upstream requests faulted (latency, resets, truncation, corruption, 500/503, 429 \
         Retry-After 1, slow-loris).\n\n\
         | | imagecache | Distribution proxy |\n|---|---:|---:|\n"
    );
    for (label, f) in [
        (
            "pulls during faults",
            &(|t: &Tally| pulls(t).to_string()) as &dyn Fn(&Tally) -> String,
        ),
        ("exact", &|t: &Tally| {
            format!("{} ({:.0}%)", t.exact, pct(t.exact, pulls(t)))
        }),
        ("clean error", &|t: &Tally| {
            format!("{} ({:.0}%)", t.clean, pct(t.clean, pulls(t)))
        }),
        ("200 with wrong bytes", &|t: &Tally| t.wrong.to_string()),
        ("error without the OCI envelope, or cut", &|t: &Tally| {
            t.unclean.to_string()
        }),
        ("pulls after recovery not exact", &|t: &Tally| {
            format!(
                "{} of {}",
                t.after_recovery_not_exact, t.pulls_after_recovery
            )
        }),
        ("... of which wrong bytes", &|t: &Tally| {
            t.after_recovery_wrong.to_string()
        }),
    ] {
        report.push_str(&format!("| {label} | {} | {} |\n", f(&ours), f(&theirs)));
    }
    println!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/faults");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.md"), &report).unwrap();
    assert_eq!(ours.wrong, 0, "imagecache served wrong bytes");
    assert_eq!(ours.unclean, 0, "imagecache answered an unclean error");
    assert_eq!(ours.unclean, 0, "imagecache answered an unclean error");
    assert_eq!(
        ours.after_recovery_not_exact, 0,
        "imagecache kept something wrong"
    );
}
