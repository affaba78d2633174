//! The prune engine: one planner and one executor behind the CLI, `/cmd/prune`,
//! `POST /admin/v1/prune`, background pruning and PrunePolicy.

pub mod plan;
pub mod request;

pub use plan::{Decision, Entry, Inventory, Item, Plan, Totals, Volume, plan};
pub use request::{Compiled, PruneRequest, RequestError};
pub mod exec;

pub use exec::{PruneError, Report, inventory, run, volume};

pub mod service;
#[cfg(test)]
mod tests;

pub use service::PruneService;
