//! CachedImages on the real control plane: one per manifest after pulls, naming the Pods that
//! hold it, `lastPulled` following later pulls, the printer columns as kubectl prints them,
//! and `kubectl delete` of one pruning the image from the cache.

use imagecache::crd::CachedImage;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use crate::fixture::{Fixture, UPSTREAM};
use crate::harness::{WAIT, eventually, kubectl, rows};

const CACHE: &str = "cache";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the test cluster: scripts/test runs it"]
async fn cached_images_follow_pulls_and_prune_on_delete() {
    let fx = Fixture::new("cimg", &["alpha", "beta"]).await;
    let ns = fx.ns().to_owned();
    fx.create_cache(CACHE, json!({})).await;
    fx.ready(CACHE, 1).await;
    fx.pull("cache-0", "alpha");
    fx.pull("cache-0", "beta");

    let cimgs: Api<CachedImage> = Api::namespaced(fx.client().clone(), &ns);
    let held = eventually("two CachedImages", WAIT, || async {
        let list = cimgs.list(&ListParams::default()).await.ok()?;
        (list.items.len() == 2 && list.items.iter().all(|c| c.spec.last_pulled.is_some()))
            .then_some(list.items)
    })
    .await;
    let by_digest = |d: &str| {
        held.iter()
            .find(|c| c.spec.digest.to_string() == d)
            .unwrap_or_else(|| panic!("a CachedImage for {d}"))
            .clone()
    };
    let alpha = by_digest(&fx.digests["alpha"]);
    assert_eq!(alpha.spec.cache_ref.name, CACHE);
    assert_eq!(alpha.spec.pods, vec!["cache-0".to_owned()]);
    assert_eq!(alpha.spec.tags, vec![format!("{UPSTREAM}/e2e/alpha:1")]);
    assert_eq!(
        alpha.spec.reference,
        format!("{UPSTREAM}/e2e/alpha@{}", fx.digests["alpha"])
    );
    assert!(alpha.spec.size > 6144, "{:?}", alpha.spec);
    assert_eq!(alpha.finalizers(), ["imagecache.io/prune"]);

    // The printer columns, values included.
    let table = kubectl(&["get", "cachedimage", &alpha.name_any(), "-n", &ns]);
    let row = &rows(&table)[0];
    assert_eq!(row["REFERENCE"], alpha.spec.reference, "{table}");
    // List columns print as JSON arrays (the apiserver prints a `string` column's value as
    // JSON when it is not a string).
    assert_eq!(
        row["TAGS"],
        format!(r#"["{UPSTREAM}/e2e/alpha:1"]"#),
        "{table}"
    );
    assert_eq!(row["SIZE"], alpha.spec.size.to_string(), "{table}");
    assert_eq!(row["PODS"], r#"["cache-0"]"#, "{table}");
    assert!(row["LAST-PULLED"].ends_with('s'), "{table}");
    assert!(row["AGE"].ends_with('s'), "{table}");

    // A later pull moves lastPulled (the operator runs with --min-update-interval 1s).
    let first = alpha.spec.last_pulled.clone().expect("lastPulled").0;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    fx.pull("cache-0", "alpha");
    let name = alpha.name_any();
    eventually("lastPulled to move", WAIT, || async {
        let c = cimgs.get(&name).await.ok()?;
        (c.spec.last_pulled?.0 > first).then_some(())
    })
    .await;

    // Deleting one prunes the image from the cache before the object goes.
    let beta = by_digest(&fx.digests["beta"]).name_any();
    cimgs
        .delete(&beta, &DeleteParams::default())
        .await
        .expect("delete a CachedImage");
    eventually("the CachedImage to be gone", WAIT, || async {
        cimgs.get_opt(&beta).await.ok()?.is_none().then_some(())
    })
    .await;
    let held_now = fx.held(CACHE, "cache-0").await;
    assert!(!held_now.contains(&fx.digests["beta"]), "pruned");
    assert!(held_now.contains(&fx.digests["alpha"]), "the other stays");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        cimgs.get_opt(&beta).await.expect("get").is_none(),
        "the sync does not bring a pruned image back"
    );
    fx.finish().await;
}
