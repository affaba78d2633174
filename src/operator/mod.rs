//! The ImageCache operator (design section 6).
//!
//! - [`desired`]: the pure desired state of an ImageCache's children (ConfigMap, StatefulSet,
//!   Services, admin token Secret, PodDisruptionBudget), built from the spec with no API calls.

pub mod desired;
