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
use tokio::sync::{broadcast, watch};

use crate::db::{self, WriteReq, Writer, CTX_SNAPSHOT, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META};
use crate::error::StoreError;
use crate::journal::{self, Journal, Position, Record, Recorder};
use crate::object::{Change, ChangeSet, Object};
use crate::raft_types::{
    BatchResponse, Entry, LogId, ProposalResponse, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::seal::Key;
use crate::state::{self, Objects};

/// Version tag of the snapshot encoding, checked on load: 2 added the journal after the
/// objects; 1 (objects only) still loads, with an empty journal.
const SNAPSHOT_FORMAT: u32 = 2;

/// What the state machine shares with readers: the objects, the applied index, the watch
/// stream, the journal and its newest position.
pub(crate) struct Applied {
    pub(crate) objects: RwLock<Objects>,
    pub(crate) last_applied: AtomicU64,
    pub(crate) changes: broadcast::Sender<Arc<ChangeSet>>,
    pub(crate) journal: RwLock<Journal>,
    pub(crate) journal_tip: watch::Sender<Option<Position>>,
}

/// The state machine driven by openraft's apply worker.
pub(crate) struct StateMachine {
    shared: Arc<Applied>,
    recorder: Option<Arc<dyn Recorder>>,
    applied: Option<LogId>,
    membership: StoredMembership,
    db: Arc<Database>,
    writer: Writer,
    key: Key,
}

/// The state recovered from the stored snapshot on open.
pub(crate) struct Loaded {
    pub(crate) objects: Objects,
    pub(crate) journal: Vec<Record>,
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

#[derive(Serialize, Deserialize)]
struct SnapRecord {
    index: u64,
    ordinal: u32,
    time: i64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

#[derive(Serialize)]
struct SnapRecordRef<'a> {
    index: u64,
    ordinal: u32,
    time: i64,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

#[derive(Serialize)]
struct SnapBodyRef<'a> {
    format: u32,
    objects: Vec<SnapObjRef<'a>>,
    journal: Vec<SnapRecordRef<'a>>,
}

/// The first field of every snapshot format, read before the rest.
#[derive(Deserialize)]
struct SnapHead {
    format: u32,
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
struct SnapBodyV1 {
    #[allow(dead_code)]
    format: u32,
    objects: Vec<SnapObj>,
}

#[derive(Deserialize)]
struct SnapBody {
    #[allow(dead_code)]
    format: u32,
    objects: Vec<SnapObj>,
    journal: Vec<SnapRecord>,
}

/// Serializes objects and the journal into snapshot data.
fn encode_snapshot<'a>(
    objects: impl Iterator<Item = &'a Object>,
    journal: impl Iterator<Item = &'a Record>,
) -> Result<Vec<u8>, StoreError> {
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
        journal: journal
            .map(|r| SnapRecordRef {
                index: r.position.index,
                ordinal: r.position.ordinal,
                time: r.time,
                data: &r.data,
            })
            .collect(),
    };
    db::encode(&body)
}

/// Parses snapshot data back into an index and the journal's records.
fn decode_snapshot(data: &[u8]) -> Result<(Objects, Vec<Record>), StoreError> {
    let head: SnapHead = db::decode(data)?;
    let (snap_objects, journal) = match head.format {
        1 => (db::decode::<SnapBodyV1>(data)?.objects, Vec::new()),
        SNAPSHOT_FORMAT => {
            let body: SnapBody = db::decode(data)?;
            (body.objects, body.journal)
        }
        other => {
            return Err(StoreError::Storage(format!(
                "unsupported snapshot format {other}"
            )))
        }
    };
    let journal = journal
        .into_iter()
        .map(|r| Record {
            position: Position {
                index: r.index,
                ordinal: r.ordinal,
            },
            time: r.time,
            data: Arc::from(r.data),
        })
        .collect();
    let mut objects = Objects::default();
    for o in snap_objects {
        objects.insert(Object {
            kind: o.kind,
            id: o.id,
            name: o.name,
            version: o.version,
            data: Arc::from(o.data),
        });
    }
    Ok((objects, journal))
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
        Some((meta, data)) => {
            let (objects, journal) = decode_snapshot(&data)?;
            Ok(Loaded {
                objects,
                journal,
                applied: meta.last_log_id,
                membership: meta.last_membership,
            })
        }
        None => Ok(Loaded {
            objects: Objects::default(),
            journal: Vec::new(),
            applied: None,
            membership: StoredMembership::default(),
        }),
    }
}

impl StateMachine {
    /// Builds the state machine around a loaded snapshot.
    pub(crate) fn new(
        shared: Arc<Applied>,
        recorder: Option<Arc<dyn Recorder>>,
        applied: Option<LogId>,
        membership: StoredMembership,
        db: Arc<Database>,
        writer: Writer,
        key: Key,
    ) -> Self {
        StateMachine {
            shared,
            recorder,
            applied,
            membership,
            db,
            writer,
            key,
        }
    }
}

/// One applied entry's index, time, and the changes the recorder wants with what they replaced.
type EntryChanges = (u64, i64, Vec<(Change, Option<Object>)>);

impl StateMachine {
    /// Makes the records of the applied entries' changes and tells the journal's readers.
    /// Outside the objects' lock: readers of the objects do not wait for the recorder.
    fn record(&self, recorder: &dyn Recorder, entries: Vec<EntryChanges>) {
        let mut made = Vec::new();
        for (index, time, changes) in &entries {
            made.extend(journal::records_of(
                recorder,
                *index,
                *time,
                changes.iter().map(|(c, p)| (c, p.as_ref())),
            ));
        }
        if made.is_empty() {
            return;
        }
        let tip = {
            let mut journal = self.shared.journal.write();
            for r in made {
                journal.push(r);
            }
            journal.last()
        };
        self.shared.journal_tip.send_replace(tip);
    }
}

/// A consistent copy of the state taken between two applies, serialized off the apply path.
pub(crate) struct SnapshotBuilder {
    objects: Vec<Object>,
    journal: Vec<Record>,
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
        let journal = std::mem::take(&mut self.journal);
        let count = objects.len();
        let data =
            tokio::task::spawn_blocking(move || encode_snapshot(objects.iter(), journal.iter()))
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
        let mut records = Vec::new();
        {
            let mut objects = self.shared.objects.write();
            for entry in entries {
                let index = entry.log_id.index;
                self.applied = Some(entry.log_id);
                let mut response = ProposalResponse::default();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(proposal) => {
                        // The entry's changes with what they replaced, for the recorder.
                        let mut entry_changes = Vec::new();
                        for batch in proposal.batches {
                            let result = match objects.apply_batch(index, batch.ops) {
                                Ok(applied) => {
                                    let mut changes = Vec::with_capacity(applied.len());
                                    for (change, previous) in applied {
                                        if self
                                            .recorder
                                            .as_ref()
                                            .is_some_and(|r| r.wants(&change.kind))
                                        {
                                            entry_changes.push((change.clone(), previous));
                                        }
                                        changes.push(change);
                                    }
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
                        if let (Some(time), false) = (proposal.time, entry_changes.is_empty()) {
                            records.push((index, time, entry_changes));
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
        if let Some(recorder) = &self.recorder {
            self.record(recorder.as_ref(), records);
        }
        for event in events {
            // No receivers is fine: nobody is watching.
            let _ = self.shared.changes.send(Arc::new(event));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let objects = self.shared.objects.read().iter().cloned().collect();
        let journal = self.shared.journal.read().iter().cloned().collect();
        SnapshotBuilder {
            objects,
            journal,
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
        let (new_objects, new_journal) = decode_snapshot(&data).map_err(snap_err)?;
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
        let tip = {
            let mut journal = self.shared.journal.write();
            *journal = Journal::from_records(new_journal, journal.keep());
            journal.last()
        };
        self.shared.journal_tip.send_replace(tip);
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
        harness_with(None)
    }

    fn harness_with(recorder: Option<Arc<dyn Recorder>>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate().unwrap();
        let db = Arc::new(db::open_sealed(&dir.path().join("t.redb"), &key).unwrap());
        let (writer, _thread) =
            Writer::start(db.clone(), db::Pending::default(), key.clone()).unwrap();
        let keep = recorder.as_ref().map_or(0, |r| r.keep());
        let shared = Arc::new(Applied {
            objects: RwLock::new(Objects::default()),
            last_applied: AtomicU64::new(0),
            changes: broadcast::channel(16).0,
            journal: RwLock::new(Journal::new(keep)),
            journal_tip: watch::channel(None).0,
        });
        let sm = StateMachine::new(
            shared.clone(),
            recorder,
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
                time: Some(index as i64 * 1000),
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
                        time: None,
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

    /// Records "<action> <id> <previous data>" for every change of kind `obj`, keeps 3.
    struct Describe;
    impl Recorder for Describe {
        fn keep(&self) -> usize {
            3
        }
        fn wants(&self, kind: &str) -> bool {
            kind == "obj"
        }
        fn record(&self, change: &Change, previous: Option<&Object>) -> Option<Vec<u8>> {
            let prev = previous.map(|p| String::from_utf8_lossy(&p.data).into_owned());
            Some(format!("{:?} {} {prev:?}", change.action, change.id).into_bytes())
        }
    }

    fn journal_of(shared: &Applied) -> Vec<(u64, u32, i64, String)> {
        shared
            .journal
            .read()
            .after(None)
            .iter()
            .map(|r| {
                (
                    r.position.index,
                    r.position.ordinal,
                    r.time,
                    String::from_utf8(r.data.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn applying_records_the_changes_with_the_entry_time_and_snapshots_carry_them() {
        let mut h = harness_with(Some(Arc::new(Describe)));
        let tip = h.shared.journal_tip.subscribe();
        h.sm.apply(vec![
            entry(1, vec![put("a", None, "v1"), put("b", None, "v1")]),
            entry(2, vec![put("a", None, "v2")]),
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), 3),
                payload: EntryPayload::Normal(Proposal {
                    batches: vec![Batch {
                        ops: vec![put("c", None, "old")],
                    }],
                    time: None,
                }),
            },
        ])
        .await
        .unwrap();
        h.sm.apply(vec![entry(
            4,
            vec![Op::Delete {
                kind: "obj".into(),
                id: "b".into(),
                expect: Expect::Any,
            }],
        )])
        .await
        .unwrap();
        let want = vec![
            (1, 1, 1000, "Created b None".to_string()),
            (2, 0, 2000, "Updated a Some(\"v1\")".to_string()),
            (4, 0, 4000, "Deleted b None".to_string()),
        ];
        assert_eq!(
            journal_of(&h.shared),
            want,
            "an entry without a time records nothing; 3 kept"
        );
        assert_eq!(
            *tip.borrow(),
            Some(Position {
                index: 4,
                ordinal: 0
            })
        );

        let snap =
            h.sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        let loaded = load(&h.sm.db, &h.sm.key).unwrap();
        assert_eq!(
            loaded.journal.len(),
            3,
            "a restart starts from the snapshot's journal"
        );
        let mut other = harness_with(Some(Arc::new(Describe)));
        let tip = other.shared.journal_tip.subscribe();
        other
            .sm
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(journal_of(&other.shared), want);
        assert_eq!(
            *tip.borrow(),
            Some(Position {
                index: 4,
                ordinal: 0
            })
        );
    }

    #[test]
    fn a_snapshot_from_before_the_journal_loads_with_an_empty_one() {
        #[derive(Serialize)]
        struct V1<'a> {
            format: u32,
            objects: Vec<SnapObjRef<'a>>,
        }
        let data = db::encode(&V1 {
            format: 1,
            objects: vec![SnapObjRef {
                kind: "obj",
                id: "a",
                name: Some("n"),
                version: 3,
                data: b"{}",
            }],
        })
        .unwrap();
        let (objects, journal) = decode_snapshot(&data).unwrap();
        assert_eq!(objects.find_by_name("obj", "n").unwrap().version, 3);
        assert!(journal.is_empty());
        let mut future = data.clone();
        future[0] = 9;
        assert!(decode_snapshot(&future).is_err());
    }
}
