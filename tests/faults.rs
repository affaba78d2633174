//! Hermetic fault tests against a scripted upstream: cut and corrupt transfers, the tag TTL,
//! rate limits and air-gapped mode. What Distribution cannot be made to do, the fake does.

mod support;

use support::fake::FakeUpstream;
use support::http::{client, get, head};
use support::{ImageCache, UPSTREAM, files_under, sha256_digest};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// An OCI manifest over one config and one layer, with its digest.
fn manifest(config: &[u8], layer: &[u8]) -> (Vec<u8>, String) {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": sha256_digest(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": layer.len(), "digest": sha256_digest(layer)}],
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let digest = sha256_digest(&bytes);
    (bytes, digest)
}

fn serve_manifest(fake: &FakeUpstream, repo: &str, reference: &str, bytes: &[u8], digest: &str) {
    fake.route(
        &format!("/v2/{repo}/manifests/{reference}"),
        200,
        &[
            ("Content-Type", MANIFEST_TYPE),
            ("Docker-Content-Digest", digest),
        ],
        bytes.to_vec(),
    );
}

fn cache_for(fake: &FakeUpstream) -> support::ImageCacheBuilder {
    ImageCache::builder().registry(UPSTREAM, &fake.url())
}

fn cached_blob_files(cache: &ImageCache) -> usize {
    files_under(&cache.data_dir().join("blobs")).len()
}

fn temp_files(cache: &ImageCache) -> usize {
    files_under(&cache.data_dir().join("tmp")).len()
}

/// Reads a whole body, reporting a transfer cut short as an error.
async fn fetch_body(url: &str) -> Result<Vec<u8>, String> {
    let resp = client().get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn cut_blob_transfer_caches_nothing_and_the_next_pull_succeeds() {
    let fake = FakeUpstream::start();
    let layer: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha256_digest(&layer);
    let path = format!("/v2/app/blobs/{digest}");
    fake.route_truncated(&path, layer[..50_000].to_vec(), layer.len());
    let cache = cache_for(&fake).start();
    let url = format!("{}/v2/app/blobs/{digest}", cache.url());

    let err = fetch_body(&url)
        .await
        .expect_err("a cut transfer must not look complete");
    assert!(!err.is_empty());
    // The first request and two resumes (retry.attempts 3), each cut again.
    let tries = fake.requests().iter().filter(|(_, p)| *p == path).count();
    assert_eq!(tries, 3);
    assert_eq!(
        cached_blob_files(&cache),
        0,
        "nothing cached from a cut transfer"
    );
    // The temp file goes once the fetch task has seen the cut.
    assert!(
        support::wait_for(std::time::Duration::from_secs(5), || (temp_files(&cache)
            == 0)
            .then_some(()))
        .is_some()
    );

    fake.route(&path, 200, &[], layer.clone());
    assert_eq!(fetch_body(&url).await.unwrap(), layer);
    assert_eq!(cached_blob_files(&cache), 1);
    // Now served from the cache: the upstream sees no further request.
    let before = fake.requests().len();
    assert_eq!(fetch_body(&url).await.unwrap(), layer);
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn corrupt_blob_is_never_cached_or_served_complete() {
    let fake = FakeUpstream::start();
    let layer = vec![42u8; 300_000];
    let digest = sha256_digest(&layer);
    let mut wrong = layer.clone();
    wrong[299_999] = 0;
    fake.route(&format!("/v2/app/blobs/{digest}"), 200, &[], wrong);
    let cache = cache_for(&fake).start();
    let url = format!("{}/v2/app/blobs/{digest}", cache.url());
    assert!(
        fetch_body(&url).await.is_err(),
        "a blob failing verification ends in an error"
    );
    assert_eq!(cached_blob_files(&cache), 0);
    let log = cache.log();
    assert!(
        log.contains("does not match") || log.contains("expected"),
        "the failure is logged"
    );
}

#[tokio::test]
async fn corrupt_manifest_by_digest_is_refused() {
    let fake = FakeUpstream::start();
    let (bytes, digest) = manifest(b"{}", b"layer");
    let mut tampered = bytes.clone();
    tampered.push(b' ');
    serve_manifest(&fake, "app", &digest, &tampered, &digest);
    let cache = cache_for(&fake).start();
    let r = get(
        &client(),
        &format!("{}/v2/app/manifests/{digest}", cache.url()),
        &[],
    )
    .await;
    r.assert_error(502, "DIGEST_INVALID");
    assert_eq!(cached_blob_files(&cache), 0);
}

#[tokio::test]
async fn tags_are_trusted_for_the_ttl_then_rechecked() {
    let fake = FakeUpstream::start();
    let (a, a_digest) = manifest(b"{\"a\":1}", b"la");
    let (b, b_digest) = manifest(b"{\"b\":1}", b"lb");
    serve_manifest(&fake, "app", "v1", &a, &a_digest);
    let data = tempfile::tempdir().unwrap();
    let url = |c: &ImageCache| format!("{}/v2/app/manifests/v1", c.url());
    {
        let cache = cache_for(&fake).tag_ttl("1h").data_dir(data.path()).start();
        let r = get(&client(), &url(&cache), &[]).await;
        assert_eq!(r.header("docker-content-digest"), Some(a_digest.as_str()));
        // The tag moves upstream; within the TTL the cache neither asks nor notices.
        serve_manifest(&fake, "app", "v1", &b, &b_digest);
        let before = fake.requests().len();
        for _ in 0..5 {
            let r = get(&client(), &url(&cache), &[]).await;
            assert_eq!(r.header("docker-content-digest"), Some(a_digest.as_str()));
            let h = head(&client(), &url(&cache), &[]).await;
            assert_eq!(h.header("docker-content-digest"), Some(a_digest.as_str()));
        }
        assert_eq!(
            fake.requests().len(),
            before,
            "no upstream call within the TTL"
        );
    }
    // Same cache, short TTL: the next request re-checks with a HEAD and follows the move.
    let cache = cache_for(&fake).tag_ttl("1s").data_dir(data.path()).start();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = get(&client(), &url(&cache), &[]).await;
    assert_eq!(r.header("docker-content-digest"), Some(b_digest.as_str()));
    assert_eq!(r.body, b);
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .any(|(m, p)| m == "HEAD" && p.starts_with("/v2/app/manifests/v1")),
        "{reqs:?}"
    );
    // The old manifest stays cached by digest.
    let old = get(
        &client(),
        &format!("{}/v2/app/manifests/{a_digest}", cache.url()),
        &[],
    )
    .await;
    assert_eq!(old.body, a);
}

#[tokio::test]
async fn upstream_rate_limit_passes_retry_after_through() {
    let fake = FakeUpstream::start();
    // Longer than a request may wait (retry.maxWait, 10s): passed back, not waited out.
    fake.route(
        "/v2/app/manifests/v1",
        429,
        &[("Retry-After", "60"), ("Content-Type", "application/json")],
        br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#.to_vec(),
    );
    let cache = cache_for(&fake).start();
    let url = format!("{}/v2/app/manifests/v1", cache.url());
    let r = get(&client(), &url, &[]).await;
    r.assert_error(429, "TOOMANYREQUESTS");
    assert_eq!(r.header("retry-after"), Some("60"));
    let asked = fake.requests().len();
    // Within the window the cache answers for the upstream without calling it.
    let r = get(&client(), &url, &[]).await;
    r.assert_error(429, "TOOMANYREQUESTS");
    let left: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((58..=60).contains(&left), "{left}");
    assert_eq!(fake.requests().len(), asked);
}

#[tokio::test]
async fn air_gapped_serves_the_cache_and_never_calls_upstream() {
    let fake = FakeUpstream::start();
    let (m, digest) = manifest(b"{}", b"l");
    serve_manifest(&fake, "app", "v1", &m, &digest);
    let data = tempfile::tempdir().unwrap();
    {
        let cache = cache_for(&fake).data_dir(data.path()).start();
        let r = get(
            &client(),
            &format!("{}/v2/app/manifests/v1", cache.url()),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let before = fake.requests().len();
    let cache = cache_for(&fake)
        .air_gapped(true)
        .tag_ttl("1ms")
        .data_dir(data.path())
        .start();
    let c = client();
    let base = cache.url();
    assert_eq!(
        get(&c, &format!("{base}/v2/app/manifests/v1"), &[])
            .await
            .body,
        m
    );
    assert_eq!(
        get(&c, &format!("{base}/v2/app/manifests/{digest}"), &[])
            .await
            .body,
        m
    );
    get(&c, &format!("{base}/v2/app/manifests/v2"), &[])
        .await
        .assert_error(404, "MANIFEST_UNKNOWN");
    let missing = sha256_digest(b"never cached");
    get(&c, &format!("{base}/v2/app/blobs/{missing}"), &[])
        .await
        .assert_error(404, "BLOB_UNKNOWN");
    assert_eq!(
        fake.requests().len(),
        before,
        "air-gapped mode made upstream calls"
    );
}
