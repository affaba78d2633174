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
use prometheus_client::registry::Registry;

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
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Registry requests by endpoint, method and status",
            requests.clone(),
        );
        let request_seconds = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 4.0, 10))
        });
        registry.register(
            "request_duration_seconds",
            "Time to response headers for manifest and blob requests",
            request_seconds.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by kind and result",
            lookups.clone(),
        );
        let upstream_fetches = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_fetches",
            "Requests sent to upstream registries",
            upstream_fetches.clone(),
        );
        let upstream_bytes = Family::<KindLabels, Counter>::default();
        registry.register(
            "upstream_bytes",
            "Bytes received from upstream registries",
            upstream_bytes.clone(),
        );
        let upstream_retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Upstream requests tried again or resumed, by reason",
            upstream_retries.clone(),
        );
        let served_bytes = Family::<KindLabels, Counter>::default();
        registry.register(
            "served_bytes",
            "Bytes sent to clients",
            served_bytes.clone(),
        );
        let inflight_fetches = Gauge::default();
        registry.register(
            "inflight_fetches",
            "Upstream fetches in progress",
            inflight_fetches.clone(),
        );
        let store_manifests = Gauge::default();
        registry.register(
            "store_manifests",
            "Manifests in the cache",
            store_manifests.clone(),
        );
        let store_blobs = Gauge::default();
        registry.register("store_blobs", "Blobs in the cache", store_blobs.clone());
        let store_bytes = Gauge::default();
        registry.register(
            "store_bytes",
            "Bytes of blobs in the cache",
            store_bytes.clone(),
        );
        let prune_runs = Family::<PruneLabels, Counter>::default();
        registry.register(
            "prune_runs",
            "Prune runs by trigger and outcome",
            prune_runs.clone(),
        );
        let prune_manifests = Counter::default();
        registry.register(
            "prune_removed_manifests",
            "Manifests removed by pruning",
            prune_manifests.clone(),
        );
        let prune_blobs = Counter::default();
        registry.register(
            "prune_removed_blobs",
            "Blobs removed by pruning",
            prune_blobs.clone(),
        );
        let prune_bytes = Counter::default();
        registry.register(
            "prune_reclaimed_bytes",
            "Bytes reclaimed by pruning",
            prune_bytes.clone(),
        );
        let prune_seconds = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        registry.register(
            "prune_duration_seconds",
            "Time to plan and execute a prune",
            prune_seconds.clone(),
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
