//! The replicated state store of a shoal manager.
//!
//! Objects (services, tasks, nodes, ...) are JSON documents keyed by `(kind, id)`, optionally
//! named uniquely per kind. Writes are atomic batches that go through raft (openraft): the log
//! entry is fsynced in redb before it counts, and its log index becomes the version of every
//! object it wrote. Reads come from an in-memory index; a broadcast stream reports every change.
//! A journal keeps a bounded, replicated history of what a [`Recorder`] makes of the changes
//! (the cluster's events).

#![warn(missing_docs)]

mod db;
mod error;
mod journal;
mod log_store;
pub mod metrics;
pub mod network;
mod object;
mod proposer;
pub mod raft_types;
pub mod seal;
mod state;
mod state_machine;
mod store;

pub use error::{Rejection, StoreError};
pub use journal::{Position, Record, Recorder};
pub use network::{
    RaftTransport, RpcKind, TransportError, WireLimits, MAX_RAFT_PAYLOAD, SNAPSHOT_CHUNK,
};
pub use object::{Action, Change, ChangeSet, Expect, Object, Op};
pub use store::{Membership, Store, StoreOptions, StoreTuning, DB_FILE};
