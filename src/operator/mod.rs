//! The ImageCache operator (design section 6).
//!
//! - [`desired`]: the pure desired state of an ImageCache's children (ConfigMap, StatefulSet,
//!   Services, admin token Secret, PodDisruptionBudget, node-config DaemonSet), built from the
//!   spec with no API calls.
//! - [`imagecache`]: the ImageCache controller (children by server-side apply, status, events).
//! - [`pods`]: the registry pods of a cache and the calls made to them (admin API, Image API).
//! - [`conditions`]: status conditions per the API conventions.
//! - [`context`], [`error`], [`metrics`]: what the reconcilers share.

pub mod conditions;
pub mod context;
pub mod desired;
pub mod error;
pub mod imagecache;
pub mod metrics;
pub mod pods;

#[cfg(test)]
#[allow(dead_code)] // Each reconciler's tests use a part of it.
pub(crate) mod mock;

pub use context::{Context, MANAGER, Settings};
pub use error::OperatorError;
