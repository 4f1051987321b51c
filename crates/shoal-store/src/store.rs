//! The public handle: opens the files, runs raft, serves reads from memory and writes through raft.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::{BasicNode, SnapshotPolicy};
use parking_lot::{Mutex, RwLock};
use redb::Database;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::db::{self, WriteReq, Writer, KEY_NODE_ID};
use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::network::NetworkFactory;
use crate::object::{ChangeSet, Object, Op};
use crate::proposer;
use crate::raft_types::Raft;
use crate::state_machine::{self, Shared, StateMachine};

/// Name of the redb file inside the data directory.
pub const DB_FILE: &str = "raft.redb";

/// Where and as whom to open the store; the fields every caller must decide.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Data directory (created if missing); holds [`DB_FILE`].
    pub dir: PathBuf,
    /// This manager's raft node id; must stay the same for the life of `dir`.
    pub raft_node_id: u64,
    /// Address peers use to reach this manager's raft endpoint (recorded in the membership).
    pub raft_addr: String,
}

/// Knobs with production defaults, separate from [`StoreOptions`] so tests can shrink them.
#[derive(Clone, Debug)]
pub struct StoreTuning {
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind the snapshot so lagging followers catch up without one.
    pub keep_after_snapshot: u64,
    /// Change sets buffered per watcher before a slow watcher starts missing some.
    pub watch_capacity: usize,
    /// How long `open` waits for a single-voter node to become leader and catch up.
    pub open_timeout: Duration,
}

impl Default for StoreTuning {
    fn default() -> Self {
        StoreTuning {
            snapshot_every: 5000,
            keep_after_snapshot: 1000,
            watch_capacity: 4096,
            open_timeout: Duration::from_secs(30),
        }
    }
}

struct Inner {
    raft: Raft,
    proposals: mpsc::UnboundedSender<proposer::Request>,
    shared: Arc<Shared>,
    writer: Writer,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    db: Weak<Database>,
    closed: AtomicBool,
}

/// The replicated state store: cheap to clone, shared by the API server and the control loops.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("last_applied", &self.last_applied())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. A fresh dir initializes a single-voter raft cluster
    /// {raft_node_id}; an existing dir restarts and recovers everything acknowledged before.
    pub async fn open(opts: StoreOptions) -> Result<Store, StoreError> {
        Self::open_with(opts, StoreTuning::default()).await
    }

    /// [`Store::open`] with non-default tuning (snapshot cadence, watch buffer, timeouts).
    pub async fn open_with(opts: StoreOptions, tuning: StoreTuning) -> Result<Store, StoreError> {
        let started = Instant::now();
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| StoreError::Storage(format!("create {}: {e}", opts.dir.display())))?;
        let path = opts.dir.join(DB_FILE);
        let node_id = opts.raft_node_id;

        // Opening, repairing and loading the snapshot are blocking file work.
        let (db, loaded) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let db = db::open_database(&path)?;
            db::init_tables(&db)?;
            check_node_id(&db, node_id)?;
            let loaded = state_machine::load(&db)?;
            Ok((Arc::new(db), loaded))
        })
        .await
        .map_err(|e| StoreError::Storage(format!("open task: {e}")))??;
        let loaded_at = started.elapsed();
        let snapshot_objects = loaded.objects.len();

        let pending = db::Pending::default();
        let (writer, writer_thread) = Writer::start(db.clone(), pending.clone())?;
        let (changes, _) = broadcast::channel(tuning.watch_capacity.max(1));
        let state_machine::Loaded {
            objects,
            applied,
            membership,
        } = loaded;
        let shared = Arc::new(Shared {
            last_applied: AtomicU64::new(applied.map(|l| l.index).unwrap_or(0)),
            objects: RwLock::new(objects),
            changes,
        });
        let log_store = LogStore::new(db.clone(), writer.clone(), pending);
        let sm = StateMachine::new(
            shared.clone(),
            applied,
            membership,
            db.clone(),
            writer.clone(),
        );

        let config = openraft::Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: 250,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: tuning.keep_after_snapshot,
            purge_batch_size: (tuning.snapshot_every / 10).max(1),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Raft(format!("raft config: {e}")))?;

        let raft = Raft::new(node_id, Arc::new(config), NetworkFactory, log_store, sm)
            .await
            .map_err(|e| StoreError::Raft(format!("start raft: {e}")))?;

        let store = Store {
            inner: Arc::new(Inner {
                proposals: proposer::spawn(raft.clone()),
                raft,
                shared,
                writer,
                writer_thread: Mutex::new(Some(writer_thread)),
                db: Arc::downgrade(&db),
                closed: AtomicBool::new(false),
            }),
        };
        drop(db);

        let raft = &store.inner.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Raft(format!("query raft state: {e}")))?;
        if !initialized {
            let mut members = BTreeMap::new();
            members.insert(node_id, BasicNode::new(opts.raft_addr.clone()));
            raft.initialize(members)
                .await
                .map_err(|e| StoreError::Raft(format!("initialize single-voter cluster: {e}")))?;
            tracing::info!(node_id, addr = %opts.raft_addr, "initialized new single-voter raft cluster");
        }

        // Ask raft itself: the metrics channel may not reflect `initialize` yet.
        let voters: BTreeSet<u64> = raft
            .with_raft_state(|st| st.membership_state.effective().voter_ids().collect())
            .await
            .map_err(|e| StoreError::Raft(format!("query membership: {e}")))?;
        if voters == BTreeSet::from([node_id]) {
            // Sole voter: nobody else can commit, so catch up to the end of our own log now;
            // every write acknowledged before the restart is then visible to reads.
            raft.wait(Some(tuning.open_timeout))
                .metrics(
                    |m| {
                        m.current_leader == Some(node_id)
                            && m.last_log_index.is_some()
                            && m.last_applied.map(|l| l.index) >= m.last_log_index
                    },
                    "single voter leads and has applied its whole log",
                )
                .await
                .map_err(|e| StoreError::Raft(format!("waiting for leadership: {e}")))?;
        }
        let m = raft.metrics().borrow().clone();
        tracing::info!(
            node_id,
            dir = %opts.dir.display(),
            snapshot_objects,
            objects = store.inner.shared.objects.read().len(),
            last_applied = store.last_applied(),
            last_log_index = ?m.last_log_index,
            load_ms = loaded_at.as_millis() as u64,
            open_ms = started.elapsed().as_millis() as u64,
            "store opened"
        );
        Ok(store)
    }

    /// Atomically applies a batch through raft; returns only after the entry is fsynced and applied.
    ///
    /// Concurrent writes may share one raft entry (and so one version); each batch still
    /// succeeds or fails on its own. The result is the log index, which is the new version of every object written. An empty
    /// batch writes nothing and returns the current applied index.
    pub async fn write(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Shutdown);
        }
        if ops.is_empty() {
            return Ok(self.last_applied());
        }
        if let Some(op) = ops.iter().find(|op| {
            let (k, i) = op.key();
            k.is_empty() || i.is_empty()
        }) {
            return Err(StoreError::Invalid(format!(
                "kind and id must not be empty: {op:?}"
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .proposals
            .send(proposer::Request { ops, reply })
            .map_err(|_| StoreError::Shutdown)?;
        rx.await.map_err(|_| StoreError::Shutdown)?
    }

    /// Reads one object by key from the local in-memory index.
    pub fn get(&self, kind: &str, id: &str) -> Option<Object> {
        self.inner.shared.objects.read().get(kind, id).cloned()
    }

    /// Reads one object by its unique-per-kind name.
    pub fn find_by_name(&self, kind: &str, name: &str) -> Option<Object> {
        self.inner
            .shared
            .objects
            .read()
            .find_by_name(kind, name)
            .cloned()
    }

    /// Lists every object of a kind, sorted by id.
    pub fn list(&self, kind: &str) -> Vec<Object> {
        self.inner.shared.objects.read().list(kind)
    }

    /// Subscribes to the change stream: one [`ChangeSet`] per applied batch that changed something.
    /// Subscribe before reading the initial state so nothing falls between the two.
    pub fn watch(&self) -> broadcast::Receiver<Arc<ChangeSet>> {
        self.inner.shared.changes.subscribe()
    }

    /// The log index of the last entry applied to the local state (what reads reflect).
    pub fn last_applied(&self) -> u64 {
        self.inner.shared.last_applied.load(Ordering::Acquire)
    }

    /// The raft handle, for the transport that delivers peers' RPCs and for cluster membership.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Builds a snapshot now (and lets raft purge the log behind it), e.g. before a backup.
    pub async fn snapshot(&self) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        let before = raft.metrics().borrow().snapshot;
        let target = self.last_applied();
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| StoreError::Raft(format!("trigger snapshot: {e}")))?;
        raft.wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot != before && m.snapshot.map(|l| l.index) >= Some(target),
                "snapshot built",
            )
            .await
            .map_err(|e| StoreError::Raft(format!("waiting for snapshot: {e}")))?;
        Ok(())
    }

    /// Stops raft and closes the files (used before deleting the data dir on `swarm leave`).
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| StoreError::Raft(format!("stop raft: {e}")))?;
        // Every write raft issued is queued before Shutdown, so the writer finishes them first.
        if self.inner.writer.send(WriteReq::Shutdown).is_ok() {
            let handle = self.inner.writer_thread.lock().take();
            if let Some(handle) = handle {
                tokio::task::spawn_blocking(move || handle.join())
                    .await
                    .map_err(|e| StoreError::Storage(format!("join writer: {e}")))?
                    .map_err(|_| StoreError::Storage("writer thread panicked".into()))?;
            }
        }
        // Raft's tasks drop their handles to the file as they wind down; wait for the last.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.inner.db.strong_count() > 0 {
            if Instant::now() > deadline {
                return Err(StoreError::Storage(
                    "database still referenced 10s after raft stopped".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!("store shut down");
        Ok(())
    }
}

/// Refuses a data directory written by another raft node id, which would corrupt the cluster.
fn check_node_id(db: &Database, node_id: u64) -> Result<(), StoreError> {
    match db::read_meta(db, KEY_NODE_ID)? {
        Some(b) => {
            let stored: u64 = db::decode(&b)?;
            if stored != node_id {
                return Err(StoreError::Storage(format!(
                    "data directory belongs to raft node {stored}, not {node_id}"
                )));
            }
            Ok(())
        }
        None => {
            let e = db::storage_err("record node id");
            let txn = db.begin_write().map_err(|x| e(&x))?;
            {
                let mut t = txn.open_table(db::META).map_err(|x| e(&x))?;
                let v = db::encode(&node_id)?;
                t.insert(KEY_NODE_ID, v.as_slice()).map_err(|x| e(&x))?;
            }
            txn.commit().map_err(|x| e(&x))?;
            Ok(())
        }
    }
}
