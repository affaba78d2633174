//! Deterministic test images written as an OCI image layout (`oci:DIR:TAG`) or,
//! for Docker schema2, as a skopeo `dir:` directory.
//!
//! skopeo 1.9.3 pushes blobs untouched only when they are already compressed
//! (both `docker://` and `oci:` destinations gzip anything that sniffs as
//! uncompressed, changing its digest), so every layer is a real tar wrapped in
//! gzip. The gzip uses deflate "stored" blocks: valid for every reader, no
//! compression library needed, and cheap for the incompressible content.
//! Its OCI layout reader also ignores index.json entries that are not OCI
//! media types, which is why schema2 images use the `dir:` format instead.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::sha256_digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `Accept` header containerd 1.6 sends when resolving a tag.
pub const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// Tag written into every generated layout.
pub const TAG: &str = "latest";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, arch: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.into(),
            arch: arch.into(),
            variant: variant.map(Into::into),
        }
    }
    pub fn linux_amd64() -> Self {
        Self::new("linux", "amd64", None)
    }
    fn json(&self) -> Value {
        let mut p = json!({"os": self.os, "architecture": self.arch});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
    /// `linux/arm64/v8` form, as used in labels and by tools.
    pub fn to_path(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.arch, v),
            None => format!("{}/{}", self.os, self.arch),
        }
    }
}

/// A content descriptor of something in a generated image.
#[derive(Clone, Debug)]
pub struct Desc {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// One platform image inside a generated image (the image itself when it is not an index).
#[derive(Clone, Debug)]
pub struct Child {
    pub manifest: Desc,
    pub platform: Platform,
    pub config: Desc,
    pub layers: Vec<Desc>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
    Oci,
    /// skopeo `dir:` transport: `version`, `manifest.json`, `<hex>` blobs.
    Dir,
}

/// A generated image on disk plus everything a test needs to check a copy of it.
#[derive(Clone, Debug)]
pub struct Image {
    pub dir: PathBuf,
    pub layout: Layout,
    /// Top-level manifest or index.
    pub top: Desc,
    /// Present when `top` is an index.
    pub index: Option<Desc>,
    pub children: Vec<Child>,
}

impl Image {
    /// skopeo source reference (`oci:DIR:latest` or `dir:DIR`).
    pub fn source_ref(&self) -> String {
        match self.layout {
            Layout::Oci => format!("oci:{}:{}", self.dir.display(), TAG),
            Layout::Dir => format!("dir:{}", self.dir.display()),
        }
    }

    pub fn digest(&self) -> &str {
        &self.top.digest
    }

    pub fn is_index(&self) -> bool {
        self.index.is_some()
    }

    /// Every manifest: the index (if any) first, then the platform manifests.
    pub fn manifests(&self) -> Vec<Desc> {
        self.index
            .iter()
            .cloned()
            .chain(self.children.iter().map(|c| c.manifest.clone()))
            .collect()
    }

    /// Every non-manifest blob (configs and layers), deduplicated.
    pub fn blobs(&self) -> Vec<Desc> {
        let mut seen = BTreeMap::new();
        for c in &self.children {
            for d in std::iter::once(&c.config).chain(&c.layers) {
                seen.entry(d.digest.clone()).or_insert_with(|| d.clone());
            }
        }
        seen.into_values().collect()
    }

    /// Bytes of any manifest or blob of this image.
    pub fn read(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let path = match self.layout {
            Layout::Oci => self.dir.join("blobs/sha256").join(hex),
            Layout::Dir if digest == self.top.digest => self.dir.join("manifest.json"),
            Layout::Dir => self.dir.join(hex),
        };
        fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Total bytes of all layers.
    pub fn layer_bytes(&self) -> u64 {
        self.blobs()
            .iter()
            .filter(|d| d.media_type.contains("layer") || d.media_type.contains("rootfs"))
            .map(|d| d.size)
            .sum()
    }
}

/// Single-platform OCI image; each entry of `layers` is the payload size of one layer.
pub fn gen_image(dir: &Path, seed: u64, layers: &[usize], platform: &Platform) -> Image {
    let mut w = Writer::new(dir, Layout::Oci);
    let child = w.platform_image(seed, 0, layers, platform, Kind::Oci);
    w.finish(child.manifest.clone());
    Image {
        dir: dir.to_path_buf(),
        layout: Layout::Oci,
        top: child.manifest.clone(),
        index: None,
        children: vec![child],
    }
}

/// OCI image index with one OCI manifest per platform; layers differ per platform.
pub fn gen_multiarch(dir: &Path, seed: u64, platforms: &[Platform], layers: &[usize]) -> Image {
    assert!(!platforms.is_empty());
    let mut w = Writer::new(dir, Layout::Oci);
    let children: Vec<Child> = platforms
        .iter()
        .enumerate()
        .map(|(i, p)| w.platform_image(seed, i as u64, layers, p, Kind::Oci))
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|c| json!({
            "mediaType": c.manifest.media_type,
            "digest": c.manifest.digest,
            "size": c.manifest.size,
            "platform": c.platform.json(),
        })).collect::<Vec<_>>(),
        "annotations": {"org.example.seed": seed.to_string()},
    });
    let index = w.put_json(OCI_INDEX, &index);
    w.finish(index.clone());
    Image {
        dir: dir.to_path_buf(),
        layout: Layout::Oci,
        top: index.clone(),
        index: Some(index),
        children,
    }
}

/// Docker schema2 image in skopeo `dir:` format, so its exact bytes can be pushed
/// with `--preserve-digests` (converting with `--format v2s2` rewrites the manifest).
pub fn gen_image_v2s2(dir: &Path, seed: u64, layers: &[usize], platform: &Platform) -> Image {
    let mut w = Writer::new(dir, Layout::Dir);
    let child = w.platform_image(seed, 0, layers, platform, Kind::Docker);
    w.finish(child.manifest.clone());
    Image {
        dir: dir.to_path_buf(),
        layout: Layout::Dir,
        top: child.manifest.clone(),
        index: None,
        children: vec![child],
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Oci,
    Docker,
}

struct Writer {
    dir: PathBuf,
    layout: Layout,
    manifest_json: Option<Vec<u8>>,
}

impl Writer {
    fn new(dir: &Path, layout: Layout) -> Self {
        fs::create_dir_all(dir).unwrap();
        if layout == Layout::Oci {
            fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        }
        Writer {
            dir: dir.to_path_buf(),
            layout,
            manifest_json: None,
        }
    }

    fn put(&mut self, media_type: &str, data: &[u8]) -> Desc {
        let digest = sha256_digest(data);
        let hex = &digest["sha256:".len()..];
        let path = match self.layout {
            Layout::Oci => self.dir.join("blobs/sha256").join(hex),
            Layout::Dir => self.dir.join(hex),
        };
        fs::write(path, data).unwrap();
        Desc {
            digest,
            media_type: media_type.into(),
            size: data.len() as u64,
        }
    }

    fn put_json(&mut self, media_type: &str, v: &Value) -> Desc {
        let bytes = serde_json::to_vec_pretty(v).unwrap();
        if self.layout == Layout::Dir
            && (media_type == DOCKER_MANIFEST || media_type == OCI_MANIFEST)
        {
            // `dir:` keeps the top manifest as manifest.json, not as a blob.
            self.manifest_json = Some(bytes.clone());
            return Desc {
                digest: sha256_digest(&bytes),
                media_type: media_type.into(),
                size: bytes.len() as u64,
            };
        }
        self.put(media_type, &bytes)
    }

    fn platform_image(
        &mut self,
        seed: u64,
        idx: u64,
        layers: &[usize],
        p: &Platform,
        kind: Kind,
    ) -> Child {
        let (layer_mt, config_mt, manifest_mt) = match kind {
            Kind::Oci => (OCI_LAYER_GZIP, OCI_CONFIG, OCI_MANIFEST),
            Kind::Docker => (DOCKER_LAYER_GZIP, DOCKER_CONFIG, DOCKER_MANIFEST),
        };
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (li, &size) in layers.iter().enumerate() {
            let mut rng = SplitMix(
                seed ^ (idx + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((li as u64 + 1) << 40),
            );
            let mut payload = vec![0u8; size];
            rng.fill(&mut payload);
            let tar = tar_one_file(&format!("layer{li}/data.bin"), &payload);
            diff_ids.push(sha256_digest(&tar));
            descs.push(self.put(layer_mt, &gzip_stored(&tar)));
        }
        let labels: BTreeMap<String, String> = [
            ("org.example.seed".to_string(), seed.to_string()),
            ("org.example.platform".to_string(), p.to_path()),
        ]
        .into();
        let mut config = json!({
            // Deterministic but distinct per seed so configs never collide across images.
            "created": format!("2024-01-{:02}T{:02}:{:02}:00Z", 1 + seed % 28, (seed / 28) % 24, (seed / 672) % 60),
            "architecture": p.arch,
            "os": p.os,
            "config": {"Labels": labels, "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layers.iter().enumerate().map(|(i, _)| json!({"created_by": format!("generated layer {i}")})).collect::<Vec<_>>(),
        });
        if let Some(v) = &p.variant {
            config["variant"] = json!(v);
        }
        let config = self.put_json(config_mt, &config);
        let desc =
            |d: &Desc| json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_mt,
            "config": desc(&config),
            "layers": descs.iter().map(desc).collect::<Vec<_>>(),
        });
        let manifest = self.put_json(manifest_mt, &manifest);
        Child {
            manifest,
            platform: p.clone(),
            config,
            layers: descs,
            labels,
        }
    }

    fn finish(self, top: Desc) {
        match self.layout {
            Layout::Oci => {
                fs::write(
                    self.dir.join("oci-layout"),
                    br#"{"imageLayoutVersion":"1.0.0"}"#,
                )
                .unwrap();
                let index = json!({"schemaVersion": 2, "manifests": [{
                    "mediaType": top.media_type, "digest": top.digest, "size": top.size,
                    "annotations": {"org.opencontainers.image.ref.name": TAG},
                }]});
                fs::write(
                    self.dir.join("index.json"),
                    serde_json::to_vec(&index).unwrap(),
                )
                .unwrap();
            }
            Layout::Dir => {
                fs::write(
                    self.dir.join("version"),
                    "Directory Transport Version: 1.1\n",
                )
                .unwrap();
                fs::write(
                    self.dir.join("manifest.json"),
                    self.manifest_json.expect("manifest written"),
                )
                .unwrap();
            }
        }
    }
}

/// splitmix64: tiny, fast, deterministic (two runs generate the same data), and good enough
/// for incompressible test payloads.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform below `n` (near enough for test data).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() <= p
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rem = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        rem.copy_from_slice(&last[..rem.len()]);
    }
}

/// A ustar archive holding one regular file.
fn tar_one_file(name: &str, data: &[u8]) -> Vec<u8> {
    assert!(name.len() < 100);
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{:0w$o}\0", v, w = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field set to spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());

    let padded = data.len().div_ceil(512) * 512;
    let mut out = Vec::with_capacity(512 + padded + 1024);
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(512 + padded + 1024, 0); // data padding + two zero end-of-archive blocks
    out
}

/// gzip member made of deflate stored blocks (RFC 1951 §3.2.4).
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 32);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]); // no mtime: deterministic
    let mut blocks = data.chunks(65535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(b) = blocks.next() {
        out.push(blocks.peek().is_none() as u8); // BFINAL on the last block, BTYPE=00
        let len = b.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}
