//! The prune engine: one planner and one executor behind the CLI, `/cmd/prune`,
//! `POST /admin/v1/prune`, background pruning and PrunePolicy.
//!
//! Layer: the request and the report it works with are wire shapes in [`crate::api`]; the engine
//! plans over the [`crate::store`] and counts in [`crate::metrics`]. It knows no registry (HTTP
//! data plane), no admin or image API and no operator: those call it.

pub mod exec;
pub mod plan;
pub mod service;
#[cfg(test)]
mod tests;

pub use exec::{PruneError, inventory, run, volume};
pub use plan::{Entry, Inventory, Plan, Volume, plan};
pub use service::PruneService;
