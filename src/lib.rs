//! imagecache: an in-cluster pull-through caching OCI registry.
//!
//! A map of the crate, lowest layer first (each module's `//!` doc states its rule, and
//! `tests/architecture.rs` checks them all and that no two modules import each other):
//! - [`digest`], [`duration`], [`reference`], [`schedule`]: values and their parsers (what
//!   clients and config files send); they import nothing above them.
//! - [`api`]: the shapes that cross a process boundary (prune request and report, cache status,
//!   the Image object, sizes); a leaf over the value modules.
//! - [`config`]: the config file and its defaults (a leaf); [`crd`]: the operator's resources.
//! - [`store`]: the content-addressed disk cache and its in-memory index (no HTTP, no cluster).
//! - [`metrics`]: the families; [`prune`]: the prune engine; [`listing`]: list rows and columns.
//! - [`upstream`]: pooled, authenticated clients for the allowlisted upstream registries;
//!   [`peers`]: the other replicas of the same cache (membership, rendezvous ownership, the
//!   peer client).
//! - [`registry`]: the distribution pull API over the store, the peers and the upstreams;
//!   [`load`]: preloading through it.
//! - [`admin`]: health, readiness, metrics, `/cmd/*` and the admin token gate; [`imageapi`]: the
//!   Image and Docker image APIs mounted beside it.
//! - [`server`]: wiring for `imagecache serve` (it composes the admin listener).
//! - [`nodeconfig`]: `imagecache node-config`, the node's containerd/CRI-O mirror files.
//! - [`operator`]: the Kubernetes operator; it talks to registry pods over HTTP with [`api`].
//! - [`cli`]: subcommands and flags, on top of everything.
//!
//! Code layout: a module with children lives in `dir/mod.rs`; a module's unit tests are its
//! `tests` child, inline or in `tests.rs` in its directory.
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
pub mod peers;
pub mod prune;
pub mod reference;
pub mod registry;
pub mod schedule;
pub mod server;
pub mod store;
pub mod upstream;
