//! `imagecache verify` on a test's cache files: the full consistency check (every blob's
//! digest, every manifest's references and tags) after crashes and faults.

use std::process::Command;

use serde_json::Value;

use super::ImageCache;

/// Runs `imagecache verify --format json` on `dir`; returns (exit success, report).
pub fn verify(dir: &std::path::Path, repair: bool) -> (bool, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagecache"));
    cmd.arg("--image-path")
        .arg(dir)
        .args(["verify", "--format", "json"]);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// Stops the server gracefully, asserts `verify` finds nothing, and starts it again.
pub fn stop_verify_start(cache: &mut ImageCache, when: &str) {
    assert!(
        cache.terminate(),
        "{when}: the server did not stop on SIGTERM"
    );
    let (ok, report) = verify(cache.data_dir(), false);
    assert!(
        ok && report["problems"] == 0,
        "{when}: verify found problems: {report:#}"
    );
    cache.restart();
}
