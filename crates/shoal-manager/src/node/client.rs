//! The node's side of its dispatcher session (the client): keeps one session with the raft leader, failing
//! over between managers, and carries assignments down and reports, heartbeats and requests up.

use crate::dispatcher::session::DEFAULT_HEARTBEAT;
use shoal_api::dispatch::{
    AgentMessage, FloatingDown, ManagerMessage, NodeAssignments, TaskStatusReport,
    NODE_HEARTBEAT_MAX, SESSION_SILENCE,
};
use shoal_api::logs::{LogBatch, LogCommand};
use shoal_api::models::NodeDescription;
use shoal_api::Role;
use shoal_rpc::pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A node's client TLS settings, swappable while it runs (certificate renewal).
pub type ClientTls = Arc<parking_lot::RwLock<Arc<shoal_pki::rustls::ClientConfig>>>;

/// Called with the leader's list of managers when it changes.
pub type OnManagers = Box<dyn Fn(&[String]) + Send + Sync>;
/// Called when the swarm changes this node's role (with its raft id, for a manager).
pub type OnRole = Box<dyn Fn(Role, u64) + Send + Sync>;

/// Why one session with a manager ended or never began; the client then tries the next.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No channel to the manager.
    #[error("connecting: {0}")]
    Connect(#[source] shoal_rpc::RpcError),
    /// A message would not encode.
    #[error("encoding a session message: {0}")]
    Encode(#[from] serde_json::Error),
    /// The manager did not answer the session request within 5 s.
    #[error("session request timed out")]
    Timeout,
    /// The manager refused the session (not the leader, not a member...).
    #[error("session refused: {}", .0.message())]
    Refused(tonic::Status),
    /// The manager ended the stream (it stopped leading, or shut down).
    #[error("session ended by the manager")]
    Ended,
    /// The stream from the manager broke.
    #[error("session stream failed: {}", .0.message())]
    Stream(tonic::Status),
    /// The stream to the manager is closed.
    #[error("session closed")]
    Closed,
    /// The manager said nothing (not even its tick) for `SESSION_SILENCE`: cut off or dead.
    #[error("the manager has been silent for {0:?}")]
    Silent(Duration),
}

impl SessionError {
    /// The leader a refusing manager named, to try next.
    fn leader_hint(&self) -> Option<shoal_rpc::LeaderHint> {
        match self {
            SessionError::Refused(s) => shoal_rpc::leader_hint(s),
            _ => None,
        }
    }
}

/// What a node's side of the session needs.
pub struct ClientConfig {
    /// This node.
    pub node_id: String,
    /// Managers to try, in order; updated from the leader's list.
    pub managers: Arc<parking_lot::Mutex<Vec<String>>>,
    /// Mutual TLS with this node's certificate (swapped when it is renewed).
    pub tls: ClientTls,
    /// What this node says of itself in every new session.
    pub description: Option<NodeDescription>,
    /// Called with the leader's list of managers when it changes (to persist it).
    pub on_managers: OnManagers,
    /// The role this node runs as now, and its raft id.
    pub role: parking_lot::Mutex<(Role, u64)>,
    /// Called when the assignments carry another role.
    pub on_role: OnRole,
    /// Where the leader's answers to attachment requests go (task ID, refusal).
    pub attached: tokio::sync::broadcast::Sender<(String, Option<String>)>,
    /// Where the leader's floating address messages go (the agent's holder loop); dropped when
    /// it is behind: the lease repeats them.
    pub floating: mpsc::Sender<FloatingDown>,
    /// The engine's images, as `images::watch_engine` reads them: sent at each session's
    /// start and on every change.
    pub images: watch::Receiver<Option<Vec<shoal_api::images::NodeImage>>>,
    /// Where the leader's answers to "who holds this image" go (image, holders).
    pub image_sources:
        tokio::sync::broadcast::Sender<(String, Vec<shoal_api::images::ImageSource>)>,
    /// Where the leader's answers to the registry's requests go (seq, answer).
    pub registry: tokio::sync::broadcast::Sender<(u64, shoal_api::registry::RegistryAnswer)>,
}

/// The session's side of the agent's log subscriptions.
pub struct LogChannels {
    /// Where the manager's log messages go (and the end of each session).
    pub commands: mpsc::Sender<LogCommand>,
    /// Batches of lines to send up.
    pub batches: mpsc::Receiver<LogBatch>,
}

/// Keeps this node's session with the leader, failing over between managers, until `stop`.
/// Assignments go into `assignments`; reports are taken from `reports`; log subscriptions go
/// to the agent through `logs`, and end with each session.
pub async fn run_client(
    cfg: ClientConfig,
    assignments: watch::Sender<NodeAssignments>,
    mut reports: mpsc::Receiver<Vec<TaskStatusReport>>,
    mut requests: mpsc::Receiver<AgentMessage>,
    mut logs: LogChannels,
    stop: CancellationToken,
) {
    let mut next: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let list = cfg.managers.lock().clone();
        // A hint is followed once; then every known manager is tried again in turn.
        let tried_hint = next.is_some();
        let mut candidates: Vec<String> = next.take().into_iter().collect();
        for a in list {
            if !candidates.contains(&a) {
                candidates.push(a);
            }
        }
        for addr in candidates {
            if stop.is_cancelled() {
                return;
            }
            let chans = (&mut reports, &mut requests, &mut logs);
            let ended = one_session(&cfg, &addr, &assignments, chans, &stop).await;
            // Subscriptions belong to the session that brought them: the manager has let go
            // of them too.
            let _ = logs.commands.send(LogCommand::CloseAll).await;
            match ended {
                Ok(()) => {
                    failures = 0;
                    if stop.is_cancelled() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(manager = %addr, error = %e, "no session");
                    let hint = e.leader_hint().map(|h| h.addr);
                    if let Some(hint) = hint.filter(|h| *h != addr && !tried_hint) {
                        next = Some(hint);
                        break;
                    }
                }
            }
        }
        failures = failures.saturating_add(1);
        let backoff = Duration::from_millis(100 * u64::from(failures.min(10)));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// How often the node looks for changes of its interfaces (reported for floating addresses).
const INTERFACES_EVERY: Duration = Duration::from_secs(5);

/// How often the node sends heartbeats for the swarm's heartbeat period: twice per period, at
/// least every `NODE_HEARTBEAT_MAX` (the leader tells a dead session from a quiet one by it).
fn heartbeat_every(period: Duration) -> Duration {
    (period / 2).clamp(Duration::from_millis(100), NODE_HEARTBEAT_MAX)
}

async fn one_session(
    cfg: &ClientConfig,
    addr: &str,
    assignments: &watch::Sender<NodeAssignments>,
    (reports, requests, logs): (
        &mut mpsc::Receiver<Vec<TaskStatusReport>>,
        &mut mpsc::Receiver<AgentMessage>,
        &mut LogChannels,
    ),
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let tls = cfg.tls.read().clone();
    let channel = shoal_rpc::connect(addr, tls).map_err(SessionError::Connect)?;
    let mut client = pb::dispatcher_client::DispatcherClient::new(channel)
        .max_decoding_message_size(shoal_rpc::MAX_SESSION_DOWN)
        .max_encoding_message_size(shoal_rpc::MAX_SESSION_UP);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    let encode = |m: &AgentMessage| serde_json::to_vec(m).map(|json| pb::AgentMessage { json });
    let mut interfaces = super::local::interfaces();
    let hello = encode(&AgentMessage::Hello {
        description: cfg.description.clone().map(Box::new),
        interfaces: interfaces.clone(),
    })?;
    tx.send(hello).await.map_err(|_| SessionError::Closed)?;
    let mut inbound = tokio::time::timeout(
        Duration::from_secs(5),
        client.session(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| SessionError::Timeout)?
    .map_err(SessionError::Refused)?
    .into_inner();
    tracing::info!(manager = %addr, node = %cfg.node_id, "session with the leader");
    let mut heartbeat = tokio::time::interval(heartbeat_every(DEFAULT_HEARTBEAT));
    let mut heard = tokio::time::Instant::now();
    let mut look = tokio::time::interval(INTERFACES_EVERY);
    let mut usage = super::local::UsageSampler::default();
    // This session's copy: the current list goes up at once, then each change.
    let mut images = cfg.images.clone();
    images.mark_changed();
    let mut images_open = true;
    look.reset();
    loop {
        tokio::select! {
            // Reports and heartbeats before log lines, which can wait.
            biased;
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(heard + SESSION_SILENCE) => {
                return Err(SessionError::Silent(SESSION_SILENCE));
            }
            m = inbound.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(SessionError::Ended),
                    Err(s) => return Err(SessionError::Stream(s)),
                };
                heard = tokio::time::Instant::now();
                match serde_json::from_slice::<ManagerMessage>(&m.json) {
                    Ok(ManagerMessage::Welcome { heartbeat_ms }) => {
                        heartbeat = tokio::time::interval(heartbeat_every(
                            Duration::from_millis(heartbeat_ms),
                        ));
                    }
                    Ok(ManagerMessage::Tick) => {}
                    Ok(ManagerMessage::Assignments(a)) => {
                        if let Some(role) = a.role {
                            let wanted = (role, a.raft_id);
                            if *cfg.role.lock() != wanted {
                                *cfg.role.lock() = wanted;
                                (cfg.on_role)(role, a.raft_id);
                            }
                        }
                        assignments.send_replace(*a);
                    }
                    Ok(ManagerMessage::Managers(list)) => {
                        if !list.is_empty() && *cfg.managers.lock() != list {
                            *cfg.managers.lock() = list.clone();
                            (cfg.on_managers)(&list);
                        }
                    }
                    Ok(ManagerMessage::Attached { task_id, error }) => {
                        let _ = cfg.attached.send((task_id, error));
                    }
                    Ok(ManagerMessage::ImageSources { image, sources }) => {
                        let _ = cfg.image_sources.send((image, sources));
                    }
                    Ok(ManagerMessage::Registry { seq, answer }) => {
                        let _ = cfg.registry.send((seq, answer));
                    }
                    Ok(ManagerMessage::LogSubscribe(sub)) => {
                        let _ = logs.commands.send(LogCommand::Subscribe(sub)).await;
                    }
                    Ok(ManagerMessage::LogCredit { id, bytes }) => {
                        let _ = logs.commands.send(LogCommand::Credit { id, bytes }).await;
                    }
                    Ok(ManagerMessage::LogClose { id }) => {
                        let _ = logs.commands.send(LogCommand::Close { id }).await;
                    }
                    Ok(ManagerMessage::Floating(m)) => {
                        let _ = cfg.floating.try_send(m);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable session message"),
                }
            }
            r = requests.recv() => {
                let Some(r) = r else { return Ok(()) };
                tx.send(encode(&r)?).await.map_err(|_| SessionError::Closed)?;
            }
            r = reports.recv() => {
                let Some(r) = r else { return Ok(()) };
                let m = encode(&AgentMessage::Reports(r))?;
                tx.send(m).await.map_err(|_| SessionError::Closed)?;
            }
            r = images.changed(), if images_open => {
                images_open = r.is_ok();
                if r.is_ok() {
                    let list = images.borrow_and_update().clone();
                    if let Some(list) = list {
                        tx.send(encode(&AgentMessage::Images(list))?)
                            .await
                            .map_err(|_| SessionError::Closed)?;
                    }
                }
            }
            _ = look.tick() => {
                let now = tokio::task::spawn_blocking(super::local::interfaces)
                    .await
                    .unwrap_or_default();
                if now != interfaces {
                    interfaces = now;
                    let m = encode(&AgentMessage::Interfaces(interfaces.clone()))?;
                    tx.send(m).await.map_err(|_| SessionError::Closed)?;
                }
                if let Some(u) = usage.sample() {
                    tx.send(encode(&AgentMessage::Usage(u))?)
                        .await
                        .map_err(|_| SessionError::Closed)?;
                }
            }
            _ = heartbeat.tick() => {
                let m = encode(&AgentMessage::Heartbeat)?;
                tx.send(m).await.map_err(|_| SessionError::Closed)?;
            }
            b = logs.batches.recv(), if !logs.batches.is_closed() || !logs.batches.is_empty() => {
                // None: the agent has no log side (stopped, or a stand-in); nothing to send.
                if let Some(b) = b {
                    let m = encode(&AgentMessage::Logs(b))?;
                    tx.send(m).await.map_err(|_| SessionError::Closed)?;
                }
            }
        }
    }
}
