//! What every end-to-end test stands on: the cluster's client, kubectl and helm, the manifests
//! of `deploy/` installed once, namespaces that go away with the test, events, PrunePolicies,
//! and waiting.

use std::future::Future;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use imagecache::crd::{PrunePolicy, PrunePolicyStatus};
use k8s_openapi::api::core::v1::{Event, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Field manager of what the suite applies.
pub const MANAGER: &str = "imagecache-e2e";
/// Namespace, ServiceAccount and Lease of the rendered operator manifests (`deploy/`).
pub const OPERATOR_NS: &str = "imagecache-system";
pub const OPERATOR_SA: &str = "imagecache-operator";
pub const LEASE: &str = "imagecache-operator";
/// The label on every namespace the suite makes; its value is the run (the test process).
pub const NS_LABEL: &str = "e2e.imagecache.io/run";
/// How long the control plane and the operator get to converge.
pub const WAIT: Duration = Duration::from_secs(120);

/// Tests share the cluster (read) unless they reinstall the CRDs (write).
static CLUSTER: RwLock<()> = RwLock::const_new(());

/// The cluster, held shared or exclusively for the length of a test.
pub struct Env {
    pub client: Client,
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _exclusive: Option<RwLockWriteGuard<'static, ()>>,
}

/// The cluster with `deploy/` installed, shared with the other tests.
pub async fn shared() -> Env {
    let guard = CLUSTER.read().await;
    let client = client().await;
    install_deploy_manifests(&client).await;
    Env {
        client,
        _shared: Some(guard),
        _exclusive: None,
    }
}

/// The cluster for this test alone (it removes and reinstalls the CRDs); `deploy/` is not
/// installed for it.
pub async fn exclusive() -> Env {
    let guard = CLUSTER.write().await;
    let client = client().await;
    Env {
        client,
        _shared: None,
        _exclusive: Some(guard),
    }
}

/// A client for the cluster of `KUBECONFIG`, or a failure that says how to get one.
async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hint = "run scripts/test, or: scripts/cluster up && eval \"$(scripts/cluster env)\"";
    let client = Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("no Kubernetes cluster in KUBECONFIG ({e}); {hint}"));
    let version = client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("the cluster in KUBECONFIG does not answer ({e}); {hint}"));
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "37"),
        "the suite runs against the pinned Kubernetes 1.37 of scripts/cluster"
    );
    sweep_stale_namespaces(&client).await;
    client
}

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl ARGS`, which must succeed; its stdout.
#[track_caller]
pub fn kubectl(args: &[&str]) -> String {
    crate::support::ok(
        &format!("kubectl {}", args.join(" ")),
        &kubectl_output(args, None),
    )
}

/// `kubectl ARGS` with `stdin`, whatever its outcome.
pub fn kubectl_output(args: &[&str], stdin: Option<&str>) -> Output {
    run_tool("kubectl", args, stdin)
}

/// A short-lived command (kubectl, helm) with `stdin`; it dies with the suite.
pub fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = crate::support::tied_command(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e} (is scripts/cluster env in effect?)"));
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait for the command")
}

/// `helm ARGS` with its config, cache and data in `home`; must succeed; stdout.
#[track_caller]
pub fn helm(home: &Path, args: &[&str]) -> String {
    let out = crate::support::tied_command("helm")
        .args(args)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run helm (scripts/cluster env puts it on PATH)");
    crate::support::ok(&format!("helm {}", args.join(" ")), &out)
}

/// Polls `f` every 500 ms until it yields `Some`, or fails naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Applies `deploy/crds.yaml` (waiting until every CRD is Established) and `deploy/operator.yaml`
/// (namespace, ServiceAccount, RBAC, Deployment), as `kubectl apply -f deploy/` users do. The
/// Deployment is scaled to zero: the cluster has no node to run it on, so the suite runs the
/// operator itself under that ServiceAccount's token (see `operator`).
pub async fn install_deploy_manifests(client: &Client) {
    let deploy = root().join("deploy");
    for file in ["crds.yaml", "operator.yaml"] {
        kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            MANAGER,
            "-f",
            path_str(&deploy.join(file)),
        ]);
    }
    wait_crds_established(client).await;
    kubectl(&[
        "-n",
        OPERATOR_NS,
        "scale",
        "deployment",
        "imagecache-operator",
        "--replicas=0",
    ]);
}

/// Waits until the three CRDs are Established (served).
pub async fn wait_crds_established(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in imagecache::crd::crds() {
        let name = crd.name_any();
        eventually(&format!("CRD {name} Established"), WAIT, || async {
            let crd = crds.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A namespace of this test, labelled with the run; deleted when the test ends.
pub struct TestNs {
    pub name: String,
    api: Api<Namespace>,
    deleted: bool,
}

impl TestNs {
    /// `e2e-<prefix>-<pid>`: unique per test and run.
    pub async fn create(client: &Client, prefix: &str) -> TestNs {
        let name = format!("e2e-{prefix}-{}", std::process::id());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {NS_LABEL: std::process::id().to_string()}}
        }))
        .expect("namespace");
        api.create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        // The ServiceAccount controller gives it a `default` account, which Pods need.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        eventually("the namespace's default ServiceAccount", WAIT, || async {
            sa.get_opt("default").await.ok().flatten()
        })
        .await;
        TestNs {
            name,
            api,
            deleted: false,
        }
    }

    /// Deletes the namespace and waits until the namespace controller has removed it with
    /// everything in it.
    pub async fn delete(mut self) {
        delete_namespace(&self.api, &self.name).await;
        self.deleted = true;
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // A failed test: start the deletion and do not wait (the next run sweeps what is left).
        let (api, name) = (self.api.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async { api.delete(&name, &DeleteParams::background()).await })
        })
        .join();
    }
}

async fn delete_namespace(api: &Api<Namespace>, name: &str) {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return,
        Err(e) => panic!("delete namespace {name}: {e}"),
    }
    eventually(&format!("namespace {name} to be gone"), WAIT, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Namespaces a killed run left behind (labelled with another run): deleted before this run.
async fn sweep_stale_namespaces(client: &Client) {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let api: Api<Namespace> = Api::all(client.clone());
            let list = api
                .list(&ListParams::default().labels(NS_LABEL))
                .await
                .expect("list namespaces");
            let me = std::process::id().to_string();
            for ns in list.items {
                if ns.labels().get(NS_LABEL) != Some(&me) {
                    let name = ns.name_any();
                    eprintln!("deleting {name} left by an earlier run");
                    release_cached_images(client, &name).await;
                    delete_namespace(&api, &name).await;
                }
            }
        })
        .await;
}

/// Drops the prune finalizer of the CachedImages in `ns`: the operator that would have run it
/// died with its run (the README's way out for a finalizer without an operator).
async fn release_cached_images(client: &Client, ns: &str) {
    let api: Api<imagecache::crd::CachedImage> = Api::namespaced(client.clone(), ns);
    let Ok(list) = api.list(&ListParams::default()).await else {
        return;
    };
    for c in list.items {
        let _ = api
            .patch(
                &c.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
}

/// An event about an object as `kubectl get events` shows it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub type_: String,
    pub reason: String,
    pub note: String,
    /// How many times it happened (a repeated event is one object with a count).
    pub count: i32,
}

/// The events recorded about one object, oldest first.
pub async fn events_for(client: &Client, ns: &str, kind: &str, name: &str) -> Vec<Seen> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name}"
        )))
        .await
        .expect("list events");
    let mut events: Vec<_> = list
        .items
        .into_iter()
        .map(|e| {
            let at = e
                .event_time
                .as_ref()
                .map(|t| t.0)
                .or(e.first_timestamp.as_ref().map(|t| t.0));
            let count = e
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(e.count)
                .unwrap_or(1)
                .max(1);
            let seen = Seen {
                type_: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                note: e.message.unwrap_or_default(),
                count,
            };
            (at, seen)
        })
        .collect();
    events.sort_by_key(|e| e.0);
    events.into_iter().map(|(_, s)| s).collect()
}

/// How many times an event with `reason` happened to the object.
pub async fn event_count(client: &Client, ns: &str, kind: &str, name: &str, reason: &str) -> i32 {
    events_for(client, ns, kind, name)
        .await
        .iter()
        .filter(|e| e.reason == reason)
        .map(|e| e.count)
        .sum()
}

/// Waits until an event with `reason` happened at least `times` times to the object.
pub async fn wait_event(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
    times: i32,
) {
    eventually(
        &format!("{times} {reason} event(s) on {kind} {name}"),
        WAIT,
        || async { (event_count(client, ns, kind, name, reason).await >= times).then_some(()) },
    )
    .await;
}

/// Creates the PrunePolicy `name` with `spec` in `api`'s namespace.
pub async fn create_prune_policy(api: &Api<PrunePolicy>, name: &str, spec: Value) -> PrunePolicy {
    let pp: PrunePolicy = serde_json::from_value(json!({
        "apiVersion": "imagecache.io/v1alpha1", "kind": "PrunePolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("policy");
    api.create(&PostParams::default(), &pp)
        .await
        .expect("create the policy")
}

/// A PrunePolicy's status; `None` while it has none (or the policy is not there).
pub async fn policy_status(api: &Api<PrunePolicy>, name: &str) -> Option<PrunePolicyStatus> {
    api.get(name).await.ok()?.status
}

/// Asks for a manual run: the `imagecache.io/run-now` annotation set to `value`.
pub async fn run_now(api: &Api<PrunePolicy>, name: &str, value: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"imagecache.io/run-now": value}}})),
    )
    .await
    .expect("annotate run-now");
}

/// A directory for one test's files (logs, pulls) under `target/e2e`; kept, and named, when
/// the test fails.
pub struct WorkDir(Option<tempfile::TempDir>);

impl WorkDir {
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("work dir").path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("test files kept in {}", dir.keep().display());
        }
    }
}

pub fn workdir(test: &str) -> WorkDir {
    let base = crate::support::target_dir().join("e2e");
    std::fs::create_dir_all(&base).expect("target/e2e");
    WorkDir(Some(
        tempfile::Builder::new()
            .prefix(&format!("{test}-"))
            .tempdir_in(base)
            .expect("test dir"),
    ))
}

/// `kubectl get` output as header → cell maps, one per row.
pub fn rows(output: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let lines: Vec<&str> = output.lines().collect();
    let Some(header) = lines.first() else {
        return Vec::new();
    };
    // Cells start where their header starts (kubectl pads columns to the header's position).
    let mut starts = Vec::new();
    let mut names = Vec::new();
    let bytes = header.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b' ' && (i == 0 || bytes[i - 1] == b' ') {
            let end = header[i..].find("  ").map_or(header.len(), |e| i + e);
            starts.push(i);
            names.push(header[i..end].trim().to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    lines[1..]
        .iter()
        .map(|line| {
            names
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    let from = starts[k].min(line.len());
                    let to = starts
                        .get(k + 1)
                        .copied()
                        .unwrap_or(line.len())
                        .min(line.len());
                    (name.clone(), line[from..to].trim().to_owned())
                })
                .collect()
        })
        .collect()
}
