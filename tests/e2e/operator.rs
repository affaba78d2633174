//! `imagecache operator` as its Deployment runs it, on this machine: authenticated by a token of
//! the ServiceAccount that `deploy/operator.yaml` creates (TokenRequest API), so it has exactly
//! the rights those manifests grant. Its log is checked for refusals (403) when it stops.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{self, OPERATOR_NS, OPERATOR_SA};

/// One operator process; killed on drop (its log printed when the test failed).
pub struct Operator {
    pub identity: String,
    child: Option<Child>,
    log: PathBuf,
    port: u16,
    args: Vec<String>,
    kubeconfig: PathBuf,
}

/// How to run it.
pub struct Options<'a> {
    /// Watch only this namespace (all when `None`).
    pub namespace: Option<&'a str>,
    /// Take part in leader election on the Lease of `deploy/` (off: the only operator of its
    /// namespace, as a test's own operator is).
    pub leader_elect: bool,
    /// Its identity in the Lease (the Pod name in a Deployment).
    pub identity: &'a str,
}

impl Operator {
    /// The operator of one test namespace, without leader election.
    pub fn for_namespace(ns: &str, work: &Path) -> Operator {
        Operator::start(
            Options {
                namespace: Some(ns),
                leader_elect: false,
                identity: &format!("operator-{ns}"),
            },
            work,
        )
    }

    pub fn start(options: Options<'_>, work: &Path) -> Operator {
        let kubeconfig = write_kubeconfig(work, options.identity);
        let port = crate::support::free_port();
        let mut args = vec![
            "operator".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--min-update-interval".to_owned(),
            "1s".to_owned(),
            "--lease-namespace".to_owned(),
            OPERATOR_NS.to_owned(),
            format!("--leader-elect={}", options.leader_elect),
        ];
        if let Some(ns) = options.namespace {
            args.extend(["--namespace".to_owned(), ns.to_owned()]);
        }
        let mut op = Operator {
            identity: options.identity.to_owned(),
            child: None,
            log: work.join(format!("{}.log", options.identity)),
            port,
            args,
            kubeconfig,
        };
        op.spawn();
        op
    }

    fn spawn(&mut self) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log");
        let err = out.try_clone().expect("operator log");
        let child = crate::support::tied_command(env!("CARGO_BIN_EXE_imagecache"))
            .args(&self.args)
            .env("RUST_LOG", "imagecache=debug,kube=info")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAME", &self.identity)
            .env("POD_NAMESPACE", OPERATOR_NS)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn imagecache operator");
        self.child = Some(child);
    }

    /// Starts it again after `terminate` or `kill`, with the same identity.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where its `/metrics` are.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    /// Whether it says it leads (`imagecache_operator_leader 1`).
    pub async fn leads(&self) -> bool {
        leads(&self.metrics_url()).await
    }

    /// SIGTERM, then waits for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.send_term();
        self.wait_exit()
    }

    /// SIGTERM without waiting.
    pub fn send_term(&self) {
        let pid = self.pid().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits (at most 30 s) for it to exit after a SIGTERM.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = child.try_wait().expect("wait") {
                return exit;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the operator did not stop within 30s of SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no chance to release anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        crate::support::tail(&self.log, 12_000)
    }

    /// Stops it (SIGTERM) and asserts the API server refused it nothing over its whole life:
    /// its RBAC covers every call it makes.
    pub fn finish(mut self) {
        if self.child.is_some() {
            let exit = self.terminate();
            assert!(exit.success(), "operator exit {exit}:\n{}", self.log_tail());
        }
        assert_no_refusals(&self.identity, &self.log());
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- operator {} log (tail) ---\n{}",
                self.identity,
                self.log_tail()
            );
        }
    }
}

/// Whether the operator whose metrics are at `url` says it leads; false when it does not answer.
pub async fn leads(url: &str) -> bool {
    let Ok(resp) = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
    else {
        return false;
    };
    let text = resp.text().await.unwrap_or_default();
    crate::support::metric_sum(&text, "imagecache_operator_leader") == 1.0
}

/// No `403`/Forbidden in an operator's log.
#[track_caller]
pub fn assert_no_refusals(identity: &str, log: &str) {
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            lower.contains("forbidden") || lower.contains(" 403") || lower.contains("code: 403")
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the API server refused operator {identity} ({} times):\n{}",
        refused.len(),
        refused.join("\n")
    );
}

/// A kubeconfig with the cluster of `KUBECONFIG` and a fresh token of the operator's
/// ServiceAccount (valid for two hours; a run is far shorter).
fn write_kubeconfig(work: &Path, identity: &str) -> PathBuf {
    let token = harness::kubectl(&[
        "-n",
        OPERATOR_NS,
        "create",
        "token",
        OPERATOR_SA,
        "--duration",
        "2h",
    ]);
    let cluster: serde_json::Value = serde_json::from_str(&harness::kubectl(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ]))
    .expect("kubeconfig as JSON");
    let server = cluster["clusters"][0]["cluster"]["server"].clone();
    let ca = cluster["clusters"][0]["cluster"]["certificate-authority-data"].clone();
    assert!(server.is_string() && ca.is_string(), "{cluster}");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": OPERATOR_SA, "user": {"token": token.trim()}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": OPERATOR_SA, "namespace": OPERATOR_NS}}],
        "current-context": "operator",
    });
    let path = work.join(format!("{identity}.kubeconfig"));
    fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("kubeconfig");
    path
}
