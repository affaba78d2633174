//! Process figures from `/proc` for the long measurement tests (bench, soak): memory, open
//! files, threads and CPU time of a server process, and how busy the machine is.

use std::fs;
use std::process::Command;
use std::time::Duration;

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), KiB; `None` once the process is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    status_number(pid, field)
}

/// A numeric field of `/proc/PID/status` (`Threads`, or a `kB` field in KiB).
pub fn status_number(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident set size of a process, KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM").expect("VmHWM in /proc/PID/status")
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`).
pub fn fd_count(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// User + system CPU seconds of one process (all its threads).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((num(11)? + num(12)?) as f64 / clock_ticks())
}

/// User + system CPU seconds of `root` and all its descendants.
pub fn process_tree_cpu_secs(root: u32) -> f64 {
    // /proc/PID/stat: "pid (comm) state ppid ... utime stime ..." (fields 4, 14, 15).
    let mut procs = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        procs.push((pid, num(1) as u32, num(11) + num(12)));
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let ticks: u64 = procs
        .iter()
        .filter(|p| tree.contains(&p.0))
        .map(|p| p.2)
        .sum();
    ticks as f64 / clock_ticks()
}

/// `getconf CLK_TCK`, the unit of /proc/PID/stat times.
pub fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `(busy, total)` CPU time of the whole machine since boot, in clock ticks (all CPUs; idle
/// and I/O wait are not busy).
pub fn machine_cpu_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Share of all CPUs' time spent busy during `window`.
pub fn cpu_busy(window: Duration) -> f64 {
    let (b0, t0) = machine_cpu_ticks();
    std::thread::sleep(window);
    let (b1, t1) = machine_cpu_ticks();
    let total = t1.saturating_sub(t0);
    if total == 0 {
        return 0.0;
    }
    b1.saturating_sub(b0) as f64 / total as f64
}

/// First line of a command's combined output (a version string, say).
pub fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let s = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            s.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

/// The model name of the first CPU in `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}

/// Warns when a measurement runs from a debug build: `script` is the one that builds release.
pub fn warn_if_debug_build(script: &str) {
    if cfg!(debug_assertions) {
        eprintln!("WARNING: debug build; run {script} (cargo test --release) for real figures");
    }
}

/// Share of busy CPU before a measurement above which its figures are marked as skewed.
pub const BUSY_WARN: f64 = 0.15;

/// How busy the CPUs are over a second before a measurement starts; warns on stderr when other
/// work would skew the figures.
pub fn busy_before_start() -> f64 {
    let busy = cpu_busy(Duration::from_secs(1));
    if busy > BUSY_WARN {
        eprintln!(
            "WARNING: CPUs {:.0}% busy before the start: other work on this machine skews the figures",
            busy * 100.0
        );
    }
    busy
}

/// `CPUs N% busy just before the start`, marked when that skews the figures.
pub fn busy_note(busy: f64) -> String {
    let skewed = if busy > BUSY_WARN {
        " (other work was running: figures are skewed)"
    } else {
        ""
    };
    format!(
        "CPUs {:.0}% busy just before the start{skewed}",
        busy * 100.0
    )
}

/// What was measured: `git describe` of the tree and the build profile.
pub fn imagecache_build() -> String {
    let rev = command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    let build = if cfg!(debug_assertions) {
        "DEBUG"
    } else {
        "release"
    };
    format!("{rev} ({build} build)")
}

/// CPU cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}
