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
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::db::{self, WriteReq, Writer, KEY_NODE_ID};
use crate::error::StoreError;
use crate::journal::{Journal, Position, Record, Recorder};
use crate::log_store::LogStore;
use crate::network::{self, NetworkFactory, RaftTransport, RpcKind};
use crate::object::{ChangeSet, Object, Op};
use crate::proposer;
use crate::raft_types::Raft;
use crate::seal::Key;
use crate::state_machine::{self, Applied, StateMachine};

/// Name of the redb file inside the data directory.
pub const DB_FILE: &str = "raft.redb";

/// Where and as whom to open the store; the fields every caller must decide.
#[derive(Clone)]
pub struct StoreOptions {
    /// Data directory (created if missing); holds [`DB_FILE`].
    pub dir: PathBuf,
    /// This manager's raft node id; must stay the same for the life of `dir`.
    pub raft_node_id: u64,
    /// Address peers use to reach this manager's raft endpoint (recorded in the membership).
    pub raft_addr: String,
    /// True for the first manager of a new cluster: a fresh dir becomes a single-voter cluster.
    /// False for a joining manager, which waits for the leader to add it.
    pub bootstrap: bool,
    /// How messages reach other managers; None for a cluster that will never have peers.
    pub transport: Option<Arc<dyn RaftTransport>>,
    /// This manager's data key: every log entry and snapshot is sealed with it on disk. A store
    /// opens only with the key it was sealed with.
    pub data_key: Key,
    /// What turns applied changes into journal records (shoal's cluster events); None keeps
    /// no journal. Every manager of a cluster must use the same.
    pub recorder: Option<Arc<dyn Recorder>>,
}

impl StoreOptions {
    /// Options for a single manager that bootstraps its own cluster and has no peers.
    pub fn single(dir: PathBuf, raft_node_id: u64, raft_addr: String, data_key: Key) -> Self {
        StoreOptions {
            dir,
            raft_node_id,
            raft_addr,
            bootstrap: true,
            transport: None,
            data_key,
            recorder: None,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("dir", &self.dir)
            .field("raft_node_id", &self.raft_node_id)
            .field("raft_addr", &self.raft_addr)
            .field("bootstrap", &self.bootstrap)
            .field("transport", &self.transport.is_some())
            .field("data_key", &self.data_key)
            .field("recorder", &self.recorder.is_some())
            .finish()
    }
}

/// The managers raft knows about, by raft node id, with the addresses they were added with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Managers that vote (and count for quorum).
    pub voters: BTreeMap<u64, String>,
    /// Managers that receive the log but do not vote yet.
    pub learners: BTreeMap<u64, String>,
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
    /// How long a write may wait for a leader and a quorum before it fails as unavailable.
    pub write_timeout: Duration,
    /// Leader heartbeat period, in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout range, in milliseconds. openraft waits a leader lease (the maximum)
    /// plus a random timeout in the range after the last heartbeat, so a dead leader is replaced
    /// after 1.1-1.4 s with the defaults (400-700).
    pub election_timeout_ms: (u64, u64),
    /// How big one raft message may get (log batches are split, snapshots chunked).
    pub wire: network::WireLimits,
}

impl Default for StoreTuning {
    fn default() -> Self {
        StoreTuning {
            snapshot_every: 5000,
            keep_after_snapshot: 1000,
            watch_capacity: 4096,
            open_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(7),
            heartbeat_ms: 100,
            election_timeout_ms: (400, 700),
            wire: network::WireLimits::default(),
        }
    }
}

struct StoreHandle {
    raft: Raft,
    proposals: mpsc::UnboundedSender<proposer::Request>,
    shared: Arc<Applied>,
    writer: Writer,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    db: Weak<Database>,
    closed: AtomicBool,
    transport: Option<Arc<dyn RaftTransport>>,
    write_timeout: Duration,
    /// The snapshot a leader is sending this follower, chunk by chunk.
    snapshot_in: tokio::sync::Mutex<Option<network::Incoming>>,
}

/// The replicated state store: cheap to clone, shared by the API server and the control loops.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreHandle>,
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
        let key = opts.data_key.clone();

        // Opening, repairing and loading the snapshot are blocking file work.
        let (db, loaded) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let db = db::open_sealed(&path, &key)?;
            check_node_id(&db, node_id)?;
            let loaded = state_machine::load(&db, &key)?;
            Ok((Arc::new(db), loaded))
        })
        .await
        .map_err(|e| StoreError::Storage(format!("open task: {e}")))??;
        let loaded_at = started.elapsed();
        let snapshot_objects = loaded.objects.len();

        let pending = db::Pending::default();
        let (writer, writer_thread) =
            Writer::start(db.clone(), pending.clone(), opts.data_key.clone())?;
        let (changes, _) = broadcast::channel(tuning.watch_capacity.max(1));
        let state_machine::Loaded {
            objects,
            journal,
            applied,
            membership,
        } = loaded;
        let keep = opts.recorder.as_ref().map_or(0, |r| r.keep());
        let journal = Journal::from_records(journal, keep);
        let (journal_tip, _) = watch::channel(journal.last());
        let shared = Arc::new(Applied {
            last_applied: AtomicU64::new(applied.map(|l| l.index).unwrap_or(0)),
            objects: RwLock::new(objects),
            changes,
            journal: RwLock::new(journal),
            journal_tip,
        });
        let log_store = LogStore::new(db.clone(), writer.clone(), pending, opts.data_key.clone());
        let sm = StateMachine::new(
            shared.clone(),
            opts.recorder.clone(),
            applied,
            membership,
            db.clone(),
            writer.clone(),
            opts.data_key.clone(),
        );

        let config = openraft::Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: tuning.heartbeat_ms,
            election_timeout_min: tuning.election_timeout_ms.0,
            election_timeout_max: tuning.election_timeout_ms.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: tuning.keep_after_snapshot,
            purge_batch_size: (tuning.snapshot_every / 10).max(1),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Raft(format!("raft config: {e}")))?;

        let network = NetworkFactory::new(opts.transport.clone(), tuning.wire);
        let raft = Raft::new(node_id, Arc::new(config), network, log_store, sm)
            .await
            .map_err(|e| StoreError::Raft(format!("start raft: {e}")))?;

        let store = Store {
            inner: Arc::new(StoreHandle {
                proposals: proposer::spawn(raft.clone()),
                raft,
                shared,
                writer,
                writer_thread: Mutex::new(Some(writer_thread)),
                db: Arc::downgrade(&db),
                closed: AtomicBool::new(false),
                transport: opts.transport.clone(),
                snapshot_in: tokio::sync::Mutex::new(None),
                write_timeout: tuning.write_timeout,
            }),
        };
        drop(db);

        let raft = &store.inner.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Raft(format!("query raft state: {e}")))?;
        if !initialized && opts.bootstrap {
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
        let started = std::time::Instant::now();
        let written = !ops.is_empty();
        let r = self.write_timed(ops).await;
        if written && r.is_ok() {
            crate::metrics::WRITE_SECONDS.observe(started.elapsed().as_secs_f64());
        }
        r
    }

    async fn write_timed(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
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
        let deadline = tokio::time::Instant::now() + self.inner.write_timeout;
        let unavailable = || {
            StoreError::Unavailable(format!(
                "the write was not committed within {}s: no raft leader with a quorum of \
                 managers is reachable",
                self.inner.write_timeout.as_secs()
            ))
        };
        loop {
            let local = tokio::time::timeout_at(deadline, self.write_local(ops.clone()))
                .await
                .map_err(|_| unavailable())?;
            let leader = match local {
                Err(StoreError::NotLeader { leader }) => leader,
                other => return other,
            };
            let (Some(transport), Some(addr)) = (
                self.inner.transport.as_ref(),
                leader.and_then(|l| self.member_addr(l)),
            ) else {
                if self.inner.transport.is_none() {
                    return Err(StoreError::NotLeader { leader });
                }
                // An election is under way: wait for its outcome.
                if tokio::time::Instant::now() >= deadline {
                    return Err(unavailable());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let forwarded = tokio::time::timeout_at(deadline, self.forward(transport, &addr, &ops))
                .await
                .map_err(|_| unavailable())?;
            match forwarded {
                Ok(index) => {
                    // Read-your-writes: the caller reads this node's copy next.
                    self.wait_applied(index, deadline).await?;
                    return Ok(index);
                }
                Err(StoreError::NotLeader { .. }) | Err(StoreError::Unavailable(_)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(unavailable());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Proposes through the local raft, which works only on the leader.
    async fn write_local(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .proposals
            .send(proposer::Request { ops, reply })
            .map_err(|_| StoreError::Shutdown)?;
        rx.await.map_err(|_| StoreError::Shutdown)?
    }

    /// Hands a write to the leader at `addr`. A lost answer is reported as unavailable and the
    /// write retried, so a batch without preconditions may be applied twice (harmless for puts).
    async fn forward(
        &self,
        transport: &Arc<dyn RaftTransport>,
        addr: &str,
        ops: &[Op],
    ) -> Result<u64, StoreError> {
        let payload = network::encode(&ops).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let answer = transport
            .call(addr, RpcKind::Propose, payload)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let r: Result<u64, StoreError> = network::decode(&answer)
            .map_err(|e| StoreError::Raft(format!("leader answer: {e}")))?;
        r
    }

    async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        loop {
            if self.last_applied() >= index {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "the write was committed at index {index} but this manager has not applied \
                     it yet (it is at {})",
                    self.last_applied()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Serves a message another manager's transport sent: raft traffic and forwarded writes.
    /// The answer is encoded for [`RaftTransport::call`]'s caller.
    pub async fn handle_rpc(&self, kind: RpcKind, payload: &[u8]) -> Result<Vec<u8>, StoreError> {
        let bad =
            |e: network::CodecError| StoreError::Invalid(format!("{} message: {e}", kind.as_str()));
        let raft = &self.inner.raft;
        let out = match kind {
            RpcKind::AppendEntries => {
                let req = network::decode(payload).map_err(bad)?;
                network::encode(&raft.append_entries(req).await)
            }
            RpcKind::Vote => {
                let req = network::decode(payload).map_err(bad)?;
                network::encode(&raft.vote(req).await)
            }
            RpcKind::Snapshot => {
                let msg: network::SnapshotMessage = network::decode(payload).map_err(bad)?;
                let (vote, snapshot) = network::snapshot_of(msg);
                network::encode(&raft.install_full_snapshot(vote, snapshot).await)
            }
            RpcKind::SnapshotChunk => {
                let chunk: network::SnapshotChunk = network::decode(payload).map_err(bad)?;
                // One snapshot at a time; the lock is held while the last chunk installs, so a
                // retry from the leader waits instead of starting over underneath it.
                let mut incoming = self.inner.snapshot_in.lock().await;
                match network::receive_chunk(&mut incoming, chunk)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?
                {
                    None => network::encode(&network::ChunkAnswer::More),
                    Some((vote, snapshot)) => {
                        let r = raft.install_full_snapshot(vote, snapshot).await;
                        network::encode(&network::ChunkAnswer::Installed(Box::new(r)))
                    }
                }
            }
            RpcKind::Propose => {
                let ops: Vec<Op> = network::decode(payload).map_err(bad)?;
                // Only the leader's own raft may take it; no second hop.
                let r = match self.inner.closed.load(Ordering::Acquire) {
                    true => Err(StoreError::Shutdown),
                    false => self.write_local(ops).await,
                };
                network::encode(&r)
            }
        };
        out.map_err(|e| StoreError::Raft(e.to_string()))
    }

    /// The address a member was added with.
    fn member_addr(&self, id: u64) -> Option<String> {
        let m = self.membership();
        m.voters.get(&id).or_else(|| m.learners.get(&id)).cloned()
    }

    /// The current raft membership as this manager sees it.
    pub fn membership(&self) -> Membership {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let cfg = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = cfg.voter_ids().collect();
        let mut out = Membership::default();
        for (id, node) in cfg.nodes() {
            if voters.contains(id) {
                out.voters.insert(*id, node.addr.clone());
            } else {
                out.learners.insert(*id, node.addr.clone());
            }
        }
        out
    }

    /// The raft leader this manager knows of, with its address.
    pub fn leader(&self) -> Option<(u64, String)> {
        let id = self.inner.raft.metrics().borrow().current_leader?;
        Some((id, self.member_addr(id)?))
    }

    /// True while this manager is the raft leader (the one that runs the control loops).
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics().borrow().clone();
        m.current_leader == Some(m.id)
    }

    /// True if this manager leads *and* a quorum confirms it now (a restarted or cut-off leader
    /// may still believe it leads). Waits at most `timeout`.
    pub async fn confirm_leader(&self, timeout: Duration) -> bool {
        if !self.is_leader() {
            return false;
        }
        matches!(
            tokio::time::timeout(timeout, self.inner.raft.ensure_linearizable()).await,
            Ok(Ok(_))
        )
    }

    /// This manager's raft node id.
    pub fn raft_id(&self) -> u64 {
        self.inner.raft.metrics().borrow().id
    }

    /// Adds a manager as a learner (replication starts in the background). Leader only.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<(), StoreError> {
        self.inner
            .raft
            .add_learner(id, BasicNode::new(addr), false)
            .await
            .map(|_| ())
            .map_err(membership_error)
    }

    /// True when the leader has replicated its log to `id` up to within `slack` entries, so
    /// making it a voter will not stall commits while it catches up.
    pub fn caught_up(&self, id: u64, slack: u64) -> bool {
        let m = self.inner.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        m.replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .is_some_and(|matched| matched.index + slack >= last)
    }

    /// Makes exactly `voters` the voting managers (a joint-consensus change), keeping other
    /// members as learners unless `drop_others`. Leader only.
    pub async fn set_voters(
        &self,
        voters: BTreeSet<u64>,
        drop_others: bool,
    ) -> Result<(), StoreError> {
        self.inner
            .raft
            .change_membership(voters, !drop_others)
            .await
            .map(|_| ())
            .map_err(membership_error)
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

    /// Every object, for exporting the state (`swarm init --force-new-cluster`).
    pub fn dump(&self) -> Vec<Object> {
        self.inner.shared.objects.read().iter().cloned().collect()
    }

    /// Subscribes to the change stream: one [`ChangeSet`] per applied batch that changed something.
    /// Subscribe before reading the initial state so nothing falls between the two.
    pub fn watch(&self) -> broadcast::Receiver<Arc<ChangeSet>> {
        self.inner.shared.changes.subscribe()
    }

    /// The journal's records after `after` (every kept one for None), oldest first. The
    /// journal holds what the [`Recorder`] made of the changes of the last entries applied
    /// here, the same on every manager.
    pub fn journal_after(&self, after: Option<Position>) -> Vec<Record> {
        self.inner.shared.journal.read().after(after)
    }

    /// Follows the position of the journal's newest record: it changes whenever records are
    /// added (or a snapshot replaces the journal), so readers wait on it and then read
    /// [`Store::journal_after`] the last position they saw.
    pub fn journal_watch(&self) -> watch::Receiver<Option<Position>> {
        self.inner.shared.journal_tip.subscribe()
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

fn membership_error(
    e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>,
) -> StoreError {
    match e {
        openraft::error::RaftError::APIError(
            openraft::error::ClientWriteError::ForwardToLeader(f),
        ) => StoreError::NotLeader {
            leader: f.leader_id,
        },
        other => StoreError::Raft(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Expect;
    use redb::{ReadableTable, ReadableTableMetadata};

    fn key(b: u8) -> Key {
        Key::from_bytes(&[b; crate::seal::KEY_LEN]).unwrap()
    }

    fn contains(path: &std::path::Path, needle: &[u8]) -> bool {
        std::fs::read(path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }

    /// Turns a sealed file back into what shoal wrote before sealing existed: the same tables
    /// with plain values and no check record.
    fn unseal_in_place(path: &std::path::Path, key: &Key) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(db::LOG).unwrap();
            let plain: Vec<(u64, Vec<u8>)> = log
                .iter()
                .unwrap()
                .map(|i| {
                    let (k, v) = i.unwrap();
                    (k.value(), db::unseal(key, db::CTX_LOG, v.value()).unwrap())
                })
                .collect();
            assert!(!plain.is_empty());
            for (k, v) in plain {
                log.insert(k, v.as_slice()).unwrap();
            }
            let mut meta = txn.open_table(db::META).unwrap();
            meta.remove(db::KEY_SEALED).unwrap();
            let snap = txn.open_table(db::SNAPSHOT).unwrap();
            assert!(snap.is_empty().unwrap(), "this test writes no snapshot");
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn a_store_from_before_sealing_is_rewritten_sealed_and_keeps_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let marker = b"PLAIN-BEFORE-SEALING-91";
        let opts = StoreOptions::single(dir.path().to_path_buf(), 1, "127.0.0.1:1".into(), key(1));
        let s = Store::open(opts.clone()).await.unwrap();
        s.write(vec![Op::Put {
            kind: "secret".into(),
            id: "a".into(),
            name: None,
            expect: Expect::Absent,
            data: marker.to_vec(),
        }])
        .await
        .unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        let file = dir.path().join(DB_FILE);
        unseal_in_place(&file, &key(1));
        assert!(contains(&file, marker), "the old format is plain");

        // Any key seals an old store (it has none yet); from then on only that key opens it.
        let s = Store::open(StoreOptions::single(
            dir.path().to_path_buf(),
            1,
            "127.0.0.1:1".into(),
            key(2),
        ))
        .await
        .unwrap();
        assert_eq!(&*s.get("secret", "a").unwrap().data, marker);
        s.shutdown().await.unwrap();
        drop(s);
        assert!(
            !contains(&file, marker),
            "rewritten sealed, no plain copy left"
        );
        assert!(!dir.path().join("raft.redb.sealing").exists());
        assert!(
            Store::open(opts).await.is_err(),
            "the old key does not open it"
        );
    }
}
