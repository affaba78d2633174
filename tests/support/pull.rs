//! Pulling a known image over plain HTTP the way a container runtime does, and
//! checking every byte against the generated source.

use std::path::Path;

use super::http::{Resp, get};
use super::image::{CONTAINERD_ACCEPT, Image};
use super::{files_under, sha256_digest};

/// Where to pull from: registry base URL, repository path as it appears in the
/// URL (e.g. `upstream.test/team/app`), and an optional containerd `?ns=` value
/// (already percent-encoded).
#[derive(Clone, Debug)]
pub struct Repo {
    pub base: String,
    pub path: String,
    pub ns: Option<String>,
}

impl Repo {
    pub fn new(base: &str, path: &str) -> Self {
        Repo {
            base: base.trim_end_matches('/').into(),
            path: path.into(),
            ns: None,
        }
    }

    pub fn with_ns(mut self, ns: &str) -> Self {
        self.ns = Some(ns.into());
        self
    }

    fn query(&self) -> String {
        self.ns
            .as_ref()
            .map(|n| format!("?ns={n}"))
            .unwrap_or_default()
    }

    pub fn manifest_url(&self, reference: &str) -> String {
        format!(
            "{}/v2/{}/manifests/{reference}{}",
            self.base,
            self.path,
            self.query()
        )
    }

    pub fn blob_url(&self, digest: &str) -> String {
        format!(
            "{}/v2/{}/blobs/{digest}{}",
            self.base,
            self.path,
            self.query()
        )
    }

    pub fn tags_url(&self, query: &str) -> String {
        let q = [
            self.ns.as_ref().map(|n| format!("ns={n}")),
            (!query.is_empty()).then(|| query.to_string()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("&");
        format!(
            "{}/v2/{}/tags/list{}{q}",
            self.base,
            self.path,
            if q.is_empty() { "" } else { "?" }
        )
    }
}

/// GETs a manifest and asserts status 200, digest header, media type and exact bytes.
pub async fn get_manifest_verify(
    c: &reqwest::Client,
    repo: &Repo,
    reference: &str,
    image: &Image,
    digest: &str,
) -> Resp {
    let url = repo.manifest_url(reference);
    let r = get(c, &url, &[("Accept", CONTAINERD_ACCEPT)]).await;
    assert_eq!(r.status, 200, "GET {url}: {}", r.text());
    assert_eq!(r.header("docker-content-digest"), Some(digest), "GET {url}");
    let desc = image
        .manifests()
        .into_iter()
        .find(|d| d.digest == digest)
        .expect("digest belongs to the image");
    assert_eq!(
        r.header("content-type"),
        Some(desc.media_type.as_str()),
        "GET {url}"
    );
    assert!(
        r.body == image.read(digest),
        "GET {url}: manifest bytes differ from the source"
    );
    r
}

/// GETs a blob and asserts status 200 and exact bytes.
pub async fn get_blob_verify(c: &reqwest::Client, repo: &Repo, digest: &str, image: &Image) {
    let url = repo.blob_url(digest);
    let r = get(c, &url, &[]).await;
    assert_eq!(
        r.status,
        200,
        "GET {url}: {}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
    );
    assert_eq!(sha256_digest(&r.body), digest, "GET {url}: body digest");
    assert!(r.body == image.read(digest), "GET {url}: bytes differ");
}

/// Pulls `reference` (tag or digest) of `image`: the top manifest, every child
/// manifest of an index, and every config and layer blob.
pub async fn pull_verify(c: &reqwest::Client, repo: &Repo, reference: &str, image: &Image) {
    get_manifest_verify(c, repo, reference, image, image.digest()).await;
    if image.is_index() {
        for ch in &image.children {
            get_manifest_verify(c, repo, &ch.manifest.digest, image, &ch.manifest.digest).await;
        }
    }
    for b in image.blobs() {
        get_blob_verify(c, repo, &b.digest, image).await;
    }
}

/// Checks every file under `dir` named like a sha256 hex digest (optionally with
/// a `sha256:`/`sha256-` prefix) hashes to its name; returns how many were checked.
/// Layout-agnostic, so it only catches corrupt content stored under its digest.
pub fn verify_digest_named_files(dir: &Path) -> usize {
    let mut n = 0;
    for f in files_under(dir) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let hex = name
            .trim_start_matches("sha256:")
            .trim_start_matches("sha256-");
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let data = std::fs::read(&f).unwrap();
            assert_eq!(
                sha256_digest(&data),
                format!("sha256:{hex}"),
                "corrupt cache file {}",
                f.display()
            );
            n += 1;
        }
    }
    n
}
