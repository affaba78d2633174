//! The shapes that cross a process boundary, in one leaf: what the server answers, the CLI prints
//! and the operator sends and reads.
//!
//! - [`prune`]: the prune request with its defaults, schema patterns and validation
//!   ([`PruneRequest::compile`]); [`report`]: the prune report (items, totals, decisions).
//! - [`status`]: `GET /admin/v1/status`, a registry pod's cache and its last prune.
//! - [`image`]: the OpenShift `Image` the Image API serves and the operator watches, with its
//!   label and annotation keys.
//! - [`size`]: byte counts as people read them.
//!
//! Layer: a leaf. It uses only the value modules [`crate::digest`] and [`crate::duration`] (the
//! values these shapes carry), and no server, store, client or controller runtime: no axum,
//! reqwest, tokio or kube runtime. Whoever builds a shape from the store (the Image API's
//! `from_record`, the prune executor's report) does it on its own side.

pub mod image;
pub mod prune;
pub mod report;
pub mod size;
pub mod status;

pub use image::Image;
pub use prune::{
    Compiled, DEFAULT_COUNT, DEFAULT_MAX_DELETION_RATIO, DEFAULT_MIN_AGE, DEFAULT_PINNED,
    LabelTerm, Labels, PruneRequest, Quantity, RequestError, SIZE_OR_PERCENT_PATTERN,
};
pub use report::{Decision, Item, Report, Totals};
pub use size::human_size;
pub use status::{CacheStatus, PruneSummary};
