//! The CRDs on the real apiserver: they install from `crds/`, `kubectl explain` reads their
//! schemas, the apiserver refuses bad objects with a message naming the field, and short names
//! and the category resolve as users type them.

use serde_json::{Value, json};

use crate::harness::{self, TestNs, kubectl, kubectl_output};

/// `kubectl create --dry-run=server` of `object`: the apiserver's verdict, nothing stored.
fn server_dry_run(ns: &str, object: &Value) -> Result<(), String> {
    let out = kubectl_output(
        &["create", "--dry-run=server", "-n", ns, "-f", "-"],
        Some(&object.to_string()),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The apiserver refuses `object`, naming `field` and saying `why`.
#[track_caller]
fn assert_refused(ns: &str, object: &Value, field: &str, why: &str) {
    let err = server_dry_run(ns, object).expect_err(&format!("refused: {object}"));
    assert!(
        err.contains(field) && err.contains(why),
        "the refusal names {field} and says {why:?}: {err}"
    );
}

fn cache(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
        "metadata": {"name": name}, "spec": spec})
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "imagecache.io/v1alpha1", "kind": "PrunePolicy",
        "metadata": {"name": name}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: scripts/test runs it"]
async fn crds_install_explain_and_refuse_bad_objects() {
    let env = harness::shared().await;
    let ns = TestNs::create(&env.client, "crds").await;
    let n = ns.name.as_str();

    // crds/ applies onto what deploy/ installed without a change: the two are one source.
    let crds_dir = harness::root().join("crds");
    kubectl(&[
        "apply",
        "--server-side",
        "--field-manager",
        harness::MANAGER,
        "-f",
        harness::path_str(&crds_dir),
    ]);
    let diff = kubectl_output(
        &["diff", "--server-side", "-f", harness::path_str(&crds_dir)],
        None,
    );
    assert_eq!(
        diff.status.code(),
        Some(0),
        "crds/ differs from the installed CRDs:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    harness::wait_crds_established(&env.client).await;

    // kubectl explain reads the published schema.
    let explain = kubectl(&["explain", "imagecache.spec"]);
    for expected in [
        "KIND:       ImageCache",
        "replicas\t<integer>",
        "storage\t<Object>",
        "upstreams\t<[]Object>",
        "Registry pods (each with its own cache volume).",
    ] {
        assert!(explain.contains(expected), "{expected:?} in:\n{explain}");
    }
    let explain = kubectl(&["explain", "prunepolicy.spec.schedule"]);
    assert!(explain.contains("Cron schedule, 5 fields"), "{explain}");
    let explain = kubectl(&["explain", "cachedimage.spec.digest"]);
    assert!(explain.contains("FIELD: digest <string>"), "{explain}");

    // Valid objects pass: the refusals below are about the one bad field.
    let good_cache = cache("main", json!({"storage": {"size": "20Gi"}}));
    server_dry_run(n, &good_cache).expect("a valid ImageCache");
    let good_policy = policy(
        "nightly",
        json!({"cacheRef": {"name": "main"}, "schedule": "30 3 * * 1-5",
            "timeZone": "Europe/Paris", "request": {"unusedFor": "30d"}}),
    );
    server_dry_run(n, &good_policy).expect("a valid PrunePolicy");

    // A bad cron: a minute out of range, a month out of range, a bad step, four fields.
    for (schedule, why) in [
        ("61 * * * *", "schedule"),
        ("0 3 * 13 *", "schedule"),
        ("*/x * * * *", "schedule"),
        ("0 3 * *", "spec.schedule"),
    ] {
        let bad = policy(
            "bad-cron",
            json!({"cacheRef": {"name": "main"}, "schedule": schedule}),
        );
        assert_refused(n, &bad, "spec.schedule", why);
    }
    // A bad quantity (storage and capacity), a bad duration (tag TTL and prune request).
    assert_refused(
        n,
        &cache("bad-size", json!({"storage": {"size": "20GB"}})),
        "spec.storage.size",
        "should match",
    );
    assert_refused(
        n,
        &policy(
            "bad-space",
            json!({"cacheRef": {"name": "main"}, "schedule": "0 3 * * *",
                "request": {"maxUsedSpace": "80 %"}}),
        ),
        "spec.request.maxUsedSpace",
        "should match",
    );
    assert_refused(
        n,
        &cache("bad-ttl", json!({"tagTTL": "5 minutes"})),
        "spec.tagTTL",
        "should match",
    );
    assert_refused(
        n,
        &policy(
            "bad-duration",
            json!({"cacheRef": {"name": "main"}, "schedule": "0 3 * * *",
                "request": {"unusedFor": "30 days"}}),
        ),
        "spec.request.unusedFor",
        "should match",
    );
    // Names the children cannot carry: too long for the StatefulSet's Pods and revision label,
    // or not a DNS label for the Services.
    let long = "a".repeat(53);
    assert_refused(n, &cache(&long, json!({})), "metadata.name", "52");
    assert_refused(
        n,
        &cache("1cache", json!({})),
        "metadata.name",
        "starts with a letter",
    );
    assert_refused(
        n,
        &cache("my.cache", json!({})),
        "metadata.name",
        "DNS label",
    );
    server_dry_run(n, &cache(&"a".repeat(52), json!({}))).expect("52 characters fit");

    // Immutable fields: a change is refused at admission, naming the field.
    kubectl_output(
        &["create", "-n", n, "-f", "-"],
        Some(&good_cache.to_string()),
    );
    kubectl_output(
        &["create", "-n", n, "-f", "-"],
        Some(&good_policy.to_string()),
    );
    let refused_patch = |kind: &str, name: &str, patch: Value| -> String {
        let out = kubectl_output(
            &[
                "patch",
                "-n",
                n,
                kind,
                name,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
            None,
        );
        assert!(!out.status.success(), "{kind} {name} accepted {patch}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused_patch(
        "prunepolicy",
        "nightly",
        json!({"spec": {"cacheRef": {"name": "other"}}}),
    );
    assert!(
        err.contains("spec.cacheRef") && err.contains("cacheRef is immutable"),
        "{err}"
    );
    for change in [
        json!({"spec": {"storage": {"size": "50Gi"}}}),
        json!({"spec": {"storage": {"size": null, "emptyDir": true}}}),
        json!({"spec": {"storage": null}}),
    ] {
        let err = refused_patch("imagecache", "main", change);
        assert!(
            err.contains("spec.storage") && err.contains("cannot be changed"),
            "{err}"
        );
    }
    // What may change does.
    kubectl(&[
        "patch",
        "-n",
        n,
        "imagecache",
        "main",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":2,"tagTTL":"1h"}}"#,
    ]);

    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: scripts/test runs it"]
async fn short_names_and_the_category() {
    let env = harness::shared().await;
    let ns = TestNs::create(&env.client, "names").await;
    let n = ns.name.as_str();
    let objects = [
        cache("main", json!({"storage": {"emptyDir": true}})),
        policy(
            "nightly",
            json!({"cacheRef": {"name": "main"}, "schedule": "0 3 * * *", "suspend": true}),
        ),
        json!({"apiVersion": "imagecache.io/v1alpha1", "kind": "CachedImage",
            "metadata": {"name": "one"},
            "spec": {"cacheRef": {"name": "main"},
                "digest": format!("sha256:{}", "a".repeat(64)),
                "reference": "docker.io/library/alpine:3.20",
                "mediaType": "application/vnd.oci.image.manifest.v1+json"}}),
    ];
    for o in &objects {
        kubectl_output(&["create", "-n", n, "-f", "-"], Some(&o.to_string()));
    }
    let names = |what: &str| -> Vec<String> {
        let mut v: Vec<String> = kubectl(&["get", what, "-n", n, "-o", "name"])
            .lines()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let ic = vec!["imagecache.imagecache.io/main".to_owned()];
    let pp = vec!["prunepolicy.imagecache.io/nightly".to_owned()];
    let cimg = vec!["cachedimage.imagecache.io/one".to_owned()];
    for what in ["imagecache", "imagecaches", "ic"] {
        assert_eq!(names(what), ic, "kubectl get {what}");
    }
    for what in ["prunepolicy", "prunepolicies", "pp"] {
        assert_eq!(names(what), pp, "kubectl get {what}");
    }
    for what in ["cachedimage", "cachedimages", "cimg"] {
        assert_eq!(names(what), cimg, "kubectl get {what}");
    }
    let mut all = [cimg, ic, pp].concat();
    all.sort();
    assert_eq!(names("imagecache-all"), all, "the category lists all three");
    ns.delete().await;
}
