//! imagecache: an in-cluster pull-through caching OCI registry.
//!
//! A map of the crate:
//! - [`reference`], [`digest`], [`duration`]: pure parsing of what clients and config send.
//! - [`config`]: the config file and its defaults; [`cli`]: subcommands and flags.
//! - [`store`]: the content-addressed disk cache and its in-memory index (no HTTP inside).
//! - [`upstream`]: pooled, authenticated clients for the allowlisted upstream registries.
//! - [`registry`]: the distribution pull API over the store and the upstreams.
//! - [`admin`]: health, readiness, metrics and the admin token gate; [`metrics`]: the families.
//! - [`server`]: wiring for `imagecache serve`.
//! - [`nodeconfig`]: `imagecache node-config`, the node's containerd/CRI-O mirror files.
//! - [`operator`]: the ImageCache operator (desired state of the children it owns).
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod crd;
pub mod digest;
pub mod duration;
pub mod imageapi;
pub mod listing;
pub mod load;
pub mod metrics;
pub mod nodeconfig;
pub mod operator;
pub mod prune;
pub mod reference;
pub mod registry;
pub mod schedule;
pub mod server;
pub mod store;
pub mod upstream;
