//! Prometheus metrics. Every label value comes from a closed set chosen by the code, never from
//! client input, so cardinality stays bounded whatever clients send.
//!
//! Layer: counters, not behaviour. It reads the store's statistics and imports nothing that
//! serves or runs (registry, upstream, prune, admin, image APIs, server, operator).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::store::Stats;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Endpoint {
    base,
    manifest,
    blob,
    tags,
    referrers,
    upload,
    invalid,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Method {
    GET,
    HEAD,
    DELETE,
    OTHER,
}

impl From<&axum::http::Method> for Method {
    fn from(m: &axum::http::Method) -> Self {
        match *m {
            axum::http::Method::GET => Method::GET,
            axum::http::Method::HEAD => Method::HEAD,
            axum::http::Method::DELETE => Method::DELETE,
            _ => Method::OTHER,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: Endpoint,
    pub method: Method,
    pub status: u16,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Kind {
    manifest,
    blob,
    tag,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Lookup {
    /// Served from the cache.
    hit,
    /// Fetched from the upstream.
    miss,
    /// Tag re-checked upstream and unchanged.
    revalidated,
    /// Tag served from the cache because the upstream could not be asked.
    stale,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub kind: Kind,
    pub result: Lookup,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    ok,
    not_found,
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub kind: Kind,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RetryReason {
    /// No response: connection refused, reset or closed before the headers.
    transport,
    /// 500, 502, 503 or 504.
    server_error,
    /// 429, or a wait for an earlier `Retry-After` to pass.
    rate_limited,
    /// A body cut short: a blob resumed with a `Range` request, a manifest fetched again.
    cut_transfer,
    /// A manifest whose bytes did not match its digest, fetched again.
    bad_digest,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub reason: RetryReason,
}

/// Where the content of a served manifest or blob came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ContentSource {
    /// This replica's own cache.
    cache,
    /// Another replica of the same cache (the digest's owner).
    peer,
    /// The upstream registry.
    upstream,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub kind: Kind,
    pub source: ContentSource,
}

/// Why a peer was skipped for the next source.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PeerFailure {
    /// No connection within the connect timeout, or refused.
    connect,
    /// No response headers within `peering.firstByte`, or silence past `peering.idle`.
    timeout,
    /// The body was cut short.
    cut,
    /// An answer other than the content or a 404.
    status,
    /// Bytes that do not hash to the digest asked for.
    digest,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerFailureLabels {
    pub reason: PeerFailure,
}

/// A peer as this replica sees it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PeerState {
    /// Ranked for ownership and asked.
    live,
    /// Left out after a failure until it answers a probe.
    down,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerStateLabels {
    pub state: PeerState,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Trigger {
    api,
    background,
    cli,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RunOutcome {
    pruned,
    dry_run,
    refused,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PruneLabels {
    pub trigger: Trigger,
    pub outcome: RunOutcome,
}

pub struct Metrics {
    registry: Registry,
    pub prune_runs: Family<PruneLabels, Counter>,
    pub prune_manifests: Counter,
    pub prune_blobs: Counter,
    pub prune_bytes: Counter,
    pub prune_seconds: Histogram,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<KindLabels, Histogram>,
    pub lookups: Family<LookupLabels, Counter>,
    pub upstream_fetches: Family<UpstreamLabels, Counter>,
    pub upstream_bytes: Family<KindLabels, Counter>,
    pub upstream_retries: Family<RetryLabels, Counter>,
    pub served_bytes: Family<KindLabels, Counter>,
    pub inflight_fetches: Gauge,
    /// Manifest and blob GETs answered, by where their content came from.
    pub served_requests: Family<SourceLabels, Counter>,
    /// Manifest and blob bytes sent, by where they came from.
    pub served_source_bytes: Family<SourceLabels, Counter>,
    /// Bytes received from peers.
    pub peer_bytes: Family<KindLabels, Counter>,
    /// Peers skipped for the next source, by reason.
    pub peer_errors: Family<PeerFailureLabels, Counter>,
    /// Requests from peers answered by this replica.
    pub peer_requests_answered: Family<KindLabels, Counter>,
    /// The peer set (this replica excluded), live and down.
    pub peers: Family<PeerStateLabels, Gauge>,
    /// Blobs another replica owns that this one kept a copy of (`nonOwnerBlobs: hot`).
    pub hot_copies: Counter,
    store_manifests: Gauge,
    store_blobs: Gauge,
    store_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("imagecache");
        // Registered in the order /metrics lists them.
        let r = &mut registry;
        let requests = register(
            r,
            "http_requests",
            "Registry requests by endpoint, method and status",
        );
        let request_seconds = register_with(
            r,
            "request_duration_seconds",
            "Time to response headers for manifest and blob requests",
            Family::<KindLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 4.0, 10))
            }),
        );
        let lookups = register(r, "cache_lookups", "Cache lookups by kind and result");
        let upstream_fetches = register(
            r,
            "upstream_fetches",
            "Requests sent to upstream registries",
        );
        let upstream_bytes = register(
            r,
            "upstream_bytes",
            "Bytes received from upstream registries",
        );
        let upstream_retries = register(
            r,
            "upstream_retries",
            "Upstream requests tried again or resumed, by reason",
        );
        let served_bytes = register(r, "served_bytes", "Bytes sent to clients");
        let inflight_fetches = register(r, "inflight_fetches", "Upstream fetches in progress");
        let served_requests = register(
            r,
            "served_requests",
            "Manifest and blob GETs answered, by where the content came from (cache, peer, upstream)",
        );
        let served_source_bytes = register(
            r,
            "served_source_bytes",
            "Manifest and blob bytes sent, by where they came from (cache, peer, upstream)",
        );
        let peer_bytes = register(r, "peer_bytes", "Bytes received from the other replicas");
        let peer_errors = register(
            r,
            "peer_errors",
            "Peers skipped for the next source (another peer or the upstream), by reason",
        );
        let peer_requests_answered = register(
            r,
            "peer_requests_answered",
            "Manifest and blob requests from other replicas answered",
        );
        let peers = register(
            r,
            "peers",
            "The other replicas of this cache, live (asked) or down (left out until a probe answers)",
        );
        let hot_copies = register(
            r,
            "peer_hot_copies",
            "Blobs another replica owns that this one kept a copy of, relayed a second time (nonOwnerBlobs: hot)",
        );
        let store_manifests = register(r, "store_manifests", "Manifests in the cache");
        let store_blobs = register(r, "store_blobs", "Blobs in the cache");
        let store_bytes = register(r, "store_bytes", "Bytes of blobs in the cache");
        let prune_runs = register(r, "prune_runs", "Prune runs by trigger and outcome");
        let prune_manifests =
            register(r, "prune_removed_manifests", "Manifests removed by pruning");
        let prune_blobs = register(r, "prune_removed_blobs", "Blobs removed by pruning");
        let prune_bytes = register(r, "prune_reclaimed_bytes", "Bytes reclaimed by pruning");
        let prune_seconds = register_with(
            r,
            "prune_duration_seconds",
            "Time to plan and execute a prune",
            Histogram::new(exponential_buckets(0.001, 4.0, 10)),
        );
        Metrics {
            registry,
            prune_runs,
            prune_manifests,
            prune_blobs,
            prune_bytes,
            prune_seconds,
            requests,
            request_seconds,
            lookups,
            upstream_fetches,
            upstream_bytes,
            upstream_retries,
            served_bytes,
            inflight_fetches,
            served_requests,
            served_source_bytes,
            peer_bytes,
            peer_errors,
            peer_requests_answered,
            peers,
            hot_copies,
            store_manifests,
            store_blobs,
            store_bytes,
        }
    }

    pub fn lookup(&self, kind: Kind, result: Lookup) {
        self.lookups
            .get_or_create(&LookupLabels { kind, result })
            .inc();
    }

    pub fn upstream(&self, kind: Kind, outcome: Outcome) {
        self.upstream_fetches
            .get_or_create(&UpstreamLabels { kind, outcome })
            .inc();
    }

    /// A manifest or blob GET answered with content from `source`.
    pub fn served(&self, kind: Kind, source: ContentSource) {
        self.served_requests
            .get_or_create(&SourceLabels { kind, source })
            .inc();
    }

    /// A peer skipped for `reason`.
    pub fn peer_failed(&self, reason: PeerFailure) {
        self.peer_errors
            .get_or_create(&PeerFailureLabels { reason })
            .inc();
    }

    /// Renders the text exposition, with the store gauges read at scrape time.
    pub fn render(&self, stats: Option<Stats>) -> String {
        if let Some(s) = stats {
            self.store_manifests.set(s.manifests as i64);
            self.store_blobs.set(s.blobs as i64);
            self.store_bytes.set(s.bytes as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Registers a new metric of type `M` as `name` and returns it: the registry keeps a clone, and
/// clones share their values.
fn register<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    register_with(registry, name, help, M::default())
}

/// [`register`] for a metric that needs a constructor (a histogram's buckets).
fn register_with<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}
