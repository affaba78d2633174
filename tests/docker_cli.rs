//! The Docker Engine image API driven by the real docker CLI (client only; no daemon runs):
//! `docker -H tcp://ADMIN image ls|inspect|history|rm|prune` against a cache filled from a real
//! Distribution upstream. Each test uses its own `DOCKER_CONFIG`, so nothing of the machine's
//! docker setup leaks in.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::http::client;
use support::{
    Distribution, Image, ImageCache, Platform, Repo, gen_image, gen_multiarch, pull_verify,
};

/// The docker CLI: `$DOCKER_CLI`, else `/usr/local/bin/docker`, else `docker` on the PATH.
fn docker_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DOCKER_CLI") {
        return p.into();
    }
    let local = PathBuf::from("/usr/local/bin/docker");
    if local.exists() {
        return local;
    }
    PathBuf::from("docker")
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// The docker CLI pointed at one admin listener with an isolated config directory.
struct Cli {
    host: String,
    config: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Cli {
    fn new(admin_addr: &str) -> Cli {
        Cli {
            host: format!("tcp://{admin_addr}"),
            config: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    fn env(mut self, k: &str, v: &str) -> Cli {
        self.env.push((k.into(), v.into()));
        self
    }

    fn config_dir(&self) -> &Path {
        self.config.path()
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(docker_bin());
        cmd.env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the docker CLI ({}): {e}; install it or set DOCKER_CLI",
                    docker_bin().display()
                )
            });
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.ok,
            "docker {args:?} failed:\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// Runs and asserts failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.ok, "docker {args:?} succeeded:\n{}", out.stdout);
        out.stderr
    }

    /// `docker image ls --format '{{.Repository}}:{{.Tag}}'` with extra flags, as a set.
    fn names(&self, extra: &[&str]) -> BTreeSet<String> {
        let mut args = vec!["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"];
        args.extend_from_slice(extra);
        self.ok(&args).lines().map(str::to_owned).collect()
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Go's `units.HumanSizeWithPrecision`: decimal units, `precision` significant digits,
/// trailing zeros dropped. `docker image prune` prints 4 digits, `docker image ls` 3.
fn human_size(bytes: u64, precision: usize) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let int_digits = if v >= 100.0 {
        3
    } else if v >= 10.0 {
        2
    } else {
        1
    };
    let decimals = precision.saturating_sub(int_digits);
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    format!("{s}{}", units[i])
}

/// Bytes an image occupies in the cache: its manifests, configs and layers.
fn image_bytes(img: &Image) -> u64 {
    img.manifests().iter().map(|d| d.size).sum::<u64>()
        + img.blobs().iter().map(|d| d.size).sum::<u64>()
}

struct Fixture {
    _dist: Distribution,
    cache: ImageCache,
    _dirs: Vec<tempfile::TempDir>,
    /// app:1 (also tagged `stable`), app:2, busybox:1.36, multi:v1, and an untagged manifest.
    app1: Image,
    app2: Image,
    busybox: Image,
    multi: Image,
    dangling: Image,
}

/// One Distribution serves both `docker.io` (the default registry, so names show familiar)
/// and `upstream.test`. Config `created` times are 2024-01-02 (app:1) through 2024-01-06
/// (the dangling one), one day apart, in that order.
async fn fixture() -> Fixture {
    let dist = Distribution::start();
    let mut dirs = Vec::new();
    let mut make = |f: &dyn Fn(&Path) -> Image| {
        let d = tempfile::tempdir().unwrap();
        let img = f(d.path());
        dirs.push(d);
        img
    };
    let amd64 = Platform::linux_amd64();
    let app1 = make(&|d| gen_image(d, 1, &[30_000, 10_000], &amd64));
    let app2 = make(&|d| gen_image(d, 2, &[20_000], &amd64));
    let busybox = make(&|d| gen_image(d, 3, &[15_000], &amd64));
    let multi = make(&|d| {
        gen_multiarch(
            d,
            4,
            &[amd64.clone(), Platform::new("linux", "arm64", None)],
            &[12_000],
        )
    });
    let dangling = make(&|d| gen_image(d, 5, &[8_000], &amd64));
    dist.push(&app1.source_ref(), "team/app:1");
    dist.push(&app1.source_ref(), "team/app:stable");
    dist.push(&app2.source_ref(), "team/app:2");
    dist.push(&busybox.source_ref(), "library/busybox:1.36");
    dist.push(&multi.source_ref(), "team/multi:v1");
    dist.push(&dangling.source_ref(), "team/app:old");
    let cache = ImageCache::builder()
        .registry("docker.io", &dist.url())
        .registry("upstream.test", &dist.url())
        .default_registry("docker.io")
        .start();
    let c = client();
    let app = Repo::new(&cache.url(), "upstream.test/team/app");
    pull_verify(&c, &app, "1", &app1).await;
    pull_verify(&c, &app, "stable", &app1).await;
    pull_verify(&c, &app, "2", &app2).await;
    pull_verify(&c, &Repo::new(&cache.url(), "busybox"), "1.36", &busybox).await;
    pull_verify(
        &c,
        &Repo::new(&cache.url(), "upstream.test/team/multi"),
        "v1",
        &multi,
    )
    .await;
    // Pulled by digest only: cached with no tag, a dangling image.
    pull_verify(&c, &app, dangling.digest(), &dangling).await;
    Fixture {
        _dist: dist,
        cache,
        _dirs: dirs,
        app1,
        app2,
        busybox,
        multi,
        dangling,
    }
}

fn short(digest: &str) -> String {
    digest.trim_start_matches("sha256:")[..12].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_negotiation_and_image_ls_filters() {
    let f = fixture().await;
    let cli = Cli::new(&f.cache.admin_addr());

    // The CLI pings, then talks /v1.50 (its maximum; the server offers 1.51).
    let v = cli.ok(&[
        "version",
        "--format",
        "{{.Server.APIVersion}} {{.Server.MinAPIVersion}} {{.Server.Os}}",
    ]);
    assert_eq!(v.trim(), "1.51 1.24 linux");
    let v = cli.ok(&["version"]);
    assert!(v.contains("Server: imagecache"), "{v}");

    // The default table: familiar names, short IDs. The untagged image shows the repository of
    // its digest reference with tag <none>, as Docker shows an image pulled by digest.
    let table = cli.ok(&["image", "ls"]);
    let header = table.lines().next().unwrap();
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(col), "{table}");
    }
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 6, "{table}");
    // Newest first: the dangling image (2024-01-06) on top, app:1 and app:stable last.
    assert_eq!(
        rows[0][..3],
        [
            "upstream.test/team/app",
            "<none>",
            short(f.dangling.digest()).as_str()
        ],
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r[..3] == ["busybox", "1.36", short(f.busybox.digest()).as_str()]),
        "{table}"
    );
    assert!(
        rows.iter().any(|r| r[..3]
            == [
                "upstream.test/team/multi",
                "v1",
                short(f.multi.digest()).as_str()
            ]),
        "{table}"
    );
    let sizes = cli.ok(&["image", "ls", "--format", "{{.ID}} {{.Size}}", "--no-trunc"]);
    assert!(
        sizes.contains(&format!(
            "{} {}",
            f.busybox.digest(),
            human_size(image_bytes(&f.busybox), 3)
        )),
        "{sizes}"
    );

    let all = set(&[
        "upstream.test/team/app:<none>",
        "busybox:1.36",
        "upstream.test/team/app:1",
        "upstream.test/team/app:2",
        "upstream.test/team/app:stable",
        "upstream.test/team/multi:v1",
    ]);
    assert_eq!(cli.names(&[]), all);
    assert_eq!(
        cli.names(&["--filter", "dangling=true"]),
        set(&["upstream.test/team/app:<none>"])
    );
    let tagged: BTreeSet<String> = all
        .iter()
        .filter(|n| !n.ends_with("<none>"))
        .cloned()
        .collect();
    assert_eq!(cli.names(&["--filter", "dangling=false"]), tagged);
    assert_eq!(
        cli.names(&["--filter", "label=org.example.seed=2"]),
        set(&["upstream.test/team/app:2"])
    );
    assert_eq!(
        cli.names(&[
            "--filter",
            "label=org.example.platform=linux/amd64",
            "--filter",
            "label=org.example.seed=3"
        ]),
        set(&["busybox:1.36"])
    );
    assert_eq!(
        cli.names(&["--filter", "reference=busybox"]),
        set(&["busybox:1.36"])
    );
    assert_eq!(cli.names(&["busybox:1.36"]), set(&["busybox:1.36"]));
    // A reference filter lists only the matching tags of an image.
    assert_eq!(
        cli.names(&["--filter", "reference=upstream.test/team/app:s*"]),
        set(&["upstream.test/team/app:stable"])
    );
    assert_eq!(
        cli.names(&["--filter", "reference=upstream.test/*/*:v1"]),
        set(&["upstream.test/team/multi:v1"])
    );
    assert_eq!(
        cli.names(&["--filter", "before=upstream.test/team/app:2"]),
        set(&["upstream.test/team/app:1", "upstream.test/team/app:stable"])
    );
    assert_eq!(
        cli.names(&["--filter", &format!("since={}", short(f.busybox.digest()))]),
        set(&[
            "upstream.test/team/multi:v1",
            "upstream.test/team/app:<none>"
        ])
    );
    assert_eq!(
        cli.names(&[
            "--filter",
            "since=upstream.test/team/app:2",
            "--filter",
            "before=upstream.test/team/multi:v1"
        ]),
        set(&["busybox:1.36"])
    );
    assert_eq!(
        cli.names(&["--filter", "until=2024-01-03T12:00:00Z"]),
        set(&[
            "upstream.test/team/app:1",
            "upstream.test/team/app:stable",
            "upstream.test/team/app:2"
        ])
    );

    // -q and --digests.
    let ids: BTreeSet<String> = cli
        .ok(&["image", "ls", "-q", "--no-trunc"])
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: BTreeSet<String> = [&f.app1, &f.app2, &f.busybox, &f.multi, &f.dangling]
        .iter()
        .map(|i| i.digest().to_owned())
        .collect();
    assert_eq!(ids, expected);
    let digests = cli.ok(&[
        "image",
        "ls",
        "--digests",
        "--format",
        "{{.Repository}} {{.Digest}}",
    ]);
    assert!(
        digests.contains(&format!("busybox {}", f.busybox.digest())),
        "{digests}"
    );
    assert!(
        digests.contains(&format!("upstream.test/team/app {}", f.dangling.digest())),
        "the dangling image keeps its digest reference: {digests}"
    );

    // Errors come back in Docker's shape.
    let err = cli.fails(&["image", "ls", "--filter", "colour=red"]);
    assert!(
        err.contains("Error response from daemon: invalid filter 'colour'"),
        "{err}"
    );
    let err = cli.fails(&["image", "ls", "--filter", "before=nope:1"]);
    assert!(err.contains("No such image: nope:1"), "{err}");
    let err = cli.fails(&["image", "ls", "--filter", "until=yesterday"]);
    assert!(err.contains("Error response from daemon"), "{err}");

    // An older client uses an older prefix (and still gets VirtualSize).
    let old = Cli::new(&f.cache.admin_addr()).env("DOCKER_API_VERSION", "1.41");
    assert_eq!(
        old.names(&["--filter", "reference=busybox"]),
        set(&["busybox:1.36"])
    );
    let raw = support::http::get(
        &client(),
        &format!(
            "{}/v1.41/images/json?filters=%7B%22reference%22%3A%5B%22busybox%22%5D%7D",
            f.cache.admin_url()
        ),
        &[],
    )
    .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.json()[0]["VirtualSize"], raw.json()[0]["Size"]);
    assert_eq!(raw.header("api-version"), Some("1.51"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_history() {
    let f = fixture().await;
    let cli = Cli::new(&f.cache.admin_addr());

    let out = cli.ok(&["image", "inspect", "upstream.test/team/app:1"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let i = &v[0];
    assert_eq!(i["Id"], f.app1.digest());
    assert_eq!(
        i["RepoTags"],
        serde_json::json!(["upstream.test/team/app:1", "upstream.test/team/app:stable"])
    );
    assert_eq!(
        i["RepoDigests"],
        serde_json::json!([format!("upstream.test/team/app@{}", f.app1.digest())])
    );
    assert_eq!(i["Created"], "2024-01-02T00:00:00Z");
    assert_eq!(i["Architecture"], "amd64");
    assert_eq!(i["Os"], "linux");
    assert_eq!(i["Config"]["Labels"]["org.example.seed"], "1");
    assert_eq!(i["Config"]["Env"][0], "PATH=/usr/local/bin:/usr/bin:/bin");
    assert_eq!(i["RootFS"]["Type"], "layers");
    assert_eq!(i["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(i["Size"], image_bytes(&f.app1));
    assert_eq!(i["Descriptor"]["digest"], f.app1.digest());

    // Familiar names, short IDs and templates.
    let id = cli.ok(&["image", "inspect", "--format", "{{.Id}}", "busybox:1.36"]);
    assert_eq!(id.trim(), f.busybox.digest());
    let id = cli.ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "docker.io/library/busybox:1.36",
    ]);
    assert_eq!(id.trim(), f.busybox.digest());
    let tags = cli.ok(&[
        "image",
        "inspect",
        "--format",
        "{{.RepoTags}}",
        &short(f.busybox.digest()),
    ]);
    assert_eq!(tags.trim(), "[busybox:1.36]");
    let err = cli.fails(&["image", "inspect", "busybox"]);
    assert!(
        err.contains("Error response from daemon: No such image: busybox:latest"),
        "{err}"
    );

    // A multi-platform image: the host's platform by default, any other on request.
    let arch = cli.ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Architecture}} {{.Id}}",
        "upstream.test/team/multi:v1",
    ]);
    assert_eq!(arch.trim(), format!("amd64 {}", f.multi.digest()));
    let size = cli.ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        "upstream.test/team/multi:v1",
    ]);
    assert_eq!(
        size.trim(),
        image_bytes(&f.multi).to_string(),
        "all platforms"
    );
    let size = cli.ok(&[
        "image",
        "inspect",
        "--platform",
        "linux/arm64",
        "--format",
        "{{.Size}}",
        "upstream.test/team/multi:v1",
    ]);
    let arm = &f.multi.children[1];
    let arm_bytes =
        arm.manifest.size + arm.config.size + arm.layers.iter().map(|l| l.size).sum::<u64>();
    assert_eq!(size.trim(), arm_bytes.to_string(), "one platform");
    let arch = cli.ok(&[
        "image",
        "inspect",
        "--platform",
        "linux/arm64",
        "--format",
        "{{.Architecture}} {{index .Config.Labels \"org.example.platform\"}}",
        "upstream.test/team/multi:v1",
    ]);
    assert_eq!(arch.trim(), "arm64 linux/arm64");
    let err = cli.fails(&[
        "image",
        "inspect",
        "--platform",
        "linux/s390x",
        "upstream.test/team/multi:v1",
    ]);
    assert!(
        err.contains("does not provide the specified platform"),
        "{err}"
    );

    // History: newest first, one row per layer, the top row named by the image.
    let h = cli.ok(&[
        "image",
        "history",
        "--no-trunc",
        "-H=false",
        "--format",
        "{{.ID}}|{{.CreatedBy}}|{{.Size}}",
        "upstream.test/team/app:1",
    ]);
    let layers = &f.app1.children[0].layers;
    assert_eq!(
        h.lines().collect::<Vec<_>>(),
        vec![
            format!("{}|generated layer 1|{}", f.app1.digest(), layers[1].size),
            format!("<missing>|generated layer 0|{}", layers[0].size),
        ],
        "{h}"
    );
    let table = cli.ok(&["image", "history", "busybox:1.36"]);
    let header = table.lines().next().unwrap();
    for col in ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(table.contains(&short(f.busybox.digest())), "{table}");
    assert!(table.contains("generated layer 0"), "{table}");
    let h = cli.ok(&[
        "image",
        "history",
        "--platform",
        "linux/arm64",
        "-H=false",
        "--format",
        "{{.Size}}",
        "upstream.test/team/multi:v1",
    ]);
    assert_eq!(h.trim(), f.multi.children[1].layers[0].size.to_string());
    let err = cli.fails(&["image", "history", "nope:1"]);
    assert!(err.contains("No such image: nope:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_and_prune() {
    let f = fixture().await;
    let cli = Cli::new(&f.cache.admin_addr());

    // Another tag remains: untag only.
    let out = cli.ok(&["image", "rm", "upstream.test/team/app:stable"]);
    assert_eq!(out.trim(), "Untagged: upstream.test/team/app:stable");
    assert!(cli.names(&[]).contains("upstream.test/team/app:1"));

    // The last tag: the image goes, with its digest reference.
    let out = cli.ok(&["image", "rm", "upstream.test/team/app:1"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "Untagged: upstream.test/team/app:1".to_owned(),
            format!("Untagged: upstream.test/team/app@{}", f.app1.digest()),
            format!("Deleted: {}", f.app1.digest()),
        ]
    );
    assert!(!cli.names(&[]).contains("upstream.test/team/app:1"));
    let err = cli.fails(&["image", "rm", "upstream.test/team/app:1"]);
    assert!(
        err.contains("Error response from daemon: No such image: upstream.test/team/app:1"),
        "{err}"
    );
    let err = cli.fails(&["image", "inspect", f.app1.digest()]);
    assert!(err.contains("No such image"), "{err}");

    // One platform of a multi-platform image.
    let arm = &f.multi.children[1].manifest.digest;
    let out = cli.ok(&[
        "image",
        "rm",
        "--platform",
        "linux/arm64",
        "upstream.test/team/multi:v1",
    ]);
    assert_eq!(out.trim(), format!("Deleted: {arm}"));
    let err = cli.fails(&[
        "image",
        "inspect",
        "--platform",
        "linux/arm64",
        "upstream.test/team/multi:v1",
    ]);
    assert!(
        err.contains("does not provide the specified platform"),
        "{err}"
    );
    assert!(cli.names(&[]).contains("upstream.test/team/multi:v1"));

    // Prune without -a: only the dangling image.
    let out = cli.ok(&["image", "prune", "-f"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "Deleted Images:".to_owned(),
            format!("untagged: upstream.test/team/app@{}", f.dangling.digest()),
            format!("deleted: {}", f.dangling.digest()),
            String::new(),
            format!(
                "Total reclaimed space: {}",
                human_size(image_bytes(&f.dangling), 4)
            ),
        ],
        "{out}"
    );
    assert!(!cli.names(&[]).contains("upstream.test/team/app:<none>"));
    let out = cli.ok(&["image", "prune", "-f"]);
    assert_eq!(out.trim(), "Total reclaimed space: 0B");

    // Labels: label= selects, label!= spares.
    let out = cli.ok(&[
        "image",
        "prune",
        "-a",
        "-f",
        "--filter",
        "label=org.example.seed=99",
    ]);
    assert_eq!(out.trim(), "Total reclaimed space: 0B");
    let out = cli.ok(&[
        "image",
        "prune",
        "-a",
        "-f",
        "--filter",
        "label=org.example.seed",
        "--filter",
        "label!=org.example.seed=2",
        "--filter",
        "until=2024-01-04T12:00:00Z",
    ]);
    // app:2 (seed 2) is spared; busybox (2024-01-04) goes; multi (2024-01-05) is too new.
    assert!(out.contains("untagged: busybox:1.36"), "{out}");
    assert!(
        out.contains(&format!("deleted: {}", f.busybox.digest())),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "Total reclaimed space: {}\n",
            human_size(image_bytes(&f.busybox), 4)
        )),
        "{out}"
    );
    assert_eq!(
        cli.names(&[]),
        set(&["upstream.test/team/app:2", "upstream.test/team/multi:v1"])
    );

    // prune -a with until: everything created before the instant, index and children.
    let out = cli.ok(&[
        "image",
        "prune",
        "-a",
        "-f",
        "--filter",
        "until=2024-01-05T12:00:00Z",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    for expected in [
        "untagged: upstream.test/team/app:2".to_owned(),
        format!("deleted: {}", f.app2.digest()),
        "untagged: upstream.test/team/multi:v1".to_owned(),
        format!("deleted: {}", f.multi.digest()),
        format!("deleted: {}", f.multi.children[0].manifest.digest),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "{expected} missing:\n{out}"
        );
    }
    // The arm64 manifest went earlier; its layers were never shared, so they went with it.
    let amd64 = &f.multi.children[0];
    let multi_left = f.multi.index.as_ref().unwrap().size
        + amd64.manifest.size
        + amd64.config.size
        + amd64.layers.iter().map(|l| l.size).sum::<u64>();
    assert_eq!(
        lines.last().copied(),
        Some(
            format!(
                "Total reclaimed space: {}",
                human_size(image_bytes(&f.app2) + multi_left, 4)
            )
            .as_str()
        ),
        "{out}"
    );
    assert!(cli.names(&[]).is_empty());
    assert!(
        support::files_under(&f.cache.data_dir().join("manifests")).is_empty(),
        "every manifest record is gone"
    );
    let err = cli.fails(&["image", "prune", "-f", "--filter", "reference=x"]);
    assert!(err.contains("invalid filter 'reference'"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_by_id_across_repositories_needs_force() {
    let dist = Distribution::start();
    let d = tempfile::tempdir().unwrap();
    let img = gen_image(d.path(), 7, &[5_000], &Platform::linux_amd64());
    dist.push(&img.source_ref(), "team/a:1");
    dist.push(&img.source_ref(), "team/b:1");
    let cache = ImageCache::builder()
        .registry("upstream.test", &dist.url())
        .start();
    let c = client();
    for path in ["upstream.test/team/a", "upstream.test/team/b"] {
        pull_verify(&c, &Repo::new(&cache.url(), path), "1", &img).await;
    }
    let cli = Cli::new(&cache.admin_addr());
    let id = short(img.digest());
    let err = cli.fails(&["image", "rm", &id]);
    assert!(
        err.contains(&format!("conflict: unable to delete {id} (must be forced) - image is referenced in multiple repositories")),
        "{err}"
    );
    let out = cli.ok(&["image", "rm", "-f", &id]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"Untagged: upstream.test/team/a:1"), "{out}");
    assert!(lines.contains(&"Untagged: upstream.test/team/b:1"), "{out}");
    assert_eq!(
        lines.last().copied(),
        Some(format!("Deleted: {}", img.digest()).as_str())
    );
    assert!(cli.names(&[]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_gated_admin_listener_with_http_headers() {
    let dir = tempfile::tempdir().unwrap();
    let token = "docker-cli-test-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let cache = ImageCache::builder()
        .admin_host("0.0.0.0")
        .set(
            "adminTokenFile",
            serde_json::json!(token_file.display().to_string()),
        )
        .start();
    let cli = Cli::new(&cache.admin_addr());
    // The gate's 401 text becomes the CLI's error line.
    let err = cli.fails(&["image", "ls"]);
    assert!(
        err.contains("Error response from daemon: admin token required"),
        "{err}"
    );
    // The CLI adds config.json's HttpHeaders to every request.
    std::fs::write(
        cli.config_dir().join("config.json"),
        serde_json::to_vec(
            &serde_json::json!({"HttpHeaders": {"Authorization": format!("Bearer {token}")}}),
        )
        .unwrap(),
    )
    .unwrap();
    let out = cli.ok(&["image", "ls"]);
    assert!(out.starts_with("REPOSITORY"), "{out}");
    assert_eq!(
        cli.ok(&["version", "--format", "{{.Server.APIVersion}}"])
            .trim(),
        "1.51"
    );
}
