//! The Helm chart `charts/imagecache`, rendered and linted by the real Helm v4 engine (PyPI's
//! `helm-python-sdk`, driven by `scripts/render-chart`), and the packaging drift checks: the
//! chart's CRDs against `crds/`, `deploy/` against the chart, the Dockerfile's invariants.
//!
//! The Helm tests skip, saying why, only when python3 or `helm_python` is missing;
//! `scripts/test` installs them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imagecache::crd::ImageCache;
use imagecache::operator::desired;
use serde_json::Value;

const RELEASE: &str = "imagecache";
const NAMESPACE: &str = "imagecache-system";

/// The non-default set: two operator replicas under leader election, a ServiceMonitor, no
/// default mirror, another image.
const CUSTOM: &[&str] = &[
    "operator.replicas=2",
    "operator.leaderElection.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.labels.release=prom",
    "mirror.enabled=false",
    "image.repository=registry.example.com/mirror/imagecache",
    "image.tag=v9.9.9",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/render-chart ARGS`. Fails when python3 or its helm_python is missing (scripts/test
/// installs both): an unrendered chart is not a checked one.
fn driver(args: &[&str]) -> Output {
    let out = Command::new("python3")
        .arg(root().join("scripts/render-chart"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); scripts/test installs it"));
    assert_ne!(
        out.status.code(),
        Some(3),
        "{}; scripts/test installs it",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

fn set_args(sets: &[&str]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
        .collect()
}

/// The rendered release objects for `--set` expressions (must succeed); hooks are left out.
fn render(sets: &[&str]) -> Vec<Value> {
    render_all(sets)
        .into_iter()
        .filter(|o| !is_hook(o))
        .collect()
}

/// Whether Helm runs the object as a hook rather than installing it with the release.
fn is_hook(obj: &Value) -> bool {
    obj["metadata"]["annotations"].get("helm.sh/hook").is_some()
}

/// Every rendered object, hooks included.
fn render_all(sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["render".to_owned(), "--json".to_owned()];
    args.extend(set_args(sets));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = driver(&args);
    assert!(
        out.status.success(),
        "render {sets:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("driver prints JSON");
    docs.into_iter().map(|d| d["object"].clone()).collect()
}

/// The refusal message for values that must not render.
fn refused(sets: &[&str]) -> String {
    let mut args = vec!["render".to_owned(), "--json".to_owned()];
    args.extend(set_args(sets));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = driver(&args);
    assert!(
        !out.status.success(),
        "{sets:?} rendered but the schema should refuse it"
    );
    assert!(out.stdout.is_empty(), "a refused render printed objects");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn kinds(objs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objs
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    kinds
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn all<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn env_value<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// `version:` of Chart.yaml (a top-level scalar).
fn chart_version() -> String {
    let chart = std::fs::read_to_string(root().join("charts/imagecache/Chart.yaml")).unwrap();
    chart
        .lines()
        .find_map(|l| l.strip_prefix("version:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("Chart.yaml has a version")
}

fn lint(sets: &[&str]) -> Value {
    let mut args = vec!["lint".to_owned()];
    args.extend(set_args(sets));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = driver(&args);
    assert!(
        out.status.success(),
        "helm lint (strict) {sets:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("lint report is JSON")
}

#[test]
fn strict_lint_passes_for_default_and_custom_values() {
    for sets in [&[][..], CUSTOM] {
        let report = lint(sets);
        assert_eq!(report["total_charts_linted"], 1);
        let findings: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 2)
            .collect();
        assert!(findings.is_empty(), "lint warnings/errors: {findings:?}");
    }
    // Lint runs the schema too: a typo is an error finding, not a pass.
    let out = driver(&["lint", "--set", "operator.replica=2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'replica' not allowed"));
}

#[test]
fn default_values_render_the_operator_and_a_working_mirror() {
    let objs = render(&[]);
    assert_eq!(
        kinds(&objs),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Deployment",
            "ImageCache",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    // Install order: the ServiceAccount and RBAC before the Deployment, the ImageCache last.
    let order: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    let pos = |k: &str| order.iter().position(|x| *x == k).unwrap();
    assert!(pos("ServiceAccount") < pos("ClusterRole") && pos("RoleBinding") < pos("Deployment"));
    assert_eq!(order.last(), Some(&"ImageCache"));

    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["metadata"]["namespace"], NAMESPACE);
    assert_eq!(deploy["spec"]["replicas"], 1);
    let c = container(deploy);
    let image = format!(
        "ghcr.io/imagecache/imagecache:{}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        c["image"],
        image.as_str(),
        "appVersion follows the crate version"
    );
    assert_eq!(
        strings(&c["args"]),
        [
            "operator",
            "--listen=0.0.0.0:8080",
            "--leader-elect=true",
            "--lease-name=imagecache-operator",
            "--lease-namespace=imagecache-system",
            "--min-update-interval=5m",
            "--log-level=info",
            "--log-format=json",
        ]
    );
    assert_eq!(
        env_value(c, "IMAGECACHE_REGISTRY_IMAGE")["value"],
        image.as_str()
    );
    assert_eq!(
        env_value(c, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_value(c, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(c["ports"][0]["name"], "http-metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "imagecache-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], desired::RUN_AS_USER);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);

    // The metrics Service selects exactly the operator's pods.
    let svc = one(&objs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http-metrics");
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // The default mirror: four upstreams, node mirroring on, and a spec the CRD type accepts
    // field for field (a misspelt key would vanish in the round trip).
    let ic_json = one(&objs, "ImageCache");
    let spec = &ic_json["spec"];
    let upstreams: Vec<(&str, &str)> = spec["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap(), u["endpoint"].as_str().unwrap()))
        .collect();
    assert_eq!(
        upstreams,
        [
            ("docker.io", "https://registry-1.docker.io"),
            ("registry.k8s.io", "https://registry.k8s.io"),
            ("quay.io", "https://quay.io"),
            ("ghcr.io", "https://ghcr.io"),
        ]
    );
    assert_eq!(spec["nodeMirror"]["enabled"], true);
    assert_eq!(spec["nodeMirror"]["runtime"], "containerd");
    let ic: ImageCache = serde_json::from_value(ic_json.clone()).expect("a valid ImageCache");
    let again = serde_json::to_value(&ic.spec).unwrap();
    assert_subset(spec, &again, "spec");

    // The cache's pods must not be selected together with the operator's (and vice versa).
    let registry_selector = desired::selector_labels(&ic).unwrap();
    let operator_pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert!(
        !registry_selector
            .iter()
            .all(|(k, v)| operator_pod_labels[k] == v.as_str()),
        "the mirror's registry selector {registry_selector:?} selects the operator's pods"
    );
}

/// Every key of `rendered` is in `typed` with the same value, or is a default the type omits.
fn assert_subset(rendered: &Value, typed: &Value, at: &str) {
    match (rendered, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (k, v) in r {
                match t.get(k) {
                    Some(tv) => assert_subset(v, tv, &format!("{at}.{k}")),
                    None => assert!(
                        matches!(v, Value::Bool(false) | Value::Null)
                            || v.as_array().is_some_and(Vec::is_empty),
                        "{at}.{k} is not a field of the ImageCache type (value {v})"
                    ),
                }
            }
        }
        (Value::Array(r), Value::Array(t)) => {
            assert_eq!(r.len(), t.len(), "{at}");
            for (i, (rv, tv)) in r.iter().zip(t).enumerate() {
                assert_subset(rv, tv, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(rendered, typed, "{at}"),
    }
}

#[test]
fn custom_values_render_two_elected_replicas_a_service_monitor_and_no_mirror() {
    let objs = render(CUSTOM);
    assert!(all(&objs, "ImageCache").is_empty(), "mirror.enabled=false");
    let deploy = one(&objs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let c = container(deploy);
    let image = "registry.example.com/mirror/imagecache:v9.9.9";
    assert_eq!(c["image"], image);
    assert_eq!(env_value(c, "IMAGECACHE_REGISTRY_IMAGE")["value"], image);
    assert!(strings(&c["args"]).contains(&"--leader-elect=true".to_owned()));
    assert_eq!(
        deploy["metadata"]["labels"]["app.kubernetes.io/version"],
        "v9.9.9"
    );
    one(&objs, "Role");

    let sm = one(&objs, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let svc = one(&objs, "Service");
    let svc_labels = &svc["metadata"]["labels"];
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc_labels[k], v,
            "the ServiceMonitor selects the metrics Service"
        );
    }
}

#[test]
fn without_leader_election_or_with_a_watch_namespace_the_rights_shrink() {
    let objs = render(&[
        "operator.leaderElection.enabled=false",
        "operator.watchNamespace=team-a",
    ]);
    let args = strings(&container(one(&objs, "Deployment"))["args"]);
    assert!(args.contains(&"--leader-elect=false".to_owned()));
    assert!(args.contains(&"--namespace=team-a".to_owned()));
    assert!(!args.iter().any(|a| a.starts_with("--lease")), "{args:?}");
    assert!(all(&objs, "Role").is_empty(), "no Lease, no Lease Role");

    // Read-write rights only in the watched namespace; the in-use reader stays cluster-wide.
    let rb = one(&objs, "RoleBinding");
    assert_eq!(rb["metadata"]["namespace"], "team-a");
    assert_eq!(rb["roleRef"]["name"], "imagecache-operator");
    let crb = one(&objs, "ClusterRoleBinding");
    assert_eq!(crb["roleRef"]["name"], "imagecache-operator-inuse-reader");
}

#[test]
fn bad_values_are_refused_by_the_schema() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["operator.replica=3"], &["'replica' not allowed"]),
        (
            &["operator.replicas=abc"],
            &["/operator/replicas", "want integer"],
        ),
        (
            &["operator.replicas=-1"],
            &["/operator/replicas", "minimum"],
        ),
        (
            &[
                "operator.replicas=2",
                "operator.leaderElection.enabled=false",
            ],
            &["/operator/replicas", "maximum"],
        ),
        (
            &["mirror.nodeMirror.runtime=docker"],
            &["/mirror/nodeMirror/runtime"],
        ),
        (
            &["mirror.service.nodePort=30080"],
            &["/mirror/service/type", "NodePort"],
        ),
        (&["mirror.tagTTL=soon"], &["/mirror/tagTTL"]),
        (&["surprise=1"], &["'surprise' not allowed"]),
    ];
    for (sets, wants) in cases {
        let message = refused(sets);
        for want in *wants {
            assert!(
                message.contains(want),
                "{sets:?}: refusal should mention {want:?}: {message}"
            );
        }
    }
}

type Grant = (String, String, String);

/// A grant with the object names it is limited to (none: every object).
type NamedGrant = (String, String, String, Vec<String>);

/// A Role's grants with their `resourceNames`.
fn named_grants(role: &Value) -> BTreeSet<NamedGrant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for (g, r, v) in grants(&Value::Array(vec![rule.clone()])) {
            out.insert((g, r, v, strings(&rule["resourceNames"])));
        }
    }
    out
}

fn named_set(grants: &[(&str, &str, &str, Vec<String>)]) -> BTreeSet<NamedGrant> {
    grants
        .iter()
        .map(|(g, r, v, n)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned(), n.clone()))
        .collect()
}

fn grants(rules: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn expect(out: &mut BTreeSet<Grant>, group: &str, resources: &[&str], verbs: &[&str]) {
    for r in resources {
        for v in verbs {
            out.insert((group.to_owned(), (*r).to_owned(), (*v).to_owned()));
        }
    }
}

#[test]
fn cluster_roles_grant_exactly_what_the_operator_uses() {
    let objs = render(&[]);
    // The verbs the code calls (tests/e2e/rbac.rs checks the same on a real apiserver).
    let ro = ["get", "list", "watch"];
    let applied = ["list", "watch", "create", "patch"];
    let mut want = BTreeSet::new();
    expect(
        &mut want,
        "imagecache.io",
        &["imagecaches", "prunepolicies"],
        &ro,
    );
    expect(
        &mut want,
        "imagecache.io",
        &[
            "imagecaches/status",
            "prunepolicies/status",
            "cachedimages/status",
        ],
        &["patch"],
    );
    expect(
        &mut want,
        "imagecache.io",
        &["cachedimages"],
        &["list", "watch", "create", "patch", "delete"],
    );
    expect(
        &mut want,
        "imagecache.io",
        &["imagecaches/finalizers"],
        &["update"],
    );
    expect(&mut want, "apps", &["statefulsets"], &applied);
    expect(
        &mut want,
        "apps",
        &["daemonsets"],
        &["get", "list", "watch", "create", "patch", "delete"],
    );
    expect(&mut want, "", &["services", "configmaps"], &applied);
    expect(&mut want, "", &["secrets"], &["get", "create", "patch"]);
    expect(
        &mut want,
        "policy",
        &["poddisruptionbudgets"],
        &["create", "patch"],
    );
    expect(&mut want, "", &["pods"], &["list", "watch"]);
    expect(
        &mut want,
        "events.k8s.io",
        &["events"],
        &["create", "patch"],
    );
    expect(
        &mut want,
        "apps",
        &["deployments", "replicasets", "daemonsets", "statefulsets"],
        &["list"],
    );
    expect(&mut want, "batch", &["jobs", "cronjobs"], &["list"]);

    let mut have = BTreeSet::new();
    for role in all(&objs, "ClusterRole") {
        let rules = &role["rules"];
        for rule in rules.as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !strings(&rule[field]).iter().any(|s| s.contains('*')),
                    "wildcard in {}: {rule}",
                    role["metadata"]["name"]
                );
            }
            assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
        }
        have.extend(grants(rules));
    }
    let extra: Vec<&Grant> = have.difference(&want).collect();
    let missing: Vec<&Grant> = want.difference(&have).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "ClusterRoles: extra {extra:?}, missing {missing:?}"
    );

    // The Lease: get/update on the one Lease by name, create (not nameable) in the release
    // namespace only.
    let role = one(&objs, "Role");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let lease = named_grants(role);
    let named = vec!["imagecache-operator".to_owned()];
    let lease_want = named_set(&[
        ("coordination.k8s.io", "leases", "create", vec![]),
        ("coordination.k8s.io", "leases", "get", named.clone()),
        ("coordination.k8s.io", "leases", "update", named),
    ]);
    assert_eq!(lease, lease_want);

    // Every binding names the chart's ServiceAccount in the release namespace.
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for b in all(&objs, kind) {
            assert_eq!(b["subjects"].as_array().unwrap().len(), 1);
            assert_eq!(b["subjects"][0]["kind"], "ServiceAccount");
            assert_eq!(b["subjects"][0]["name"], "imagecache-operator");
            assert_eq!(b["subjects"][0]["namespace"], NAMESPACE);
        }
    }
}

#[test]
fn uninstall_deletes_the_mirror_first_with_a_hook_of_least_rights() {
    let objs = render_all(&[]);
    let hooks: Vec<Value> = objs.iter().filter(|o| is_hook(o)).cloned().collect();
    assert_eq!(
        kinds(&hooks),
        ["Job", "Role", "RoleBinding", "ServiceAccount"]
    );
    for h in &hooks {
        let a = &h["metadata"]["annotations"];
        assert_eq!(a["helm.sh/hook"], "pre-delete", "{h}");
        assert_eq!(
            a["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded",
            "{h}"
        );
        assert_eq!(h["metadata"]["namespace"], NAMESPACE);
        assert_eq!(h["metadata"]["name"], "imagecache-operator-teardown");
    }
    // The Job runs after its ServiceAccount and rights exist.
    let weight = |kind: &str| {
        let h = hooks.iter().find(|h| h["kind"] == kind).unwrap();
        h["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .unwrap()
            .parse::<i32>()
            .unwrap()
    };
    assert!(weight("ServiceAccount") < weight("Job") && weight("RoleBinding") < weight("Job"));
    let job = hooks.iter().find(|h| h["kind"] == "Job").unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "imagecache-operator-teardown");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(
        strings(&c["args"]),
        [
            "operator",
            "teardown",
            "--namespace=imagecache-system",
            "--timeout=2m",
            "imagecache-mirror"
        ]
    );
    assert_eq!(c["image"], container(one(&objs, "Deployment"))["image"]);
    // Exactly what `operator teardown` calls: get and delete of the one mirror by name, and the
    // list of CachedImages it names when the mirror does not go.
    let role = hooks.iter().find(|h| h["kind"] == "Role").unwrap();
    let mirror = vec!["imagecache-mirror".to_owned()];
    let want = named_set(&[
        ("imagecache.io", "imagecaches", "get", mirror.clone()),
        ("imagecache.io", "imagecaches", "delete", mirror),
        ("imagecache.io", "cachedimages", "list", vec![]),
    ]);
    assert_eq!(named_grants(role), want);
    let binding = hooks.iter().find(|h| h["kind"] == "RoleBinding").unwrap();
    assert_eq!(
        binding["subjects"][0]["name"],
        "imagecache-operator-teardown"
    );
    assert_eq!(binding["roleRef"]["name"], "imagecache-operator-teardown");

    // No mirror, or the hook turned off: no hook.
    for sets in [
        &["mirror.enabled=false"][..],
        &["mirror.teardownHook=false"],
    ] {
        let objs = render_all(sets);
        assert!(!objs.iter().any(is_hook), "{sets:?}");
    }
}

#[test]
fn every_object_carries_the_recommended_labels() {
    let chart = format!("imagecache-{}", chart_version());
    for (sets, version) in [(&[][..], env!("CARGO_PKG_VERSION")), (CUSTOM, "v9.9.9")] {
        let objs = render_all(sets);
        let want = BTreeMap::from([
            ("app.kubernetes.io/name", "imagecache"),
            ("app.kubernetes.io/instance", RELEASE),
            ("app.kubernetes.io/version", version),
            ("app.kubernetes.io/managed-by", "Helm"),
            ("helm.sh/chart", chart.as_str()),
        ]);
        let mut labelled: Vec<(String, &Value)> = objs
            .iter()
            .map(|o| {
                (
                    format!("{} {}", o["kind"], o["metadata"]["name"]),
                    &o["metadata"]["labels"],
                )
            })
            .collect();
        let deploy = one(&objs, "Deployment");
        labelled.push((
            "the operator's pod template".to_owned(),
            &deploy["spec"]["template"]["metadata"]["labels"],
        ));
        for (what, labels) in labelled {
            for (k, v) in &want {
                assert_eq!(labels[*k], *v, "{what}: label {k} in {labels}");
            }
        }
    }
}

fn yaml_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

#[test]
fn chart_crds_are_byte_identical_to_crds() {
    const REFRESH: &str = "refresh with `scripts/render-chart crds --write` (copies crds/*.yaml)";
    let src = root().join("crds");
    let chart = root().join("charts/imagecache/crds");
    let names = yaml_names(&src);
    assert_eq!(names.len(), 3);
    assert_eq!(yaml_names(&chart), names, "{REFRESH}");
    for name in &names {
        let a = std::fs::read(src.join(name)).unwrap();
        let b = std::fs::read(chart.join(name)).unwrap();
        assert!(
            a == b,
            "charts/imagecache/crds/{name} differs from crds/{name}; {REFRESH}"
        );
    }
}

#[test]
fn deploy_manifests_are_what_the_chart_renders() {
    const REGENERATE: &str = "regenerate with `scripts/render-chart deploy --write`";
    let out = driver(&["deploy", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["crds.yaml", "mirror/mirror.yaml", "operator.yaml"]
    );
    let dir = root().join("deploy");
    let mut on_disk = yaml_names(&dir);
    on_disk.extend(
        yaml_names(&dir.join("mirror"))
            .into_iter()
            .map(|n| format!("mirror/{n}")),
    );
    on_disk.sort();
    assert_eq!(
        on_disk,
        files.keys().cloned().collect::<Vec<_>>(),
        "deploy/ holds other files than the chart renders; {REGENERATE}"
    );
    for (name, want) in &files {
        let have = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            &have == want,
            "deploy/{name} differs from the chart's rendering; {REGENERATE}"
        );
    }
    // Spot checks of content: every CRD, the operator without a mirror, the mirror alone.
    for crd in yaml_names(&root().join("crds")) {
        assert!(
            files["crds.yaml"].contains(&format!("# Source: imagecache/crds/{crd}\n")),
            "{crd}"
        );
    }
    assert!(files["operator.yaml"].contains("kind: Namespace\n"));
    assert!(files["operator.yaml"].contains("kind: Deployment\n"));
    assert!(!files["operator.yaml"].contains("kind: ImageCache\n"));
    let mirror = &files["mirror/mirror.yaml"];
    assert_eq!(mirror.matches("\nkind: ").count(), 1);
    assert!(mirror.contains("kind: ImageCache\n"));
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_one_entrypoint() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {} FROM lines", froms.len());
    assert!(
        lines[froms[0]].ends_with(" AS build"),
        "{}",
        lines[froms[0]]
    );
    assert!(text.contains("cargo build --release --locked"));

    let last = &lines[*froms.last().unwrap()..];
    let user = last
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert_eq!(
        uid.parse::<i64>().ok(),
        Some(desired::RUN_AS_USER),
        "USER {user}: numeric and the uid the chart and the registry pods run as"
    );
    let entrypoints: Vec<&&str> = last
        .iter()
        .filter(|l| l.starts_with("ENTRYPOINT "))
        .collect();
    assert_eq!(entrypoints.len(), 1);
    assert_eq!(
        *entrypoints[0],
        r#"ENTRYPOINT ["/usr/local/bin/imagecache"]"#
    );
    // Registry pods run `command: [imagecache]`: the binary must be on the image's PATH.
    assert!(
        last.iter().any(
            |l| l.starts_with("COPY --from=build") && l.ends_with(" /usr/local/bin/imagecache")
        )
    );
    // The build context is only what the build needs.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert_eq!(ignore.lines().find(|l| !l.starts_with('#')), Some("*"));
}
