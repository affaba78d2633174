//! An offline stand-in for what the kube-apiserver does to a custom resource before it stores it,
//! driven by the committed `crds/*.yaml` (the files users apply):
//!
//! 1. pruning: fields the schema does not declare are dropped (not an error), and so are `null`s
//!    of fields that are not `nullable`;
//! 2. defaulting: `default` values fill missing fields;
//! 3. the OpenAPI v3 schema: types, `required`, `enum`, `pattern`, lengths, item counts, bounds,
//!    `format`, `nullable`, `x-kubernetes-int-or-string`;
//! 4. every `x-kubernetes-validations` CEL rule at its schema location, with `self` and, on an
//!    update, `oldSelf` (transition rules are skipped on create, as the apiserver does); not at
//!    a node whose value is `null`, and not at all when step 3 found a type, `required`, `enum`
//!    or size violation, as the apiserver does.
//!
//! Step 3 uses the `jsonschema` crate: maintained, compliant with JSON Schema 2020-12 (which holds
//! the OpenAPI v3 subset a structural schema may use once `nullable` and int-or-string are written
//! as type unions, done below), reports the instance path and keyword of each failure, and can
//! match `pattern` with the `regex` crate, whose RE2 syntax is the one Go's `regexp` gives the
//! apiserver. Step 4 uses `kube-cel`, which implements the Kubernetes CEL libraries on the `cel`
//! crate and whose `Validator` walks the schema as the apiserver does.
//!
//! A schema keyword or `x-kubernetes-*` extension the translation does not know makes it panic,
//! so a CRD change this validator cannot judge fails loudly instead of passing unchecked.

use std::path::Path;

use serde_json::{Map, Value};

/// What refused an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum By {
    /// An OpenAPI schema keyword (`pattern`, `maximum`, `enum`, ...).
    Schema(String),
    /// A CEL rule (its expression).
    Cel(String),
}

/// One reason the apiserver would refuse the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The field, as the apiserver names it: `spec.upstreams[1].endpoint`.
    pub field: String,
    pub by: By,
    pub message: String,
}

/// The outcome of a create or an update.
#[derive(Debug)]
pub struct Verdict {
    /// The object as it would be stored (pruned and defaulted).
    pub stored: Value,
    /// Unknown fields dropped by pruning.
    pub pruned: Vec<String>,
    /// Empty when the object is accepted.
    pub refusals: Vec<Refusal>,
    /// The CEL rules did not run: a schema error left the object without the shape they were
    /// written for.
    pub cel_skipped: bool,
}

/// Schema keywords whose failure stops the apiserver from running the CEL rules: type,
/// `required`, `enum` and size violations (`hasBlockingErr` of the custom resource strategy).
const BLOCKING: &[&str] = &[
    "type",
    "required",
    "enum",
    "maxLength",
    "maxItems",
    "maxProperties",
];

/// One CRD's served version, ready to judge objects.
pub struct Crd {
    pub kind: String,
    /// The `openAPIV3Schema` as committed.
    pub schema: Value,
    json_schema: jsonschema::Validator,
    cel: kube_cel::CompiledSchema,
}

/// Every `x-kubernetes-validations` rule of a schema: (schema location, rule, message).
pub type RuleSite = (String, String, String);

impl Crd {
    /// Loads `crds/<file>` of this repository.
    pub fn load(file: &str) -> Crd {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crds")
            .join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let crd: Value = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .expect("spec.names.kind")
            .to_owned();
        let versions = crd["spec"]["versions"].as_array().expect("spec.versions");
        assert_eq!(versions.len(), 1, "{kind}: one served version expected");
        let schema = versions[0]["schema"]["openAPIV3Schema"].clone();
        assert!(schema.is_object(), "{kind}: no openAPIV3Schema");

        let json_schema = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .should_ignore_unknown_formats(true)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(&to_json_schema(&schema, &kind))
            .unwrap_or_else(|e| panic!("{kind}: translated schema does not compile: {e}"));
        let cel = kube_cel::compile_schema(&schema);
        let mut with_field_path = Vec::new();
        find_field_paths(&schema, &mut with_field_path);
        assert!(
            with_field_path.is_empty(),
            "{kind}: rules with `fieldPath` ({with_field_path:?}) report another field than their \
             node; teach the offline CRD validator about them"
        );
        Crd {
            kind,
            schema,
            json_schema,
            cel,
        }
    }

    /// `kubectl create`: no old object, so transition rules do not run.
    pub fn create(&self, object: &Value) -> Verdict {
        self.admit(object, None)
    }

    /// `kubectl apply` over `old` (which was accepted before).
    pub fn update(&self, old: &Value, new: &Value) -> Verdict {
        let old = self.create(old);
        assert!(
            old.refusals.is_empty(),
            "{}: the old object of an update must be valid: {:#?}",
            self.kind,
            old.refusals
        );
        self.admit(new, Some(&old.stored))
    }

    fn admit(&self, object: &Value, old_stored: Option<&Value>) -> Verdict {
        let mut pruned = Vec::new();
        let mut stored = object.clone();
        prune(&self.schema, &mut stored, "", true, &mut pruned);
        let stored = kube_cel::apply_defaults(&self.schema, &stored);

        let mut refusals: Vec<Refusal> = self
            .json_schema
            .iter_errors(&stored)
            .map(|e| Refusal {
                field: field_of(e.instance_path()),
                by: By::Schema(e.kind().keyword().to_owned()),
                message: e.to_string(),
            })
            .collect();
        let cel_skipped = refusals
            .iter()
            .any(|r| matches!(&r.by, By::Schema(k) if BLOCKING.contains(&k.as_str())));
        if cel_skipped {
            // The apiserver adds one general error instead; the schema errors say it all.
        } else if let Err(errors) =
            kube_cel::Validator::new().validate_compiled(&self.cel, &stored, old_stored)
        {
            // The apiserver runs no rule at a null (nullable) node; kube-cel does. Without
            // `fieldPath` (refused at load), a rule reports the node it sits on.
            let at_null =
                |e: &kube_cel::ValidationError| value_at(&stored, &e.field_path).is_null();
            refusals.extend(
                errors
                    .into_vec()
                    .into_iter()
                    .filter(|e| !at_null(e))
                    .map(|e| Refusal {
                        field: e.field_path.clone(),
                        by: By::Cel(e.rule.clone()),
                        message: match e.kind {
                            kube_cel::ErrorKind::ValidationFailure => e.message.clone(),
                            // A rule that does not compile or cannot run is a defect of the CRD.
                            ref kind => format!("{kind:?}: {}", e.message),
                        },
                    }),
            );
        }
        Verdict {
            stored,
            pruned,
            refusals,
            cel_skipped,
        }
    }

    /// Every CEL rule of the schema with the location of its node (`spec.service`, `spec.upstreams`).
    pub fn rules(&self) -> Vec<RuleSite> {
        let mut out = Vec::new();
        collect_rules(&self.schema, "", &mut out);
        out
    }

    /// The compiled schema node at a dotted location (`items` for list elements), for static
    /// analysis of the rules there.
    pub fn compiled_at(&self, location: &str) -> &kube_cel::CompiledSchema {
        let mut node = &self.cel;
        for part in location.split('.').filter(|p| !p.is_empty()) {
            node = if part == "items" {
                node.items.as_deref().expect("items")
            } else {
                node.properties.get(part).expect("property")
            };
        }
        node
    }
}

fn collect_rules(schema: &Value, at: &str, out: &mut Vec<RuleSite>) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push((
            at.to_owned(),
            rule["rule"].as_str().expect("rule").to_owned(),
            rule["message"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    let join = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    if let Some(props) = schema["properties"].as_object() {
        for (name, child) in props {
            collect_rules(child, &join(name), out);
        }
    }
    if schema["items"].is_object() {
        collect_rules(&schema["items"], &join("items"), out);
    }
    if schema["additionalProperties"].is_object() {
        collect_rules(
            &schema["additionalProperties"],
            &join("additionalProperties"),
            out,
        );
    }
}

fn find_field_paths(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                let paths = rules.iter().filter_map(|r| r.get("fieldPath")?.as_str());
                out.extend(paths.map(str::to_owned));
            }
            map.values().for_each(|v| find_field_paths(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| find_field_paths(v, out)),
        _ => {}
    }
}

/// The value at an apiserver field path (`spec.upstreams[1].endpoint`); `null` when absent.
fn value_at<'a>(object: &'a Value, field: &str) -> &'a Value {
    let mut node = object;
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            node = &node[name];
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            let i: usize = index.trim_end_matches(']').parse().expect("an index");
            node = &node[i];
        }
    }
    node
}

/// `/spec/upstreams/1/endpoint` as the apiserver writes it: `spec.upstreams[1].endpoint`.
fn field_of(location: &jsonschema::paths::Location) -> String {
    let mut out = String::new();
    for segment in location.segments() {
        match segment {
            jsonschema::paths::LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
            jsonschema::paths::LocationSegment::Property(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&name);
            }
        }
    }
    out
}

fn is_true(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// The apiserver's structural pruning. The root keeps `apiVersion`, `kind` and `metadata`,
/// which the apiserver handles itself.
fn prune(schema: &Value, value: &mut Value, at: &str, root: bool, pruned: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = is_true(schema, "x-kubernetes-preserve-unknown-fields");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_at = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                let child_schema = props.and_then(|p| p.get(&key)).or(additional);
                match child_schema {
                    Some(child) => {
                        if map[&key].is_null() && !is_true(child, "nullable") {
                            map.remove(&key);
                        } else if let Some(v) = map.get_mut(&key) {
                            prune(child, v, &child_at, false, pruned);
                        }
                    }
                    None if preserve => {}
                    None => {
                        map.remove(&key);
                        pruned.push(child_at);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{at}[{i}]"), false, pruned);
                }
            }
        }
        _ => {}
    }
}

/// Keywords that only describe.
const ANNOTATIONS: &[&str] = &["description", "title", "default", "example", "externalDocs"];
/// Keywords with the same meaning in OpenAPI v3 and JSON Schema 2020-12.
const SAME: &[&str] = &[
    "format",
    "pattern",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "required",
];
/// Keywords holding one schema.
const ONE_SCHEMA: &[&str] = &["items", "not"];
/// Keywords holding a list of schemas.
const SCHEMA_LISTS: &[&str] = &["allOf", "anyOf", "oneOf"];

/// An OpenAPI v3 structural schema node as JSON Schema 2020-12.
fn to_json_schema(node: &Value, at: &str) -> Value {
    let Some(obj) = node.as_object() else {
        panic!("{at}: a schema must be an object, found {node}");
    };
    let mut out = Map::new();
    let nullable = is_true(node, "nullable");
    for (key, value) in obj {
        let k = key.as_str();
        match k {
            _ if ANNOTATIONS.contains(&k) => {}
            _ if SAME.contains(&k) => {
                out.insert(key.clone(), value.clone());
            }
            _ if ONE_SCHEMA.contains(&k) => {
                out.insert(key.clone(), to_json_schema(value, &format!("{at}.{k}")));
            }
            _ if SCHEMA_LISTS.contains(&k) => {
                let list = value.as_array().expect("a list of schemas");
                let branches = list
                    .iter()
                    .enumerate()
                    .map(|(i, s)| to_json_schema(s, &format!("{at}.{k}[{i}]")))
                    .collect();
                out.insert(key.clone(), Value::Array(branches));
            }
            "properties" => {
                let props = value
                    .as_object()
                    .expect("properties is a map")
                    .iter()
                    .map(|(name, s)| (name.clone(), to_json_schema(s, &format!("{at}.{name}"))))
                    .collect();
                out.insert(key.clone(), Value::Object(props));
            }
            "additionalProperties" => {
                let translated = match value {
                    Value::Bool(b) => Value::Bool(*b),
                    s => to_json_schema(s, &format!("{at}.additionalProperties")),
                };
                out.insert(key.clone(), translated);
            }
            // OpenAPI 3.0 writes exclusive bounds as flags on minimum/maximum.
            "exclusiveMinimum" | "exclusiveMaximum" => {
                let bound = if k == "exclusiveMinimum" {
                    "minimum"
                } else {
                    "maximum"
                };
                if value.as_bool() == Some(true) {
                    out.insert(key.clone(), obj[bound].clone());
                }
            }
            // Handled with `type` below, or not a schema check at all.
            "type"
            | "nullable"
            | "x-kubernetes-int-or-string"
            | "x-kubernetes-preserve-unknown-fields"
            // CEL: judged by kube-cel.
            | "x-kubernetes-validations" => {}
            other => panic!(
                "{at}: the offline CRD validator does not know `{other}`; teach it what the \
                 apiserver does with it"
            ),
        }
    }
    for bound in ["minimum", "maximum"] {
        let flag = if bound == "minimum" {
            "exclusiveMinimum"
        } else {
            "exclusiveMaximum"
        };
        if is_true(node, flag) {
            out.remove(bound);
        }
    }

    let mut types: Vec<Value> = match node.get("type").and_then(Value::as_str) {
        Some(t) => vec![Value::from(t)],
        None if is_true(node, "x-kubernetes-int-or-string") => {
            vec![Value::from("integer"), Value::from("string")]
        }
        None => Vec::new(),
    };
    if !types.is_empty() {
        if nullable {
            types.push(Value::from("null"));
        }
        out.insert("type".into(), Value::Array(types));
    }
    if nullable && let Some(Value::Array(values)) = out.get_mut("enum") {
        values.push(Value::Null);
    }
    Value::Object(out)
}
