//! `imagecache operator teardown`: deletes ImageCaches while the operator still runs, and waits
//! until they are gone. The chart runs it as its pre-delete hook.
//!
//! Why: a CachedImage carries the `imagecache.io/prune` finalizer, which only a running operator
//! removes. `helm uninstall` deletes the operator's Deployment and RBAC in the same sweep as the
//! chart's ImageCache, so the CachedImages the garbage collector then deletes would wait for an
//! operator that no longer exists (and hold their namespace's deletion with them). Deleted first,
//! in the foreground, an ImageCache stays until every dependent that blocks it is gone: its
//! CachedImages are released by the operator (their cache is going), then the cache goes.

use std::time::Duration;

use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

use super::OperatorError;
use super::cachedimage::FINALIZER;
use crate::crd::{CachedImage, ImageCache};

/// How often the caches are looked at while they go.
const POLL: Duration = Duration::from_secs(1);

/// Deletes each named ImageCache of `namespace` in the foreground and waits until all are gone
/// (`OperatorError::Stuck` after `timeout`, naming what holds them). Names already gone are fine.
pub async fn teardown(
    client: Client,
    namespace: &str,
    names: &[String],
    timeout: Duration,
) -> Result<(), OperatorError> {
    let caches: Api<ImageCache> = Api::namespaced(client.clone(), namespace);
    for name in names {
        match caches.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => tracing::info!(%namespace, cache = %name, "deleting, in the foreground"),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::info!(%namespace, cache = %name, "already gone")
            }
            Err(e) => return Err(e.into()),
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = Vec::new();
        for name in names {
            if caches.get_opt(name).await?.is_some() {
                left.push(name.clone());
            }
        }
        if left.is_empty() {
            tracing::info!(%namespace, caches = ?names, "gone");
            return Ok(());
        }
        if Instant::now() >= deadline {
            let held = held_cached_images(&client, namespace, &left).await?;
            return Err(OperatorError::Stuck(format!(
                "ImageCache {} in {namespace} not gone after {timeout:?}; CachedImages still \
                 held by the {FINALIZER} finalizer: [{}] (is the operator running?)",
                left.join(", "),
                held.join(", ")
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The CachedImages of `caches` that still carry the prune finalizer.
async fn held_cached_images(
    client: &Client,
    namespace: &str,
    caches: &[String],
) -> Result<Vec<String>, OperatorError> {
    let api: Api<CachedImage> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|c| caches.contains(&c.spec.cache_ref.name))
        .filter(|c| c.finalizers().iter().any(|f| f == FINALIZER))
        .map(|c| c.name_any())
        .collect())
}
