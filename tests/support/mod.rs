//! Integration-test harness shared by the test binaries: upstream registries
//! (CNCF Distribution), generated images, skopeo, and the imagecache server.
#![allow(dead_code, unused_imports)]

pub mod bench_images;
pub mod distribution;
pub mod fake;
pub mod faultproxy;
pub mod http;
pub mod image;
pub mod oci;
pub mod peers;
pub mod proc;
pub mod pull;
pub mod server;
pub mod skopeo;
pub mod verify;

use std::net::TcpListener;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use distribution::{Distribution, QuietProxy};
pub use http::{Resp, client, raw_request};
pub use image::{Image, Platform, gen_image, gen_image_v2s2, gen_multiarch};
pub use pull::{Repo, pull_verify};
pub use server::{ImageCache, ImageCacheBuilder, UPSTREAM};
pub use skopeo::{assert_copy_matches, skopeo_copy, skopeo_copy_ok};

/// A loopback port nobody is listening on.
///
/// Ports come from 15000-29999, below Linux's ephemeral range (32768+), so a
/// port handed out here is never reused as the source port of some client
/// connection, and a server restarted on it later can still bind it. The start
/// is spread by pid so concurrently running test binaries rarely probe the same ports.
pub fn free_port() -> u16 {
    const LO: u32 = 15000;
    const SPAN: u32 = 15000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        NEXT.store((std::process::id() * 97) % SPAN, Ordering::Relaxed);
    }
    for _ in 0..SPAN {
        let port = (LO + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// A port free on the local address `host` (the test node's link), from the same range as
/// [`free_port`].
pub fn free_port_on(host: &str) -> u16 {
    loop {
        let port = free_port();
        if TcpListener::bind((host, port)).is_ok() {
            return port;
        }
    }
}

/// A command for a long-running child that dies with this test process, even when the process
/// is killed with SIGKILL: `setpriv --pdeathsig KILL` asks the kernel to kill the child when the
/// thread that started it ends (for a test, when its thread or its runtime's workers end).
pub fn tied_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
    cmd
}

/// A finished command's stdout; fails the test, with its status, stdout and stderr, unless it
/// succeeded.
#[track_caller]
pub fn ok(what: &str, out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Polls `f` every 50ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `max` bytes of a log file, for panic messages.
pub fn tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// Files (recursively) under `dir`; empty when it does not exist.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Where cargo put the binaries (`target/`), from the path of the server binary.
pub fn target_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_BIN_EXE_imagecache"))
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Sum of every sample of a metric family in Prometheus text: `name` alone sums all its label
/// sets, `name{labels}` just that one.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}
