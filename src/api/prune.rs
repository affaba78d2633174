//! The prune request of design section 3: selectors, keep rules, protections, capacity and
//! limits. One shape for the CLI, `/cmd/prune`, `POST /admin/v1/prune`, background pruning and
//! the PrunePolicy resource, with its defaults, its schema patterns and the one validation every
//! reader applies ([`PruneRequest::compile`]): the registry before it plans, the config file and
//! the operator before they send it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::duration::{DURATION_PATTERN, serde_human_opt};

/// Seed default for `count`.
pub const DEFAULT_COUNT: i64 = 50;
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_DELETION_RATIO: f64 = 0.5;
/// Pause images are what every pod sandbox needs; losing them stalls every node.
pub const DEFAULT_PINNED: &[&str] = &[r"/pause[:@]", r"/pause$"];
/// A size (`500Mi`, `20G`, `1.5Ti`, `1024`) or a share of the volume (`80%`): [`Quantity`].
pub const SIZE_OR_PERCENT_PATTERN: &str =
    r"^(([0-9]+(\.[0-9]+)?(k|K|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?)|([0-9]+(\.[0-9]+)?%))$";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PruneRequest {
    /// Selects images not pulled within this duration.
    #[serde(with = "serde_human_opt", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", regex(pattern = DURATION_PATTERN))]
    pub unused_for: Option<Duration>,
    /// Selects images first cached before now minus this duration.
    #[serde(with = "serde_human_opt", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", regex(pattern = DURATION_PATTERN))]
    pub older_than: Option<Duration>,
    /// Selects images first cached before this instant.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub created_before: Option<Timestamp>,
    /// Selects images whose manifest URL matches any of these regexes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    /// Selects images whose config labels match all of these (`key`, `key=value`, `key!=value`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Selects manifests no tag points to (children of an index count as tagged through it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub untagged: bool,
    /// Selects exactly these manifests (deletes by name: the Image and Docker APIs, CachedImage).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<Digest>,

    /// Keeps images whose manifest URL matches any of these regexes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keep_patterns: Vec<String>,
    /// Keeps the N most recently pulled images of each repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    // `uint32` is no format Kubernetes knows (it warns on every CRD apply).
    #[schemars(extend("format" = "int32"))]
    pub most_recently_pulled: Option<u32>,
    /// Keeps images pulled within this duration.
    #[serde(with = "serde_human_opt", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", regex(pattern = DURATION_PATTERN))]
    pub pulled_within: Option<Duration>,

    /// Never prunes images first cached less than this long ago (default 1h).
    #[serde(with = "serde_human_opt", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", regex(pattern = DURATION_PATTERN))]
    pub min_age: Option<Duration>,
    /// Never prunes images whose URL matches these regexes (default: pause images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Vec<String>>,
    /// Image references in use in the cluster (`nginx:1.27`, `quay.io/x/y@sha256:...`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<String>,

    /// Evict least recently pulled images until the cache is below this (`50Gi`, `80%`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_OR_PERCENT_PATTERN))]
    pub max_used_space: Option<String>,
    /// Evict least recently pulled images until the volume has this much free (`10Gi`, `20%`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_OR_PERCENT_PATTERN))]
    pub min_free_space: Option<String>,

    /// Most images selected in one run (default 50; -1: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub count: Option<i64>,
    /// Refuse a run that would delete more than this share of the cache (default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_deletion_ratio: Option<f64>,
    /// Report what would be pruned without deleting anything.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("invalid regex {pattern:?} in {field}: {message}")]
    Regex {
        field: &'static str,
        pattern: String,
        message: String,
    },
    #[error("invalid label selector {0:?}: expected key, key=value or key!=value")]
    Label(String),
    #[error(
        "invalid {field} {value:?}: expected bytes (e.g. 500Mi, 20Gi, 1T) or a percentage (e.g. 80%)"
    )]
    Quantity { field: &'static str, value: String },
    #[error("count must be -1 (no limit) or a non-negative number, got {0}")]
    Count(i64),
    #[error("maxDeletionRatio must be between 0 and 1, got {0}")]
    Ratio(f64),
}

/// A label selector term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelTerm {
    Exists(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl LabelTerm {
    pub fn parse(s: &str) -> Result<LabelTerm, RequestError> {
        let bad = || RequestError::Label(s.to_owned());
        let term = if let Some((k, v)) = s.split_once("!=") {
            LabelTerm::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = s.split_once('=') {
            LabelTerm::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else {
            LabelTerm::Exists(s.trim().to_owned())
        };
        match &term {
            LabelTerm::Exists(k) | LabelTerm::Equals(k, _) | LabelTerm::NotEquals(k, _)
                if k.is_empty() || k.contains(char::is_whitespace) =>
            {
                Err(bad())
            }
            _ => Ok(term),
        }
    }

    pub fn matches(&self, labels: &impl Labels) -> bool {
        match self {
            LabelTerm::Exists(k) => labels.label(k).is_some(),
            LabelTerm::Equals(k, v) => labels.label(k) == Some(v.as_str()),
            LabelTerm::NotEquals(k, v) => labels.label(k) != Some(v.as_str()),
        }
    }
}

/// Image config labels as a [`LabelTerm`] reads them: the store's compact map in the planner,
/// a plain map elsewhere.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A size: absolute bytes or a share of the volume.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Quantity {
    Bytes(u64),
    Percent(f64),
}

impl Quantity {
    /// Kubernetes-style quantities (`500Mi`, `20G`, `1.5Ti`, `1024`) and percentages (`80%`).
    pub fn parse(field: &'static str, s: &str) -> Result<Quantity, RequestError> {
        let bad = || RequestError::Quantity {
            field,
            value: s.to_owned(),
        };
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            return if (0.0..=100.0).contains(&p) {
                Ok(Quantity::Percent(p))
            } else {
                Err(bad())
            };
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let mult: f64 = match unit {
            "" => 1.0,
            "k" | "K" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            _ => return Err(bad()),
        };
        let bytes = n * mult;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(Quantity::Bytes(bytes as u64))
    }

    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            Quantity::Bytes(b) => b,
            Quantity::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

/// A request with its regexes compiled and defaults applied: what the planner consumes.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub unused_for: Option<Duration>,
    pub older_than: Option<Duration>,
    pub created_before: Option<Timestamp>,
    pub patterns: Vec<Regex>,
    pub labels: Vec<LabelTerm>,
    pub untagged: bool,
    pub digests: HashSet<Digest>,
    pub keep_patterns: Vec<Regex>,
    pub most_recently_pulled: Option<u32>,
    pub pulled_within: Option<Duration>,
    pub min_age: Duration,
    pub pinned: Vec<Regex>,
    pub in_use: Vec<String>,
    pub max_used_space: Option<Quantity>,
    pub min_free_space: Option<Quantity>,
    /// `None`: no limit.
    pub count: Option<usize>,
    pub max_deletion_ratio: f64,
    pub dry_run: bool,
}

impl Compiled {
    pub fn has_selector(&self) -> bool {
        self.unused_for.is_some()
            || self.older_than.is_some()
            || self.created_before.is_some()
            || !self.patterns.is_empty()
            || !self.labels.is_empty()
            || self.untagged
            || !self.digests.is_empty()
    }
}

fn regexes(field: &'static str, patterns: &[String]) -> Result<Vec<Regex>, RequestError> {
    patterns
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            Regex::new(p).map_err(|e| RequestError::Regex {
                field,
                pattern: p.to_owned(),
                message: e.to_string().lines().last().unwrap_or("").trim().to_owned(),
            })
        })
        .collect()
}

impl PruneRequest {
    /// Removes exactly these manifests (and the children only they hold), as an explicit
    /// delete by name does: no minimum age, no pinning, no ratio or count limit.
    pub fn delete(digests: Vec<Digest>) -> PruneRequest {
        PruneRequest {
            digests,
            min_age: Some(Duration::ZERO),
            pinned: Some(Vec::new()),
            count: Some(-1),
            max_deletion_ratio: Some(1.0),
            ..Default::default()
        }
    }

    /// Validates and compiles; every error names the field and the offending value.
    pub fn compile(&self) -> Result<Compiled, RequestError> {
        let count = match self.count.unwrap_or(DEFAULT_COUNT) {
            -1 => None,
            n if n >= 0 => Some(n as usize),
            n => return Err(RequestError::Count(n)),
        };
        let ratio = self
            .max_deletion_ratio
            .unwrap_or(DEFAULT_MAX_DELETION_RATIO);
        if !(0.0..=1.0).contains(&ratio) {
            return Err(RequestError::Ratio(ratio));
        }
        let pinned = match &self.pinned {
            Some(p) => regexes("pinned", p)?,
            None => regexes(
                "pinned",
                &DEFAULT_PINNED
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )?,
        };
        Ok(Compiled {
            unused_for: self.unused_for,
            older_than: self.older_than,
            created_before: self.created_before,
            patterns: regexes("patterns", &self.patterns)?,
            labels: self
                .labels
                .iter()
                .flat_map(|l| l.split(','))
                .filter(|l| !l.trim().is_empty())
                .map(LabelTerm::parse)
                .collect::<Result<_, _>>()?,
            untagged: self.untagged,
            digests: self.digests.iter().cloned().collect(),
            keep_patterns: regexes("keepPatterns", &self.keep_patterns)?,
            most_recently_pulled: self.most_recently_pulled,
            pulled_within: self.pulled_within,
            min_age: self.min_age.unwrap_or(DEFAULT_MIN_AGE),
            pinned,
            in_use: self.in_use.clone(),
            max_used_space: self
                .max_used_space
                .as_deref()
                .map(|q| Quantity::parse("maxUsedSpace", q))
                .transpose()?,
            min_free_space: self
                .min_free_space
                .as_deref()
                .map(|q| Quantity::parse("minFreeSpace", q))
                .transpose()?,
            count,
            max_deletion_ratio: ratio,
            dry_run: self.dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(
            Quantity::parse("f", "500Mi"),
            Ok(Quantity::Bytes(500 << 20))
        );
        assert_eq!(
            Quantity::parse("f", "2G"),
            Ok(Quantity::Bytes(2_000_000_000))
        );
        assert_eq!(Quantity::parse("f", "1.5Ki"), Ok(Quantity::Bytes(1536)));
        assert_eq!(Quantity::parse("f", "80%"), Ok(Quantity::Percent(80.0)));
        assert_eq!(Quantity::Percent(50.0).bytes_of(1000), 500);
        for bad in ["", "ten", "5Xi", "-1", "120%", "1e9"] {
            assert!(Quantity::parse("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        let m = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        assert!(LabelTerm::parse("team").unwrap().matches(&m));
        assert!(LabelTerm::parse("team=a").unwrap().matches(&m));
        assert!(!LabelTerm::parse("team!=a").unwrap().matches(&m));
        assert!(LabelTerm::parse("other!=a").unwrap().matches(&m));
        assert!(LabelTerm::parse("=a").is_err());
    }

    #[test]
    fn defaults_and_validation() {
        let c = PruneRequest::default().compile().unwrap();
        assert_eq!(c.count, Some(50));
        assert_eq!(c.min_age, DEFAULT_MIN_AGE);
        assert!(
            c.pinned
                .iter()
                .any(|p| p.is_match("registry.k8s.io/pause:3.9"))
        );
        assert!(!c.has_selector());
        let bad = PruneRequest {
            patterns: vec!["ok,(unclosed".into()],
            ..Default::default()
        };
        let err = bad.compile().unwrap_err().to_string();
        assert!(err.contains("(unclosed"), "{err}");
        assert!(
            PruneRequest {
                count: Some(-2),
                ..Default::default()
            }
            .compile()
            .is_err()
        );
        assert!(
            PruneRequest {
                max_deletion_ratio: Some(1.5),
                ..Default::default()
            }
            .compile()
            .is_err()
        );
        let json = r#"{"unusedFor":"30d","patterns":["calico"],"count":-1,"dryRun":true}"#;
        let r: PruneRequest = serde_json::from_str(json).unwrap();
        assert_eq!(r.unused_for, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(r.compile().unwrap().count, None);
        assert!(serde_json::from_str::<PruneRequest>(r#"{"unsedFor":"1d"}"#).is_err());
    }
}
