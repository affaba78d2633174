//! CachedImage: one object per manifest an ImageCache holds (design sections 5 and 6).
//!
//! - [`mapping`]: pure, an Image of a registry pod's Image API to the desired CachedImage
//!   (name `<cache>-<algorithm>-<hex>`, labels, owner reference).
//! - [`state`]: pure, the sync of one cache as a state machine (what to apply or delete, the
//!   `lastPulled` rate limit, restart reconciliation).
//! - [`sync`]: the IO around it: watches of ImageCaches, registry pods and CachedImages, one
//!   Image API watch per ready registry pod, server-side apply and delete.
//! - [`finalizer`]: the controller that prunes a deleted CachedImage's digest from every ready
//!   registry pod of its cache before letting the object go (finalizer `imagecache.io/prune`).

pub mod finalizer;
pub mod mapping;
pub mod state;
pub mod sync;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Context;

pub use mapping::{CACHE_LABEL, object_name};

/// The finalizer that prunes the image from the cache when its CachedImage is deleted.
pub const FINALIZER: &str = "imagecache.io/prune";

/// Runs the sync and the finalizer controller until `shutdown`; `namespace` limits both to one
/// namespace (`None`: all).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    tokio::join!(
        sync::run(ctx.clone(), namespace.clone(), shutdown.clone()),
        finalizer::run(ctx, namespace, shutdown),
    );
}
