//! openraft's log storage (`RaftLogStorage`) on the redb file.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::db::{
    self, Pending, WriteReq, Writer, CTX_LOG, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG,
};
use crate::error::StoreError;
use crate::raft_types::{self, Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::seal::Key;

/// The raft log: entries, vote and commit index in redb; writes go through the writer thread,
/// which seals the entries; reads open them with the same data key.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Database>,
    writer: Writer,
    pending: Pending,
    key: Key,
}

impl LogStore {
    /// Wraps the shared database and writer.
    pub(crate) fn new(db: Arc<Database>, writer: Writer, pending: Pending, key: Key) -> Self {
        LogStore {
            db,
            writer,
            pending,
            key,
        }
    }

    /// Decodes an entry as stored in the file (sealed).
    fn decode_stored(&self, sealed: &[u8]) -> Result<Entry, StoreError> {
        raft_types::decode_entry(&db::unseal(&self.key, CTX_LOG, sealed)?)
    }

    /// Reads entries in `[start, end)` from the file, overlaid with not-yet-committed ones.
    fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let e = db::storage_err("read log");
        let mut out = Vec::new();
        {
            let txn = self.db.begin_read().map_err(|x| e(&x))?;
            let t = txn.open_table(LOG).map_err(|x| e(&x))?;
            let range = match end {
                Some(end) => t.range(start..end),
                None => t.range(start..),
            }
            .map_err(|x| e(&x))?;
            for item in range {
                let (k, v) = item.map_err(|x| e(&x))?;
                out.push((k.value(), self.decode_stored(v.value())?));
            }
        }
        let pending = self.pending.lock();
        if !pending.is_empty() {
            let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
            let extra: Vec<(u64, Arc<Vec<u8>>)> = pending
                .range((Bound::Included(start), upper))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            drop(pending);
            if !extra.is_empty() {
                let mut merged: std::collections::BTreeMap<u64, Entry> = out.into_iter().collect();
                for (k, v) in extra {
                    merged.insert(k, db::decode::<Entry>(&v)?);
                }
                return Ok(merged.into_values().collect());
            }
        }
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        db::read_meta(&self.db, key)?
            .map(|b| db::decode(&b))
            .transpose()
    }
}

fn io_err(e: StoreError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: StoreError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        self.read_range(start, end).map_err(io_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(KEY_LAST_PURGED).map_err(io_err)?;
        let e = db::storage_err("read log state");
        let last = {
            let txn = self.db.begin_read().map_err(|x| io_err(e(&x)))?;
            let t = txn.open_table(LOG).map_err(|x| io_err(e(&x)))?;
            let last = t.last().map_err(|x| io_err(e(&x)))?;
            match last {
                Some((_, v)) => Some(*self.decode_stored(v.value()).map_err(io_err)?.get_log_id()),
                None => None,
            }
        };
        let pending_last = {
            let p = self.pending.lock();
            match p.last_key_value() {
                Some((_, v)) => Some(*db::decode::<Entry>(v).map_err(io_err)?.get_log_id()),
                None => None,
            }
        };
        let last_log_id = pending_last.or(last).or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let value = db::encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.writer
            .call(|done| WriteReq::Meta {
                key: KEY_VOTE,
                value,
                durable: true,
                done: Some(done),
            })
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it becomes durable with the next log append. Losing it only
        // means re-applying committed entries once leadership is re-established.
        let value = db::encode(&committed).map_err(write_err)?;
        self.writer
            .send(WriteReq::Meta {
                key: KEY_COMMITTED,
                value,
                durable: false,
                done: None,
            })
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(KEY_COMMITTED)
            .map_err(io_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = db::encode(&entry).map_err(write_err)?;
            encoded.push((entry.get_log_id().index, Arc::new(bytes)));
        }
        {
            let mut p = self.pending.lock();
            for (index, bytes) in &encoded {
                p.insert(*index, bytes.clone());
            }
        }
        self.writer
            .send(WriteReq::Append {
                entries: encoded,
                flushed: callback,
            })
            .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncate raft log");
        self.pending.lock().split_off(&log_id.index);
        self.writer
            .call(|done| WriteReq::Truncate {
                since: log_id.index,
                done,
            })
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge raft log");
        let last_purged = db::encode(&log_id).map_err(write_err)?;
        // Entries up to `log_id` are applied and in a snapshot, hence never pending.
        self.writer
            .call(|done| WriteReq::Purge {
                upto: log_id.index,
                last_purged,
                done,
            })
            .await
            .map_err(write_err)
    }
}
