//! The images the node runs: the project's own (this test run's binary made into an OCI image
//! without a Docker engine, imported into the node's containerd, never pulled), and workload
//! images that exist only on the upstream registry.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::node::Node;
use crate::support::oci::{self, Built, Compression, Rootfs, RunConfig};
use crate::support::ok;

/// The registry the project image is named in: no node mirror is configured for it, so the
/// registry Pods never depend on themselves for their own image.
pub const LOCAL_REGISTRY: &str = "imagecache.local";

/// The binary cargo built for this test run, stripped into `work`. Not a separate release build:
/// on the 2 CI cores that would compile every dependency a second time for a suite that checks
/// behaviour, not speed (the `Dockerfile` builds the release binary; `tests/image.rs` checks the
/// two images agree).
fn project_binary(work: &Path) -> PathBuf {
    let bin = work.join("imagecache");
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&bin)
        .arg(env!("CARGO_BIN_EXE_imagecache"))
        .stdin(Stdio::null())
        .status()
        .expect("run strip (binutils)");
    assert!(
        status.success(),
        "strip {} failed",
        env!("CARGO_BIN_EXE_imagecache")
    );
    bin
}

/// Builds the project image from the test run's binary, imports it into the node's containerd, and
/// returns its repository and tag (the tag is the start of the config digest, so a rebuilt
/// binary is a new tag and `IfNotPresent`/`Never` can never run an old one).
pub fn import_project_image(node: &Node, work: &Path) -> (String, String) {
    let bin = project_binary(work);
    let layout = work.join("project-image");
    let built = oci::project_image(&bin, &layout, "e2e");
    let tag = format!("e2e-{}", &built.config_digest["sha256:".len()..][..12]);
    let repository = format!("{LOCAL_REGISTRY}/imagecache");
    let archive = built.archive(
        &format!("{repository}:{tag}"),
        &work.join("project-image.tar"),
    );
    ok(
        "ctr images import",
        &node.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            &archive.to_string_lossy(),
        ]),
    );
    eprintln!(
        "project image {repository}:{tag}: {} MiB layer ({}), imported into the node",
        built.layer_size / (1 << 20),
        built.manifest_digest
    );
    (repository, tag)
}

/// A workload image: the node's sleep-until-SIGTERM program and `payload` bytes of data
/// generated from `seed`, gzipped (what registries serve; skopeo pushes it unchanged).
pub fn workload_image(node: &Node, dir: &Path, seed: u64, payload: usize) -> Built {
    let mut data = vec![0u8; payload];
    crate::support::image::SplitMix(seed).fill(&mut data);
    let mut fs = Rootfs::new();
    fs.copy("/pause", &node.pause_program(), 0o755)
        .bytes("/payload/data.bin", &data, 0o644);
    let run = RunConfig {
        entrypoint: vec!["/pause".to_owned()],
        user: "65534:65534".to_owned(),
        env: vec!["PATH=/".to_owned()],
        ..RunConfig::default()
    };
    oci::write_layout(dir, "1", &fs, &run, Compression::Gzip)
}

/// Pushes `image` to `registry` (`host:port`) as `repo:1`, digests unchanged.
pub fn push(image: &Built, registry: &str, repo: &str) {
    crate::support::skopeo::skopeo_copy_ok(
        &image.source_ref(),
        &format!("docker://{registry}/{repo}:1"),
        &["--preserve-digests"],
    );
}
