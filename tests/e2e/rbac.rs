//! The operator's RBAC from `deploy/operator.yaml`, as the real authorizer sees it: exactly the
//! verbs the code uses, and no list or watch of Secrets cluster-wide. (That it is enough, with
//! no 403, is checked on every operator's log by the other tests.)

use std::collections::{BTreeMap, BTreeSet};

use crate::harness::{self, OPERATOR_NS, OPERATOR_SA, kubectl, kubectl_output};

fn subject() -> String {
    format!("system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}")
}

/// `kubectl auth can-i --list` as `user` in `ns`: resource (with its names) → verbs, resource
/// rules only.
fn can_list(user: &str, ns: &str) -> BTreeMap<String, BTreeSet<String>> {
    let out = kubectl(&["auth", "can-i", "--list", "--as", user, "-n", ns]);
    let mut rights = BTreeMap::new();
    for row in harness::rows(&out) {
        let resource = &row["Resources"];
        if resource.is_empty() {
            continue; // a non-resource URL
        }
        let names = &row["Resource Names"];
        let key = if names == "[]" {
            resource.clone()
        } else {
            format!("{resource} {names}")
        };
        let verbs = row["Verbs"]
            .trim_matches(['[', ']'])
            .split_whitespace()
            .map(str::to_owned);
        rights
            .entry(key)
            .or_insert_with(BTreeSet::new)
            .extend(verbs);
    }
    rights
}

/// What the operator may do in `ns` beyond what every ServiceAccount may (discovery, self
/// reviews, public trust bundles): the grants of `deploy/operator.yaml`.
fn rights(ns: &str) -> BTreeMap<String, BTreeSet<String>> {
    let baseline = can_list("system:serviceaccount:default:default", ns);
    let mut rights = can_list(&subject(), ns);
    for (resource, verbs) in baseline {
        if let Some(mine) = rights.get_mut(&resource) {
            mine.retain(|v| !verbs.contains(v));
            if mine.is_empty() {
                rights.remove(&resource);
            }
        }
    }
    rights
}

fn can_i(args: &[&str]) -> bool {
    let subject = subject();
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--as", &subject]);
    let out = kubectl_output(&full, None);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: scripts/test runs it"]
async fn operator_rbac_is_least_privilege() {
    let _env = harness::shared().await;
    let verbs = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| (*s).to_owned()).collect() };
    // What the code calls, per resource (see the operator's module docs).
    let expected: BTreeMap<String, BTreeSet<String>> = [
        (
            "imagecaches.imagecache.io",
            verbs(&["get", "list", "watch"]),
        ),
        ("imagecaches.imagecache.io/status", verbs(&["patch"])),
        ("imagecaches.imagecache.io/finalizers", verbs(&["update"])),
        (
            "prunepolicies.imagecache.io",
            verbs(&["get", "list", "watch"]),
        ),
        ("prunepolicies.imagecache.io/status", verbs(&["patch"])),
        (
            "cachedimages.imagecache.io",
            verbs(&["create", "delete", "list", "patch", "watch"]),
        ),
        ("cachedimages.imagecache.io/status", verbs(&["patch"])),
        (
            "statefulsets.apps",
            verbs(&["create", "list", "patch", "watch"]),
        ),
        (
            "daemonsets.apps",
            verbs(&["create", "delete", "get", "list", "patch", "watch"]),
        ),
        ("services", verbs(&["create", "list", "patch", "watch"])),
        ("configmaps", verbs(&["create", "list", "patch", "watch"])),
        ("secrets", verbs(&["create", "get", "patch"])),
        ("poddisruptionbudgets.policy", verbs(&["create", "patch"])),
        ("pods", verbs(&["list", "watch"])),
        ("events.events.k8s.io", verbs(&["create", "patch"])),
        ("deployments.apps", verbs(&["list"])),
        ("replicasets.apps", verbs(&["list"])),
        ("jobs.batch", verbs(&["list"])),
        ("cronjobs.batch", verbs(&["list"])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // A namespace of some user: the cluster-wide rights only.
    assert_eq!(
        rights("default"),
        expected,
        "the operator's rights in any namespace"
    );
    // Its own namespace adds the Lease: create, and get/update of its own Lease only.
    let mut own = expected.clone();
    own.insert("leases.coordination.k8s.io".into(), verbs(&["create"]));
    own.insert(
        format!("leases.coordination.k8s.io [{}]", harness::LEASE),
        verbs(&["get", "update"]),
    );
    assert_eq!(
        rights(OPERATOR_NS),
        own,
        "the operator's rights in {OPERATOR_NS}"
    );

    // Secrets: never listed or watched, in any namespace.
    assert!(!can_i(&["list", "secrets", "--all-namespaces"]));
    assert!(!can_i(&["watch", "secrets", "--all-namespaces"]));
    assert!(!can_i(&["list", "secrets", "-n", OPERATOR_NS]));
    assert!(
        can_i(&["get", "secrets", "-n", "default"]),
        "it reads its admin token Secrets"
    );
}
