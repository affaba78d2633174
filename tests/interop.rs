//! Interoperability tests of `imagecache serve` against a real upstream
//! (CNCF Distribution) and real clients (skopeo, containerd-style HTTP).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::http::{get, head, send, send_body};
use support::image::{CONTAINERD_ACCEPT, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use support::pull::{get_blob_verify, get_manifest_verify, verify_digest_named_files};
use support::skopeo::pull_to_dir;
use support::*;

const MIB: usize = 1 << 20;

fn platforms3() -> Vec<Platform> {
    vec![
        Platform::linux_amd64(),
        Platform::new("linux", "arm64", Some("v8")),
        Platform::new("linux", "arm", Some("v7")),
    ]
}

/// Harness self-check, needs only Distribution and skopeo: generated images push
/// and pull back byte-exact, and the access log counts what was fetched.
#[test]
fn distribution_harness_works() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();

    let multi = gen_multiarch(&tmp.path().join("multi"), 1, &platforms3(), &[1000, 70_000]);
    assert_eq!(multi.top.media_type, OCI_INDEX);
    dist.push(&multi.source_ref(), "team/multi:v1");
    let v2 = gen_image_v2s2(&tmp.path().join("v2"), 2, &[5000], &Platform::linux_amd64());
    assert_eq!(v2.top.media_type, DOCKER_MANIFEST);
    dist.push(&v2.source_ref(), "v2:v1");

    let before = dist.count_blob_gets();
    let out = tmp.path().join("out-multi");
    pull_to_dir(&dist.docker_ref("team/multi:v1"), &out).unwrap();
    assert_copy_matches(&out, &multi);
    let out = tmp.path().join("out-v2");
    pull_to_dir(&dist.docker_ref("v2:v1"), &out).unwrap();
    assert_copy_matches(&out, &v2);

    // Every blob was fetched exactly once by the two pulls.
    let gets = dist.blob_gets_by_digest();
    let expected: usize = multi.blobs().len() + v2.blobs().len();
    assert_eq!(dist.count_blob_gets() - before, expected, "{gets:?}");
    for b in multi.blobs().iter().chain(&v2.blobs()) {
        assert_eq!(gets.get(&b.digest), Some(&1), "{}", b.digest);
    }
    assert!(
        dist.requests()
            .iter()
            .any(|(m, p)| m == "GET" && p == "/v2/team/multi/manifests/v1")
    );

    // Layers are real gzip'd tars.
    let layer = &multi.children[1].layers[1];
    let path = tmp.path().join("layer.tgz");
    std::fs::write(&path, multi.read(&layer.digest)).unwrap();
    let list = std::process::Command::new("tar")
        .arg("tzvf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("layer1/data.bin"));

    // `--format v2s2` conversion of an OCI image keeps config and layer blobs.
    let oci = gen_image(
        &tmp.path().join("oci"),
        3,
        &[3000],
        &Platform::linux_amd64(),
    );
    skopeo_copy_ok(
        &oci.source_ref(),
        &dist.docker_ref("conv:v1"),
        &["--format", "v2s2"],
    );
    let out = tmp.path().join("out-conv");
    pull_to_dir(&dist.docker_ref("conv:v1"), &out).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["mediaType"], DOCKER_MANIFEST);
    assert_eq!(
        m["config"]["digest"],
        oci.children[0].config.digest.as_str()
    );
    assert_eq!(
        m["layers"][0]["digest"],
        oci.children[0].layers[0].digest.as_str()
    );

    // Stop/restart on the same port and storage.
    let mut dist = dist;
    dist.kill();
    assert!(pull_to_dir(&dist.docker_ref("v2:v1"), &tmp.path().join("down")).is_err());
    dist.restart();
    let out = tmp.path().join("out-v2-again");
    pull_to_dir(&dist.docker_ref("v2:v1"), &out).unwrap();
    assert_copy_matches(&out, &v2);

    // A Distribution pull-through proxy in front of it serves the same bytes.
    let proxy = Distribution::start_proxy(&dist.url());
    let out = tmp.path().join("out-proxy");
    pull_to_dir(&proxy.docker_ref("team/multi:v1"), &out).unwrap();
    assert_copy_matches(&out, &multi);

    // The HTTP pull helpers and the raw client agree with a reference registry.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client();
        pull_verify(&c, &Repo::new(&dist.url(), "team/multi"), "v1", &multi).await;
        pull_verify(&c, &Repo::new(&dist.url(), "v2"), v2.digest(), &v2).await;
    });
    let blob = &v2.blobs()[0];
    let r = raw_request(
        &dist.addr(),
        "GET",
        &format!("/v2/v2/blobs/{}", blob.digest),
        &[],
    )
    .unwrap();
    assert_eq!((r.status, r.body == v2.read(&blob.digest)), (200, true));
    let r = raw_request(&dist.addr(), "GET", "/v2/v2/manifests/nope", &[]).unwrap();
    r.assert_error(404, "MANIFEST_UNKNOWN");
}

// ---------------------------------------------------------------------------
// Tests of the server. Each one starts its own Distribution and imagecache.
// ---------------------------------------------------------------------------

fn in_path(cache: &ImageCache, repo: &str) -> Repo {
    Repo::new(&cache.url(), &format!("{UPSTREAM}/{repo}"))
}

/// Adds tag `to` upstream by re-putting the manifest of tag `from`.
async fn tag_upstream(c: &reqwest::Client, dist: &Distribution, repo: &str, from: &str, to: &str) {
    let m = get(
        c,
        &format!("{}/v2/{repo}/manifests/{from}", dist.url()),
        &[("Accept", CONTAINERD_ACCEPT)],
    )
    .await;
    assert_eq!(m.status, 200);
    let ct = m.header("content-type").unwrap().to_string();
    let url = format!("{}/v2/{repo}/manifests/{to}", dist.url());
    let r = send_body(c, "PUT", &url, &[("Content-Type", &ct)], m.body).await;
    assert_eq!(r.status, 201, "tagging {repo}:{to}: {}", r.text());
}

/// a. skopeo copy --all of a multi-arch OCI index and of a Docker schema2 image,
/// in-path and through the default registry, byte-exact; repeat copies hit the cache only.
#[test]
fn skopeo_copy_through_cache_is_byte_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let multi = gen_multiarch(
        &tmp.path().join("multi"),
        10,
        &platforms3(),
        &[2000, 300_000],
    );
    let v2 = gen_image_v2s2(
        &tmp.path().join("v2"),
        11,
        &[200_000, 5000],
        &Platform::linux_amd64(),
    );
    dist.push(&multi.source_ref(), "team/multi:v1");
    dist.push(&v2.source_ref(), "team/v2:v1");
    let cache = ImageCache::start_for(&dist);

    for (image, repo) in [(&multi, "team/multi"), (&v2, "team/v2")] {
        for prefix in [format!("{UPSTREAM}/"), String::new()] {
            let src = cache.docker_ref(&format!("{prefix}{repo}:v1"));
            let out = tmp
                .path()
                .join(format!("{}-1", src.replace(['/', ':'], "_")));
            pull_to_dir(&src, &out).unwrap_or_else(|e| panic!("{e}\n{}", cache.log_tail()));
            assert_copy_matches(&out, image);
            let gets = dist.count_blob_gets();

            let out = tmp
                .path()
                .join(format!("{}-2", src.replace(['/', ':'], "_")));
            pull_to_dir(&src, &out).unwrap_or_else(|e| panic!("{e}\n{}", cache.log_tail()));
            assert_copy_matches(&out, image);
            assert_eq!(
                dist.count_blob_gets(),
                gets,
                "second copy of {src} fetched blobs upstream"
            );
        }
    }
    // One upstream fetch per blob over all eight copies.
    let gets = dist.blob_gets_by_digest();
    for b in multi.blobs().iter().chain(&v2.blobs()) {
        assert_eq!(
            gets.get(&b.digest),
            Some(&1),
            "upstream GETs of {}: {gets:?}",
            b.digest
        );
    }
}

/// b. containerd 1.6 mirror mode: `?ns=` names the upstream, no `/v2/` first.
#[tokio::test]
async fn containerd_ns_mirror_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let image = gen_multiarch(
        &tmp.path().join("img"),
        20,
        &platforms3()[..2],
        &[1000, 200_000],
    );
    dist.push(&image.source_ref(), "library/app:1.0");
    // The default registry points at a dead port: only `?ns=` can find the image.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let cache = ImageCache::builder()
        .registry(UPSTREAM, &dead)
        .registry(&dist.addr(), &dist.url())
        .default_registry(UPSTREAM)
        .start();
    let c = client();
    let repo =
        Repo::new(&cache.url(), "library/app").with_ns(&format!("127.0.0.1%3A{}", dist.port()));

    let r = head(
        &c,
        &repo.manifest_url("1.0"),
        &[("Accept", CONTAINERD_ACCEPT)],
    )
    .await;
    assert_eq!(r.status, 200, "HEAD tag with ns");
    assert_eq!(r.header("docker-content-digest"), Some(image.digest()));
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(
        r.header("content-length"),
        Some(image.top.size.to_string().as_str())
    );

    get_manifest_verify(&c, &repo, image.digest(), &image, image.digest()).await;
    for ch in &image.children {
        get_manifest_verify(&c, &repo, &ch.manifest.digest, &image, &ch.manifest.digest).await;
        for b in std::iter::once(&ch.config).chain(&ch.layers) {
            get_blob_verify(&c, &repo, &b.digest, &image).await;
        }
    }
    assert!(
        dist.requests()
            .iter()
            .any(|(_, p)| p.starts_with("/v2/library/app/"))
    );
}

/// c. 16 clients pull the same uncached image at once: all byte-exact, one upstream fetch each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_pulls_fetch_upstream_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let image = Arc::new(gen_image(
        &tmp.path().join("img"),
        30,
        &[4 * MIB, MIB, 3000],
        &Platform::linux_amd64(),
    ));
    dist.push(&image.source_ref(), "conc/app:v1");
    let cache = ImageCache::start_for(&dist);
    let repo = in_path(&cache, "conc/app");

    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (image, repo, barrier) = (image.clone(), repo.clone(), barrier.clone());
            tokio::spawn(async move {
                let c = client();
                barrier.wait().await;
                get_manifest_verify(&c, &repo, "v1", &image, image.digest()).await;
                // Everyone asks for the big layer first, at the same moment.
                barrier.wait().await;
                let mut blobs = image.blobs();
                blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
                for b in blobs {
                    get_blob_verify(&c, &repo, &b.digest, &image).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }

    let gets = dist.blob_gets_by_digest();
    for b in image.blobs() {
        assert_eq!(
            gets.get(&b.digest),
            Some(&1),
            "upstream GETs of {} ({} bytes): {gets:?}",
            b.digest,
            b.size
        );
    }
    let manifest_gets: usize = dist.manifest_gets().values().sum();
    assert_eq!(
        manifest_gets,
        1,
        "upstream manifest GETs: {:?}",
        dist.manifest_gets()
    );
}

/// d. Upstream down: cached digests and (stale) tags keep working; misses fail cleanly.
#[tokio::test]
async fn upstream_down_serves_from_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dist = Distribution::start();
    let image = gen_multiarch(&tmp.path().join("img"), 40, &platforms3()[..2], &[50_000]);
    dist.push(&image.source_ref(), "down/app:v1");
    let cache = ImageCache::builder()
        .registry(UPSTREAM, &dist.url())
        .tag_ttl("1s")
        .start();
    let c = client();
    let repo = in_path(&cache, "down/app");
    pull_verify(&c, &repo, "v1", &image).await;
    pull_verify(&c, &repo, image.digest(), &image).await;

    dist.kill();
    tokio::time::sleep(Duration::from_secs(2)).await; // the tag is now past its TTL

    pull_verify(&c, &repo, image.digest(), &image).await;
    pull_verify(&c, &repo, "v1", &image).await; // stale-if-error
    let r = head(
        &c,
        &repo.manifest_url("v1"),
        &[("Accept", CONTAINERD_ACCEPT)],
    )
    .await;
    assert_eq!(
        (r.status, r.header("docker-content-digest")),
        (200, Some(image.digest()))
    );

    let unknown_digest = format!("sha256:{}", "0".repeat(64));
    for url in [
        repo.manifest_url("nope"),
        repo.manifest_url(&unknown_digest),
        repo.blob_url(&unknown_digest),
    ] {
        let r = get(&c, &url, &[("Accept", CONTAINERD_ACCEPT)]).await;
        assert!(
            [404, 502, 503, 504].contains(&r.status),
            "GET {url} with upstream down: {} {}",
            r.status,
            r.text()
        );
        r.error_codes();
    }
}

/// e. SIGKILL in the middle of concurrent pulls, restart on the same cache:
/// no temp files survive and everything served afterwards verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_pulls_then_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let image = Arc::new(gen_image(
        &tmp.path().join("img"),
        50,
        &[16 * MIB; 4],
        &Platform::linux_amd64(),
    ));
    dist.push(&image.source_ref(), "big/app:v1");
    let mut cache = ImageCache::start_for(&dist);
    let repo = in_path(&cache, "big/app");

    let received = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (image, repo, received, completed) = (
                image.clone(),
                repo.clone(),
                received.clone(),
                completed.clone(),
            );
            tokio::spawn(async move {
                let c = client();
                let mut blobs = image.blobs();
                let n = blobs.len();
                blobs.rotate_left(i % n);
                for b in blobs {
                    let Ok(mut r) = c.get(repo.blob_url(&b.digest)).send().await else {
                        return;
                    };
                    loop {
                        match r.chunk().await {
                            Ok(Some(chunk)) => {
                                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            }
                            Ok(None) => break,
                            Err(_) => return,
                        }
                    }
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < 8 * MIB as u64 {
        assert!(
            Instant::now() < deadline,
            "pulls made no progress:\n{}",
            cache.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cache.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    // Whatever was committed before the kill is complete and verified.
    verify_digest_named_files(cache.data_dir());
    let total = 4 * image.blobs().len();
    assert!(
        completed.load(Ordering::Relaxed) < total,
        "every pull finished before the kill"
    );

    cache.restart();
    let tmp_dir = cache.data_dir().join("tmp");
    let left = support::files_under(&tmp_dir);
    assert!(left.is_empty(), "temp files survived the restart: {left:?}");

    let c = client();
    pull_verify(&c, &repo, "v1", &image).await;
    pull_verify(&c, &repo, image.digest(), &image).await;
    let left = support::wait_for(Duration::from_secs(5), || {
        support::files_under(&tmp_dir).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "temp files left after pulls: {:?}",
        support::files_under(&tmp_dir)
    );
    // The store names content files by digest (blobs/sha256/xx/<hex>): all of them verify.
    let checked = verify_digest_named_files(cache.data_dir());
    assert!(
        checked > image.blobs().len(),
        "only {checked} digest-named files in the cache"
    );
}

/// f. Hostile or unsupported requests get OCI error envelopes, never a 500 or a crash.
#[tokio::test]
async fn bad_input_gets_clean_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let image = gen_image(
        &tmp.path().join("img"),
        60,
        &[3000],
        &Platform::linux_amd64(),
    );
    dist.push(&image.source_ref(), "bad/app:v1");
    dist.push(&image.source_ref(), "a/b:x");
    // Distribution 2.8.2 refuses manifest pushes over 4 MiB ("http: request body too
    // large"), so an oversized manifest comes from a scripted upstream instead.
    let fake = support::fake::FakeUpstream::start();
    let big = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": image.children[0].config.digest, "size": image.children[0].config.size},
        "layers": [],
        "annotations": {"pad": "x".repeat(5 * MIB)},
    }))
    .unwrap();
    let big_digest = support::sha256_digest(&big);
    fake.route(
        "/v2/big/app/manifests/v1",
        200,
        &[
            ("Content-Type", OCI_MANIFEST),
            ("Docker-Content-Digest", &big_digest),
        ],
        big,
    );
    let cache = ImageCache::builder()
        .registry(UPSTREAM, &dist.url())
        .registry("fake.test", &fake.url())
        .start();
    let c = client();
    let addr = cache.addr();
    let base = cache.url();

    let upstream_before = dist.requests().len();
    // Path tricks, sent verbatim (a URL parser would normalise them away): a client
    // error, never a success or a 5xx. A mangled registry segment may also be refused
    // as an unlisted upstream.
    let invalid = [400, 404];
    for (target, allowed) in [
        ("/v2/../../etc/passwd/manifests/latest", &invalid[..]),
        ("/v2/upstream.test/a/%2e%2e/b/manifests/x", &invalid),
        ("/v2/upstream.test/a/../../b/manifests/x", &invalid),
        ("/v2/upstream.test/a%2Fb/manifests/x", &invalid),
        ("/v2/upstream.test%2Fa/b/manifests/x", &[400, 403, 404]),
        ("/v2/upstream.test/bad/app/blobs/sha256:xyz", &invalid),
        ("/v2/upstream.test/bad/app/manifests/sha256:xyz", &invalid),
        ("/v2/upstream.test/bad/app/blobs/sha256:abc123", &invalid),
        (
            "/v2/upstream.test/bad/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            &invalid,
        ),
        ("/v2/upstream.test/Bad/App/manifests/v1", &invalid),
    ] {
        let r =
            raw_request(&addr, "GET", target, &[]).unwrap_or_else(|e| panic!("GET {target}: {e}"));
        assert!(
            allowed.contains(&r.status),
            "GET {target}: {} {}",
            r.status,
            r.text()
        );
        r.error_codes();
    }
    let r = raw_request(
        &addr,
        "GET",
        "/v2/upstream.test/bad/app/blobs/sha256:xyz",
        &[],
    )
    .unwrap();
    r.assert_error(400, "DIGEST_INVALID");
    // None of that may reach the upstream.
    let forwarded: Vec<_> = dist
        .requests()
        .split_off(upstream_before)
        .into_iter()
        .filter(|(_, p)| p != "/v2/")
        .collect();
    assert!(
        forwarded.is_empty(),
        "invalid requests were forwarded upstream: {forwarded:?}"
    );

    // Unlisted upstreams, in-path and via ns.
    get(
        &c,
        &format!("{base}/v2/evil.example.com/x/manifests/latest"),
        &[],
    )
    .await
    .assert_error(403, "DENIED");
    get(
        &c,
        &format!("{base}/v2/x/manifests/latest?ns=evil.example.com"),
        &[],
    )
    .await
    .assert_error(403, "DENIED");

    // Push endpoints.
    send(
        &c,
        "POST",
        &format!("{base}/v2/upstream.test/x/blobs/uploads/"),
        &[],
    )
    .await
    .assert_error(405, "UNSUPPORTED");
    let manifest = image.read(image.digest());
    send_body(
        &c,
        "PUT",
        &format!("{base}/v2/upstream.test/x/manifests/v1"),
        &[("Content-Type", OCI_MANIFEST)],
        manifest,
    )
    .await
    .assert_error(405, "UNSUPPORTED");

    // Deletes: a tag is refused, an unknown digest is 404, a cached one is dropped and refetched.
    let repo = in_path(&cache, "bad/app");
    pull_verify(&c, &repo, "v1", &image).await;
    send(&c, "DELETE", &repo.manifest_url("v1"), &[])
        .await
        .assert_error(400, "UNSUPPORTED");
    let r = send(
        &c,
        "DELETE",
        &repo.manifest_url(&format!("sha256:{}", "0".repeat(64))),
        &[],
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    r.error_codes();
    let manifest_gets = |d: &Distribution| d.manifest_gets().values().sum::<usize>();
    let before = manifest_gets(&dist);
    let r = send(&c, "DELETE", &repo.manifest_url(image.digest()), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    get_manifest_verify(&c, &repo, image.digest(), &image, image.digest()).await;
    assert!(
        manifest_gets(&dist) > before,
        "deleted manifest was not refetched upstream"
    );
    assert!(
        dist.requests().iter().all(|(m, _)| m != "DELETE"),
        "a delete reached the upstream"
    );

    // A manifest over 4 MiB from upstream.
    let r = get(
        &c,
        &format!("{base}/v2/fake.test/big/app/manifests/v1"),
        &[("Accept", CONTAINERD_ACCEPT)],
    )
    .await;
    assert!(r.status >= 400, "oversized manifest accepted: {}", r.status);
    r.error_codes();

    let r = get(&c, &format!("{base}/v2/"), &[]).await;
    assert_eq!(r.status, 200, "server unhealthy after bad input");
}

/// g. Range requests on a cached blob; tags/list pagination with `Link`.
#[tokio::test]
async fn range_requests_and_tag_pagination() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let image = gen_image(
        &tmp.path().join("img"),
        70,
        &[10_000],
        &Platform::linux_amd64(),
    );
    dist.push(&image.source_ref(), "rng/app:v1");
    let c = client();
    for t in ["v2", "a", "B"] {
        tag_upstream(&c, &dist, "rng/app", "v1", t).await;
    }
    let cache = ImageCache::start_for(&dist);
    let repo = in_path(&cache, "rng/app");
    pull_verify(&c, &repo, "v1", &image).await;

    let layer = &image.children[0].layers[0];
    let data = image.read(&layer.digest);
    let size = data.len();
    let r = get(
        &c,
        &repo.blob_url(&layer.digest),
        &[("Range", "bytes=10-99")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-99/{size}").as_str())
    );
    assert!(r.body == data[10..100]);
    let r = get(
        &c,
        &repo.blob_url(&layer.digest),
        &[("Range", "bytes=100-")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-{}/{size}", size - 1).as_str())
    );
    assert!(r.body == data[100..]);

    let all: BTreeSet<String> = ["v1", "v2", "a", "B"].map(String::from).into();
    let r = get(&c, &repo.tags_url(""), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed: BTreeSet<String> = serde_json::from_value(r.json()["tags"].clone()).unwrap();
    assert_eq!(listed, all);

    let mut url = repo.tags_url("n=1");
    let mut paged = Vec::new();
    for _ in 0..10 {
        let r = get(&c, &url, &[]).await;
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        let tags: Vec<String> = serde_json::from_value(r.json()["tags"].clone()).unwrap();
        assert!(tags.len() <= 1, "n=1 returned {tags:?}");
        paged.extend(tags);
        let Some(link) = r.header("link") else { break };
        assert!(link.contains("rel=\"next\""), "Link: {link}");
        let target = &link[link.find('<').unwrap() + 1..link.find('>').unwrap()];
        url = if target.starts_with('/') {
            format!("{}{target}", cache.url())
        } else {
            target.to_string()
        };
    }
    assert!(paged.len() > 1, "no pagination happened: {paged:?}");
    let unique: BTreeSet<String> = paged.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        paged.len(),
        "duplicates across pages: {paged:?}"
    );
    assert_eq!(unique, all);
}
