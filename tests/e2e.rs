//! End-to-end: the operator against a real kube-apiserver.
//!
//! Runs only with `IMAGECACHE_E2E=1` and a cluster in `KUBECONFIG` (or `~/.kube/config`); it
//! prints why it skips otherwise. A control plane without nodes is enough: nothing here needs a
//! kubelet, a scheduler or kube-controller-manager. The suite stands in for them itself:
//!
//! - it creates the registry Pod `<cache>-0` from the operator's StatefulSet template (what the
//!   StatefulSet controller would do), with the admin port of a registry process it runs on this
//!   machine (`imagecache serve` with the config from the operator's ConfigMap and the token from
//!   its Secret), and patches the Pod's status to Running/Ready with podIP 127.0.0.1 (what the
//!   kubelet would do), and the StatefulSet's status to one ready replica;
//! - the operator runs on this machine too (`imagecache operator`, as its Deployment would), so
//!   it reaches that pod at 127.0.0.1 on the port the Pod declares.
//!
//! The CRDs and the operator's RBAC come from `deploy/` (what `kubectl apply -f deploy/` users
//! get, rendered from the Helm chart); the operator runs impersonating the ServiceAccount those
//! manifests create, so it has exactly their rights. The test's objects live in a fresh
//! namespace, deleted at the end (a bare apiserver has no namespace controller to finish that
//! deletion; nothing depends on it). The CRDs and `imagecache-system` stay installed.

mod support;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imagecache::crd::{CachedImage, ImageCache, PrunePolicy};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::{Distribution, ImageCache as Registry, Platform, gen_image, skopeo::pull_to_dir};

const MANAGER: &str = "imagecache-e2e";
const CACHE: &str = "cache";
const UPSTREAM: &str = "upstream.test";
const WAIT: Duration = Duration::from_secs(120);

/// The cluster, or `None` with the reason printed.
async fn cluster() -> Option<Client> {
    if std::env::var("IMAGECACHE_E2E").as_deref() != Ok("1") {
        eprintln!(
            "skipping the operator end-to-end suite: set IMAGECACHE_E2E=1 and KUBECONFIG to a \
             cluster (a kube-apiserver alone is enough; see README, End-to-end tests)"
        );
        return None;
    }
    match Client::try_default().await {
        Ok(c) => match c.apiserver_version().await {
            Ok(v) => {
                eprintln!("e2e against kube-apiserver {}.{}", v.major, v.minor);
                Some(c)
            }
            Err(e) => panic!("IMAGECACHE_E2E=1 but the cluster does not answer: {e}"),
        },
        Err(e) => panic!("IMAGECACHE_E2E=1 but no usable KUBECONFIG: {e}"),
    }
}

/// Polls `f` every 500 ms until it yields `Some`, or panics with `what` after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
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

/// A child process killed on drop, its log printed when the test failed.
struct Proc {
    name: &'static str,
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log (tail) ---\n{}",
                self.name,
                support::tail(&self.log, 12_000)
            );
        }
    }
}

fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The header of `kubectl get` holds exactly these columns, in order.
#[track_caller]
fn assert_columns(output: &str, columns: &[&str]) {
    let header: Vec<&str> = output
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(header, columns, "kubectl get output:\n{output}");
}

/// Namespace, ServiceAccount and Lease of the rendered operator manifests (`deploy/`).
const OPERATOR_NS: &str = "imagecache-system";
const OPERATOR_SA: &str = "imagecache-operator";
const LEASE: &str = "imagecache-operator";

/// Applies what users apply without Helm: `deploy/crds.yaml` (waiting until every CRD is
/// Established) and `deploy/operator.yaml` (the operator's namespace, ServiceAccount, RBAC and
/// Deployment). The Deployment is scaled to zero: this suite runs the operator itself, under
/// that ServiceAccount's rights (see [`operator_kubeconfig`]).
async fn apply_deploy_manifests(client: &Client) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let crds_file = deploy.join("crds.yaml");
    kubectl(&[
        "apply",
        "--server-side",
        "--field-manager",
        MANAGER,
        "-f",
        crds_file.to_str().unwrap(),
    ]);
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
    let operator_file = deploy.join("operator.yaml");
    kubectl(&[
        "apply",
        "--server-side",
        "--field-manager",
        MANAGER,
        "-f",
        operator_file.to_str().unwrap(),
    ]);
    kubectl(&[
        "-n",
        OPERATOR_NS,
        "scale",
        "deployment",
        "imagecache-operator",
        "--replicas=0",
    ]);
}

/// The current kubeconfig, flattened, with the user impersonating the operator's
/// ServiceAccount: the operator then runs with exactly the rights `deploy/operator.yaml` grants.
fn operator_kubeconfig(dir: &Path) -> std::path::PathBuf {
    let text = kubectl(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ]);
    let mut config: Value = serde_json::from_str(&text).expect("kubeconfig as JSON");
    let user = &mut config["users"][0]["user"];
    assert!(user.is_object(), "the kubeconfig has a user: {text}");
    user["as"] = json!(format!("system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"));
    let path = dir.join("operator-kubeconfig.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}

fn start_operator(ns: &str, dir: &Path, kubeconfig: &Path) -> Proc {
    let log = dir.join("operator.log");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let err = out.try_clone().unwrap();
    let port = support::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_imagecache"))
        .args([
            "operator",
            "--namespace",
            ns,
            "--lease-namespace",
            OPERATOR_NS,
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--min-update-interval", "1s"])
        .env("RUST_LOG", "imagecache=debug,kube=info")
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", "e2e-operator")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn imagecache operator");
    Proc {
        name: "operator",
        child,
        log,
    }
}

/// Plays StatefulSet controller and kubelet for the cache's single replica (see the file doc).
async fn run_registry_pod(client: &Client, ns: &str) -> Registry {
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let sts = eventually("the StatefulSet", WAIT, || async {
        sts_api.get_opt(CACHE).await.ok().flatten()
    })
    .await;
    let config = eventually("the ConfigMap", WAIT, || async {
        cm_api
            .get_opt(&format!("{CACHE}-config"))
            .await
            .ok()
            .flatten()?
            .data?
            .get("config.yaml")
            .cloned()
    })
    .await;
    let token = eventually("the admin token Secret", WAIT, || async {
        let data = secret_api
            .get_opt(&format!("{CACHE}-admin-token"))
            .await
            .ok()
            .flatten()?
            .data?;
        String::from_utf8(data.get("token")?.0.clone()).ok()
    })
    .await;
    assert!(token.len() >= 32, "a real token, not a placeholder");

    // The registry process, with the operator's config but local listeners and paths.
    let config: Value = serde_saphyr::from_str(&config).expect("config.yaml parses");
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let mut builder = Registry::builder();
    for (k, v) in config.as_object().unwrap() {
        match k.as_str() {
            "addr" | "adminAddr" | "imagePath" | "log" => {}
            "adminTokenFile" => {
                builder = builder.set(k, json!(token_file.display().to_string()));
            }
            _ => builder = builder.set(k, v.clone()),
        }
    }
    let registry = builder.start();
    std::mem::forget(token_dir); // the process reads the file at start and on reload

    // The Pod the StatefulSet controller would create, declaring the local admin port.
    let template = sts.spec.template.clone();
    let mut pod_spec = template.spec.clone().unwrap();
    for c in &mut pod_spec.containers {
        for p in c.ports.iter_mut().flatten() {
            let port = match p.name.as_deref() {
                Some("admin") => registry.admin_addr(),
                Some("registry") => registry.addr(),
                _ => continue,
            };
            p.container_port = port.rsplit(':').next().unwrap().parse().unwrap();
        }
    }
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{CACHE}-0")),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "StatefulSet".into(),
                    name: CACHE.into(),
                    uid: sts.uid().unwrap(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                },
            ]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the registry pod");
    // What the kubelet would report once the container runs and its readiness probe passes.
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "hostIP": "127.0.0.1",
        "startTime": now,
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now}
        ],
        "containerStatuses": [{"name": "registry", "ready": true, "restartCount": 0,
            "image": "imagecache", "imageID": "", "started": true,
            "state": {"running": {"startedAt": now}}}]
    }});
    pods.patch_status(
        &format!("{CACHE}-0"),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("patch the pod status");
    let generation = sts.metadata.generation.unwrap_or(1);
    let sts_status = json!({"status": {
        "observedGeneration": generation, "replicas": 1, "readyReplicas": 1,
        "currentReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1
    }});
    sts_api
        .patch_status(CACHE, &PatchParams::default(), &Patch::Merge(&sts_status))
        .await
        .expect("patch the StatefulSet status");
    registry
}

/// Digests of the manifests the registry process holds (its `/cmd/manifest/list`).
async fn manifests_held(registry: &Registry, token: &str) -> Vec<String> {
    let resp = support::client()
        .get(format!(
            "{}/cmd/manifest/list?format=json&count=-1",
            registry.admin_url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("manifest list");
    assert!(resp.status().is_success());
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    v.as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["digest"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_end_to_end() {
    let Some(client) = cluster().await else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let ns = format!("imagecache-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .expect("create the test namespace");
    struct Cleanup(Api<Namespace>, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let (api, ns) = (self.0.clone(), self.1.clone());
            // Best effort; the namespace goes with everything in it.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(async { api.delete(&ns, &DeleteParams::background()).await })
            })
            .join();
        }
    }
    let _cleanup = Cleanup(namespaces.clone(), ns.clone());

    // 1. The rendered manifests install: CRDs, and the operator's RBAC.
    apply_deploy_manifests(&client).await;
    // A bare apiserver has no ServiceAccount controller to create `default`, which the
    // ServiceAccount admission plugin needs for the registry Pod.
    let _ = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await;

    // 2. An upstream holding three images.
    let upstream = Distribution::start();
    let mut digests = BTreeMap::new();
    for (i, name) in ["keep", "drop", "gone"].iter().enumerate() {
        let img = gen_image(
            &work.path().join(name),
            100 + i as u64,
            &[2048, 4096],
            &Platform::linux_amd64(),
        );
        upstream.push(&img.source_ref(), &format!("e2e/{name}:1"));
        digests.insert(*name, img.digest().to_string());
    }

    // 3. The operator, and an ImageCache through it.
    let kubeconfig = operator_kubeconfig(work.path());
    let _operator = start_operator(&ns, work.path(), &kubeconfig);
    let caches: Api<ImageCache> = Api::namespaced(client.clone(), &ns);
    let ic: ImageCache = serde_json::from_value(json!({
        "apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
        "metadata": {"name": CACHE},
        "spec": {
            "replicas": 1,
            "storage": {"emptyDir": true},
            "defaultRegistry": UPSTREAM,
            "upstreams": [{"name": UPSTREAM, "endpoint": upstream.url()}]
        }
    }))
    .unwrap();
    caches
        .create(&PostParams::default(), &ic)
        .await
        .expect("create the ImageCache");

    // 4. Its children, owned by it.
    let uid = eventually("the ImageCache uid", WAIT, || async {
        caches.get(CACHE).await.ok()?.uid()
    })
    .await;
    let owned_by_cache = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true))
    };
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for name in [CACHE.to_string(), format!("{CACHE}-headless")] {
        let svc = eventually(&format!("Service {name}"), WAIT, || async {
            services.get_opt(&name).await.ok().flatten()
        })
        .await;
        assert!(
            owned_by_cache(&svc.metadata),
            "{name} is owned by the cache"
        );
    }
    let registry = run_registry_pod(&client, &ns).await;
    for (kind, meta) in [
        (
            "StatefulSet",
            Api::<StatefulSet>::namespaced(client.clone(), &ns)
                .get(CACHE)
                .await
                .unwrap()
                .metadata,
        ),
        (
            "ConfigMap",
            Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get(&format!("{CACHE}-config"))
                .await
                .unwrap()
                .metadata,
        ),
    ] {
        assert!(owned_by_cache(&meta), "the {kind} is owned by the cache");
    }
    let token = String::from_utf8(
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get(&format!("{CACHE}-admin-token"))
            .await
            .unwrap()
            .data
            .unwrap()["token"]
            .0
            .clone(),
    )
    .unwrap();

    // 5. Pulls through the cache; a truthful status.
    for name in ["keep", "drop", "gone"] {
        let out = work.path().join(format!("pulled-{name}"));
        pull_to_dir(
            &registry.docker_ref(&format!("{UPSTREAM}/e2e/{name}:1")),
            &out,
        )
        .expect("pull through the cache");
    }
    let status = eventually("a Ready ImageCache counting 3 images", WAIT, || async {
        let s = caches.get(CACHE).await.ok()?.status?;
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && s.images == 3).then_some(s)
    })
    .await;
    assert_eq!(status.ready_replicas, 1);
    assert!(status.bytes_used > 0, "{status:?}");
    assert_eq!(status.pods.len(), 1);
    assert_eq!(status.pods[0].name, format!("{CACHE}-0"));
    assert!(
        status
            .endpoint
            .as_deref()
            .is_some_and(|e| e.contains(CACHE)),
        "{status:?}"
    );
    let table = kubectl(&["get", "imagecaches", "-n", &ns]);
    assert_columns(
        &table,
        &["NAME", "READY", "IMAGES", "SIZE", "ENDPOINT", "AGE"],
    );
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with(CACHE) && row.contains("True") && row.contains(" 3 "),
        "{table}"
    );

    // 6. CachedImage objects appear, one per manifest, naming the pod.
    let cimgs: Api<CachedImage> = Api::namespaced(client.clone(), &ns);
    let held = eventually("three CachedImages", WAIT, || async {
        let list = cimgs.list(&Default::default()).await.ok()?;
        (list.items.len() == 3).then_some(list.items)
    })
    .await;
    for c in &held {
        assert_eq!(c.spec.cache_ref.name, CACHE);
        assert_eq!(c.spec.pods, vec![format!("{CACHE}-0")]);
        assert!(digests.values().any(|d| *d == c.spec.digest.to_string()));
    }
    let table = kubectl(&["get", "cachedimages", "-n", &ns]);
    assert_columns(
        &table,
        &[
            "NAME",
            "REFERENCE",
            "TAGS",
            "SIZE",
            "PODS",
            "LAST-PULLED",
            "AGE",
        ],
    );

    // 7. Deleting a CachedImage prunes that image from the cache (finalizer first).
    let gone = held
        .iter()
        .find(|c| c.spec.digest.to_string() == digests["gone"])
        .unwrap()
        .name_any();
    cimgs
        .delete(&gone, &DeleteParams::default())
        .await
        .expect("delete a CachedImage");
    eventually("the CachedImage to be gone", WAIT, || async {
        cimgs.get_opt(&gone).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        !manifests_held(&registry, &token)
            .await
            .contains(&digests["gone"]),
        "deleting the CachedImage pruned the image"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        cimgs.get_opt(&gone).await.unwrap().is_none(),
        "the sync does not bring a pruned image back"
    );

    // 8. A PrunePolicy on a schedule, with an in-use image (a Deployment scaled to zero).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "scaled-to-zero"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "z"}},
            "template": {"metadata": {"labels": {"app": "z"}},
                "spec": {"containers": [{"name": "c", "image": format!("{UPSTREAM}/e2e/keep:1")}]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let policies: Api<PrunePolicy> = Api::namespaced(client.clone(), &ns);
    let pp: PrunePolicy = serde_json::from_value(json!({
        "apiVersion": "imagecache.io/v1alpha1", "kind": "PrunePolicy",
        "metadata": {"name": "every-minute"},
        "spec": {
            "cacheRef": {"name": CACHE},
            "schedule": "* * * * *",
            "request": {"patterns": ["e2e/(keep|drop)"], "minAge": "0", "count": -1,
                "maxDeletionRatio": 1.0}
        }
    }))
    .unwrap();
    policies.create(&PostParams::default(), &pp).await.unwrap();
    let ran = eventually(
        "a scheduled PrunePolicy run",
        Duration::from_secs(150),
        || async {
            let s = policies.get("every-minute").await.ok()?.status?;
            s.last_run
                .clone()
                .filter(|r| r.completion_time.is_some())
                .map(|r| (s, r))
        },
    )
    .await;
    let (pp_status, run) = ran;
    assert_eq!(run.result.as_deref(), Some("Succeeded"), "{run:?}");
    assert_eq!(
        run.totals.manifests, 1,
        "only the unused image goes: {run:?}"
    );
    assert_eq!(run.totals.protected.get("inUse"), Some(&1), "{run:?}");
    assert!(pp_status.last_schedule_time.is_some() && pp_status.next_schedule_time.is_some());
    let held_now = manifests_held(&registry, &token).await;
    assert!(
        held_now.contains(&digests["keep"]),
        "the in-use image survives"
    );
    assert!(
        !held_now.contains(&digests["drop"]),
        "the unused image is pruned"
    );
    let table = kubectl(&["get", "prunepolicies", "-n", &ns]);
    assert_columns(
        &table,
        &[
            "NAME",
            "CACHE",
            "SCHEDULE",
            "DRY-RUN",
            "LAST RUN",
            "PRUNED",
            "RECLAIMED",
            "NEXT",
        ],
    );
    eventually("the pruned image's CachedImage to go", WAIT, || async {
        let list = cimgs.list(&Default::default()).await.ok()?;
        let left: Vec<String> = list
            .items
            .iter()
            .map(|c| c.spec.digest.to_string())
            .collect();
        (left == vec![digests["keep"].clone()]).then_some(())
    })
    .await;

    // 9. One leader (this suite's operator; the Deployment is scaled to zero), holding the Lease.
    let lease = Api::<Lease>::namespaced(client.clone(), OPERATOR_NS)
        .get(LEASE)
        .await
        .expect("the leader Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("e2e-operator")
    );
}
