//! Manifests, tags and referrers: cache lookups, the tag TTL with stale-if-error, and the
//! single upstream fetch per (repository, reference).
//!
//! With peers, a manifest missed by digest is asked of its owner (then its previous owner)
//! before the upstream, verified against the digest before anything is served or stored (a
//! wrong answer costs the client nothing: the next source is asked). The owner asks only its
//! previous owner, cache only; its fetch is the one peers' requests join, and a relayed fetch
//! that falls back to the upstream joins it too, so a manifest is fetched upstream once. Tags stay per replica:
//! each replica resolves and revalidates its tags with the upstream (a `HEAD`) under its own
//! TTL, and fetches what a tag resolves to by digest, from the owner. Replicas keep every
//! manifest they serve: manifests are small and carry the tags and the per-replica views.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use jiff::Timestamp;

use super::error::RegistryError;
use super::{AppState, Query, upstream_failure};
use crate::digest::Digest;
use crate::metrics::{ContentSource, Kind, Lookup, Outcome, PeerFailure, RetryLabels, RetryReason};
use crate::peers::{Ask, Member, Peers};
use crate::reference::{Reference, RepoPath};
use crate::store::{DOCKER_LIST, DOCKER_MANIFEST, ManifestContent, OCI_INDEX, OCI_MANIFEST};
use crate::upstream::Upstream;

/// Largest manifest accepted from an upstream (the distribution spec's recommended minimum).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// What we ask upstreams for: every manifest type we can cache, so the cached copy is the
/// canonical one whatever the client accepts.
fn accept_header() -> HeaderMap {
    let mut h = HeaderMap::new();
    let all = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
    if let Ok(v) = HeaderValue::from_str(&all) {
        h.insert(header::ACCEPT, v);
    }
    h
}

/// A manifest request; with `relay`, a miss may be fetched from a peer.
pub async fn get(
    state: &Arc<AppState>,
    repo: &RepoPath,
    reference: Reference,
    head: bool,
    relay: bool,
) -> Result<Response, RegistryError> {
    let (content, source) = match &reference {
        Reference::Digest(d) => by_digest(state, repo, d, relay).await?,
        Reference::Tag(t) => by_tag(state, repo, t, relay).await?,
    };
    if !head {
        state.store.record_pull(&content.digest, Timestamp::now());
        let len = content.bytes.len() as u64;
        state
            .metrics
            .served_bytes
            .get_or_create(&crate::metrics::KindLabels {
                kind: Kind::manifest,
            })
            .inc_by(len);
        state.metrics.served(Kind::manifest, source);
        state
            .metrics
            .served_source_bytes
            .get_or_create(&crate::metrics::SourceLabels {
                kind: Kind::manifest,
                source,
            })
            .inc_by(len);
    }
    Ok(manifest_response(content, head))
}

fn manifest_response(content: ManifestContent, head: bool) -> Response {
    let len = content.bytes.len();
    let mut resp = if head {
        Body::empty()
    } else {
        Body::from(content.bytes)
    }
    .into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&content.digest.to_string()) {
        h.insert("docker-content-digest", v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", content.digest)) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// A manifest by digest, and where it came from. With `relay`, a miss may come from a peer.
pub(super) async fn by_digest(
    state: &Arc<AppState>,
    repo: &RepoPath,
    digest: &Digest,
    relay: bool,
) -> Result<(ManifestContent, ContentSource), RegistryError> {
    if let Some(c) = cached(state, digest)? {
        state.metrics.lookup(Kind::manifest, Lookup::hit);
        if !state.store.has_reference(digest, repo) {
            let (store, d, r) = (state.store.clone(), digest.clone(), repo.clone());
            tokio::task::spawn_blocking(move || store.add_reference(&d, &r)).await??;
        }
        return Ok((c, ContentSource::cache));
    }
    let relay = relay && state.peers.is_some();
    if state.config.air_gapped && !relay {
        return Err(RegistryError::ManifestUnknown);
    }
    state.metrics.lookup(Kind::manifest, Lookup::miss);
    fetch(state, repo, Reference::Digest(digest.clone()), relay).await
}

/// A manifest by tag, and where it came from. The tag itself is this replica's: resolved and
/// revalidated with the upstream under its own TTL.
pub(super) async fn by_tag(
    state: &Arc<AppState>,
    repo: &RepoPath,
    tag: &str,
    relay: bool,
) -> Result<(ManifestContent, ContentSource), RegistryError> {
    let relay = relay && state.peers.is_some();
    let Some(entry) = state.store.resolve_tag(repo, tag) else {
        if state.config.air_gapped {
            return Err(RegistryError::ManifestUnknown);
        }
        state.metrics.lookup(Kind::tag, Lookup::miss);
        return fetch(state, repo, Reference::Tag(tag.to_owned()), relay).await;
    };
    let age = Timestamp::now()
        .duration_since(entry.checked)
        .unsigned_abs();
    if (age < state.config.tag_ttl || state.config.air_gapped || entry.pinned)
        && let Some(c) = cached(state, &entry.digest)?
    {
        state.metrics.lookup(Kind::tag, Lookup::hit);
        return Ok((c, ContentSource::cache));
    }
    if state.config.air_gapped {
        return Err(RegistryError::ManifestUnknown);
    }
    let key = (
        repo.clone(),
        flight_key(&format!("revalidate:{tag}"), relay),
    );
    let (st, repo, tag) = (state.clone(), repo.clone(), tag.to_owned());
    state
        .manifest_flights
        .run(key, move || async move {
            revalidate(&st, &repo, &tag, entry.digest, relay).await
        })
        .await
}

/// The single-flight key of a manifest fetch: relayed fetches (which may wait on a peer's fetch)
/// are never joined by a peer's request, so replicas never wait on each other in a circle.
fn flight_key(reference: &str, relay: bool) -> String {
    if relay {
        format!("relay:{reference}")
    } else {
        reference.to_owned()
    }
}

/// A cached manifest: hot ones come from memory, and a read from disk is small enough to do
/// inline.
fn cached(state: &AppState, digest: &Digest) -> Result<Option<ManifestContent>, RegistryError> {
    Ok(state.store.manifest(digest)?)
}

/// A tag past its TTL: HEAD upstream; unchanged -> touch, changed -> fetch, 404 -> forget,
/// unreachable -> serve the cached digest (stale-if-error).
async fn revalidate(
    state: &Arc<AppState>,
    repo: &RepoPath,
    tag: &str,
    cached_digest: Digest,
    relay: bool,
) -> Result<(ManifestContent, ContentSource), RegistryError> {
    let cached_ref = &cached_digest;
    let head = async {
        let upstream = state.upstreams.get(&repo.registry)?;
        Ok::<_, RegistryError>(
            upstream
                .send(
                    Method::HEAD,
                    &repo.repository,
                    &format!("manifests/{tag}"),
                    accept_header(),
                )
                .await?,
        )
    }
    .await;
    let stale = |reason: String| async move {
        let c = cached(state, cached_ref)?.ok_or(RegistryError::ManifestUnknown)?;
        tracing::warn!(%repo, tag, %reason, "upstream unavailable; serving cached tag");
        state.metrics.lookup(Kind::tag, Lookup::stale);
        Ok((c, ContentSource::cache))
    };
    let resp = match head {
        Ok(r) => r,
        Err(e) => return stale(e.to_string()).await,
    };
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        let (store, r, t) = (state.store.clone(), repo.clone(), tag.to_owned());
        tokio::task::spawn_blocking(move || store.remove_tag(&r, &t)).await??;
        state.metrics.upstream(Kind::manifest, Outcome::not_found);
        return Err(RegistryError::ManifestUnknown);
    }
    if !status.is_success() {
        return stale(format!("upstream answered {status}")).await;
    }
    let upstream_digest = header_digest(resp.headers());
    if upstream_digest.as_ref() == Some(&cached_digest)
        && let Some(c) = cached(state, &cached_digest)?
    {
        let (store, r, t, d) = (
            state.store.clone(),
            repo.clone(),
            tag.to_owned(),
            cached_digest.clone(),
        );
        tokio::task::spawn_blocking(move || store.set_tag(&r, &t, &d, Timestamp::now())).await??;
        state.metrics.lookup(Kind::tag, Lookup::revalidated);
        return Ok((c, ContentSource::cache));
    }
    state.metrics.lookup(Kind::tag, Lookup::miss);
    match upstream_digest {
        // The tag moved: what it resolves to now is fetched once, by its owner.
        Some(d) if relay => tag_by_digest(state, repo, tag, d).await,
        _ => fetch_now(state, repo, &Reference::Tag(tag.to_owned()), relay).await,
    }
}

/// One fetch per (repository, reference), shared by all waiters.
async fn fetch(
    state: &Arc<AppState>,
    repo: &RepoPath,
    reference: Reference,
    relay: bool,
) -> Result<(ManifestContent, ContentSource), RegistryError> {
    // The owner of a digest never waits on a peer's fetch: its fetch is a direct one.
    let relay = relay
        && match (&reference, &state.peers) {
            (Reference::Digest(d), Some(p)) => !p.owns(d),
            _ => true,
        };
    let key = (repo.clone(), flight_key(&reference.to_string(), relay));
    let (st, repo) = (state.clone(), repo.clone());
    state
        .manifest_flights
        .run(key, move || async move {
            fetch_now(&st, &repo, &reference, relay).await
        })
        .await
}

async fn fetch_now(
    state: &Arc<AppState>,
    repo: &RepoPath,
    reference: &Reference,
    relay: bool,
) -> Result<(ManifestContent, ContentSource), RegistryError> {
    if let Some(peers) = &state.peers {
        match reference {
            Reference::Digest(d) => {
                let plan = peers.plan(d);
                for (member, ask) in plan.iter().filter(|(_, a)| relay || *a == Ask::Cached) {
                    match from_peer(state, peers, (member, *ask), repo, d).await {
                        PeerManifest::Got(content) => return Ok((content, ContentSource::peer)),
                        PeerManifest::NotFound => return Err(RegistryError::ManifestUnknown),
                        PeerManifest::Skip => {}
                    }
                }
                if relay && !state.config.air_gapped {
                    // Peers' requests join only the direct fetch: join it, so the upstream is
                    // asked once here.
                    return fetch_direct(state, repo, reference.clone()).await;
                }
            }
            Reference::Tag(t) if relay && !state.config.air_gapped => {
                // This replica resolves the tag; what it resolves to is fetched by digest,
                // once in the cluster, by its owner.
                match resolve_upstream_tag(state, repo, t).await {
                    TagHead::Digest(d) => return tag_by_digest(state, repo, t, d).await,
                    TagHead::NotFound => {
                        state.metrics.upstream(Kind::manifest, Outcome::not_found);
                        return Err(RegistryError::ManifestUnknown);
                    }
                    TagHead::Unknown => {}
                }
            }
            Reference::Tag(_) => {}
        }
        if state.config.air_gapped {
            return Err(RegistryError::ManifestUnknown);
        }
    }
    state.metrics.inflight_fetches.inc();
    let result = fetch_inner(state, repo, reference).await;
    state.metrics.inflight_fetches.dec();
    let outcome = match &result {
        Ok(_) => Outcome::ok,
        Err(RegistryError::ManifestUnknown) => Outcome::not_found,
        Err(_) => Outcome::error,
    };
    state.metrics.upstream(Kind::manifest, outcome);
    result.map(|c| (c, ContentSource::upstream))
}

/// The direct fetch of `reference` (joined or started). Boxed: a relayed fetch goes through it.
fn fetch_direct<'a>(
    state: &'a Arc<AppState>,
    repo: &'a RepoPath,
    reference: Reference,
) -> futures_util::future::BoxFuture<'a, Result<(ManifestContent, ContentSource), RegistryError>> {
    Box::pin(fetch(state, repo, reference, false))
}

/// What a `HEAD` of a tag told.
enum TagHead {
    Digest(Digest),
    NotFound,
    /// No answer, or one without a digest: fetch by tag instead.
    Unknown,
}

async fn resolve_upstream_tag(state: &AppState, repo: &RepoPath, tag: &str) -> TagHead {
    let Ok(upstream) = state.upstreams.get(&repo.registry) else {
        return TagHead::Unknown;
    };
    let Ok(resp) = upstream
        .send(
            Method::HEAD,
            &repo.repository,
            &format!("manifests/{tag}"),
            accept_header(),
        )
        .await
    else {
        return TagHead::Unknown;
    };
    if resp.status() == StatusCode::NOT_FOUND {
        return TagHead::NotFound;
    }
    resp.status()
        .is_success()
        .then(|| header_digest(resp.headers()))
        .flatten()
        .map_or(TagHead::Unknown, TagHead::Digest)
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok())
}

/// Points `tag` at `digest` after fetching the manifest by digest (from the cache, its owner
/// or the upstream). Boxed: a fetch by tag goes through a fetch by digest.
fn tag_by_digest<'a>(
    state: &'a Arc<AppState>,
    repo: &'a RepoPath,
    tag: &'a str,
    digest: Digest,
) -> futures_util::future::BoxFuture<'a, Result<(ManifestContent, ContentSource), RegistryError>> {
    Box::pin(async move {
        let (content, source) = by_digest(state, repo, &digest, true).await?;
        let (store, r, t) = (state.store.clone(), repo.clone(), tag.to_owned());
        tokio::task::spawn_blocking(move || store.set_tag(&r, &t, &digest, Timestamp::now()))
            .await??;
        Ok((content, source))
    })
}

/// How asking one peer for a manifest ended.
enum PeerManifest {
    /// Verified and stored.
    Got(ManifestContent),
    /// The peer answered 404: its upstream does not have it either.
    NotFound,
    /// The peer could not be used; ask the next source.
    Skip,
}

/// Asks `member` for manifest `digest`, verifies the answer and stores it.
async fn from_peer(
    state: &Arc<AppState>,
    peers: &Peers,
    (member, ask): (&Member, Ask),
    repo: &RepoPath,
    digest: &Digest,
) -> PeerManifest {
    let reference = Reference::Digest(digest.clone());
    let resp = match peers
        .send(
            member,
            Method::GET,
            repo,
            &format!("manifests/{digest}"),
            ask,
            accept_header(),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            if let Some(reason) = e.reason() {
                peers.failed(member, reason, &e);
            }
            return PeerManifest::Skip;
        }
    };
    match resp.status() {
        StatusCode::OK => {}
        // A 404 to a cache-only ask says only that the peer does not hold it.
        StatusCode::NOT_FOUND if ask == Ask::Cached => return PeerManifest::Skip,
        StatusCode::NOT_FOUND => return PeerManifest::NotFound,
        status => {
            peers.failed(member, PeerFailure::status, &format!("answered {status}"));
            return PeerManifest::Skip;
        }
    }
    let downloaded = match read_body(resp, repo, &reference, "peer").await {
        Ok(d) => d,
        Err(Download::Cut(e)) => {
            peers.failed(member, PeerFailure::cut, &e);
            return PeerManifest::Skip;
        }
        Err(Download::Failed(e)) => {
            peers.failed(member, PeerFailure::status, &e);
            return PeerManifest::Skip;
        }
    };
    state
        .metrics
        .peer_bytes
        .get_or_create(&crate::metrics::KindLabels {
            kind: Kind::manifest,
        })
        .inc_by(downloaded.bytes.len() as u64);
    let (bytes, content_type, digest) = match downloaded.verified(repo, &reference) {
        Ok(v) => v,
        Err(e) => {
            peers.failed(member, PeerFailure::digest, &e);
            return PeerManifest::Skip;
        }
    };
    let (store, repo) = (state.store.clone(), repo.clone());
    let stored = tokio::task::spawn_blocking(move || {
        store.put_manifest(
            &repo,
            None,
            &digest,
            content_type.as_deref(),
            &bytes,
            Timestamp::now(),
        )
    })
    .await;
    match stored {
        Ok(Ok(content)) => PeerManifest::Got(content),
        Ok(Err(e)) => {
            // Bytes that hash right but do not parse: the upstream decides.
            tracing::warn!(peer = %member.id, error = %e, "peer manifest cannot be stored");
            PeerManifest::Skip
        }
        Err(e) => {
            tracing::warn!(error = %e, "storing a peer manifest failed");
            PeerManifest::Skip
        }
    }
}

async fn fetch_inner(
    state: &Arc<AppState>,
    repo: &RepoPath,
    reference: &Reference,
) -> Result<ManifestContent, RegistryError> {
    let upstream = state.upstreams.get(&repo.registry)?;
    let upstream_bytes = state
        .metrics
        .upstream_bytes
        .get_or_create(&crate::metrics::KindLabels {
            kind: Kind::manifest,
        })
        .clone();
    // A transfer cut short or bytes that do not hash right may be the network's fault, not the
    // content's: a manifest is small, so it is simply fetched again within the retry budget.
    let mut tries = 0;
    let (bytes, content_type, digest) = loop {
        tries += 1;
        let downloaded = download(&upstream, repo, reference).await;
        if let Ok(d) = &downloaded {
            upstream_bytes.inc_by(d.bytes.len() as u64);
        }
        let failure = match downloaded.map(|d| d.verified(repo, reference)) {
            Ok(Ok(v)) => break v,
            Ok(Err(e)) => (e, RetryReason::bad_digest),
            Err(Download::Cut(e)) => (e, RetryReason::cut_transfer),
            Err(Download::Failed(e)) => return Err(e),
        };
        if tries >= upstream.retry_config().attempts {
            return Err(failure.0);
        }
        tracing::info!(%repo, %reference, error = %failure.0, "manifest fetch failed; fetching again");
        state
            .metrics
            .upstream_retries
            .get_or_create(&RetryLabels { reason: failure.1 })
            .inc();
    };
    let tag = match reference {
        Reference::Tag(t) => Some(t.clone()),
        Reference::Digest(_) => None,
    };
    let (store, repo) = (state.store.clone(), repo.clone());
    let content = tokio::task::spawn_blocking(move || {
        store.put_manifest(
            &repo,
            tag.as_deref(),
            &digest,
            content_type.as_deref(),
            &bytes,
            Timestamp::now(),
        )
    })
    .await??;
    Ok(content)
}

/// A manifest as the upstream sent it, not yet verified.
struct Downloaded {
    bytes: Bytes,
    content_type: Option<String>,
    header_digest: Option<Digest>,
}

enum Download {
    /// The body was cut short: worth another try.
    Cut(RegistryError),
    /// Anything else: the answer stands.
    Failed(RegistryError),
}

impl Downloaded {
    /// The bytes, their content type and the digest they are stored under, which must be the
    /// content's: by-digest requests verify against the request, by-tag ones against the
    /// upstream's header when it names one.
    fn verified(
        self,
        repo: &RepoPath,
        reference: &Reference,
    ) -> Result<(Bytes, Option<String>, Digest), RegistryError> {
        let digest = match (reference, self.header_digest) {
            (Reference::Digest(d), _) => d.clone(),
            (Reference::Tag(_), Some(d)) => d,
            (Reference::Tag(_), None) => Digest::sha256_of(&self.bytes),
        };
        if !digest.verifies(&self.bytes) {
            return Err(RegistryError::UpstreamDigest(format!(
                "manifest {repo}:{reference} does not hash to {digest}"
            )));
        }
        Ok((self.bytes, self.content_type, digest))
    }
}

async fn download(
    upstream: &Upstream,
    repo: &RepoPath,
    reference: &Reference,
) -> Result<Downloaded, Download> {
    let resp = upstream
        .send(
            Method::GET,
            &repo.repository,
            &format!("manifests/{reference}"),
            accept_header(),
        )
        .await
        .map_err(|e| Download::Failed(e.into()))?;
    if resp.status() != StatusCode::OK {
        return Err(Download::Failed(upstream_failure(
            &resp,
            RegistryError::ManifestUnknown,
        )));
    }
    read_body(resp, repo, reference, "upstream").await
}

/// A manifest answer's body and headers, at most [`MAX_MANIFEST_BYTES`]; `from` names the
/// source in errors.
async fn read_body(
    resp: reqwest::Response,
    repo: &RepoPath,
    reference: &Reference,
    from: &str,
) -> Result<Downloaded, Download> {
    let too_large = || {
        Download::Failed(RegistryError::ManifestTooLarge(format!(
            "{from} manifest for {repo}:{reference} exceeds {MAX_MANIFEST_BYTES} bytes"
        )))
    };
    if resp
        .content_length()
        .is_some_and(|l| l > MAX_MANIFEST_BYTES as u64)
    {
        return Err(too_large());
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let header_digest = header_digest(resp.headers());
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Download::Cut(RegistryError::Unavailable(format!(
                "{from} cut the manifest transfer: {}",
                crate::upstream::error_chain(&e)
            )))
        })?;
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Downloaded {
        bytes: body.freeze(),
        content_type,
        header_digest,
    })
}

/// `tags/list`: the upstream's list when it answers, the cached tags otherwise; paginated here
/// with `n` and `last` so the `Link` header always points at this server.
pub async fn tags_list(
    state: &Arc<AppState>,
    repo: &RepoPath,
    name: &str,
    query: &Query,
) -> Result<Response, RegistryError> {
    let mut tags = if state.config.air_gapped {
        None
    } else {
        upstream_tags(state, repo).await?
    }
    .unwrap_or_else(|| state.store.tags(repo));
    if tags.is_empty() && state.config.air_gapped {
        return Err(RegistryError::NameUnknown);
    }
    tags.sort();
    tags.dedup();
    if let Some(last) = &query.last {
        tags.retain(|t| t > last);
    }
    let n = match query.n.as_deref().map(str::parse::<usize>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(RegistryError::PaginationInvalid),
    };
    let mut link = None;
    if let Some(n) = n
        && tags.len() > n
    {
        tags.truncate(n);
        if let Some(last) = tags.last() {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("n", &n.to_string()).append_pair("last", last);
            if let Some(ns) = &query.ns {
                q.append_pair("ns", ns);
            }
            link = Some(format!(
                "</v2/{name}/tags/list?{}>; rel=\"next\"",
                q.finish()
            ));
        }
    }
    let body = serde_json::json!({"name": name, "tags": tags});
    let mut resp = axum::Json(body).into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, l);
    }
    Ok(resp)
}

/// All of an upstream's tags (following its own pagination, bounded). `None` when the
/// upstream cannot be asked, so the cached tags are served instead.
async fn upstream_tags(
    state: &Arc<AppState>,
    repo: &RepoPath,
) -> Result<Option<Vec<String>>, RegistryError> {
    #[derive(serde::Deserialize)]
    struct TagList {
        tags: Option<Vec<String>>,
    }
    let Ok(upstream) = state.upstreams.get(&repo.registry) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let mut suffix = "tags/list".to_owned();
    for _ in 0..100 {
        let resp = match upstream
            .send(Method::GET, &repo.repository, &suffix, HeaderMap::new())
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_unavailable() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match resp.status().as_u16() {
            200 => {}
            404 if out.is_empty() && state.store.tags(repo).is_empty() => {
                return Err(RegistryError::NameUnknown);
            }
            _ => return Ok(None),
        }
        let next = resp
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| l.split_once("tags/list").map(|(_, rest)| rest.to_owned()))
            .and_then(|rest| rest.split_once('>').map(|(q, _)| format!("tags/list{q}")));
        let body = resp
            .bytes()
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let list: TagList = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::BadUpstream(format!("upstream tag list: {e}")))?;
        out.extend(list.tags.unwrap_or_default());
        match next {
            Some(n) => suffix = n,
            None => return Ok(Some(out)),
        }
    }
    Ok(Some(out))
}

/// The referrers API: the upstream's answer when it supports it, else an index built from the
/// cached manifests whose `subject` is `digest`.
pub async fn referrers(
    state: &Arc<AppState>,
    repo: &RepoPath,
    digest: &Digest,
    query: &Query,
) -> Result<Response, RegistryError> {
    if !state.config.air_gapped
        && let Ok(upstream) = state.upstreams.get(&repo.registry)
    {
        let mut suffix = format!("referrers/{digest}");
        if let Some(t) = &query.artifact_type {
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("artifactType", t)
                .finish();
            suffix = format!("{suffix}?{q}");
        }
        if let Ok(resp) = upstream
            .send(Method::GET, &repo.repository, &suffix, HeaderMap::new())
            .await
            && resp.status() == StatusCode::OK
        {
            let filtered = resp.headers().get("oci-filters-applied").cloned();
            let body = resp
                .bytes()
                .await
                .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
            if serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v.get("manifests").is_some())
            {
                let mut out = (
                    [(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX))],
                    body,
                )
                    .into_response();
                if let Some(f) = filtered {
                    out.headers_mut().insert("oci-filters-applied", f);
                }
                return Ok(out);
            }
        }
    }
    let manifests: Vec<serde_json::Value> = state
        .store
        .referrers(digest)
        .into_iter()
        .filter(|m| {
            query
                .artifact_type
                .as_deref()
                .is_none_or(|t| m.artifact_type.as_deref() == Some(t))
        })
        .map(|m| {
            let mut d = serde_json::json!({
                "mediaType": m.media_type, "digest": m.digest.to_string(), "size": m.size,
            });
            if let Some(t) = &m.artifact_type {
                d["artifactType"] = t.as_str().into();
            }
            if !m.annotations.is_empty() {
                d["annotations"] = serde_json::to_value(&m.annotations).unwrap_or_default();
            }
            d
        })
        .collect();
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let mut resp = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX))],
        serde_json::to_vec(&index).unwrap_or_default(),
    )
        .into_response();
    if query.artifact_type.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
