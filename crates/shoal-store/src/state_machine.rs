//! openraft's state machine (`RaftStateMachine`) and snapshots.
//!
//! The state machine lives in memory ([`Objects`]); it is made durable by the raft log plus
//! snapshots stored in the redb file. On open the last snapshot is loaded and openraft re-applies
//! the committed log entries after it.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use parking_lot::RwLock;
use redb::Database;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::db::{self, WriteReq, Writer, CTX_SNAPSHOT, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META};
use crate::error::StoreError;
use crate::object::{ChangeSet, Object};
use crate::raft_types::{
    BatchResponse, Entry, LogId, ProposalResponse, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::seal::Key;
use crate::state::{self, Objects};

/// Version tag of the snapshot encoding, checked on load.
const SNAPSHOT_FORMAT: u32 = 1;

/// What the state machine shares with readers: the objects, the applied index, the watch stream.
pub(crate) struct Applied {
    pub(crate) objects: RwLock<Objects>,
    pub(crate) last_applied: AtomicU64,
    pub(crate) changes: broadcast::Sender<Arc<ChangeSet>>,
}

/// The state machine driven by openraft's apply worker.
pub(crate) struct StateMachine {
    shared: Arc<Applied>,
    applied: Option<LogId>,
    membership: StoredMembership,
    db: Arc<Database>,
    writer: Writer,
    key: Key,
}

/// The state recovered from the stored snapshot on open.
pub(crate) struct Loaded {
    pub(crate) objects: Objects,
    pub(crate) applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
}

#[derive(Serialize)]
struct SnapObjRef<'a> {
    kind: &'a str,
    id: &'a str,
    name: Option<&'a str>,
    version: u64,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

#[derive(Serialize)]
struct SnapBodyRef<'a> {
    format: u32,
    objects: Vec<SnapObjRef<'a>>,
}

#[derive(Deserialize)]
struct SnapObj {
    kind: String,
    id: String,
    name: Option<String>,
    version: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

#[derive(Deserialize)]
struct SnapBody {
    format: u32,
    objects: Vec<SnapObj>,
}

/// Serializes objects into snapshot data.
fn encode_snapshot<'a>(objects: impl Iterator<Item = &'a Object>) -> Result<Vec<u8>, StoreError> {
    let body = SnapBodyRef {
        format: SNAPSHOT_FORMAT,
        objects: objects
            .map(|o| SnapObjRef {
                kind: &o.kind,
                id: &o.id,
                name: o.name.as_deref(),
                version: o.version,
                data: &o.data,
            })
            .collect(),
    };
    db::encode(&body)
}

/// Parses snapshot data back into an index.
fn decode_snapshot(data: &[u8]) -> Result<Objects, StoreError> {
    let body: SnapBody = db::decode(data)?;
    if body.format != SNAPSHOT_FORMAT {
        return Err(StoreError::Storage(format!(
            "unsupported snapshot format {}",
            body.format
        )));
    }
    let mut objects = Objects::default();
    for o in body.objects {
        objects.insert(Object {
            kind: o.kind,
            id: o.id,
            name: o.name,
            version: o.version,
            data: Arc::from(o.data),
        });
    }
    Ok(objects)
}

/// Reads the stored snapshot: its meta and its data, opened with the data key.
fn read_snapshot(db: &Database, key: &Key) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
    let meta = db::read_snapshot_part(db, KEY_SNAPSHOT_META)?;
    let data = db::read_snapshot_part(db, KEY_SNAPSHOT_DATA)?;
    match (meta, data) {
        (Some(meta), Some(data)) => Ok(Some((
            db::decode(&meta)?,
            db::unseal(key, CTX_SNAPSHOT, &data)?,
        ))),
        _ => Ok(None),
    }
}

/// Loads the stored snapshot, if any, into memory.
pub(crate) fn load(db: &Database, key: &Key) -> Result<Loaded, StoreError> {
    match read_snapshot(db, key)? {
        Some((meta, data)) => Ok(Loaded {
            objects: decode_snapshot(&data)?,
            applied: meta.last_log_id,
            membership: meta.last_membership,
        }),
        None => Ok(Loaded {
            objects: Objects::default(),
            applied: None,
            membership: StoredMembership::default(),
        }),
    }
}

impl StateMachine {
    /// Builds the state machine around a loaded snapshot.
    pub(crate) fn new(
        shared: Arc<Applied>,
        applied: Option<LogId>,
        membership: StoredMembership,
        db: Arc<Database>,
        writer: Writer,
        key: Key,
    ) -> Self {
        StateMachine {
            shared,
            applied,
            membership,
            db,
            writer,
            key,
        }
    }
}

/// A consistent copy of the state taken between two applies, serialized off the apply path.
pub(crate) struct SnapshotBuilder {
    objects: Vec<Object>,
    applied: Option<LogId>,
    membership: StoredMembership,
    writer: Writer,
}

fn snap_err(e: StoreError) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::time::Instant::now();
        let objects = std::mem::take(&mut self.objects);
        let count = objects.len();
        let data = tokio::task::spawn_blocking(move || encode_snapshot(objects.iter()))
            .await
            .map_err(|e| snap_err(StoreError::Storage(format!("snapshot encoder: {e}"))))?
            .map_err(snap_err)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!("{}-{nanos}", self.applied.map(|l| l.index).unwrap_or(0)),
        };
        let meta_bytes = db::encode(&meta).map_err(snap_err)?;
        let stored = data.clone();
        self.writer
            .call(|done| WriteReq::Snapshot {
                meta: meta_bytes,
                data: stored,
                done,
            })
            .await
            .map_err(snap_err)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            objects = count,
            bytes = data.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built raft snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut responses = Vec::new();
        let mut events = Vec::new();
        {
            let mut objects = self.shared.objects.write();
            for entry in entries {
                let index = entry.log_id.index;
                self.applied = Some(entry.log_id);
                let mut response = ProposalResponse::default();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(proposal) => {
                        for batch in proposal.batches {
                            let result = match objects.apply_batch(index, batch.ops) {
                                Ok(changes) => {
                                    if !changes.is_empty() {
                                        events.push(ChangeSet { index, changes });
                                    }
                                    BatchResponse::Applied { index }
                                }
                                Err(rejection) => {
                                    tracing::debug!(index, ?rejection, "batch rejected");
                                    BatchResponse::Rejected(rejection)
                                }
                            };
                            response.results.push(result);
                        }
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                    }
                }
                responses.push(response);
            }
            if let Some(applied) = self.applied {
                self.shared
                    .last_applied
                    .store(applied.index, Ordering::Release);
            }
        }
        for event in events {
            // No receivers is fine: nobody is watching.
            let _ = self.shared.changes.send(Arc::new(event));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let objects = self.shared.objects.read().iter().cloned().collect();
        SnapshotBuilder {
            objects,
            applied: self.applied,
            membership: self.membership.clone(),
            writer: self.writer.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let new_objects = decode_snapshot(&data).map_err(snap_err)?;
        let meta_bytes = db::encode(meta).map_err(snap_err)?;
        self.writer
            .call(|done| WriteReq::Snapshot {
                meta: meta_bytes,
                data,
                done,
            })
            .await
            .map_err(snap_err)?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let changes = {
            let mut objects = self.shared.objects.write();
            let changes = state::diff(&objects, &new_objects);
            *objects = new_objects;
            self.shared.last_applied.store(index, Ordering::Release);
            changes
        };
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta.snapshot_id, changes = changes.len(), "installed raft snapshot");
        let _ = self
            .shared
            .changes
            .send(Arc::new(ChangeSet { index, changes }));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let read_err =
            |e: StoreError| -> StorageError { StorageIOError::read_snapshot(None, &e).into() };
        // Opened here: a snapshot goes to another manager over mutual TLS in the clear of the
        // sealing, and the receiver seals it with its own data key.
        Ok(read_snapshot(&self.db, &self.key)
            .map_err(read_err)?
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Membership};
    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;
    use crate::object::{Action, Expect, Op};
    use crate::raft_types::{Batch, Proposal};

    struct Harness {
        sm: StateMachine,
        shared: Arc<Applied>,
        _dir: tempfile::TempDir,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        let db = Arc::new(db::open_sealed(&dir.path().join("t.redb"), &key).unwrap());
        let (writer, _thread) =
            Writer::start(db.clone(), db::Pending::default(), key.clone()).unwrap();
        let shared = Arc::new(Applied {
            objects: RwLock::new(Objects::default()),
            last_applied: AtomicU64::new(0),
            changes: broadcast::channel(16).0,
        });
        let sm = StateMachine::new(
            shared.clone(),
            None,
            StoredMembership::default(),
            db,
            writer,
            key,
        );
        Harness {
            sm,
            shared,
            _dir: dir,
        }
    }

    fn entry(index: u64, ops: Vec<Op>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                batches: vec![Batch { ops }],
            }),
        }
    }

    fn put(id: &str, name: Option<&str>, data: &str) -> Op {
        Op::Put {
            kind: "obj".into(),
            id: id.into(),
            name: name.map(Into::into),
            expect: Expect::Any,
            data: data.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn install_snapshot_replaces_state_persists_it_and_reports_the_diff() {
        // Source: the state a leader would ship to a lagging follower.
        let mut src = harness();
        let membership = Entry {
            log_id: LogId::new(CommittedLeaderId::new(0, 0), 0),
            payload: EntryPayload::Membership(Membership::new(
                vec![[1u64].into_iter().collect()],
                None,
            )),
        };
        src.sm
            .apply(vec![
                membership,
                entry(
                    5,
                    vec![put("keep", None, "{\"v\":2}"), put("new", Some("n"), "{}")],
                ),
            ])
            .await
            .unwrap();
        let snap = src
            .sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(5));

        // Destination: older, diverging content.
        let mut dst = harness();
        dst.sm
            .apply(vec![entry(
                2,
                vec![put("keep", None, "{\"v\":1}"), put("gone", None, "{}")],
            )])
            .await
            .unwrap();
        let mut rx = dst.shared.changes.subscribe();
        dst.sm
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();

        let objects = dst.shared.objects.read().clone();
        assert_eq!(&*objects.get("obj", "keep").unwrap().data, b"{\"v\":2}");
        assert_eq!(objects.get("obj", "keep").unwrap().version, 5);
        assert!(objects.get("obj", "gone").is_none());
        assert_eq!(objects.find_by_name("obj", "n").unwrap().id, "new");
        assert_eq!(dst.shared.last_applied.load(Ordering::Acquire), 5);
        let (applied, m) = dst.sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(5));
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), [1]);

        let cs = rx.try_recv().unwrap();
        assert_eq!(cs.index, 5);
        let mut actions: Vec<_> = cs
            .changes
            .iter()
            .map(|c| (c.id.clone(), c.action))
            .collect();
        actions.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            actions,
            [
                ("gone".to_string(), Action::Deleted),
                ("keep".to_string(), Action::Updated),
                ("new".to_string(), Action::Created),
            ]
        );
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

        // It is the current snapshot now, and it is what a restart loads.
        let current = dst.sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snap.meta);
        let loaded = load(&dst.sm.db, &dst.sm.key).unwrap();
        assert_eq!(loaded.objects.len(), 2);
        assert_eq!(loaded.applied.map(|l| l.index), Some(5));
    }

    #[tokio::test]
    async fn batches_of_one_proposal_succeed_or_fail_alone() {
        let mut h = harness();
        let mut rx = h.shared.changes.subscribe();
        let r =
            h.sm.apply(vec![
                entry(1, vec![put("a", Some("x"), "{}")]),
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), 2),
                    payload: EntryPayload::Normal(Proposal {
                        batches: vec![
                            Batch {
                                ops: vec![put("b", Some("x"), "{}")],
                            },
                            Batch {
                                ops: vec![put("c", Some("y"), "{}")],
                            },
                        ],
                    }),
                },
                Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), 3),
                    payload: EntryPayload::Blank,
                },
            ])
            .await
            .unwrap();
        assert_eq!(r[0].results, [BatchResponse::Applied { index: 1 }]);
        assert!(matches!(
            r[1].results[..],
            [
                BatchResponse::Rejected(crate::error::Rejection::NameConflict { .. }),
                BatchResponse::Applied { index: 2 }
            ]
        ));
        assert!(r[2].results.is_empty());
        assert_eq!(h.shared.last_applied.load(Ordering::Acquire), 3);
        let objects = h.shared.objects.read().clone();
        assert!(objects.get("obj", "b").is_none());
        assert_eq!(objects.get("obj", "c").unwrap().version, 2);
        assert_eq!(rx.try_recv().unwrap().index, 1);
        let cs = rx.try_recv().unwrap();
        assert_eq!((cs.index, cs.changes[0].id.as_str()), (2, "c"));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }
}
