//! The images the benchmarks pull (`tests/bench.rs`, `tests/peers_bench.rs`), so that their
//! figures are of the same content.

use std::collections::BTreeMap;
use std::path::Path;

use super::image::{Image, Platform, gen_image, gen_image_v2s2, gen_multiarch};

const MIB: usize = 1 << 20;

/// One generated image and where it lives upstream.
pub struct BenchImage {
    pub repo: &'static str,
    pub image: Image,
}

/// ~110 MiB of unique content (141 MiB summed over the images) in six images: a 64 MiB
/// single-layer image, three images sharing their first two layers, a three-platform index, and
/// a Docker schema2 image sharing its first layer with the OCI ones (same bytes, same digest).
pub fn generate_images(dir: &Path) -> Vec<BenchImage> {
    let amd64 = Platform::linux_amd64();
    let platforms = [
        Platform::linux_amd64(),
        Platform::new("linux", "arm64", Some("v8")),
        Platform::new("linux", "arm", Some("v7")),
    ];
    let d = |n: &str| dir.join("images").join(n);
    vec![
        BenchImage {
            repo: "bench/big",
            image: gen_image(&d("big"), 1, &[64 * MIB], &amd64),
        },
        BenchImage {
            repo: "bench/base",
            image: gen_image(&d("base"), 2, &[8 * MIB, 4 * MIB], &amd64),
        },
        BenchImage {
            repo: "bench/app-a",
            image: gen_image(&d("app-a"), 2, &[8 * MIB, 4 * MIB, 3 * MIB], &amd64),
        },
        BenchImage {
            repo: "bench/app-b",
            image: gen_image(&d("app-b"), 2, &[8 * MIB, 4 * MIB, 5 * MIB], &amd64),
        },
        BenchImage {
            repo: "bench/multi",
            image: gen_multiarch(&d("multi"), 5, &platforms, &[6 * MIB, 2 * MIB]),
        },
        BenchImage {
            repo: "bench/legacy",
            image: gen_image_v2s2(&d("legacy"), 2, &[8 * MIB, MIB], &amd64),
        },
    ]
}

/// Size of every distinct manifest and blob across `images`, by digest.
pub fn unique_content(images: &[BenchImage]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for b in images {
        for d in b.image.manifests().into_iter().chain(b.image.blobs()) {
            m.insert(d.digest, d.size);
        }
    }
    m
}
