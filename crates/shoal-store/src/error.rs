//! Errors returned by the store.

use serde::{Deserialize, Serialize};

/// Everything that can go wrong in the store, so callers can map each case to an API answer.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreError {
    /// An `Expect::Version` precondition failed; the message is Docker's for the same case.
    #[error("update out of sequence")]
    Conflict {
        /// Object type.
        kind: String,
        /// Object identifier.
        id: String,
        /// Version the caller expected.
        expected: u64,
        /// Version the store holds.
        actual: u64,
    },
    /// The object a precondition refers to does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Object type.
        kind: String,
        /// Object identifier.
        id: String,
    },
    /// `Expect::Absent` was given but the object exists.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// Object type.
        kind: String,
        /// Object identifier.
        id: String,
    },
    /// Another object of the same kind already has this name.
    #[error("{kind} name {name:?} is already in use")]
    NameConflict {
        /// Object type.
        kind: String,
        /// The contested name.
        name: String,
    },
    /// The operation is malformed (empty kind or id); nothing was written.
    #[error("invalid operation: {0}")]
    Invalid(String),
    /// This node is not the raft leader; the write must go to `leader`.
    #[error("not the raft leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader's raft node id, if known.
        leader: Option<u64>,
    },
    /// No leader with a quorum answered in time: the cluster cannot take writes right now.
    #[error("{0}")]
    Unavailable(String),
    /// Raft failed or timed out (consensus, not storage, trouble).
    #[error("raft: {0}")]
    Raft(String),
    /// Reading or writing the data directory failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The store was shut down; no more writes are accepted.
    #[error("store is shut down")]
    Shutdown,
}

/// Why the state machine refused a batch; travels through the raft log response, so it is serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// See [`StoreError::Conflict`].
    Conflict {
        /// Object type.
        kind: String,
        /// Object identifier.
        id: String,
        /// Version the caller expected.
        expected: u64,
        /// Version the store holds.
        actual: u64,
    },
    /// See [`StoreError::NotFound`].
    NotFound {
        /// Object type.
        kind: String,
        /// Object identifier.
        id: String,
    },
    /// See [`StoreError::AlreadyExists`].
    AlreadyExists {
        /// Object type.
        kind: String,
        /// Object identifier.
        id: String,
    },
    /// See [`StoreError::NameConflict`].
    NameConflict {
        /// Object type.
        kind: String,
        /// The contested name.
        name: String,
    },
    /// See [`StoreError::Invalid`].
    Invalid(String),
}

impl From<Rejection> for StoreError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Conflict {
                kind,
                id,
                expected,
                actual,
            } => StoreError::Conflict {
                kind,
                id,
                expected,
                actual,
            },
            Rejection::NotFound { kind, id } => StoreError::NotFound { kind, id },
            Rejection::AlreadyExists { kind, id } => StoreError::AlreadyExists { kind, id },
            Rejection::NameConflict { kind, name } => StoreError::NameConflict { kind, name },
            Rejection::Invalid(msg) => StoreError::Invalid(msg),
        }
    }
}
