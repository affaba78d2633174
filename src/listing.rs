//! Listing the cache: the rows behind `imagecache list`, `/cmd/manifest/list`,
//! `/cmd/image/list` and `/cmd/blob/list`, and their columnar text form. Pure.
//!
//! Layer: rows and columns over the prune engine's inventory, shared by the CLI and the admin
//! API; it imports neither of them.

use jiff::Timestamp;
use regex::Regex;
use serde::Serialize;

use crate::digest::Digest;
use crate::prune::{Entry, Inventory};

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRow {
    pub url: String,
    pub digest: Digest,
    pub media_type: String,
    /// Manifest, config and layers.
    pub size: u64,
    pub created: Timestamp,
    pub last_pulled: Option<Timestamp>,
    pub pull_count: u64,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageRow {
    pub url: String,
    pub manifest: Digest,
    pub blob: Digest,
    pub size: u64,
    pub media_type: String,
    pub cached: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlobRow {
    pub digest: Digest,
    pub size: u64,
    pub ref_count: u32,
}

/// `-1` (no limit) or a count; the seed's default is 50.
pub fn limit(count: Option<i64>) -> Option<usize> {
    match count {
        None => Some(50),
        Some(n) if n < 0 => None,
        Some(n) => Some(n as usize),
    }
}

fn matches(e: &Entry, patterns: &[Regex]) -> bool {
    patterns.is_empty()
        || e.urls()
            .iter()
            .any(|u| patterns.iter().any(|p| p.is_match(u)))
}

fn sorted(inv: &Inventory) -> Vec<&Entry> {
    let mut v: Vec<&Entry> = inv.manifests.iter().collect();
    // Cached: a URL is formatted from the tags and references, once per entry, not per comparison.
    v.sort_by_cached_key(|a| a.primary_url());
    v
}

/// Rows are made as they are read, so a caller streaming them never holds them all.
pub fn manifests<'a>(
    inv: &'a Inventory,
    patterns: &'a [Regex],
    count: Option<usize>,
) -> impl Iterator<Item = ManifestRow> + 'a {
    sorted(inv)
        .into_iter()
        .filter(|e| matches(e, patterns))
        .take(count.unwrap_or(usize::MAX))
        .map(|e| ManifestRow {
            url: e.primary_url(),
            digest: e.record.digest.clone(),
            media_type: e.record.media_type.to_string(),
            size: e.record.image_size(),
            created: e.record.created,
            last_pulled: e.record.last_pulled,
            pull_count: e.record.pull_count,
            tags: e.tags.iter().map(|(r, t)| format!("{r}:{t}")).collect(),
        })
}

/// Manifests and the blobs they reference; `digest` keeps images referencing a blob whose
/// digest contains it.
pub fn images<'a>(
    inv: &'a Inventory,
    patterns: &'a [Regex],
    digest: Option<&'a str>,
    count: Option<usize>,
) -> impl Iterator<Item = ImageRow> + 'a {
    sorted(inv)
        .into_iter()
        .filter(move |e| matches(e, patterns))
        .filter(move |e| {
            digest.is_none_or(|s| {
                let r = &e.record;
                r.config
                    .iter()
                    .chain(&r.layers)
                    .any(|b| b.digest.to_string().contains(s))
            })
        })
        .take(count.unwrap_or(usize::MAX))
        .flat_map(move |e| {
            let url = e.primary_url();
            let r = &e.record;
            r.config.iter().chain(&r.layers).map(move |b| ImageRow {
                url: url.clone(),
                manifest: r.digest.clone(),
                blob: b.digest.clone(),
                size: b.size,
                media_type: b.media_type.to_string(),
                cached: inv.blob_sizes.contains(&b.digest),
            })
        })
}

pub fn blobs(
    refs: Vec<(Digest, u64, u32)>,
    substr: Option<&str>,
    count: Option<usize>,
) -> impl Iterator<Item = BlobRow> + '_ {
    refs.into_iter()
        .filter(move |(d, _, _)| substr.is_none_or(|s| d.to_string().contains(s)))
        .take(count.unwrap_or(usize::MAX))
        .map(|(digest, size, ref_count)| BlobRow {
            digest,
            size,
            ref_count,
        })
}

/// `sha256:` and the first 12 hex digits, wherever a digest appears in `s`.
pub fn shorten_digests(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("sha256:").or_else(|| rest.find("sha512:")) {
        out.push_str(&rest[..i + 7]);
        let hex: String = rest[i + 7..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        out.push_str(&hex[..hex.len().min(12)]);
        rest = &rest[i + 7 + hex.len()..];
    }
    out.push_str(rest);
    out
}

/// Rows as whitespace-separated columns (`column -t` friendly); empty cells print `-`.
pub fn columns(header: Option<&[&str]>, rows: &[Vec<String>], short: bool) -> String {
    let mut out = String::new();
    if let Some(h) = header {
        out.push_str(&line(
            &h.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            short,
        ));
    }
    for r in rows {
        out.push_str(&line(r, short));
    }
    out
}

/// One row of cells: space-separated, `-` for an empty cell, newline-terminated.
pub fn line(cells: &[String], short: bool) -> String {
    let mut out = cells
        .iter()
        .map(|c| {
            if c.is_empty() {
                "-".to_owned()
            } else if short {
                shorten_digests(c)
            } else {
                c.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    out.push('\n');
    out
}

fn time(t: Option<Timestamp>) -> String {
    t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

pub const MANIFEST_HEADER: &[&str] = &[
    "URL",
    "DIGEST",
    "TYPE",
    "SIZE",
    "CREATED",
    "LAST-PULLED",
    "PULLS",
];
pub const IMAGE_HEADER: &[&str] = &["URL", "BLOB", "SIZE", "CACHED", "TYPE"];
pub const BLOB_HEADER: &[&str] = &["DIGEST", "SIZE", "REFS"];

/// A short name for the well-known manifest media types.
pub fn short_type(media_type: &str) -> &str {
    match media_type {
        crate::store::OCI_INDEX => "oci-index",
        crate::store::OCI_MANIFEST => "oci-manifest",
        crate::store::DOCKER_LIST => "docker-list",
        crate::store::DOCKER_MANIFEST => "docker-manifest",
        other => other,
    }
}

pub fn manifest_cells(r: &ManifestRow) -> Vec<String> {
    vec![
        r.url.clone(),
        r.digest.to_string(),
        short_type(&r.media_type).to_owned(),
        r.size.to_string(),
        time(Some(r.created)),
        time(r.last_pulled),
        r.pull_count.to_string(),
    ]
}

pub fn image_cells(r: &ImageRow) -> Vec<String> {
    vec![
        r.url.clone(),
        r.blob.to_string(),
        r.size.to_string(),
        if r.cached { "yes" } else { "no" }.to_owned(),
        r.media_type.clone(),
    ]
}

pub fn blob_cells(r: &BlobRow) -> Vec<String> {
    vec![
        r.digest.to_string(),
        r.size.to_string(),
        r.ref_count.to_string(),
    ]
}

/// The prune report as columns: decision, reason, reference, digest; totals as a comment.
pub fn report_text(r: &crate::api::Report, short: bool) -> String {
    let rows: Vec<Vec<String>> = r
        .items
        .iter()
        .map(|i| {
            vec![
                i.decision.to_string(),
                i.reason.clone(),
                i.reference.clone(),
                i.digest.to_string(),
            ]
        })
        .collect();
    let mut out = columns(
        Some(&["DECISION", "REASON", "REFERENCE", "DIGEST"]),
        &rows,
        short,
    );
    let verb = if r.dry_run { "would remove" } else { "removed" };
    out.push_str(&format!(
        "# {verb} {} manifests, {} blobs, {} bytes",
        r.totals.manifests, r.totals.blobs, r.totals.bytes
    ));
    for (reason, n) in &r.protected {
        out.push_str(&format!("; protected {reason}: {n}"));
    }
    for (reason, n) in &r.kept {
        out.push_str(&format!("; kept {reason}: {n}"));
    }
    out.push('\n');
    if let Some(why) = &r.refused {
        out.push_str(&format!("# {why}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_digests() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            shorten_digests(&format!("docker.io/x@{d} {d}")),
            "docker.io/x@sha256:abababababab sha256:abababababab"
        );
        assert_eq!(shorten_digests("no digest"), "no digest");
    }

    #[test]
    fn columns_fill_empty_cells() {
        let out = columns(Some(&["A", "B"]), &[vec!["x".into(), "".into()]], false);
        assert_eq!(out, "A B\nx -\n");
    }

    #[test]
    fn limits() {
        assert_eq!(limit(None), Some(50));
        assert_eq!(limit(Some(-1)), None);
        assert_eq!(limit(Some(3)), Some(3));
    }
}
