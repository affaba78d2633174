//! The operator's Prometheus metrics (`imagecache_operator_*`), served on its `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Controller {
    imagecache,
    prunepolicy,
    cachedimage,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: Controller,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: Controller,
    /// [`super::error::OperatorError::kind`].
    pub error: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PruneResult {
    succeeded,
    failed,
    refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PruneLabels {
    pub result: PruneResult,
    pub dry_run: bool,
}

pub struct OperatorMetrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_seconds: Family<ControllerLabels, Histogram>,
    pub prune_runs: Family<PruneLabels, Counter>,
    pub pruned_manifests: Counter,
    pub pruned_bytes: Counter,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Registry pods with an open Image API watch.
    pub image_watches: Gauge,
    /// CachedImage objects created, updated and deleted by the sync.
    pub cachedimage_writes: Counter,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl OperatorMetrics {
    pub fn new() -> OperatorMetrics {
        let mut registry = Registry::with_prefix("imagecache_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by controller", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by controller and error kind",
            reconcile_errors.clone(),
        );
        let reconcile_seconds = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by controller",
            reconcile_seconds.clone(),
        );
        let prune_runs = Family::<PruneLabels, Counter>::default();
        registry.register(
            "prune_runs",
            "PrunePolicy runs by result",
            prune_runs.clone(),
        );
        let pruned_manifests = Counter::default();
        registry.register(
            "pruned_manifests",
            "Manifests removed by PrunePolicy runs (all pods)",
            pruned_manifests.clone(),
        );
        let pruned_bytes = Counter::default();
        registry.register(
            "pruned_bytes",
            "Bytes reclaimed by PrunePolicy runs (all pods)",
            pruned_bytes.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica leads", leader.clone());
        let image_watches = Gauge::default();
        registry.register(
            "image_watches",
            "Registry pods whose Image API is being watched",
            image_watches.clone(),
        );
        let cachedimage_writes = Counter::default();
        registry.register(
            "cachedimage_writes",
            "CachedImage creates, updates and deletes",
            cachedimage_writes.clone(),
        );
        OperatorMetrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            prune_runs,
            pruned_manifests,
            pruned_bytes,
            leader,
            image_watches,
            cachedimage_writes,
        }
    }

    /// Counts one reconcile and its duration; an error also by kind.
    pub fn reconciled(
        &self,
        controller: Controller,
        started: std::time::Instant,
        error: Option<&super::error::OperatorError>,
    ) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Some(e) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    controller,
                    error: e.kind(),
                })
                .inc();
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
