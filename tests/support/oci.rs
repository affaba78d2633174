//! Container images built without a Docker engine: a root file system described entry by entry,
//! written as the one layer of an OCI image layout, and a tar of that layout for
//! `ctr images import`.
//!
//! [`project_image`] is this project's image as the `Dockerfile` describes it (the release
//! binary, the libraries it links dynamically, CA certificates, the zone database, user 65532,
//! the cache directory), for the test node, whose containerd cannot pull it from anywhere.
//! `tests/image.rs` checks that the two agree.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::sha256_digest;

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The user the project's image runs as (distroless `nonroot`).
pub const NONROOT: u32 = 65532;

/// What the image runs and how: the `config` object of an OCI image config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `uid:gid`
    pub user: String,
    /// `KEY=value`, in order.
    pub env: Vec<String>,
    /// `8080/tcp`
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
}

impl RunConfig {
    fn json(&self) -> Value {
        let set = |items: &[String]| -> Value {
            Value::Object(items.iter().map(|i| (i.clone(), json!({}))).collect())
        };
        let mut c = json!({"User": self.user, "Env": self.env});
        if !self.entrypoint.is_empty() {
            c["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            c["Cmd"] = json!(self.cmd);
        }
        if !self.exposed_ports.is_empty() {
            c["ExposedPorts"] = set(&self.exposed_ports);
        }
        if !self.volumes.is_empty() {
            c["Volumes"] = set(&self.volumes);
        }
        c
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Dir,
    File(PathBuf),
    Bytes(Vec<u8>),
    Symlink(String),
}

#[derive(Clone, Debug)]
struct Entry {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// A root file system, entry by entry; parents are created as root-owned 0755 directories.
#[derive(Clone, Debug, Default)]
pub struct Rootfs {
    entries: BTreeMap<String, Entry>,
}

fn rel(path: &str) -> String {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    assert!(
        !p.is_empty() && !p.split('/').any(|c| c == ".." || c == "."),
        "{path}"
    );
    p.to_owned()
}

impl Rootfs {
    pub fn new() -> Self {
        Self::default()
    }

    fn put(&mut self, path: &str, kind: Kind, mode: u32, owner: u32) -> &mut Self {
        let path = rel(path);
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let key = p.to_string_lossy().into_owned();
            self.entries.entry(key).or_insert(Entry {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            parent = p.parent();
        }
        self.entries.insert(
            path,
            Entry {
                kind,
                mode,
                uid: owner,
                gid: owner,
            },
        );
        self
    }

    /// A directory with `mode`, owned by `owner` (uid and gid).
    pub fn dir(&mut self, path: &str, mode: u32, owner: u32) -> &mut Self {
        self.put(path, Kind::Dir, mode, owner)
    }

    /// A root-owned file with these bytes.
    pub fn bytes(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.put(path, Kind::Bytes(data.to_vec()), mode, 0)
    }

    /// A root-owned copy of the host file `from` (symbolic links followed).
    pub fn copy(&mut self, path: &str, from: &Path, mode: u32) -> &mut Self {
        assert!(from.is_file(), "{} is not a file", from.display());
        self.put(path, Kind::File(from.to_path_buf()), mode, 0)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.put(path, Kind::Symlink(target.to_owned()), 0o777, 0)
    }

    /// The host directory `from` under `path`: files (0644), directories and symbolic links.
    pub fn copy_tree(&mut self, path: &str, from: &Path) -> &mut Self {
        let mut list: Vec<_> = fs::read_dir(from)
            .unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
            .map(|e| e.expect("dir entry"))
            .collect();
        list.sort_by_key(|e| e.file_name());
        self.dir(path, 0o755, 0);
        for e in list {
            let name = e.file_name().to_string_lossy().into_owned();
            let inner = format!("{}/{name}", path.trim_end_matches('/'));
            let ty = e.file_type().expect("file type");
            if ty.is_symlink() {
                let target = fs::read_link(e.path()).expect("read link");
                self.symlink(&inner, &target.to_string_lossy());
            } else if ty.is_dir() {
                self.copy_tree(&inner, &e.path());
            } else {
                self.copy(&inner, &e.path(), 0o644);
            }
        }
        self
    }

    /// The program `binary` at `path` and every library it links dynamically, at the paths the
    /// dynamic loader names them by (`ldd`).
    pub fn program_with_libraries(&mut self, path: &str, binary: &Path) -> &mut Self {
        self.copy(path, binary, 0o755);
        for lib in shared_libraries(binary) {
            self.copy(&lib, Path::new(&lib), 0o755);
        }
        self
    }

    /// Every path in it, with a trailing `/` on directories (for tests).
    pub fn paths(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(p, e)| match e.kind {
                Kind::Dir => format!("/{p}/"),
                _ => format!("/{p}"),
            })
            .collect()
    }

    /// `(mode, uid, gid)` of one entry.
    pub fn owner_and_mode(&self, path: &str) -> Option<(u32, u32, u32)> {
        self.entries.get(&rel(path)).map(|e| (e.mode, e.uid, e.gid))
    }

    /// The uncompressed layer: a deterministic tar (sorted, mtime 0, numeric owners).
    pub fn layer(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        for (path, e) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(e.uid.into());
            h.set_gid(e.gid.into());
            h.set_mtime(0);
            match &e.kind {
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), std::io::empty())
                }
                Kind::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)
                }
                Kind::Bytes(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())
                }
                Kind::File(from) => {
                    let data = fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())
                }
            }
            .unwrap_or_else(|e| panic!("tar {path}: {e}"));
        }
        b.into_inner().expect("finish tar")
    }
}

/// Libraries `binary` loads, as `ldd` resolves them (the vDSO excluded).
pub fn shared_libraries(binary: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || !out.status.success() {
        return Vec::new();
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, right)) => right.trim().split(' ').next().unwrap_or(""),
            None => line.split(' ').next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(path.to_owned());
        }
    }
    assert!(!libs.is_empty(), "ldd found no libraries in:\n{text}");
    libs
}

/// How the layer is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar: what `ctr images import` unpacks fastest.
    None,
    /// gzip: what registries serve and skopeo pushes unchanged.
    Gzip,
}

/// An image written as an OCI layout.
#[derive(Clone, Debug)]
pub struct Built {
    /// The layout directory (`oci:DIR:TAG` for skopeo).
    pub layout: PathBuf,
    pub tag: String,
    pub manifest_digest: String,
    /// `sha256:` of the config: the image ID containerd and the kubelet report.
    pub config_digest: String,
    pub config: Value,
    /// Bytes of the layer as stored.
    pub layer_size: u64,
}

impl Built {
    /// skopeo's name for it.
    pub fn source_ref(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }

    /// The layout as one tar, named `name` in `index.json` (`io.containerd.image.name`), for
    /// `ctr images import`.
    pub fn archive(&self, name: &str, to: &Path) -> PathBuf {
        let index: Value =
            serde_json::from_slice(&fs::read(self.layout.join("index.json")).expect("index"))
                .expect("index JSON");
        let mut index = index;
        index["manifests"][0]["annotations"]["io.containerd.image.name"] = json!(name);
        let file = fs::File::create(to).expect("create archive");
        let mut b = tar::Builder::new(file);
        b.mode(tar::HeaderMode::Deterministic);
        let bytes = serde_json::to_vec(&index).expect("JSON");
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "index.json", bytes.as_slice())
            .expect("tar index");
        b.append_path_with_name(self.layout.join("oci-layout"), "oci-layout")
            .expect("tar oci-layout");
        b.append_dir_all("blobs", self.layout.join("blobs"))
            .expect("tar blobs");
        b.into_inner()
            .expect("finish archive")
            .flush()
            .expect("flush archive");
        to.to_path_buf()
    }
}

/// Writes `rootfs` with `run` as a linux/amd64 OCI image layout in `dir`, tagged `tag`.
pub fn write_layout(
    dir: &Path,
    tag: &str,
    rootfs: &Rootfs,
    run: &RunConfig,
    compression: Compression,
) -> Built {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("layout dir");
    let put = |data: &[u8]| -> String {
        let digest = sha256_digest(data);
        fs::write(blobs.join(&digest["sha256:".len()..]), data).expect("write blob");
        digest
    };
    let tar = rootfs.layer();
    let diff_id = sha256_digest(&tar);
    let (layer, media_type) = match compression {
        Compression::None => (tar, LAYER_TAR),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).expect("gzip");
            (gz.finish().expect("gzip"), LAYER_TAR_GZIP)
        }
    };
    let layer_digest = put(&layer);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": run.json(),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "imagecache tests: support::oci"}],
    });
    let config_bytes = serde_json::to_vec(&config).expect("JSON");
    let config_digest = put(&config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": [{"mediaType": media_type, "digest": layer_digest, "size": layer.len()}],
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("JSON");
    let manifest_digest = put(&manifest_bytes);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": MANIFEST, "digest": manifest_digest, "size": manifest_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]});
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("JSON"),
    )
    .expect("index.json");
    Built {
        layout: dir.to_path_buf(),
        tag: tag.to_owned(),
        manifest_digest,
        config_digest,
        config,
        layer_size: layer.len() as u64,
    }
}

/// Where the image keeps the cache (`imagePath`), as the `Dockerfile` sets it.
pub const IMAGE_PATH: &str = "/var/lib/imagecache";
pub const BINARY: &str = "/usr/local/bin/imagecache";

/// How the project's image runs: what the `Dockerfile`'s final stage says (its base,
/// distroless `cc-debian12:nonroot`, adds PATH and SSL_CERT_FILE).
pub fn project_run_config() -> RunConfig {
    RunConfig {
        entrypoint: vec![BINARY.to_owned()],
        cmd: vec!["--help".to_owned()],
        user: format!("{NONROOT}:{NONROOT}"),
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_owned(),
            format!("IMAGECACHE_IMAGE_PATH={IMAGE_PATH}"),
            "MALLOC_ARENA_MAX=2".to_owned(),
        ],
        exposed_ports: vec!["8080/tcp".to_owned(), "8081/tcp".to_owned()],
        volumes: vec![IMAGE_PATH.to_owned()],
    }
}

/// The project's root file system around `binary`: the binary and its libraries, what distroless
/// `cc` gives it (CA certificates, the zone database, `/etc/passwd` with `nonroot`, `/tmp`), and
/// the cache directory owned by the runtime user.
pub fn project_rootfs(binary: &Path) -> Rootfs {
    let mut fs = Rootfs::new();
    fs.program_with_libraries(BINARY, binary)
        .copy(
            "/etc/ssl/certs/ca-certificates.crt",
            Path::new("/etc/ssl/certs/ca-certificates.crt"),
            0o644,
        )
        .copy_tree("/usr/share/zoneinfo", Path::new("/usr/share/zoneinfo"))
        .bytes(
            "/etc/passwd",
            format!(
                "root:x:0:0:root:/root:/sbin/nologin\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
                 nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
            )
            .as_bytes(),
            0o644,
        )
        .bytes(
            "/etc/group",
            format!("root:x:0:\nnobody:x:65534:\nnonroot:x:{NONROOT}:\n").as_bytes(),
            0o644,
        )
        .dir("/tmp", 0o1777, 0)
        .dir("/home/nonroot", 0o700, NONROOT)
        .dir(IMAGE_PATH, 0o755, NONROOT);
    fs
}

/// The project's image of `binary` in `dir`, tagged `tag`.
pub fn project_image(binary: &Path, dir: &Path, tag: &str) -> Built {
    write_layout(
        dir,
        tag,
        &project_rootfs(binary),
        &project_run_config(),
        Compression::None,
    )
}
