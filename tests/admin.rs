//! Cache administration against a server filled from a real Distribution upstream: every curl
//! example of the admin REST reference (verbatim but for host and port), the prune engine
//! through `/cmd/prune` and `POST /admin/v1/prune`, the CLI on the cache files, and pruning
//! while clients pull.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::http::client;
use support::{
    Distribution, Image, ImageCache, Platform, Repo, gen_image, gen_multiarch, pull_verify,
};

const BIN: &str = env!("CARGO_BIN_EXE_imagecache");

struct Fixture {
    _dist: Distribution,
    cache: ImageCache,
    _dirs: Vec<tempfile::TempDir>,
    images: Vec<(Repo, Image)>,
}

/// Two images cached 30 days ago (a multi-arch calico index and busybox) and four recent ones
/// (cilium from quay.io, three apps), all from one Distribution under two registry names.
async fn fixture() -> Fixture {
    let dist = Distribution::start();
    let mut dirs = Vec::new();
    let mut make = |f: &dyn Fn(&Path) -> Image| {
        let d = tempfile::tempdir().unwrap();
        let img = f(d.path());
        dirs.push(d);
        img
    };
    let platforms = [
        Platform::linux_amd64(),
        Platform::new("linux", "arm64", None),
    ];
    let specs: Vec<(&str, &str, Image)> = vec![
        (
            "calico/node:v3.27.0",
            "calico/node",
            make(&|d| gen_multiarch(d, 1, &platforms, &[20_000])),
        ),
        (
            "library/busybox:1.36",
            "busybox",
            make(&|d| gen_image(d, 2, &[20_000], &Platform::linux_amd64())),
        ),
        (
            "cilium/cilium:v1.15",
            "quay.io/cilium/cilium",
            make(&|d| gen_image(d, 3, &[50_000], &Platform::linux_amd64())),
        ),
        (
            "team/app1:1",
            "team/app1",
            make(&|d| gen_image(d, 4, &[50_000], &Platform::linux_amd64())),
        ),
        (
            "team/app2:1",
            "team/app2",
            make(&|d| gen_image(d, 5, &[50_000], &Platform::linux_amd64())),
        ),
        (
            "team/app3:1",
            "team/app3",
            make(&|d| gen_image(d, 6, &[50_000], &Platform::linux_amd64())),
        ),
    ];
    for (repo_tag, _, img) in &specs {
        dist.push(&img.source_ref(), repo_tag);
    }
    let mut cache = ImageCache::builder()
        .registry("docker.io", &dist.url())
        .registry("quay.io", &dist.url())
        .default_registry("docker.io")
        .start();
    let c = client();
    let mut images = Vec::new();
    for (repo_tag, path, img) in specs {
        let repo = Repo::new(&cache.url(), path);
        let tag = repo_tag.rsplit_once(':').unwrap().1;
        pull_verify(&c, &repo, tag, &img).await;
        images.push((repo, img));
    }
    // Backdate calico and busybox while the server is stopped (it flushes pull times on exit).
    cache.terminate();
    backdate(cache.data_dir(), &["calico/node", "library/busybox"], 30);
    cache.restart();
    Fixture {
        _dist: dist,
        cache,
        _dirs: dirs,
        images,
    }
}

/// Moves `created` and `lastPulled` of the matching manifest records `days` into the past.
fn backdate(data: &Path, repositories: &[&str], days: i64) {
    let when = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days)).to_string();
    for f in support::files_under(&data.join("manifests")) {
        let mut v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let hit = v["references"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| repositories.contains(&r["repository"].as_str().unwrap()));
        if hit {
            v["created"] = when.clone().into();
            v["lastPulled"] = when.clone().into();
            std::fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
        }
    }
}

/// Runs a curl command line (from the reference, host and port replaced) and returns stdout.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .arg("-sS")
        .arg("--fail-with-body")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

fn manifest_urls(admin: &str) -> Vec<String> {
    rows(&curl(&[&format!("{admin}/cmd/manifest/list?count=-1")]))
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rest_reference_examples() {
    let f = fixture().await;
    let admin = f.cache.admin_url();
    let host = admin.trim_start_matches("http://");
    let all = manifest_urls(&admin);
    assert_eq!(all.len(), 8, "{all:?}");

    // curl -X DELETE "http://hostname:8080/cmd/prune?type=created&dur=10d&count=50&dryRun=true"
    let out = curl(&[
        "-X",
        "DELETE",
        &format!("http://{host}/cmd/prune?type=created&dur=10d&count=50&dryRun=true"),
    ]);
    let pruned: Vec<String> = rows(&out)
        .into_iter()
        .filter(|r| r[0] == "prune")
        .map(|r| r[2].clone())
        .collect();
    assert_eq!(pruned.len(), 4, "{out}");
    assert!(
        pruned
            .iter()
            .all(|u| u.contains("calico/node") || u.contains("library/busybox")),
        "{out}"
    );
    assert!(out.contains("# would remove 4 manifests"), "{out}");
    assert_eq!(manifest_urls(&admin), all, "a dry run changed the cache");

    // curl "http://hostname:8080/cmd/image/list?pattern=docker.io&count=10"
    let out = curl(&[&format!(
        "http://{host}/cmd/image/list?pattern=docker.io&count=10"
    )]);
    let listed: Vec<Vec<String>> = rows(&out);
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|r| r[0].starts_with("docker.io/")),
        "{out}"
    );
    assert!(!out.contains("quay.io"), "{out}");
    // Each row is a blob of the image: config and layer of busybox appear.
    let busybox = &f.images[1].1;
    for b in busybox.blobs() {
        assert!(
            out.contains(&b.digest),
            "busybox blob {} missing:\n{out}",
            b.digest
        );
    }

    // curl "http://hostname:8080/cmd/blob/list?substr=56aebe9b&count=10"
    let out = curl(&[&format!(
        "http://{host}/cmd/blob/list?substr=56aebe9b&count=10"
    )]);
    assert!(
        rows(&out).iter().all(|r| r[0].contains("56aebe9b")),
        "{out}"
    );
    let layer = &busybox.children[0].layers[0].digest;
    let substr = &layer["sha256:".len()..]["sha256:".len()..16];
    let out = curl(&[&format!(
        "http://{host}/cmd/blob/list?substr={substr}&count=10"
    )]);
    let blob_rows = rows(&out);
    assert_eq!(blob_rows.len(), 1, "{out}");
    assert_eq!(&blob_rows[0][0], layer);
    assert_eq!(
        blob_rows[0][2], "1",
        "one manifest references the busybox layer"
    );

    // curl "http://hostname:8080/cmd/manifest/list?pattern=calico,cilium&count=10"
    let out = curl(&[&format!(
        "http://{host}/cmd/manifest/list?pattern=calico,cilium&count=10"
    )]);
    let urls: Vec<String> = rows(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(
        urls.len(),
        4,
        "calico index, its two children and cilium: {out}"
    );
    assert!(
        urls.iter()
            .all(|u| u.contains("calico") || u.contains("cilium"))
    );
    let json: Value = serde_json::from_str(&curl(&[&format!(
        "http://{host}/cmd/manifest/list?pattern=calico,cilium&count=2&format=json"
    )]))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2, "count caps the list");

    // The real prune: calico (index and children) and busybox go, their blobs with them.
    let out = curl(&[
        "-X",
        "DELETE",
        &format!("http://{host}/cmd/prune?type=created&dur=10d&count=50"),
    ]);
    assert!(out.contains("# removed 4 manifests"), "{out}");
    let left = manifest_urls(&admin);
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(
        left.iter()
            .all(|u| !u.contains("calico") && !u.contains("busybox"))
    );
    let blobs = curl(&[&format!("{admin}/cmd/blob/list?count=-1")]);
    for b in busybox.blobs() {
        assert!(
            !blobs.contains(&b.digest),
            "busybox blob {} survived",
            b.digest
        );
    }
    // A later pull fetches it again, cleanly.
    let c = client();
    pull_verify(&c, &f.images[1].0, "1.36", busybox).await;
    pull_verify(&c, &f.images[0].0, "v3.27.0", &f.images[0].1).await;

    // curl http://hostname:8080/cmd/stop
    let mut cache = f.cache;
    curl(&[&format!("http://{host}/cmd/stop")]);
    assert!(
        support::wait_for(std::time::Duration::from_secs(10), || (!cache.is_running())
            .then_some(()))
        .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_limits_protections_and_json_api() {
    let f = fixture().await;
    let admin = f.cache.admin_url();
    let c = client();
    let post = |body: Value| {
        let c = c.clone();
        let url = format!("{admin}/admin/v1/prune");
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap(),
            )
        }
    };
    // Over-broad: everything, but maxDeletionRatio (default 50%) refuses and says why.
    let (status, report) =
        post(serde_json::json!({"patterns": ["."], "minAge": "0s", "count": -1})).await;
    assert_eq!(status, 200);
    let why = report["refused"].as_str().unwrap();
    assert!(why.contains("maxDeletionRatio"), "{why}");
    assert_eq!(report["totals"]["manifests"], 0);
    assert_eq!(manifest_urls(&admin).len(), 8);

    // Protections veto and are counted by reason: recent images (minAge default 1h), in-use.
    let (_, report) = post(serde_json::json!({
        "patterns": ["."], "count": -1, "maxDeletionRatio": 1.0, "dryRun": true,
        "inUse": ["busybox:1.36"],
    }))
    .await;
    assert_eq!(report["protected"]["minAge"], 4, "{report}");
    assert_eq!(report["protected"]["inUse"], 1, "{report}");
    assert_eq!(
        report["totals"]["manifests"], 3,
        "calico index and children: {report}"
    );
    // Order: least recently pulled first, and count caps the run.
    let (_, report) = post(
        serde_json::json!({"olderThan": "1d", "count": 1, "maxDeletionRatio": 1.0, "dryRun": true}),
    )
    .await;
    let items = report["items"].as_array().unwrap();
    let decisions: Vec<&str> = items
        .iter()
        .map(|i| i["decision"].as_str().unwrap())
        .collect();
    assert!(
        decisions.contains(&"prune") && items.iter().any(|i| i["reason"] == "countLimit"),
        "{report}"
    );
    // Bad requests are 400 with the field named.
    let (status, body) = post(serde_json::json!({"patterns": ["("]})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("patterns"),
        "{body}"
    );
    let (status, _) = post(serde_json::json!({"unusedFor": "soon"})).await;
    assert_eq!(status, 400);
    let r = c
        .delete(format!("{admin}/cmd/prune?type=sometimes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().starts_with("error: type must be"));

    // Metrics count the runs.
    let metrics = c
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("imagecache_prune_runs_total{trigger=\"api\",outcome=\"refused\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_works_on_the_files_and_refuses_a_live_cache() {
    let f = fixture().await;
    let data = f.cache.data_dir().to_path_buf();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--image-path")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };

    // While the server holds the cache: one readable line, non-zero exit.
    let out = run(&["list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("in use by another imagecache process"),
        "{err}"
    );

    let mut cache = f.cache;
    cache.terminate();
    // bin/ociregistry --image-path /my/image/cache list --pattern dashboard
    let out = run(&["list", "--pattern", "calico"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.starts_with("docker.io/calico/node")));
    let out = run(&["list", "--header", "--short-digest"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("URL DIGEST"), "{text}");
    assert!(
        !text.contains(&f.images[0].1.digest()[..30]),
        "digests are shortened: {text}"
    );

    // bin/ociregistry prune --pattern kubernetesui/dashboard:v2.7.0 --dry-run, and friends.
    let out = run(&["prune", "--pattern", "calico/node:v3.27.0", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("# would remove 3 manifests"),
        "the index takes its children: {text}"
    );
    let out = run(&["prune", "--pattern", "curl,cilium", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("protected minAge: 1"),
        "cilium is recent: {text}"
    );
    // The seed's local-time form, a day ahead: every image was cached before it.
    let before = (jiff::Zoned::now() + jiff::SignedDuration::from_hours(24))
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let out = run(&[
        "prune",
        "--date",
        &before,
        "--min-age",
        "0s",
        "--dry-run",
        "--format",
        "json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["refused"].as_str().is_some(),
        "every image predates now: {report}"
    );

    // A real prune on the files, then the server serves what is left.
    let out = run(&["prune", "--older-than", "10d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 4, "{text}");
    let out = run(&["prune", "--dry-run"]);
    assert!(!out.status.success(), "a selector is required");
    cache.restart();
    let c = client();
    pull_verify(&c, &f.images[3].0, "1", &f.images[3].1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_while_sixteen_clients_pull_fails_no_client() {
    let f = fixture().await;
    let admin = f.cache.admin_url();
    let images = std::sync::Arc::new(f.images.clone());
    let mut clients = Vec::new();
    for i in 0..16 {
        let images = images.clone();
        clients.push(tokio::spawn(async move {
            let c = client();
            for round in 0..6 {
                let (repo, img) = &images[(i + round) % images.len()];
                let tag = if img.is_index() {
                    "v3.27.0".to_owned()
                } else {
                    img.digest().to_owned()
                };
                pull_verify(&c, repo, &tag, img).await;
            }
        }));
    }
    let c = client();
    for _ in 0..8 {
        let r = c
            .delete(format!(
                "{admin}/cmd/prune?type=pattern&expr=.&count=-1&minAge=0s&maxDeletionRatio=1"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for t in clients {
        t.await.expect("a client pull failed during pruning");
    }
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--image-path"])
        .arg(dir.path().join("data"))
        .args([
            "serve",
            "--admin-addr",
            "0.0.0.0:0",
            "--addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("adminTokenFile"), "{err}");

    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef-token\n").unwrap();
    let mut cache = ImageCache::builder()
        .admin_host("0.0.0.0")
        .set("adminTokenFile", token.display().to_string().into())
        .start();
    let url = cache.admin_url();
    let code = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code(&[&format!("{url}/cmd/manifest/list")]), "401");
    assert_eq!(
        code(&[
            "-H",
            "Authorization: Bearer wrong",
            &format!("{url}/cmd/manifest/list")
        ]),
        "401"
    );
    assert_eq!(
        code(&[
            "-H",
            "Authorization: Bearer 0123456789abcdef-token",
            &format!("{url}/cmd/manifest/list")
        ]),
        "200"
    );
    assert_eq!(code(&[&format!("{url}/metrics")]), "200");
    assert_eq!(code(&[&format!("{url}/readyz")]), "200");
    cache.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_pruning_runs_on_its_schedule() {
    let dist = Distribution::start();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = gen_image(dirs.0.path(), 11, &[10_000], &Platform::linux_amd64());
    let keep = gen_image(dirs.1.path(), 12, &[10_000], &Platform::linux_amd64());
    dist.push(&old.source_ref(), "team/old:1");
    dist.push(&keep.source_ref(), "team/keep:1");
    let cache = ImageCache::builder()
        .registry("docker.io", &dist.url())
        .default_registry("docker.io")
        .set(
            "pruneConfig",
            serde_json::json!({
                "enabled": true,
                "frequency": "1s",
                "request": {"patterns": ["team/old"], "minAge": "0s", "maxDeletionRatio": 1.0, "count": -1}
            }),
        )
        .start();
    let c = client();
    pull_verify(&c, &Repo::new(&cache.url(), "team/keep"), "1", &keep).await;
    pull_verify(&c, &Repo::new(&cache.url(), "team/old"), "1", &old).await;
    let admin = cache.admin_url();
    let gone = support::wait_for(std::time::Duration::from_secs(15), || {
        let urls = manifest_urls(&admin);
        (!urls.iter().any(|u| u.contains("team/old"))).then_some(urls)
    })
    .expect("the background prune never removed team/old");
    assert!(gone.iter().any(|u| u.contains("team/keep")), "{gone:?}");
    // The run is counted when it ends, which can be a moment after its deletions show.
    let counted = support::wait_for(std::time::Duration::from_secs(10), || {
        let metrics = curl(&[&format!("{admin}/metrics")]);
        metrics
            .contains("imagecache_prune_runs_total{trigger=\"background\",outcome=\"pruned\"}")
            .then_some(())
    });
    assert!(counted.is_some(), "no background prune run counted");
    assert!(cache.log().contains("prune run"), "runs are logged");
}
