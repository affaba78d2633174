//! The distribution pull API (`/v2/...`): routing, upstream selection and the handlers.
//!
//! Layer: the data plane, over the [`crate::store`], the [`crate::upstream`] clients and the
//! [`crate::peers`] (the other replicas). It knows no prune engine, no admin or image API and
//! no operator (and no Kubernetes at all).
//!
//! A request carrying [`crate::peers::PEER_HEADER`] comes from a peer: it is admitted and limited
//! like any other, and answered from the cache or the upstream, never by a fetch at another
//! peer (the owner of a digest only asks its previous owner whether it holds it, with
//! [`crate::peers::PEER_CACHED_HEADER`], which is answered from the cache alone).

mod blobs;
pub mod error;
mod flight;
mod manifests;
pub mod pull;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use blobs::BlobFetches;
use blobs::Source;
pub use error::RegistryError;

use crate::config::Config;
use crate::digest::Digest;
use crate::metrics::{ContentSource, Endpoint, Kind, Lookup, Metrics, Outcome, RequestLabels};
use crate::peers::{Ask, PEER_CACHED_HEADER, PEER_HEADER, Peers};
use crate::reference::{Reference, RepoPath, Route, parse_route, select_upstream};
use crate::store::{ManifestContent, Store};
use crate::upstream::Upstreams;

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";

/// Everything a request handler needs.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    /// The other replicas of this cache, when it has some.
    pub peers: Option<Arc<Peers>>,
    blob_fetches: BlobFetches,
    manifest_flights: flight::Flights<(RepoPath, String), (ManifestContent, ContentSource)>,
}

impl AppState {
    /// A registry without peers.
    pub fn new(
        config: Arc<Config>,
        store: Arc<Store>,
        upstreams: Upstreams,
        metrics: Arc<Metrics>,
    ) -> Arc<AppState> {
        AppState::with_peers(config, store, upstreams, metrics, None)
    }

    /// A registry that asks `peers` (the other replicas) before the upstream.
    pub fn with_peers(
        config: Arc<Config>,
        store: Arc<Store>,
        upstreams: Upstreams,
        metrics: Arc<Metrics>,
        peers: Option<Arc<Peers>>,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            config,
            store,
            upstreams,
            metrics,
            peers,
            blob_fetches: BlobFetches::default(),
            manifest_flights: flight::Flights::default(),
        })
    }
}

/// Longest request target (path and query) served: a repository name is at most 255
/// characters in Distribution, so 8 KiB leaves room for any real pull. Longer gets 414 with an
/// OCI error body; past 64 KiB hyper itself answers 414. Request bodies are never read (pushes
/// are refused) and header sections are bounded by hyper (431).
pub const MAX_TARGET_BYTES: usize = 8 << 10;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", axum::routing::any(dispatch))
        .route("/v2/", axum::routing::any(dispatch))
        .route("/v2/{*rest}", axum::routing::any(dispatch))
        .fallback(|| async { RegistryError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn(limit_target))
        .with_state(state)
}

async fn limit_target(req: Request, next: axum::middleware::Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len <= MAX_TARGET_BYTES {
        return next.run(req).await;
    }
    let mut resp = RegistryError::NameInvalid(format!(
        "request URL is {len} bytes long; at most {MAX_TARGET_BYTES} are accepted"
    ))
    .into_response();
    *resp.status_mut() = StatusCode::URI_TOO_LONG;
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}

/// Query parameters the API reads; decoded, unknown ones ignored.
#[derive(Default)]
struct Query {
    ns: Option<String>,
    n: Option<String>,
    last: Option<String>,
    artifact_type: Option<String>,
}

fn parse_query(raw: Option<&str>) -> Query {
    let mut q = Query::default();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let slot = match &*k {
            "ns" => &mut q.ns,
            "n" => &mut q.n,
            "last" => &mut q.last,
            "artifactType" => &mut q.artifact_type,
            _ => continue,
        };
        *slot = Some(v.into_owned());
    }
    q
}

async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    // Only the head is needed: pull requests carry no body.
    let (parts, _) = req.into_parts();
    let method = parts.method.clone();
    let (endpoint, result) = handle(&state, &parts).await;
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    // A peer learns from this whether it asked itself.
    if parts.headers.contains_key(PEER_HEADER)
        && let Some(v) = state
            .peers
            .as_ref()
            .and_then(|p| HeaderValue::from_str(p.instance()).ok())
    {
        resp.headers_mut().insert(PEER_HEADER, v);
    }
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            method: (&method).into(),
            status: resp.status().as_u16(),
        })
        .inc();
    let kind = match endpoint {
        Endpoint::manifest => Some(Kind::manifest),
        Endpoint::blob => Some(Kind::blob),
        _ => None,
    };
    if let Some(kind) = kind {
        state
            .metrics
            .request_seconds
            .get_or_create(&crate::metrics::KindLabels { kind })
            .observe(started.elapsed().as_secs_f64());
    }
    resp
}

async fn handle(
    state: &Arc<AppState>,
    req: &axum::http::request::Parts,
) -> (Endpoint, Result<Response, RegistryError>) {
    let path = req.uri.path();
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let route = match parse_route(rest) {
        Ok(r) => r,
        Err(e) => return (Endpoint::invalid, Err(e.into())),
    };
    let query = parse_query(req.uri.query());
    let method = &req.method;
    let read = *method == Method::GET || *method == Method::HEAD;
    let head = *method == Method::HEAD;
    // A peer's request is answered from the cache or the upstream, never from another peer;
    // the header grants nothing else.
    let from_peer = req.headers.contains_key(PEER_HEADER);
    let relay = !from_peer && state.peers.is_some();
    // A cache-only ask (from the digest's new owner) starts no fetch at all.
    let cached_only = from_peer && req.headers.contains_key(PEER_CACHED_HEADER);
    if from_peer && matches!(route, Route::Manifest { .. } | Route::Blob { .. }) {
        let kind = match route {
            Route::Blob { .. } => Kind::blob,
            _ => Kind::manifest,
        };
        state
            .metrics
            .peer_requests_answered
            .get_or_create(&crate::metrics::KindLabels { kind })
            .inc();
    }
    let repo = |name: &str| -> Result<RepoPath, RegistryError> {
        let repo = select_upstream(name, query.ns.as_deref(), &state.config.default_registry)?;
        // The allowlist and the SSRF guard apply in every mode, so a cache cannot be used to
        // probe other hosts (403 DENIED).
        state.upstreams.admit(&repo.registry)?;
        Ok(repo)
    };
    let push = || {
        Err(RegistryError::Unsupported(
            "this registry is a pull-through cache: pushing is not supported".into(),
        ))
    };
    match route {
        Route::Base => (
            Endpoint::base,
            if read {
                Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response())
            } else {
                push()
            },
        ),
        Route::BlobUpload { .. } => (Endpoint::upload, push()),
        Route::Manifest { name, reference } => {
            let result = match (method.clone(), reference) {
                (_, _) if !read && *method != Method::DELETE => push(),
                (Method::DELETE, Reference::Tag(_)) => Err(RegistryError::DeleteByTag),
                (Method::DELETE, Reference::Digest(d)) => match repo(name) {
                    Ok(_) => delete_manifest(state, d).await,
                    Err(e) => Err(e),
                },
                (_, reference) => match repo(name) {
                    Ok(_)
                        if cached_only
                            && !matches!(&reference, Reference::Digest(d) if state.store.has_manifest(d)) =>
                    {
                        Err(RegistryError::ManifestUnknown)
                    }
                    Ok(repo) => manifests::get(state, &repo, reference, head, relay).await,
                    Err(e) => Err(e),
                },
            };
            (Endpoint::manifest, result)
        }
        Route::Blob { name, digest } => {
            let result = if !read {
                push()
            } else {
                match repo(name) {
                    Ok(_) if cached_only && state.store.blob_size(&digest).is_none() => {
                        Err(RegistryError::BlobUnknown)
                    }
                    Ok(repo) => get_blob(state, &repo, &digest, &req.headers, head, relay).await,
                    Err(e) => Err(e),
                }
            };
            (Endpoint::blob, result)
        }
        Route::TagsList { name } => {
            let result = if !read {
                push()
            } else {
                match repo(name) {
                    Ok(repo) => manifests::tags_list(state, &repo, name, &query).await,
                    Err(e) => Err(e),
                }
            };
            (Endpoint::tags, result)
        }
        Route::Referrers { name, digest } => {
            let result = if !read {
                push()
            } else {
                match repo(name) {
                    Ok(repo) => manifests::referrers(state, &repo, &digest, &query).await,
                    Err(e) => Err(e),
                }
            };
            (Endpoint::referrers, result)
        }
    }
}

/// Maps an upstream's non-success answer to our error, `not_found` for its 404.
pub(crate) fn upstream_failure(
    resp: &reqwest::Response,
    not_found: RegistryError,
) -> RegistryError {
    let status = resp.status();
    match status.as_u16() {
        404 => not_found,
        401 | 403 => RegistryError::Denied(format!("upstream refused access ({status})")),
        429 => RegistryError::TooManyRequests {
            message: "upstream rate limit reached".into(),
            retry_after: resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        },
        s if s >= 500 => RegistryError::Unavailable(format!("upstream answered {status}")),
        _ => RegistryError::BadUpstream(format!("upstream answered {status}")),
    }
}

async fn delete_manifest(state: &Arc<AppState>, digest: Digest) -> Result<Response, RegistryError> {
    let store = state.store.clone();
    let removed = tokio::task::spawn_blocking(move || store.delete_manifest(&digest)).await??;
    if removed {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(RegistryError::ManifestUnknown)
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against a blob of `size`: the half-open range to send.
/// `None` when there is no usable single range: the whole blob is sent, as RFC 9110 allows for
/// multiple or malformed ranges. Public only for the fuzz targets.
#[doc(hidden)]
pub fn parse_range(header: &str, size: u64) -> Result<Option<(u64, u64)>, RegistryError> {
    let unsatisfiable = RegistryError::RangeNotSatisfiable { size };
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    let Some((a, b)) = spec.split_once('-').filter(|_| !spec.contains(',')) else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    let range = match (num(a), num(b)) {
        (Some(first), Some(last)) if first <= last => (first, last.saturating_add(1).min(size)),
        (Some(first), None) if b.is_empty() => (first, size),
        (None, Some(n)) if a.is_empty() && n > 0 => (size.saturating_sub(n), size),
        (None, Some(0)) if a.is_empty() => return Err(unsatisfiable),
        _ => return Ok(None),
    };
    if range.0 >= size {
        return Err(unsatisfiable);
    }
    Ok(Some(range))
}

/// An upstream's `Content-Range`, `bytes a-b/c` (or `bytes a-b/*`): the first byte and the
/// complete length, if given. Public only for the fuzz targets.
#[doc(hidden)]
pub fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, complete) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last) = (
        first.trim().parse::<u64>().ok()?,
        last.trim().parse::<u64>().ok()?,
    );
    if last < first {
        return None;
    }
    let complete = match complete.trim() {
        "*" => None,
        c => {
            let c = c.parse::<u64>().ok()?;
            if last >= c {
                return None;
            }
            Some(c)
        }
    };
    Some((first, complete))
}

async fn get_blob(
    state: &Arc<AppState>,
    repo: &RepoPath,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
    relay: bool,
) -> Result<Response, RegistryError> {
    let cached = match state.store.blob_size(digest) {
        Some(size) => match std::fs::File::open(state.store.blob_path(digest)) {
            Ok(f) => Some(Source::cached(f, size)),
            // Pruned between the lookup and the open: fetch it again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let mut source = match cached {
        Some(s) => {
            state.metrics.lookup(Kind::blob, Lookup::hit);
            s
        }
        None if state.config.air_gapped && !relay => return Err(RegistryError::BlobUnknown),
        None if head => return head_blob_uncached(state, repo, digest, relay).await,
        None => {
            state.metrics.lookup(Kind::blob, Lookup::miss);
            state
                .blob_fetches
                .join_or_start(state, repo, digest, relay)?
        }
    };
    let size = source.ready().await?;
    if !head {
        state.metrics.served(Kind::blob, source.origin());
    }
    let range = match (
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    ) {
        (Some(r), Some(size)) => parse_range(r, size)?,
        _ => None,
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest.to_string())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""));
    let (start, end) = match (range, size) {
        (Some((start, end)), Some(size)) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{size}", end - 1),
                )
                .header(header::CONTENT_LENGTH, end - start);
            (start, Some(end))
        }
        _ => {
            if let Some(size) = size {
                builder = builder.header(header::CONTENT_LENGTH, size);
            }
            (0, None)
        }
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(source.stream(start, end, state.metrics.clone()))
    };
    builder
        .body(body)
        .map_err(|e| RegistryError::Internal(e.to_string()))
}

/// HEAD of an uncached blob asks (the owner, then) the upstream without downloading the blob.
async fn head_blob_uncached(
    state: &Arc<AppState>,
    repo: &RepoPath,
    digest: &Digest,
    relay: bool,
) -> Result<Response, RegistryError> {
    let from_peers = match state.blob_fetches.pending_size(digest) {
        Some(size) => Some(Some(size)),
        None if relay => head_blob_peers(state, repo, digest).await,
        None => None,
    };
    let size = match from_peers {
        Some(Some(size)) => size,
        Some(None) => return Err(RegistryError::BlobUnknown),
        None if state.config.air_gapped => return Err(RegistryError::BlobUnknown),
        None => {
            let upstream = state.upstreams.get(&repo.registry)?;
            let resp = upstream
                .send(
                    Method::HEAD,
                    &repo.repository,
                    &format!("blobs/{digest}"),
                    HeaderMap::new(),
                )
                .await?;
            if resp.status() != StatusCode::OK {
                state.metrics.upstream(Kind::blob, Outcome::not_found);
                return Err(upstream_failure(&resp, RegistryError::BlobUnknown));
            }
            resp.content_length().unwrap_or(0)
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header("docker-content-digest", digest.to_string())
        .header(header::ACCEPT_RANGES, "bytes")
        .body(Body::empty())
        .map_err(|e| RegistryError::Internal(e.to_string()))
}

/// HEAD of an uncached blob at the peers [`Peers::plan`] names: `Some(Some(size))` when one
/// has it, `Some(None)` when one asked to fetch answered 404 (passed on), `None` when none
/// could tell.
async fn head_blob_peers(
    state: &Arc<AppState>,
    repo: &RepoPath,
    digest: &Digest,
) -> Option<Option<u64>> {
    let peers = state.peers.as_ref()?;
    for (member, ask) in peers.plan(digest) {
        let suffix = format!("blobs/{digest}");
        match peers
            .send(&member, Method::HEAD, repo, &suffix, ask, HeaderMap::new())
            .await
        {
            Ok(r) if r.status() == StatusCode::OK => {
                let len = r
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if len.is_some() {
                    return Some(len);
                }
            }
            Ok(r) if r.status() == StatusCode::NOT_FOUND && ask == Ask::Fetch => return Some(None),
            Ok(r) if r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => {
                let status = r.status();
                let reason = crate::metrics::PeerFailure::status;
                peers.failed(&member, reason, &format!("answered {status}"));
            }
            Err(e) => {
                if let Some(reason) = e.reason() {
                    peers.failed(&member, reason, &e);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=10-99", 1000), Ok(Some((10, 100))));
        assert_eq!(parse_range("bytes=10-", 1000), Ok(Some((10, 1000))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=990-2000", 1000), Ok(Some((990, 1000))));
        assert_eq!(parse_range("bytes=0-0,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=1-2", 1000), Ok(None));
        assert_eq!(parse_range("bytes=x-y", 1000), Ok(None));
        assert!(parse_range("bytes=1000-", 1000).is_err());
        assert_eq!(parse_range("bytes=5-1", 1000), Ok(None));
        assert!(parse_range("bytes=-0", 1000).is_err());
        assert!(parse_range("bytes=0-", 0).is_err());
    }

    #[test]
    fn content_range_is_read_strictly() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 10-9/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes 1-2/x"), None);
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
    }
}
