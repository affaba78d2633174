//! What every reconciler shares: the Kubernetes client, the registry pods' API, metrics, the
//! event reporter, settings and the clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::metrics::OperatorMetrics;
use super::pods::RegistryApi;

/// The field manager of the operator's server-side applies and the events' reporter.
pub const MANAGER: &str = "imagecache-operator";

/// The registry pods' image when `--registry-image` is not given: this release's image.
pub const DEFAULT_REGISTRY_IMAGE: &str =
    concat!("ghcr.io/imagecache/imagecache:", env!("CARGO_PKG_VERSION"));

/// Operator settings from its command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The image registry pods run (`imagecache` binary inside).
    pub registry_image: String,
    /// Least time between two last-pulled updates of a CachedImage.
    pub min_update_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            registry_image: DEFAULT_REGISTRY_IMAGE.into(),
            min_update_interval: Duration::from_secs(300),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub registry: Arc<dyn RegistryApi>,
    pub metrics: Arc<OperatorMetrics>,
    pub recorder: Recorder,
    pub settings: Settings,
    /// Fixed in tests; the wall clock otherwise.
    clock: Option<Timestamp>,
    /// Consecutive failures per object (`kind/namespace/name`), for requeue backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// First requeue after a failed reconcile; doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Context {
    pub fn new(
        client: Client,
        registry: Arc<dyn RegistryApi>,
        metrics: Arc<OperatorMetrics>,
        settings: Settings,
    ) -> Context {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            registry,
            metrics,
            settings,
            clock: None,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// A context whose clock stands still at `now` (tests).
    pub fn with_clock(mut self, now: Timestamp) -> Context {
        self.clock = Some(now);
        self
    }

    pub fn now(&self) -> Timestamp {
        self.clock.unwrap_or_else(Timestamp::now)
    }

    /// The requeue delay after one more failure of `key`: 5 s, 10 s, 20 s ... 5 min.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        let delay = MIN_BACKOFF.saturating_mul(1u32 << (*n).min(10));
        *n = n.saturating_add(1);
        delay.min(MAX_BACKOFF)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// An `Api` over `namespace`, or over every namespace when `None`: how each controller scopes
/// its watches to the operator's `--namespace`.
pub fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    }
}

/// The `error_policy` of every controller: log the failure and requeue the object after its
/// backoff (5 s doubling to 5 min, reset by the next success).
pub fn requeue_after_failure<K: kube::Resource<DynamicType = ()>>(
    obj: &K,
    err: &super::error::OperatorError,
    ctx: &Context,
) -> kube::runtime::controller::Action {
    let key = object_key(obj);
    let delay = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    kube::runtime::controller::Action::requeue(delay)
}

/// The backoff key of an object.
pub fn object_key<K: kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backoff_doubles_to_a_ceiling_and_resets() {
        let (client, _server) = super::super::mock::mock_client();
        let ctx = Context::new(
            client,
            super::super::mock::FakeRegistry::new(),
            Arc::new(OperatorMetrics::new()),
            Settings::default(),
        );
        let delays: Vec<u64> = (0..8).map(|_| ctx.backoff("a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(ctx.backoff("b").as_secs(), 5, "keys are independent");
        ctx.reset_backoff("a");
        assert_eq!(ctx.backoff("a").as_secs(), 5);
    }
}
