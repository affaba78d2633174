//! What a prune did (or, dry, would do): the report every surface returns, the CLI prints and the
//! operator records in a PrunePolicy's status.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// What a prune did (or, dry, would do).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub dry_run: bool,
    /// Every manifest considered, least recently pulled first.
    pub items: Vec<Item>,
    /// Removed (or, dry, to be removed).
    pub totals: Totals,
    pub protected: BTreeMap<String, u64>,
    pub kept: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Blobs removed (or to be removed).
    pub blobs: Vec<Digest>,
    pub started: Timestamp,
    pub duration_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Prune,
    Keep,
    Protected,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Prune => "prune",
            Decision::Keep => "keep",
            Decision::Protected => "protected",
        })
    }
}

/// One manifest the run considered, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub reference: String,
    pub digest: Digest,
    pub decision: Decision,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
}
