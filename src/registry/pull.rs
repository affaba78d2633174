//! Pulling a whole image into the cache without a client: the top manifest, the child manifests
//! of an index (optionally only some platforms) and every config and layer blob.
//!
//! Everything goes through the handlers' own paths (tag TTL, single flight, digest
//! verification, metrics), so a preload running next to client pulls never fetches twice.
//! With peers that do not keep every copy (`peering.nonOwnerBlobs: proxy` or `hot`), a replica
//! preloads only the blobs it owns: every replica runs the same preload, so each blob lands on
//! its owner once.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use futures_util::StreamExt;

use super::blobs::Progress;
use super::error::RegistryError;
use super::{AppState, manifests};
use crate::digest::Digest;
use crate::metrics::{Kind, Lookup};
use crate::reference::{Reference, RepoPath};
use crate::store::{BlobRef, ManifestContent, Platform, is_index_media_type, parse_manifest};

/// Blob downloads of one image running at the same time.
const PARALLEL_BLOBS: usize = 4;
/// Bound on the manifests one pull may visit (nested indexes, many platforms).
const MAX_MANIFESTS: usize = 1000;

/// What one [`pull_image`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullSummary {
    /// The digest the reference resolved to.
    pub digest: Digest,
    pub media_type: String,
    pub manifests_fetched: u64,
    pub manifests_cached: u64,
    pub blobs_fetched: u64,
    pub blobs_cached: u64,
    /// Manifest and blob bytes fetched from the upstream.
    pub bytes_fetched: u64,
    /// Bytes of the blobs that were already cached.
    pub bytes_cached: u64,
    /// Blobs left to the peer that owns them (replicas that keep no copy of what they do not own).
    pub blobs_on_peers: u64,
    /// Index children left out by the platform filter.
    pub platforms_skipped: u64,
}

/// Whether `candidate` (an index entry's platform) is one of `wanted`; an empty filter wants
/// everything. A filter without a variant matches every variant; a missing variant on 64-bit
/// and 32-bit ARM means the usual one (v8, v7), as containerd reads it.
pub fn platform_matches(wanted: &[Platform], candidate: Option<&Platform>) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let Some(c) = candidate else {
        return false;
    };
    let default_variant = |arch: &str| match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    };
    wanted.iter().any(|w| {
        w.os.eq_ignore_ascii_case(&c.os)
            && w.architecture.eq_ignore_ascii_case(&c.architecture)
            && match &w.variant {
                None => true,
                Some(v) => c
                    .variant
                    .as_deref()
                    .or(default_variant(&c.architecture))
                    .is_some_and(|cv| cv.eq_ignore_ascii_case(v)),
            }
    })
}

/// Pulls `reference` of `repo` into the cache with everything it needs. `platforms` filters the
/// children of an index (empty: all of them).
pub async fn pull_image(
    state: &Arc<AppState>,
    repo: &RepoPath,
    reference: Reference,
    platforms: &[Platform],
) -> Result<PullSummary, RegistryError> {
    pull_image_observed(state, repo, reference, platforms, &|_| {}).await
}

/// [`pull_image`], reporting upstream bytes as they are written to the cache (for a progress
/// display).
pub async fn pull_image_observed(
    state: &Arc<AppState>,
    repo: &RepoPath,
    reference: Reference,
    platforms: &[Platform],
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<PullSummary, RegistryError> {
    let top = resolve(state, repo, reference.clone()).await?;
    let mut summary = PullSummary {
        digest: top.content.digest.clone(),
        media_type: top.content.media_type.to_string(),
        manifests_fetched: 0,
        manifests_cached: 0,
        blobs_fetched: 0,
        blobs_cached: 0,
        bytes_fetched: 0,
        bytes_cached: 0,
        blobs_on_peers: 0,
        platforms_skipped: 0,
    };
    let mut seen_manifests = HashSet::from([top.content.digest.clone()]);
    let mut seen_blobs = HashSet::new();
    let mut blobs: Vec<BlobRef> = Vec::new();
    let mut queue = VecDeque::from([top]);
    while let Some(m) = queue.pop_front() {
        summary.count_manifest(&m, on_bytes);
        let parsed =
            parse_manifest(&m.content.bytes, Some(&m.content.media_type)).map_err(|e| {
                RegistryError::BadUpstream(format!("manifest {}: {e}", m.content.digest))
            })?;
        let mut wanted_children = 0;
        for child in &parsed.children {
            // Nested indexes carry no platform: descend and filter their children instead.
            if !is_index_media_type(&child.media_type)
                && !platform_matches(platforms, child.platform.as_ref())
            {
                summary.platforms_skipped += 1;
                continue;
            }
            wanted_children += 1;
            if !seen_manifests.insert(child.digest.clone()) {
                continue;
            }
            if seen_manifests.len() > MAX_MANIFESTS {
                return Err(RegistryError::BadUpstream(format!(
                    "{repo}:{reference} has more than {MAX_MANIFESTS} manifests"
                )));
            }
            queue.push_back(resolve(state, repo, Reference::Digest(child.digest.clone())).await?);
        }
        if !parsed.children.is_empty() && wanted_children == 0 {
            let list: Vec<String> = platforms.iter().map(Platform::to_string).collect();
            return Err(RegistryError::NotFound(format!(
                "{repo}:{reference} has no manifest for platform {}",
                list.join(", ")
            )));
        }
        for b in parsed.config.into_iter().chain(parsed.layers) {
            // Non-distributable (foreign) layers live outside the registry by definition.
            if b.media_type.contains("nondistributable") || b.media_type.contains("foreign") {
                continue;
            }
            if seen_blobs.insert(b.digest.clone()) {
                blobs.push(b);
            }
        }
    }
    let mut fetches = futures_util::stream::iter(
        blobs
            .iter()
            .map(|b| ensure_blob(state, repo, &b.digest, on_bytes)),
    )
    .buffer_unordered(PARALLEL_BLOBS);
    while let Some(result) = fetches.next().await {
        match result? {
            BlobOutcome::Cached(size) => {
                summary.blobs_cached += 1;
                summary.bytes_cached += size;
            }
            BlobOutcome::Fetched(size) => {
                summary.blobs_fetched += 1;
                summary.bytes_fetched += size;
            }
            BlobOutcome::OnPeer => summary.blobs_on_peers += 1,
        }
    }
    Ok(summary)
}

impl PullSummary {
    fn count_manifest(&mut self, m: &Resolved, on_bytes: &(dyn Fn(u64) + Sync)) {
        if m.was_cached {
            self.manifests_cached += 1;
        } else {
            let len = m.content.bytes.len() as u64;
            self.manifests_fetched += 1;
            self.bytes_fetched += len;
            on_bytes(len);
        }
    }
}

struct Resolved {
    content: ManifestContent,
    was_cached: bool,
}

/// A manifest through the client code path, noting whether the cache already had it.
async fn resolve(
    state: &Arc<AppState>,
    repo: &RepoPath,
    reference: Reference,
) -> Result<Resolved, RegistryError> {
    let before = match &reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(t) => state.store.resolve_tag(repo, t).map(|e| e.digest),
    }
    .filter(|d| state.store.has_manifest(d));
    let (content, _) = match &reference {
        Reference::Digest(d) => manifests::by_digest(state, repo, d, true).await?,
        Reference::Tag(t) => manifests::by_tag(state, repo, t, true).await?,
    };
    Ok(Resolved {
        was_cached: before.as_ref() == Some(&content.digest),
        content,
    })
}

enum BlobOutcome {
    Cached(u64),
    Fetched(u64),
    /// Owned by a peer, and this replica keeps no copy of what it does not own.
    OnPeer,
}

/// Makes sure a blob is committed to the cache: joins (or starts) the same single-flight fetch
/// a client GET would, and waits until it is verified and committed.
async fn ensure_blob(
    state: &Arc<AppState>,
    repo: &RepoPath,
    digest: &Digest,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<BlobOutcome, RegistryError> {
    if let Some(size) = state.store.blob_size(digest) {
        state.metrics.lookup(Kind::blob, Lookup::hit);
        return Ok(BlobOutcome::Cached(size));
    }
    if let Some(peers) = &state.peers
        && !peers.keeps_blobs()
        && !peers.owns(digest)
    {
        return Ok(BlobOutcome::OnPeer);
    }
    if state.config.air_gapped {
        return Err(RegistryError::BlobUnknown);
    }
    state.metrics.lookup(Kind::blob, Lookup::miss);
    let mut source = state
        .blob_fetches
        .join_or_start(state, repo, digest, true)?;
    let mut reported = 0u64;
    let size = loop {
        let progress = source.progress.borrow_and_update().clone();
        match progress {
            Progress::Connecting => {}
            Progress::Streaming { written, .. } => {
                on_bytes(written.saturating_sub(reported));
                reported = reported.max(written);
            }
            Progress::Done { size } => {
                on_bytes(size.saturating_sub(reported));
                break size;
            }
            Progress::Failed(e) => return Err(e),
        }
        // A closed channel still delivers its last value first, so Done is never missed.
        if source.progress.changed().await.is_err() {
            return Err(RegistryError::Internal(format!(
                "fetch of blob {digest} ended without a result"
            )));
        }
    };
    // Done is only sent after the commit; a prune racing with the load could still remove it.
    if state.store.blob_size(digest).is_none() {
        return Err(RegistryError::Internal(format!(
            "blob {digest} was fetched but is not in the cache"
        )));
    }
    Ok(BlobOutcome::Fetched(size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use bytes::Bytes;

    use crate::config::{Config, RegistryConfig};
    use crate::metrics::Metrics;
    use crate::reference::InvalidPlatform;
    use crate::store::{DOCKER_MANIFEST, OCI_INDEX, Store};
    use crate::upstream::Upstreams;

    fn parse_platform(s: &str) -> Result<Platform, InvalidPlatform> {
        s.parse()
    }

    #[test]
    fn platforms_parse() {
        let p = parse_platform("linux/arm64").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
        assert_eq!(p.variant, None);
        assert_eq!(
            parse_platform("linux/arm/v7").unwrap().to_string(),
            "linux/arm/v7"
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64", ""] {
            assert!(parse_platform(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms_match() {
        let p = |s| parse_platform(s).unwrap();
        let arm64v8 = p("linux/arm64/v8");
        assert!(platform_matches(&[], None));
        assert!(platform_matches(&[p("linux/arm64")], Some(&arm64v8)));
        assert!(platform_matches(
            &[p("linux/arm64/v8")],
            Some(&p("linux/arm64"))
        ));
        assert!(!platform_matches(
            &[p("linux/arm64")],
            Some(&p("linux/amd64"))
        ));
        assert!(!platform_matches(
            &[p("linux/arm/v6")],
            Some(&p("linux/arm"))
        ));
        assert!(platform_matches(
            &[p("windows/amd64"), p("linux/amd64")],
            Some(&p("linux/amd64"))
        ));
        assert!(!platform_matches(&[p("linux/amd64")], None));
    }

    /// A tiny upstream: manifests by tag or digest, blobs by digest, and a count of blob GETs.
    #[derive(Default)]
    struct Fake {
        manifests: HashMap<String, (String, Bytes)>,
        blobs: HashMap<String, Bytes>,
        blob_gets: Mutex<Vec<String>>,
    }

    async fn fake_manifest(
        State(f): State<Arc<Fake>>,
        Path((_repo, r)): Path<(String, String)>,
    ) -> axum::response::Response {
        match f.manifests.get(&r) {
            Some((mt, b)) => {
                let mut h = HeaderMap::new();
                h.insert("content-type", mt.parse().unwrap());
                let d = Digest::sha256_of(b).to_string();
                h.insert("docker-content-digest", d.parse().unwrap());
                (h, b.clone()).into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    async fn fake_blob(
        State(f): State<Arc<Fake>>,
        Path((_repo, d)): Path<(String, String)>,
    ) -> axum::response::Response {
        f.blob_gets.lock().unwrap().push(d.clone());
        match f.blobs.get(&d) {
            Some(b) => b.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }

    fn desc(mt: &str, b: &[u8]) -> serde_json::Value {
        serde_json::json!({"mediaType": mt, "size": b.len(), "digest": Digest::sha256_of(b).to_string()})
    }

    /// A two-platform index: amd64 and arm64/v8 manifests sharing one layer.
    fn fake_image(f: &mut Fake) -> (Bytes, Vec<Bytes>) {
        let shared = Bytes::from_static(b"shared layer");
        let mut children = Vec::new();
        let mut entries = Vec::new();
        for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
            let config = Bytes::from(format!(r#"{{"os":"linux","architecture":"{arch}"}}"#));
            let own = Bytes::from(format!("layer for {arch}"));
            let m = serde_json::json!({
                "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                "config": desc("application/vnd.docker.container.image.v1+json", &config),
                "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &shared),
                           desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &own)],
            });
            let m = Bytes::from(serde_json::to_vec(&m).unwrap());
            for b in [&config, &own, &shared] {
                f.blobs
                    .insert(Digest::sha256_of(b).to_string(), (*b).clone());
            }
            f.manifests.insert(
                Digest::sha256_of(&m).to_string(),
                (DOCKER_MANIFEST.into(), m.clone()),
            );
            let mut e = desc(DOCKER_MANIFEST, &m);
            e["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant {
                e["platform"]["variant"] = v.into();
            }
            entries.push(e);
            children.push(m);
        }
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        let index = Bytes::from(serde_json::to_vec(&index).unwrap());
        f.manifests
            .insert("v1".into(), (OCI_INDEX.into(), index.clone()));
        f.manifests.insert(
            Digest::sha256_of(&index).to_string(),
            (OCI_INDEX.into(), index.clone()),
        );
        (index, children)
    }

    async fn start_fake(f: Fake) -> (Arc<Fake>, String) {
        let f = Arc::new(f);
        let app = axum::Router::new()
            .route("/v2/{*rest}", axum::routing::get(route_fake))
            .with_state(f.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (f, format!("http://{addr}"))
    }

    async fn route_fake(
        state: State<Arc<Fake>>,
        Path(rest): Path<String>,
    ) -> axum::response::Response {
        if let Some((repo, r)) = rest.rsplit_once("/manifests/") {
            return fake_manifest(state, Path((repo.into(), r.into()))).await;
        }
        if let Some((repo, d)) = rest.rsplit_once("/blobs/") {
            return fake_blob(state, Path((repo.into(), d.into()))).await;
        }
        StatusCode::NOT_FOUND.into_response()
    }

    fn state_for(dir: &std::path::Path, endpoint: &str) -> Arc<AppState> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config {
            registries: vec![RegistryConfig {
                endpoint: Some(endpoint.into()),
                ..RegistryConfig::named("upstream.test")
            }],
            ..Config::default()
        };
        let (store, _) = Store::open(dir).unwrap();
        let metrics = Arc::new(Metrics::new());
        let upstreams = Upstreams::new(&config, metrics.upstream_retries.clone()).unwrap();
        AppState::new(Arc::new(config), Arc::new(store), upstreams, metrics)
    }

    fn repo() -> RepoPath {
        RepoPath {
            registry: "upstream.test".into(),
            repository: "team/app".into(),
        }
    }

    #[tokio::test]
    async fn pulls_everything_then_nothing() {
        let mut f = Fake::default();
        let (index, children) = fake_image(&mut f);
        let (f, url) = start_fake(f).await;
        let dir = tempfile::tempdir().unwrap();
        let state = state_for(dir.path(), &url);
        let bytes = std::sync::atomic::AtomicU64::new(0);
        let s = pull_image_observed(&state, &repo(), Reference::Tag("v1".into()), &[], &|n| {
            bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
        assert_eq!(s.digest, Digest::sha256_of(&index));
        assert_eq!((s.manifests_fetched, s.manifests_cached), (3, 0));
        // Two configs, two own layers, one shared layer.
        assert_eq!((s.blobs_fetched, s.blobs_cached), (5, 0));
        assert_eq!(s.bytes_fetched, bytes.into_inner());
        assert_eq!(f.blob_gets.lock().unwrap().len(), 5);
        for c in &children {
            assert!(state.store.has_manifest(&Digest::sha256_of(c)));
        }
        for d in f.blobs.keys() {
            assert!(state.store.blob_size(&d.parse().unwrap()).is_some(), "{d}");
        }
        let again = pull_image(&state, &repo(), Reference::Tag("v1".into()), &[])
            .await
            .unwrap();
        assert_eq!((again.manifests_fetched, again.manifests_cached), (0, 3));
        assert_eq!((again.blobs_fetched, again.blobs_cached), (0, 5));
        assert_eq!(again.bytes_fetched, 0);
        assert_eq!(f.blob_gets.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn platform_filter_takes_one_child() {
        let mut f = Fake::default();
        let (index, children) = fake_image(&mut f);
        let (f, url) = start_fake(f).await;
        let dir = tempfile::tempdir().unwrap();
        let state = state_for(dir.path(), &url);
        let d = Reference::Digest(Digest::sha256_of(&index));
        let s = pull_image(
            &state,
            &repo(),
            d.clone(),
            &[parse_platform("linux/arm64").unwrap()],
        )
        .await
        .unwrap();
        assert_eq!(s.manifests_fetched, 2);
        assert_eq!(s.platforms_skipped, 1);
        assert_eq!(s.blobs_fetched, 3);
        assert!(!state.store.has_manifest(&Digest::sha256_of(&children[0])));
        assert!(state.store.has_manifest(&Digest::sha256_of(&children[1])));
        assert!(!f.blob_gets.lock().unwrap().iter().any(|g| {
            f.blobs
                .get(g)
                .is_some_and(|b| b.as_ref() == b"layer for amd64")
        }));
        let none = pull_image(
            &state,
            &repo(),
            d,
            &[parse_platform("linux/s390x").unwrap()],
        )
        .await;
        assert!(
            matches!(&none, Err(RegistryError::NotFound(m)) if m.contains("linux/s390x")),
            "{none:?}"
        );
    }

    #[tokio::test]
    async fn missing_image_is_manifest_unknown() {
        let (_f, url) = start_fake(Fake::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let state = state_for(dir.path(), &url);
        let r = pull_image(&state, &repo(), Reference::Tag("nope".into()), &[]).await;
        assert_eq!(r, Err(RegistryError::ManifestUnknown));
    }
}
