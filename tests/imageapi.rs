//! The OpenShift-style Image API against real clients: kubectl (tables, YAML, watch, delete,
//! label selectors, the admin token), a kube-rs `watcher` (initial list, events, relist after a
//! 410 and after a restart), fan-out of a 1,000-change burst to 100 watchers with the server's
//! memory measured, and a watcher too slow to keep up being cut off.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use imagecache::api::Image as ImageObject;
use serde_json::{Value, json};
use support::http::{client, get, send_body};
use support::image::CONTAINERD_ACCEPT;
use support::{
    Distribution, Image, ImageCache, Platform, Repo, gen_image, gen_multiarch, ok, pull_verify,
};

const GV: &str = "/apis/image.openshift.io/v1";

/// kubectl with no kubeconfig, home or discovery cache of the user's: everything in `home`.
fn kubectl(home: &Path, server: &str, token: Option<&str>, args: &[&str]) -> Output {
    kubectl_command(home, server, token, args)
        .output()
        .expect("run kubectl")
}

fn kubectl_command(home: &Path, server: &str, token: Option<&str>, args: &[&str]) -> Command {
    let kubeconfig = home.join("kubeconfig");
    if !kubeconfig.exists() {
        std::fs::write(&kubeconfig, "").unwrap();
    }
    let mut cmd = Command::new("kubectl");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("KUBECONFIG", &kubeconfig)
        .arg("--server")
        .arg(server)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .arg("--request-timeout=30s");
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    cmd.args(args).stdin(Stdio::null());
    cmd
}

fn repo(cache: &ImageCache, path: &str) -> Repo {
    Repo::new(&cache.url(), path)
}

struct Images {
    _dirs: Vec<tempfile::TempDir>,
    nginx: Image,
    app: Image,
    multi: Image,
}

/// Three images in Distribution: `library/nginx:1.27`, `team/app:v1` and the two-platform
/// index `team/multi:1`.
fn push_images(dist: &Distribution) -> Images {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nginx = gen_image(dirs[0].path(), 1, &[3000], &Platform::linux_amd64());
    let app = gen_image(dirs[1].path(), 2, &[4000], &Platform::linux_amd64());
    let multi = gen_multiarch(
        dirs[2].path(),
        3,
        &[
            Platform::linux_amd64(),
            Platform::new("linux", "arm64", None),
        ],
        &[2000],
    );
    dist.push(&nginx.source_ref(), "library/nginx:1.27");
    dist.push(&app.source_ref(), "team/app:v1");
    dist.push(&multi.source_ref(), "team/multi:1");
    Images {
        _dirs: dirs,
        nginx,
        app,
        multi,
    }
}

/// Reads a child's stdout lines on a thread.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[track_caller]
fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let hit = pred(&l);
                seen.push(l);
                if hit {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("kubectl -w ended: {e}; output so far:\n{}", seen.join("\n")),
        }
    }
    panic!(
        "no such line from kubectl -w; output so far:\n{}",
        seen.join("\n")
    );
}

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_watches_selects_and_deletes() {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .expect("kubectl is installed");
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let dist = Distribution::start();
    let images = push_images(&dist);
    let cache = ImageCache::start_for(&dist);
    let c = client();
    pull_verify(&c, &repo(&cache, "library/nginx"), "1.27", &images.nginx).await;
    pull_verify(&c, &repo(&cache, "team/multi"), "1", &images.multi).await;
    let home = tempfile::tempdir().unwrap();
    let server = cache.admin_url();
    let k = |args: &[&str]| kubectl(home.path(), &server, None, args);
    let nginx = images.nginx.digest().to_string();
    let multi = images.multi.digest().to_string();

    // The table: our columns, one row per cached manifest (nginx, the index, its 2 children).
    let table = ok("kubectl", &k(&["get", "images"]));
    println!("$ kubectl get images\n{table}");
    let mut rows = table.lines();
    assert_eq!(
        columns(rows.next().unwrap()),
        ["NAME", "REFERENCE", "TAGS", "SIZE", "LAST-PULLED", "AGE"]
    );
    let rows: Vec<Vec<&str>> = rows.map(columns).collect();
    assert_eq!(rows.len(), 4, "{table}");
    let row = rows.iter().find(|r| r[0] == nginx).expect("nginx row");
    assert_eq!(row[1], format!("upstream.test/library/nginx@{nginx}"));
    assert_eq!(row[2], "1.27");
    assert!(row[3].ends_with("KiB"), "{row:?}");
    assert!(row[4].ends_with('s'), "pulled seconds ago: {row:?}");
    let index_row = rows.iter().find(|r| r[0] == multi).expect("index row");
    assert_eq!(index_row[2], "1");

    // Single objects, wide YAML and JSON.
    let yaml = ok("kubectl", &k(&["get", "image", &nginx, "-o", "yaml"]));
    println!("$ kubectl get image {nginx} -o yaml\n{yaml}");
    for want in [
        "apiVersion: image.openshift.io/v1",
        "kind: Image",
        "imagecache.io/registry: upstream.test",
        "imagecache.io/repository: library.nginx",
        "imagecache.io/tags: upstream.test/library/nginx:1.27",
        "dockerImageManifestMediaType: application/vnd.oci.image.manifest.v1+json",
        "kubernetes.io/arch: amd64",
        "org.example.seed: \"1\"",
    ] {
        assert!(yaml.contains(want), "missing {want:?}");
    }
    let list: Value =
        serde_json::from_str(&ok("kubectl", &k(&["get", "images", "-o", "json"]))).unwrap();
    let index: &Value = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == multi.as_str())
        .unwrap();
    let archs: Vec<&str> = index["dockerImageManifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    let typed: ImageObject = serde_json::from_value(index.clone()).unwrap();
    assert_eq!(typed.docker_image_manifests.len(), 2);

    // Label selectors.
    let names = |selector: &str| -> Vec<String> {
        let out = ok(
            "kubectl",
            &k(&["get", "images", "-l", selector, "-o", "name"]),
        );
        out.lines().map(str::to_owned).collect()
    };
    assert_eq!(
        names("imagecache.io/repository=library.nginx"),
        [format!("image.image.openshift.io/{nginx}")]
    );
    assert_eq!(
        names("imagecache.io/type in (index)"),
        [format!("image.image.openshift.io/{multi}")]
    );
    assert_eq!(
        names("!kubernetes.io/arch").len(),
        1,
        "only the index lacks one"
    );
    assert_eq!(names("kubernetes.io/arch=arm64").len(), 1);
    assert_eq!(
        names("imagecache.io/repository notin (team.multi)").len(),
        1
    );
    let bad = k(&["get", "images", "-l", "a in ("]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("BadRequest"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Watch: ADDED when a pull completes, DELETED after a prune.
    let mut watch = kubectl_command(
        home.path(),
        &server,
        None,
        &["get", "images", "-w", "--output-watch-events"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let rx = lines_of(&mut watch);
    let mut seen = Vec::new();
    wait_line(&rx, &mut seen, |l| l.contains(&nginx));
    let app = images.app.digest().to_string();
    pull_verify(&c, &repo(&cache, "team/app"), "v1", &images.app).await;
    wait_line(&rx, &mut seen, |l| {
        columns(l).first() == Some(&"ADDED") && l.contains(&app)
    });
    let report = send_body(
        &c,
        "POST",
        &format!("{}/admin/v1/prune", cache.admin_url()),
        &[("content-type", "application/json")],
        serde_json::to_vec(&json!({"patterns": ["team/app"], "minAge": "0s", "count": -1, "maxDeletionRatio": 1.0})).unwrap(),
    )
    .await;
    assert_eq!(report.status, 200, "{}", report.text());
    assert_eq!(report.json()["totals"]["manifests"], 1, "{}", report.text());
    wait_line(&rx, &mut seen, |l| {
        columns(l).first() == Some(&"DELETED") && l.contains(&app)
    });
    println!(
        "$ kubectl get images -w --output-watch-events\n{}",
        seen.join("\n")
    );
    assert_eq!(
        columns(&seen[0])[..3],
        ["EVENT", "NAME", "REFERENCE"],
        "{seen:?}"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    // Delete prunes the image: its record and its layers leave the disk.
    let deleted = ok("kubectl", &k(&["delete", "image", &nginx]));
    assert_eq!(
        deleted.trim(),
        format!("image.image.openshift.io \"{nginx}\" deleted")
    );
    let gone = k(&["get", "image", &nginx]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
    let hex = nginx.strip_prefix("sha256:").unwrap();
    assert!(
        !cache
            .data_dir()
            .join(format!("manifests/sha256/{hex}.json"))
            .exists()
    );
    for layer in &images.nginx.children[0].layers {
        let h = layer.digest.strip_prefix("sha256:").unwrap();
        assert!(
            !cache
                .data_dir()
                .join(format!("blobs/sha256/{}/{h}", &h[..2]))
                .exists()
        );
    }
    // deletecollection by label takes the index and its children.
    ok(
        "kubectl",
        &k(&[
            "delete",
            "images",
            "-l",
            "imagecache.io/repository=team.multi",
        ]),
    );
    let left = ok("kubectl", &k(&["get", "images", "-o", "name"]));
    assert!(left.trim().is_empty(), "{left}");
}

/// A TLS front for `backend` with a throwaway self-signed certificate (made by the openssl
/// CLI); returns its port.
async fn tls_proxy(dir: &Path, backend: String) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    port
}

fn kube_client_with(server: &str, token: Option<&str>) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(server.parse().unwrap());
    if let Some(t) = token {
        config.auth_info = serde_json::from_value(json!({ "token": t })).unwrap();
    }
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_off_loopback() {
    let dist = Distribution::start();
    let images = push_images(&dist);
    let dir = tempfile::tempdir().unwrap();
    let token = "imageapi-test-token-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let cache = ImageCache::builder()
        .registry(support::UPSTREAM, &dist.url())
        .admin_host("0.0.0.0")
        .set("adminTokenFile", json!(token_file.display().to_string()))
        .start();
    let c = client();
    pull_verify(&c, &repo(&cache, "library/nginx"), "1.27", &images.nginx).await;
    let nginx = images.nginx.digest().to_string();
    let server = cache.admin_url();

    // The raw API.
    let r = get(&c, &format!("{server}{GV}/images"), &[]).await;
    assert_eq!(r.status, 401);
    let bearer = format!("Bearer {token}");
    let r = get(
        &c,
        &format!("{server}{GV}/images"),
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200);

    // kube-rs (the operator's client) sends its token over plain HTTP.
    let api: kube::Api<ImageObject> = kube::Api::all(kube_client_with(&server, Some(token)));
    let list = api.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let anonymous: kube::Api<ImageObject> = kube::Api::all(kube_client_with(&server, None));
    assert!(anonymous.list(&Default::default()).await.is_err());

    // kubectl: refused without the token. client-go never sends credentials over plain HTTP,
    // so off loopback kubectl needs TLS in front of the admin listener; there a wrong token is
    // refused and the right one lists. (Without any credentials over TLS kubectl would prompt
    // for a username instead.)
    let home = tempfile::tempdir().unwrap();
    let denied = kubectl(home.path(), &server, None, &["get", "images"]);
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("must be logged in"), "{err}");
    let plain = kubectl(home.path(), &server, Some(token), &["get", "images"]);
    assert!(
        !plain.status.success(),
        "client-go drops the token over http"
    );
    let https = format!(
        "https://127.0.0.1:{}",
        tls_proxy(dir.path(), cache.admin_addr()).await
    );
    let tls = |token: &str| {
        let args = ["--insecure-skip-tls-verify", "get", "images", "-o", "name"];
        kubectl(home.path(), &https, Some(token), &args)
    };
    let wrong = tls("not-the-token");
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("must be logged in"), "{err}");
    let listed = ok("kubectl", &tls(token));
    assert_eq!(listed.trim(), format!("image.image.openshift.io/{nginx}"));
    println!(
        "$ kubectl --server {https} --insecure-skip-tls-verify --token T get images -o name\n{listed}"
    );
}

/// What a kube-rs watcher has told us so far.
#[derive(Default)]
struct Seen {
    objects: BTreeMap<String, ImageObject>,
    buffer: BTreeMap<String, ImageObject>,
    inits: usize,
    expired_errors: usize,
    applies: Vec<String>,
    deletes: Vec<String>,
}

/// Runs a watcher with a 1 s server-side timeout and 2-item list pages, applying events to
/// `Seen`.
fn spawn_watcher(
    server: &str,
    gate: tokio::sync::watch::Receiver<bool>,
) -> (
    std::sync::Arc<std::sync::Mutex<Seen>>,
    tokio::task::JoinHandle<()>,
) {
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    let api: kube::Api<ImageObject> = kube::Api::all(kube_client_with(server, None));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let mut gate = gate;
        let stream = watcher::watcher(api, watcher::Config::default().timeout(1).page_size(2))
            .default_backoff();
        futures_util::pin_mut!(stream);
        loop {
            // While the gate is closed the watcher is not polled: it neither reads nor
            // reconnects, like a client that went away.
            while !*gate.borrow_and_update() {
                if gate.changed().await.is_err() {
                    return;
                }
            }
            let Some(ev) = stream.next().await else {
                return;
            };
            let mut seen = s.lock().unwrap();
            match ev {
                Ok(Event::Init) => {
                    seen.inits += 1;
                    seen.buffer.clear();
                }
                Ok(Event::InitApply(o)) => {
                    seen.buffer.insert(o.name().to_owned(), o);
                }
                Ok(Event::InitDone) => {
                    seen.objects = std::mem::take(&mut seen.buffer);
                }
                Ok(Event::Apply(o)) => {
                    seen.applies.push(o.name().to_owned());
                    seen.objects.insert(o.name().to_owned(), o);
                }
                Ok(Event::Delete(o)) => {
                    seen.deletes.push(o.name().to_owned());
                    seen.objects.remove(o.name());
                }
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    seen.expired_errors += 1;
                }
                Err(_) => {}
            }
        }
    });
    (seen, task)
}

/// The names the server lists now.
async fn listed(c: &reqwest::Client, server: &str) -> Vec<String> {
    let r = get(c, &format!("{server}{GV}/images"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut names: Vec<String> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

async fn list_revision(c: &reqwest::Client, server: &str) -> u64 {
    let r = get(c, &format!("{server}{GV}/images?limit=1"), &[]).await;
    r.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until the watcher's view equals the server's list (and `extra` holds).
async fn converge(
    seen: &std::sync::Mutex<Seen>,
    c: &reqwest::Client,
    server: &str,
    what: &str,
    extra: impl Fn(&Seen) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = listed(c, server).await;
        {
            let s = seen.lock().unwrap();
            let have: Vec<String> = s.objects.keys().cloned().collect();
            if have == want && extra(&s) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: watcher has {have:?}, server lists {want:?} (inits {}, 410s {})",
                    s.inits, s.expired_errors
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GETs manifests by digest: each counts as a pull, flushed as one MODIFIED per image.
async fn pull_manifests(c: &reqwest::Client, cache: &ImageCache, path: &str, digests: &[String]) {
    let r = repo(cache, path);
    for d in digests {
        let resp = get(c, &r.manifest_url(d), &[("Accept", CONTAINERD_ACCEPT)]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_watcher_lists_watches_and_relists() {
    let dist = Distribution::start();
    let images = push_images(&dist);
    let mut cache = ImageCache::builder()
        .registry(support::UPSTREAM, &dist.url())
        .set("changeHistory", json!(5))
        .set("accessFlushInterval", json!("100ms"))
        .start();
    let c = client();
    let server = cache.admin_url();
    pull_verify(&c, &repo(&cache, "library/nginx"), "1.27", &images.nginx).await;
    let nginx = images.nginx.digest().to_string();

    let (gate_tx, gate) = tokio::sync::watch::channel(true);
    let (seen, task) = spawn_watcher(&server, gate);
    // The initial list.
    converge(&seen, &c, &server, "initial list", |s| s.inits == 1).await;
    assert!(seen.lock().unwrap().objects.contains_key(&nginx));
    {
        let s = seen.lock().unwrap();
        let o = &s.objects[&nginx];
        assert_eq!(
            o.docker_image_reference,
            format!("upstream.test/library/nginx@{nginx}")
        );
        assert_eq!(o.docker_image_layers.len(), 1);
    }

    // Later events: a pull, then a delete.
    pull_verify(&c, &repo(&cache, "team/multi"), "1", &images.multi).await;
    let multi = images.multi.digest().to_string();
    converge(&seen, &c, &server, "after a pull", |s| {
        s.applies.contains(&multi)
    })
    .await;
    let r = send_body(
        &c,
        "DELETE",
        &format!("{server}{GV}/images/{nginx}"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    converge(&seen, &c, &server, "after a delete", |s| {
        s.deletes.contains(&nginx)
    })
    .await;

    // Disconnected while more changes than the history (5) happen: 410, then a relist.
    // Closing the gate stops the watcher after its next event; its open watch then times
    // out on the server (1 s) and, not being polled, it does not reconnect.
    gate_tx.send(false).unwrap();
    let children: Vec<String> = images
        .multi
        .children
        .iter()
        .map(|ch| ch.manifest.digest.clone())
        .collect();
    let quiet = list_revision(&c, &server).await;
    pull_manifests(&c, &cache, "team/multi", &children[..1]).await;
    while list_revision(&c, &server).await == quiet {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = list_revision(&c, &server).await;
    while list_revision(&c, &server).await < before + 8 {
        pull_manifests(&c, &cache, "team/multi", &children).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    pull_verify(&c, &repo(&cache, "team/app"), "v1", &images.app).await;
    gate_tx.send(true).unwrap();
    let app = images.app.digest().to_string();
    converge(&seen, &c, &server, "after a 410", |s| {
        s.inits >= 2 && s.expired_errors >= 1 && s.objects.contains_key(&app)
    })
    .await;

    // A restart expires every revision: the watcher reconnects, gets 410, relists.
    cache.restart();
    let deleted = send_body(
        &c,
        "DELETE",
        &format!("{server}{GV}/images/{app}"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(deleted.status, 200);
    converge(&seen, &c, &server, "after a restart", |s| {
        s.inits >= 3 && !s.objects.contains_key(&app)
    })
    .await;
    // And it keeps watching after the relist.
    pull_verify(&c, &repo(&cache, "library/nginx"), "1.27", &images.nginx).await;
    converge(&seen, &c, &server, "after a restart and a pull", |s| {
        s.objects.contains_key(&nginx)
    })
    .await;
    let s = seen.lock().unwrap();
    println!(
        "kube-rs watcher: {} lists, {} Expired errors, {} applies, {} deletes",
        s.inits,
        s.expired_errors,
        s.applies.len(),
        s.deletes.len()
    );
    drop(s);
    task.abort();
}

/// An index with `n` single-layer children in `fan/multi:1`, all cached (index and children
/// pulled by digest); returns the children's digests.
async fn cache_many(
    dist: &Distribution,
    cache: &ImageCache,
    c: &reqwest::Client,
    n: usize,
) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let platforms: Vec<Platform> = (0..n)
        .map(|i| Platform::new("linux", "amd64", Some(&format!("v{i}"))))
        .collect();
    let img = gen_multiarch(dir.path(), 77, &platforms, &[64]);
    dist.push(&img.source_ref(), "fan/multi:1");
    let children: Vec<String> = img
        .children
        .iter()
        .map(|ch| ch.manifest.digest.clone())
        .collect();
    pull_manifests(c, cache, "fan/multi", &[img.digest().to_owned()]).await;
    pull_manifests(c, cache, "fan/multi", &children).await;
    (dir, children)
}

/// Waits until the revision stops moving (the last pull statistics are flushed).
async fn settle(c: &reqwest::Client, server: &str) -> u64 {
    let mut last = list_revision(c, server).await;
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = list_revision(c, server).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// `n` rounds of pulling every child once; each round's flush is one MODIFIED per child.
async fn burst(
    c: &reqwest::Client,
    cache: &ImageCache,
    children: &[String],
    rounds: usize,
    from: u64,
) -> u64 {
    let server = cache.admin_url();
    let mut rev = from;
    for _ in 0..rounds {
        pull_manifests(c, cache, "fan/multi", children).await;
        let want = rev + children.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        while list_revision(c, &server).await < want {
            assert!(Instant::now() < deadline, "flush did not come");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rev = list_revision(c, &server).await;
        assert_eq!(rev, want, "one event per pulled image per flush");
    }
    rev
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Reads watch event lines until `n` events arrived; returns (type, name, revision) of each.
async fn read_events(resp: reqwest::Response, n: usize) -> Vec<(String, String, u64)> {
    #[derive(serde::Deserialize)]
    struct Meta {
        name: Option<String>,
        #[serde(rename = "resourceVersion")]
        resource_version: String,
    }
    #[derive(serde::Deserialize)]
    struct Obj {
        metadata: Meta,
    }
    #[derive(serde::Deserialize)]
    struct Ev {
        #[serde(rename = "type")]
        kind: String,
        object: Obj,
    }
    let mut out = Vec::with_capacity(n);
    let mut buf: Vec<u8> = Vec::new();
    let mut body = resp.bytes_stream();
    while out.len() < n {
        let Some(chunk) = body.next().await else {
            break;
        };
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let ev: Ev = serde_json::from_slice(&line).unwrap();
            out.push((
                ev.kind,
                ev.object.metadata.name.unwrap_or_default(),
                ev.object.metadata.resource_version.parse().unwrap(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_100_watchers() {
    const WATCHERS: usize = 100;
    const CHILDREN: usize = 100;
    const ROUNDS: usize = 10;
    let dist = Distribution::start();
    let cache = ImageCache::builder()
        .registry(support::UPSTREAM, &dist.url())
        .set("accessFlushInterval", json!("100ms"))
        .set("log", json!({"level": "info", "format": "text"}))
        .start();
    let c = client();
    let server = cache.admin_url();
    let (_dir, children) = cache_many(&dist, &cache, &c, CHILDREN).await;
    let start = settle(&c, &server).await;
    let pid = cache.pid().unwrap();
    let rss_before = rss_kib(pid, "VmRSS:");

    let watch_client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut readers = Vec::new();
    for _ in 0..WATCHERS {
        let resp = watch_client
            .get(format!(
                "{server}{GV}/images?watch=true&resourceVersion={start}&timeoutSeconds=300"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        readers.push(tokio::spawn(read_events(resp, CHILDREN * ROUNDS)));
    }
    let rss_connected = rss_kib(pid, "VmRSS:");
    let t0 = Instant::now();
    let end = burst(&c, &cache, &children, ROUNDS, start).await;
    assert_eq!(end, start + (CHILDREN * ROUNDS) as u64);
    let mut first: Option<Vec<(String, String, u64)>> = None;
    for r in readers {
        let events = tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .expect("every watcher gets every event")
            .unwrap();
        assert_eq!(events.len(), CHILDREN * ROUNDS);
        let revs: Vec<u64> = events.iter().map(|e| e.2).collect();
        let want: Vec<u64> = (start + 1..=end).collect();
        assert_eq!(revs, want, "every revision, once, in order");
        assert!(events.iter().all(|e| e.0 == "MODIFIED"));
        match &first {
            None => first = Some(events),
            Some(f) => assert!(*f == events, "all watchers see the same sequence"),
        }
    }
    let elapsed = t0.elapsed();
    let rss_after = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    println!(
        "fan-out: {WATCHERS} watchers x {} events in {:.2?}; server RSS {} MiB before, {} MiB \
         with watchers connected, {} MiB after the burst (peak {} MiB)",
        CHILDREN * ROUNDS,
        elapsed,
        rss_before / 1024,
        rss_connected / 1024,
        rss_after / 1024,
        hwm / 1024
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "server memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CHILDREN: usize = 100;
    let dist = Distribution::start();
    let cache = ImageCache::builder()
        .registry(support::UPSTREAM, &dist.url())
        .set("accessFlushInterval", json!("100ms"))
        .set("changeHistory", json!(100))
        .set("log", json!({"level": "info", "format": "text"}))
        .start();
    let c = client();
    let server = cache.admin_url();
    let (_dir, children) = cache_many(&dist, &cache, &c, CHILDREN).await;
    let start = settle(&c, &server).await;

    // A client that asks to watch and then does not read, with a tiny receive window.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(cache.admin_addr().parse().unwrap())
        .await
        .unwrap();
    stream
        .write_all(
            format!(
                "GET {GV}/images?watch=true&resourceVersion={start} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let rounds = 40;
    let pid = cache.pid().unwrap();
    let rss_before = rss_kib(pid, "VmRSS:");
    burst(&c, &cache, &children, rounds, start).await;
    let rss_after = rss_kib(pid, "VmRSS:");
    // Now read everything it was sent: the events it could hold, then a 410 and the end.
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut all))
        .await
        .expect("the server ends the stream")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    let events = text.matches("\"type\":\"MODIFIED\"").count();
    let generated = CHILDREN * rounds;
    println!(
        "slow watcher: {events} of {generated} events ({} KiB) before being cut off; server RSS \
         {} MiB before, {} MiB after",
        all.len() / 1024,
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(events < generated, "it cannot have kept up");
    assert!(
        text.contains(r#""type":"ERROR""#) && text.contains(r#""reason":"Expired""#),
        "cut off with an Expired error: {}",
        &text[text.len().saturating_sub(600)..]
    );
    assert!(rss_after < rss_before + 64 * 1024);
}
