//! The project's image has two recipes: the `Dockerfile` for real builds, and `support::oci`,
//! which the node suite uses to build it without a Docker engine (`tests/e2e_node`). Both must
//! give the same container: entrypoint, command, user, ports, volumes, environment, and the
//! files the `Dockerfile` puts in place.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value;
use support::oci::{self, NONROOT};

/// The `Dockerfile`'s final stage, as Docker would record it in the image config.
#[derive(Debug, Default)]
struct Stage {
    from: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
    env: Vec<String>,
    exposed_ports: Vec<String>,
    volumes: Vec<String>,
    /// Destinations of `COPY` (and their `--chown`).
    copies: Vec<(String, Option<String>)>,
}

fn json_array(s: &str) -> Vec<String> {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not a JSON array: {s}: {e}"))
}

/// Parses the instructions of the last `FROM` (continuation lines joined, comments dropped).
fn final_stage(dockerfile: &str) -> Stage {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(t);
            lines.push(std::mem::take(&mut current));
        }
    }
    let mut stage = Stage::default();
    for line in lines {
        let (op, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let rest = rest.trim();
        match op.to_ascii_uppercase().as_str() {
            "FROM" => {
                stage = Stage {
                    from: rest.to_owned(),
                    ..Stage::default()
                }
            }
            "ENTRYPOINT" => stage.entrypoint = json_array(rest),
            "CMD" => stage.cmd = json_array(rest),
            "USER" => stage.user = rest.to_owned(),
            "ENV" => {
                let (k, v) = rest.split_once('=').expect("ENV KEY=value");
                stage.env.push(format!("{k}={v}"));
            }
            "EXPOSE" => {
                for p in rest.split_whitespace() {
                    let p = if p.contains('/') {
                        p.to_owned()
                    } else {
                        format!("{p}/tcp")
                    };
                    stage.exposed_ports.push(p);
                }
            }
            "VOLUME" => stage.volumes = json_array(rest),
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let chown = words
                    .iter()
                    .find_map(|w| w.strip_prefix("--chown="))
                    .map(str::to_owned);
                let dest = words.last().expect("COPY destination").to_string();
                stage.copies.push((dest, chown));
            }
            _ => {}
        }
    }
    stage
}

/// The environment distroless `cc-debian12` (the `Dockerfile`'s base) sets in its config.
const BASE_ENV: [&str; 2] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
];

fn dockerfile() -> Stage {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
        .expect("read the Dockerfile");
    final_stage(&text)
}

#[test]
fn the_dockerfile_and_the_engine_free_image_run_the_same_container() {
    let stage = dockerfile();
    assert!(
        stage.from.starts_with("gcr.io/distroless/cc-debian12"),
        "the base the engine-free image stands in for changed: {}",
        stage.from
    );
    let run = oci::project_run_config();
    assert_eq!(run.entrypoint, stage.entrypoint, "ENTRYPOINT");
    assert_eq!(run.cmd, stage.cmd, "CMD");
    assert_eq!(run.user, stage.user, "USER");
    assert_eq!(run.exposed_ports, stage.exposed_ports, "EXPOSE");
    assert_eq!(run.volumes, stage.volumes, "VOLUME");
    let mut expected_env: Vec<String> = BASE_ENV.iter().map(|s| s.to_string()).collect();
    expected_env.extend(stage.env.iter().cloned());
    assert_eq!(
        run.env, expected_env,
        "ENV (base image first, then the Dockerfile's)"
    );

    // Every COPY destination exists in the image, owned as the Dockerfile says.
    let rootfs = oci::project_rootfs(Path::new("/bin/true"));
    for (dest, chown) in &stage.copies {
        let (_, uid, gid) = rootfs
            .owner_and_mode(dest)
            .unwrap_or_else(|| panic!("{dest} (COPY) is not in the image"));
        let want = chown.clone().unwrap_or_else(|| "0:0".to_owned());
        assert_eq!(format!("{uid}:{gid}"), want, "owner of {dest}");
    }
    // The user the image runs as exists, and owns the cache directory (the VOLUME).
    let (_, uid, _) = rootfs.owner_and_mode(oci::IMAGE_PATH).expect("cache dir");
    assert_eq!(uid, NONROOT);
}

/// Reads a layout blob.
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).expect("blob")
}

#[test]
fn the_layer_holds_the_program_its_libraries_and_the_runtime_files() {
    let dir = tempfile::tempdir().unwrap();
    // Any dynamically linked program stands in for the release binary here.
    let built = oci::project_image(Path::new("/bin/true"), &dir.path().join("layout"), "t");
    let index: Value =
        serde_json::from_slice(&std::fs::read(built.layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], built.manifest_digest);
    let manifest: Value =
        serde_json::from_slice(&blob(&built.layout, &built.manifest_digest)).unwrap();
    assert_eq!(manifest["config"]["digest"], built.config_digest);
    let config: Value = serde_json::from_slice(&blob(&built.layout, &built.config_digest)).unwrap();
    assert_eq!(config["config"]["User"], format!("{NONROOT}:{NONROOT}"));
    assert_eq!(config["config"]["Entrypoint"][0], oci::BINARY);
    assert!(config["config"]["ExposedPorts"]["8081/tcp"].is_object());

    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let layer = blob(&built.layout, layer_digest);
    assert_eq!(
        support::sha256_digest(&layer),
        config["rootfs"]["diff_ids"][0].as_str().unwrap(),
        "an uncompressed layer's digest is its diff ID"
    );
    let mut entries: BTreeMap<String, (u64, u64, u32, Vec<u8>)> = BTreeMap::new();
    let mut archive = tar::Archive::new(layer.as_slice());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        entries.insert(
            path.trim_end_matches('/').to_owned(),
            (h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap(), data),
        );
    }
    let program = &entries["usr/local/bin/imagecache"];
    assert_eq!(program.3, std::fs::read("/bin/true").unwrap());
    assert_eq!(program.2 & 0o111, 0o111, "executable");
    // What the program loads, at the paths the loader looks for it.
    let libs = support::oci::shared_libraries(Path::new("/bin/true"));
    assert!(libs.iter().any(|l| l.contains("libc.so")), "{libs:?}");
    assert!(libs.iter().any(|l| l.contains("ld-linux")), "{libs:?}");
    for lib in &libs {
        assert!(
            entries.contains_key(lib.trim_start_matches('/')),
            "{lib} in the layer"
        );
    }
    assert!(entries.contains_key("etc/ssl/certs/ca-certificates.crt"));
    assert!(entries.contains_key("usr/share/zoneinfo/Europe/Paris"));
    let passwd = String::from_utf8(entries["etc/passwd"].3.clone()).unwrap();
    assert!(
        passwd.contains(&format!("nonroot:x:{NONROOT}:{NONROOT}:")),
        "{passwd}"
    );
    let cache = &entries["var/lib/imagecache"];
    assert_eq!((cache.0, cache.1), (NONROOT as u64, NONROOT as u64));
    assert_eq!(entries["tmp"].2 & 0o7777, 0o1777);

    // The archive `ctr images import` reads names the image.
    let archive_path = built.archive("imagecache.local/imagecache:t", &dir.path().join("i.tar"));
    let mut names = Vec::new();
    let mut index_named = Value::Null;
    let mut a = tar::Archive::new(std::fs::File::open(&archive_path).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if path == "index.json" {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            index_named = serde_json::from_str(&s).unwrap();
        }
        names.push(path);
    }
    assert!(names.contains(&"oci-layout".to_owned()), "{names:?}");
    assert!(
        names.contains(&format!(
            "blobs/sha256/{}",
            &layer_digest["sha256:".len()..]
        )),
        "{names:?}"
    );
    assert_eq!(
        index_named["manifests"][0]["annotations"]["io.containerd.image.name"],
        "imagecache.local/imagecache:t"
    );
}
