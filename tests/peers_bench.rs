//! Benchmark: three replicas working as one cache (`peers`) against three independent
//! replicas (no `peers`, the behaviour before issue 15), in one run, on the images of
//! `tests/bench.rs` behind one CNCF Distribution upstream. `#[ignore]`d so `cargo test` skips
//! it; run it with `bench/peers` (see `bench/README.md`). Figures are printed and written to
//! `target/bench/peers.md`.
//!
//! For each setup: three clients (skopeo, all platforms), each pinned to a different replica,
//! pull every image cold at the same time. Measured: upstream bytes (GET response sizes in the
//! upstream's access log, as in `tests/bench.rs`), the cold-pull wall time (until the last of
//! the three finishes), and the disk the three replicas use in total. Then warm pulls of the
//! 64 MiB blob: one through a replica that does not own it, then rounds through its owner and
//! through that replica, taking turns, best of three. A broken run (a pull that fails or differs) fails the test; the
//! figures are measurements, never assertions.

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::Digest as _;
use support::bench_images::{BenchImage, generate_images, unique_content};
use support::peers::start_replicas;
use support::proc::{busy_before_start, busy_note, cores, cpu_model, imagecache_build};
use support::skopeo::pull_to_dir;
use support::*;

const MIB: usize = 1 << 20;
const MIBF: f64 = MIB as f64;
const TAG: &str = "v1";
const REPLICAS: usize = 3;
/// Seconds of warm pulls per round and rounds.
const WARM_SECS: u64 = 3;
const WARM_ROUNDS: usize = 3;

/// Bytes of the files under a cache directory (content, records, tag indexes).
fn disk_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Body bytes of successful upstream GETs logged after byte `mark` of its log.
fn upstream_get_bytes_since(upstream: &Distribution, mark: u64) -> u64 {
    settle(upstream);
    let data = fs::read(upstream.log_path()).unwrap();
    let text = String::from_utf8_lossy(&data[mark as usize..]);
    text.lines()
        .filter(|l| !l.starts_with("time="))
        .filter_map(|l| {
            let (_, rest) = l.split_once("] \"")?;
            let (request, rest) = rest.split_once('"')?;
            let mut f = rest.split_whitespace();
            let status: u16 = f.next()?.parse().ok()?;
            let size: u64 = f.next()?.parse().ok()?;
            (request.starts_with("GET ") && (200..300).contains(&status)).then_some(size)
        })
        .sum()
}

/// Waits until the upstream's log stops growing; returns its length.
fn settle(upstream: &Distribution) -> u64 {
    let len = || fs::metadata(upstream.log_path()).map_or(0, |m| m.len());
    let mut last = len();
    let mut stable = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stable < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = len();
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
    }
    last
}

struct Cold {
    upstream_bytes: u64,
    wall: f64,
    disk: u64,
}

/// Three skopeo clients, one per replica, pull every image cold at once; every copy checked.
fn cold_pull(
    upstream: &Distribution,
    caches: &[ImageCache],
    images: &[BenchImage],
    out: &Path,
) -> Cold {
    fs::create_dir_all(out).unwrap();
    let mark = settle(upstream);
    let t = Instant::now();
    std::thread::scope(|s| {
        for (r, cache) in caches.iter().enumerate() {
            let addr = cache.addr();
            s.spawn(move || {
                for (i, b) in images.iter().enumerate() {
                    let dest = out.join(format!("{r}-{i}"));
                    let src = format!("docker://{addr}/{}:{TAG}", b.repo);
                    pull_to_dir(&src, &dest).unwrap_or_else(|e| panic!("pull via {addr}: {e}"));
                }
            });
        }
    });
    let wall = t.elapsed().as_secs_f64();
    for r in 0..caches.len() {
        for (i, b) in images.iter().enumerate() {
            assert_copy_matches(&out.join(format!("{r}-{i}")), &b.image);
        }
    }
    Cold {
        upstream_bytes: upstream_get_bytes_since(upstream, mark),
        wall,
        disk: caches.iter().map(|c| disk_bytes(c.data_dir())).sum(),
    }
}

/// The owner of `digest` among replicas on `ports` (the server's rendezvous weight).
fn owner(ports: &[u16], digest: &str) -> usize {
    let weight = |p: u16| {
        let mut h = sha2::Sha256::new();
        h.update(format!("127.0.0.1:{p}").as_bytes());
        h.update([0u8]);
        h.update(digest.as_bytes());
        u64::from_be_bytes(h.finalize()[..8].try_into().unwrap())
    };
    (0..ports.len())
        .max_by_key(|&i| (weight(ports[i]), std::cmp::Reverse(ports[i])))
        .unwrap()
}

/// MiB/s of back-to-back GETs of a blob over one keep-alive connection for `secs` (at least
/// one GET), each body checked.
fn warm_rate(addr: &str, path: &str, digest: &str, size: u64, secs: u64) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut buf = vec![0u8; MIB];
    let (mut bytes, t) = (0u64, Instant::now());
    loop {
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let end = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "GET {path}: closed in headers");
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "GET {path}: {text}");
        let mut hasher = sha2::Sha256::new();
        hasher.update(&head[end..]);
        let mut left = size - (head.len() - end) as u64;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = s.read(&mut buf[..want]).unwrap();
            assert!(n > 0, "GET {path}: closed in body");
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        assert_eq!(
            format!("sha256:{}", hex::encode(hasher.finalize())),
            digest,
            "GET {path}: body"
        );
        bytes += size;
        if t.elapsed() >= Duration::from_secs(secs) {
            break;
        }
    }
    bytes as f64 / t.elapsed().as_secs_f64() / MIBF
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / MIBF)
}

#[test]
#[ignore = "benchmark; run bench/peers"]
fn bench_cooperating_against_independent_replicas() {
    proc::warn_if_debug_build("bench/peers");
    let started = Instant::now();
    let busy_before = busy_before_start();
    let tmp = tempfile::Builder::new()
        .prefix("bench-peers-")
        .tempdir()
        .unwrap();
    let images = generate_images(tmp.path());
    let unique_bytes: u64 = unique_content(&images).values().sum();
    let upstream = Distribution::start();
    for b in &images {
        upstream.push(&b.image.source_ref(), &format!("{}:{TAG}", b.repo));
    }

    let setups = [
        ("cooperating (nonOwnerBlobs: hot, the default)", Some("hot")),
        ("cooperating (nonOwnerBlobs: proxy)", Some("proxy")),
        ("cooperating (nonOwnerBlobs: keep)", Some("keep")),
        ("independent (no peers)", None),
    ];
    let mut rows = Vec::new();
    let mut warm = Vec::new();
    let big = &images[0];
    let blob = big.image.children[0].layers[0].clone();
    let path = format!("/v2/{}/blobs/{}", big.repo, blob.digest);
    for (i, (name, peering)) in setups.iter().enumerate() {
        let (ports, caches) = start_replicas(
            &upstream.url(),
            REPLICAS,
            peering.map(|mode| json!({"nonOwnerBlobs": mode})),
        );
        let cold = cold_pull(
            &upstream,
            &caches,
            &images,
            &tmp.path().join(format!("pulls{i}")),
        );
        eprintln!(
            "{name}: upstream {} ({:.2}x unique), cold pull {:.2}s, disk {}",
            mib(cold.upstream_bytes),
            cold.upstream_bytes as f64 / unique_bytes as f64,
            cold.wall,
            mib(cold.disk)
        );
        if let Some(mode) = peering {
            // Warm pulls of the 64 MiB layer through its owner and through a non-owner.
            let own = owner(&ports, &blob.digest);
            let other = (own + 1) % REPLICAS;
            // The first pull through the non-owner since the cold pull, on its own: with `hot`
            // it is the second relay (the one that keeps a copy).
            let first = warm_rate(&caches[other].addr(), &path, &blob.digest, blob.size, 0);
            let (mut o, mut n) = (Vec::new(), Vec::new());
            for _ in 0..WARM_ROUNDS {
                o.push(warm_rate(
                    &caches[own].addr(),
                    &path,
                    &blob.digest,
                    blob.size,
                    WARM_SECS,
                ));
                n.push(warm_rate(
                    &caches[other].addr(),
                    &path,
                    &blob.digest,
                    blob.size,
                    WARM_SECS,
                ));
            }
            eprintln!(
                "{mode}: warm 64 MiB blob: first through the non-owner {first:.0} MiB/s; owner {o:.0?} MiB/s, non-owner {n:.0?} MiB/s"
            );
            warm.push((*mode, first, o, n));
        }
        rows.push((name.to_string(), cold));
        drop(caches);
    }

    let mut md = String::from("# Replicas as one cache: cooperating against independent\n\n");
    md.push_str(&format!(
        "- imagecache: {}\n- three replicas and one Distribution upstream on loopback; CPU: {}, {} cores; run took {:.0}s; {}\n\n",
        imagecache_build(),
        cpu_model(),
        cores(),
        started.elapsed().as_secs_f64(),
        busy_note(busy_before)
    ));
    md.push_str(&format!(
        "Three skopeo clients (`copy --all`), each pinned to a different replica, pull the same 6 images ({} unique, {} summed over the images) cold at the same time.\n\n",
        mib(unique_bytes),
        mib(images
            .iter()
            .flat_map(|b| b.image.manifests().into_iter().chain(b.image.blobs()))
            .map(|d| d.size)
            .sum())
    ));
    md.push_str("| setup | upstream GET bytes | upstream / unique | cold pull wall time | disk used, 3 replicas |\n|---|---:|---:|---:|---:|\n");
    for (name, c) in &rows {
        md.push_str(&format!(
            "| {name} | {} | {:.2} | {:.2} s | {} |\n",
            mib(c.upstream_bytes),
            c.upstream_bytes as f64 / unique_bytes as f64,
            c.wall,
            mib(c.disk)
        ));
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let rounds = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    md.push_str(&format!(
        "\nWarm pulls of the 64 MiB layer (one keep-alive connection, back to back, {WARM_SECS} s per round, best of {WARM_ROUNDS}, owner and non-owner taking turns), MiB/s:\n\n\
         | nonOwnerBlobs | first pull through the non-owner | through the owner | through a non-owner | non-owner / owner | rounds (owner; non-owner) |\n|---|---:|---:|---:|---:|---|\n"
    ));
    for (mode, first, o, n) in &warm {
        md.push_str(&format!(
            "| {mode} | {first:.0} | {:.0} | {:.0} | {:.2} | {}; {} |\n",
            best(o),
            best(n),
            best(n) / best(o),
            rounds(o),
            rounds(n)
        ));
    }
    println!("\n{md}");
    let out = target_dir().join("bench");
    fs::create_dir_all(&out).unwrap();
    let file = out.join("peers.md");
    fs::write(&file, md).unwrap();
    println!("written to {}", file.display());
}
