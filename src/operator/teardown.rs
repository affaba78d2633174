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

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use serde_json::{Value, json};

    use super::*;
    use crate::operator::mock;

    const CACHES: &str = "/apis/imagecache.io/v1alpha1/namespaces/ns/imagecaches";

    fn cache(name: &str) -> Value {
        json!({"apiVersion": "imagecache.io/v1alpha1", "kind": "ImageCache",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("{name}-uid"),
                "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["foregroundDeletion"]},
            "spec": {}})
    }

    fn cached_image(name: &str, cache: &str, finalizers: &[&str]) -> Value {
        json!({"apiVersion": "imagecache.io/v1alpha1", "kind": "CachedImage",
            "metadata": {"name": name, "namespace": "ns", "finalizers": finalizers},
            "spec": {"cacheRef": {"name": cache}, "digest": format!("sha256:{}", "a".repeat(64)),
                "reference": "docker.io/library/x",
                "mediaType": "application/vnd.oci.image.manifest.v1+json"}})
    }

    #[tokio::test]
    async fn deletes_in_the_foreground_and_waits_until_gone() {
        let (client, mut server) = mock::mock_client();
        let names = vec!["a".to_owned(), "b".to_owned()];
        let task =
            tokio::spawn(
                async move { teardown(client, "ns", &names, Duration::from_secs(60)).await },
            );
        let del = server.expect(Method::DELETE, &format!("{CACHES}/a")).await;
        assert_eq!(del.body["propagationPolicy"], "Foreground");
        del.respond(200, cache("a"));
        // Already gone: fine.
        server
            .expect(Method::DELETE, &format!("{CACHES}/b"))
            .await
            .not_found();
        // `a` is still there (its dependents go first), then gone.
        server
            .expect(Method::GET, &format!("{CACHES}/a"))
            .await
            .respond(200, cache("a"));
        server
            .expect(Method::GET, &format!("{CACHES}/b"))
            .await
            .not_found();
        server
            .expect(Method::GET, &format!("{CACHES}/a"))
            .await
            .not_found();
        server
            .expect(Method::GET, &format!("{CACHES}/b"))
            .await
            .not_found();
        task.await.unwrap().expect("gone");
        server.expect_silence(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn a_cache_that_does_not_go_names_what_holds_it() {
        let (client, mut server) = mock::mock_client();
        let names = vec!["a".to_owned()];
        let task =
            tokio::spawn(async move { teardown(client, "ns", &names, Duration::ZERO).await });
        server
            .expect(Method::DELETE, &format!("{CACHES}/a"))
            .await
            .respond(200, cache("a"));
        server
            .expect(Method::GET, &format!("{CACHES}/a"))
            .await
            .respond(200, cache("a"));
        server
            .expect(
                Method::GET,
                "/apis/imagecache.io/v1alpha1/namespaces/ns/cachedimages",
            )
            .await
            .respond(
                200,
                json!({"apiVersion": "imagecache.io/v1alpha1", "kind": "CachedImageList",
                "metadata": {}, "items": [
                    cached_image("held", "a", &[FINALIZER]),
                    cached_image("released", "a", &[]),
                    cached_image("other-cache", "b", &[FINALIZER]),
                ]}),
            );
        let err = task.await.unwrap().expect_err("stuck");
        let message = err.to_string();
        assert!(matches!(err, OperatorError::Stuck(_)), "{err:?}");
        assert!(
            message.contains("ImageCache a in ns not gone") && message.contains("[held]"),
            "{message}"
        );
    }
}
