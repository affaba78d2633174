//! The scale run (issue 7, item 5): a cache of 100k manifests and 300k blobs generated on disk
//! in the store's own format, opened by the release `imagecache serve`. Measures the index
//! load, memory, listing, prune planning and the paginated Image API list. `#[ignore]`d so
//! `cargo test` skips it; run it with `bench/scale` (sizes: `IMAGECACHE_SCALE_MANIFESTS`,
//! `IMAGECACHE_SCALE_BLOBS`). A missed target is reported as MISS; wrong counts or errors fail.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use imagecache::digest::Digest;
use imagecache::reference::RepoPath;
use imagecache::store::{
    self, DOCKER_LIST, DOCKER_MANIFEST, ManifestRecord, OCI_INDEX, OCI_MANIFEST, TagEntry,
};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use support::ImageCache;
use support::http::{client, send, send_body};
use support::image::SplitMix;
use support::proc;

const LOAD_TARGET_S: f64 = 2.0;
const RSS_TARGET_MIB: f64 = 200.0;
const PLAN_TARGET_S: f64 = 1.0;
const PAGE: usize = 500;
const MIB: f64 = 1024.0 * 1024.0;

#[test]
#[ignore = "scale run; run bench/scale"]
fn scale_100k_manifests() {
    proc::warn_if_debug_build("bench/scale");
    let busy_before = proc::busy_before_start();
    let manifests = env_count("IMAGECACHE_SCALE_MANIFESTS", 100_000);
    let blobs = env_count("IMAGECACHE_SCALE_BLOBS", manifests * 3);
    let out_dir = target_dir().join("scale");
    fs::create_dir_all(&out_dir).unwrap();
    let work = tempfile::Builder::new()
        .prefix("cache-")
        .tempdir_in(&out_dir)
        .unwrap();
    let root = work.path().join("cache");
    let mut r = Report::default();

    // ---- generation ----------------------------------------------------------------
    let t = Instant::now();
    let g = generate(&root, manifests, blobs);
    let gen_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "generated {} manifests ({} images, {} indexes), {} blobs ({:.0} MiB), {} repositories, {} tags in {gen_secs:.1}s",
        g.manifests,
        g.images,
        g.indexes,
        g.blobs,
        g.blob_bytes as f64 / MIB,
        g.repositories,
        g.tags
    );
    assert_eq!(g.manifests, manifests, "generated manifest count");
    r.section("Generated cache");
    r.row(
        "manifests (image manifests + indexes)",
        format!("{} ({} + {})", g.manifests, g.images, g.indexes),
        "",
    );
    r.row("blobs (content files, manifests included)", g.blobs, "");
    r.row("blob bytes on disk", mib(g.blob_bytes), "");
    r.row(
        "repositories / registries / tags",
        format!("{} / {} / {}", g.repositories, REGISTRIES.len(), g.tags),
        "",
    );
    r.row("generation time", secs(gen_secs), "");

    // ---- offline: verify, CLI list -------------------------------------------------
    let bin = env!("CARGO_BIN_EXE_imagecache");
    let image_path = root.display().to_string();
    let verify =
        std::env::var("IMAGECACHE_SCALE_VERIFY").is_ok_and(|v| v == "1") || manifests <= 20_000;
    if verify {
        let t = Instant::now();
        let out = Command::new(bin)
            .args(["--image-path", &image_path, "verify", "--format", "json"])
            .output()
            .unwrap();
        let s = t.elapsed().as_secs_f64();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("verify: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(
            out.status.success() && v["problems"] == 0,
            "imagecache verify found problems in the generated cache: {}",
            serde_json::to_string_pretty(&v["findings"]).unwrap()
        );
        assert_eq!(v["manifests"], g.manifests as u64, "verify: manifests");
        assert_eq!(v["blobs"], g.blobs as u64, "verify: blobs");
        eprintln!("imagecache verify: 0 problems ({s:.1}s)");
        r.section("Offline (server stopped)");
        r.row(
            "`imagecache verify` (hashes every blob)",
            format!("0 problems, {}", secs(s)),
            "",
        );
    } else {
        r.section("Offline (server stopped)");
        r.row(
            "`imagecache verify`",
            "skipped (over 20,000 manifests; IMAGECACHE_SCALE_VERIFY=1 runs it)",
            "",
        );
    }
    let (cli_secs, cli_rows, cli_usage) = cli_list(bin, &image_path);
    assert_eq!(cli_rows, g.manifests, "`imagecache list` rows");
    eprintln!("imagecache list: {cli_rows} rows in {cli_secs:.2}s");
    r.row(
        "`imagecache list --count -1 --format json` (open + list)",
        secs(cli_secs),
        "",
    );
    if let Some((kib, cpu)) = cli_usage {
        r.row(
            "`imagecache list`: peak RSS, CPU time",
            format!("{}, {}", mib(kib * 1024), secs(cpu)),
            "",
        );
    }

    // ---- the server ------------------------------------------------------------------
    let t = Instant::now();
    let server = ImageCache::builder()
        .data_dir(&root)
        .air_gapped(true)
        .set("log", json!({"level": "info", "format": "text"}))
        .start();
    let ready_secs = t.elapsed().as_secs_f64();
    let pid = server.pid().unwrap();
    let loaded = log_field(&server.log(), "cache index loaded");
    assert_eq!(
        loaded.get("manifests").map(String::as_str),
        Some(g.manifests.to_string().as_str()),
        "index loaded: {loaded:?}"
    );
    assert_eq!(
        loaded.get("blobs").map(String::as_str),
        Some(g.blobs.to_string().as_str())
    );
    assert_eq!(loaded.get("damaged").map(String::as_str), Some("0"));
    let load_ms: f64 = loaded["elapsed_ms"].parse().unwrap();
    let load_cpu = cpu_secs(pid);
    let load_s = load_ms / 1000.0;
    eprintln!("server ready in {ready_secs:.2}s, index loaded in {load_s:.2}s");
    r.section("Server: index load");
    r.row(
        "index load (`cache index loaded` log line, `elapsed_ms`)",
        secs(load_s),
        target(load_s < LOAD_TARGET_S, "< 2 s"),
    );
    r.row("spawn to `/readyz` 200", secs(ready_secs), "");
    r.row(
        "server CPU time (user + system) when ready",
        secs(load_cpu),
        "",
    );
    let mut mem = vec![("after load", memory(pid))];

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = client();
    let admin = server.admin_url();

    // ---- listing ---------------------------------------------------------------------
    r.section("Listing (admin API)");
    for (what, path) in [
        (
            "`GET /cmd/manifest/list?count=-1&format=json`",
            "/cmd/manifest/list?count=-1&format=json",
        ),
        (
            "`GET /cmd/manifest/list?count=-1` (text)",
            "/cmd/manifest/list?count=-1",
        ),
        (
            "`GET /cmd/image/list?count=-1&format=json` (a row per config and layer)",
            "/cmd/image/list?count=-1&format=json",
        ),
    ] {
        if path.starts_with("/cmd/image") {
            mem.push(("after the manifest lists", memory(pid)));
        }
        let (t, cpu) = (Instant::now(), cpu_secs(pid));
        let resp = rt.block_on(send(&c, "GET", &format!("{admin}{path}"), &[]));
        let s = t.elapsed().as_secs_f64();
        let cpu = cpu_secs(pid) - cpu;
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        let rows = if path.contains("json") {
            resp.json().as_array().unwrap().len()
        } else {
            // A header row, then one row per manifest.
            resp.text().lines().count() - 1
        };
        let expected = if path.starts_with("/cmd/image") {
            g.image_rows
        } else {
            g.manifests
        };
        assert_eq!(rows, expected, "{path}: rows");
        eprintln!(
            "{path}: {rows} rows, {} in {s:.2}s",
            mib(resp.body.len() as u64)
        );
        r.row(
            what,
            format!(
                "{} ({rows} rows, {}; server CPU {})",
                secs(s),
                mib(resp.body.len() as u64),
                secs(cpu)
            ),
            "",
        );
    }
    mem.push(("after the image list (count=-1)", memory(pid)));

    // ---- prune planning (dry runs) ---------------------------------------------------
    let half = g.blob_bytes / 2;
    let requests: Vec<(&str, &str, String)> = vec![
        (
            "seed: `DELETE /cmd/prune?type=accessed&dur=30d&dryRun=true` (count 50)",
            "DELETE",
            "/cmd/prune?type=accessed&dur=30d&dryRun=true&format=json".into(),
        ),
        (
            "seed: unused for 30d, no count limit",
            "DELETE",
            "/cmd/prune?type=accessed&dur=30d&count=-1&maxDeletionRatio=1&dryRun=true&format=json"
                .into(),
        ),
        (
            "patterns + labels + keep 3 per repository",
            "POST",
            json!({"patterns": ["^docker\\.io/", "^quay\\.io/"], "labels": ["team!=t3"],
                   "mostRecentlyPulled": 3, "count": -1, "maxDeletionRatio": 1.0, "dryRun": true})
            .to_string(),
        ),
        (
            "capacity: maxUsedSpace half the cache",
            "POST",
            json!({"maxUsedSpace": half.to_string(), "count": -1, "maxDeletionRatio": 1.0,
                   "dryRun": true})
            .to_string(),
        ),
    ];
    let mut plans = Vec::new();
    for (what, method, q) in &requests {
        let (t, cpu) = (Instant::now(), cpu_secs(pid));
        let resp = if *method == "POST" {
            rt.block_on(send_body(
                &c,
                "POST",
                &format!("{admin}/admin/v1/prune"),
                &[("Content-Type", "application/json")],
                q.as_bytes().to_vec(),
            ))
        } else {
            rt.block_on(send(&c, method, &format!("{admin}{q}"), &[]))
        };
        let s = t.elapsed().as_secs_f64();
        let cpu = cpu_secs(pid) - cpu;
        assert_eq!(resp.status, 200, "{what}: {}", resp.text());
        let v = resp.json();
        assert_eq!(v["dryRun"], true, "{what}");
        assert!(v["refused"].is_null(), "{what} refused: {}", v["refused"]);
        let selected = v["totals"]["manifests"].as_u64().unwrap();
        assert!(selected > 0, "{what}: selected nothing");
        let engine = v["durationMs"].as_u64().unwrap() as f64 / 1000.0;
        eprintln!(
            "{what}: {selected} manifests, engine {engine:.3}s, request {s:.2}s ({})",
            mib(resp.body.len() as u64)
        );
        plans.push((
            *what,
            engine,
            s,
            cpu,
            selected,
            v["totals"]["blobs"].as_u64().unwrap(),
            v["items"].as_array().map_or(0, Vec::len),
            resp.body.len() as u64,
        ));
    }
    mem.push(("after prune planning", memory(pid)));

    // ---- Image API, paginated --------------------------------------------------------
    let (t, api_cpu) = (Instant::now(), cpu_secs(pid));
    let mut names: Vec<String> = Vec::with_capacity(g.manifests);
    let mut pages = 0;
    let mut slowest = 0f64;
    let mut cont: Option<String> = None;
    let mut first_rv = None;
    loop {
        let mut url = format!("{admin}/apis/image.openshift.io/v1/images?limit={PAGE}");
        if let Some(c) = &cont {
            url.push_str("&continue=");
            url.push_str(&percent_encode(c));
        }
        let pt = Instant::now();
        let resp = rt.block_on(send(&c, "GET", &url, &[]));
        slowest = slowest.max(pt.elapsed().as_secs_f64());
        assert_eq!(resp.status, 200, "page {pages}: {}", resp.text());
        let v = resp.json();
        pages += 1;
        assert_eq!(v["kind"], "ImageList");
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= PAGE);
        names.extend(
            items
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned()),
        );
        let rv = v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(first_rv.get_or_insert(rv.clone()), &rv, "list revision");
        cont = v["metadata"]["continue"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if cont.is_none() {
            break;
        }
        assert!(pages <= g.manifests / PAGE + 2, "pagination does not end");
    }
    let api_s = t.elapsed().as_secs_f64();
    let api_cpu = cpu_secs(pid) - api_cpu;
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "an image listed twice");
    assert_eq!(names.len(), g.manifests, "images listed");
    assert!(names.is_sorted(), "pages out of order");
    eprintln!(
        "Image API: {} images in {pages} pages of {PAGE}, {api_s:.2}s (slowest page {slowest:.3}s)",
        names.len()
    );
    mem.push(("after the Image API list", memory(pid)));

    r.section("Prune planning (dry runs)");
    for (what, engine, req, cpu, selected, blobs, items, body) in &plans {
        r.row(
            &format!("{what}: engine (snapshot + plan, report `durationMs`)"),
            secs(*engine),
            target(*engine < PLAN_TARGET_S, "< 1 s"),
        );
        r.row(
            &format!("{what}: request"),
            format!(
                "{} ({selected} manifests, {blobs} blobs selected; {items} items, {}; server CPU {})",
                secs(*req),
                mib(*body),
                secs(*cpu)
            ),
            "",
        );
    }
    r.section("Image API list, paginated");
    r.row(
        &format!("`GET /apis/image.openshift.io/v1/images?limit={PAGE}` + `continue`"),
        format!(
            "{} ({} images, each once, {pages} pages; slowest page {}; server CPU {})",
            secs(api_s),
            names.len(),
            secs(slowest),
            secs(api_cpu)
        ),
        "",
    );

    r.section("Server: memory (`/proc/PID/status`)");
    let under = |kib: u64| (kib as f64 * 1024.0) / MIB < RSS_TARGET_MIB;
    let after_load = mem[0].1;
    r.row(
        "VmRSS after load",
        mib(after_load.0 * 1024),
        target(under(after_load.0), "< 200 MiB"),
    );
    for (when, (rss, hwm)) in &mem {
        r.row(
            &format!("VmRSS / VmHWM {when}"),
            format!("{} / {}", mib(rss * 1024), mib(hwm * 1024)),
            "",
        );
    }
    let peak = mem.iter().map(|(_, (_, hwm))| *hwm).max().unwrap_or(0);
    r.row(
        "peak (VmHWM) over the run",
        mib(peak * 1024),
        target(under(peak), "< 200 MiB"),
    );

    // Dry runs changed nothing.
    let status = rt
        .block_on(send(&c, "GET", &format!("{admin}/admin/v1/status"), &[]))
        .json();
    assert_eq!(
        status["manifests"], g.manifests as u64,
        "status after dry runs"
    );
    drop(server);

    let env = environment(manifests, blobs, busy_before);
    let md = r.markdown(&env);
    println!("\n{md}");
    let path = out_dir.join("report.md");
    fs::write(&path, &md).unwrap();
    eprintln!("written to {}", path.display());
    if std::env::var("IMAGECACHE_SCALE_KEEP").is_ok_and(|v| v == "1") {
        let kept = work.keep();
        eprintln!("cache kept at {}", kept.join("cache").display());
    }
}

// ---- the generator -------------------------------------------------------------------

const REGISTRIES: [&str; 4] = ["docker.io", "quay.io", "ghcr.io", "registry.k8s.io"];
const ORGS: [&str; 12] = [
    "library",
    "platform",
    "payments",
    "search",
    "infra",
    "data",
    "ml",
    "web",
    "mobile",
    "security",
    "observability",
    "edge",
];
const APPS: [&str; 16] = [
    "api",
    "worker",
    "gateway",
    "frontend",
    "scheduler",
    "indexer",
    "exporter",
    "proxy",
    "agent",
    "operator",
    "controller",
    "db",
    "cache",
    "queue",
    "batch",
    "auth",
];
/// (os, architecture, variant)
const PLATFORMS: [(&str, &str, Option<&str>); 4] = [
    ("linux", "amd64", None),
    ("linux", "arm64", None),
    ("linux", "arm", Some("v7")),
    ("linux", "ppc64le", None),
];
/// Base OS layers per platform, at the front of the layer pool.
const BASES_PER_PLATFORM: usize = 25;

/// One pulled image: a single manifest, or an index and its per-platform children.
struct Item {
    repo: usize,
    /// Also pulled through another repository (a mirror).
    mirror: Option<usize>,
    /// Platform indexes; one entry and `index == false` for a single manifest.
    platforms: Vec<usize>,
    index: bool,
    docker: bool,
    created: Timestamp,
    last_pulled: Option<Timestamp>,
    pull_count: u64,
    /// Layer pool indexes, per platform.
    layers: Vec<Vec<usize>>,
    tags: Vec<String>,
    id: usize,
}

#[derive(Default)]
struct Generated {
    manifests: usize,
    images: usize,
    indexes: usize,
    blobs: usize,
    blob_bytes: u64,
    repositories: usize,
    tags: usize,
    /// Configs and layers over all image manifests: the rows of `/cmd/image/list`.
    image_rows: usize,
}

fn repo_path(i: usize) -> RepoPath {
    if i == 0 {
        return RepoPath {
            registry: "registry.k8s.io".into(),
            repository: "pause".into(),
        };
    }
    RepoPath {
        registry: REGISTRIES[[0, 0, 0, 0, 0, 1, 1, 2, 2, 3][i % 10]].into(),
        repository: format!(
            "{}/{}-{}",
            ORGS[i % ORGS.len()],
            APPS[(i / ORGS.len()) % APPS.len()],
            i
        ),
    }
}

/// At least 32 bytes, so the unique prefix below is never cut.
fn layer_size(i: usize) -> usize {
    32 + (i * 2_654_435_761) % 2016
}

/// A layer's content: unique per pool index, a few bytes to 2 KiB.
fn layer_content(i: usize) -> Vec<u8> {
    let mut out = format!("scale layer {i}\n").into_bytes();
    let mut rng = SplitMix(i as u64);
    while out.len() < layer_size(i) {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(layer_size(i));
    out
}

/// Plans the images: ~1,000 repositories (skewed: a few hold many images), 8% multi-platform
/// indexes, a third Docker schema2, lastPulled over 90 days, most images tagged.
fn plan(manifests: usize) -> (Vec<Item>, usize) {
    let repos = (manifests / 100).clamp(10, 1000);
    let mut rng = SplitMix(7);
    let now = Timestamp::now();
    let day = 86_400i64;
    let mut items = Vec::new();
    let mut count = 0;
    while count < manifests {
        let left = manifests - count;
        let u = rng.unit();
        let repo = ((u * u) * repos as f64) as usize % repos;
        let index = left >= 3 && repo != 0 && rng.chance(0.08);
        let platforms: Vec<usize> = if index {
            let n = if left >= 4 && rng.chance(0.4) { 3 } else { 2 };
            (0..n).collect()
        } else {
            vec![rng.below(10).saturating_sub(8) as usize]
        };
        let pulled_ago = rng.below(90 * day as u64) as i64;
        let last_pulled = now - SignedDuration::from_secs(pulled_ago);
        let created = last_pulled - SignedDuration::from_secs(rng.below(90 * day as u64) as i64);
        let never = rng.chance(0.03);
        count += platforms.len() + usize::from(index);
        items.push(Item {
            repo,
            mirror: (repo != 0 && rng.chance(0.03))
                .then(|| 1 + rng.below(repos as u64 - 1) as usize),
            platforms,
            index,
            docker: repo % 3 == 1,
            created: if never { last_pulled } else { created },
            last_pulled: (!never).then_some(last_pulled),
            pull_count: if never { 0 } else { 1 + rng.below(500) },
            layers: Vec::new(),
            tags: Vec::new(),
            id: items.len(),
        });
    }
    // Tags: per repository, newest first: `latest`, then most images keep a version tag; the
    // rest were untagged when their tag moved on.
    let mut by_repo: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        by_repo.entry(it.repo).or_default().push(i);
    }
    for ids in by_repo.values_mut() {
        ids.sort_by_key(|&i| std::cmp::Reverse(items[i].created));
        for (k, &i) in ids.iter().enumerate() {
            let version = ids.len() - k;
            let it = &mut items[i];
            if k == 0 {
                it.tags.push("latest".into());
            }
            if k == 0 || rng.chance(0.7) {
                it.tags.push(format!(
                    "v{}.{}.{}",
                    version / 100,
                    (version / 10) % 10,
                    version % 10
                ));
                if rng.chance(0.05) {
                    it.tags
                        .push(format!("{}.{}", version / 100, (version / 10) % 10));
                }
            }
        }
    }
    (items, repos)
}

/// Layers for every image manifest: a base layer of its platform, up to two runtime layers its
/// repository shares, and its own layers drawn in turn from the rest of the pool (so every
/// pool layer is used once the images outnumber it).
fn assign_layers(items: &mut [Item], pool: usize) {
    let bases = (BASES_PER_PLATFORM * PLATFORMS.len()).min(pool / 2);
    let shared = pool - bases;
    let mut rng = SplitMix(11);
    let mut cursor = 0;
    for it in items.iter_mut() {
        for &p in &it.platforms.clone() {
            let n = 3 + rng.below(4) as usize;
            let base = (p * BASES_PER_PLATFORM + rng.below(BASES_PER_PLATFORM as u64) as usize)
                % bases.max(1);
            let mut layers = vec![base];
            let mids = (n - 2).min(2);
            for k in 0..mids {
                let h = (it.repo * 31 + p * 7 + k) * 2_654_435_761;
                layers.push(bases + h % shared);
            }
            for _ in 0..n - 1 - mids {
                layers.push(bases + cursor % shared);
                cursor += 1;
            }
            let mut seen = HashSet::new();
            layers.retain(|l| seen.insert(*l));
            it.layers.push(layers);
        }
    }
}

struct Blob {
    digest: Digest,
    size: u64,
}

fn write_blob(root: &Path, data: &[u8]) -> Blob {
    let digest = Digest::sha256_of(data);
    fs::write(store::blob_path(root, &digest), data).unwrap();
    Blob {
        digest,
        size: data.len() as u64,
    }
}

fn descriptor(media_type: &str, b: &Blob) -> Value {
    json!({"mediaType": media_type, "digest": b.digest.to_string(), "size": b.size})
}

fn timestamp_text(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// What one item wrote: the digest its tags point at, and its blobs.
struct Written {
    top: Digest,
    blobs: usize,
    bytes: u64,
}

/// Writes one item's config blobs, manifests and records, as a pull through the store would
/// leave them: records come from the store's own manifest and config parsers.
fn write_item(root: &Path, it: &Item, layers: &[Blob]) -> Written {
    let (manifest_type, config_type, layer_type, index_type) = if it.docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            DOCKER_LIST,
        )
    } else {
        (
            OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            OCI_INDEX,
        )
    };
    let mut references = BTreeSet::from([repo_path(it.repo)]);
    if let Some(m) = it.mirror {
        references.insert(repo_path(m));
    }
    let team = format!("t{}", it.repo % 10);
    let version = it.tags.iter().find(|t| t.starts_with('v')).cloned();
    let record = |bytes: &[u8], media_type: &str, config: Option<&[u8]>| {
        let digest = Digest::sha256_of(bytes);
        let parsed = store::parse_manifest(bytes, Some(media_type)).unwrap();
        let info = config.map(store::parse_config).unwrap_or_default();
        let mut r = ManifestRecord::new(
            digest,
            bytes.len() as u64,
            parsed,
            references.clone().into(),
            it.created,
        );
        r.apply_config(&info);
        r.last_pulled = it.last_pulled;
        r.pull_count = it.pull_count;
        r
    };
    let mut w = Written {
        top: Digest::sha256_of(b""),
        blobs: 0,
        bytes: 0,
    };
    let put = |root: &Path, bytes: &[u8], w: &mut Written| -> Blob {
        let b = write_blob(root, bytes);
        w.blobs += 1;
        w.bytes += b.size;
        b
    };
    let mut children = Vec::new();
    for (k, &p) in it.platforms.iter().enumerate() {
        let (os, arch, variant) = PLATFORMS[p];
        let own: Vec<&Blob> = it.layers[k].iter().map(|&l| &layers[l]).collect();
        let mut labels = json!({"team": team, "org.opencontainers.image.source": format!("https://example.test/{}", repo_path(it.repo))});
        if let Some(v) = &version {
            labels["org.opencontainers.image.version"] = json!(v);
        }
        let mut config = json!({
            "created": timestamp_text(it.created - SignedDuration::from_hours(2)),
            "architecture": arch,
            "os": os,
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Cmd": ["/app"], "Labels": labels},
            "rootfs": {"type": "layers",
                       "diff_ids": own.iter().map(|b| b.digest.to_string()).collect::<Vec<_>>()},
            "history": [{"created_by": format!("scale image {} {os}/{arch}", it.id)}],
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_blob = put(root, &config_bytes, &mut w);
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": descriptor(config_type, &config_blob),
            "layers": own.iter().map(|b| descriptor(layer_type, b)).collect::<Vec<_>>(),
        });
        if !it.docker {
            manifest["annotations"] =
                json!({"org.opencontainers.image.created": timestamp_text(it.created)});
        }
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let m = put(root, &bytes, &mut w);
        let r = record(&bytes, manifest_type, Some(&config_bytes));
        assert_eq!(r.digest, m.digest);
        fs::write(
            store::record_path(root, &r.digest),
            store::encode_record(&r),
        )
        .unwrap();
        let mut platform = json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        let mut d = descriptor(manifest_type, &m);
        d["platform"] = platform;
        children.push(d);
        w.top = m.digest;
    }
    if it.index {
        let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": children});
        let bytes = serde_json::to_vec(&index).unwrap();
        let m = put(root, &bytes, &mut w);
        let r = record(&bytes, index_type, None);
        fs::write(
            store::record_path(root, &r.digest),
            store::encode_record(&r),
        )
        .unwrap();
        w.top = m.digest;
    }
    w
}

/// Writes a cache of `manifests` manifests and about `blobs` blobs under `root`.
fn generate(root: &Path, manifests: usize, blobs: usize) -> Generated {
    for alg_dir in ["blobs/sha256", "manifests/sha256", "tags", "tmp"] {
        fs::create_dir_all(root.join(alg_dir)).unwrap();
    }
    for shard in 0..256 {
        fs::create_dir_all(root.join("blobs/sha256").join(format!("{shard:02x}"))).unwrap();
    }
    let (mut items, repos) = plan(manifests);
    let images: usize = items.iter().map(|i| i.platforms.len()).sum();
    let indexes = items.iter().filter(|i| i.index).count();
    // Every manifest and every config is a blob; layers make up the rest.
    let pool = blobs.saturating_sub(manifests + images).max(200);
    assign_layers(&mut items, pool);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);

    let indexes_of_pool: Vec<usize> = (0..pool).collect();
    let layers: Vec<Blob> = par_map(&indexes_of_pool, threads, |&i| {
        write_blob(root, &layer_content(i))
    });
    let mut g = Generated {
        manifests: images + indexes,
        images,
        indexes,
        blobs: layers.len(),
        blob_bytes: layers.iter().map(|b| b.size).sum(),
        repositories: repos,
        image_rows: items
            .iter()
            .flat_map(|i| &i.layers)
            .map(|l| 1 + l.len())
            .sum(),
        ..Default::default()
    };
    let written: Vec<Written> = par_map(&items, threads, |it| write_item(root, it, &layers));
    let mut tags: BTreeMap<RepoPath, BTreeMap<String, TagEntry>> = BTreeMap::new();
    for (it, w) in items.iter().zip(&written) {
        g.blobs += w.blobs;
        g.blob_bytes += w.bytes;
        for t in &it.tags {
            tags.entry(repo_path(it.repo)).or_default().insert(
                t.clone(),
                TagEntry {
                    digest: w.top.clone(),
                    checked: it.last_pulled.unwrap_or(it.created),
                    pinned: false,
                },
            );
            g.tags += 1;
        }
    }
    for (repo, t) in tags {
        fs::write(store::tag_path(root, &repo), store::encode_tags(&repo, t)).unwrap();
    }
    g
}

/// `f` over `items` on `threads` threads, the results in order.
fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

// ---- measuring -------------------------------------------------------------------------

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.replace(['_', ','], "")
                .parse()
                .unwrap_or_else(|e| panic!("{name}={v}: {e}"))
        })
        .unwrap_or(default)
}

/// `imagecache list` on the stopped cache: wall time, rows, and peak RSS (KiB) and CPU seconds
/// when `/usr/bin/time` is there to tell.
fn cli_list(bin: &str, image_path: &str) -> (f64, usize, Option<(u64, f64)>) {
    let args = [
        "--image-path",
        image_path,
        "list",
        "--count",
        "-1",
        "--format",
        "json",
    ];
    let time = Path::new("/usr/bin/time");
    let hwm_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.args(["-f", "%M %U %S", "-o"])
            .arg(hwm_file.path())
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let t = Instant::now();
    let out = cmd.args(args).output().unwrap();
    let s = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "imagecache list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    // `%M %U %S`: peak RSS in KiB, user and system seconds.
    let usage = fs::read_to_string(hwm_file.path()).ok().and_then(|s| {
        let f: Vec<f64> = s
            .lines()
            .last()?
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        (f.len() == 3).then(|| (f[0] as u64, f[1] + f[2]))
    });
    (s, rows.as_array().unwrap().len(), usage)
}

/// The `key=value` fields of the first log line containing `message`.
fn log_field(log: &str, message: &str) -> BTreeMap<String, String> {
    let line = log
        .lines()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} in the log:\n{log}"));
    // Text logs may carry ANSI colour codes around field names.
    let plain: String = strip_ansi(line);
    plain
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// User + system CPU seconds of the server: unlike wall time, barely affected by other work
/// on the machine.
fn cpu_secs(pid: u32) -> f64 {
    proc::cpu_secs(pid).expect("the server is running")
}

/// (VmRSS, VmHWM) in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let kib = |field| proc::status_kib(pid, field).expect("the server is running");
    (kib("VmRSS"), kib("VmHWM"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_imagecache"))
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

fn target(ok: bool, what: &str) -> String {
    format!("{} ({what})", if ok { "PASS" } else { "MISS" })
}

#[derive(Default)]
struct Report {
    sections: Vec<(String, Vec<[String; 3]>)>,
}

impl Report {
    fn section(&mut self, title: &str) {
        self.sections.push((title.to_owned(), Vec::new()));
    }

    fn row(&mut self, what: &str, value: impl ToString, target: impl ToString) {
        self.sections.last_mut().expect("a section first").1.push([
            what.to_owned(),
            value.to_string(),
            target.to_string(),
        ]);
    }

    fn markdown(&self, env: &str) -> String {
        let mut out = String::from("# imagecache scale run\n\n");
        out.push_str(env);
        out.push('\n');
        let mut misses = Vec::new();
        for (title, rows) in &self.sections {
            let _ = writeln!(
                out,
                "## {title}\n\n| measure | value | target |\n|---|---|---|"
            );
            for [a, b, c] in rows {
                let _ = writeln!(out, "| {a} | {b} | {c} |");
                if c.starts_with("MISS") {
                    misses.push(format!("{title}: {a}: {b}"));
                }
            }
            out.push('\n');
        }
        let _ = writeln!(out, "**Targets missed: {}**", misses.len());
        for m in misses {
            let _ = writeln!(out, "- {m}");
        }
        out
    }
}

fn environment(manifests: usize, blobs: usize, busy_before: f64) -> String {
    let mem_total = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "- imagecache {}; sizes requested: {manifests} manifests, {blobs} blobs\n\
         - {}, {} cores, {mem_total} RAM\n\
         - {}; load average at the end: {}\n\
         - the cache was just written, so its files are in the page cache (a warm start)\n\
         - MALLOC_ARENA_MAX={}\n",
        proc::imagecache_build(),
        proc::cpu_model(),
        proc::cores(),
        proc::busy_note(busy_before),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "unset (glibc default)".into())
    )
}
