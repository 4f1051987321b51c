//! The node's lifecycle: what a machine does to be part of a swarm, manager or worker.

pub mod session;
