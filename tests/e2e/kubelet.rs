//! The kubelet's part for the registry Pods of one namespace, until the test cluster has a real
//! node: the StatefulSet controller creates the Pods; this runs them and reports their status.
//!
//! For each registry Pod it
//! - gives it an address of its own in 127.0.0.0/8 (its "Pod IP"; every container port binds
//!   there, as in a Pod's network namespace, and nothing leaves loopback);
//! - materialises its volumes under a root directory: ConfigMap and Secret volumes (items,
//!   `subPath`), projected volumes, emptyDirs, and a directory per volume claim that outlives
//!   the Pod as a PersistentVolume would. Without a mount namespace, the mount paths in the
//!   container's arguments and in the files of ConfigMap volumes are rewritten to those
//!   directories, and `0.0.0.0` listeners to the Pod IP;
//! - runs the container's command (`imagecache serve --config ...`) with this build's binary;
//! - probes `readinessProbe` with its period and failure threshold and reports `Ready` from it;
//! - restarts the container when it exits (backoff 10 s doubling, as the kubelet's) and counts
//!   the restarts;
//! - kills it when its Pod is deleted or replaced;
//! - stands in for cluster DNS: each container runs in a mount namespace of its own whose
//!   `/etc/hosts` is a file this kubelet keeps current with the addresses of the ready Pods
//!   each headless Service of the namespace selects (`<service>.<namespace>.svc` and
//!   `...svc.cluster.local`), as CoreDNS answers them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, Volume};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The registry Pods the operator's StatefulSets create.
const REGISTRY_PODS: &str =
    "app.kubernetes.io/component=registry,app.kubernetes.io/managed-by=imagecache-operator";
const TICK: Duration = Duration::from_millis(500);
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The stand-in kubelet of one namespace; stops (and kills what it runs) on drop.
pub struct Kubelet {
    state: Arc<Mutex<BTreeMap<String, RunningPod>>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// One Pod this kubelet runs.
struct RunningPod {
    uid: String,
    ip: String,
    root: PathBuf,
    /// The file bind-mounted over the container's `/etc/hosts` (cluster DNS).
    hosts: PathBuf,
    args: Vec<String>,
    container: String,
    image: String,
    child: Option<Child>,
    started_at: String,
    restarts: i32,
    /// When the exited container is started again.
    restart_at: Option<Instant>,
    backoff: Duration,
    last_exit: Option<(i32, String)>,
    ready: bool,
    failures: i32,
    next_probe: Instant,
    period: Duration,
    failure_threshold: i32,
    admin_port: i32,
    /// What the Pod's status says now, to patch only changes.
    reported: Option<Value>,
}

impl Kubelet {
    /// Starts running the registry Pods of `ns`; files go under `work`.
    pub fn start(client: &Client, ns: &str, work: &Path) -> Kubelet {
        let state = Arc::new(Mutex::new(BTreeMap::new()));
        let cancel = CancellationToken::new();
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let task = tokio::spawn(run(
            pods,
            client.clone(),
            ns.to_owned(),
            work.join("kubelet"),
            state.clone(),
            cancel.clone(),
        ));
        Kubelet {
            state,
            cancel,
            task: Some(task),
        }
    }

    /// The Pod's address, once it runs.
    pub fn pod_ip(&self, pod: &str) -> Option<String> {
        self.lock().get(pod).map(|p| p.ip.clone())
    }

    /// `IP:8080` of a Pod's registry listener.
    pub fn registry_addr(&self, pod: &str) -> String {
        format!(
            "{}:{}",
            self.pod_ip(pod).unwrap_or_else(|| panic!("{pod} runs")),
            imagecache::operator::desired::REGISTRY_PORT
        )
    }

    /// `http://IP:8081` of a Pod's admin listener.
    pub fn admin_url(&self, pod: &str) -> String {
        let state = self.lock();
        let p = state.get(pod).unwrap_or_else(|| panic!("{pod} runs"));
        format!("http://{}:{}", p.ip, p.admin_port)
    }

    /// The container's process id while it runs.
    pub fn pid(&self, pod: &str) -> Option<u32> {
        self.lock()
            .get(pod)
            .and_then(|p| p.child.as_ref().map(Child::id))
    }

    /// The container's restart count.
    pub fn restarts(&self, pod: &str) -> i32 {
        self.lock().get(pod).map_or(0, |p| p.restarts)
    }

    /// SIGKILLs the container's process, as a crash would; the kubelet notices and restarts it.
    pub fn kill_container(&self, pod: &str) {
        let mut state = self.lock();
        let p = state.get_mut(pod).unwrap_or_else(|| panic!("{pod} runs"));
        if let Some(child) = p.child.as_mut() {
            let _ = child.kill();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RunningPod>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let mut state = self.lock();
        for (name, mut pod) in std::mem::take(&mut *state) {
            stop(&mut pod);
            if std::thread::panicking() {
                let log = crate::support::tail(&pod.root.join("container.log"), 6000);
                eprintln!("--- {name} container log (tail) ---\n{log}");
            }
        }
    }
}

fn stop(pod: &mut RunningPod) {
    if let Some(mut child) = pod.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

async fn run(
    pods: Api<Pod>,
    client: Client,
    ns: String,
    work: PathBuf,
    state: Arc<Mutex<BTreeMap<String, RunningPod>>>,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        if let Err(e) = publish_dns(&client, &ns, &work).await {
            eprintln!("kubelet stand-in ({ns}): {e}");
        }
        if let Err(e) = sync(&pods, &client, &ns, &work, &state).await {
            eprintln!("kubelet stand-in ({ns}): {e}");
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// The `/etc/hosts` every container of this kubelet sees.
fn hosts_file(work: &Path) -> PathBuf {
    work.join("hosts")
}

/// Cluster DNS for the headless Services of `ns`: the addresses of the ready Pods each one
/// selects, written to the containers' `/etc/hosts` (in place, so the bind mounts see it) when
/// they change. (The EndpointSlices of this cluster list none of these Pods: they run on no
/// Node, as it has none; so the stand-in applies the rule itself: selected, Ready, not
/// terminating, with an IP.)
async fn publish_dns(client: &Client, ns: &str, work: &Path) -> Result<(), String> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut lines = vec!["127.0.0.1 localhost".to_owned()];
    for service in services
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("list services: {e}"))?
        .items
    {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        if spec.cluster_ip.as_deref() != Some("None") {
            continue;
        }
        let labels = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let name = service.name_any();
        for pod in pods
            .list(&ListParams::default().labels(&labels))
            .await
            .map_err(|e| format!("list pods of {name}: {e}"))?
            .items
        {
            let status = pod.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let ip = status.and_then(|s| s.pod_ip.as_deref()).unwrap_or("");
            if ready && !ip.is_empty() && pod.metadata.deletion_timestamp.is_none() {
                lines.push(format!(
                    "{ip} {name}.{ns}.svc {name}.{ns}.svc.cluster.local"
                ));
            }
        }
    }
    lines[1..].sort();
    let text = lines.join("\n") + "\n";
    let path = hosts_file(work);
    if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        fs::create_dir_all(work).map_err(|e| e.to_string())?;
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// One round: start new Pods, stop gone ones, restart exited containers, probe, report.
async fn sync(
    pods: &Api<Pod>,
    client: &Client,
    ns: &str,
    work: &Path,
    state: &Mutex<BTreeMap<String, RunningPod>>,
) -> Result<(), String> {
    let list = pods
        .list(&ListParams::default().labels(REGISTRY_PODS))
        .await
        .map_err(|e| format!("list pods: {e}"))?;
    let live: BTreeMap<String, Pod> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect();

    // Gone or replaced Pods: their containers stop.
    {
        let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
        guard.retain(|name, running| {
            let keep = live
                .get(name)
                .is_some_and(|p| p.uid().as_deref() == Some(running.uid.as_str()));
            if !keep {
                stop(running);
            }
            keep
        });
    }
    for (name, pod) in &live {
        let known = state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name);
        if !known {
            let running = admit(client, ns, work, pod).await?;
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), running);
        }
    }

    // Containers: restart, probe; then the status of each Pod.
    let names: Vec<String> = live.keys().cloned().collect();
    for name in names {
        let status = {
            let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = guard.get_mut(&name) else {
                continue;
            };
            tend(p);
            let status = pod_status(p);
            if p.reported.as_ref() == Some(&status) {
                None
            } else {
                Some((status, p.admin_port, p.ip.clone()))
            }
        };
        let Some((status, _, _)) = status else {
            continue;
        };
        pods.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(&json!({ "status": status })),
        )
        .await
        .map_err(|e| format!("patch status of {name}: {e}"))?;
        if let Some(p) = state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&name)
        {
            p.reported = Some(status);
        }
    }
    // Probes ask over HTTP: outside the lock.
    let due: Vec<(String, String)> = {
        let guard = state.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .iter()
            .filter(|(_, p)| p.child.is_some() && Instant::now() >= p.next_probe)
            .map(|(n, p)| {
                (
                    n.clone(),
                    format!("http://{}:{}/readyz", p.ip, p.admin_port),
                )
            })
            .collect()
    };
    for (name, url) in due {
        let ok = probe(&url).await;
        let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = guard.get_mut(&name) {
            p.next_probe = Instant::now() + p.period;
            if ok {
                p.failures = 0;
                p.ready = true;
            } else {
                p.failures += 1;
                if p.failures >= p.failure_threshold {
                    p.ready = false;
                }
            }
        }
    }
    Ok(())
}

async fn probe(url: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("http client");
    matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
}

/// Restarts an exited container when its backoff has passed; notices one that just exited.
fn tend(p: &mut RunningPod) {
    if let Some(child) = p.child.as_mut()
        && let Ok(Some(exit)) = child.try_wait()
    {
        p.child = None;
        p.ready = false;
        p.failures = 0;
        let code = exit.code().unwrap_or(137);
        p.last_exit = Some((code, if code == 0 { "Completed" } else { "Error" }.into()));
        p.restart_at = Some(Instant::now() + p.backoff);
        p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
    }
    if p.child.is_none() && p.restart_at.is_some_and(|at| Instant::now() >= at) {
        p.restart_at = None;
        p.restarts += 1;
        p.child = Some(spawn(&p.root, &p.hosts, &p.args));
        p.started_at = now();
        p.next_probe = Instant::now();
    }
}

/// The Pod's status as the kubelet reports it.
fn pod_status(p: &RunningPod) -> Value {
    let ready = if p.ready && p.child.is_some() {
        "True"
    } else {
        "False"
    };
    let state = match (&p.child, &p.last_exit) {
        (Some(_), _) => json!({"running": {"startedAt": p.started_at}}),
        (None, Some((code, reason))) => {
            json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off restarting failed container {} (exit {code}: {reason})", p.container)}})
        }
        (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let last_state = match &p.last_exit {
        Some((code, reason)) => json!({"terminated": {"exitCode": code, "reason": reason}}),
        None => json!({}),
    };
    json!({
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": p.ip,
        "podIPs": [{"ip": p.ip}],
        "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": ready},
            {"type": "Ready", "status": ready},
        ],
        "containerStatuses": [{
            "name": p.container,
            "image": p.image,
            "imageID": "",
            "containerID": format!("e2e://{}", p.uid),
            "ready": ready == "True",
            "started": p.child.is_some(),
            "restartCount": p.restarts,
            "state": state,
            "lastState": last_state,
        }],
    })
}

/// Takes a new Pod: its address, its volumes, its container started.
async fn admit(client: &Client, ns: &str, work: &Path, pod: &Pod) -> Result<RunningPod, String> {
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    let container = spec.containers.first().ok_or("pod without containers")?;
    let ip = next_pod_ip();
    let root = work.join(format!("{name}-{uid}"));
    fs::create_dir_all(&root).map_err(|e| e.to_string())?;

    // Mount paths → directories or files here, longest path first for the rewriting.
    let volumes: BTreeMap<&str, &Volume> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let mut config_files: Vec<PathBuf> = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .get(m.name.as_str())
            .ok_or_else(|| format!("mount {} names no volume", m.name))?;
        let host = root
            .join("mounts")
            .join(m.mount_path.trim_start_matches('/'));
        let files = volume_files(client, ns, volume).await?;
        match (&files, m.sub_path.as_deref()) {
            (Some(files), Some(sub)) => {
                let content = files
                    .get(sub)
                    .ok_or_else(|| format!("volume {} has no {sub}", m.name))?;
                write_file(&host, content)?;
                if volume.config_map.is_some() {
                    config_files.push(host.clone());
                }
            }
            (Some(files), None) => {
                for (path, content) in files {
                    write_file(&host.join(path), content)?;
                    if volume.config_map.is_some() {
                        config_files.push(host.join(path));
                    }
                }
            }
            (None, _) => {
                // A directory: an emptyDir of this Pod, or the claim's own directory.
                let dir = match &volume.persistent_volume_claim {
                    Some(claim) => work.join("claims").join(&claim.claim_name),
                    None => host.clone(),
                };
                fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                if dir != host {
                    mounts.push((m.mount_path.clone(), dir));
                    continue;
                }
            }
        }
        mounts.push((m.mount_path.clone(), host));
    }
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let rewrite = |text: &str| rewrite(text, &ip, &mounts);
    for file in &config_files {
        let text = fs::read_to_string(file).map_err(|e| e.to_string())?;
        fs::write(file, rewrite(&text)).map_err(|e| e.to_string())?;
    }
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| rewrite(a))
        .collect();
    let command = container.command.clone().unwrap_or_default();
    if command != ["imagecache"] {
        return Err(format!(
            "{name}: the stand-in runs only imagecache containers, not {command:?}"
        ));
    }
    let probe = container.readiness_probe.clone().unwrap_or_default();
    let admin_port = probe
        .http_get
        .as_ref()
        .and_then(|h| match &h.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => Some(*p),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(named) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(named))
                .map(|p| p.container_port),
        })
        .ok_or("the readiness probe names no admin port")?;
    let hosts = hosts_file(work);
    if !hosts.exists() {
        write_file(&hosts, b"127.0.0.1 localhost\n")?;
    }
    let child = spawn(&root, &hosts, &args);
    Ok(RunningPod {
        uid,
        ip,
        root,
        hosts,
        args,
        container: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        child: Some(child),
        started_at: now(),
        restarts: 0,
        restart_at: None,
        backoff: BACKOFF_START,
        last_exit: None,
        ready: false,
        failures: 0,
        next_probe: Instant::now(),
        period: Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64),
        failure_threshold: probe.failure_threshold.unwrap_or(3),
        admin_port,
        reported: None,
    })
}

/// `text` as the process sees it without a mount namespace: every mount path that starts a
/// token becomes its directory here, in one pass (a directory here may itself contain a mount
/// path, such as `/tmp`), and `0.0.0.0:` listeners bind the Pod IP.
fn rewrite(text: &str, ip: &str, mounts: &[(String, PathBuf)]) -> String {
    let text = text.replace("0.0.0.0:", &format!("{ip}:"));
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    let mut at_boundary = true;
    while let Some(c) = rest.chars().next() {
        let hit = at_boundary
            .then(|| {
                mounts
                    .iter()
                    .find(|(path, _)| rest.starts_with(path.as_str()))
            })
            .flatten();
        if let Some((path, host)) = hit {
            out.push_str(&host.display().to_string());
            rest = &rest[path.len()..];
            at_boundary = false;
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
        at_boundary = c.is_whitespace() || matches!(c, '"' | '\'' | '=' | ':' | ',');
    }
    out
}

/// The files of a ConfigMap, Secret or projected volume (relative path → content); `None` for
/// a directory volume (emptyDir, claim).
async fn volume_files(
    client: &Client,
    ns: &str,
    volume: &Volume,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let mut files = BTreeMap::new();
    if let Some(cm) = &volume.config_map {
        let data = config_map_data(client, ns, &cm.name).await?;
        add_items(&mut files, &data, cm.items.as_deref());
    } else if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let data = secret_data(client, ns, &name).await?;
        add_items(&mut files, &data, secret.items.as_deref());
    } else if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(s) = &source.secret {
                let data = secret_data(client, ns, &s.name).await?;
                add_items(&mut files, &data, s.items.as_deref());
            }
            if let Some(c) = &source.config_map {
                let data = config_map_data(client, ns, &c.name).await?;
                add_items(&mut files, &data, c.items.as_deref());
            }
        }
    } else {
        return Ok(None);
    }
    Ok(Some(files))
}

fn add_items(
    files: &mut BTreeMap<String, Vec<u8>>,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) {
    match items {
        Some(items) => {
            for item in items {
                if let Some(v) = data.get(&item.key) {
                    files.insert(item.path.clone(), v.clone());
                }
            }
        }
        None => files.extend(data.clone()),
    }
}

async fn config_map_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("ConfigMap {name}: {e}"))?;
    Ok(cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect())
}

async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("Secret {name}: {e}"))?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

fn write_file(path: &Path, content: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))
}

/// Starts the container's process in a mount namespace of its own where `hosts` is its
/// `/etc/hosts`; its output goes to `container.log` in the Pod's root.
fn spawn(root: &Path, hosts: &Path, args: &[String]) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("container.log"))
        .expect("container log");
    let err = log.try_clone().expect("container log");
    crate::support::tied_command("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(hosts)
        .arg(env!("CARGO_BIN_EXE_imagecache"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .expect("start the registry container")
}

/// Pod IPs: 127.<run>.<n/250>.<n%250+2>, unique in this test process and unlikely to meet
/// another run's.
fn next_pod_ip() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let run = 100 + std::process::id() % 150;
    format!("127.{run}.{}.{}", n / 250, n % 250 + 2)
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}
