//! skopeo wrappers and byte-exact comparison of `dir:` copies with a generated image.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use super::image::Image;

/// `skopeo copy SRC DST EXTRA..` with TLS verification off on both sides (plain
/// HTTP registries) and the signature policy bypassed. `extra` carries
/// `--all`, `--format v2s2`, `--preserve-digests`, ...
/// Returns combined output, or an error holding it.
pub fn skopeo_copy(src: &str, dst: &str, extra: &[&str]) -> Result<String, String> {
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .args(extra)
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo (apt-get install skopeo)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("skopeo copy {src} {dst} {extra:?} failed: {text}"))
    }
}

#[track_caller]
pub fn skopeo_copy_ok(src: &str, dst: &str, extra: &[&str]) -> String {
    skopeo_copy(src, dst, extra).unwrap_or_else(|e| panic!("{e}"))
}

/// Copies `src` (all platforms, digests preserved) into a fresh `dir:` directory.
pub fn pull_to_dir(src: &str, dir: &Path) -> Result<String, String> {
    skopeo_copy(
        src,
        &format!("dir:{}", dir.display()),
        &["--all", "--preserve-digests"],
    )
}

/// Asserts that a `dir:` copy holds exactly the manifests and blobs of `image`, byte for byte.
#[track_caller]
pub fn assert_copy_matches(copy: &Path, image: &Image) {
    let read = |name: &str| {
        std::fs::read(copy.join(name)).unwrap_or_else(|e| panic!("{}/{name}: {e}", copy.display()))
    };
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap().to_string();

    let mut expected: BTreeSet<String> = ["version", "manifest.json"].map(String::from).into();
    assert!(
        read("manifest.json") == image.read(image.digest()),
        "top manifest differs from the source"
    );
    if image.is_index() {
        for c in &image.children {
            let name = format!("{}.manifest.json", hex(&c.manifest.digest));
            assert!(
                read(&name) == image.read(&c.manifest.digest),
                "child manifest {} differs",
                c.manifest.digest
            );
            expected.insert(name);
        }
    }
    for b in image.blobs() {
        let name = hex(&b.digest);
        assert!(
            read(&name) == image.read(&b.digest),
            "blob {} differs",
            b.digest
        );
        expected.insert(name);
    }
    let actual: BTreeSet<String> = std::fs::read_dir(copy)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        actual,
        expected,
        "unexpected file set in {}",
        copy.display()
    );
}
