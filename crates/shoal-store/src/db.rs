//! The redb file: table layout, encoding, and the single writer thread that group-commits.
//!
//! Every write to the file goes through one thread. It drains whatever requests are queued and
//! commits them in one transaction, fsynced (`Durability::Immediate`) whenever the group holds
//! something raft needs durable (log entries, a vote, a truncation, a snapshot). Only then does it
//! fire the log-flushed callbacks, so raft acknowledges nothing that is not on disk, while
//! concurrent writers share one fsync.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use openraft::storage::LogFlushed;
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::raft_types::TypeConfig;

/// Raft log entries by index (postcard-encoded `Entry`).
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small raft metadata records, keyed by the `KEY_*` constants.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The current snapshot: `KEY_SNAPSHOT_META` and `KEY_SNAPSHOT_DATA`.
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_NODE_ID: &str = "node_id";
pub(crate) const KEY_SNAPSHOT_META: &str = "meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "data";

/// Encodes a value for the file (postcard: compact, fast, serde).
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StoreError::Storage(format!("encode: {e}")))
}

/// Decodes a value written by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Storage(format!("decode: {e}")))
}

/// Maps any displayable redb error into a storage error with context.
pub(crate) fn storage_err(ctx: &str) -> impl Fn(&dyn std::fmt::Display) -> StoreError + '_ {
    move |e| StoreError::Storage(format!("{ctx}: {e}"))
}

/// Opens (or creates) the database file, retrying while a previous instance in this process
/// is still releasing it (a store dropped without `shutdown` closes asynchronously).
pub(crate) fn open_database(path: &Path) -> Result<Database, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(StoreError::Storage(format!("open {}: {e}", path.display()))),
        }
    }
}

/// Creates the tables if missing, so readers never see "table does not exist".
pub(crate) fn init_tables(db: &Database) -> Result<(), StoreError> {
    let e = storage_err("init tables");
    let txn = db.begin_write().map_err(|x| e(&x))?;
    txn.open_table(LOG).map_err(|x| e(&x))?;
    txn.open_table(META).map_err(|x| e(&x))?;
    txn.open_table(SNAPSHOT).map_err(|x| e(&x))?;
    txn.commit().map_err(|x| e(&x))?;
    Ok(())
}

/// Reads one META record.
pub(crate) fn read_meta(db: &Database, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let e = storage_err("read meta");
    let txn = db.begin_read().map_err(|x| e(&x))?;
    let t = txn.open_table(META).map_err(|x| e(&x))?;
    let v = t.get(key).map_err(|x| e(&x))?.map(|g| g.value().to_vec());
    Ok(v)
}

/// Reads one SNAPSHOT record.
pub(crate) fn read_snapshot_part(db: &Database, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let e = storage_err("read snapshot");
    let txn = db.begin_read().map_err(|x| e(&x))?;
    let t = txn.open_table(SNAPSHOT).map_err(|x| e(&x))?;
    let v = t.get(key).map_err(|x| e(&x))?.map(|g| g.value().to_vec());
    Ok(v)
}

/// Log entries appended but not yet committed to the file, visible to log readers meanwhile.
pub(crate) type Pending = Arc<Mutex<BTreeMap<u64, Arc<Vec<u8>>>>>;

/// Completion signal of a request that the caller waits for.
type Done = oneshot::Sender<Result<(), StoreError>>;

/// One request to the writer thread.
pub(crate) enum WriteReq {
    /// Append encoded entries; `flushed` fires after the fsync.
    Append {
        entries: Vec<(u64, Arc<Vec<u8>>)>,
        flushed: LogFlushed<TypeConfig>,
    },
    /// Delete log entries with index >= `since`.
    Truncate { since: u64, done: Done },
    /// Delete log entries with index <= `upto` and record the purged log id.
    Purge {
        upto: u64,
        last_purged: Vec<u8>,
        done: Done,
    },
    /// Put a META record; `durable` forces an fsync (the vote), otherwise it rides along.
    Meta {
        key: &'static str,
        value: Vec<u8>,
        durable: bool,
        done: Option<Done>,
    },
    /// Replace the stored snapshot.
    Snapshot {
        meta: Vec<u8>,
        data: Vec<u8>,
        done: Done,
    },
    /// Finish the queue and stop the thread.
    Shutdown,
}

/// Handle to the writer thread; cloneable, cheap.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<WriteReq>,
}

impl Writer {
    /// Starts the writer thread that owns all write transactions on `db`.
    pub(crate) fn start(
        db: Arc<Database>,
        pending: Pending,
    ) -> Result<(Writer, thread::JoinHandle<()>), StoreError> {
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("shoal-store-writer".into())
            .spawn(move || writer_loop(&db, &pending, &rx))
            .map_err(|e| StoreError::Storage(format!("spawn writer thread: {e}")))?;
        Ok((Writer { tx }, handle))
    }

    /// Queues a request without waiting.
    pub(crate) fn send(&self, req: WriteReq) -> Result<(), StoreError> {
        self.tx
            .send(req)
            .map_err(|_| StoreError::Storage("writer thread has stopped".into()))
    }

    /// Queues a request built around a completion channel and waits for it.
    pub(crate) async fn call(
        &self,
        build: impl FnOnce(Done) -> WriteReq,
    ) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.send(build(done))?;
        rx.await
            .map_err(|_| StoreError::Storage("writer thread dropped a request".into()))?
    }
}

fn writer_loop(db: &Database, pending: &Pending, rx: &mpsc::Receiver<WriteReq>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let stop = group.iter().any(|r| matches!(r, WriteReq::Shutdown));
        let result = commit_group(db, &group);
        if let Err(e) = &result {
            tracing::error!(error = %e, "store write transaction failed");
        }
        finish_group(pending, group, &result);
        if stop {
            break;
        }
    }
    tracing::debug!("store writer thread stopped");
}

/// Writes every request of the group in one transaction.
fn commit_group(db: &Database, group: &[WriteReq]) -> Result<(), StoreError> {
    let e = storage_err("write transaction");
    let durable = group.iter().any(|r| match r {
        WriteReq::Append { .. } | WriteReq::Truncate { .. } | WriteReq::Snapshot { .. } => true,
        WriteReq::Meta { durable, .. } => *durable,
        WriteReq::Purge { .. } | WriteReq::Shutdown => false,
    });
    if group.iter().all(|r| matches!(r, WriteReq::Shutdown)) {
        return Ok(());
    }
    let mut txn = db.begin_write().map_err(|x| e(&x))?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability).map_err(|x| e(&x))?;
    {
        let mut log = txn.open_table(LOG).map_err(|x| e(&x))?;
        let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
        let mut snap = txn.open_table(SNAPSHOT).map_err(|x| e(&x))?;
        for req in group {
            match req {
                WriteReq::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert(*index, bytes.as_slice()).map_err(|x| e(&x))?;
                    }
                }
                WriteReq::Truncate { since, .. } => {
                    log.retain_in(*since.., |_, _| false).map_err(|x| e(&x))?;
                }
                WriteReq::Purge {
                    upto, last_purged, ..
                } => {
                    log.retain_in(..=*upto, |_, _| false).map_err(|x| e(&x))?;
                    meta.insert(KEY_LAST_PURGED, last_purged.as_slice())
                        .map_err(|x| e(&x))?;
                }
                WriteReq::Meta { key, value, .. } => {
                    meta.insert(*key, value.as_slice()).map_err(|x| e(&x))?;
                }
                WriteReq::Snapshot { meta: m, data, .. } => {
                    snap.insert(KEY_SNAPSHOT_META, m.as_slice())
                        .map_err(|x| e(&x))?;
                    snap.insert(KEY_SNAPSHOT_DATA, data.as_slice())
                        .map_err(|x| e(&x))?;
                }
                WriteReq::Shutdown => {}
            }
        }
    }
    txn.commit().map_err(|x| e(&x))?;
    Ok(())
}

/// Reports the group's outcome to every waiter, after the commit.
fn finish_group(pending: &Pending, group: Vec<WriteReq>, result: &Result<(), StoreError>) {
    // Entries are in the file now (or failed): readers must stop seeing the pending copies.
    {
        let mut p = pending.lock();
        for req in &group {
            if let WriteReq::Append { entries, .. } = req {
                for (index, bytes) in entries {
                    if p.get(index).is_some_and(|cur| Arc::ptr_eq(cur, bytes)) {
                        p.remove(index);
                    }
                }
            }
        }
    }
    for req in group {
        match req {
            WriteReq::Append { flushed, .. } => {
                let io = result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(e.to_string()));
                flushed.log_io_completed(io);
            }
            WriteReq::Truncate { done, .. }
            | WriteReq::Purge { done, .. }
            | WriteReq::Snapshot { done, .. }
            | WriteReq::Meta {
                done: Some(done), ..
            } => {
                // The waiter may have gone away (raft shutting down); nothing to do then.
                let _ = done.send(result.clone());
            }
            WriteReq::Meta { done: None, .. } | WriteReq::Shutdown => {}
        }
    }
}
