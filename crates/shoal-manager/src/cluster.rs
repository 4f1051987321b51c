//! A running manager: the store plus its control loops, started at `swarm init` or on restart.

use crate::dispatcher::Dispatcher;
use crate::floating::leader::FloatingHub;
use crate::logbroker::LogBroker;
use crate::node::Identity;
use crate::rpc::ManagerRpc;
use crate::state::SharedState;
use crate::{control, membership};
use shoal_pki::NodeCert;
use shoal_store::{Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{watch, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio_util::sync::CancellationToken;

/// The daemon's manager while this node is one, and a signal each time that changes, so what
/// follows the manager (the API over TCP) starts and stops with it.
pub struct ManagerSlot {
    slot: RwLock<Option<Arc<Manager>>>,
    changed: watch::Sender<u64>,
}

impl Default for ManagerSlot {
    fn default() -> Self {
        ManagerSlot {
            slot: RwLock::new(None),
            changed: watch::Sender::new(0),
        }
    }
}

impl ManagerSlot {
    /// The manager now, for as long as the guard is held.
    pub async fn read(&self) -> RwLockReadGuard<'_, Option<Arc<Manager>>> {
        self.slot.read().await
    }

    /// Sets or takes the manager; whoever follows [`ManagerSlot::changes`] hears of it once
    /// the guard is dropped.
    pub async fn write(&self) -> ManagerSlotWrite<'_> {
        ManagerSlotWrite {
            guard: self.slot.write().await,
            changed: &self.changed,
        }
    }

    /// Ticks after every write.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// A write to the [`ManagerSlot`]: announced when dropped.
pub struct ManagerSlotWrite<'a> {
    guard: RwLockWriteGuard<'a, Option<Arc<Manager>>>,
    changed: &'a watch::Sender<u64>,
}

impl std::ops::Deref for ManagerSlotWrite<'_> {
    type Target = Option<Arc<Manager>>;
    fn deref(&self) -> &Self::Target {
        &self.guard
    }
}

impl std::ops::DerefMut for ManagerSlotWrite<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.guard
    }
}

impl Drop for ManagerSlotWrite<'_> {
    fn drop(&mut self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Why a manager could not start, or could not take a renewed certificate.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The node certificate does not make TLS settings.
    #[error("TLS settings from the node certificate: {0}")]
    Tls(#[from] shoal_pki::PkiError),
    /// The node-to-node port is taken.
    #[error("{0} (is another swarm manager running on this host?)")]
    Listen(#[source] shoal_rpc::RpcError),
    /// The store would not open.
    #[error("opening the store in {}: {source}", dir.display())]
    Store {
        /// The raft directory.
        dir: PathBuf,
        /// What the store said.
        source: shoal_store::StoreError,
    },
}

/// A manager at work.
pub struct Manager {
    /// The replicated store.
    pub store: Store,
    /// This node.
    pub identity: Identity,
    /// Serializes address allocation between the API and the control loop.
    pub alloc: Arc<Mutex<()>>,
    /// Task logs from every node (`docker service logs`).
    pub logs: LogBroker,
    /// The floating addresses' lease: what the leader last decided, for `floating-ip ls`.
    pub floating: Arc<FloatingHub>,
    /// The decoded view of the store the loops share; the dashboard and `/metrics` read it too.
    pub view: SharedState,
    /// Each node's CPU and memory in use as its session last said (on the leader only).
    pub usage: crate::dispatcher::UsageMap,
    server_tls: shoal_rpc::ServerTls,
    pool: Arc<shoal_rpc::Pool>,
    cert: watch::Sender<NodeCert>,
    stop: CancellationToken,
}

impl Manager {
    /// Whether the manager at `addr` answers raft now, as far as this manager can tell: only
    /// the leader talks to every manager, so elsewhere the answer is None.
    pub fn answers(&self, addr: &str) -> Option<bool> {
        if !self.store.is_leader() {
            return None;
        }
        Some(
            self.pool
                .last_answer(addr)
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(1500)),
        )
    }

    /// Serves and calls with `cert` from now on (a renewed certificate).
    pub fn set_cert(&self, cert: &NodeCert) -> Result<(), ManagerError> {
        *self.server_tls.write() = shoal_pki::server_config(cert)?;
        self.pool.set_tls(shoal_pki::client_config(cert)?);
        self.cert.send_replace(cert.clone());
        Ok(())
    }

    /// This manager's node certificate, now and whenever it is renewed (the API server
    /// certificate follows it).
    pub fn certificate(&self) -> watch::Receiver<NodeCert> {
        self.cert.subscribe()
    }

    /// Opens the store in `dir` (sealed with `data_key`), serves the node-to-node RPC and starts
    /// the loops (which act only while this manager leads). `bootstrap` makes a fresh store a
    /// new single-voter cluster.
    pub async fn start(
        dir: &Path,
        identity: Identity,
        cert: &NodeCert,
        bootstrap: bool,
        data_key: shoal_store::seal::Key,
    ) -> Result<Manager, ManagerError> {
        let server_tls = shoal_pki::server_config(cert)?;
        let client_tls = shoal_pki::client_config(cert)?;
        let port = identity
            .addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(2377);
        let listen = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let listener = shoal_rpc::bind(listen)
            .await
            .map_err(ManagerError::Listen)?;
        let pool = shoal_rpc::Pool::new(client_tls);
        let transport: Arc<dyn shoal_store::RaftTransport> = pool.clone();
        let store = Store::open(StoreOptions {
            dir: dir.join("raft"),
            raft_node_id: identity.raft_id,
            raft_addr: identity.addr.clone(),
            bootstrap,
            transport: Some(transport),
            data_key,
            recorder: Some(Arc::new(crate::events::EventRecorder)),
        })
        .await
        .map_err(|source| ManagerError::Store {
            dir: dir.join("raft"),
            source,
        })?;
        let stop = CancellationToken::new();
        let alloc = Arc::new(Mutex::new(()));
        // One decoded view of the store, kept current from its change stream, read by both the
        // control loop and the dispatcher's assignments: each change is decoded once.
        let shared = SharedState::new(store.clone());
        let logs = LogBroker::new(store.clone(), pool.clone());
        let (floating, floating_inbox) = FloatingHub::new();
        let usage = crate::dispatcher::UsageMap::default();
        let dispatcher = Dispatcher::start(
            store.clone(),
            shared.reader(),
            logs.clone(),
            floating.clone(),
            usage.clone(),
            stop.clone(),
        );
        let handlers = Arc::new(ManagerRpc {
            store: store.clone(),
            dispatcher,
            logs: logs.clone(),
        });
        let s = stop.clone();
        let server_tls: shoal_rpc::ServerTls = Arc::new(parking_lot::RwLock::new(server_tls));
        let serving = server_tls.clone();
        tokio::spawn(async move {
            if let Err(e) = shoal_rpc::serve(listener, serving, handlers, s).await {
                tracing::error!(error = %e, "node-to-node RPC server stopped");
            }
        });
        tokio::spawn(control::run(shared.reader(), alloc.clone(), stop.clone()));
        tokio::spawn(membership::run(store.clone(), stop.clone()));
        tokio::spawn(crate::metrics::follow_raft(store.clone(), stop.clone()));
        tokio::spawn(crate::floating::leader::run(
            store.clone(),
            identity.node_id.clone(),
            floating.clone(),
            floating_inbox,
            stop.clone(),
        ));
        Ok(Manager {
            store,
            identity,
            alloc,
            logs,
            floating,
            view: shared,
            usage,
            server_tls,
            pool,
            cert: watch::Sender::new(cert.clone()),
            stop,
        })
    }

    /// Cancelled when the manager stops: ends tasks that follow it (the autolock follower).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops the loops, the RPC server and the store.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Err(e) = self.store.shutdown().await {
            tracing::warn!(error = %e, "store shutdown");
        }
    }
}
