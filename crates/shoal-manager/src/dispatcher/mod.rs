//! The dispatcher: the manager's node-facing side, as in swarmkit. Every node, managers included,
//! holds one session with the raft leader ([`session`]), which streams the node's assignments
//! ([`assignments`]), takes its status reports ([`reports`]) and heartbeats, and marks a silent
//! node down ([`liveness`]).

pub mod assignments;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod liveness;
pub mod reports;
pub mod session;

pub use session::{Dispatcher, UsageMap};
