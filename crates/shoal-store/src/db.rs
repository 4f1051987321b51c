//! The redb file: table layout, encoding, and the single writer thread that group-commits.
//!
//! Every write to the file goes through one thread. It drains whatever requests are queued and
//! commits them in one transaction, fsynced (`Durability::Immediate`) whenever the group holds
//! something raft needs durable (log entries, a vote, a truncation, a snapshot). Only then does it
//! fire the log-flushed callbacks, so raft acknowledges nothing that is not on disk, while
//! concurrent writers share one fsync.
//!
//! Log entry values and the snapshot data are sealed with the data key as they go into the file
//! and opened as they come out ([`crate::seal`]); the small raft records (vote, commit index,
//! purged id, node id, snapshot meta) are not secret and stay plain. `KEY_SEALED` holds a sealed
//! check value, so a wrong key is refused at open, and marks the file as sealed: a file from
//! before sealing lacks it and is rewritten sealed ([`seal_existing`]).

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
use crate::seal::Key;

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
/// A sealed check value: present once the file is sealed, and opens only with its data key.
pub(crate) const KEY_SEALED: &str = "sealed";

/// What a log entry value is sealed as (bound into the seal, so values cannot be swapped).
pub(crate) const CTX_LOG: &[u8] = b"shoal raft log entry";
/// What the snapshot data is sealed as.
pub(crate) const CTX_SNAPSHOT: &[u8] = b"shoal raft snapshot";
/// What the check value is sealed as.
const CTX_CHECK: &[u8] = b"shoal raft store check";

/// Seals a value for the file.
pub(crate) fn seal(key: &Key, ctx: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
    key.seal(ctx, plain)
        .map_err(|e| StoreError::Storage(format!("sealing: {e}")))
}

/// Opens a value read from the file.
pub(crate) fn unseal(key: &Key, ctx: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
    key.open(ctx, sealed)
        .map_err(|e| StoreError::Storage(e.to_string()))
}

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
    /// Starts the writer thread that owns all write transactions on `db`, sealing with `key`.
    pub(crate) fn start(
        db: Arc<Database>,
        pending: Pending,
        key: Key,
    ) -> Result<(Writer, thread::JoinHandle<()>), StoreError> {
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("shoal-store-writer".into())
            .spawn(move || writer_loop(&db, &pending, &key, &rx))
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

fn writer_loop(db: &Database, pending: &Pending, key: &Key, rx: &mpsc::Receiver<WriteReq>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let stop = group.iter().any(|r| matches!(r, WriteReq::Shutdown));
        let result = commit_group(db, key, &group);
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
fn commit_group(db: &Database, key: &Key, group: &[WriteReq]) -> Result<(), StoreError> {
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
                        let sealed = seal(key, CTX_LOG, bytes)?;
                        log.insert(*index, sealed.as_slice()).map_err(|x| e(&x))?;
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
                    let sealed = seal(key, CTX_SNAPSHOT, data)?;
                    snap.insert(KEY_SNAPSHOT_DATA, sealed.as_slice())
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

/// Opens the file for `key`: a sealed file must open with it (a wrong key is refused before
/// anything is read), a new one is marked sealed, and one written before sealing existed is
/// rewritten sealed first ([`seal_existing`]).
pub(crate) fn open_sealed(path: &Path, key: &Key) -> Result<Database, StoreError> {
    let db = open_database(path)?;
    init_tables(&db)?;
    if let Some(check) = read_meta(&db, KEY_SEALED)? {
        key.open(CTX_CHECK, &check).map_err(|_| {
            StoreError::Storage(format!(
                "the data key does not open {} (wrong key, or the file was altered)",
                path.display()
            ))
        })?;
        return Ok(db);
    }
    if is_empty(&db)? {
        let e = storage_err("mark the store sealed");
        let check = seal(key, CTX_CHECK, b"sealed")?;
        let txn = db.begin_write().map_err(|x| e(&x))?;
        {
            let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
            meta.insert(KEY_SEALED, check.as_slice())
                .map_err(|x| e(&x))?;
        }
        txn.commit().map_err(|x| e(&x))?;
        return Ok(db);
    }
    drop(db);
    seal_existing(path, key)?;
    open_database(path)
}

/// True when the file holds no log entry and no snapshot (a new store).
fn is_empty(db: &Database) -> Result<bool, StoreError> {
    use redb::ReadableTableMetadata;
    let e = storage_err("inspect store");
    let txn = db.begin_read().map_err(|x| e(&x))?;
    let log = txn.open_table(LOG).map_err(|x| e(&x))?;
    let snap = txn.open_table(SNAPSHOT).map_err(|x| e(&x))?;
    Ok(log.is_empty().map_err(|x| e(&x))? && snap.is_empty().map_err(|x| e(&x))?)
}

/// Rewrites a store written before sealing existed into a new file with every log entry and
/// the snapshot data sealed, then renames it over the old one (fsynced, then the directory).
/// A new file rather than sealing in place: redb keeps freed pages, which would still hold the
/// plain text.
fn seal_existing(path: &Path, key: &Key) -> Result<(), StoreError> {
    use redb::ReadableTable;
    let e = storage_err("seal the existing store");
    let tmp = path.with_extension("redb.sealing");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => {}
        Err(x) => return Err(e(&x)),
    }
    let mut entries = 0usize;
    {
        let old = open_database(path)?;
        let new = Database::create(&tmp).map_err(|x| e(&x))?;
        let rtxn = old.begin_read().map_err(|x| e(&x))?;
        let mut wtxn = new.begin_write().map_err(|x| e(&x))?;
        wtxn.set_durability(Durability::Immediate)
            .map_err(|x| e(&x))?;
        {
            let mut log = wtxn.open_table(LOG).map_err(|x| e(&x))?;
            for item in rtxn
                .open_table(LOG)
                .map_err(|x| e(&x))?
                .iter()
                .map_err(|x| e(&x))?
            {
                let (k, v) = item.map_err(|x| e(&x))?;
                let sealed = seal(key, CTX_LOG, v.value())?;
                log.insert(k.value(), sealed.as_slice())
                    .map_err(|x| e(&x))?;
                entries += 1;
            }
            let mut meta = wtxn.open_table(META).map_err(|x| e(&x))?;
            for item in rtxn
                .open_table(META)
                .map_err(|x| e(&x))?
                .iter()
                .map_err(|x| e(&x))?
            {
                let (k, v) = item.map_err(|x| e(&x))?;
                meta.insert(k.value(), v.value()).map_err(|x| e(&x))?;
            }
            let check = seal(key, CTX_CHECK, b"sealed")?;
            meta.insert(KEY_SEALED, check.as_slice())
                .map_err(|x| e(&x))?;
            let mut snap = wtxn.open_table(SNAPSHOT).map_err(|x| e(&x))?;
            for item in rtxn
                .open_table(SNAPSHOT)
                .map_err(|x| e(&x))?
                .iter()
                .map_err(|x| e(&x))?
            {
                let (k, v) = item.map_err(|x| e(&x))?;
                let value = if k.value() == KEY_SNAPSHOT_DATA {
                    seal(key, CTX_SNAPSHOT, v.value())?
                } else {
                    v.value().to_vec()
                };
                snap.insert(k.value(), value.as_slice())
                    .map_err(|x| e(&x))?;
            }
        }
        wtxn.commit().map_err(|x| e(&x))?;
    }
    std::fs::rename(&tmp, path).map_err(|x| e(&x))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|x| e(&x))?;
    }
    tracing::warn!(
        path = %path.display(),
        entries,
        "sealed a raft store written before encryption at rest (rewritten, the plain copy removed)"
    );
    Ok(())
}
