//! `imagecache load`: preloading from reference lists (against a Distribution upstream) and
//! from OCI-layout and `docker save` tarballs, then serving the result air-gapped, byte-exact.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::http::get;
use support::image::{CONTAINERD_ACCEPT, DOCKER_MANIFEST};
use support::pull::get_blob_verify;
use support::*;

/// What a run of the binary printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: {}\n--- stdout\n{}--- stderr\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// `imagecache --image-path DATA load ARGS..`
fn load(data: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_imagecache"))
        .arg("--image-path")
        .arg(data)
        .arg("load")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run imagecache load");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A load config allowlisting `upstream.test` at `endpoint` and Docker Hub (never contacted).
fn config_file(dir: &Path, endpoint: &str) -> PathBuf {
    let path = dir.join("load.yaml");
    std::fs::write(
        &path,
        format!(
            "registries:\n  - name: {UPSTREAM}\n    endpoint: {endpoint}\n  - name: docker.io\n    endpoint: http://127.0.0.1:9\n"
        ),
    )
    .unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Serves `data` air-gapped with the same allowlist as [`config_file`].
fn serve_air_gapped(data: &Path, endpoint: &str) -> ImageCache {
    ImageCache::builder()
        .registry(UPSTREAM, endpoint)
        .registry("docker.io", "http://127.0.0.1:9")
        .air_gapped(true)
        .data_dir(data)
        .start()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn platforms2() -> Vec<Platform> {
    vec![
        Platform::linux_amd64(),
        Platform::new("linux", "arm64", Some("v8")),
    ]
}

#[test]
fn list_loads_everything_once_and_serves_air_gapped() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let multi = gen_multiarch(
        &tmp.path().join("multi"),
        40,
        &platforms2(),
        &[1000, 80_000],
    );
    let single = gen_image(
        &tmp.path().join("single"),
        41,
        &[3000],
        &Platform::linux_amd64(),
    );
    let v2 = gen_image_v2s2(
        &tmp.path().join("v2"),
        42,
        &[20_000, 500],
        &Platform::linux_amd64(),
    );
    dist.push(&multi.source_ref(), "team/multi:v1");
    dist.push(&single.source_ref(), "team/single:v1");
    dist.push(&v2.source_ref(), "team/v2:v1");
    let config = config_file(tmp.path(), &dist.url());
    let data = tmp.path().join("data");
    let good = format!(
        "# preload\n\n{UPSTREAM}/team/multi:v1\n{UPSTREAM}/team/single@{}   # pinned\n{UPSTREAM}/team/v2:v1\n",
        single.digest()
    );
    let list = tmp.path().join("list.txt");
    std::fs::write(
        &list,
        format!("{good}{UPSTREAM}/team/missing:v1\nnot a reference\n"),
    )
    .unwrap();
    let before = dist.count_blob_gets();

    let run = load(&data, &["--config", s(&config), "--list", s(&list)]);
    assert!(run.ok, "{run:?}");
    // Bad lines are named (file and line) and skipped.
    assert!(
        run.stderr.contains("list.txt:6") && run.stderr.contains("team/missing:v1"),
        "{run:?}"
    );
    assert!(run.stderr.contains("list.txt:7"), "{run:?}");
    assert!(run.stdout.contains("loaded 3 image(s)"), "{run:?}");
    // Every blob of every image came from the upstream exactly once.
    let gets = dist.blob_gets_by_digest();
    let blobs: Vec<_> = [&multi, &single, &v2]
        .iter()
        .flat_map(|i| i.blobs())
        .collect();
    assert_eq!(dist.count_blob_gets() - before, blobs.len(), "{gets:?}");
    for b in &blobs {
        assert_eq!(gets.get(&b.digest), Some(&1), "{}", b.digest);
    }

    // Again: everything is cached, nothing is fetched.
    let requests = dist.access_log().len();
    let good_list = tmp.path().join("good.txt");
    std::fs::write(&good_list, &good).unwrap();
    let run = load(&data, &["--config", s(&config), "--list", s(&good_list)]);
    assert!(run.ok, "{run:?}");
    assert!(
        run.stdout
            .contains("0 manifest(s) and 0 blob(s) added (0 B)"),
        "{run:?}"
    );
    assert_eq!(
        dist.access_log().len(),
        requests,
        "second load asked upstream"
    );

    // --fail-fast stops at the bad line with one readable error.
    let run = load(
        &data,
        &["--config", s(&config), "--list", s(&list), "--fail-fast"],
    );
    assert!(!run.ok, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.contains("list.txt:6") && run.stderr.contains("manifest unknown"),
        "{run:?}"
    );

    // Served air-gapped, byte-exact, without a single upstream request.
    let cache = serve_air_gapped(&data, &dist.url());
    let requests = dist.access_log().len();
    let c = client();
    runtime().block_on(async {
        let repo = |r: &str| Repo::new(&cache.url(), &format!("{UPSTREAM}/{r}"));
        pull_verify(&c, &repo("team/multi"), "v1", &multi).await;
        pull_verify(&c, &repo("team/single"), single.digest(), &single).await;
        pull_verify(&c, &repo("team/v2"), "v1", &v2).await;
    });
    let out = tmp.path().join("skopeo-multi");
    skopeo::pull_to_dir(
        &cache.docker_ref(&format!("{UPSTREAM}/team/multi:v1")),
        &out,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cache.log_tail()));
    assert_copy_matches(&out, &multi);
    assert_eq!(
        dist.access_log().len(),
        requests,
        "air-gapped serve asked upstream"
    );
}

#[test]
fn platform_filter_loads_only_that_child() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let multi = gen_multiarch(&tmp.path().join("multi"), 50, &platforms2(), &[2000, 9000]);
    dist.push(&multi.source_ref(), "team/multi:v1");
    let config = config_file(tmp.path(), &dist.url());
    let data = tmp.path().join("data");
    let reference = format!("{UPSTREAM}/team/multi:v1");
    let run = load(
        &data,
        &[
            "--config",
            s(&config),
            "--platform",
            "linux/arm64",
            &reference,
        ],
    );
    assert!(run.ok, "{run:?}");
    let (amd64, arm64) = (&multi.children[0], &multi.children[1]);
    let gets = dist.blob_gets_by_digest();
    for b in std::iter::once(&arm64.config).chain(&arm64.layers) {
        assert_eq!(gets.get(&b.digest), Some(&1), "{}", b.digest);
    }
    for b in std::iter::once(&amd64.config).chain(&amd64.layers) {
        assert_eq!(gets.get(&b.digest), None, "amd64 blob {} fetched", b.digest);
    }

    let cache = serve_air_gapped(&data, &dist.url());
    let c = client();
    runtime().block_on(async {
        let repo = Repo::new(&cache.url(), &format!("{UPSTREAM}/team/multi"));
        let top = get(
            &c,
            &repo.manifest_url("v1"),
            &[("Accept", CONTAINERD_ACCEPT)],
        )
        .await;
        assert_eq!(top.status, 200);
        assert!(top.body == multi.read(multi.digest()));
        let arm = get(&c, &repo.manifest_url(&arm64.manifest.digest), &[]).await;
        assert!(arm.status == 200 && arm.body == multi.read(&arm64.manifest.digest));
        for b in std::iter::once(&arm64.config).chain(&arm64.layers) {
            get_blob_verify(&c, &repo, &b.digest, &multi).await;
        }
        let amd = get(&c, &repo.manifest_url(&amd64.manifest.digest), &[]).await;
        assert_eq!(amd.status, 404, "amd64 was not loaded");
    });
}

/// `tar -c[z]f OUT -C DIR .`, as a user would pack a layout directory.
fn tar_dir(dir: &Path, out: &Path, gzip: bool) {
    let st = Command::new("tar")
        .arg(if gzip { "-czf" } else { "-cf" })
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

/// A tar holding one file of `size` deterministic bytes.
fn layer_tar(name: &str, seed: u8, size: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data.as_slice()).unwrap();
    b.into_inner().unwrap()
}

/// A `docker save` archive: `<id>/layer.tar` for the first layer, the second under
/// `blobs/sha256/` with a `<id>/layer.tar` symlink to it (as Docker 25 writes), the config as
/// `<hex>.json`, and two names (one on Docker Hub, written short).
fn docker_save(out: &Path, layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"org.example.saved": "yes"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let hex = |b: &[u8]| sha256_digest(b)["sha256:".len()..].to_string();
    let manifest = serde_json::json!([{
        "Config": format!("{}.json", hex(&config)),
        "RepoTags": [format!("{UPSTREAM}/team/saved:v1"), "saved:latest"],
        "Layers": ["1111/layer.tar", "2222/layer.tar"],
    }]);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    };
    add("1111/VERSION", b"1.0");
    add("1111/layer.tar", &layers[0]);
    add(&format!("blobs/sha256/{}", hex(&layers[1])), &layers[1]);
    add(&format!("{}.json", hex(&config)), &config);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add("repositories", b"{}");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(
        &mut h,
        "2222/layer.tar",
        format!("../blobs/sha256/{}", hex(&layers[1])),
    )
    .unwrap();
    std::fs::write(out, b.into_inner().unwrap()).unwrap();
    config
}

#[test]
fn tarballs_load_and_serve_air_gapped() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path(), "http://127.0.0.1:9");
    let data = tmp.path().join("data");

    // An OCI layout whose ref.name is only a tag: it needs --repository.
    let multi = gen_multiarch(
        &tmp.path().join("multi"),
        60,
        &platforms2(),
        &[1500, 40_000],
    );
    let oci_tar = tmp.path().join("multi.tar");
    tar_dir(&multi.dir, &oci_tar, false);
    let run = load(&data, &["--config", s(&config), "--tarball", s(&oci_tar)]);
    assert!(run.ok, "a bad tarball is skipped, not fatal: {run:?}");
    assert!(
        run.stderr.contains("multi.tar") && run.stderr.contains("--repository"),
        "{run:?}"
    );
    let repository = format!("{UPSTREAM}/team/ocitar");
    let run = load(
        &data,
        &[
            "--config",
            s(&config),
            "--tarball",
            s(&oci_tar),
            "--repository",
            &repository,
        ],
    );
    assert!(run.ok && run.stderr.is_empty(), "{run:?}");

    // A gzipped layout named by containerd's annotation.
    let single_dir = tmp.path().join("single");
    let single = gen_image(&single_dir, 61, &[7000], &Platform::linux_amd64());
    let index_path = single_dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"][0]["annotations"]["io.containerd.image.name"] =
        format!("{UPSTREAM}/team/gz:v2").into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let gz = tmp.path().join("single.tar.gz");
    tar_dir(&single_dir, &gz, true);

    // A docker save archive.
    let layers = vec![layer_tar("a.bin", 1, 30_000), layer_tar("b.bin", 2, 700)];
    let saved = tmp.path().join("saved.tar");
    let saved_config = docker_save(&saved, &layers);

    let run = load(
        &data,
        &[
            "--config",
            s(&config),
            "--tarball",
            s(&gz),
            "--tarball",
            s(&saved),
        ],
    );
    assert!(run.ok && run.stderr.is_empty(), "{run:?}");
    assert!(run.stdout.contains("loaded 2 image(s)"), "{run:?}");
    // Loading the same tarballs again adds nothing.
    let run = load(
        &data,
        &[
            "--config",
            s(&config),
            "--tarball",
            s(&gz),
            "--tarball",
            s(&saved),
        ],
    );
    assert!(
        run.ok
            && run
                .stdout
                .contains("0 manifest(s) and 0 blob(s) added (0 B)"),
        "{run:?}"
    );

    let cache = serve_air_gapped(&data, "http://127.0.0.1:9");
    let c = client();
    runtime().block_on(async {
        let repo = |r: &str| Repo::new(&cache.url(), r);
        pull_verify(&c, &repo(&repository), "latest", &multi).await;
        pull_verify(&c, &repo(&format!("{UPSTREAM}/team/gz")), "v2", &single).await;

        // The synthesised schema2 manifest points at exactly the archive's config and layers.
        let saved_repo = repo(&format!("{UPSTREAM}/team/saved"));
        let m = get(
            &c,
            &saved_repo.manifest_url("v1"),
            &[("Accept", CONTAINERD_ACCEPT)],
        )
        .await;
        assert_eq!(m.status, 200, "{}", m.text());
        assert_eq!(m.header("content-type"), Some(DOCKER_MANIFEST));
        let json = m.json();
        assert_eq!(json["config"]["digest"], sha256_digest(&saved_config));
        assert_eq!(
            json["config"]["mediaType"],
            "application/vnd.docker.container.image.v1+json"
        );
        for (i, l) in layers.iter().enumerate() {
            assert_eq!(json["layers"][i]["digest"], sha256_digest(l));
            assert_eq!(json["layers"][i]["size"], l.len());
            assert_eq!(
                json["layers"][i]["mediaType"],
                "application/vnd.docker.image.rootfs.diff.tar"
            );
        }
        let blob = |d: String| {
            let url = saved_repo.blob_url(&d);
            let c = c.clone();
            async move { get(&c, &url, &[]).await }
        };
        assert!(blob(sha256_digest(&saved_config)).await.body == saved_config);
        for l in &layers {
            let r = blob(sha256_digest(l)).await;
            assert!(r.status == 200 && r.body == *l);
        }
        // `saved:latest` is Docker Hub's library/saved, the same image.
        let hub = repo("docker.io/library/saved");
        let r = get(
            &c,
            &hub.manifest_url("latest"),
            &[("Accept", CONTAINERD_ACCEPT)],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == m.body);
    });
    drop(cache);

    // Online, past the tag TTL, with an upstream that has never heard of these images: loaded
    // tags are not re-checked, so the upstream's 404 cannot take them away.
    let dist = Distribution::start();
    let cache = ImageCache::builder()
        .registry(UPSTREAM, &dist.url())
        .tag_ttl("1ms")
        .data_dir(&data)
        .start();
    runtime().block_on(async {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let gz = Repo::new(&cache.url(), &format!("{UPSTREAM}/team/gz"));
        pull_verify(&c, &gz, "v2", &single).await;
    });
    assert!(
        dist.manifest_gets().is_empty()
            && !dist.requests().iter().any(|(_, p)| p.contains("team/gz")),
        "loaded tags went upstream: {:?}",
        dist.requests()
    );
}

#[test]
fn load_refuses_a_cache_held_by_a_server() {
    let cache = ImageCache::builder().start();
    let run = load(cache.data_dir(), &[&format!("{UPSTREAM}/team/app:v1")]);
    assert!(!run.ok, "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("in use"), "{run:?}");
    assert!(cache.data_dir().join("blobs").exists());
}

/// `preload` in the server's config: the listed images are pulled at start-up without any
/// client asking (one platform of an index only), and an image whose upstream is down at start
/// is retried until it is cached.
#[test]
fn serve_preloads_its_list_and_retries_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let multi = gen_multiarch(&tmp.path().join("multi"), 60, &platforms2(), &[3000, 7000]);
    dist.push(&multi.source_ref(), "team/multi:v1");
    let mut late = Distribution::start();
    let single = gen_image(
        &tmp.path().join("single"),
        61,
        &[4000],
        &Platform::linux_amd64(),
    );
    late.push(&single.source_ref(), "team/single:v1");
    late.kill();
    let cache = ImageCache::builder()
        .registry(UPSTREAM, &dist.url())
        .registry("late.test", &late.url())
        .set(
            "preload",
            serde_json::json!({
                "images": [format!("{UPSTREAM}/team/multi:v1"), "late.test/team/single:v1"],
                "platforms": ["linux/arm64"]
            }),
        )
        .start();
    let (amd64, arm64) = (&multi.children[0], &multi.children[1]);
    let held = || {
        runtime().block_on(async {
            let r = get(
                &client(),
                &format!(
                    "{}/cmd/manifest/list?format=json&count=-1",
                    cache.admin_url()
                ),
                &[],
            )
            .await;
            let rows: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            rows.as_array()
                .unwrap()
                .iter()
                .map(|m| m["digest"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
    };
    // Both first attempts are over once the failure is logged (images go in list order).
    wait_for(std::time::Duration::from_secs(30), || {
        let log = cache.log();
        (log.contains("preloaded image=upstream.test/team/multi:v1")
            && log.contains("preload failed image=late.test/team/single:v1"))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("no first preload attempt:\n{}", cache.log_tail()));
    let first = held();
    assert!(first.contains(&arm64.manifest.digest), "{first:?}");
    assert!(first.contains(&multi.digest().to_string()), "{first:?}");
    assert!(
        !first.contains(&amd64.manifest.digest),
        "only the asked platform is preloaded"
    );
    let gets = dist.blob_gets_by_digest();
    for b in std::iter::once(&arm64.config).chain(&arm64.layers) {
        assert_eq!(
            gets.get(&b.digest),
            Some(&1),
            "arm64 blob {} fetched once",
            b.digest
        );
    }
    assert!(!first.contains(&single.digest().to_string()));
    assert!(
        cache.log().contains("preload failed"),
        "{}",
        cache.log_tail()
    );

    // The second upstream comes back: the next retry (10 s after the failure) caches it.
    late.restart();
    wait_for(std::time::Duration::from_secs(40), || {
        held().contains(&single.digest().to_string()).then_some(())
    })
    .unwrap_or_else(|| panic!("the failed preload was not retried:\n{}", cache.log_tail()));
    // The manifest is listed before its blobs are in; the run ends once they are.
    wait_for(std::time::Duration::from_secs(20), || {
        cache.log().contains("preload complete").then_some(())
    })
    .unwrap_or_else(|| panic!("the preload did not complete:\n{}", cache.log_tail()));
    for b in single.blobs() {
        assert!(
            late.blob_gets_by_digest().contains_key(&b.digest),
            "{} fetched",
            b.digest
        );
    }
}
