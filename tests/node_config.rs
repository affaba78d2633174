//! `imagecache node-config`: the files it writes make a real containerd pull through the mirror,
//! runs are idempotent, only marked files are ever changed or removed, the CRI-O drop-ins are
//! valid registries.conf TOML, and bad input fails with one line.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;
use tempfile::TempDir;

const MARKER: &str = "# Managed by imagecache node-config";

fn node_config(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imagecache"))
        .arg("node-config")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run imagecache node-config")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn toml_file(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with(&format!("{MARKER}\n")), "{text}");
    text.parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}\n{text}", path.display()))
}

// ---------------------------------------------------------------------------
// A real containerd, started as root on its own root, state and socket.
// ---------------------------------------------------------------------------

struct Containerd {
    dir: TempDir,
    child: Option<Child>,
}

impl Containerd {
    /// `Err(reason)` when this machine cannot run containerd (the test is then skipped).
    fn start() -> Result<Self, String> {
        for tool in ["containerd", "ctr"] {
            let found = Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!("`{tool}` not found (apt-get install containerd)"));
            }
        }
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("containerd needs root".into());
        }
        // Short path: the socket path must fit in sockaddr_un.
        let dir = tempfile::Builder::new()
            .prefix("ctd-")
            .tempdir_in("/tmp")
            .unwrap();
        // Only what a pull needs: content, metadata, the native snapshotter (no overlay
        // mounts inside a sandbox), no CRI.
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "version = 2\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \
             \"io.containerd.snapshotter.v1.overlayfs\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.aufs\"]\n",
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(dir.path().join("c.sock"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot spawn containerd: {e}"))?;
        let mut c = Containerd {
            dir,
            child: Some(child),
        };
        let up = wait_for(Duration::from_secs(20), || {
            if let Some(Ok(Some(_))) = c.child.as_mut().map(|c| c.try_wait()) {
                return Some(false);
            }
            c.ctr(&["version"]).status.success().then_some(true)
        });
        if up != Some(true) {
            return Err(format!(
                "containerd did not start here:\n{}",
                tail(&c.log(), 2000)
            ));
        }
        Ok(c)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// `ctr` against this containerd, in a namespace of its own, without proxies.
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(["--namespace", "imagecache-test"])
            .args(args)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            if wait_for(Duration::from_secs(10), || c.try_wait().ok().flatten()).is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- containerd log tail ---\n{}", tail(&self.log(), 3000));
        }
    }
}

/// containerd, given only the hosts directory node-config wrote, pulls two images through our
/// mirror: one of a `host:port` registry that does not resolve (so nothing but the mirror could
/// serve it), one of `docker.io`. Our server allowlists only those two names and its default
/// registry is another one, so it could route the requests only by containerd's `?ns=`.
#[test]
fn containerd_pulls_through_the_mirror_with_only_the_written_hosts_dir() {
    let ctd = match Containerd::start() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED containerd_pulls_through_the_mirror: {why}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let dist = Distribution::start();
    let app = gen_image(
        &tmp.path().join("app"),
        61,
        &[3000, 40_000],
        &Platform::linux_amd64(),
    );
    dist.push(&app.source_ref(), "team/app:v1");
    let hub = gen_image(
        &tmp.path().join("hub"),
        62,
        &[2000],
        &Platform::linux_amd64(),
    );
    dist.push(&hub.source_ref(), "library/imagecache-nodecfg:v1");

    const PRIVATE: &str = "registry.invalid:5000";
    let cache = ImageCache::builder()
        .registry(PRIVATE, &dist.url())
        .registry("docker.io", &dist.url())
        .start();

    let hosts = tmp.path().join("certs.d");
    let out = node_config(&[
        "--mirror",
        &cache.url(),
        "--registry",
        &format!("{PRIVATE},docker.io"),
        "--hosts-dir",
        hosts.to_str().unwrap(),
    ]);
    ok("node-config", &out);
    assert_eq!(
        stdout_lines(&out),
        [
            format!("wrote {}/{PRIVATE}/hosts.toml", hosts.display()),
            format!("wrote {}/docker.io/hosts.toml", hosts.display()),
        ]
    );

    for (image, reference) in [
        (&app, format!("{PRIVATE}/team/app:v1")),
        (&hub, "docker.io/library/imagecache-nodecfg:v1".to_owned()),
    ] {
        let pull = ctd.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--snapshotter",
            "native",
            &reference,
        ]);
        assert!(
            pull.status.success(),
            "ctr pull {reference} failed:\n{}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&pull.stdout),
            String::from_utf8_lossy(&pull.stderr),
            cache.log_tail()
        );
        let list = ctd.ctr(&["images", "ls"]);
        let list = String::from_utf8_lossy(&list.stdout);
        let row = list
            .lines()
            .find(|l| l.starts_with(&reference))
            .unwrap_or_else(|| panic!("{reference} not in\n{list}"));
        assert!(row.contains(image.digest()), "{row}");
    }

    // Both repositories came from the Distribution behind our server.
    let requests = dist.requests();
    for repo in ["/v2/team/app/", "/v2/library/imagecache-nodecfg/"] {
        assert!(
            requests
                .iter()
                .any(|(m, p)| m == "GET" && p.starts_with(repo) && p.contains("/blobs/")),
            "no blob GET under {repo}: {requests:?}"
        );
    }
}

/// A second run changes nothing; a user's own hosts.toml is reported and never touched;
/// `--uninstall` removes only our files and the folders left empty.
#[test]
fn runs_are_idempotent_and_only_marked_files_are_touched() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("certs.d");
    let d = hosts.display();
    std::fs::create_dir_all(hosts.join("quay.io")).unwrap();
    let mine = "server = \"https://quay.io\"\n\n[host.\"https://my-own-mirror\"]\n  capabilities = [\"pull\"]\n";
    std::fs::write(hosts.join("quay.io/hosts.toml"), mine).unwrap();

    let args = [
        "--mirror",
        "http://10.96.0.12:5000",
        "--registry",
        "docker.io",
        "--registry",
        "quay.io,registry.local:5000",
        "--hosts-dir",
        hosts.to_str().unwrap(),
    ];
    let out = node_config(&args);
    ok("node-config", &out);
    assert_eq!(
        stdout_lines(&out),
        [
            format!("wrote {d}/docker.io/hosts.toml"),
            format!("skipped (not ours) {d}/quay.io/hosts.toml"),
            format!("wrote {d}/registry.local:5000/hosts.toml"),
        ]
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("quay.io/hosts.toml"), "{stderr}");

    let hub = toml_file(&hosts.join("docker.io/hosts.toml"));
    assert_eq!(hub["server"].as_str(), Some("https://registry-1.docker.io"));
    let host = &hub["host"]["http://10.96.0.12:5000"];
    let caps: Vec<_> = host["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(caps, ["pull", "resolve"]);
    let private = toml_file(&hosts.join("registry.local:5000/hosts.toml"));
    assert_eq!(
        private["server"].as_str(),
        Some("https://registry.local:5000")
    );

    let inode = |p: &str| std::fs::metadata(hosts.join(p)).unwrap().ino();
    let before = (
        inode("docker.io/hosts.toml"),
        inode("registry.local:5000/hosts.toml"),
    );
    let again = node_config(&args);
    ok("node-config", &again);
    assert_eq!(
        stdout_lines(&again),
        [
            format!("unchanged {d}/docker.io/hosts.toml"),
            format!("skipped (not ours) {d}/quay.io/hosts.toml"),
            format!("unchanged {d}/registry.local:5000/hosts.toml"),
        ]
    );
    // Not even rewritten with the same bytes (an atomic write would change the inode).
    assert_eq!(
        before,
        (
            inode("docker.io/hosts.toml"),
            inode("registry.local:5000/hosts.toml")
        )
    );

    let out = node_config(&["--uninstall", "--hosts-dir", hosts.to_str().unwrap()]);
    ok("node-config", &out);
    assert_eq!(
        stdout_lines(&out),
        [
            format!("removed {d}/docker.io/hosts.toml"),
            format!("removed {d}/registry.local:5000/hosts.toml"),
        ]
    );
    assert!(!hosts.join("docker.io").exists());
    assert!(!hosts.join("registry.local:5000").exists());
    assert_eq!(
        std::fs::read_to_string(hosts.join("quay.io/hosts.toml")).unwrap(),
        mine
    );
    // Nothing of ours is left: uninstalling again says nothing and succeeds.
    let out = node_config(&["--uninstall", "--hosts-dir", hosts.to_str().unwrap()]);
    ok("node-config", &out);
    assert!(stdout_lines(&out).is_empty());
    assert_eq!(files_under(&hosts), [hosts.join("quay.io/hosts.toml")]);
}

/// The CRI-O drop-ins are registries.conf v2 TOML routing each registry to the mirror, with the
/// registry as the mirror location's first path segment (CRI-O sends no `ns`).
#[test]
fn crio_drop_ins_parse_as_registries_conf() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("registries.conf.d");
    let out = node_config(&[
        "--runtime",
        "crio",
        "--mirror",
        "http://127.0.0.1:30500",
        "--registry",
        "docker.io,registry.local:5000",
        "--hosts-dir",
        dir.to_str().unwrap(),
    ]);
    ok("node-config", &out);
    assert_eq!(
        stdout_lines(&out),
        [
            format!("wrote {}/imagecache-docker.io.conf", dir.display()),
            format!(
                "wrote {}/imagecache-registry.local_5000.conf",
                dir.display()
            ),
        ]
    );
    for (file, name) in [
        ("imagecache-docker.io.conf", "docker.io"),
        ("imagecache-registry.local_5000.conf", "registry.local:5000"),
    ] {
        let conf = toml_file(&dir.join(file));
        let registries = conf["registry"].as_array().unwrap();
        assert_eq!(registries.len(), 1);
        let r = registries[0].as_table().unwrap();
        assert_eq!(r["prefix"].as_str(), Some(name));
        assert_eq!(r["location"].as_str(), Some(name));
        let mirrors = r["mirror"].as_array().unwrap();
        assert_eq!(mirrors.len(), 1);
        let m = mirrors[0].as_table().unwrap();
        assert_eq!(
            m["location"].as_str(),
            Some(format!("127.0.0.1:30500/{name}").as_str())
        );
        assert_eq!(m["insecure"].as_bool(), Some(true));
        assert_eq!(m["pull-from-mirror"].as_str(), Some("all"));
    }

    // An HTTPS mirror is not marked insecure.
    let out = node_config(&[
        "--runtime",
        "crio",
        "--mirror",
        "https://cache.example:8443",
        "--registry",
        "quay.io",
        "--hosts-dir",
        dir.to_str().unwrap(),
    ]);
    ok("node-config", &out);
    let conf = toml_file(&dir.join("imagecache-quay.io.conf"));
    let m = &conf["registry"][0]["mirror"][0];
    assert_eq!(m["location"].as_str(), Some("cache.example:8443/quay.io"));
    assert!(m.get("insecure").is_none(), "{m:?}");

    let out = node_config(&[
        "--runtime",
        "crio",
        "--uninstall",
        "--hosts-dir",
        dir.to_str().unwrap(),
    ]);
    ok("node-config", &out);
    assert_eq!(stdout_lines(&out).len(), 3);
    assert!(files_under(&dir).is_empty());
}

/// Bad input: non-zero exit, one `imagecache: ...` line on stderr, nothing written.
#[test]
fn bad_input_fails_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("certs.d");
    let dir = hosts.to_str().unwrap();
    for (args, expect) in [
        (
            vec!["--mirror", "10.96.0.12:5000", "--registry", "docker.io"],
            "scheme",
        ),
        (
            vec!["--mirror", "http://10.96.0.12:5000", "--registry", ""],
            "empty registry",
        ),
        (
            vec![
                "--mirror",
                "http://10.96.0.12:5000",
                "--registry",
                "docker.io,,quay.io",
            ],
            "empty registry",
        ),
        (
            vec![
                "--mirror",
                "http://10.96.0.12:5000",
                "--registry",
                "https://docker.io",
            ],
            "not a URL",
        ),
        (
            vec![
                "--mirror",
                "http://10.96.0.12:5000/v2",
                "--registry",
                "docker.io",
            ],
            "without a path",
        ),
        (vec!["--registry", "docker.io"], "--mirror is required"),
        (
            vec!["--mirror", "http://10.96.0.12:5000"],
            "--registry is required",
        ),
    ] {
        let mut full = args.clone();
        full.extend(["--hosts-dir", dir]);
        let out = node_config(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("imagecache: ") && stderr.contains(expect),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!hosts.exists(), "{args:?} created the hosts dir");
    }
}

/// `--stay` puts wiped files back on the next round, and on SIGTERM removes what it wrote and
/// exits 0 (a user's file next to it stays).
#[test]
fn stay_restores_wiped_files_and_takes_them_back_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("certs.d");
    let file = hosts.join("ghcr.io/hosts.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imagecache"))
        .args([
            "node-config",
            "--mirror",
            "http://10.96.0.12:5000",
            "--registry",
            "ghcr.io",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--stay",
            "--interval",
            "1s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let timeout = Duration::from_secs(20);
    let first = rx.recv_timeout(timeout).expect("first report line");
    assert_eq!(first, format!("wrote {}", file.display()));
    let content = std::fs::read_to_string(&file).unwrap();

    std::fs::remove_dir_all(hosts.join("ghcr.io")).unwrap();
    std::fs::create_dir_all(hosts.join("mine.example")).unwrap();
    std::fs::write(
        hosts.join("mine.example/hosts.toml"),
        "server = \"https://mine\"\n",
    )
    .unwrap();
    let again = rx.recv_timeout(timeout).expect("a re-apply line");
    assert_eq!(again, format!("wrote {}", file.display()));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), content);

    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = wait_for(timeout, || child.try_wait().unwrap());
    let Some(status) = status else {
        let _ = child.kill();
        panic!("node-config --stay ignored SIGTERM");
    };
    assert!(status.success(), "{status}");
    assert_eq!(
        rx.recv_timeout(timeout).expect("a removal line"),
        format!("removed {}", file.display())
    );
    assert!(!file.exists() && !hosts.join("ghcr.io").exists());
    assert_eq!(
        std::fs::read_to_string(hosts.join("mine.example/hosts.toml")).unwrap(),
        "server = \"https://mine\"\n"
    );
}
