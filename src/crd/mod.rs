//! The operator's custom resources (design section 6): [`ImageCache`], [`PrunePolicy`] and
//! [`CachedImage`] in `imagecache.io/v1alpha1`, and the `imagecache crds` generator.
//!
//! The schemas come from the Rust types (kube-derive + schemars); what the schema alone cannot
//! say is added as CEL rules (`x-kubernetes-validations`) with `#[x_kube(validation = ...)]`.
//! `crds/` in the repository is generated from here (`imagecache crds --out crds`); a test fails
//! when the two drift.
//!
//! Layer: wire shapes for the apiserver. It imports only [`crate::api`] (the prune request a
//! PrunePolicy carries) and the value modules; the operator builds on it.

// kube's `printcolumn(type_ = ..)` groups repeat key-value pairs, which clippy's
// `duplicated_attributes` mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
mod cachedimage;
#[allow(clippy::duplicated_attributes)]
mod imagecache;
#[allow(clippy::duplicated_attributes)]
mod prunepolicy;
pub mod reference;

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use cachedimage::{CachedImage, CachedImageSpec, CachedImageStatus, ImageLayer};
pub use imagecache::{
    ImageCache, ImageCacheSpec, ImageCacheStatus, LastPrune, MirrorRuntime, NodeMirrorSpec,
    PodSummary, PreloadSpec, SchedulingSpec, ServiceSpec, ServiceType, StorageSpec, UpstreamSpec,
};
pub use prunepolicy::{
    HISTORY_LIMIT, ITEMS_LIMIT, PrunePolicy, PrunePolicySpec, PrunePolicyStatus, PruneRun,
    PruneRunItem, PruneRunPod, PruneRunTotals,
};

/// The API group of every resource here.
pub const GROUP: &str = "imagecache.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// A volume size: an unsigned Kubernetes quantity of bytes (`20Gi`, `500M`, `1.5Ti`, `1e9`), so a
/// size the claim would refuse (`20GB`, `-1Gi`) is refused when the ImageCache is applied. It
/// checks the string form only; the integer form (`21474836480`) is a count of bytes.
pub const STORAGE_SIZE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE]|[eE][0-9]+)?$";
/// Characters a 5-field cron expression is made of (names such as `MON` or `JAN` included).
pub const CRON_PATTERN: &str = r"^[0-9A-Za-z*?/,#\- ]+$";
/// The category of all three kinds: `kubectl get imagecache-all`. Not `imagecache`: kubectl
/// expands a category before it resolves a resource, so a category named like the ImageCache
/// kind would make `kubectl get imagecache` list all three kinds.
pub const CATEGORY: &str = "imagecache-all";

/// The CEL rule that checks each field of a 5-field cron expression as the operator's parser
/// reads it: values in range (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC,
/// day of week 0-7 or SUN-SAT), `*`, ranges, steps and lists, `?` in either day field, `L`,
/// `LW` and `nW` in the day of month, `nL` and `n#k` in the day of week. No backslashes: the
/// pattern sits in a CEL string literal.
pub fn cron_rule() -> String {
    // A step follows `*` or a range only: the parser refuses `5/15`.
    fn item(value: &str) -> String {
        format!("([*](/[0-9]{{1,2}})?|{value}(-{value}(/[0-9]{{1,2}})?)?)")
    }
    fn list(item: &str) -> String {
        format!("{item}(,{item})*")
    }
    let minute = list(&item("[0-5]?[0-9]"));
    let hour = list(&item("([01]?[0-9]|2[0-3])"));
    let day = "(0?[1-9]|[12][0-9]|3[01])";
    let day_of_month = format!("([?]|{}|L|LW|{day}W)", list(&item(day)));
    let month = list(&item(
        "(0?[1-9]|1[0-2]|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)",
    ));
    let weekday = "([0-7]|SUN|MON|TUE|WED|THU|FRI|SAT)";
    let dow_item = format!("({}|{weekday}L|{weekday}#[1-5]|L)", item(weekday));
    let day_of_week = format!("([?]|{})", list(&dow_item));
    // Only for five fields: the field count has a rule (and a message) of its own.
    format!(
        "!self.matches('^ *[^ ]+( +[^ ]+){{4}} *$') || \
         self.matches('(?i)^ *{minute} +{hour} +{day_of_month} +{month} +{day_of_week} *$')"
    )
}

/// A platform as `os/arch` or `os/arch/variant`.
pub const PLATFORM_PATTERN: &str = r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$";
/// A reference to an object in the same namespace: a DNS-1123 subdomain.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

/// A reference to the ImageCache a PrunePolicy or CachedImage belongs to (same namespace).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct CacheRef {
    /// Name of the ImageCache in this namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
}

/// The three CustomResourceDefinitions, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![ImageCache::crd(), PrunePolicy::crd(), CachedImage::crd()]
}

/// The file name `imagecache crds --out DIR` gives a CRD: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default())
}

/// One CRD as YAML.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    serde_saphyr::to_string(crd).map_err(CrdError::Yaml)
}

/// All CRDs as one multi-document YAML stream.
pub fn to_multi_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

/// Writes each CRD to `dir/<plural>.<group>.yaml` (creating `dir`); returns the paths written.
pub fn write_dir(dir: &Path) -> Result<Vec<PathBuf>, CrdError> {
    let io = |path: &Path, source| CrdError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    for crd in crds() {
        let path = dir.join(file_name(&crd));
        std::fs::write(&path, to_yaml(&crd)?).map_err(|e| io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("cannot render a CRD as YAML: {0}")]
    Yaml(#[source] serde_saphyr::ser::Error),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests;
