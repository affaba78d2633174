//! What the apiserver refuses when the committed CRDs (`crds/*.yaml`) are applied: the OpenAPI
//! schema and the CEL rules, judged offline by `support/crd_validator.rs` (pruning, defaulting,
//! schema, then every `x-kubernetes-validations` rule, with `oldSelf` on updates).
//!
//! Every refusal test names the one field and the one check (schema keyword or CEL rule
//! message) that refuses, and sits next to a valid counterpart that is accepted, so no test passes
//! because everything (or nothing) is refused.

#[path = "support/crd_validator.rs"]
mod crd_validator;

use crd_validator::{By, Crd, Verdict};
use imagecache::crd::{CachedImage, ImageCache, PrunePolicy};
use serde_json::{Value, json};

const DIGEST_A: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const DIGEST_B: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("test YAML")
}

/// `object` with the JSON pointer `at` set to `value` (missing parents created as objects).
fn with(mut object: Value, at: &str, value: Value) -> Value {
    let mut node = &mut object;
    let parts: Vec<&str> = at.split('/').skip(1).collect();
    let (last, parents) = parts.split_last().expect("a pointer");
    for part in parents {
        node = match node {
            Value::Array(items) => &mut items[part.parse::<usize>().expect("an index")],
            Value::Object(map) => map.entry(*part).or_insert_with(|| json!({})),
            other => panic!("{at}: {other} has no children"),
        };
    }
    match node {
        Value::Array(items) => items[last.parse::<usize>().expect("an index")] = value,
        Value::Object(map) => {
            map.insert((*last).to_owned(), value);
        }
        other => panic!("{at}: {other} has no children"),
    }
    object
}

#[track_caller]
fn accepted(v: &Verdict) {
    assert!(
        v.refusals.is_empty(),
        "expected the object to be accepted, refused with {:#?}",
        v.refusals
    );
}

/// Refused by exactly one schema keyword at exactly one field.
#[track_caller]
fn refused_by_schema(v: &Verdict, field: &str, keyword: &str) {
    let got: Vec<_> = v.refusals.iter().map(|r| (&r.field, &r.by)).collect();
    assert_eq!(
        got,
        [(&field.to_owned(), &By::Schema(keyword.to_owned()))],
        "expected only schema `{keyword}` at {field}; got {:#?}",
        v.refusals
    );
}

/// Refused by exactly one CEL rule (known by its message) at exactly one field.
#[track_caller]
fn refused_by_cel(v: &Verdict, field: &str, message: &str) {
    assert_eq!(
        v.refusals.len(),
        1,
        "expected one refusal (CEL at {field}); got {:#?}",
        v.refusals
    );
    let r = &v.refusals[0];
    assert!(
        matches!(r.by, By::Cel(_)),
        "expected a CEL rule; got {r:#?}"
    );
    assert_eq!((r.field.as_str(), r.message.as_str()), (field, message));
}

// ---------------------------------------------------------------------------------------------
// PrunePolicy

fn prune_policies() -> Crd {
    Crd::load("prunepolicies.imagecache.io.yaml")
}

/// A nightly prune as the design describes it: least recently pulled images first, keep the
/// latest three of each repository, never anything younger than an hour or in use.
fn nightly() -> Value {
    yaml(
        r#"
apiVersion: imagecache.io/v1alpha1
kind: PrunePolicy
metadata: {name: nightly, namespace: registry}
spec:
  cacheRef: {name: main}
  schedule: "0 3 * * *"
  timeZone: Europe/Paris
  dryRun: true
  request:
    unusedFor: 30d
    patterns: ['^docker\.io/library/']
    keepPatterns: ['/release-']
    labels: ['team=web']
    untagged: true
    mostRecentlyPulled: 3
    minAge: 1h
    pinned: ['/pause[:@]']
    maxUsedSpace: 80%
    minFreeSpace: 10Gi
    count: 50
    maxDeletionRatio: 0.5
"#,
    )
}

#[test]
fn prune_policy_example_is_accepted_and_reads_back() {
    let v = prune_policies().create(&nightly());
    accepted(&v);
    assert!(v.pruned.is_empty(), "{:?}", v.pruned);
    let pp: PrunePolicy = serde_json::from_value(v.stored).expect("the operator reads it");
    assert_eq!(pp.spec.schedule, "0 3 * * *");

    // The smallest policy: everything else has a default.
    let minimal = yaml("spec: {cacheRef: {name: main}, schedule: '*/30 * * * *'}");
    let v = prune_policies().create(&minimal);
    accepted(&v);
    assert_eq!(
        v.stored["spec"]["request"],
        json!({}),
        "request defaults to {{}}"
    );
    serde_json::from_value::<PrunePolicy>(with(v.stored, "/metadata", json!({"name": "x"})))
        .expect("the operator reads it");
}

const FIVE_FIELDS: &str =
    "schedule must have exactly 5 fields: minute hour day-of-month month day-of-week";

#[test]
fn cron_with_four_fields_is_refused() {
    let crd = prune_policies();
    for four in ["*/5 0 1 *", "0  3  *  JAN"] {
        let v = crd.create(&with(nightly(), "/spec/schedule", json!(four)));
        refused_by_cel(&v, "spec.schedule", FIVE_FIELDS);
    }
    // Too short for any 5-field expression: the length bound refuses it as well.
    let v = crd.create(&with(nightly(), "/spec/schedule", json!("0 3 * *")));
    let by: Vec<_> = v
        .refusals
        .iter()
        .map(|r| (r.field.as_str(), &r.by))
        .collect();
    assert!(
        by.contains(&("spec.schedule", &By::Schema("minLength".into()))),
        "{by:?}"
    );
    assert!(
        v.refusals.iter().any(|r| r.message == FIVE_FIELDS),
        "{:#?}",
        v.refusals
    );
}

#[test]
fn cron_with_six_fields_is_refused() {
    let crd = prune_policies();
    for six in ["0 0 3 * * MON", "*/10 * * * * *"] {
        let v = crd.create(&with(nightly(), "/spec/schedule", json!(six)));
        refused_by_cel(&v, "spec.schedule", FIVE_FIELDS);
    }
}

#[test]
fn five_field_crons_are_accepted() {
    let crd = prune_policies();
    for five in [
        "* * * * *",
        "*/15 * * * 1-5",
        "0 0 1 JAN MON",
        "30 2 1,15 * *",
    ] {
        accepted(&crd.create(&with(nightly(), "/spec/schedule", json!(five))));
        // ...and the operator can run what the apiserver lets through.
        imagecache::schedule::Schedule::cron(five, Some("Europe/Paris"))
            .unwrap_or_else(|e| panic!("{five}: {e}"));
    }
}

const CRON_VALUES: &str = "schedule has a field out of range or malformed: minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT; each field *, a value, a range a-b, a step */n or a-b/n, or a list of these";

#[test]
fn cron_fields_out_of_range_are_refused_and_the_rule_agrees_with_the_parser() {
    let crd = prune_policies();
    for good in [
        "59 23 31 12 6",
        "0 3 * * 7",
        "0-30/5 1-23/2 1-31 1-12 0-7",
        "0 0 1 jan,jul sun-sat",
        "0 0 L * *",
        "0 0 15W * *",
        "0 0 ? * 5L",
        "0 0 ? * 1#2",
        "*/15 10-20/5 * * *",
        "00 03 01 01 *",
    ] {
        accepted(&crd.create(&with(nightly(), "/spec/schedule", json!(good))));
        imagecache::schedule::Schedule::cron(good, None).unwrap_or_else(|e| {
            panic!("the apiserver lets {good:?} through, the operator refuses it: {e}")
        });
    }
    for bad in [
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * 0 *",
        "* * * * 8",
        "*/x * * * *",
        "1- * * * *",
        "* * * FOO *",
        "L * * * *",
        "5/15 * * * *",
        "* * * * 1W",
        "* * 1#2 * *",
    ] {
        let v = crd.create(&with(nightly(), "/spec/schedule", json!(bad)));
        refused_by_cel(&v, "spec.schedule", CRON_VALUES);
        assert!(
            imagecache::schedule::Schedule::cron(bad, None).is_err(),
            "the apiserver refuses {bad:?}, which the operator would run"
        );
    }
    // Stricter than the parser, which reads an empty list item as nothing.
    let v = crd.create(&with(nightly(), "/spec/schedule", json!("1,,2 * * * *")));
    refused_by_cel(&v, "spec.schedule", CRON_VALUES);
}

#[test]
fn cron_with_foreign_characters_is_refused_by_the_pattern() {
    let crd = prune_policies();
    let v = crd.create(&with(
        nightly(),
        "/spec/schedule",
        json!("0 3 * * 1;reboot"),
    ));
    // The pattern refuses it, and so does the rule on the fields' values.
    let by: Vec<_> = v
        .refusals
        .iter()
        .map(|r| (r.field.as_str(), &r.by))
        .collect();
    assert_eq!(by.len(), 2, "{:#?}", v.refusals);
    assert_eq!(by[0], ("spec.schedule", &By::Schema("pattern".into())));
    assert_eq!(v.refusals[1].message, CRON_VALUES);
    let v = crd.create(&with(nightly(), "/spec/schedule", json!(3)));
    refused_by_schema(&v, "spec.schedule", "type");
}

#[test]
fn time_zone_of_a_bad_shape_is_refused() {
    let crd = prune_policies();
    for bad in [
        "Europe/ Paris",
        "../../etc/passwd",
        "/etc/localtime",
        "Europe//Paris",
        "UTC+01:00",
    ] {
        let v = crd.create(&with(nightly(), "/spec/timeZone", json!(bad)));
        refused_by_schema(&v, "spec.timeZone", "pattern");
    }
    let v = crd.create(&with(nightly(), "/spec/timeZone", json!("")));
    let by: Vec<_> = v
        .refusals
        .iter()
        .map(|r| (r.field.as_str(), &r.by))
        .collect();
    assert_eq!(
        by,
        [
            ("spec.timeZone", &By::Schema("minLength".into())),
            ("spec.timeZone", &By::Schema("pattern".into()))
        ]
    );
    for good in [
        "UTC",
        "Europe/Paris",
        "Etc/GMT+1",
        "America/Argentina/Buenos_Aires",
    ] {
        accepted(&crd.create(&with(nightly(), "/spec/timeZone", json!(good))));
        imagecache::schedule::Schedule::cron("0 3 * * *", Some(good))
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    // The shape is all a schema can check: an unknown zone of the right shape is the
    // controller's to report.
    accepted(&crd.create(&with(
        nightly(),
        "/spec/timeZone",
        json!("Mars/Olympus_Mons"),
    )));
}

#[test]
fn cache_ref_cannot_change_on_update() {
    let crd = prune_policies();
    let moved = with(nightly(), "/spec/cacheRef/name", json!("other"));
    // A transition rule: a new policy may name any cache...
    accepted(&crd.create(&moved));
    // ...but an existing one cannot move to another.
    let v = crd.update(&nightly(), &moved);
    refused_by_cel(&v, "spec.cacheRef", "cacheRef is immutable");
    // Other fields change freely.
    let rescheduled = with(nightly(), "/spec/schedule", json!("0 4 * * *"));
    accepted(&crd.update(&nightly(), &rescheduled));
}

#[test]
fn bad_durations_are_refused() {
    let crd = prune_policies();
    for (field, bad) in [
        ("unusedFor", "3 weeks"),
        ("unusedFor", "3w"),
        ("olderThan", "-1d"),
        ("pulledWithin", "1.5h"),
        ("minAge", "1h "),
    ] {
        let v = crd.create(&with(
            nightly(),
            &format!("/spec/request/{field}"),
            json!(bad),
        ));
        refused_by_schema(&v, &format!("spec.request.{field}"), "pattern");
    }
    for good in ["21d", "1h30m", "500ms", "0"] {
        accepted(&crd.create(&with(nightly(), "/spec/request/unusedFor", json!(good))));
    }
}

#[test]
fn bad_quantities_and_percentages_are_refused() {
    let crd = prune_policies();
    for (field, bad) in [
        ("maxUsedSpace", "10GB"),
        ("maxUsedSpace", "80 %"),
        ("maxUsedSpace", "-5Gi"),
        ("minFreeSpace", "10 Gi"),
        ("minFreeSpace", "lots"),
    ] {
        let v = crd.create(&with(
            nightly(),
            &format!("/spec/request/{field}"),
            json!(bad),
        ));
        refused_by_schema(&v, &format!("spec.request.{field}"), "pattern");
    }
    for good in ["50Gi", "80%", "12.5%", "1.5Ti", "10G", "1073741824"] {
        accepted(&crd.create(&with(nightly(), "/spec/request/maxUsedSpace", json!(good))));
    }
}

#[test]
fn limits_out_of_range_are_refused() {
    let crd = prune_policies();
    let v = crd.create(&with(
        nightly(),
        "/spec/request/maxDeletionRatio",
        json!(1.5),
    ));
    refused_by_schema(&v, "spec.request.maxDeletionRatio", "maximum");
    let v = crd.create(&with(nightly(), "/spec/request/count", json!(-2)));
    refused_by_schema(&v, "spec.request.count", "minimum");
    let v = crd.create(&with(
        nightly(),
        "/spec/request/digests",
        json!(["sha256:abc"]),
    ));
    refused_by_schema(&v, "spec.request.digests[0]", "pattern");
    for (field, good) in [
        ("maxDeletionRatio", json!(1)),
        ("count", json!(-1)),
        ("digests", json!([DIGEST_A])),
    ] {
        let pp = with(nightly(), &format!("/spec/request/{field}"), good);
        accepted(&crd.create(&pp));
    }
}

#[test]
fn a_bad_regex_passes_the_schema() {
    // Kubernetes CEL has no function that says whether a string is a valid regex, so the
    // apiserver cannot refuse `([a-z`: the PrunePolicy controller compiles the patterns and
    // reports a bad one in an `InvalidSpec` condition instead (and runs no prune).
    let bad = "([a-z";
    assert!(
        regex::Regex::new(bad).is_err(),
        "the example must really be a bad regex"
    );
    let crd = prune_policies();
    for field in ["patterns", "keepPatterns", "pinned"] {
        let v = crd.create(&with(
            nightly(),
            &format!("/spec/request/{field}"),
            json!([bad]),
        ));
        accepted(&v);
        assert_eq!(
            v.stored["spec"]["request"][field],
            json!([bad]),
            "stored as written"
        );
    }
}

#[test]
fn unknown_fields_are_pruned_not_refused() {
    let crd = prune_policies();
    let typo = with(nightly(), "/spec/request/unusedFro", json!("30d"));
    let v = crd.create(&typo);
    accepted(&v);
    assert_eq!(v.pruned, ["spec.request.unusedFro"]);
    assert!(v.stored["spec"]["request"].get("unusedFro").is_none());
    // A required field lost to a typo is still refused.
    let mut no_schedule = nightly();
    let spec = no_schedule["spec"].as_object_mut().unwrap();
    let schedule = spec.remove("schedule").unwrap();
    spec.insert("schedul".into(), schedule);
    let v = crd.create(&no_schedule);
    assert_eq!(v.pruned, ["spec.schedul"]);
    refused_by_schema(&v, "spec", "required");
}

// ---------------------------------------------------------------------------------------------
// ImageCache

fn image_caches() -> Crd {
    Crd::load("imagecaches.imagecache.io.yaml")
}

/// A cache of Docker Hub, GHCR and an in-house registry, exposed on a node port, with the
/// nodes' containerd pointed at it for Docker Hub.
fn main_cache() -> Value {
    yaml(
        r#"
apiVersion: imagecache.io/v1alpha1
kind: ImageCache
metadata: {name: main, namespace: registry}
spec:
  replicas: 2
  storage: {size: 20Gi, storageClassName: fast-ssd}
  upstreams:
    - name: docker.io
      endpoint: https://registry-1.docker.io
      credentialsSecretRef: {name: dockerhub}
    - name: ghcr.io
    - name: registry.local:5000
      endpoint: http://registry.local:5000
      caSecretRef: {name: local-ca, key: ca.crt}
  defaultRegistry: docker.io
  tagTTL: 5m
  preload:
    images: ["nginx:1.27", "registry.k8s.io/pause:3.10"]
    platforms: [linux/amd64, linux/arm64/v8]
  service: {type: NodePort, nodePort: 30500}
  nodeMirror: {enabled: true, registries: [docker.io], runtime: containerd}
  scheduling:
    nodeSelector: {kubernetes.io/os: linux}
    tolerations: [{key: dedicated, operator: Equal, value: cache, effect: NoSchedule}]
  resources:
    requests: {cpu: 100m, memory: 128Mi}
    limits: {memory: 1Gi}
"#,
    )
}

const NAME_LENGTH: &str = "metadata.name must be at most 52 characters: the registry Pods are named <name>-<ordinal> and carry a <name>-<revision> label, which must fit in 63";
const NAME_LABEL: &str = "metadata.name must be a DNS label (lowercase letters, digits and '-', no '.') that starts with a letter: it names the cache's Services";
const STORAGE_FIXED: &str = "spec.storage cannot be changed once the ImageCache exists: the StatefulSet's volume claim templates are immutable; create a new ImageCache with the new storage";

#[test]
fn names_the_children_cannot_carry_are_refused() {
    let crd = image_caches();
    accepted(&crd.create(&with(main_cache(), "/metadata/name", json!("a".repeat(52)))));
    let v = crd.create(&with(main_cache(), "/metadata/name", json!("a".repeat(53))));
    refused_by_cel(&v, "", NAME_LENGTH);
    for bad in ["1cache", "my.cache", "cache-"] {
        let v = crd.create(&with(main_cache(), "/metadata/name", json!(bad)));
        refused_by_cel(&v, "", NAME_LABEL);
    }
}

#[test]
fn storage_cannot_change_but_the_rest_can() {
    let crd = image_caches();
    for change in [
        json!({"size": "50Gi", "storageClassName": "fast-ssd"}),
        json!({"emptyDir": true}),
        json!({"size": "20Gi"}),
    ] {
        let v = crd.update(&main_cache(), &with(main_cache(), "/spec/storage", change));
        refused_by_cel(&v, "spec", STORAGE_FIXED);
    }
    let mut dropped = main_cache();
    dropped["spec"].as_object_mut().unwrap().remove("storage");
    refused_by_cel(&crd.update(&main_cache(), &dropped), "spec", STORAGE_FIXED);
    refused_by_cel(&crd.update(&dropped, &main_cache()), "spec", STORAGE_FIXED);
    accepted(&crd.update(&dropped, &dropped));
    let scaled = with(main_cache(), "/spec/replicas", json!(5));
    accepted(&crd.update(&main_cache(), &with(scaled, "/spec/tagTTL", json!("1h"))));
}

#[test]
fn image_cache_examples_are_accepted_and_read_back() {
    let crd = image_caches();
    let v = crd.create(&main_cache());
    accepted(&v);
    assert!(v.pruned.is_empty(), "{:?}", v.pruned);
    let ic: ImageCache = serde_json::from_value(v.stored).expect("the operator reads it");
    assert_eq!(ic.spec.upstreams.len(), 3);

    // Everything has a default.
    let v = crd.create(&yaml("{metadata: {name: tiny}, spec: {}}"));
    accepted(&v);
    assert_eq!(v.stored["spec"]["replicas"], json!(1));
    serde_json::from_value::<ImageCache>(v.stored).expect("the operator reads it");

    let scratch =
        yaml("{metadata: {name: scratch}, spec: {storage: {emptyDir: true}, service: {}}}");
    let v = crd.create(&scratch);
    accepted(&v);
    assert_eq!(v.stored["spec"]["service"]["type"], json!("ClusterIP"));
}

#[test]
fn empty_dir_with_a_size_or_class_is_refused() {
    let crd = image_caches();
    const EMPTY_DIR: &str = "storage.emptyDir excludes size and storageClassName";
    for storage in [
        json!({"emptyDir": true, "size": "20Gi"}),
        json!({"emptyDir": true, "storageClassName": "fast-ssd"}),
    ] {
        let v = crd.create(&with(main_cache(), "/spec/storage", storage));
        refused_by_cel(&v, "spec.storage", EMPTY_DIR);
    }
    for storage in [
        json!({"emptyDir": true}),
        json!({"emptyDir": false, "size": "20Gi"}),
        json!({"size": 21474836480_i64}),
    ] {
        accepted(&crd.create(&with(main_cache(), "/spec/storage", storage)));
    }
}

#[test]
fn a_bad_storage_size_is_refused() {
    let crd = image_caches();
    for bad in ["20GB", "20 Gi", "-1Gi", "big"] {
        let v = crd.create(&with(main_cache(), "/spec/storage/size", json!(bad)));
        refused_by_schema(&v, "spec.storage.size", "pattern");
    }
    let v = crd.create(&with(main_cache(), "/spec/storage/size", json!(true)));
    refused_by_schema(&v, "spec.storage.size", "type");
    for good in ["20Gi", "500M", "1.5Ti", "1e9", "1073741824"] {
        accepted(&crd.create(&with(main_cache(), "/spec/storage/size", json!(good))));
    }
}

#[test]
fn node_port_without_type_node_port_is_refused() {
    let crd = image_caches();
    const NODE_PORT: &str = "nodePort needs type NodePort";
    // `type` defaults to ClusterIP before the rule runs, as in the apiserver.
    for service in [
        json!({"nodePort": 30500}),
        json!({"type": "ClusterIP", "nodePort": 30500}),
    ] {
        let v = crd.create(&with(main_cache(), "/spec/service", service));
        refused_by_cel(&v, "spec.service", NODE_PORT);
    }
    for service in [
        json!({"type": "NodePort", "nodePort": 30500}),
        json!({"type": "NodePort"}),
        json!({"type": "ClusterIP"}),
    ] {
        accepted(&crd.create(&with(main_cache(), "/spec/service", service)));
    }
    let v = crd.create(&with(main_cache(), "/spec/service/nodePort", json!(70000)));
    refused_by_schema(&v, "spec.service.nodePort", "maximum");
}

#[test]
fn an_unknown_service_type_is_refused() {
    let crd = image_caches();
    for bad in ["LoadBalancer", "nodeport", ""] {
        let v = crd.create(&with(main_cache(), "/spec/service/type", json!(bad)));
        refused_by_schema(&v, "spec.service.type", "enum");
        // The apiserver runs no CEL rule on an object of the wrong shape (here the nodePort rule
        // would also refuse, since the type is not NodePort).
        assert!(v.cel_skipped);
    }
}

#[test]
fn duplicate_upstream_names_are_refused() {
    let crd = image_caches();
    let twice = json!([
        {"name": "docker.io"},
        {"name": "ghcr.io"},
        {"name": "docker.io", "endpoint": "https://mirror.gcr.io"}
    ]);
    let v = crd.create(&with(main_cache(), "/spec/upstreams", twice));
    refused_by_cel(&v, "spec.upstreams", "upstream names must be unique");
    let distinct = json!([
        {"name": "docker.io"},
        {"name": "ghcr.io"},
        {"name": "mirror.gcr.io", "endpoint": "https://mirror.gcr.io"}
    ]);
    accepted(&crd.create(&with(main_cache(), "/spec/upstreams", distinct)));
}

#[test]
fn an_upstream_endpoint_must_be_http_or_https() {
    let crd = image_caches();
    const URL: &str = "endpoint must be an http:// or https:// URL";
    for bad in [
        "registry-1.docker.io",
        "ftp://registry.local",
        "https://",
        "HTTPS://x.io",
    ] {
        let v = crd.create(&with(
            main_cache(),
            "/spec/upstreams/1/endpoint",
            json!(bad),
        ));
        refused_by_cel(&v, "spec.upstreams[1].endpoint", URL);
    }
    for good in [
        "https://ghcr.io",
        "http://10.0.0.5:5000",
        "https://proxy.local/v2-mirror",
    ] {
        accepted(&crd.create(&with(
            main_cache(),
            "/spec/upstreams/1/endpoint",
            json!(good),
        )));
    }
}

#[test]
fn replicas_out_of_range_are_refused() {
    let crd = image_caches();
    let v = crd.create(&with(main_cache(), "/spec/replicas", json!(0)));
    refused_by_schema(&v, "spec.replicas", "minimum");
    let v = crd.create(&with(main_cache(), "/spec/replicas", json!(65)));
    refused_by_schema(&v, "spec.replicas", "maximum");
    let v = crd.create(&with(main_cache(), "/spec/replicas", json!("3")));
    refused_by_schema(&v, "spec.replicas", "type");
    for good in [1, 64] {
        accepted(&crd.create(&with(main_cache(), "/spec/replicas", json!(good))));
    }
}

#[test]
fn other_image_cache_fields_are_checked() {
    let crd = image_caches();
    for (at, bad, field, keyword) in [
        ("/spec/tagTTL", json!("5 minutes"), "spec.tagTTL", "pattern"),
        (
            "/spec/preload/platforms",
            json!(["linux"]),
            "spec.preload.platforms[0]",
            "pattern",
        ),
        (
            "/spec/nodeMirror/runtime",
            json!("docker"),
            "spec.nodeMirror.runtime",
            "enum",
        ),
        (
            "/spec/nodeMirror/hostsDir",
            json!("etc/containerd"),
            "spec.nodeMirror.hostsDir",
            "pattern",
        ),
        (
            "/spec/upstreams/0/credentialsSecretRef/name",
            json!("Docker_Hub"),
            "spec.upstreams[0].credentialsSecretRef.name",
            "pattern",
        ),
        (
            "/spec/upstreams/1/name",
            json!(""),
            "spec.upstreams[1].name",
            "minLength",
        ),
    ] {
        let v = crd.create(&with(main_cache(), at, bad));
        refused_by_schema(&v, field, keyword);
    }
    for (at, good) in [
        ("/spec/tagTTL", json!("1h")),
        ("/spec/preload/platforms", json!(["linux/arm/v7"])),
        ("/spec/nodeMirror/runtime", json!("crio")),
        (
            "/spec/nodeMirror/hostsDir",
            json!("/etc/containerd/certs.d"),
        ),
    ] {
        accepted(&crd.create(&with(main_cache(), at, good)));
    }
}

#[test]
fn upstreams_beyond_the_bound_are_refused() {
    let crd = image_caches();
    let many = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({"name": format!("r{i}.example.com")}))
            .collect()
    };
    accepted(&crd.create(&with(main_cache(), "/spec/upstreams", many(32))));
    let v = crd.create(&with(main_cache(), "/spec/upstreams", many(33)));
    refused_by_schema(&v, "spec.upstreams", "maxItems");
}

#[test]
fn nulls_and_unknown_fields_are_dropped() {
    let crd = image_caches();
    // `upstreams` is not nullable: a null is dropped, as the apiserver does before defaulting.
    let object = with(main_cache(), "/spec/upstreams", Value::Null);
    let object = with(object, "/spec/replica", json!(3));
    let v = crd.create(&object);
    accepted(&v);
    assert_eq!(v.pruned, ["spec.replica"]);
    assert!(v.stored["spec"].get("upstreams").is_none());

    // `endpoint` is nullable: a null stays, and the URL rule does not run on it.
    let v = crd.create(&with(
        main_cache(),
        "/spec/upstreams/1/endpoint",
        Value::Null,
    ));
    accepted(&v);
    assert_eq!(v.stored["spec"]["upstreams"][1]["endpoint"], Value::Null);
    // A null size still counts as set for the emptyDir rule, which runs on `storage`.
    let storage = json!({"emptyDir": true, "size": null});
    let v = crd.create(&with(main_cache(), "/spec/storage", storage));
    refused_by_cel(
        &v,
        "spec.storage",
        "storage.emptyDir excludes size and storageClassName",
    );
}

// ---------------------------------------------------------------------------------------------
// CachedImage

fn cached_images() -> Crd {
    Crd::load("cachedimages.imagecache.io.yaml")
}

fn nginx() -> Value {
    yaml(&format!(
        r#"
apiVersion: imagecache.io/v1alpha1
kind: CachedImage
metadata: {{name: "{name}", namespace: registry}}
spec:
  cacheRef: {{name: main}}
  digest: "{DIGEST_A}"
  reference: "docker.io/library/nginx@{DIGEST_A}"
  mediaType: application/vnd.oci.image.manifest.v1+json
  size: 72893122
  layers:
    - {{name: "{DIGEST_B}", size: 29150000, mediaType: application/vnd.oci.image.layer.v1.tar+gzip}}
  tags: ["1.27"]
  created: "2025-06-01T10:00:00Z"
  lastPulled: "2026-01-01T00:00:00Z"
  pods: [main-0, main-1]
"#,
        name = DIGEST_A.replace(':', ".")
    ))
}

#[test]
fn cached_image_example_is_accepted_and_reads_back() {
    let v = cached_images().create(&nginx());
    accepted(&v);
    let ci: CachedImage = serde_json::from_value(v.stored).expect("the operator reads it");
    assert_eq!(ci.spec.pods, ["main-0", "main-1"]);
}

#[test]
fn digest_cannot_change_on_update() {
    let crd = cached_images();
    let other = with(nginx(), "/spec/digest", json!(DIGEST_B));
    accepted(&crd.create(&other));
    let v = crd.update(&nginx(), &other);
    refused_by_cel(&v, "spec.digest", "digest is immutable");

    let moved = with(nginx(), "/spec/cacheRef/name", json!("other"));
    refused_by_cel(
        &crd.update(&nginx(), &moved),
        "spec.cacheRef",
        "cacheRef is immutable",
    );

    // What the operator updates as pulls happen is free to change.
    let pulled = with(nginx(), "/spec/lastPulled", json!("2026-02-01T00:00:00Z"));
    let pulled = with(pulled, "/spec/tags", json!(["1.27", "latest"]));
    accepted(&crd.update(&nginx(), &pulled));
}

#[test]
fn cached_image_fields_are_checked() {
    let crd = cached_images();
    let v = crd.create(&with(nginx(), "/spec/digest", json!("sha256:abc")));
    refused_by_schema(&v, "spec.digest", "pattern");
    let v = crd.create(&with(nginx(), "/spec/lastPulled", json!("yesterday")));
    refused_by_schema(&v, "spec.lastPulled", "format");
    let v = crd.create(&with(nginx(), "/spec/layers/0/size", json!("29MB")));
    refused_by_schema(&v, "spec.layers[0].size", "type");
}

// ---------------------------------------------------------------------------------------------
// The rules themselves

/// Every CEL rule in the CRDs, each with a refusing test above. A rule added to a CRD fails
/// this test until it is listed here (and tested).
const TESTED_RULES: &[(&str, &str, &str)] = &[
    ("CachedImage", "spec.cacheRef", "cacheRef is immutable"),
    ("CachedImage", "spec.digest", "digest is immutable"),
    ("ImageCache", "spec.service", "nodePort needs type NodePort"),
    (
        "ImageCache",
        "spec.storage",
        "storage.emptyDir excludes size and storageClassName",
    ),
    (
        "ImageCache",
        "spec.upstreams",
        "upstream names must be unique",
    ),
    (
        "ImageCache",
        "spec.upstreams.items.endpoint",
        "endpoint must be an http:// or https:// URL",
    ),
    ("PrunePolicy", "spec.cacheRef", "cacheRef is immutable"),
    ("PrunePolicy", "spec.schedule", FIVE_FIELDS),
    ("PrunePolicy", "spec.schedule", CRON_VALUES),
    ("ImageCache", "", NAME_LENGTH),
    ("ImageCache", "", NAME_LABEL),
    ("ImageCache", "spec", STORAGE_FIXED),
];

fn all_crds() -> Vec<Crd> {
    vec![image_caches(), prune_policies(), cached_images()]
}

#[test]
fn every_rule_is_tested() {
    let mut found: Vec<(String, String, String)> = all_crds()
        .iter()
        .flat_map(|crd| {
            crd.rules()
                .into_iter()
                .map(|(at, _, message)| (crd.kind.clone(), at, message))
        })
        .collect();
    found.sort();
    let mut listed: Vec<(String, String, String)> = TESTED_RULES
        .iter()
        .map(|(k, a, m)| (k.to_string(), a.to_string(), m.to_string()))
        .collect();
    listed.sort();
    assert_eq!(found, listed);
}

/// Names a rule binds itself: the variables of its macros (`all(u, ...)`) and their accumulators.
fn bound_names(expr: &kube_cel::cel::common::ast::Expr, out: &mut Vec<String>) {
    use kube_cel::cel::common::ast::Expr;
    match expr {
        Expr::Comprehension(c) => {
            out.push(c.iter_var.clone());
            out.extend(c.iter_var2.clone());
            out.push(c.accu_var.clone());
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                bound_names(&part.expr, out);
            }
        }
        Expr::Call(call) => {
            for part in call.target.iter().map(|t| &**t).chain(&call.args) {
                bound_names(&part.expr, out);
            }
        }
        Expr::Select(select) => bound_names(&select.operand.expr, out),
        Expr::List(list) => list.elements.iter().for_each(|e| bound_names(&e.expr, out)),
        _ => {}
    }
}

#[test]
fn every_rule_compiles_uses_only_self_and_fits_the_cost_budget() {
    for crd in all_crds() {
        let rules = crd.rules();
        assert!(!rules.is_empty(), "{}", crd.kind);
        for (at, rule, _) in rules {
            let node = crd.compiled_at(&at);
            let failures: Vec<_> = node
                .compilation_errors()
                .into_iter()
                .map(ToString::to_string)
                .collect();
            assert!(failures.is_empty(), "{} {at}: {failures:?}", crd.kind);

            // A CRD rule sees only `self` and `oldSelf` (kube-cel's own scope check also flags
            // the rule's macro variables, so the check is done here).
            let program = kube_cel::cel::Program::compile(&rule).expect("compiles");
            let mut bound = vec!["self".to_owned(), "oldSelf".to_owned()];
            bound_names(&program.expression().expr, &mut bound);
            let references = program.references();
            let mut free: Vec<&str> = references.variables();
            free.retain(|v| !bound.iter().any(|b| b == v));
            assert!(free.is_empty(), "{} {at} `{rule}` uses {free:?}", crd.kind);

            // kube-cel's estimate from the schema's maxItems/maxLength bounds.
            let warnings = kube_cel::estimate_rule_cost(&rule, node);
            assert!(
                warnings.is_empty(),
                "{} {at} `{rule}`: {warnings:#?}",
                crd.kind
            );
        }
    }
}
