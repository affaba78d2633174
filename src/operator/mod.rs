//! The ImageCache operator (design section 6).
//!
//! - [`desired`]: the pure desired state of an ImageCache's children (ConfigMap, StatefulSet,
//!   Services, admin token Secret, PodDisruptionBudget, node-config DaemonSet), built from the
//!   spec with no API calls.
//! - [`imagecache`]: the ImageCache controller (children by server-side apply, status, events).
//! - [`pods`]: the registry pods of a cache and the calls made to them (admin API, Image API).
//! - [`prunepolicy`]: the PrunePolicy controller (scheduled prunes of a cache's pods), with
//!   [`inuse`], the images the cluster uses.
//! - [`conditions`]: status conditions per the API conventions.
//! - [`cachedimage`]: the CachedImage sync from the registry pods' Image API, and the finalizer
//!   that prunes a deleted CachedImage's image from the cache.
//! - [`leader`]: leader election on a Lease; [`run`]: `imagecache operator` (health, metrics,
//!   election, the three controllers, graceful shutdown); [`teardown`]: `imagecache operator
//!   teardown`, the chart's pre-delete hook (caches deleted while the operator still runs).
//! - [`context`], [`error`], [`metrics`]: what the reconcilers share; [`report`]: how they
//!   write a status and publish an Event.
//!
//! Layer: a client of the cluster and of the registry pods. It talks to the pods over HTTP
//! with the shapes of [`crate::api`] and builds on [`crate::crd`]; it never touches the store,
//! the prune engine or the registry's code.

pub mod cachedimage;
pub mod conditions;
pub mod context;
pub mod desired;
pub mod error;
pub mod imagecache;
pub mod inuse;
pub mod leader;
pub mod metrics;
pub mod pods;
pub mod prunepolicy;
pub mod report;
pub mod run;
pub mod teardown;

#[cfg(test)]
pub(crate) mod mock;

pub use context::{Context, DEFAULT_REGISTRY_IMAGE, MANAGER, Settings};
pub use error::OperatorError;
