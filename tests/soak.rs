//! Soak: minutes of mixed load on a release `imagecache serve` with background pruning racing
//! the pulls and Image API watchers following every change, next to the CNCF Distribution
//! pull-through proxy on the same upstream and the same request mix. `#[ignore]`d so
//! `cargo test` skips it; run it with `bench/soak`.
//!
//! Every sampling interval records, for both servers, RSS, open files, threads, CPU and the
//! interval's request counts, errors and latency percentiles (manifests and blobs apart); for
//! ours also the cache size and prune runs. The report (printed, and written to
//! `target/soak/report.md`, every sample in `target/soak/samples.csv`) compares the first third
//! of the run with the last third and calls each of our figures FLAT or GROWING; GROWING is a
//! MISS, a measurement, not a failure. A wrong byte from either server, any error from ours, a
//! failed prune run, or a watcher that sees an inconsistent event stream (a revision gap, an
//! ADDED of a known Image, ...) or whose replayed view differs from a fresh list fails the test.
//!
//! Settings (environment): `IMAGECACHE_SOAK_MINUTES` (default 30, fractions allowed),
//! `IMAGECACHE_SOAK_SAMPLE_SECS` (10), `IMAGECACHE_SOAK_SEED` (random; printed),
//! `IMAGECACHE_SOAK_CLIENTS` (12), `IMAGECACHE_SOAK_PRUNE_SECS` (30),
//! `IMAGECACHE_SOAK_SETTLE_SECS` (load before the measured run: two prune periods, at least 30).

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use support::image::{CONTAINERD_ACCEPT, Desc};
use support::proc::{
    busy_before_start, busy_note, clock_ticks, command_line, cores, cpu_model, cpu_secs, fd_count,
    imagecache_build, machine_cpu_ticks, status_number,
};
use support::*;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const MIBF: f64 = MIB as f64;
const GV: &str = "/apis/image.openshift.io/v1";
/// How often ours writes pull statistics (each flush is one Image event per pulled image).
const FLUSH: Duration = Duration::from_secs(5);
/// Changes ours keeps for resuming watchers: small, so the lagging watcher gets 410s.
const CHANGE_HISTORY: usize = 128;
/// Ours' prune protection for fresh images.
const MIN_AGE: &str = "20s";
/// The capacity target of background pruning, as a share of all the images' unique bytes.
const CAPACITY_SHARE: f64 = 0.75;
/// Rules that call a figure FLAT when its last-third average stays within them (see the
/// report's summary): RSS ×1.10 + 4 MiB, fds and threads + 4, p99 latency ×1.5 + 2 ms.
const RSS_FACTOR: f64 = 1.10;
const RSS_SLACK_MIB: f64 = 4.0;
const COUNT_SLACK: f64 = 4.0;
const P99_FACTOR: f64 = 1.5;
const P99_SLACK_MS: f64 = 2.0;
/// Errors kept verbatim for the report (all are counted).
const KEEP_ERRORS: usize = 20;

struct Settings {
    duration: Duration,
    sample: Duration,
    seed: u64,
    clients: usize,
    prune_every: Duration,
    /// Load before the measured run starts.
    settle: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let num = |name: &str, default: f64| -> f64 {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?}: not a number")),
                Err(_) => default,
            }
        };
        let seed = match std::env::var("IMAGECACHE_SOAK_SEED") {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("IMAGECACHE_SOAK_SEED={v:?}: not a u64")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        let mut s = Settings {
            duration: Duration::from_secs_f64(num("IMAGECACHE_SOAK_MINUTES", 30.0) * 60.0),
            sample: Duration::from_secs_f64(num("IMAGECACHE_SOAK_SAMPLE_SECS", 10.0)),
            seed,
            clients: num("IMAGECACHE_SOAK_CLIENTS", 12.0) as usize,
            prune_every: Duration::from_secs_f64(num("IMAGECACHE_SOAK_PRUNE_SECS", 30.0)),
            settle: Duration::ZERO,
        };
        let settle_default = (s.prune_every.as_secs_f64() * 2.0).max(30.0);
        s.settle = Duration::from_secs_f64(num("IMAGECACHE_SOAK_SETTLE_SECS", settle_default));
        assert!(s.sample >= Duration::from_secs(1), "sample interval < 1s");
        assert!(
            s.duration >= s.sample * 3,
            "the run needs at least three samples"
        );
        assert!(s.clients > 0);
        s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    Ours,
    Proxy,
}

impl Server {
    const BOTH: [Server; 2] = [Server::Ours, Server::Proxy];
    fn name(self) -> &'static str {
        match self {
            Server::Ours => "ours",
            Server::Proxy => "proxy",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// One generated image and where it lives upstream.
struct SoakImage {
    repo: String,
    tag: String,
    image: Image,
}

#[test]
#[ignore = "soak run; use bench/soak"]
fn soak_mixed_load_prune_and_watchers() {
    proc::warn_if_debug_build("bench/soak");
    let settings = Settings::from_env();
    eprintln!(
        "soak: {:.0}s settle + {:.1} min, sample every {:.0}s, {} clients, prune every {:.0}s, \
         IMAGECACHE_SOAK_SEED={} (reproduces the request mix)",
        settings.settle.as_secs_f64(),
        settings.duration.as_secs_f64() / 60.0,
        settings.sample.as_secs_f64(),
        settings.clients,
        settings.prune_every.as_secs_f64(),
        settings.seed
    );
    let busy_before = busy_before_start();
    let tmp = tempfile::Builder::new().prefix("soak-").tempdir().unwrap();

    // ---- images and servers ------------------------------------------------------
    let t = Instant::now();
    let images = generate_images(tmp.path());
    let catalog = Catalog::new(&images);
    eprintln!(
        "generated {} images: {} unique objects, {:.1} MiB unique ({:.1}s)",
        images.len(),
        catalog.sizes.len(),
        catalog.unique_bytes() as f64 / MIBF,
        t.elapsed().as_secs_f64()
    );
    let upstream = Distribution::start();
    let t = Instant::now();
    for i in &images {
        upstream.push(&i.image.source_ref(), &format!("{}:{}", i.repo, i.tag));
    }
    eprintln!(
        "pushed to upstream {} ({:.1}s)",
        upstream.url(),
        t.elapsed().as_secs_f64()
    );
    let capacity_mib = (catalog.unique_bytes() as f64 * CAPACITY_SHARE / MIBF).round() as u64;
    let prune_request = json!({
        "maxUsedSpace": format!("{capacity_mib}Mi"),
        "minAge": MIN_AGE,
        "count": -1,
    });
    let ours = ImageCache::builder()
        .registry(UPSTREAM, &upstream.url())
        .default_registry(UPSTREAM)
        .tag_ttl("30s")
        .set(
            "accessFlushInterval",
            json!(format!("{}s", FLUSH.as_secs())),
        )
        .set("changeHistory", json!(CHANGE_HISTORY))
        .set(
            "pruneConfig",
            json!({
                "enabled": true,
                "frequency": format!("{}s", settings.prune_every.as_secs().max(1)),
                "request": prune_request,
            }),
        )
        .set("log", json!({"level": "info", "format": "text"}))
        .start();
    let proxy = QuietProxy::start(&upstream.url());
    let pids = [ours.pid().expect("ours running"), proxy.pid()];
    // Everything else of the soak's own: the upstream and this process (the clients).
    let own = [
        upstream.pid().expect("upstream running"),
        std::process::id(),
    ];
    eprintln!(
        "ours on {} (admin {}), Distribution proxy on {}",
        ours.url(),
        ours.admin_url(),
        proxy.url()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut run = rt.block_on(soak(
        &settings,
        Arc::new(images),
        Arc::new(catalog),
        [ours.url(), proxy.url()],
        ours.admin_url(),
        pids,
        own,
    ));

    let log = ours.log();
    let notes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    run.log_notes = (
        notes.len(),
        notes
            .iter()
            .take(KEEP_ERRORS)
            .map(|l| l.to_string())
            .collect(),
    );

    // ---- report ------------------------------------------------------------------
    let env = environment(&settings, &run, busy_before, &prune_request);
    let md = report(&settings, &run, &env);
    println!("\n{md}");
    let out = target_dir().join("soak");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("report.md"), &md).unwrap();
    fs::write(out.join("samples.csv"), samples_csv(&run.samples)).unwrap();
    println!(
        "written to {} and {}",
        out.join("report.md").display(),
        out.join("samples.csv").display()
    );

    // ---- verdict -----------------------------------------------------------------
    let mut failures = Vec::new();
    for s in Server::BOTH {
        let st = &run.stats[s.index()].failures;
        if st.corrupt > 0 {
            failures.push(format!(
                "{}: {} responses with wrong bytes: {:?}",
                s.name(),
                st.corrupt,
                st.corrupt_msgs
            ));
        }
    }
    let o = &run.stats[Server::Ours.index()].failures;
    if o.errors > 0 {
        failures.push(format!("ours: {} errors: {:?}", o.errors, o.error_msgs));
    }
    let failed_prunes = run.prune_runs_end.get("failed").copied().unwrap_or(0.0)
        - run.prune_runs_start.get("failed").copied().unwrap_or(0.0);
    if failed_prunes > 0.0 {
        failures.push(format!("ours: {failed_prunes} failed prune runs"));
    }
    for w in &run.watchers {
        if let Err(e) = &w.final_check {
            failures.push(format!("watcher {}: {e}", w.name));
        }
        // Every change is one revision and one event: a gap, a duplicate ADDED or a failed
        // request is a server bug even when the view ends up right.
        if w.stats.anomalies > 0 {
            failures.push(format!(
                "watcher {}: {} anomalies: {:?}",
                w.name, w.stats.anomalies, w.stats.anomaly_msgs
            ));
        }
    }
    assert!(failures.is_empty(), "soak failed:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Images

/// 35 images, about 80 MiB of unique content, over six repositories: 28 in four families
/// whose members share their first two layers (every seventh is a one-layer image of its
/// own instead), two OCI indexes (three and two platforms), two Docker schema2 images (one
/// sharing a layer, same bytes and digest, with an OCI family) and one 16 MiB image.
fn generate_images(dir: &Path) -> Vec<SoakImage> {
    const REPOS: [&str; 5] = [
        "soak/web",
        "soak/api",
        "soak/jobs",
        "soak/tools",
        "soak/data",
    ];
    let amd64 = Platform::linux_amd64();
    let d = |n: &str| dir.join("images").join(n);
    let mut out = Vec::new();
    for i in 0..28usize {
        let name = format!("v{i}");
        let image = if i % 7 == 6 {
            gen_image(
                &d(&name),
                1000 + i as u64,
                &[512 * KIB + i * 13 * KIB],
                &amd64,
            )
        } else {
            let family = i % 4;
            let layers = [
                2 * MIB + family * 256 * KIB,
                MIB,
                256 * KIB + i * 97 * KIB, // distinct per image, so each image is new
            ];
            gen_image(&d(&name), 10 + family as u64, &layers, &amd64)
        };
        out.push(SoakImage {
            repo: REPOS[i % REPOS.len()].into(),
            tag: name,
            image,
        });
    }
    let platforms = [
        Platform::linux_amd64(),
        Platform::new("linux", "arm64", Some("v8")),
        Platform::new("linux", "arm", Some("v7")),
    ];
    out.push(SoakImage {
        repo: "soak/multi".into(),
        tag: "a".into(),
        image: gen_multiarch(&d("multi-a"), 50, &platforms, &[3 * MIB / 2, 512 * KIB]),
    });
    out.push(SoakImage {
        repo: "soak/multi".into(),
        tag: "b".into(),
        image: gen_multiarch(&d("multi-b"), 51, &platforms[..2], &[3 * MIB]),
    });
    out.push(SoakImage {
        repo: "soak/legacy".into(),
        tag: "one".into(),
        // Seed and first size of family 0: the same first layer as its OCI images.
        image: gen_image_v2s2(&d("legacy-one"), 10, &[2 * MIB, 700 * KIB], &amd64),
    });
    out.push(SoakImage {
        repo: "soak/legacy".into(),
        tag: "two".into(),
        image: gen_image_v2s2(&d("legacy-two"), 60, &[MIB], &amd64),
    });
    out.push(SoakImage {
        repo: "soak/big".into(),
        tag: "v1".into(),
        image: gen_image(&d("big"), 70, &[16 * MIB], &amd64),
    });
    out
}

/// What every response must be: manifest bytes and media types, blob sizes.
struct Catalog {
    manifests: BTreeMap<String, (String, Vec<u8>)>,
    sizes: BTreeMap<String, u64>,
}

impl Catalog {
    fn new(images: &[SoakImage]) -> Self {
        let mut c = Catalog {
            manifests: BTreeMap::new(),
            sizes: BTreeMap::new(),
        };
        for i in images {
            for m in i.image.manifests() {
                let bytes = i.image.read(&m.digest);
                c.manifests
                    .insert(m.digest.clone(), (m.media_type.clone(), bytes));
                c.sizes.insert(m.digest, m.size);
            }
            for b in i.image.blobs() {
                c.sizes.insert(b.digest, b.size);
            }
        }
        c
    }

    fn unique_bytes(&self) -> u64 {
        self.sizes.values().sum()
    }
}

// ---------------------------------------------------------------------------------------
// The run

/// Latencies (ms) and errors of one server since the last sample.
#[derive(Default)]
struct Window {
    manifest_ms: Vec<f64>,
    blob_ms: Vec<f64>,
    errors: u64,
}

/// Per-server figures shared by the client tasks.
#[derive(Default)]
struct Live {
    window: Mutex<Window>,
    failures: Mutex<Failures>,
}

#[derive(Default, Clone)]
struct Failures {
    errors: u64,
    error_msgs: Vec<String>,
    corrupt: u64,
    corrupt_msgs: Vec<String>,
}

impl Failures {
    fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.error_msgs.len() < KEEP_ERRORS {
            self.error_msgs.push(msg);
        }
    }
    fn corrupt(&mut self, msg: String) {
        self.corrupt += 1;
        if self.corrupt_msgs.len() < KEEP_ERRORS {
            self.corrupt_msgs.push(msg);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Manifest,
    Blob,
}

struct Load {
    client: reqwest::Client,
    images: Arc<Vec<SoakImage>>,
    catalog: Arc<Catalog>,
    bases: [String; 2],
    live: [Live; 2],
    stop: AtomicBool,
}

/// One server's figures for one interval.
#[derive(Clone, Debug, Default)]
struct ServerSample {
    rss_mib: f64,
    fds: f64,
    threads: f64,
    cpu_pct: f64,
    manifests: usize,
    blobs: usize,
    errors: u64,
    /// p50, p95, p99 in ms; NaN when the interval had no such request.
    manifest_p: [f64; 3],
    blob_p: [f64; 3],
}

/// Ours' cache as `/metrics` reports it.
#[derive(Clone, Debug, Default)]
struct CacheSample {
    manifests: f64,
    blobs: f64,
    mib: f64,
    prune_runs: f64,
    pruned_manifests: f64,
}

#[derive(Clone, Debug)]
struct Sample {
    secs: f64,
    servers: [ServerSample; 2],
    cache: CacheSample,
    /// Busy share of all CPUs, %.
    machine_busy: f64,
    /// Share of all CPUs used by processes outside the soak (builds, ...), %: interference.
    other_work: f64,
}

/// Everything one server did over the whole measured run.
#[derive(Default)]
struct Totals {
    manifest_ms: Vec<f32>,
    blob_ms: Vec<f32>,
    /// Including the warm-up's.
    failures: Failures,
    vm_hwm_mib: f64,
    cpu_secs: f64,
}

struct WatcherReport {
    name: &'static str,
    mode: &'static str,
    stats: WatchStats,
    final_check: Result<usize, String>,
}

struct Run {
    samples: Vec<Sample>,
    stats: [Totals; 2],
    measured: Duration,
    warmup: Duration,
    prune_runs_start: BTreeMap<String, f64>,
    prune_runs_end: BTreeMap<String, f64>,
    prune_removed: [f64; 3],
    /// Ours' requests to the upstream during the run, by outcome (refetches of pruned content).
    upstream_fetches: BTreeMap<String, f64>,
    watchers: Vec<WatcherReport>,
    /// WARN and ERROR lines of ours' log (count, and the first few).
    log_notes: (usize, Vec<String>),
}

async fn soak(
    settings: &Settings,
    images: Arc<Vec<SoakImage>>,
    catalog: Arc<Catalog>,
    bases: [String; 2],
    admin: String,
    pids: [u32; 2],
    own: [u32; 2],
) -> Run {
    let load = Arc::new(Load {
        client: client(),
        images,
        catalog,
        bases,
        live: [Live::default(), Live::default()],
        stop: AtomicBool::new(false),
    });

    // Warm-up: every image, every platform, through both servers, so the measured run starts
    // from full caches (and its first third is not a cold start).
    let t = Instant::now();
    let mut warm = Vec::new();
    for w in 0..4usize {
        let load = load.clone();
        warm.push(tokio::spawn(async move {
            for i in (w..load.images.len()).step_by(4) {
                for s in Server::BOTH {
                    let children = if load.images[i].image.is_index() {
                        (0..load.images[i].image.children.len()).collect()
                    } else {
                        vec![0]
                    };
                    for c in children {
                        pull(&load, s, i, false, c).await;
                    }
                }
            }
        }));
    }
    for w in warm {
        w.await.unwrap();
    }
    let warmup = t.elapsed();
    // Warm-up latencies are not part of the run; its failures are.
    for s in Server::BOTH {
        std::mem::take(&mut *load.live[s.index()].window.lock().unwrap());
    }
    eprintln!(
        "warm-up: every image through both servers in {:.1}s",
        warmup.as_secs_f64()
    );

    // Watchers, each from its own starting list, running until the final check is done.
    let final_phase = Arc::new(AtomicBool::new(false));
    let watchers: Vec<Arc<Watcher>> = WATCHERS
        .iter()
        .map(|p| Arc::new(Watcher::new(p, &admin)))
        .collect();
    let mut watcher_tasks = Vec::new();
    for (i, w) in watchers.iter().enumerate() {
        let (w, fin) = (w.clone(), final_phase.clone());
        let seed = settings.seed ^ (0xA5A5 + i as u64);
        watcher_tasks.push(tokio::spawn(async move { w.run(seed, fin).await }));
    }

    // Clients.
    let mut clients = Vec::new();
    for c in 0..settings.clients {
        let load = load.clone();
        let seed = settings.seed.wrapping_add(c as u64);
        clients.push(tokio::spawn(
            async move { client_loop(load, seed, c).await },
        ));
    }

    // Settle under load (a few prune runs: the first ones grow the server's thread pool and
    // allocator arenas once), then measure from a clean window.
    tokio::time::sleep(settings.settle).await;
    for s in Server::BOTH {
        std::mem::take(&mut *load.live[s.index()].window.lock().unwrap());
    }
    let metrics0 = metrics(&load.client, &admin).await;
    let prune_runs_start = by_label(&metrics0, "imagecache_prune_runs_total", "outcome");
    let cpu0 = pids.map(|p| cpu_secs(p).unwrap_or(0.0));
    let soak_cpu = || -> f64 {
        pids.iter()
            .chain(&own)
            .map(|&p| cpu_secs(p).unwrap_or(0.0))
            .sum()
    };
    let mut last_machine = (machine_cpu_ticks(), soak_cpu());
    let start = tokio::time::Instant::now();

    // Samples.
    let mut samples = Vec::new();
    let mut totals: [Totals; 2] = Default::default();
    let mut last_cpu = cpu0;
    let mut last_t = start;
    let n = (settings.duration.as_secs_f64() / settings.sample.as_secs_f64()).round() as u32;
    for k in 1..=n {
        tokio::time::sleep_until(start + settings.sample * k).await;
        let now = tokio::time::Instant::now();
        let dt = (now - last_t).as_secs_f64();
        last_t = now;
        let mut servers: [ServerSample; 2] = Default::default();
        for s in Server::BOTH {
            let i = s.index();
            let w = std::mem::take(&mut *load.live[i].window.lock().unwrap());
            let cpu = cpu_secs(pids[i]).unwrap_or(last_cpu[i]);
            servers[i] = ServerSample {
                rss_mib: status_number(pids[i], "VmRSS").unwrap_or(0) as f64 / 1024.0,
                fds: fd_count(pids[i]).unwrap_or(0) as f64,
                threads: status_number(pids[i], "Threads").unwrap_or(0) as f64,
                cpu_pct: (cpu - last_cpu[i]) / dt * 100.0,
                manifests: w.manifest_ms.len(),
                blobs: w.blob_ms.len(),
                errors: w.errors,
                manifest_p: percentiles(&w.manifest_ms),
                blob_p: percentiles(&w.blob_ms),
            };
            last_cpu[i] = cpu;
            totals[i]
                .manifest_ms
                .extend(w.manifest_ms.iter().map(|&v| v as f32));
            totals[i]
                .blob_ms
                .extend(w.blob_ms.iter().map(|&v| v as f32));
        }
        let m = metrics(&load.client, &admin).await;
        let cache = CacheSample {
            manifests: metric_sum(&m, "imagecache_store_manifests"),
            blobs: metric_sum(&m, "imagecache_store_blobs"),
            mib: metric_sum(&m, "imagecache_store_bytes") / MIBF,
            prune_runs: metric_sum(&m, "imagecache_prune_runs_total")
                - metric_sum(&metrics0, "imagecache_prune_runs_total"),
            pruned_manifests: metric_sum(&m, "imagecache_prune_removed_manifests_total")
                - metric_sum(&metrics0, "imagecache_prune_removed_manifests_total"),
        };
        let machine = (machine_cpu_ticks(), soak_cpu());
        let ((b0, t0), c0) = last_machine;
        let ((b1, t1), c1) = machine;
        last_machine = machine;
        let total = t1.saturating_sub(t0).max(1) as f64;
        let busy = b1.saturating_sub(b0) as f64;
        let soak_ticks = (c1 - c0) * clock_ticks();
        let sample = Sample {
            secs: (now - start).as_secs_f64(),
            servers,
            cache,
            machine_busy: busy / total * 100.0,
            other_work: ((busy - soak_ticks) / total * 100.0).max(0.0),
        };
        eprintln!("{}", progress_line(&sample));
        samples.push(sample);
    }
    let measured = start.elapsed();
    load.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    for s in Server::BOTH {
        let i = s.index();
        let w = std::mem::take(&mut *load.live[i].window.lock().unwrap());
        totals[i]
            .manifest_ms
            .extend(w.manifest_ms.iter().map(|&v| v as f32));
        totals[i]
            .blob_ms
            .extend(w.blob_ms.iter().map(|&v| v as f32));
        totals[i].failures = load.live[i].failures.lock().unwrap().clone();
        totals[i].vm_hwm_mib = status_number(pids[i], "VmHWM").unwrap_or(0) as f64 / 1024.0;
        totals[i].cpu_secs = cpu_secs(pids[i]).unwrap_or(0.0) - cpu0[i];
    }
    let metrics1 = metrics(&load.client, &admin).await;
    let prune_runs_end = by_label(&metrics1, "imagecache_prune_runs_total", "outcome");
    let prune_removed = [
        "imagecache_prune_removed_manifests_total",
        "imagecache_prune_removed_blobs_total",
        "imagecache_prune_reclaimed_bytes_total",
    ]
    .map(|f| metric_sum(&metrics1, f) - metric_sum(&metrics0, f));
    let fetches0 = by_label(&metrics0, "imagecache_upstream_fetches_total", "outcome");
    let mut upstream_fetches = by_label(&metrics1, "imagecache_upstream_fetches_total", "outcome");
    for (k, v) in &mut upstream_fetches {
        *v -= fetches0.get(k).copied().unwrap_or(0.0);
    }

    // Final check: once the last pull times are flushed, every watcher's replayed view must
    // equal a fresh list at the same revision.
    final_phase.store(true, Ordering::Relaxed);
    tokio::time::sleep(FLUSH + Duration::from_secs(2)).await;
    let checks = final_check(&load.client, &admin, &watchers).await;
    for t in &watcher_tasks {
        t.abort();
    }
    let watchers = watchers
        .iter()
        .zip(checks)
        .map(|(w, check)| WatcherReport {
            name: w.profile.name,
            mode: w.profile.mode,
            stats: w.state.lock().unwrap().stats.clone(),
            final_check: check,
        })
        .collect();

    Run {
        samples,
        stats: totals,
        measured,
        warmup,
        prune_runs_start,
        prune_runs_end,
        prune_removed,
        upstream_fetches,
        watchers,
        log_notes: (0, Vec::new()),
    }
}

/// One client: picks an image (by tag, or by digest one time in four; one platform of an
/// index, as containerd does) and pulls it through both servers in turn, first ours or first
/// the proxy alternately, so both see the same mix.
async fn client_loop(load: Arc<Load>, seed: u64, id: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut turn = id;
    while !load.stop.load(Ordering::Relaxed) {
        let i = rng.random_range(0..load.images.len());
        let by_digest = rng.random_bool(0.25);
        let child = rng.random_range(0..load.images[i].image.children.len());
        let order = if turn.is_multiple_of(2) {
            Server::BOTH
        } else {
            [Server::Proxy, Server::Ours]
        };
        turn += 1;
        for s in order {
            pull(&load, s, i, by_digest, child).await;
        }
        // A little think time, so the clients are a busy load rather than a flood.
        let pause = rng.random_range(0..50);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Pulls image `i` from `server`: its top manifest, the chosen child manifest of an index,
/// then the config and layers, each checked. Stops at the first failed request.
async fn pull(load: &Load, server: Server, i: usize, by_digest: bool, child: usize) {
    let img = &load.images[i];
    let reference = if by_digest {
        img.image.digest()
    } else {
        img.tag.as_str()
    };
    let top = img.image.top.clone();
    if !fetch(load, server, &img.repo, Kind::Manifest, reference, &top).await {
        return;
    }
    let ch = &img.image.children[child];
    if img.image.is_index()
        && !fetch(
            load,
            server,
            &img.repo,
            Kind::Manifest,
            &ch.manifest.digest,
            &ch.manifest,
        )
        .await
    {
        return;
    }
    for b in std::iter::once(&ch.config).chain(&ch.layers) {
        if !fetch(load, server, &img.repo, Kind::Blob, &b.digest, b).await {
            return;
        }
    }
}

/// One GET, timed to the end of the body, and checked: status 200, exact bytes (a manifest)
/// or size and digest (a blob), and for a manifest the digest header and media type.
/// Returns whether it succeeded.
async fn fetch(
    load: &Load,
    server: Server,
    repo: &str,
    kind: Kind,
    reference: &str,
    want: &Desc,
) -> bool {
    let base = &load.bases[server.index()];
    let url = match kind {
        Kind::Manifest => format!("{base}/v2/{repo}/manifests/{reference}"),
        Kind::Blob => format!("{base}/v2/{repo}/blobs/{reference}"),
    };
    let mut req = load.client.get(&url);
    if kind == Kind::Manifest {
        req = req.header("Accept", CONTAINERD_ACCEPT);
    }
    let live = &load.live[server.index()];
    let t = Instant::now();
    let result = async {
        let r = req.send().await.map_err(|e| format!("{e}"))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await.map_err(|e| format!("body: {e}"))?;
        Ok::<_, String>((status, headers, body))
    }
    .await;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let (status, headers, body) = match result {
        Ok(r) => r,
        Err(e) => {
            live.window.lock().unwrap().errors += 1;
            live.failures
                .lock()
                .unwrap()
                .error(format!("GET {url}: {e}"));
            return false;
        }
    };
    if status != 200 {
        live.window.lock().unwrap().errors += 1;
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        live.failures
            .lock()
            .unwrap()
            .error(format!("GET {url}: {status} {text}"));
        return false;
    }
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let wrong = match kind {
        Kind::Manifest => {
            let (media_type, bytes) = &load.catalog.manifests[&want.digest];
            if body.as_ref() != bytes.as_slice() {
                Some(format!(
                    "{} bytes, digest {}",
                    body.len(),
                    sha256_digest(&body)
                ))
            } else if header("docker-content-digest") != Some(want.digest.as_str())
                || header("content-type") != Some(media_type.as_str())
            {
                // Right bytes, wrong description: an error, not corruption.
                live.window.lock().unwrap().errors += 1;
                live.failures.lock().unwrap().error(format!(
                    "GET {url}: Docker-Content-Digest {:?}, Content-Type {:?}",
                    header("docker-content-digest"),
                    header("content-type")
                ));
                return false;
            } else {
                None
            }
        }
        Kind::Blob => {
            let got = sha256_digest(&body);
            (body.len() as u64 != want.size || got != want.digest)
                .then(|| format!("{} bytes, digest {got}", body.len()))
        }
    };
    if let Some(what) = wrong {
        live.window.lock().unwrap().errors += 1;
        live.failures
            .lock()
            .unwrap()
            .corrupt(format!("GET {url}: {what}"));
        return false;
    }
    let mut w = live.window.lock().unwrap();
    match kind {
        Kind::Manifest => w.manifest_ms.push(ms),
        Kind::Blob => w.blob_ms.push(ms),
    }
    true
}

// ---------------------------------------------------------------------------------------
// Image API watchers

struct WatcherProfile {
    name: &'static str,
    mode: &'static str,
    /// Gets its starting state from `sendInitialEvents` (a streaming list) instead of a list.
    streaming_list: bool,
    bookmarks: bool,
    /// `timeoutSeconds` of each watch, drawn from this range.
    timeout_secs: (u64, u64),
    /// Pause between watches, drawn from this range (seconds): a watcher that falls behind
    /// the change history resumes into a 410 and relists.
    pause_secs: (u64, u64),
}

const WATCHERS: [WatcherProfile; 3] = [
    WatcherProfile {
        name: "w1",
        mode: "list, then watch 20-60 s at a time",
        streaming_list: false,
        bookmarks: false,
        timeout_secs: (20, 60),
        pause_secs: (0, 0),
    },
    WatcherProfile {
        name: "w2",
        mode: "streaming list (sendInitialEvents), bookmarks, watch 15-45 s",
        streaming_list: true,
        bookmarks: true,
        timeout_secs: (15, 45),
        pause_secs: (0, 0),
    },
    WatcherProfile {
        name: "w3",
        mode: "list, watch 5-20 s, then pause 0-45 s",
        streaming_list: false,
        bookmarks: false,
        timeout_secs: (5, 20),
        pause_secs: (0, 45),
    },
];

#[derive(Clone, Debug, Default)]
struct WatchStats {
    watches: u64,
    lists: u64,
    /// 410 Expired (as an ERROR event or a response status), each followed by a relist.
    expired: u64,
    added: u64,
    modified: u64,
    deleted: u64,
    bookmarks: u64,
    /// Events that do not fit the view: a revision that is not the next one, an ADDED of a
    /// known name, a MODIFIED or DELETED of an unknown one, an unexpected ERROR.
    anomalies: u64,
    anomaly_msgs: Vec<String>,
    /// Failed requests (connection errors, unexpected statuses).
    request_errors: u64,
}

impl WatchStats {
    fn anomaly(&mut self, msg: String) {
        self.anomalies += 1;
        if self.anomaly_msgs.len() < KEEP_ERRORS {
            self.anomaly_msgs.push(msg);
        }
    }
}

/// A watcher's view: the Images it has seen (by name) as of revision `rv`.
#[derive(Default)]
struct View {
    rv: u64,
    objects: BTreeMap<String, Value>,
    stats: WatchStats,
}

struct Watcher {
    profile: &'static WatcherProfile,
    admin: String,
    client: reqwest::Client,
    state: Mutex<View>,
}

enum WatchEnd {
    /// The server ended the watch (timeout): resume from the view's revision.
    Resume,
    /// 410 or an inconsistency: start again from a list.
    Relist,
}

impl Watcher {
    fn new(profile: &'static WatcherProfile, admin: &str) -> Self {
        Watcher {
            profile,
            admin: admin.to_string(),
            client: client(),
            state: Mutex::new(View::default()),
        }
    }

    async fn run(&self, seed: u64, final_phase: Arc<AtomicBool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut need_list = true;
        loop {
            let timeout =
                rng.random_range(self.profile.timeout_secs.0..=self.profile.timeout_secs.1);
            let end = if need_list && self.profile.streaming_list {
                self.watch(None, timeout).await
            } else {
                if need_list && !self.relist().await {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let rv = self.state.lock().unwrap().rv;
                self.watch(Some(rv), timeout).await
            };
            need_list = matches!(end, WatchEnd::Relist);
            let (lo, hi) = self.profile.pause_secs;
            if hi > 0 && !final_phase.load(Ordering::Relaxed) {
                let until = Instant::now() + Duration::from_secs(rng.random_range(lo..=hi));
                while Instant::now() < until && !final_phase.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn url(&self, query: &str) -> String {
        format!("{}{GV}/images?{query}", self.admin)
    }

    /// Replaces the view with a fresh list.
    async fn relist(&self) -> bool {
        match list_images(&self.client, &self.admin).await {
            Ok((rv, objects)) => {
                let mut v = self.state.lock().unwrap();
                v.rv = rv;
                v.objects = objects;
                v.stats.lists += 1;
                true
            }
            Err(e) => {
                let mut v = self.state.lock().unwrap();
                v.stats.request_errors += 1;
                v.stats.anomaly(format!("list: {e}"));
                false
            }
        }
    }

    /// One watch: from the view's revision (`after`), or a streaming list when `None`.
    async fn watch(&self, after: Option<u64>, timeout: u64) -> WatchEnd {
        let mut q = format!("watch=1&timeoutSeconds={timeout}");
        match after {
            Some(rv) => write!(q, "&resourceVersion={rv}").unwrap(),
            None => q.push_str("&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"),
        }
        if self.profile.bookmarks || after.is_none() {
            q.push_str("&allowWatchBookmarks=true");
        }
        self.state.lock().unwrap().stats.watches += 1;
        let resp = match self.client.get(self.url(&q)).send().await {
            Ok(r) => r,
            Err(e) => {
                let mut v = self.state.lock().unwrap();
                v.stats.request_errors += 1;
                v.stats.anomaly(format!("watch: {e}"));
                return WatchEnd::Relist;
            }
        };
        match resp.status().as_u16() {
            200 => {}
            410 => {
                self.state.lock().unwrap().stats.expired += 1;
                return WatchEnd::Relist;
            }
            s => {
                let mut v = self.state.lock().unwrap();
                v.stats.request_errors += 1;
                v.stats.anomaly(format!("watch: status {s}"));
                return WatchEnd::Relist;
            }
        }
        // A streaming list collects the initial objects apart and swaps them in at its end.
        let mut initial: Option<BTreeMap<String, Value>> = after.is_none().then(BTreeMap::new);
        let mut buf: Vec<u8> = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let mut v = self.state.lock().unwrap();
                    v.stats.request_errors += 1;
                    v.stats.anomaly(format!("watch body: {e}"));
                    return WatchEnd::Relist;
                }
            };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let event: Value = match serde_json::from_slice(&line) {
                    Ok(e) => e,
                    Err(e) => {
                        self.state
                            .lock()
                            .unwrap()
                            .stats
                            .anomaly(format!("event is not JSON ({e})"));
                        return WatchEnd::Relist;
                    }
                };
                if let Some(end) = self.apply(&event, &mut initial) {
                    return end;
                }
            }
        }
        if initial.is_some() {
            // Ended before the initial events were complete: start over.
            return WatchEnd::Relist;
        }
        WatchEnd::Resume
    }

    /// Applies one event to the view (or to the initial objects of a streaming list).
    fn apply(
        &self,
        event: &Value,
        initial: &mut Option<BTreeMap<String, Value>>,
    ) -> Option<WatchEnd> {
        let kind = event["type"].as_str().unwrap_or_default();
        let object = &event["object"];
        let rv: u64 = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut guard = self.state.lock().unwrap();
        let v = &mut *guard;
        match kind {
            "ADDED" | "MODIFIED" | "DELETED" => {
                match kind {
                    "ADDED" => v.stats.added += 1,
                    "MODIFIED" => v.stats.modified += 1,
                    _ => v.stats.deleted += 1,
                }
                if let Some(init) = initial.as_mut() {
                    // Initial events carry each object's own revision, not a sequence.
                    if kind == "ADDED" {
                        init.insert(name, object.clone());
                    } else {
                        v.stats
                            .anomaly(format!("{kind} {name} among the initial events"));
                    }
                    return None;
                }
                // Every change is one revision and the watch is unfiltered: no gaps.
                if rv != v.rv + 1 {
                    let msg = format!("{kind} {name} at revision {rv}, expected {}", v.rv + 1);
                    v.stats.anomaly(msg);
                }
                v.rv = v.rv.max(rv);
                match (kind, v.objects.contains_key(&name)) {
                    ("ADDED", true) => v.stats.anomaly(format!("ADDED {name}: already known")),
                    ("MODIFIED", false) => v.stats.anomaly(format!("MODIFIED {name}: unknown")),
                    ("DELETED", false) => v.stats.anomaly(format!("DELETED {name}: unknown")),
                    _ => {}
                }
                if kind == "DELETED" {
                    v.objects.remove(&name);
                } else {
                    v.objects.insert(name, object.clone());
                }
            }
            "BOOKMARK" => {
                v.stats.bookmarks += 1;
                let end_of_initial =
                    object["metadata"]["annotations"][INITIAL_EVENTS_END].as_str() == Some("true");
                if end_of_initial {
                    if let Some(init) = initial.take() {
                        v.objects = init;
                        v.rv = rv;
                        v.stats.lists += 1;
                    }
                } else if initial.is_none() {
                    if rv != v.rv {
                        let msg = format!("BOOKMARK at {rv} while the view is at {}", v.rv);
                        v.stats.anomaly(msg);
                    }
                    v.rv = v.rv.max(rv);
                }
            }
            "ERROR" if object["code"].as_u64() == Some(410) => {
                v.stats.expired += 1;
                return Some(WatchEnd::Relist);
            }
            _ => {
                v.stats.anomaly(format!("unexpected event {event}"));
                return Some(WatchEnd::Relist);
            }
        }
        None
    }
}

/// The annotation of the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// `GET .../images`: the list's revision and its Images by name.
async fn list_images(
    c: &reqwest::Client,
    admin: &str,
) -> Result<(u64, BTreeMap<String, Value>), String> {
    let r = c
        .get(format!("{admin}{GV}/images"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    let list: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or("list without a resourceVersion")?;
    let objects = list["items"]
        .as_array()
        .ok_or("list without items")?
        .iter()
        .map(|o| {
            (
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                o.clone(),
            )
        })
        .collect();
    Ok((rv, objects))
}

/// An Image without its `resourceVersion`: a list gives an unchanged object the revision
/// just before the oldest retained change, while its event carried the change's own.
fn comparable(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    o
}

/// Compares each watcher's view with a fresh list taken at the revision the watcher is at.
/// Background pruning may move the cache on meanwhile: then the check waits for the watcher
/// to catch up with a newer list and tries again, for up to three minutes.
async fn final_check(
    c: &reqwest::Client,
    admin: &str,
    watchers: &[Arc<Watcher>],
) -> Vec<Result<usize, String>> {
    let mut results: Vec<Option<Result<usize, String>>> = vec![None; watchers.len()];
    let deadline = Instant::now() + Duration::from_secs(180);
    while results.iter().any(Option::is_none) && Instant::now() < deadline {
        let (rv, list) = match list_images(c, admin).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("final check: list: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for (i, w) in watchers.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            // Wait (up to 20 s) for the watcher to reach the list's revision.
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                let at = w.state.lock().unwrap().rv;
                if at >= rv || Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let v = w.state.lock().unwrap();
            if v.rv != rv {
                continue; // behind (retry) or ahead (the cache moved on: a newer list)
            }
            let mut diffs = Vec::new();
            for (name, o) in &list {
                match v.objects.get(name) {
                    None => diffs.push(format!("{name}: missing from the view")),
                    Some(seen) if comparable(seen) != comparable(o) => diffs.push(format!(
                        "{name}: view {} != list {}",
                        comparable(seen),
                        comparable(o)
                    )),
                    Some(_) => {}
                }
            }
            for name in v.objects.keys().filter(|n| !list.contains_key(*n)) {
                diffs.push(format!("{name}: in the view, not in the list"));
            }
            results[i] = Some(if diffs.is_empty() {
                Ok(list.len())
            } else {
                diffs.truncate(5);
                Err(format!(
                    "view at revision {rv} differs from the list: {}",
                    diffs.join("; ")
                ))
            });
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err("never caught up with a list within 3 minutes of the end".into())
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Figures

/// p50, p95, p99 (nearest rank) of `v`; NaN when empty.
fn percentiles(v: &[f64]) -> [f64; 3] {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    [0.50, 0.95, 0.99].map(|p| rank(&s, p))
}

fn rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn percentiles32(v: &[f32]) -> [f64; 3] {
    percentiles(&v.iter().map(|&x| x as f64).collect::<Vec<_>>())
}

/// Ours' `/metrics` text (empty when unreachable: the sample then shows zeros).
async fn metrics(c: &reqwest::Client, admin: &str) -> String {
    match c.get(format!("{admin}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A counter family's samples summed by the value of one label.
fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let key = format!("{label}=\"");
        let Some(v) = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix(key.as_str()))
        else {
            continue;
        };
        if let Ok(x) = value.trim().parse::<f64>() {
            *out.entry(v.trim_end_matches('"').to_string()).or_default() += x;
        }
    }
    out
}

fn progress_line(s: &Sample) -> String {
    let mut line = format!("t={:>5.0}s", s.secs);
    for srv in Server::BOTH {
        let x = &s.servers[srv.index()];
        write!(
            line,
            " | {} rss {:.1} MiB fds {:.0} thr {:.0} cpu {:.0}% req {} err {} m-p99 {} b-p99 {}",
            srv.name(),
            x.rss_mib,
            x.fds,
            x.threads,
            x.cpu_pct,
            x.manifests + x.blobs,
            x.errors,
            ms(x.manifest_p[2]),
            ms(x.blob_p[2]),
        )
        .unwrap();
    }
    write!(
        line,
        " | cache {:.0} manifests {:.1} MiB, prunes {:.0} | machine busy {:.0}%, other work {:.0}%",
        s.cache.manifests, s.cache.mib, s.cache.prune_runs, s.machine_busy, s.other_work
    )
    .unwrap();
    line
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn triple(p: [f64; 3]) -> String {
    p.map(ms).join(" / ")
}

fn samples_csv(samples: &[Sample]) -> String {
    let mut out = String::from("secs");
    for s in Server::BOTH {
        for col in [
            "rss_mib",
            "fds",
            "threads",
            "cpu_pct",
            "manifest_reqs",
            "blob_reqs",
            "errors",
            "manifest_p50_ms",
            "manifest_p95_ms",
            "manifest_p99_ms",
            "blob_p50_ms",
            "blob_p95_ms",
            "blob_p99_ms",
        ] {
            write!(out, ",{}_{col}", s.name()).unwrap();
        }
    }
    out.push_str(
        ",cache_manifests,cache_blobs,cache_mib,prune_runs,pruned_manifests,machine_busy_pct,other_work_pct\n",
    );
    for x in samples {
        write!(out, "{:.1}", x.secs).unwrap();
        for s in &x.servers {
            write!(
                out,
                ",{:.2},{},{},{:.1},{},{},{}",
                s.rss_mib, s.fds, s.threads, s.cpu_pct, s.manifests, s.blobs, s.errors
            )
            .unwrap();
            for p in s.manifest_p.iter().chain(&s.blob_p) {
                write!(out, ",{p:.3}").unwrap();
            }
        }
        writeln!(
            out,
            ",{},{},{:.2},{},{},{:.1},{:.1}",
            x.cache.manifests,
            x.cache.blobs,
            x.cache.mib,
            x.cache.prune_runs,
            x.cache.pruned_manifests,
            x.machine_busy,
            x.other_work
        )
        .unwrap();
    }
    out
}

/// Mean of `f` over samples, skipping NaN (intervals without such a request).
fn mean(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let v: Vec<f64> = samples.iter().map(f).filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

struct Trend {
    metric: &'static str,
    server: Server,
    first: f64,
    last: f64,
    rule: String,
    flat: bool,
}

/// First third against last third of the samples, per metric and server.
fn trends(samples: &[Sample]) -> (Vec<Trend>, usize) {
    let third = samples.len() / 3;
    let (first, last) = (&samples[..third], &samples[samples.len() - third..]);
    let mut out = Vec::new();
    for s in Server::BOTH {
        let i = s.index();
        let pair = |f: &dyn Fn(&Sample) -> f64| (mean(first, f), mean(last, f));
        let (a, b) = pair(&|x| x.servers[i].rss_mib);
        let limit = a * RSS_FACTOR + RSS_SLACK_MIB;
        out.push(Trend {
            metric: "RSS (MiB)",
            server: s,
            first: a,
            last: b,
            rule: format!("<= first × {RSS_FACTOR} + {RSS_SLACK_MIB} = {limit:.1}"),
            flat: b <= limit,
        });
        for (metric, f) in [
            (
                "open fds",
                &(|x: &Sample| x.servers[i].fds) as &dyn Fn(&Sample) -> f64,
            ),
            ("threads", &|x: &Sample| x.servers[i].threads),
        ] {
            let (a, b) = pair(f);
            let limit = a + COUNT_SLACK;
            out.push(Trend {
                metric,
                server: s,
                first: a,
                last: b,
                rule: format!("<= first + {COUNT_SLACK} = {limit:.1}"),
                flat: b <= limit,
            });
        }
        for (metric, f) in [
            (
                "manifest p99 (ms)",
                &(|x: &Sample| x.servers[i].manifest_p[2]) as &dyn Fn(&Sample) -> f64,
            ),
            ("blob p99 (ms)", &|x: &Sample| x.servers[i].blob_p[2]),
        ] {
            let (a, b) = pair(f);
            let limit = a * P99_FACTOR + P99_SLACK_MS;
            out.push(Trend {
                metric,
                server: s,
                first: a,
                last: b,
                rule: format!("<= first × {P99_FACTOR} + {P99_SLACK_MS} = {limit:.1}"),
                // No requests in a third (NaN) cannot show growth.
                flat: b.partial_cmp(&limit) != Some(std::cmp::Ordering::Greater),
            });
        }
    }
    (out, third)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn report(settings: &Settings, run: &Run, env: &str) -> String {
    let mut md = String::from("# imagecache soak report\n\n");
    md.push_str(env);

    // Per-interval tables.
    let rows = &run.samples;
    let step = rows.len().div_ceil(40).max(1);
    let shown: Vec<&Sample> = rows
        .iter()
        .enumerate()
        .filter(|(k, _)| k % step == step - 1 || *k == rows.len() - 1)
        .map(|(_, s)| s)
        .collect();
    let every = if step > 1 {
        format!(", every {step}th of {} samples", rows.len())
    } else {
        String::new()
    };
    writeln!(
        md,
        "\n## Per interval ({:.0} s{every}; all of them in samples.csv)\n",
        settings.sample.as_secs_f64()
    )
    .unwrap();
    md.push_str(
        "Latencies are ms to the end of the body, p50 / p95 / p99 of the interval's requests.\n\n",
    );
    for s in Server::BOTH {
        let i = s.index();
        writeln!(md, "### {}\n", s.name()).unwrap();
        let mut head = "| t (s) | RSS MiB | fds | threads | CPU % | manifests | blobs | errors | manifest ms | blob ms |".to_string();
        let mut rule = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_string();
        if s == Server::Ours {
            head.push_str(
                " cache images | cache MiB | prune runs | pruned images | machine busy % | other work % |",
            );
            rule.push_str("---:|---:|---:|---:|---:|---:|");
        }
        writeln!(md, "{head}\n{rule}").unwrap();
        for x in &shown {
            let v = &x.servers[i];
            write!(
                md,
                "| {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
                x.secs,
                v.rss_mib,
                v.fds,
                v.threads,
                v.cpu_pct,
                v.manifests,
                v.blobs,
                v.errors,
                triple(v.manifest_p),
                triple(v.blob_p)
            )
            .unwrap();
            if s == Server::Ours {
                write!(
                    md,
                    " {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
                    x.cache.manifests,
                    x.cache.mib,
                    x.cache.prune_runs,
                    x.cache.pruned_manifests,
                    x.machine_busy,
                    x.other_work
                )
                .unwrap();
            }
            md.push('\n');
        }
        md.push('\n');
    }

    // Trends.
    let (trends, third) = trends(rows);
    writeln!(
        md,
        "## Flat or growing: mean of the first {third} samples against the last {third}\n"
    )
    .unwrap();
    md.push_str("| metric | server | first third | last third | FLAT when last third | verdict |\n|---|---|---:|---:|---|---|\n");
    let mut misses = Vec::new();
    for t in &trends {
        let verdict = match (t.flat, t.server) {
            (true, _) => "FLAT".to_string(),
            (false, Server::Ours) => {
                misses.push(format!(
                    "ours {}: {:.1} -> {:.1}",
                    t.metric, t.first, t.last
                ));
                "GROWING (MISS)".to_string()
            }
            (false, Server::Proxy) => "GROWING".to_string(),
        };
        writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {} | {verdict} |",
            t.metric,
            t.server.name(),
            t.first,
            t.last,
            t.rule
        )
        .unwrap();
    }
    // Interference: CPU the rest of the machine took. Latency that grows with it is the
    // machine's, not the server's; the proxy's latency moving the same way says the same.
    let first_other = mean(&rows[..third], |x| x.other_work);
    let last_other = mean(&rows[rows.len() - third..], |x| x.other_work);
    writeln!(
        md,
        "| other work on the machine (% of all CPUs) | - | {first_other:.1} | {last_other:.1} | (not judged) | |"
    )
    .unwrap();
    if !misses.is_empty() && last_other > first_other + 10.0 {
        writeln!(
            md,
            "\nOther work on the machine rose from {first_other:.0}% to {last_other:.0}% of the CPUs: \
             a latency MISS may be interference (compare the proxy's trend)."
        )
        .unwrap();
    }

    // Ours against the proxy.
    let [o, p] = &run.stats;
    let secs = run.measured.as_secs_f64();
    let (om, pm) = (percentiles32(&o.manifest_ms), percentiles32(&p.manifest_ms));
    let (ob, pb) = (percentiles32(&o.blob_ms), percentiles32(&p.blob_ms));
    let mean_rss = |i: usize| mean(rows, |x| x.servers[i].rss_mib);
    md.push_str("\n## Ours against the Distribution proxy, whole measured run\n\n");
    md.push_str("| metric | ours | proxy | ours / proxy |\n|---|---:|---:|---:|\n");
    let reqs = |t: &Totals| (t.manifest_ms.len() + t.blob_ms.len()) as f64;
    let mut line = |m: &str, a: f64, b: f64, fmt: &dyn Fn(f64) -> String| {
        writeln!(md, "| {m} | {} | {} | {} |", fmt(a), fmt(b), ratio(a, b)).unwrap();
    };
    let int = |v: f64| format!("{v:.0}");
    let one = |v: f64| format!("{v:.1}");
    line("requests completed", reqs(o), reqs(p), &int);
    line("requests / s", reqs(o) / secs, reqs(p) / secs, &one);
    line(
        "manifest requests",
        o.manifest_ms.len() as f64,
        p.manifest_ms.len() as f64,
        &int,
    );
    line("manifest p50 (ms)", om[0], pm[0], &ms);
    line("manifest p95 (ms)", om[1], pm[1], &ms);
    line("manifest p99 (ms)", om[2], pm[2], &ms);
    line(
        "blob requests",
        o.blob_ms.len() as f64,
        p.blob_ms.len() as f64,
        &int,
    );
    line("blob p50 (ms)", ob[0], pb[0], &ms);
    line("blob p95 (ms)", ob[1], pb[1], &ms);
    line("blob p99 (ms)", ob[2], pb[2], &ms);
    line("peak RSS, VmHWM (MiB)", o.vm_hwm_mib, p.vm_hwm_mib, &one);
    line("mean RSS (MiB)", mean_rss(0), mean_rss(1), &one);
    line("CPU seconds", o.cpu_secs, p.cpu_secs, &one);
    let (of, pf) = (&o.failures, &p.failures);
    line("errors", of.errors as f64, pf.errors as f64, &int);
    line("wrong bytes", of.corrupt as f64, pf.corrupt as f64, &int);

    // Pruning.
    md.push_str("\n## Background pruning (ours)\n\n");
    let runs: Vec<String> = run
        .prune_runs_end
        .iter()
        .map(|(k, v)| {
            let d = v - run.prune_runs_start.get(k).copied().unwrap_or(0.0);
            format!("{d:.0} {k}")
        })
        .collect();
    let cache = |f: fn(&CacheSample) -> f64| {
        let v: Vec<f64> = rows.iter().map(|x| f(&x.cache)).collect();
        (
            v.iter().copied().fold(f64::MAX, f64::min),
            v.iter().copied().fold(f64::MIN, f64::max),
        )
    };
    let (mib_lo, mib_hi) = cache(|c| c.mib);
    let (img_lo, img_hi) = cache(|c| c.manifests);
    let joined = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let fetches: Vec<String> = run
        .upstream_fetches
        .iter()
        .map(|(k, v)| format!("{v:.0} {k}"))
        .collect();
    writeln!(
        md,
        "- runs during the measured run: {}\n\
         - removed: {:.0} manifests, {:.0} blobs, {:.1} MiB\n\
         - cache between {img_lo:.0} and {img_hi:.0} manifests, {mib_lo:.1} and {mib_hi:.1} MiB at the samples\n\
         - ours' upstream requests (tag re-checks, refetches of pruned content): {}",
        joined(runs),
        run.prune_removed[0],
        run.prune_removed[1],
        run.prune_removed[2] / MIBF,
        joined(fetches),
    )
    .unwrap();

    // Watchers.
    md.push_str("\n## Image API watchers (ours)\n\n");
    md.push_str("| watcher | how | watches | lists | 410 Expired | ADDED | MODIFIED | DELETED | BOOKMARK | anomalies | request errors | final view |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for w in &run.watchers {
        let s = &w.stats;
        let fin = match &w.final_check {
            Ok(n) => format!("= list ({n} Images)"),
            Err(_) => "DIFFERS".into(),
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {fin} |",
            w.name,
            w.mode,
            s.watches,
            s.lists,
            s.expired,
            s.added,
            s.modified,
            s.deleted,
            s.bookmarks,
            s.anomalies,
            s.request_errors
        )
        .unwrap();
    }
    for w in &run.watchers {
        if let Err(e) = &w.final_check {
            writeln!(md, "\n{}: {e}", w.name).unwrap();
        }
        for a in &w.stats.anomaly_msgs {
            writeln!(md, "- {} anomaly: {a}", w.name).unwrap();
        }
    }

    // Failures.
    md.push_str("\n## Errors (the warm-up included)\n\n");
    for s in Server::BOTH {
        let t = &run.stats[s.index()].failures;
        writeln!(
            md,
            "- {}: {} errors, {} wrong bytes",
            s.name(),
            t.errors,
            t.corrupt
        )
        .unwrap();
        for m in t.corrupt_msgs.iter().chain(&t.error_msgs) {
            writeln!(md, "  - {m}").unwrap();
        }
    }
    writeln!(md, "- ours' log: {} WARN or ERROR lines", run.log_notes.0).unwrap();
    for l in &run.log_notes.1 {
        writeln!(md, "  - `{}`", l.trim()).unwrap();
    }

    writeln!(md, "\n**Targets missed: {}**", misses.len()).unwrap();
    for m in misses {
        writeln!(md, "- {m}").unwrap();
    }
    md
}

fn environment(settings: &Settings, run: &Run, busy_before: f64, prune: &Value) -> String {
    [
        format!("- imagecache: {}", imagecache_build()),
        format!(
            "- proxy: {} (proxy.remoteurl = the same upstream Distribution on loopback)",
            command_line("docker-registry", &["--version"])
        ),
        format!(
            "- measured {:.1} min after a {:.0} s warm-up and {:.0} s of settling under load; \
             sample every {:.0} s; {} clients; seed {} (`IMAGECACHE_SOAK_SEED`)",
            run.measured.as_secs_f64() / 60.0,
            run.warmup.as_secs_f64(),
            settings.settle.as_secs_f64(),
            settings.sample.as_secs_f64(),
            settings.clients,
            settings.seed
        ),
        format!(
            "- ours: tagTTL 30s, accessFlushInterval {}s, changeHistory {CHANGE_HISTORY}, \
             pruneConfig every {:.0} s with `{prune}`",
            FLUSH.as_secs(),
            settings.prune_every.as_secs_f64()
        ),
        format!(
            "- CPU: {}, {} cores shared by the servers, the upstream and the clients; \
             loopback only; {}",
            cpu_model(),
            cores(),
            busy_note(busy_before)
        ),
    ]
    .join("\n")
        + "\n"
}
