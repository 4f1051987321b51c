//! A running manager: the store plus its control loops, started at `swarm init` or on restart.

use crate::dispatcher::Dispatcher;
use crate::node::session;
use crate::rpc::ManagerRpc;
use crate::{control, membership};
use futures::future::BoxFuture;
use shoal_api::dispatch::{AgentMessage, NetworkInfo, NodeAssignments, TaskStatusReport};
use shoal_api::objects::NetworkAttachment;
use shoal_pki::NodeCert;
use shoal_store::{Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;

/// The node-side half the manager hands assignments to (the agent, wired in by the binary).
pub trait AgentHost: Send + Sync {
    /// Starts the agent for `node_id` on these channels.
    fn start(
        &self,
        node_id: String,
        assignments: watch::Receiver<NodeAssignments>,
        reports: mpsc::Sender<Vec<TaskStatusReport>>,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// Stops the agent; with `remove` it also removes every container and network it made.
    fn stop(&self, remove: bool) -> BoxFuture<'_, ()>;
}

/// The local node's identity, kept beside the store so a restart rejoins as the same node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Node ID.
    pub node_id: String,
    /// Address other nodes reach this one at (`host:2377`).
    pub addr: String,
    /// "manager" or "worker": whether this node runs a store and the manager loops.
    #[serde(default = "manager_role")]
    pub role: String,
    /// Raft node id; 1 for the manager that created the swarm.
    #[serde(default = "first_raft_id")]
    pub raft_id: u64,
    /// Managers' addresses last heard of, for the dispatcher session to fail over between.
    #[serde(default)]
    pub managers: Vec<String>,
}

fn manager_role() -> String {
    "manager".into()
}

fn first_raft_id() -> u64 {
    1
}

impl Identity {
    fn path(dir: &Path) -> PathBuf {
        dir.join("node.json")
    }
    /// Reads the identity saved by `swarm init`, if this data dir has one.
    pub fn load(dir: &Path) -> Option<Identity> {
        let data = std::fs::read(Self::path(dir)).ok()?;
        serde_json::from_slice(&data).ok()
    }
    /// Saves it durably.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("node.json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, Self::path(dir))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Where the node's certificate lives inside the data directory.
pub fn certs_dir(dir: &Path) -> PathBuf {
    dir.join("certs")
}

/// A manager at work.
pub struct Manager {
    /// The replicated store.
    pub store: Store,
    /// This node.
    pub identity: Identity,
    /// Serializes address allocation between the API and the control loop.
    pub alloc: Arc<Mutex<()>>,
    server_tls: shoal_rpc::ServerTls,
    pool: Arc<shoal_rpc::Pool>,
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
    pub fn set_cert(&self, cert: &NodeCert) -> Result<(), String> {
        *self.server_tls.write() = shoal_pki::server_config(cert).map_err(|e| e.to_string())?;
        self.pool
            .set_tls(shoal_pki::client_config(cert).map_err(|e| e.to_string())?);
        Ok(())
    }

    /// Opens the store in `dir`, serves the node-to-node RPC and starts the loops (which act
    /// only while this manager leads). `bootstrap` makes a fresh store a new single-voter cluster.
    pub async fn start(
        dir: &Path,
        identity: Identity,
        cert: &NodeCert,
        bootstrap: bool,
    ) -> Result<Manager, String> {
        let server_tls = shoal_pki::server_config(cert).map_err(|e| e.to_string())?;
        let client_tls = shoal_pki::client_config(cert).map_err(|e| e.to_string())?;
        let port = identity
            .addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(2377);
        let listen = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let listener = shoal_rpc::bind(listen)
            .await
            .map_err(|e| format!("{e} (is another swarm manager running on this host?)"))?;
        let pool = shoal_rpc::Pool::new(client_tls);
        let transport: Arc<dyn shoal_store::RaftTransport> = pool.clone();
        let store = Store::open(StoreOptions {
            dir: dir.join("raft"),
            raft_node_id: identity.raft_id,
            raft_addr: identity.addr.clone(),
            bootstrap,
            transport: Some(transport),
        })
        .await
        .map_err(|e| format!("opening the store in {}: {e}", dir.display()))?;
        let stop = CancellationToken::new();
        let alloc = Arc::new(Mutex::new(()));
        let dispatcher = Dispatcher::start(store.clone(), stop.clone());
        let handlers = Arc::new(ManagerRpc {
            store: store.clone(),
            dispatcher,
        });
        let s = stop.clone();
        let server_tls: shoal_rpc::ServerTls = Arc::new(parking_lot::RwLock::new(server_tls));
        let serving = server_tls.clone();
        tokio::spawn(async move {
            if let Err(e) = shoal_rpc::serve(listener, serving, handlers, s).await {
                tracing::error!(error = %e, "node-to-node RPC server stopped");
            }
        });
        tokio::spawn(control::run(store.clone(), alloc.clone(), stop.clone()));
        tokio::spawn(membership::run(store.clone(), stop.clone()));
        Ok(Manager {
            store,
            identity,
            alloc,
            server_tls,
            pool,
            stop,
        })
    }

    /// Stops the loops, the RPC server and the store.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Err(e) = self.store.shutdown().await {
            tracing::warn!(error = %e, "store shutdown");
        }
    }
}

/// This node's session with the leader and the agent it feeds; managers and workers alike.
pub struct NodeSession {
    stop: CancellationToken,
    tls: session::ClientTls,
    assignments: watch::Receiver<NodeAssignments>,
    reports: mpsc::Sender<Vec<TaskStatusReport>>,
    requests: mpsc::Sender<AgentMessage>,
    attached: tokio::sync::broadcast::Sender<(String, Option<String>)>,
}

impl NodeSession {
    /// Starts the agent and keeps its session with the leader until [`NodeSession::stop`].
    pub async fn start(
        dir: &Path,
        identity: &Identity,
        cert: &NodeCert,
        description: Option<shoal_api::models::NodeDescription>,
        agent: &dyn AgentHost,
        on_role: session::OnRole,
    ) -> Result<NodeSession, String> {
        let tls: session::ClientTls = Arc::new(parking_lot::RwLock::new(
            shoal_pki::client_config(cert).map_err(|e| e.to_string())?,
        ));
        let mut managers = identity.managers.clone();
        if identity.role == "manager" && !managers.contains(&identity.addr) {
            managers.insert(0, identity.addr.clone());
        }
        let managers = Arc::new(parking_lot::Mutex::new(managers));
        let dir = dir.to_path_buf();
        let saved = identity.clone();
        let (attached, _) = tokio::sync::broadcast::channel(64);
        let cfg = session::ClientConfig {
            node_id: identity.node_id.clone(),
            managers,
            tls: tls.clone(),
            description,
            role: parking_lot::Mutex::new((identity.role.clone(), identity.raft_id)),
            on_role,
            on_managers: Box::new(move |list| {
                let mut id = Identity::load(&dir).unwrap_or_else(|| saved.clone());
                id.managers = list.to_vec();
                if let Err(e) = id.save(&dir) {
                    tracing::warn!(error = %e, "saving the managers' addresses");
                }
            }),
            attached: attached.clone(),
        };
        let (atx, arx) = watch::channel(NodeAssignments::default());
        let (rtx, rrx) = mpsc::channel(1024);
        let (qtx, qrx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        tokio::spawn(session::run_client(cfg, atx, rrx, qrx, stop.clone()));
        if let Err(e) = agent
            .start(identity.node_id.clone(), arx.clone(), rtx.clone())
            .await
        {
            stop.cancel();
            return Err(e);
        }
        Ok(NodeSession {
            stop,
            tls,
            assignments: arx,
            reports: rtx,
            requests: qtx,
            attached,
        })
    }

    /// Asks the leader for an address on the attachable network `network` (name or ID) for a
    /// plain container of this node, and waits until this node's assignments carry it: the
    /// attachment (with its address) and the network as the node realizes it.
    pub async fn attach(
        &self,
        task_id: &str,
        network: &str,
        aliases: Vec<String>,
        limit: std::time::Duration,
    ) -> Result<(NetworkAttachment, NetworkInfo), String> {
        let mut answers = self.attached.subscribe();
        let mut assignments = self.assignments.clone();
        let request = AgentMessage::Attach {
            task_id: task_id.to_string(),
            network: network.to_string(),
            aliases,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| "this node's session with the swarm has ended".to_string())?;
        let wait = async {
            loop {
                let ready = {
                    let a = assignments.borrow_and_update();
                    a.tasks
                        .iter()
                        .find(|t| t.id() == task_id)
                        .and_then(|t| t.networks_attachments.first())
                        .filter(|att| !att.addresses.is_empty())
                        .and_then(|att| {
                            let net = a.networks.iter().find(|n| n.id == att.network.id)?;
                            Some((att.clone(), net.clone()))
                        })
                };
                if let Some(r) = ready {
                    return Ok(r);
                }
                tokio::select! {
                    r = assignments.changed() => if r.is_err() {
                        return Err("this node's session with the swarm has ended".to_string());
                    },
                    a = answers.recv() => match a {
                        Ok((id, Some(e))) if id == task_id => return Err(e),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return Err("this node's session with the swarm has ended".into()),
                    },
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
            Err(format!(
                "could not attach to network {network}: no answer from the swarm within {} s",
                limit.as_secs()
            ))
        })
    }

    /// Gives an attachment's address back (its container is gone, or was never made).
    pub async fn release(&self, task_id: &str, why: &str) {
        let report = TaskStatusReport::attachment_released(task_id, why);
        if self.reports.send(vec![report]).await.is_err() {
            tracing::warn!(task = %task_id, "session ended; the attachment is released by the node's sweep");
        }
    }

    /// Ends the session (the agent is stopped separately).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Cancelled when the session ends, for work that lives as long as it.
    pub fn stopped(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Uses `cert` for the next connection to a manager (a renewed certificate).
    pub fn set_cert(&self, cert: &NodeCert) -> Result<(), String> {
        *self.tls.write() = shoal_pki::client_config(cert).map_err(|e| e.to_string())?;
        Ok(())
    }
}
