//! The openraft type configuration: what travels through the log and what applying it answers.
//!
//! These types are public because the raft transport (gRPC, next) and follower-to-leader write
//! forwarding serialize them; everything else should use [`crate::Store`].

use std::io::Cursor;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::error::{Rejection, StoreError};
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
    /// The leader's clock when it proposed the entry, in nanoseconds since the Unix epoch: the
    /// time of the journal records the entry's changes make, the same on every manager. None in
    /// entries written before proposals carried it (they make no records).
    pub time: Option<i64>,
}

/// A proposal as shoal wrote it before proposals carried their time, read from older logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProposalV1 {
    batches: Vec<Batch>,
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

openraft::declare_raft_types!(
    /// The type configuration of logs written before proposals carried their time.
    TypeConfigV1:
        D = ProposalV1,
        R = ProposalResponse,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfigV1>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Decodes a log entry as stored, in today's format or in the one before proposals carried
/// their time. The older one is tried second and cannot be mistaken for today's: a proposal
/// is the last thing in an entry, so an old one ends where today's time would be read.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    let current = match crate::db::decode::<Entry>(bytes) {
        Ok(e) => return Ok(e),
        Err(e) => e,
    };
    let Ok(old) = crate::db::decode::<openraft::Entry<TypeConfigV1>>(bytes) else {
        return Err(current);
    };
    let payload = match old.payload {
        openraft::EntryPayload::Blank => openraft::EntryPayload::Blank,
        openraft::EntryPayload::Normal(p) => openraft::EntryPayload::Normal(Proposal {
            batches: p.batches,
            time: None,
        }),
        openraft::EntryPayload::Membership(m) => openraft::EntryPayload::Membership(m),
    };
    Ok(Entry {
        log_id: old.log_id,
        payload,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{Expect, Op};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn batches() -> Vec<Batch> {
        vec![Batch {
            ops: vec![Op::Put {
                kind: "service".into(),
                id: "s1".into(),
                name: Some("web".into()),
                expect: Expect::Absent,
                data: b"{}".to_vec(),
            }],
        }]
    }

    #[test]
    fn entries_written_before_proposals_carried_their_time_still_decode() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 1), 42);
        let old = openraft::Entry::<TypeConfigV1> {
            log_id,
            payload: EntryPayload::Normal(ProposalV1 { batches: batches() }),
        };
        let bytes = crate::db::encode(&old).unwrap();
        let e = decode_entry(&bytes).unwrap();
        assert_eq!(e.log_id, log_id);
        match e.payload {
            EntryPayload::Normal(p) => assert_eq!(
                p,
                Proposal {
                    batches: batches(),
                    time: None
                }
            ),
            other => panic!("{other:?}"),
        }

        let new = Entry {
            log_id,
            payload: EntryPayload::Normal(Proposal {
                batches: batches(),
                time: Some(1_700_000_000_123_456_789),
            }),
        };
        let bytes = crate::db::encode(&new).unwrap();
        assert_eq!(decode_entry(&bytes).unwrap(), new);
        for blank in [
            crate::db::encode(&openraft::Entry::<TypeConfigV1> {
                log_id,
                payload: EntryPayload::Blank,
            })
            .unwrap(),
            crate::db::encode(&Entry {
                log_id,
                payload: EntryPayload::Blank,
            })
            .unwrap(),
        ] {
            assert!(matches!(
                decode_entry(&blank).unwrap().payload,
                EntryPayload::Blank
            ));
        }
        assert!(decode_entry(&[0xff, 0xff]).is_err());
    }
}
