//! Runs the `imagecache serve` binary under test with a generated config file.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tempfile::TempDir;

use super::distribution::Distribution;
use super::{free_port, http::probe, tail, wait_for};

/// Name under which tests register their Distribution upstream.
pub const UPSTREAM: &str = "upstream.test";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds the YAML config (the camelCase contract of design §2) and starts the server.
pub struct ImageCacheBuilder {
    config: Map<String, Value>,
    data_dir: Option<PathBuf>,
    /// Interface the admin listener binds (clients still use 127.0.0.1).
    admin_host: Option<String>,
    /// The registry port; a free one when not set.
    port: Option<u16>,
}

impl ImageCacheBuilder {
    /// Adds an upstream to the allowlist.
    pub fn registry(mut self, name: &str, endpoint: &str) -> Self {
        self.registries()
            .push(json!({"name": name, "endpoint": endpoint}));
        self
    }

    /// Adds an upstream with extra per-registry fields (auth, tls, timeouts...).
    pub fn registry_with(mut self, entry: Value) -> Self {
        self.registries().push(entry);
        self
    }

    pub fn default_registry(self, name: &str) -> Self {
        self.set("defaultRegistry", json!(name))
    }

    /// e.g. `"1s"`, `"15m"`.
    pub fn tag_ttl(self, ttl: &str) -> Self {
        self.set("tagTTL", json!(ttl))
    }

    pub fn air_gapped(self, on: bool) -> Self {
        self.set("airGapped", json!(on))
    }

    pub fn allow_any_upstream(self, on: bool) -> Self {
        self.set("allowAnyUpstream", json!(on))
    }

    /// Binds the admin listener on another interface, e.g. `0.0.0.0` (needs `adminTokenFile`).
    pub fn admin_host(mut self, host: &str) -> Self {
        self.admin_host = Some(host.to_string());
        self
    }

    /// Listens on this registry port (e.g. one named in the `peers` of other servers).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Uses an existing cache directory instead of a fresh one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Sets or replaces any top-level config key; `Value::Null` removes it.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        if value.is_null() {
            self.config.remove(key);
        } else {
            self.config.insert(key.to_string(), value);
        }
        self
    }

    fn registries(&mut self) -> &mut Vec<Value> {
        self.config
            .entry("registries")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("registries is a list")
    }

    pub fn start(self) -> ImageCache {
        let dir = tempfile::Builder::new()
            .prefix("imagecache-")
            .tempdir()
            .unwrap();
        let data = self.data_dir.unwrap_or_else(|| dir.path().join("data"));
        let (port, admin_port) = (self.port.unwrap_or_else(free_port), free_port());
        let mut config = self.config;
        config.insert("addr".into(), json!(format!("127.0.0.1:{port}")));
        let admin_host = self.admin_host.as_deref().unwrap_or("127.0.0.1");
        config.insert(
            "adminAddr".into(),
            json!(format!("{admin_host}:{admin_port}")),
        );
        config.insert("imagePath".into(), json!(data.display().to_string()));
        let config_path = dir.path().join("config.yaml");
        fs::write(&config_path, to_yaml(&Value::Object(config))).unwrap();
        let log = dir.path().join("imagecache.log");
        let mut s = ImageCache {
            port,
            admin_port,
            data,
            config: config_path,
            log,
            child: None,
            _dir: dir,
        };
        s.spawn();
        s
    }
}

/// A running `imagecache serve`; killed on drop (its log tail is printed if the test panicked).
pub struct ImageCache {
    port: u16,
    admin_port: u16,
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _dir: TempDir,
}

impl ImageCache {
    /// Defaults: debug text logs, `upstream.test` default registry, 15m tag TTL,
    /// allowlist only what the test adds.
    pub fn builder() -> ImageCacheBuilder {
        let config = json!({
            "defaultRegistry": UPSTREAM,
            "airGapped": false,
            "tagTTL": "15m",
            "allowAnyUpstream": false,
            "registries": [],
            "log": {"level": "debug", "format": "text"},
        });
        ImageCacheBuilder {
            config: config.as_object().unwrap().clone(),
            data_dir: None,
            admin_host: None,
            port: None,
        }
    }

    /// The usual setup: `upstream.test` -> `upstream`, also the default registry.
    pub fn start_for(upstream: &Distribution) -> Self {
        Self::builder().registry(UPSTREAM, &upstream.url()).start()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let child = super::tied_command(env!("CARGO_BIN_EXE_imagecache"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn imagecache");
        self.child = Some(child);
        let admin = self.admin_addr();
        let ready = wait_for(READY_TIMEOUT, || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "imagecache exited early ({st}); config:\n{}\nlog:\n{}",
                    self.config_text(),
                    self.log_tail()
                );
            }
            (probe(&admin, "/readyz") == Some(200)).then_some(())
        });
        if ready.is_none() {
            panic!(
                "imagecache not ready within {READY_TIMEOUT:?} (GET http://{admin}/readyz); config:\n{}\nlog:\n{}",
                self.config_text(),
                self.log_tail()
            );
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to 10s (then SIGKILL); returns whether it exited by itself.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let exited = wait_for(Duration::from_secs(10), || c.try_wait().ok().flatten()).is_some();
        if !exited {
            let _ = c.kill();
        }
        let _ = c.wait();
        exited
    }

    /// Starts again on the same ports, config and cache (stopping it first if still running).
    pub fn restart(&mut self) {
        self.terminate();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `127.0.0.1:PORT` of the registry listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr())
    }

    /// `docker://127.0.0.1:PORT/<repo_tag>` for skopeo.
    pub fn docker_ref(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.addr())
    }

    /// The cache directory (`imagePath`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config).unwrap_or_default()
    }

    /// Everything the server printed, across restarts.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 6000)
    }
}

impl Drop for ImageCache {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- imagecache {} log tail ---\n{}",
                self.addr(),
                self.log_tail()
            );
        }
    }
}

/// Block-style YAML for a JSON value; strings are JSON-quoted, which YAML reads as
/// double-quoted scalars, so values like `1s` or `127.0.0.1:5000` stay strings.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::Object(o) if !o.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        emit(v, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        emit(v, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                match item {
                    Value::Object(o) if !o.is_empty() => {
                        // Render the map one level deeper, then turn its first indent into "- ".
                        let mut sub = String::new();
                        emit(item, indent + 2, &mut sub);
                        out.push_str(&format!("{pad}- {}", &sub[indent + 2..]));
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                }
            }
        }
        _ => out.push_str(&format!("{pad}{}\n", scalar(v))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(a) => {
            assert!(a.is_empty());
            "[]".into()
        }
        other => other.to_string(),
    }
}
