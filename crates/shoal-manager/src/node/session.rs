//! This node's membership at work: the agent, and its session with the leader that feeds it
//! (managers and workers alike). Also what the node asks the leader for over that session
//! (addresses for plain containers on attachable networks).

use super::client::{self, ClientConfig};
use super::peer::{ImageExport, PeerLink};
use super::Identity;
use futures::future::BoxFuture;
use shoal_api::dispatch::{
    AgentMessage, FloatingDown, NetworkInfo, NodeAssignments, TaskStatusReport,
};
use shoal_api::logs::{LogBatch, LogCommand};
use shoal_api::objects::NetworkAttachment;
use shoal_api::Role;
use shoal_pki::NodeCert;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Why the agent would not start; the agent lives in the binary, so its errors come boxed.
pub type AgentError = Box<dyn std::error::Error + Send + Sync>;

/// The agent's end of log subscriptions: what the manager asks over the session, and the
/// batches of lines that answer it.
pub struct LogLink {
    /// Subscriptions, credit, closes, and the end of each session.
    pub commands: mpsc::Receiver<LogCommand>,
    /// Batches of lines, sent up the session.
    pub batches: mpsc::Sender<LogBatch>,
}

/// The agent's end of the floating addresses' lease (issue 20): the leader's grants, answers
/// and revocations down, renewals and releases up.
pub struct FloatingLink {
    /// From the leader.
    pub down: mpsc::Receiver<FloatingDown>,
    /// To the leader (`AgentMessage::Floating`), over whichever session is open.
    pub up: mpsc::Sender<AgentMessage>,
    /// This node's advertise address (`IP:port`): its interface is the default one.
    pub advertise: String,
}

/// The node-side half the manager hands assignments to (the agent, wired in by the binary).
pub trait AgentHost: Send + Sync {
    /// Starts the agent for `node_id` on these channels.
    fn start(
        &self,
        node_id: String,
        assignments: watch::Receiver<NodeAssignments>,
        reports: mpsc::Sender<Vec<TaskStatusReport>>,
        logs: LogLink,
        floating: FloatingLink,
        peers: PeerLink,
    ) -> BoxFuture<'_, Result<(), AgentError>>;
    /// This node's engine's `docker save` of `image_id`, for another node that lacks it
    /// (issue 22). An agent without an engine has none to give.
    fn export_image(&self, image_id: String) -> BoxFuture<'_, Result<ImageExport, AgentError>> {
        let _ = image_id;
        Box::pin(async { Err("this node exports no images".into()) })
    }
    /// A blob of this node's registry, for another node's registry that lacks it (issue 22).
    fn export_blob(&self, digest: String) -> BoxFuture<'_, Result<ImageExport, AgentError>> {
        let _ = digest;
        Box::pin(async { Err("this node runs no registry".into()) })
    }
    /// Stops the agent; with `remove` it also removes every container and network it made.
    fn stop(&self, remove: bool) -> BoxFuture<'_, ()>;
    /// Gives up this node's floating addresses now and tells the leader (leave, shutdown), so
    /// another node takes them without waiting for the lease to run out. Called while the
    /// session is still open.
    fn hand_over(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Why this node's session could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeSessionError {
    /// The node certificate does not make TLS settings.
    #[error("TLS settings from the node certificate: {0}")]
    Tls(#[from] shoal_pki::PkiError),
    /// The agent would not start.
    #[error("starting the agent: {0}")]
    Agent(#[source] AgentError),
}

/// Why a plain container got no address on an attachable network. The messages are what the
/// user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The leader refused, in these words (unknown network, not attachable...).
    #[error("{0}")]
    Refused(String),
    /// The session with the leader ended before an answer.
    #[error("this node's session with the swarm has ended")]
    SessionEnded,
    /// No answer in time.
    #[error("could not attach to network {network}: no answer from the swarm within {secs} s")]
    Timeout {
        /// The network asked for.
        network: String,
        /// How long the node waited.
        secs: u64,
    },
}

/// This node's session with the leader and the agent it feeds; managers and workers alike.
pub struct NodeSession {
    stop: CancellationToken,
    tls: client::ClientTls,
    /// The node certificate, for peer connections (swapped when renewed).
    cert: Arc<parking_lot::RwLock<NodeCert>>,
    /// The peer port's TLS (swapped when the certificate is renewed).
    peer_tls: shoal_rpc::ServerTls,
    assignments: watch::Receiver<NodeAssignments>,
    reports: mpsc::Sender<Vec<TaskStatusReport>>,
    requests: mpsc::Sender<AgentMessage>,
    attached: tokio::sync::broadcast::Sender<(String, Option<String>)>,
}

impl NodeSession {
    /// Starts the agent and keeps its session with the leader until [`NodeSession::stop`].
    pub async fn start(
        d: &crate::api::AppState,
        identity: &Identity,
        cert: &NodeCert,
        description: Option<shoal_api::models::NodeDescription>,
    ) -> Result<NodeSession, NodeSessionError> {
        let (dir, agent, peer_port) = (d.data_dir.as_path(), &d.agent, d.peer_port);
        let on_role = super::role::role_watcher(d);
        let images = super::start::engine_images(d);
        let tls: client::ClientTls =
            Arc::new(parking_lot::RwLock::new(shoal_pki::client_config(cert)?));
        let peer_tls = super::peer::server_tls(cert)?;
        let node_cert = Arc::new(parking_lot::RwLock::new(cert.clone()));
        let (image_sources, _) = tokio::sync::broadcast::channel(64);
        let (registry, _) = tokio::sync::broadcast::channel(256);
        let mut managers = identity.managers.clone();
        if identity.role == Role::Manager && !managers.contains(&identity.addr) {
            managers.insert(0, identity.addr.clone());
        }
        let managers = Arc::new(parking_lot::Mutex::new(managers));
        let dir = dir.to_path_buf();
        let saved = identity.clone();
        let (attached, _) = tokio::sync::broadcast::channel(64);
        let (ftx, frx) = mpsc::channel(256);
        let cfg = ClientConfig {
            node_id: identity.node_id.clone(),
            managers,
            tls: tls.clone(),
            description,
            role: parking_lot::Mutex::new((identity.role, identity.raft_id)),
            on_role,
            on_managers: Box::new(move |list| {
                let mut id = Identity::load(&dir).unwrap_or_else(|| saved.clone());
                id.managers = list.to_vec();
                if let Err(e) = id.save(&dir) {
                    tracing::warn!(error = %e, "saving the managers' addresses");
                }
            }),
            attached: attached.clone(),
            floating: ftx,
            images,
            image_sources: image_sources.clone(),
            registry: registry.clone(),
        };
        let (atx, arx) = watch::channel(NodeAssignments::default());
        let (rtx, rrx) = mpsc::channel(1024);
        let (qtx, qrx) = mpsc::channel(64);
        let (ltx, lrx) = mpsc::channel(256);
        let (btx, brx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let logs = client::LogChannels {
            commands: ltx,
            batches: brx,
        };
        tokio::spawn(client::run_client(cfg, atx, rrx, qrx, logs, stop.clone()));
        let link = LogLink {
            commands: lrx,
            batches: btx,
        };
        let floating = FloatingLink {
            down: frx,
            up: qtx.clone(),
            advertise: identity.addr.clone(),
        };
        let peers = PeerLink::new(
            qtx.clone(),
            image_sources,
            registry,
            node_cert.clone(),
            peer_port.unwrap_or(super::peer::DEFAULT_PEER_PORT),
        );
        if let Err(e) = agent
            .start(
                identity.node_id.clone(),
                arx.clone(),
                rtx.clone(),
                link,
                floating,
                peers,
            )
            .await
        {
            stop.cancel();
            return Err(NodeSessionError::Agent(e));
        }
        if let Some(port) = peer_port {
            super::peer::spawn_server(port, peer_tls.clone(), agent.clone(), stop.clone());
        }
        Ok(NodeSession {
            stop,
            tls,
            cert: node_cert,
            peer_tls,
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
    ) -> Result<(NetworkAttachment, NetworkInfo), AttachError> {
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
            .map_err(|_| AttachError::SessionEnded)?;
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
                        return Err(AttachError::SessionEnded);
                    },
                    a = answers.recv() => match a {
                        Ok((id, Some(e))) if id == task_id => return Err(AttachError::Refused(e)),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return Err(AttachError::SessionEnded),
                    },
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
            Err(AttachError::Timeout {
                network: network.to_string(),
                secs: limit.as_secs(),
            })
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

    /// Uses `cert` for the next connection to a manager or a peer (a renewed certificate).
    pub fn set_cert(&self, cert: &NodeCert) -> Result<(), shoal_pki::PkiError> {
        *self.tls.write() = shoal_pki::client_config(cert)?;
        *self.peer_tls.write() = shoal_pki::peer_server_config(cert)?;
        *self.cert.write() = cert.clone();
        Ok(())
    }
}
