//! The two ways users install: the real Helm CLI (built from its Go module by scripts/cluster)
//! installs, upgrades and uninstalls the chart; `kubectl apply -f deploy/` and `kubectl delete
//! -f deploy/` do the same with the plain manifests. Both leave nothing behind; what Helm keeps
//! by its own rule (CRDs from the chart's `crds/`) is named and removed as the README says.
//!
//! It removes and reinstalls the CRDs, so it has the cluster to itself.

use std::collections::BTreeSet;
use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};

use crate::harness::{self, WAIT, eventually, helm, kubectl, kubectl_output, path_str};

/// Namespaced and cluster-scoped kinds the chart and `deploy/` create.
const KINDS: &str = "deployments,replicasets,pods,serviceaccounts,roles,rolebindings,services,\
configmaps,secrets,clusterroles,clusterrolebindings";

/// Every object carrying `selector`, in all namespaces and cluster-wide, as `kind/name`.
fn objects(selector: &str) -> BTreeSet<String> {
    let out = kubectl(&["get", KINDS, "-A", "-l", selector, "-o", "name"]);
    out.lines().map(str::to_owned).collect()
}

async fn crds_present(client: &kube::Client) -> Vec<String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await.expect("list CRDs");
    list.items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.ends_with(".imagecache.io"))
        .collect()
}

async fn wait_no_crds(client: &kube::Client) {
    eventually("the CRDs to be gone", WAIT, || async {
        crds_present(client).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: scripts/test runs it"]
async fn helm_and_plain_manifests_install_upgrade_and_leave_nothing() {
    let env = harness::exclusive().await;
    let client = env.client.clone();
    let deploy = harness::root().join("deploy");
    let chart = harness::root().join("charts/imagecache");
    let home = harness::workdir("helm");
    let release = "e2e-helm";
    let ns = format!("e2e-helm-{}", std::process::id());
    let instance = format!("app.kubernetes.io/instance={release}");

    // A clean slate: what the other tests installed from deploy/ goes, CRDs included.
    kubectl(&[
        "delete",
        "-f",
        path_str(&deploy),
        "--ignore-not-found",
        "--wait",
    ]);
    wait_no_crds(&client).await;
    assert!(objects("app.kubernetes.io/part-of=imagecache").is_empty());

    // helm install: the chart's CRDs, then the operator and its RBAC.
    helm(
        home.path(),
        &[
            "install",
            release,
            path_str(&chart),
            "-n",
            &ns,
            "--create-namespace",
            "--set",
            "mirror.enabled=false",
        ],
    );
    harness::wait_crds_established(&client).await;
    let installed = objects(&instance);
    for expected in [
        format!("deployment.apps/{release}-imagecache-operator"),
        format!("serviceaccount/{release}-imagecache-operator"),
        format!("clusterrole.rbac.authorization.k8s.io/{release}-imagecache-operator"),
        format!("clusterrolebinding.rbac.authorization.k8s.io/{release}-imagecache-operator"),
        format!("role.rbac.authorization.k8s.io/{release}-imagecache-operator-leader-election"),
        format!("service/{release}-imagecache-operator-metrics"),
    ] {
        assert!(installed.contains(&expected), "{expected} in {installed:?}");
    }
    // The Deployment controller made its ReplicaSet: the release is live on the control plane.
    eventually("the operator's ReplicaSet", WAIT, || async {
        objects(&instance)
            .iter()
            .any(|o| o.starts_with("replicaset.apps/"))
            .then_some(())
    })
    .await;

    // helm upgrade with changed values: the Deployment and a default ImageCache follow.
    helm(
        home.path(),
        &[
            "upgrade",
            release,
            path_str(&chart),
            "-n",
            &ns,
            "--set",
            "operator.logLevel=debug",
            "--set",
            "mirror.enabled=true",
            "--set",
            "mirror.replicas=2",
            "--set",
            "mirror.storage.emptyDir=true",
            "--set",
            "mirror.nodeMirror.enabled=false",
        ],
    );
    let args = kubectl(&[
        "get",
        "deployment",
        "-n",
        &ns,
        &format!("{release}-imagecache-operator"),
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ]);
    assert!(args.contains("debug"), "{args}");
    let replicas = kubectl(&[
        "get",
        "imagecache",
        "-n",
        &ns,
        &format!("{release}-imagecache-mirror"),
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "2");
    let history = helm(home.path(), &["history", release, "-n", &ns]);
    assert_eq!(history.lines().count(), 3, "two revisions: {history}");

    // helm uninstall: every object of the release goes, cluster-scoped ones included. Without
    // hooks: no kubelet runs the pre-delete hook's Job here (the node suite runs it for real).
    helm(
        home.path(),
        &["uninstall", release, "-n", &ns, "--wait", "--no-hooks"],
    );
    eventually("the release's objects to be gone", WAIT, || async {
        let left = objects(&instance);
        left.is_empty().then_some(())
    })
    .await;
    let ic = kubectl(&["get", "imagecaches", "-n", &ns, "-o", "name"]);
    assert!(ic.trim().is_empty(), "{ic}");
    // Helm never deletes the CRDs of a chart's crds/ (their custom resources would go with
    // them); the README says to delete them with kubectl, as here. The namespace
    // `--create-namespace` made is the user's too.
    assert_eq!(crds_present(&client).await.len(), 3, "Helm keeps the CRDs");
    kubectl(&[
        "delete",
        "-f",
        path_str(&harness::root().join("crds")),
        "--wait",
    ]);
    kubectl(&["delete", "namespace", &ns, "--wait"]);
    wait_no_crds(&client).await;

    // kubectl apply -f deploy/ (the CRDs and the operator), then deploy/mirror/ once the CRDs
    // are served; delete both: nothing left. No warning on the way (an unknown schema format,
    // a deprecated field).
    let apply = kubectl_output(&["apply", "--server-side", "-f", path_str(&deploy)], None);
    let stderr = String::from_utf8_lossy(&apply.stderr);
    assert!(
        apply.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );
    harness::wait_crds_established(&client).await;
    let mirror = deploy.join("mirror");
    kubectl(&["apply", "--server-side", "-f", path_str(&mirror)]);
    let ic = kubectl(&[
        "get",
        "imagecaches",
        "-n",
        harness::OPERATOR_NS,
        "-o",
        "name",
    ]);
    assert_eq!(ic.trim(), "imagecache.imagecache.io/imagecache-mirror");
    let applied = objects("app.kubernetes.io/part-of=imagecache");
    assert!(
        applied.contains("deployment.apps/imagecache-operator")
            && applied.contains("clusterrole.rbac.authorization.k8s.io/imagecache-operator"),
        "{applied:?}"
    );
    // As the README says: the mirror first, gone in the foreground while the operator runs (it
    // releases the CachedImages), then the operator and the CRDs.
    kubectl(&[
        "delete",
        "--cascade=foreground",
        "-f",
        path_str(&mirror),
        "--wait",
    ]);
    kubectl(&["delete", "-f", path_str(&deploy), "--wait"]);
    wait_no_crds(&client).await;
    eventually("deploy/'s objects to be gone", WAIT, || async {
        objects("app.kubernetes.io/part-of=imagecache")
            .is_empty()
            .then_some(())
    })
    .await;
    let ns_left = Command::new("kubectl")
        .args(["get", "namespace", harness::OPERATOR_NS])
        .output()
        .expect("kubectl");
    assert!(
        !ns_left.status.success(),
        "the operator's namespace is gone"
    );

    // Back to what the other tests expect.
    harness::install_deploy_manifests(&client).await;
}
