use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};

use super::*;
use crate::api::{Quantity, SIZE_OR_PERCENT_PATTERN};
use crate::duration::DURATION_PATTERN;

/// The CRDs as `imagecache crds` prints them, parsed back.
fn parsed() -> Vec<CustomResourceDefinition> {
    let yaml = to_multi_yaml().unwrap();
    let docs: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&yaml).unwrap();
    assert_eq!(docs.len(), 3);
    docs
}

fn by_kind(kind: &str) -> CustomResourceDefinition {
    parsed()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
        .collect()
}

fn schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap()
}

/// The schema at a path of property names.
fn at<'a>(root: &'a JSONSchemaProps, path: &[&str]) -> &'a JSONSchemaProps {
    path.iter().fold(root, |s, p| {
        s.properties
            .as_ref()
            .and_then(|m| m.get(*p))
            .unwrap_or_else(|| panic!("no property {p} in {path:?}"))
    })
}

fn rules(s: &JSONSchemaProps) -> Vec<String> {
    s.x_kubernetes_validations
        .iter()
        .flatten()
        .map(|r| r.rule.clone())
        .collect()
}

#[test]
fn names_scope_and_subresources() {
    for (kind, plural, short) in [
        ("ImageCache", "imagecaches", "ic"),
        ("PrunePolicy", "prunepolicies", "pp"),
        ("CachedImage", "cachedimages", "cimg"),
    ] {
        let crd = by_kind(kind);
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.imagecache.io").as_str())
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_owned()]));
        assert_eq!(
            crd.spec.names.categories,
            Some(vec![super::CATEGORY.to_owned()])
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, VERSION);
        assert!(v.served && v.storage);
        assert!(v.subresources.as_ref().unwrap().status.is_some(), "{kind}");
        assert_eq!(file_name(&crd), format!("{plural}.imagecache.io.yaml"));
    }
}

#[test]
fn printer_columns() {
    let names = |kind| -> Vec<String> {
        columns(&by_kind(kind))
            .into_iter()
            .map(|(n, _, _)| n)
            .collect()
    };
    assert_eq!(
        names("ImageCache"),
        ["READY", "IMAGES", "SIZE", "ENDPOINT", "AGE"]
    );
    assert_eq!(
        names("PrunePolicy"),
        [
            "CACHE",
            "SCHEDULE",
            "DRY-RUN",
            "LAST RUN",
            "PRUNED",
            "RECLAIMED",
            "NEXT"
        ]
    );
    assert_eq!(
        names("CachedImage"),
        ["REFERENCE", "TAGS", "SIZE", "PODS", "LAST-PULLED", "AGE"]
    );
    // Custom columns replace kubectl's defaults, so AGE is declared.
    for kind in ["ImageCache", "CachedImage"] {
        let cols = columns(&by_kind(kind));
        let age = cols.iter().find(|c| c.0 == "AGE").unwrap();
        assert_eq!(
            (age.1.as_str(), age.2.as_str()),
            ("date", ".metadata.creationTimestamp")
        );
    }
    // A time to come is printed as it is: kubectl shows a future `date` as `<invalid>`.
    let next = columns(&by_kind("PrunePolicy")).pop().unwrap();
    assert_eq!((next.0.as_str(), next.1.as_str()), ("NEXT", "string"));
    let ready = columns(&by_kind("ImageCache")).remove(0);
    assert_eq!(ready.2, r#".status.conditions[?(@.type=="Ready")].status"#);
}

#[test]
fn schemas_carry_the_cel_rules() {
    let ic = by_kind("ImageCache");
    let spec = at(schema(&ic), &["spec"]);
    assert!(rules(at(spec, &["storage"]))[0].contains("emptyDir"));
    assert!(rules(at(spec, &["service"]))[0].contains("NodePort"));
    assert!(rules(at(spec, &["upstreams"]))[0].contains("exists_one"));
    let service_type = at(spec, &["service", "type"]);
    let values: Vec<_> = service_type
        .enum_
        .iter()
        .flatten()
        .map(|v| v.0.clone())
        .collect();
    assert_eq!(
        values,
        [
            serde_json::json!("ClusterIP"),
            serde_json::json!("NodePort")
        ]
    );
    assert_eq!(
        at(spec, &["storage", "size"]).x_kubernetes_int_or_string,
        Some(true)
    );

    let pp = by_kind("PrunePolicy");
    let spec = at(schema(&pp), &["spec"]);
    assert_eq!(rules(at(spec, &["cacheRef"])), ["self == oldSelf"]);
    let schedule = at(spec, &["schedule"]);
    assert!(rules(schedule)[0].contains("{4}"));
    assert_eq!(schedule.pattern.as_deref(), Some(CRON_PATTERN));
    let request = at(spec, &["request"]);
    assert_eq!(
        at(request, &["unusedFor"]).pattern.as_deref(),
        Some(DURATION_PATTERN)
    );
    assert_eq!(
        at(request, &["maxUsedSpace"]).pattern.as_deref(),
        Some(SIZE_OR_PERCENT_PATTERN)
    );
    assert_eq!(
        at(request, &["createdBefore"]).format.as_deref(),
        Some("date-time")
    );
    let digest = at(request, &["digests"]).items.as_ref().unwrap();
    let k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(digest) = digest else {
        panic!("digests items")
    };
    assert_eq!(
        digest.pattern.as_deref(),
        Some(crate::digest::DIGEST_PATTERN)
    );

    let cimg = by_kind("CachedImage");
    let spec = at(schema(&cimg), &["spec"]);
    assert_eq!(rules(at(spec, &["digest"])), ["self == oldSelf"]);
    assert_eq!(rules(at(spec, &["cacheRef"])), ["self == oldSelf"]);
}

/// The patterns the schemas carry agree with the parsers behind them.
#[test]
fn patterns_agree_with_the_parsers() {
    let duration = regex::Regex::new(DURATION_PATTERN).unwrap();
    for ok in ["0", "30d", "1h30m", "250ms", "15m"] {
        assert!(duration.is_match(ok), "{ok}");
        crate::duration::parse(ok).unwrap();
    }
    for bad in ["", "1", "1w", "h", "-1h", "1.5h"] {
        assert!(!duration.is_match(bad), "{bad}");
    }
    let size = regex::Regex::new(SIZE_OR_PERCENT_PATTERN).unwrap();
    for ok in ["500Mi", "20G", "1.5Ti", "1024", "80%", "12.5%"] {
        assert!(size.is_match(ok), "{ok}");
        Quantity::parse("maxUsedSpace", ok).unwrap();
    }
    for bad in ["", "Gi", "20GB", "-1", "80 %", "1e3"] {
        assert!(!size.is_match(bad), "{bad}");
    }
    // The CEL rule's regex (RE2 there, the same syntax here).
    let five = regex::Regex::new("^ *[^ ]+( +[^ ]+){4} *$").unwrap();
    for ok in ["*/5 * * * *", "0 3 * * MON-FRI", "30 2 1,15 * *"] {
        assert!(five.is_match(ok), "{ok}");
        crate::schedule::Schedule::cron(ok, None).unwrap();
    }
    for bad in ["* * * *", "0 0 * * * *", "@daily"] {
        assert!(!five.is_match(bad), "{bad}");
    }
}

#[test]
fn resources_round_trip() {
    let yaml = r#"
apiVersion: imagecache.io/v1alpha1
kind: PrunePolicy
metadata: {name: nightly, namespace: cache}
spec:
  cacheRef: {name: main}
  schedule: "0 3 * * *"
  timeZone: Europe/Paris
  request:
    unusedFor: 30d
    keepPatterns: ["/prod/"]
    maxUsedSpace: 80%
"#;
    let pp: PrunePolicy = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(pp.spec.cache_ref.name, "main");
    assert_eq!(
        pp.spec.request.unused_for,
        Some(std::time::Duration::from_secs(30 * 86400))
    );
    let back: PrunePolicy = serde_json::from_value(serde_json::to_value(&pp).unwrap()).unwrap();
    assert_eq!(back, pp);

    let ic: ImageCache = serde_saphyr::from_str(
        "apiVersion: imagecache.io/v1alpha1\nkind: ImageCache\nmetadata: {name: main}\nspec:\n  storage: {size: 20Gi}\n  upstreams: [{name: docker.io, endpoint: 'https://registry-1.docker.io'}]\n  service: {type: NodePort, nodePort: 30500}\n",
    )
    .unwrap();
    assert_eq!(ic.spec.replicas, 1);
    assert_eq!(ic.spec.service.unwrap().type_, ServiceType::NodePort);
}
