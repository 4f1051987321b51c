//! The openraft type configuration: what travels through the log and what applying it answers.
//!
//! These types are public because the raft transport (gRPC, next) and follower-to-leader write
//! forwarding serialize them; everything else should use [`crate::Store`].

use std::io::Cursor;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::object::Op;

/// One caller's all-or-nothing batch of operations (one [`crate::Store::write`] call).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The operations, applied in order on one consistent view.
    pub ops: Vec<Op>,
}

/// The application data of one raft log entry: independent batches of concurrent writers,
/// coalesced so they share one log append and one fsync. Each batch succeeds or fails alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The batches, applied in order.
    pub batches: Vec<Batch>,
}

/// What applying one log entry answers: one result per batch of the proposal (none for raft's
/// own blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalResponse {
    /// Result of each batch, in proposal order.
    pub results: Vec<BatchResponse>,
}

/// The outcome of one batch, returned to its writer (possibly across the network).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchResponse {
    /// The batch was applied; every object it wrote now has version `index`.
    Applied {
        /// The log index of the entry (new version of the written objects).
        index: u64,
    },
    /// A precondition failed; nothing in the batch was applied.
    Rejected(Rejection),
}

openraft::declare_raft_types!(
    /// The raft type configuration of the shoal store (node ids are u64, nodes carry an address).
    pub TypeConfig:
        D = Proposal,
        R = ProposalResponse,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Raft node id of a manager.
pub type NodeId = u64;
/// A raft log id (term + leader + index) in this configuration.
pub type LogId = openraft::LogId<NodeId>;
/// A raft log entry in this configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// openraft's storage error in this configuration.
pub type StorageError = openraft::StorageError<NodeId>;
/// The membership as recorded by the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
/// Snapshot metadata in this configuration.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
/// The raft handle in this configuration.
pub type Raft = openraft::Raft<TypeConfig>;
