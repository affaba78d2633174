//! CNCF Distribution (`docker-registry serve`) as a test upstream or as a
//! reference pull-through proxy.
//!
//! Distribution 2.8 with `log.accesslog.disabled: false` writes one Apache
//! combined-log line per finished request to stdout, e.g.
//! `127.0.0.1 - - [22/Nov/2026:21:30:38 +0000] "GET /v2/foo/blobs/sha256:00.. HTTP/1.1" 404 157 "" "curl/7.88.1"`
//! next to its logrus lines (`time="..." level=info msg="response completed" ...`).
//! Request counts are parsed from the access-log lines only.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, free_port_on, http::probe, skopeo, tail, wait_for};

/// One access-log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub method: String,
    /// Request target as sent (path plus query).
    pub path: String,
    pub status: u16,
    /// Response body bytes as logged (a HEAD's is the length it did not send).
    pub size: u64,
    /// The client's `User-Agent`.
    pub user_agent: String,
}

pub struct Distribution {
    dir: TempDir,
    /// The address it listens on (loopback unless started with `start_secure_on`).
    host: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Serves HTTPS (readiness is then a TCP connect, the URL `https://`).
    tls: bool,
}

/// Extra settings for a secured Distribution: TLS files and an htpasswd file.
#[derive(Default)]
pub struct Secure {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA bundle client certificates must chain to (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// bcrypt htpasswd file: basic authentication.
    pub htpasswd: Option<PathBuf>,
}

impl Distribution {
    /// A plain registry with filesystem storage, deletes enabled, no auth.
    pub fn start() -> Self {
        Self::launch(None, &Secure::default(), "127.0.0.1")
    }

    /// A registry with TLS, client certificates and/or basic authentication.
    pub fn start_secure(secure: &Secure) -> Self {
        Self::launch(None, secure, "127.0.0.1")
    }

    /// The same on another local address `host` (the test node's link to this machine), on a
    /// port free there.
    pub fn start_secure_on(host: &str, secure: &Secure) -> Self {
        Self::launch(None, secure, host)
    }

    /// A Distribution pull-through cache of `remote_url` (e.g. `http://127.0.0.1:5000`).
    pub fn start_proxy(remote_url: &str) -> Self {
        Self::launch(Some(remote_url), &Secure::default(), "127.0.0.1")
    }

    fn launch(remote: Option<&str>, secure: &Secure, host: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("distribution-")
            .tempdir()
            .unwrap();
        let port = if host == "127.0.0.1" {
            free_port()
        } else {
            free_port_on(host)
        };
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).unwrap();
        let proxy = remote
            .map(|r| format!("proxy:\n  remoteurl: {r}\n"))
            .unwrap_or_default();
        let mut tls = String::new();
        if let (Some(cert), Some(key)) = (&secure.cert, &secure.key) {
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            if let Some(ca) = &secure.client_ca {
                tls.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
        }
        let auth = secure
            .htpasswd
            .as_ref()
            .map(|p| {
                format!(
                    "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                    p.display()
                )
            })
            .unwrap_or_default();
        // A fixed http.secret silences the "generated random secret" warning.
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             cache:\n    blobdescriptor: inmemory\n\
             http:\n  addr: {host}:{port}\n  secret: imagecache-tests\n\
             {tls}{auth}{proxy}",
            storage = storage.display(),
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let log = dir.path().join("registry.log");
        let mut d = Distribution {
            host: host.to_owned(),
            port,
            config: config_path,
            log,
            child: None,
            dir,
            tls: secure.cert.is_some(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        // Append so counts survive restarts.
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let child = super::tied_command("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn docker-registry (apt-get install docker-registry)");
        self.child = Some(child);
        let addr = self.addr();
        let up = wait_for(Duration::from_secs(15), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("docker-registry exited ({st}):\n{}", tail(&self.log, 4000));
            }
            let up = if self.tls {
                std::net::TcpStream::connect(&addr).is_ok()
            } else {
                // 401 when basic auth is on: up all the same.
                matches!(probe(&addr, "/v2/"), Some(200 | 401))
            };
            up.then_some(())
        });
        if up.is_none() {
            panic!(
                "docker-registry on {addr} not ready:\n{}",
                tail(&self.log, 4000)
            );
        }
    }

    /// Stops the registry (SIGKILL); storage and port are kept for `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `HOST:PORT` (`127.0.0.1:PORT` unless started on another address)
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Parsed access log, oldest first.
    pub fn access_log(&self) -> Vec<Access> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(parse_access_line).collect()
    }

    /// Body bytes of the successful GETs served so far (what a cache downloaded from here).
    pub fn get_bytes(&self) -> u64 {
        self.access_log()
            .iter()
            .filter(|a| a.method == "GET" && (200..300).contains(&a.status))
            .map(|a| a.size)
            .sum()
    }

    /// `(method, path)` of every request served so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.access_log()
            .into_iter()
            .map(|a| (a.method, a.path))
            .collect()
    }

    /// Number of `GET .../blobs/sha256:...` requests.
    pub fn count_blob_gets(&self) -> usize {
        self.blob_gets_by_digest().values().sum()
    }

    /// `GET .../blobs/<digest>` counts keyed by digest.
    pub fn blob_gets_by_digest(&self) -> BTreeMap<String, usize> {
        self.count_by_digest("GET", "/blobs/")
    }

    /// `GET .../manifests/<ref>` counts keyed by reference (tag or digest).
    pub fn manifest_gets(&self) -> BTreeMap<String, usize> {
        self.count_by_digest("GET", "/manifests/")
    }

    fn count_by_digest(&self, method: &str, marker: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for a in self.access_log() {
            if a.method != method {
                continue;
            }
            let path = a.path.split('?').next().unwrap();
            if let Some(i) = path.rfind(marker) {
                *m.entry(path[i + marker.len()..].to_string()).or_insert(0) += 1;
            }
        }
        m
    }

    /// Pushes a skopeo source (e.g. `Image::source_ref()`) as `repo:tag`, keeping digests.
    pub fn push(&self, src: &str, repo_tag: &str) {
        skopeo::skopeo_copy_ok(
            src,
            &format!("docker://{}/{repo_tag}", self.addr()),
            &["--all", "--preserve-digests"],
        );
    }

    /// `docker://127.0.0.1:PORT/<repo_tag>`
    pub fn docker_ref(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.addr())
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- docker-registry {} log tail ---\n{}",
                self.addr(),
                tail(&self.log, 3000)
            );
        }
    }
}

/// Parses `IP - - [date] "METHOD TARGET PROTO" STATUS SIZE "referer" "ua"`.
fn parse_access_line(line: &str) -> Option<Access> {
    if line.starts_with("time=") {
        return None;
    }
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut fields = rest.trim_start().splitn(3, ' ');
    let status = fields.next()?.parse().ok()?;
    let size = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    // `"referer" "user agent"`
    let user_agent = fields
        .next()
        .and_then(|quoted| quoted.rsplit('"').nth(1))
        .unwrap_or_default()
        .to_string();
    Some(Access {
        method,
        path,
        status,
        size,
        user_agent,
    })
}

/// The Distribution pull-through proxy configured like a production deployment, the
/// reference the benchmark and the soak compare with: no per-request logging (our server
/// logs none either at level info), in-memory blob descriptor cache. `start_proxy` keeps the
/// access log on (its tests count requests) and hides the pid, which RSS figures need.
pub struct QuietProxy {
    _dir: TempDir,
    port: u16,
    log: PathBuf,
    child: Child,
}

impl QuietProxy {
    pub fn start(remote_url: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("proxy-").tempdir().unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).unwrap();
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: imagecache-tests\n\
             proxy:\n  remoteurl: {remote_url}\n",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let log = dir.path().join("registry.log");
        let out = fs::File::create(&log).unwrap();
        let child = super::tied_command("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn docker-registry (apt-get install docker-registry)");
        let mut p = QuietProxy {
            _dir: dir,
            port,
            log,
            child,
        };
        let addr = p.addr();
        let up = wait_for(Duration::from_secs(15), || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!(
                    "docker-registry proxy exited ({st}):\n{}",
                    tail(&p.log, 4000)
                );
            }
            (probe(&addr, "/v2/") == Some(200)).then_some(())
        });
        assert!(
            up.is_some(),
            "proxy on {addr} not ready:\n{}",
            tail(&p.log, 4000)
        );
        p
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for QuietProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- proxy log tail ---\n{}", tail(&self.log, 3000));
        }
    }
}
