//! The node `scripts/cluster up --node` started, as its facts file describes it: where its
//! containerd listens, its hosts directory, its addresses, and commands run inside its network
//! and mount namespaces (the suite reaches Pod and Service addresses only from there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::ok;

pub struct Node {
    facts: BTreeMap<String, String>,
}

fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

impl Node {
    /// The node of the cluster in `IMAGECACHE_CLUSTER_DIR`, or a failure saying how to start one.
    pub fn load() -> Node {
        let hint =
            "run scripts/test, or: scripts/cluster up --node && eval \"$(scripts/cluster env)\"";
        let dir = std::env::var("IMAGECACHE_CLUSTER_DIR")
            .unwrap_or_else(|_| panic!("IMAGECACHE_CLUSTER_DIR is not set; {hint}"));
        let file = Path::new(&dir).join("node/facts");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!("the cluster has no node ({}: {e}); {hint}", file.display())
        });
        let facts = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Node { facts }
    }

    pub fn fact(&self, key: &str) -> &str {
        self.facts
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the node's facts"))
    }

    pub fn name(&self) -> &str {
        self.fact("NODE_NAME")
    }

    /// The host end of the node's link: the apiserver's and the upstream's address.
    pub fn host_addr(&self) -> &str {
        self.fact("HOST_ADDR")
    }

    /// The node's hosts directory as this machine sees it (the node sees NODE_HOSTS_DIR).
    pub fn hosts_dir(&self) -> PathBuf {
        PathBuf::from(self.fact("HOSTS_DIR"))
    }

    pub fn pause_program(&self) -> PathBuf {
        PathBuf::from(self.fact("PAUSE"))
    }

    /// The pid of the process holding the node's namespaces.
    pub fn holder_pid(&self) -> String {
        let text = std::fs::read_to_string(self.fact("NAMESPACES_PID_FILE")).expect("pid file");
        text.split_whitespace().next().expect("pid").to_owned()
    }

    /// `program` inside the node's network and mount namespaces (dies with the suite).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = crate::support::tied_command("nsenter");
        cmd.args(["--target", &self.holder_pid(), "--net", "--mount", "--"])
            .arg(program);
        cmd
    }

    /// `crictl ARGS` against the node's containerd.
    pub fn crictl(&self, args: &[&str]) -> Output {
        let mut cmd = crate::support::tied_command("crictl");
        cmd.arg("--runtime-endpoint")
            .arg(format!("unix://{}", self.fact("CONTAINERD_SOCKET")))
            .arg("--image-endpoint")
            .arg(format!("unix://{}", self.fact("CONTAINERD_SOCKET")))
            .args(args);
        run(cmd)
    }

    /// `ctr ARGS` against the node's containerd, from this machine (imports, listings).
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = crate::support::tied_command("ctr");
        cmd.arg("--address")
            .arg(self.fact("CONTAINERD_SOCKET"))
            .args(args);
        run(cmd)
    }

    /// `ctr ARGS` inside the node (pulls go out from the node's network, trusting what its
    /// containerd trusts).
    pub fn ctr_inside(&self, args: &[&str]) -> Output {
        let mut cmd = self.command("ctr");
        cmd.env("SSL_CERT_FILE", self.fact("CA_BUNDLE"))
            .arg("--address")
            .arg(self.fact("NODE_CONTAINERD_SOCKET"))
            .args(args);
        run(cmd)
    }

    /// A GET from inside the node (Pod and Service addresses), `None` when it fails.
    pub fn http_get(&self, url: &str) -> Option<String> {
        let mut cmd = self.command("curl");
        cmd.args(["-sf", "--max-time", "10", url]);
        let out = run(cmd);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The body of a GET from inside the node, sent from `source` (one of the node's addresses:
    /// a client the Service's ClientIP affinity tells apart from the node itself).
    pub fn get_from(&self, source: &str, url: &str, accept: &str) -> Vec<u8> {
        let mut cmd = self.command("curl");
        cmd.args(["-sfS", "--max-time", "30", "--interface", source, "-H"])
            .arg(format!("Accept: {accept}"))
            .arg(url);
        let out = run(cmd);
        assert!(
            out.status.success(),
            "GET {url} from {source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Gives the node `addr` (a /32 on its loopback) as a further client source, or takes it
    /// away again (`add: false`).
    pub fn source_address(&self, addr: &str, add: bool) {
        let mut cmd = self.command("ip");
        cmd.args(["addr", if add { "replace" } else { "del" }])
            .arg(format!("{addr}/32"))
            .args(["dev", "lo"]);
        ok("ip addr", &run(cmd));
    }

    /// Image references the node's containerd holds (CRI's view).
    pub fn images(&self) -> Vec<String> {
        let out = ok("crictl images", &self.crictl(&["images", "-o", "json"]));
        let v: serde_json::Value = serde_json::from_str(&out).expect("crictl JSON");
        v["images"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["repoTags"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    }

    /// Content blobs the node's containerd holds.
    pub fn content_digests(&self) -> Vec<String> {
        let out = ok(
            "ctr content ls",
            &self.ctr(&["-n", "k8s.io", "content", "ls", "-q"]),
        );
        out.lines().map(str::to_owned).collect()
    }

    /// The host pid of a running container of a Pod (`crictl inspect`).
    pub fn container_pid(&self, pod: &str, container: &str) -> Option<u32> {
        let id = ok(
            "crictl ps",
            &self.crictl(&[
                "ps",
                "-q",
                "--state",
                "running",
                "--pod",
                &self.pod_id(pod)?,
                "--name",
                container,
            ]),
        );
        let id = id.lines().next()?.trim().to_owned();
        let out = ok("crictl inspect", &self.crictl(&["inspect", &id]));
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["info"]["pid"].as_u64().map(|p| p as u32)
    }

    fn pod_id(&self, pod: &str) -> Option<String> {
        let out = ok(
            "crictl pods",
            &self.crictl(&["pods", "-q", "--name", pod, "--state", "ready"]),
        );
        out.lines().next().map(|l| l.trim().to_owned())
    }
}
