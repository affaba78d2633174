//! Benchmark: imagecache (release build) against the CNCF Distribution pull-through
//! proxy and nginx serving the same files statically, in one run on the same
//! generated images. `#[ignore]`d so `cargo test` skips it; run it with `bench/run`
//! (see `bench/README.md`). Figures are printed and written to `target/bench/results.md`.
//!
//! A missed target is reported, never a test failure; a broken run (a pull that
//! fails or differs, a wrong response, wrk seeing non-2xx answers or socket errors)
//! fails the test.
//!
//! Rates are the best of a few rounds in which the servers take turns: on a small
//! shared machine, interference only ever slows a run down, so the best round is the
//! closest to the server's own speed, and turns spread any background work evenly.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use support::bench_images::{BenchImage, generate_images, unique_content};
use support::http::probe;
use support::image::CONTAINERD_ACCEPT;
use support::proc::{
    busy_before_start, busy_note, command_line, cores, cpu_model, imagecache_build,
    process_tree_cpu_secs, vm_hwm_kib,
};
use support::skopeo::pull_to_dir;
use support::*;

const MIB: usize = 1 << 20;
const MIBF: f64 = MIB as f64;
/// Every pushed image gets this tag.
const TAG: &str = "v1";
/// wrk settings for request rates, and rounds of them.
const RATE_ARGS: &[&str] = &["-t2", "-c64", "-d10s"];
const RATE_ROUNDS: usize = 2;
/// wrk settings for the single-stream blob transfer, and rounds of them.
const STREAM_ARGS: &[&str] = &["-t1", "-c1", "-d5s"];
const STREAM_ROUNDS: usize = 3;
/// Seconds of each run of the client reading 1 MiB at a time.
const STREAM_SECS: u64 = 3;

#[test]
#[ignore = "benchmark; run bench/run"]
fn bench_against_distribution_proxy_and_nginx() {
    proc::warn_if_debug_build("bench/run");
    let started = Instant::now();
    let busy_before = busy_before_start();
    let tmp = tempfile::Builder::new().prefix("bench-").tempdir().unwrap();
    let mut report = Report::default();

    // ---- images ------------------------------------------------------------------
    let t = Instant::now();
    let images = generate_images(tmp.path());
    let unique = unique_content(&images);
    let unique_bytes: u64 = unique.values().sum();
    let summed_bytes: u64 = images
        .iter()
        .flat_map(|b| b.image.manifests().into_iter().chain(b.image.blobs()))
        .map(|d| d.size)
        .sum();
    eprintln!(
        "generated {} images: {} unique objects, {:.1} MiB unique, {:.1} MiB summed over images ({:.1}s)",
        images.len(),
        unique.len(),
        unique_bytes as f64 / MIBF,
        summed_bytes as f64 / MIBF,
        t.elapsed().as_secs_f64()
    );

    // ---- servers -----------------------------------------------------------------
    let upstream = Distribution::start();
    let t = Instant::now();
    for b in &images {
        upstream.push(&b.image.source_ref(), &format!("{}:{TAG}", b.repo));
    }
    eprintln!(
        "pushed to upstream {} ({:.1}s)",
        upstream.url(),
        t.elapsed().as_secs_f64()
    );
    let ours = ImageCache::builder()
        .registry(UPSTREAM, &upstream.url())
        .default_registry(UPSTREAM)
        .tag_ttl("15m")
        .set("log", json!({"level": "info", "format": "text"}))
        .start();
    let proxy = QuietProxy::start(&upstream.url());
    eprintln!(
        "ours on {}, Distribution proxy on {}",
        ours.url(),
        proxy.url()
    );

    // ---- a. cold pull, upstream bytes --------------------------------------------
    let pulls = tmp.path().join("pulls");
    let (ours_cold, ours_secs) = cold_pull(&upstream, &ours.addr(), &images, &pulls.join("ours"));
    let ours_metric = metrics_total(&ours.admin_addr(), "imagecache_upstream_bytes_total");
    let (proxy_cold, proxy_secs) =
        cold_pull(&upstream, &proxy.addr(), &images, &pulls.join("proxy"));
    eprintln!(
        "cold pull: ours {ours_secs:.1}s, {} upstream requests, {} GET bytes (our /metrics: {ours_metric}); \
         proxy {proxy_secs:.1}s, {} upstream requests, {} GET bytes",
        ours_cold.requests, ours_cold.get_bytes, proxy_cold.requests, proxy_cold.get_bytes
    );
    let ours_ratio = ours_cold.get_bytes as f64 / unique_bytes as f64;
    let proxy_ratio = proxy_cold.get_bytes as f64 / unique_bytes as f64;
    report.section(&format!(
        "a. Cold pull of {} images, all platforms (skopeo copy --all)",
        images.len()
    ));
    report.row([
        "unique content (manifests + blobs)",
        &mib(unique_bytes),
        "",
        "",
        "",
        "",
    ]);
    report.row([
        "content summed over the images",
        &mib(summed_bytes),
        "",
        "",
        "",
        "",
    ]);
    report.row([
        "upstream GET bytes (upstream access log)",
        &mib(ours_cold.get_bytes),
        &mib(proxy_cold.get_bytes),
        "",
        "",
        "",
    ]);
    report.row([
        "upstream bytes / unique bytes",
        &format!("{ours_ratio:.2}"),
        &format!("{proxy_ratio:.2}"),
        "",
        "",
        &target(ours_ratio <= 1.005, "ours = 1.00"),
    ]);
    report.row([
        "upstream requests (any method)",
        &ours_cold.requests.to_string(),
        &proxy_cold.requests.to_string(),
        "",
        "",
        "",
    ]);
    report.row([
        "upstream bytes per our /metrics",
        &mib(ours_metric),
        "",
        "",
        "",
        "",
    ]);
    report.row([
        "wall time (s)",
        &format!("{ours_secs:.2}"),
        &format!("{proxy_secs:.2}"),
        "",
        "",
        "",
    ]);

    // ---- nginx with static copies ------------------------------------------------
    let base = images.iter().find(|b| b.repo == "bench/base").unwrap();
    let manifest = base.image.top.clone();
    let big = images.iter().find(|b| b.repo == "bench/big").unwrap();
    let blob = big.image.children[0].layers[0].clone();
    let manifest_path = format!("/v2/{}/manifests/{}", base.repo, manifest.digest);
    let tag_path = format!("/v2/{}/manifests/{TAG}", base.repo);
    let blob_path = format!("/v2/{}/blobs/{}", big.repo, blob.digest);
    let nginx = Nginx::start(&[
        (&manifest_path, base.image.read(&manifest.digest)),
        (&blob_path, big.image.read(&blob.digest)),
    ]);
    eprintln!("nginx on {}", nginx.addr());
    let all3 = [
        ("ours", ours.addr()),
        ("proxy", proxy.addr()),
        ("nginx", nginx.addr()),
    ];
    // Process (tree) whose CPU time counts as the server's: nginx is a master and workers.
    let roots: BTreeMap<&str, u32> = [
        ("ours", ours.pid().expect("ours running")),
        ("proxy", proxy.pid()),
        ("nginx", nginx.pid()),
    ]
    .into();
    let server_cpu = |name: &str| process_tree_cpu_secs(roots[name]);

    // ---- b. manifest by digest ---------------------------------------------------
    for (_, addr) in &all3 {
        check_get(addr, &manifest_path, &manifest.digest, manifest.size);
    }
    let mut upstream_reqs: BTreeMap<&str, u64> = BTreeMap::new();
    let mut cpu = CpuUse::default();
    let runs = take_turns(RATE_ROUNDS, &all3, |name, addr| {
        let mark = upstream_mark(&upstream);
        let c0 = server_cpu(name);
        let w = wrk(
            RATE_ARGS,
            &format!("http://{addr}{manifest_path}"),
            Some(CONTAINERD_ACCEPT),
        );
        cpu.add(name, server_cpu(name) - c0, w.requests as f64);
        *upstream_reqs.entry(name).or_default() += upstream_since(&upstream, mark).requests;
        eprintln!("manifest by digest, {name}: {:.0} req/s", w.rps());
        w.rps()
    });
    report.section(&format!(
        "b. Manifest GET by digest ({} B, containerd's Accept), req/s, wrk {}, best of {RATE_ROUNDS}",
        manifest.size,
        RATE_ARGS.join(" ")
    ));
    let (o, p, n) = (
        best(&runs["ours"]),
        best(&runs["proxy"]),
        best(&runs["nginx"]),
    );
    report.row(["req/s", &rate(o), &rate(p), &rate(n), "", ""]);
    report.row(each_round(&runs, 3));
    report.row(cpu.row("server CPU µs per request", 1e6, 3));
    report.row([
        "upstream requests during the runs",
        &upstream_reqs["ours"].to_string(),
        &upstream_reqs["proxy"].to_string(),
        "",
        "",
        "",
    ]);
    report.row([
        "ours / proxy",
        "",
        "",
        "",
        &format!("{:.1}x", o / p),
        &target(o >= 20.0 * p, ">= 20x"),
    ]);
    report.row([
        "ours / nginx",
        "",
        "",
        "",
        &format!("{:.2}x", o / n),
        &target(o >= 0.5 * n, ">= 0.5x"),
    ]);

    // ---- c. manifest by tag ------------------------------------------------------
    let two = &all3[..2];
    for (_, addr) in two {
        check_get(addr, &tag_path, &manifest.digest, manifest.size);
    }
    let mut upstream_reqs: BTreeMap<&str, u64> = BTreeMap::new();
    let mut cpu = CpuUse::default();
    let runs = take_turns(RATE_ROUNDS, two, |name, addr| {
        let mark = upstream_mark(&upstream);
        let c0 = server_cpu(name);
        let w = wrk(
            RATE_ARGS,
            &format!("http://{addr}{tag_path}"),
            Some(CONTAINERD_ACCEPT),
        );
        cpu.add(name, server_cpu(name) - c0, w.requests as f64);
        let up = upstream_since(&upstream, mark).requests;
        *upstream_reqs.entry(name).or_default() += up;
        eprintln!(
            "manifest by tag, {name}: {:.0} req/s, {up} upstream requests",
            w.rps()
        );
        w.rps()
    });
    report.section(&format!(
        "c. Manifest GET by tag (cached, tagTTL 15m), req/s, wrk {}, best of {RATE_ROUNDS}",
        RATE_ARGS.join(" ")
    ));
    let (o, p) = (best(&runs["ours"]), best(&runs["proxy"]));
    report.row([
        "req/s",
        &rate(o),
        &rate(p),
        "",
        &format!("{:.1}x", o / p),
        "",
    ]);
    report.row(each_round(&runs, 2));
    report.row(cpu.row("server CPU µs per request (not the upstream's)", 1e6, 2));
    let (o_up, p_up) = (upstream_reqs["ours"], upstream_reqs["proxy"]);
    report.row([
        "upstream requests during the runs",
        &o_up.to_string(),
        &p_up.to_string(),
        "",
        "",
        &target(o_up == 0, "ours = 0"),
    ]);

    // ---- d. single-stream blob ---------------------------------------------------
    for (_, addr) in &all3 {
        check_get(addr, &blob_path, &blob.digest, blob.size);
    }
    let mut big_reads: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let (mut cpu_wrk, mut cpu_big) = (CpuUse::default(), CpuUse::default());
    let gib = (1u64 << 30) as f64;
    let by_wrk = take_turns(STREAM_ROUNDS, &all3, |name, addr| {
        let c0 = server_cpu(name);
        let w = wrk(STREAM_ARGS, &format!("http://{addr}{blob_path}"), None);
        let c1 = server_cpu(name);
        let (bytes, secs) = stream_reads(addr, &blob_path, blob.size, STREAM_SECS);
        let c2 = server_cpu(name);
        let wrk_bytes = w.requests as f64 * blob.size as f64;
        cpu_wrk.add(name, c1 - c0, wrk_bytes / gib);
        cpu_big.add(name, c2 - c1, bytes as f64 / gib);
        let mibs = wrk_bytes / w.secs / MIBF;
        let big = bytes as f64 / secs / MIBF;
        eprintln!(
            "blob stream, {name}: wrk {mibs:.0} MiB/s ({} transfers), 1 MiB reads {big:.0} MiB/s",
            w.requests
        );
        big_reads.entry(name).or_default().push(big);
        mibs
    });
    report.section(&format!(
        "d. Single-stream {:.1} MiB blob (cached), MiB/s, best of {STREAM_ROUNDS}",
        blob.size as f64 / MIBF,
    ));
    for (label, runs, cpu) in [
        (
            format!("wrk {} (8 KiB reads)", STREAM_ARGS.join(" ")),
            &by_wrk,
            &cpu_wrk,
        ),
        (
            format!("client reading 1 MiB per read, {STREAM_SECS}s"),
            &big_reads,
            &cpu_big,
        ),
    ] {
        let (o, p, n) = (
            best(&runs["ours"]),
            best(&runs["proxy"]),
            best(&runs["nginx"]),
        );
        report.row([
            &label,
            &format!("{o:.0}"),
            &format!("{p:.0}"),
            &format!("{n:.0}"),
            &format!("{:.2}x", o / n),
            &target(o >= 0.9 * n, "ours >= 0.9x nginx"),
        ]);
        report.row(each_round(runs, 3));
        report.row(cpu.row("  server CPU ms per GiB served", 1e3, 3));
        report.row(["  ours / proxy", "", "", "", &format!("{:.2}x", o / p), ""]);
    }

    // ---- e. peak RSS -------------------------------------------------------------
    let ours_hwm = vm_hwm_kib(ours.pid().expect("ours running"));
    let proxy_hwm = vm_hwm_kib(proxy.pid());
    report.section("e. Peak RSS (VmHWM) after all phases, MiB");
    report.row([
        "VmHWM",
        &format!("{:.1}", ours_hwm as f64 / 1024.0),
        &format!("{:.1}", proxy_hwm as f64 / 1024.0),
        "",
        &format!("{:.2}x", ours_hwm as f64 / proxy_hwm as f64),
        &target(ours_hwm <= proxy_hwm, "ours <= proxy"),
    ]);

    // ---- output ------------------------------------------------------------------
    let md = report.markdown(&environment(started.elapsed(), busy_before));
    println!("\n{}", report.text());
    let out = target_dir().join("bench");
    fs::create_dir_all(&out).unwrap();
    let file = out.join("results.md");
    fs::write(&file, md).unwrap();
    println!("written to {}", file.display());
}

/// Server CPU time and units of work (requests, GiB), summed over runs, by server.
#[derive(Default)]
struct CpuUse(BTreeMap<String, (f64, f64)>);

impl CpuUse {
    fn add(&mut self, name: &str, cpu_secs: f64, units: f64) {
        let e = self.0.entry(name.to_string()).or_default();
        e.0 += cpu_secs;
        e.1 += units;
    }

    /// A report row: CPU seconds per unit times `scale` for the first `servers` of
    /// ours, proxy, nginx.
    fn row(&self, metric: &str, scale: f64, servers: usize) -> [String; 6] {
        let cell = |i: usize| {
            let name = ["ours", "proxy", "nginx"][i];
            match self.0.get(name) {
                Some((cpu, units)) if i < servers && *units > 0.0 => {
                    format!("{:.1}", cpu / units * scale)
                }
                _ => String::new(),
            }
        };
        [
            metric.to_string(),
            cell(0),
            cell(1),
            cell(2),
            String::new(),
            String::new(),
        ]
    }
}

/// Runs `measure(name, addr)` `rounds` times for every server, the servers taking
/// turns; returns the figures by server name, in round order.
fn take_turns<'a>(
    rounds: usize,
    servers: &[(&'a str, String)],
    mut measure: impl FnMut(&'a str, &str) -> f64,
) -> BTreeMap<&'a str, Vec<f64>> {
    let mut out: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for (name, addr) in servers {
            let v = measure(name, addr);
            out.entry(name).or_default().push(v);
        }
    }
    out
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

/// A report row listing every round's figure of the first `servers` of ours, proxy, nginx.
fn each_round(runs: &BTreeMap<&str, Vec<f64>>, servers: usize) -> [String; 6] {
    let all = |name: &str| {
        runs.get(name)
            .map(|v| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .unwrap_or_default()
    };
    let names = ["ours", "proxy", "nginx"];
    let cell = |i: usize| {
        if i < servers {
            all(names[i])
        } else {
            String::new()
        }
    };
    [
        "  each round".to_string(),
        cell(0),
        cell(1),
        cell(2),
        String::new(),
        String::new(),
    ]
}

// ---------------------------------------------------------------------------------------
// Images

/// Pulls every image (all platforms) from the registry at `addr` with skopeo into
/// `dir:` copies, checks them byte for byte, and returns the upstream traffic it caused
/// and the wall time.
fn cold_pull(
    upstream: &Distribution,
    addr: &str,
    images: &[BenchImage],
    out: &Path,
) -> (Traffic, f64) {
    fs::create_dir_all(out).unwrap();
    let mark = upstream_mark(upstream);
    let t = Instant::now();
    for (i, b) in images.iter().enumerate() {
        let dest = out.join(i.to_string());
        let src = format!("docker://{addr}/{}:{TAG}", b.repo);
        pull_to_dir(&src, &dest).unwrap_or_else(|e| panic!("cold pull via {addr}: {e}"));
    }
    let secs = t.elapsed().as_secs_f64();
    for (i, b) in images.iter().enumerate() {
        assert_copy_matches(&out.join(i.to_string()), &b.image);
    }
    (upstream_since(upstream, mark), secs)
}

// ---------------------------------------------------------------------------------------
// Upstream traffic from the Distribution access log (combined log format with sizes)

#[derive(Debug, Default)]
struct Traffic {
    /// Requests of any method.
    requests: u64,
    /// Response body bytes of GET requests (a HEAD transfers no body, whatever the log says).
    get_bytes: u64,
}

fn upstream_mark(upstream: &Distribution) -> u64 {
    upstream_quiet(upstream)
}

/// Waits until the upstream's log has stopped growing (requests a server still had in
/// flight when its client stopped are logged late), and returns its length.
fn upstream_quiet(upstream: &Distribution) -> u64 {
    let len = || {
        fs::metadata(upstream.log_path())
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = len();
    let mut stable = 0;
    while stable < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = len();
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
    last
}

/// Traffic logged after `mark` (a byte offset from `upstream_mark`).
fn upstream_since(upstream: &Distribution, mark: u64) -> Traffic {
    upstream_quiet(upstream);
    let data = fs::read(upstream.log_path()).unwrap();
    let text = String::from_utf8_lossy(&data[mark as usize..]);
    let mut t = Traffic::default();
    for line in text.lines() {
        let Some((method, status, size)) = parse_access(line) else {
            continue;
        };
        t.requests += 1;
        if method == "GET" && (200..300).contains(&status) {
            t.get_bytes += size;
        }
    }
    t
}

/// `IP - - [date] "METHOD TARGET PROTO" STATUS SIZE "referer" "ua"` -> (method, status, size).
fn parse_access(line: &str) -> Option<(String, u16, u64)> {
    if line.starts_with("time=") {
        return None;
    }
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let method = request.split(' ').next()?.to_string();
    let mut f = rest.split_whitespace();
    let status = f.next()?.parse().ok()?;
    let size = f.next()?.parse().unwrap_or(0);
    Some((method, status, size))
}

// ---------------------------------------------------------------------------------------
// HTTP checks, metrics, RSS

/// One GET through a fresh connection: must be 200 with exactly the expected content.
fn check_get(addr: &str, path: &str, digest: &str, size: u64) {
    let r = raw_request(addr, "GET", path, &[("Accept", CONTAINERD_ACCEPT)])
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    assert_eq!(
        r.status,
        200,
        "GET http://{addr}{path}: {}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
    );
    assert_eq!(
        r.body.len() as u64,
        size,
        "GET http://{addr}{path}: body size"
    );
    assert_eq!(
        sha256_digest(&r.body),
        digest,
        "GET http://{addr}{path}: body digest"
    );
}

/// Single-stream throughput in bytes/s with a client that reads 1 MiB per syscall
/// (wrk reads 8 KiB at a time, which makes wrk itself the bottleneck for every server).
/// GETs `path` over one keep-alive connection for `secs`, counting completed transfers.
fn stream_reads(addr: &str, path: &str, size: u64, secs: u64) -> (u64, f64) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut buf = vec![0u8; MIB];
    let (mut bytes, mut transfers) = (0u64, 0u64);
    let t = Instant::now();
    let mut elapsed = Duration::ZERO;
    while elapsed < Duration::from_secs(secs) {
        s.write_all(req.as_bytes()).unwrap();
        // Headers: read until the blank line; whatever follows is body.
        let mut head = Vec::new();
        let end = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "GET http://{addr}{path}: connection closed in headers"
            );
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
        assert!(
            text.starts_with("http/1.1 200"),
            "GET http://{addr}{path}: {text}"
        );
        let len: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("GET http://{addr}{path}: no content-length: {text}"));
        assert_eq!(len, size, "GET http://{addr}{path}: content-length");
        let mut left = len - (head.len() - end) as u64;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = s.read(&mut buf[..want]).unwrap();
            assert!(n > 0, "GET http://{addr}{path}: connection closed in body");
            left -= n as u64;
        }
        bytes += len;
        transfers += 1;
        elapsed = t.elapsed();
    }
    assert!(transfers > 0);
    (bytes, elapsed.as_secs_f64())
}

/// Sum of every sample of a Prometheus counter family on `addr`'s `/metrics`.
fn metrics_total(addr: &str, name: &str) -> u64 {
    let r = raw_request(addr, "GET", "/metrics", &[]).expect("GET /metrics");
    assert_eq!(r.status, 200, "GET /metrics");
    metric_sum(&r.text(), name) as u64
}

// ---------------------------------------------------------------------------------------
// wrk

struct Wrk {
    requests: u64,
    secs: f64,
}

impl Wrk {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

/// Runs wrk and parses its summary; panics when it saw non-2xx/3xx answers, when
/// nothing completed, or on socket errors beyond 0.1% of the requests.
fn wrk(args: &[&str], url: &str, accept: Option<&str>) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.args(args).args(["--timeout", "10s"]);
    if let Some(a) = accept {
        cmd.arg("-H").arg(format!("Accept: {a}"));
    }
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fail = |why: &str| -> ! {
        panic!(
            "wrk {args:?} {url}: {why}\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    if !out.status.success() {
        fail("exited with an error");
    }
    let mut requests = None;
    let mut secs = None;
    let mut non2xx = 0u64;
    let mut sock_errors = 0u64;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non2xx = rest.trim().parse().unwrap_or(u64::MAX);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            sock_errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if line.contains(" requests in ") {
            // "123456 requests in 10.00s, 100.00MB read"
            let f: Vec<&str> = line.split_whitespace().collect();
            requests = f.first().and_then(|n| n.parse::<u64>().ok());
            secs = f.get(3).and_then(|d| parse_secs(d.trim_end_matches(',')));
        }
    }
    let (Some(requests), Some(secs)) = (requests, secs) else {
        fail("cannot parse the summary");
    };
    if requests == 0 {
        fail("no request completed");
    }
    if non2xx > 0 {
        fail(&format!("{non2xx} non-2xx/3xx responses"));
    }
    if sock_errors * 1000 > requests {
        fail(&format!("{sock_errors} socket errors"));
    }
    if sock_errors > 0 {
        eprintln!("note: wrk {url}: {sock_errors} socket errors in {requests} requests");
    }
    Wrk { requests, secs }
}

fn parse_secs(d: &str) -> Option<f64> {
    let (num, mul) = if let Some(n) = d.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = d.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = d.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = d.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = d.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

// ---------------------------------------------------------------------------------------
// nginx serving the same bytes as static files (sendfile), as its own process.

struct Nginx {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Serves each `(url_path, bytes)`; files under `/manifests/` are typed as OCI
    /// manifests, the rest as octet streams.
    fn start(files: &[(&String, Vec<u8>)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bench-nginx-")
            .tempdir()
            .unwrap();
        // Workers may run as an unprivileged user: make the tree world-readable.
        set_mode(dir.path(), 0o755);
        let root = dir.path().join("root");
        for (path, data) in files {
            let f = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, data).unwrap();
            let mut d = f.parent().unwrap().to_path_buf();
            while d.starts_with(&root) {
                set_mode(&d, 0o755);
                d.pop();
            }
            set_mode(&f, 0o644);
        }
        let port = free_port();
        let p = dir.path().display().to_string();
        let conf = format!(
            "worker_processes 2;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20 access_log off;\n\
             \x20 sendfile on;\n\
             \x20 tcp_nopush on;\n\
             \x20 keepalive_timeout 65;\n\
             \x20 keepalive_requests 1000000;\n\
             \x20 client_body_temp_path {p}/tmp/body;\n\
             \x20 proxy_temp_path {p}/tmp/proxy;\n\
             \x20 fastcgi_temp_path {p}/tmp/fastcgi;\n\
             \x20 uwsgi_temp_path {p}/tmp/uwsgi;\n\
             \x20 scgi_temp_path {p}/tmp/scgi;\n\
             \x20 types {{ }}\n\
             \x20 default_type application/octet-stream;\n\
             \x20 server {{\n\
             \x20   listen 127.0.0.1:{port};\n\
             \x20   root {p}/root;\n\
             \x20   location ~ /manifests/ {{ default_type application/vnd.oci.image.manifest.v1+json; }}\n\
             \x20 }}\n\
             }}\n"
        );
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("stderr.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn nginx (apt-get install nginx)");
        let mut n = Nginx {
            dir,
            port,
            child: Some(child),
        };
        let addr = n.addr();
        let up = wait_for(Duration::from_secs(10), || {
            if let Some(Ok(Some(st))) = n.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "nginx exited ({st}):\n{}\n{}",
                    tail(&log, 3000),
                    n.error_log()
                );
            }
            probe(&addr, "/").map(|_| ())
        });
        assert!(
            up.is_some(),
            "nginx on {addr} not ready:\n{}",
            n.error_log()
        );
        n
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The master's pid; the workers are its children.
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("nginx running").id()
    }

    fn error_log(&self) -> String {
        tail(&self.dir.path().join("error.log"), 3000)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // TERM lets the master stop its workers; KILL only if it does not.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        if wait_for(Duration::from_secs(5), || c.try_wait().ok().flatten()).is_none() {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    /// Section titles and their rows: metric, ours, proxy, nginx, ratio, target.
    sections: Vec<(String, Vec<[String; 6]>)>,
}

fn target(ok: bool, what: &str) -> String {
    format!("{} ({what})", if ok { "PASS" } else { "MISS" })
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / MIBF)
}

fn rate(r: f64) -> String {
    format!("{r:.0}")
}

impl Report {
    const HEAD: [&str; 6] = ["metric", "ours", "proxy", "nginx", "ratio", "target"];

    fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    fn row<S: AsRef<str>>(&mut self, cells: [S; 6]) {
        let row = cells.map(|c| c.as_ref().to_string());
        self.sections
            .last_mut()
            .expect("a section first")
            .1
            .push(row);
    }

    fn text(&self) -> String {
        let mut w = Self::HEAD.map(str::len);
        for r in self.sections.iter().flat_map(|(_, rows)| rows) {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        let line = |cells: [&str; 6]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let _ = match i {
                    0 => write!(s, "{c:<width$}", width = w[i]),
                    5 => write!(s, "  {c}"),
                    _ => write!(s, "  {c:>width$}", width = w[i]),
                };
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(Self::HEAD);
        for (title, rows) in &self.sections {
            out.push_str(&format!("\n{title}\n"));
            for r in rows {
                out.push_str(&line(r.each_ref().map(String::as_str)));
            }
        }
        let misses = self.misses();
        out.push_str(&format!("\ntargets missed: {}\n", misses.len()));
        for m in misses {
            out.push_str(&format!("  {m}\n"));
        }
        out
    }

    fn misses(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|(title, rows)| {
                rows.iter()
                    .filter(|r| r[5].starts_with("MISS"))
                    .map(move |r| {
                        let ratio = if r[4].is_empty() {
                            String::new()
                        } else {
                            format!("{} ", r[4])
                        };
                        format!("{}. {}: {ratio}{}", &title[..1], r[0].trim(), r[5])
                    })
            })
            .collect()
    }

    fn markdown(&self, env: &str) -> String {
        let mut out = String::from("# imagecache benchmark results\n\n");
        out.push_str(env);
        out.push('\n');
        for (title, rows) in &self.sections {
            out.push_str(&format!("## {title}\n\n"));
            out.push_str(&format!("| {} |\n", Self::HEAD.join(" | ")));
            out.push_str("|---|---:|---:|---:|---:|---|\n");
            for r in rows {
                out.push_str(&format!("| {} |\n", r.join(" | ")));
            }
            out.push('\n');
        }
        let misses = self.misses();
        out.push_str(&format!("**Targets missed: {}**\n", misses.len()));
        for m in misses {
            out.push_str(&format!("- {m}\n"));
        }
        out
    }
}

fn environment(elapsed: Duration, busy_before: f64) -> String {
    [
        format!("- imagecache: {}", imagecache_build()),
        format!(
            "- proxy: {} (proxy.remoteurl = a plain Distribution on loopback)",
            command_line("docker-registry", &["--version"])
        ),
        format!(
            "- {}; {}",
            command_line("nginx", &["-v"]),
            command_line("wrk", &["--version"])
        ),
        format!(
            "- CPU: {}, {} cores shared by the servers and the clients; loopback only",
            cpu_model(),
            cores()
        ),
        format!(
            "- run took {:.0}s; {}",
            elapsed.as_secs_f64(),
            busy_note(busy_before)
        ),
    ]
    .join("\n")
        + "\n"
}
