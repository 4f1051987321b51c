//! The manager: the Docker-compatible API, the control loops (orchestrator, allocator, scheduler)
//! and the dispatcher that feeds agents. Only the raft leader runs the loops.

pub mod admin;
pub mod api;
pub mod attachment;
pub mod cluster;
pub mod control;
pub mod db;
pub mod dispatcher;
pub mod events;
pub mod floating;
pub mod images;
pub mod logbroker;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod registry;
pub mod remote;
pub mod routes;
pub mod rpc;
pub mod state;
pub mod volumes;
