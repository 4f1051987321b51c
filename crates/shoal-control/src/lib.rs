//! shoal's decisions, as pure functions: given the cluster's state (services, tasks, nodes,
//! networks) and the [`Inputs`] (the time, a seed for new IDs), which tasks should exist, which
//! must stop, which addresses they get and on which node they run.
//!
//! Nothing here does I/O, reads the clock or draws a random number (`clippy.toml` refuses the
//! calls), so the same state and inputs always give the same plan: tests replay decisions and
//! property tests run them over random clusters. The manager's control loop gathers the inputs,
//! calls [`decide::decide`] and writes the plan through raft.

pub mod allocator;
pub mod changes;
pub mod decide;
pub mod inputs;
pub mod orchestrator;
#[cfg(test)]
mod properties;
pub mod quiet;
pub mod scheduler;
pub mod state;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod user_values;
pub mod vip;

pub use decide::{decide, Decision};
pub use inputs::{Ids, Inputs};
pub use state::{ClusterState, Versioned};
