//! Server-side table output (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), which
//! gives kubectl its columns: NAME, REFERENCE, TAGS, SIZE, LAST-PULLED, AGE. Pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::human_size;
use crate::api::image::{ANNOTATION_LAST_PULLED, ANNOTATION_TAGS, Image};

/// What each row carries besides its cells (`includeObject`); kubectl needs the metadata for
/// `--show-labels`, `-L` and sorting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: &str) -> Option<IncludeObject> {
        match s {
            "None" => Some(IncludeObject::None),
            "Metadata" => Some(IncludeObject::Metadata),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

/// How a table is asked for: its `meta.k8s.io` version and what rows embed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFormat {
    pub version: &'static str,
    pub include: IncludeObject,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Column {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: i32,
}

const COLUMNS: [Column; 6] = [
    Column {
        name: "Name",
        kind: "string",
        format: "name",
        description: "The manifest digest.",
        priority: 0,
    },
    Column {
        name: "Reference",
        kind: "string",
        format: "",
        description: "dockerImageReference: registry/repository@digest.",
        priority: 0,
    },
    Column {
        name: "Tags",
        kind: "string",
        format: "",
        description: "Tags pointing at the manifest.",
        priority: 0,
    },
    Column {
        name: "Size",
        kind: "string",
        format: "",
        description: "Manifest, config and layers.",
        priority: 0,
    },
    Column {
        name: "Last-Pulled",
        kind: "string",
        format: "",
        description: "Time since the last pull through the cache.",
        priority: 0,
    },
    Column {
        name: "Age",
        kind: "date",
        format: "",
        description: "Time since the manifest was first cached.",
        priority: 0,
    },
];

/// A Table of `images` with `meta` as its list metadata.
pub fn table(images: &[Image], meta: ListMeta, format: TableFormat, now: Timestamp) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{}", format.version),
        "metadata": meta,
        "columnDefinitions": COLUMNS,
        "rows": images.iter().map(|i| row(i, format.include, now)).collect::<Vec<_>>(),
    })
}

/// A bookmark as a table watcher sees it: an empty table at a resource version.
pub fn bookmark_table(resource_version: u64, format: TableFormat) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{}", format.version),
        "metadata": {"resourceVersion": resource_version.to_string()},
        "rows": [],
    })
}

fn row(image: &Image, include: IncludeObject, now: Timestamp) -> Value {
    let created = image.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let last_pulled = image
        .annotation(ANNOTATION_LAST_PULLED)
        .and_then(|t| t.parse::<Timestamp>().ok());
    let cells = json!([
        image.name(),
        image.docker_image_reference,
        short_tags(image.annotation(ANNOTATION_TAGS).unwrap_or("")),
        human_size(image.docker_image_metadata.size),
        last_pulled.map_or_else(|| "<none>".to_owned(), |t| human_since(t, now)),
        created.map_or_else(|| "<unknown>".to_owned(), |t| human_since(t, now)),
    ]);
    let object = match include {
        IncludeObject::None => return json!({ "cells": cells }),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": image.metadata,
        }),
        IncludeObject::Object => serde_json::to_value(image).unwrap_or(Value::Null),
    };
    json!({ "cells": cells, "object": object })
}

/// `registry/repo:tag,...` to `tag,...` (a port's colon sits before the last `/`).
fn short_tags(annotation: &str) -> String {
    let mut tags: Vec<&str> = annotation
        .split(',')
        .filter_map(|r| {
            let (repo, tag) = r.rsplit_once(':')?;
            (!tag.contains('/') && !repo.is_empty()).then_some(tag)
        })
        .collect();
    tags.sort();
    tags.dedup();
    if tags.is_empty() {
        "<none>".to_owned()
    } else {
        tags.join(",")
    }
}

/// Elapsed time the way kubectl prints ages: `45s`, `3m20s`, `25m`, `5h10m`, `20h`, `3d4h`,
/// `90d`, `2y30d`, `9y`.
pub fn human_since(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second() - then.as_second();
    if secs < -1 {
        return "<invalid>".to_owned();
    }
    if secs < 0 {
        return "0s".to_owned();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if days < 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use std::collections::BTreeMap;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = at("2024-06-01T00:00:00Z");
        let ago =
            |secs: i64| human_since(Timestamp::from_second(now.as_second() - secs).unwrap(), now);
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(-1), "0s");
        assert_eq!(ago(-5), "<invalid>");
        assert_eq!(ago(119), "119s");
        assert_eq!(ago(200), "3m20s");
        assert_eq!(ago(240), "4m");
        assert_eq!(ago(25 * 60), "25m");
        assert_eq!(ago(5 * 3600 + 600), "5h10m");
        assert_eq!(ago(3 * 3600), "3h");
        assert_eq!(ago(20 * 3600), "20h");
        assert_eq!(ago(76 * 3600), "3d4h");
        assert_eq!(ago(90 * 86400), "90d");
        assert_eq!(ago(760 * 86400), "2y30d");
        assert_eq!(ago(9 * 365 * 86400), "9y");
    }

    #[test]
    fn tags_drop_registry_and_repository() {
        assert_eq!(short_tags(""), "<none>");
        assert_eq!(
            short_tags("127.0.0.1:5000/a/b:v2,docker.io/library/nginx:1.27,quay.io/x:1.27"),
            "1.27,v2"
        );
    }

    #[test]
    fn table_has_the_columns_and_rows() {
        let image = Image {
            metadata: ObjectMeta {
                name: Some("sha256:abc".into()),
                creation_timestamp: Some(Time(at("2024-05-31T23:00:00Z"))),
                annotations: Some(BTreeMap::from([
                    (
                        ANNOTATION_TAGS.to_owned(),
                        "docker.io/library/nginx:1.27".to_owned(),
                    ),
                    (
                        ANNOTATION_LAST_PULLED.to_owned(),
                        "2024-05-31T23:59:00Z".to_owned(),
                    ),
                ])),
                ..Default::default()
            },
            docker_image_reference: "docker.io/library/nginx@sha256:abc".into(),
            ..Default::default()
        };
        let meta = ListMeta {
            resource_version: Some("7".into()),
            ..Default::default()
        };
        let format = TableFormat {
            version: "v1",
            include: IncludeObject::Metadata,
        };
        let t = table(&[image], meta, format, at("2024-06-01T00:00:00Z"));
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        let names: Vec<_> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_uppercase())
            .collect();
        assert_eq!(
            names,
            ["NAME", "REFERENCE", "TAGS", "SIZE", "LAST-PULLED", "AGE"]
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "sha256:abc",
                "docker.io/library/nginx@sha256:abc",
                "1.27",
                "0B",
                "60s",
                "60m"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "sha256:abc");
    }
}
