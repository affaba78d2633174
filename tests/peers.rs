//! Replicas that work as one cache (issue 15): three real `imagecache serve` processes on
//! loopback with the same static `peers`, and a CNCF Distribution upstream whose access log
//! counts what the cache fetched (GET response sizes).
//!
//! What must hold: each blob and manifest is fetched from the upstream once for the whole
//! cache (every replica agrees on its owner by rendezvous hashing), every pull is byte-exact,
//! a replica that dies or joins costs no pull, a peer's wrong bytes never reach a client as a
//! complete answer and never enter a cache, an upstream 404 is passed on by the owner, and a
//! peer request is answered from the cache or the upstream, never from another peer.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest as _;
use support::faultproxy::{Fault, FaultProxy, Rule};
use support::http::get;
use support::image::CONTAINERD_ACCEPT;
use support::peers::{metrics, peer_ports, start_replicas, wait_live};
use support::pull::{get_blob_verify, verify_digest_named_files};
use support::*;

const MIB: usize = 1 << 20;
const TAG: &str = "v1";
const PEER_HEADER: &str = "imagecache-peer";

/// `peering` over quick probes (300 ms), so that a test sees peers go and come back fast.
fn quick(peering: Value) -> Value {
    let mut p = json!({"probeInterval": "300ms", "connectTimeout": "300ms"});
    if let (Some(p), Some(extra)) = (p.as_object_mut(), peering.as_object()) {
        p.extend(extra.clone());
    }
    p
}

/// A replica on `port` with `peers`, `upstream` as `upstream.test`, quick probes.
fn replica(upstream: &str, port: u16, peers: &[String], peering: Value) -> ImageCache {
    support::peers::replica(upstream, port, peers, quick(peering))
}

/// `n` replicas listing each other, quick probes, each seeing the others live.
fn peered(upstream: &Distribution, n: usize, peering: Value) -> (Vec<u16>, Vec<ImageCache>) {
    start_replicas(&upstream.url(), n, Some(quick(peering)))
}

fn metric(cache: &ImageCache, name: &str) -> f64 {
    metric_sum(&metrics(cache), name)
}

/// The owner of `digest` among `ports` (the server's rendezvous weight: the first 8 bytes of
/// SHA-256 of `127.0.0.1:PORT`, NUL, the digest; the highest wins, ties by name).
fn owner(ports: &[u16], digest: &str) -> usize {
    let weight = |p: u16| {
        let mut h = sha2::Sha256::new();
        h.update(format!("127.0.0.1:{p}").as_bytes());
        h.update([0u8]);
        h.update(digest.as_bytes());
        let out = h.finalize();
        u64::from_be_bytes(out[..8].try_into().unwrap())
    };
    (0..ports.len())
        .max_by(|&a, &b| {
            weight(ports[a]).cmp(&weight(ports[b])).then_with(|| {
                format!("127.0.0.1:{}", ports[b]).cmp(&format!("127.0.0.1:{}", ports[a]))
            })
        })
        .unwrap()
}

/// Images sharing layers, pushed to the upstream as `team/<name>:v1`.
struct Images {
    _tmp: tempfile::TempDir,
    list: Vec<(String, Image)>,
}

impl Images {
    fn push(upstream: &Distribution, big: usize) -> Images {
        let tmp = tempfile::Builder::new().prefix("peers-").tempdir().unwrap();
        let d = |n: &str| tmp.path().join(n);
        let amd64 = Platform::linux_amd64();
        let platforms = [
            Platform::linux_amd64(),
            Platform::new("linux", "arm64", Some("v8")),
        ];
        let list = vec![
            (
                "base".to_owned(),
                gen_image(&d("base"), 1, &[big, MIB, 300_000], &amd64),
            ),
            (
                "app".to_owned(),
                gen_image(&d("app"), 1, &[big, MIB, 300_000, 2 * MIB], &amd64),
            ),
            (
                "multi".to_owned(),
                gen_multiarch(&d("multi"), 3, &platforms, &[MIB, 500_000]),
            ),
        ];
        for (name, image) in &list {
            upstream.push(&image.source_ref(), &format!("team/{name}:{TAG}"));
        }
        Images { _tmp: tmp, list }
    }

    /// Every distinct manifest and blob, by digest, with its size.
    fn unique(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (_, i) in &self.list {
            for d in i.manifests().into_iter().chain(i.blobs()) {
                m.insert(d.digest, d.size);
            }
        }
        m
    }

    fn blob_digests(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .list
            .iter()
            .flat_map(|(_, i)| i.blobs())
            .map(|d| d.digest)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Pulls every image by tag through `base`, byte-exact.
    async fn pull_all(&self, c: &reqwest::Client, base: &str) {
        for (name, image) in &self.list {
            pull_verify(c, &Repo::new(base, &format!("team/{name}")), TAG, image).await;
        }
    }
}

/// Replica B, a proxy in front of it (for a test to make it corrupt what it relays), and replica
/// A, which knows B only through the proxy and probes a peer it left out again only after a
/// minute; once A sees B live: A, B, the proxy, and A's view of the ports (its own, the proxy's).
fn behind_corrupting_proxy(
    upstream: &Distribution,
) -> (ImageCache, ImageCache, FaultProxy, [u16; 2]) {
    let (ports, _) = peer_ports(2);
    let corrupt = FaultProxy::start(&format!("http://127.0.0.1:{}", ports[1]));
    let corrupt_port: u16 = corrupt.url().rsplit(':').next().unwrap().parse().unwrap();
    let b = replica(
        &upstream.url(),
        ports[1],
        &[format!("http://127.0.0.1:{}", ports[1])],
        json!({}),
    );
    let a = replica(
        &upstream.url(),
        ports[0],
        &[format!("http://127.0.0.1:{}", ports[0]), corrupt.url()],
        json!({"probeInterval": "60s"}),
    );
    wait_live(&a, 1);
    (a, b, corrupt, [ports[0], corrupt_port])
}

/// Waits for the upstream's access log to stop growing (requests still in flight are logged
/// when they finish).
fn upstream_settled(upstream: &Distribution) {
    let len = || std::fs::metadata(upstream.log_path()).map_or(0, |m| m.len());
    let mut last = len();
    let mut stable = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stable < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = len();
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
}

/// Asserts every blob and manifest of `images` was fetched from the upstream exactly once.
fn fetched_once(upstream: &Distribution, images: &Images) {
    upstream_settled(upstream);
    let blobs = upstream.blob_gets_by_digest();
    let manifests = upstream.manifest_gets();
    for (digest, _) in images.unique() {
        let n = blobs.get(&digest).or(manifests.get(&digest)).copied();
        assert_eq!(
            n,
            Some(1),
            "{digest} fetched {n:?} times from the upstream; blob GETs {blobs:?}; manifest GETs {manifests:?}"
        );
    }
    for (reference, n) in &manifests {
        assert!(
            reference.starts_with("sha256:"),
            "manifest fetched by tag {reference} ({n}x): tags are resolved with HEAD and fetched by digest"
        );
    }
}

/// Files of the cache named after a blob's hex digest.
fn blobs_on_disk(cache: &ImageCache) -> Vec<String> {
    files_under(&cache.data_dir().join("blobs"))
        .iter()
        .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_pulls_pinned_to_each_replica_fetch_everything_upstream_once() {
    let upstream = Distribution::start();
    let images = Images::push(&upstream, 8 * MIB);
    // Proxy only: the disk check below is of capacity (each blob once in the cluster).
    let (ports, caches) = peered(&upstream, 3, json!({"nonOwnerBlobs": "proxy"}));
    upstream_settled(&upstream);
    let before = upstream.get_bytes();

    // Three clients, each pinned to a different replica, pull the same images cold at once.
    let t = Instant::now();
    let pulls = caches.iter().map(|cache| {
        let base = cache.url();
        let images = &images;
        async move { images.pull_all(&client(), &base).await }
    });
    futures_util::future::join_all(pulls).await;
    let cold = t.elapsed();
    upstream_settled(&upstream);
    let upstream_bytes = upstream.get_bytes() - before;
    let unique: u64 = images.unique().values().sum();
    let ratio = upstream_bytes as f64 / unique as f64;
    eprintln!(
        "3 clients pinned to 3 replicas, cold: upstream bytes {upstream_bytes} / unique bytes {unique} = {ratio:.2}; wall {:.2}s",
        cold.as_secs_f64()
    );
    assert_eq!(
        upstream_bytes, unique,
        "upstream bytes / unique bytes = {ratio:.2}"
    );
    fetched_once(&upstream, &images);

    // What each replica keeps: every blob on its owner only, every manifest everywhere.
    let on_disk: Vec<Vec<String>> = caches.iter().map(blobs_on_disk).collect();
    for digest in images.blob_digests() {
        let hex = digest.trim_start_matches("sha256:");
        let holders: Vec<usize> = (0..3)
            .filter(|&i| on_disk[i].iter().any(|f| f == hex))
            .collect();
        assert_eq!(
            holders,
            vec![owner(&ports, &digest)],
            "replicas holding {digest}"
        );
    }
    for c in &caches {
        assert!(verify_digest_named_files(c.data_dir()) > 0);
    }

    // Metrics by source, peer errors, peer set size.
    let mut by_source = BTreeMap::new();
    for c in &caches {
        let m = metrics(c);
        for source in ["cache", "peer", "upstream"] {
            *by_source.entry(source).or_insert(0.0) += metric_sum(
                &m,
                &format!("imagecache_served_requests_total{{kind=\"blob\",source=\"{source}\"}}"),
            );
        }
        assert_eq!(metric_sum(&m, "imagecache_peer_errors_total"), 0.0, "{m}");
        assert_eq!(metric_sum(&m, "imagecache_peers{state=\"live\"}"), 2.0);
        assert_eq!(metric_sum(&m, "imagecache_peers{state=\"down\"}"), 0.0);
    }
    // Blob GETs answered: the clients' and the peers' (the owners answering the others).
    let client_gets = 3.0
        * images
            .list
            .iter()
            .map(|(_, i)| i.blobs().len())
            .sum::<usize>() as f64;
    let peer_bytes: f64 = caches
        .iter()
        .map(|c| metric(c, "imagecache_peer_bytes_total{kind=\"blob\"}"))
        .sum();
    let answered: f64 = caches
        .iter()
        .map(|c| metric(c, "imagecache_peer_requests_answered_total{kind=\"blob\"}"))
        .sum();
    eprintln!(
        "blob GETs by source over the three replicas: {by_source:?}; {client_gets} from clients, {answered} from peers"
    );
    // Every client GET is counted once by source; the owners' answers to peers are counted
    // too (peer requests answered also include the owners' cache-only asks, answered 404).
    let served: f64 = by_source.values().sum();
    assert!(
        served > client_gets && served <= client_gets + answered,
        "served {served}, client GETs {client_gets}, peer requests {answered}"
    );
    assert!(
        by_source["peer"] > 0.0 && by_source["upstream"] > 0.0,
        "{by_source:?}"
    );
    assert!(peer_bytes > 0.0 && answered > 0.0);

    // Warm pulls of the biggest blob through its owner and through a non-owner (which keeps
    // no copy: every byte comes from the owner). Printed, never asserted: timing.
    let (_, app) = &images.list[1];
    let big = app.blobs().into_iter().max_by_key(|d| d.size).unwrap();
    let own = owner(&ports, &big.digest);
    let (owner_rate, other_rate) = warm_rates(&caches, own, (own + 1) % 3, app, &big).await;
    eprintln!(
        "proxy: warm pull of a {} MiB blob: owner {owner_rate:.0} MiB/s, non-owner {other_rate:.0} MiB/s: non-owner / owner = {:.2}",
        big.size / MIB as u64,
        other_rate / owner_rate
    );
    // The warm pulls went to the owner's disk, not the upstream.
    fetched_once(&upstream, &images);
}

/// The best of two rounds of warm pulls (2 s each) through `own` and through `other`, MiB/s.
async fn warm_rates(
    caches: &[ImageCache],
    own: usize,
    other: usize,
    image: &support::image::Image,
    blob: &support::image::Desc,
) -> (f64, f64) {
    let c = client();
    let rate = |i: usize| {
        let repo = Repo::new(&caches[i].url(), "team/app");
        let c = c.clone();
        async move {
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed() < Duration::from_secs(2) || n < 3 {
                get_blob_verify(&c, &repo, &blob.digest, image).await;
                n += 1;
            }
            (n * blob.size) as f64 / t.elapsed().as_secs_f64() / MIB as f64
        }
    };
    let (mut o, mut n) = (0f64, 0f64);
    for _ in 0..2 {
        o = o.max(rate(own).await);
        n = n.max(rate(other).await);
    }
    (o, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_relayed_twice_is_kept_by_a_hot_non_owner() {
    let upstream = Distribution::start();
    let images = Images::push(&upstream, 8 * MIB);
    // The default `nonOwnerBlobs: hot`.
    let (ports, caches) = peered(&upstream, 2, json!({}));
    let (_, app) = &images.list[1];
    let big = app.blobs().into_iter().max_by_key(|d| d.size).unwrap();
    let own = owner(&ports, &big.digest);
    let other = 1 - own;
    let hex = big.digest.trim_start_matches("sha256:").to_owned();
    let holds = |i: usize| blobs_on_disk(&caches[i]).contains(&hex);
    let repo = Repo::new(&caches[other].url(), "team/app");
    let c = client();
    let from_peer = |i: usize| {
        metric(
            &caches[i],
            "imagecache_served_requests_total{kind=\"blob\",source=\"peer\"}",
        )
    };

    // First pull through the non-owner: streamed from the owner, nothing kept.
    get_blob_verify(&c, &repo, &big.digest, app).await;
    assert!(holds(own) && !holds(other), "after one relay");
    assert_eq!(
        metric(&caches[other], "imagecache_peer_hot_copies_total"),
        0.0
    );
    // Second: streamed from the owner again, and kept.
    get_blob_verify(&c, &repo, &big.digest, app).await;
    assert_eq!(from_peer(other), 2.0);
    assert!(holds(own) && holds(other), "after a second relay");
    assert_eq!(
        metric(&caches[other], "imagecache_peer_hot_copies_total"),
        1.0
    );
    assert!(verify_digest_named_files(caches[other].data_dir()) > 0);
    // Later pulls read the non-owner's own copy.
    let (owner_rate, other_rate) = warm_rates(&caches, own, other, app, &big).await;
    assert_eq!(from_peer(other), 2.0, "a warm pull went to the owner");
    eprintln!(
        "hot: warm pull of a {} MiB blob: owner {owner_rate:.0} MiB/s, non-owner {other_rate:.0} MiB/s: non-owner / owner = {:.2}",
        big.size / MIB as u64,
        other_rate / owner_rate
    );
    upstream_settled(&upstream);
    assert_eq!(
        upstream.blob_gets_by_digest().get(&big.digest).copied(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_herd_of_16_clients_over_three_replicas_fetches_each_blob_once() {
    let upstream = Distribution::start();
    let images = Images::push(&upstream, 4 * MIB);
    let (_, caches) = peered(&upstream, 3, json!({}));
    let pulls = (0..16).map(|i| {
        let base = caches[i % 3].url();
        let images = &images;
        async move {
            // Each client its own connection pool, in its own order.
            let c = client();
            let mut order: Vec<usize> = (0..images.list.len()).collect();
            order.rotate_left(i % images.list.len());
            for k in order {
                let (name, image) = &images.list[k];
                pull_verify(&c, &Repo::new(&base, &format!("team/{name}")), TAG, image).await;
            }
        }
    });
    futures_util::future::join_all(pulls).await;
    fetched_once(&upstream, &images);
    let errors: f64 = caches
        .iter()
        .map(|c| metric(c, "imagecache_peer_errors_total"))
        .sum();
    assert_eq!(errors, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_pull_costs_no_pull_and_its_digests_move_to_a_new_owner() {
    let upstream = Distribution::start();
    let images = Images::push(&upstream, 4 * MIB);
    let (ports, peers) = peer_ports(3);
    // The third replica reaches the upstream through a proxy that holds every blob answer
    // back for 3 s, so it is busy fetching when it is killed.
    let slow = FaultProxy::start(&upstream.url());
    slow.inject(Rule::new(
        "GET",
        "/blobs/",
        Fault::Latency(Duration::from_secs(3)),
        1000,
    ));
    let a = replica(&upstream.url(), ports[0], &peers, json!({}));
    let b = replica(&upstream.url(), ports[1], &peers, json!({}));
    let mut victim = replica(&slow.url(), ports[2], &peers, json!({}));
    for c in [&a, &b, &victim] {
        wait_live(c, 2);
    }
    let owned_by_victim: Vec<String> = images
        .blob_digests()
        .into_iter()
        .filter(|d| owner(&ports, d) == 2)
        .collect();
    assert!(
        !owned_by_victim.is_empty(),
        "the test needs blobs the victim owns"
    );

    // Clients pinned to the two survivors pull; the victim dies once it fetches upstream.
    let pulls = [a.url(), b.url()].map(|base| {
        let images = &images;
        async move { images.pull_all(&client(), &base).await }
    });
    let killer = async {
        let started = wait_for_async(Duration::from_secs(30), || {
            !slow.seen_for("/blobs/").is_empty()
        })
        .await;
        assert!(started, "the victim never fetched a blob");
        victim.kill9();
    };
    let (_, ()) = tokio::join!(futures_util::future::join_all(pulls), killer);

    // Each digest fetched once by the survivors (the victim's own fetches did not finish for
    // its clients: it died holding them).
    upstream_settled(&upstream);
    let all = upstream.blob_gets_by_digest();
    for digest in images.blob_digests() {
        let by_victim = slow
            .seen_for(&digest)
            .iter()
            .filter(|s| s.method == "GET")
            .count();
        let total = all.get(&digest).copied().unwrap_or(0);
        assert_eq!(
            total - by_victim,
            1,
            "{digest}: {total} upstream GETs, {by_victim} of them by the killed replica"
        );
    }
    for c in [&a, &b] {
        wait_live(c, 1);
        assert_eq!(metric(c, "imagecache_peers{state=\"down\"}"), 1.0);
    }
    // And the survivors serve everything from then on.
    for c in [&a, &b] {
        images.pull_all(&client(), &c.url()).await;
    }
}

/// Polls `f` every 50 ms (without blocking the runtime) until it holds or `timeout` passes.
async fn wait_for_async(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_added_while_pulling_fails_no_pull() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let upstream = Distribution::start();
    let images = Arc::new(Images::push(&upstream, 2 * MIB));
    let (ports, peers) = peer_ports(3);
    let a = replica(&upstream.url(), ports[0], &peers, json!({}));
    let b = replica(&upstream.url(), ports[1], &peers, json!({}));
    // The third is listed but not running: left out.
    for c in [&a, &b] {
        wait_live(c, 1);
    }
    images.pull_all(&client(), &a.url()).await;
    images.pull_all(&client(), &b.url()).await;

    // Pull in a loop through the first two while the third starts and ownership moves.
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = [a.url(), b.url()]
        .into_iter()
        .map(|base| {
            let (images, stop) = (images.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    images.pull_all(&c, &base).await;
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Started from the test's own thread, so it dies with the test.
    let c = replica(&upstream.url(), ports[2], &peers, json!({}));
    let live = wait_for_async(Duration::from_secs(20), || {
        [&a, &b, &c]
            .iter()
            .all(|r| metric(r, "imagecache_peers{state=\"live\"}") == 2.0)
    })
    .await;
    assert!(live, "the new replica never joined");
    // Keep pulling a while after the move, through the new replica as well.
    images.pull_all(&client(), &c.url()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let rounds = l.await.expect("a pull failed while the replica joined");
        assert!(rounds >= 1);
    }
    // What moved to the new owner came from the previous owner, not from the upstream.
    fetched_once(&upstream, &images);
    for digest in images.blob_digests() {
        if owner(&ports, &digest) == 2 {
            let hex = digest.trim_start_matches("sha256:").to_owned();
            assert!(
                blobs_on_disk(&c).contains(&hex),
                "{digest} did not move to its new owner"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_serving_corrupt_bytes_never_reaches_a_client_and_the_upstream_serves() {
    let upstream = Distribution::start();
    let images = Images::push(&upstream, 2 * MIB);
    // B behind a proxy that corrupts every blob and manifest it relays.
    let (a, b, corrupt, view) = behind_corrupting_proxy(&upstream);
    let blob = images
        .blob_digests()
        .into_iter()
        .find(|d| owner(&view, d) == 1)
        .expect("a blob the corrupting peer owns");
    let (image, repo) = images
        .list
        .iter()
        .find(|(_, i)| i.blobs().iter().any(|d| d.digest == blob))
        .map(|(n, i)| (i, Repo::new(&a.url(), &format!("team/{n}"))))
        .unwrap();
    corrupt.inject(Rule::new("GET", "/blobs/", Fault::Corrupt, 1000));
    corrupt.inject(Rule::new("GET", "/manifests/", Fault::Corrupt, 1000));

    // The client gets the exact bytes, a transfer cut short, or (when the fetch failed before
    // its answer started) an OCI error; never wrong bytes in full.
    let c = client();
    let url = repo.blob_url(&blob);
    match c.get(&url).send().await {
        // Cut before the headers went out (the body failed before its first chunk).
        Err(e) => eprintln!("first pull of {blob} through the corrupting peer: cut ({e})"),
        Ok(first) => {
            let status = first.status();
            match first.bytes().await {
                Ok(body) if status != 200 => {
                    let err: Value = serde_json::from_slice(&body)
                        .unwrap_or_else(|e| panic!("{status} without an OCI error body: {e}"));
                    assert_eq!(err["errors"][0]["code"], "DIGEST_INVALID", "{err}");
                    eprintln!("first pull of {blob} through the corrupting peer: {status} {err}");
                }
                Ok(body) => {
                    assert_eq!(
                        sha256_digest(&body),
                        blob,
                        "a complete answer with wrong bytes"
                    );
                }
                Err(e) => eprintln!("first pull of {blob} through the corrupting peer: cut ({e})"),
            }
        }
    }
    assert!(
        !corrupt.seen_for(&blob).is_empty(),
        "A never asked the corrupting peer"
    );
    assert!(metric(&a, "imagecache_peer_errors_total{reason=\"digest\"}") >= 1.0);
    assert_eq!(metric(&a, "imagecache_peers{state=\"down\"}"), 1.0);
    // The peer is left out: the next pull reads the upstream, byte-exact.
    get_blob_verify(&c, &repo, &blob, image).await;
    // Every image pulls byte-exact (the corrupting peer is down), and the cache holds only
    // content that hashes right.
    images.pull_all(&c, &a.url()).await;
    assert!(verify_digest_named_files(a.data_dir()) > 0);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_manifest_from_a_peer_falls_back_to_the_upstream_in_the_same_request() {
    let upstream = Distribution::start();
    let images = Images::push(&upstream, MIB);
    let (a, _b, corrupt, view) = behind_corrupting_proxy(&upstream);
    corrupt.inject(Rule::new("GET", "/manifests/", Fault::Corrupt, 1000));
    // A manifest (by digest) the corrupting peer owns in A's view.
    let (name, image, manifest) = images
        .list
        .iter()
        .flat_map(|(n, i)| i.manifests().into_iter().map(move |m| (n, i, m)))
        .find(|(_, _, m)| owner(&view, &m.digest) == 1)
        .expect("a manifest the corrupting peer owns");
    let repo = Repo::new(&a.url(), &format!("team/{name}"));
    let c = client();
    support::pull::get_manifest_verify(&c, &repo, &manifest.digest, image, &manifest.digest).await;
    assert!(!corrupt.seen_for(&manifest.digest).is_empty());
    assert_eq!(
        metric(&a, "imagecache_peer_errors_total{reason=\"digest\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &a,
            "imagecache_served_requests_total{kind=\"manifest\",source=\"upstream\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_404_is_passed_on_by_the_owner_and_peer_requests_are_not_forwarded() {
    let upstream = Distribution::start();
    let images = Images::push(&upstream, MIB);
    let (ports, caches) = peered(&upstream, 3, json!({}));
    let c = client();

    // A blob and a manifest the upstream does not have, asked through a non-owner: the owner
    // asks the upstream once and its 404 is passed on.
    let missing = sha256_digest(b"nobody pushed this");
    let own = owner(&ports, &missing);
    let other = (own + 1) % 3;
    let repo = Repo::new(&caches[other].url(), "team/app");
    get(&c, &repo.blob_url(&missing), &[])
        .await
        .assert_error(404, "BLOB_UNKNOWN");
    get(
        &c,
        &repo.manifest_url(&missing),
        &[("Accept", CONTAINERD_ACCEPT)],
    )
    .await
    .assert_error(404, "MANIFEST_UNKNOWN");
    upstream_settled(&upstream);
    assert_eq!(upstream.blob_gets_by_digest().get(&missing), Some(&1));
    assert_eq!(upstream.manifest_gets().get(&missing), Some(&1));
    assert_eq!(
        metric(&caches[own], "imagecache_peer_requests_answered_total"),
        2.0
    );

    // A peer request at a replica that does not own the blob: answered from the upstream,
    // never from (or through) the owner. (The replica is chosen from the blob: with three
    // replicas on random ports, every blob of an image may have one owner.)
    let (_, app) = &images.list[1];
    let blob = app.blobs()[0].digest.clone();
    let blob_owner = owner(&ports, &blob);
    let asked = (blob_owner + 1) % 3;
    let repo = Repo::new(&caches[asked].url(), "team/app");
    let answered_before = metric(
        &caches[blob_owner],
        "imagecache_peer_requests_answered_total",
    );
    let r = get(&c, &repo.blob_url(&blob), &[(PEER_HEADER, "test")]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == app.read(&blob), "peer answer bytes");
    assert_eq!(
        metric(
            &caches[blob_owner],
            "imagecache_peer_requests_answered_total"
        ),
        answered_before,
        "the peer request was forwarded to the owner"
    );
    assert_eq!(metric(&caches[asked], "imagecache_peer_bytes_total"), 0.0);
    upstream_settled(&upstream);
    assert_eq!(upstream.blob_gets_by_digest().get(&blob), Some(&1));

    // The header grants nothing: the allowlist applies.
    let denied = get(
        &c,
        &format!(
            "{}/v2/team/app/blobs/{blob}?ns=evil.example",
            caches[asked].url()
        ),
        &[(PEER_HEADER, "test")],
    )
    .await;
    denied.assert_error(403, "DENIED");

    // A cache-only ask for what a replica does not hold: 404, and nothing fetched.
    let other_blob = app
        .blobs()
        .into_iter()
        .map(|d| d.digest)
        .find(|d| *d != blob)
        .unwrap();
    let gets_before = upstream.count_blob_gets();
    get(
        &c,
        &repo.blob_url(&other_blob),
        &[(PEER_HEADER, "test"), ("imagecache-peer-cached", "1")],
    )
    .await
    .assert_error(404, "BLOB_UNKNOWN");
    upstream_settled(&upstream);
    assert_eq!(upstream.count_blob_gets(), gets_before);
}
