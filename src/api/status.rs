//! `GET /admin/v1/status`: what a registry pod holds, in one cheap call. The operator reads it
//! for the ImageCache status (images, blobs, bytes, capacity, last prune).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A registry pod's cache, as the operator sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStatus {
    pub manifests: u64,
    pub blobs: u64,
    /// Bytes of every cached blob.
    pub bytes: u64,
    /// Size of the cache volume, when the file system tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// Free space on the cache volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// The store's change revision (the Image API's resourceVersion).
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<PruneSummary>,
}

/// The latest prune run of a registry process (any trigger).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneSummary {
    pub started: Timestamp,
    pub trigger: String,
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
}
