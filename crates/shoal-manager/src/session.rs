//! Dispatcher sessions: every node, managers included, holds one with the raft leader. The
//! leader streams the node's assignments and takes its task reports and heartbeats; a node that
//! stops answering is marked down, which lets the orchestrator replace its tasks elsewhere.

use crate::db;
use crate::dispatcher;
use futures::StreamExt;
use shoal_api::dispatch::{AgentMessage, ManagerMessage, NodeAssignments, TaskStatusReport};
use shoal_api::models::{Node, NodeDescription, NodeState, NodeStatus, Swarm};
use shoal_rpc::{pb, SessionStream};
use shoal_store::{Expect, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

/// Swarm's default `Dispatcher.HeartbeatPeriod`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// A node whose session ended is marked down after this long without a new one; a node that
/// is still connected but silent is marked down after three heartbeat periods.
pub const DISCONNECT_GRACE: Duration = Duration::from_millis(1500);

/// The heartbeat period the swarm's spec asks for.
pub fn heartbeat_period(store: &Store) -> Duration {
    db::list::<Swarm>(store)
        .into_iter()
        .next()
        .and_then(|c| c.obj.spec?.dispatcher?.heartbeat_period)
        .filter(|ns| *ns > 0)
        .map(|ns| Duration::from_nanos(ns as u64))
        .unwrap_or(DEFAULT_HEARTBEAT)
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    last: Instant,
    sessions: u32,
}

/// When each node was last heard from, as this leader saw it.
#[derive(Default)]
pub struct Liveness {
    seen: parking_lot::Mutex<HashMap<String, Seen>>,
}

impl Liveness {
    fn touch(&self, node: &str) {
        let mut m = self.seen.lock();
        let e = m.entry(node.to_string()).or_insert(Seen {
            last: Instant::now(),
            sessions: 0,
        });
        e.last = Instant::now();
    }

    fn connected(&self, node: &str) {
        let mut m = self.seen.lock();
        let e = m.entry(node.to_string()).or_insert(Seen {
            last: Instant::now(),
            sessions: 0,
        });
        e.sessions += 1;
        e.last = Instant::now();
    }

    fn disconnected(&self, node: &str) {
        let mut m = self.seen.lock();
        if let Some(e) = m.get_mut(node) {
            e.sessions = e.sessions.saturating_sub(1);
            e.last = Instant::now();
        }
    }

    /// Gives every node a full grace period, as a new leader must: it has heard from nobody yet.
    fn reset(&self) {
        let mut m = self.seen.lock();
        let now = Instant::now();
        for e in m.values_mut() {
            e.last = now;
        }
    }

    fn alive(&self, node: &str, heartbeat: Duration, since_leader: Instant) -> bool {
        let m = self.seen.lock();
        match m.get(node) {
            Some(s) if s.sessions > 0 => s.last.elapsed() < heartbeat * 3,
            Some(s) => s.last.elapsed() < DISCONNECT_GRACE,
            None => since_leader.elapsed() < heartbeat * 3,
        }
    }
}

/// The leader's side of every session.
#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    assignments: dispatcher::Dispatcher,
    reports: mpsc::Sender<Vec<TaskStatusReport>>,
    liveness: Arc<Liveness>,
    stop: CancellationToken,
}

impl Dispatcher {
    /// Starts the report writer and the liveness checker; both act only while this manager leads.
    pub fn start(store: Store, stop: CancellationToken) -> Dispatcher {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(dispatcher::collect_reports(store.clone(), rx, stop.clone()));
        let d = Dispatcher {
            // One view of the state computes every node's assignments, patched per change.
            assignments: dispatcher::Dispatcher::spawn(store.clone(), stop.clone()),
            store,
            reports: tx,
            liveness: Arc::new(Liveness::default()),
            stop,
        };
        tokio::spawn(d.clone().watch_nodes());
        d
    }

    /// Serves one node's session. Refused on a manager that is not the leader, with the leader's
    /// address in the message so the node can go there.
    pub async fn open(
        &self,
        node_id: String,
        inbound: Streaming<pb::AgentMessage>,
    ) -> Result<SessionStream, Status> {
        if !self.store.confirm_leader(Duration::from_secs(1)).await {
            // Point elsewhere only: a leader that cannot confirm itself is no help.
            let hint = self
                .store
                .leader()
                .filter(|(id, _)| *id != self.store.raft_id())
                .map(|(_, a)| format!("; leader is {a}"))
                .unwrap_or_default();
            return Err(Status::unavailable(format!("not the raft leader{hint}")));
        }
        let Some(node) = db::get::<Node>(&self.store, &node_id) else {
            tracing::warn!(node = %node_id, reason = "unknown node", "refused a session");
            return Err(Status::permission_denied(format!(
                "node {node_id} is not a member of this swarm"
            )));
        };
        let heartbeat = heartbeat_period(&self.store);
        let session = self.stop.child_token();
        let (tx, rx) = mpsc::channel::<Result<pb::ManagerMessage, Status>>(16);
        send(
            &tx,
            &ManagerMessage::Welcome {
                heartbeat_ms: heartbeat.as_millis() as u64,
            },
        )
        .await;
        self.liveness.connected(&node_id);
        tracing::info!(node = %node_id, "session opened");

        // Assignments, computed from this leader's store, until the session or leadership ends.
        let (atx, mut arx) = watch::channel(NodeAssignments::default());
        if self.assignments.serve(node_id.clone(), atx).is_err() {
            return Err(Status::unavailable("the dispatcher is shutting down"));
        }
        let store = self.store.clone();
        let out = tx.clone();
        let s = session.clone();
        tokio::spawn(async move {
            let mut managers = Vec::new();
            let mut period = heartbeat;
            let mut leadership = store.raft().metrics();
            loop {
                // `swarm update --dispatcher-heartbeat` reaches open sessions too.
                let p = heartbeat_period(&store);
                if p != period {
                    period = p;
                    let welcome = ManagerMessage::Welcome {
                        heartbeat_ms: p.as_millis() as u64,
                    };
                    if !send(&out, &welcome).await {
                        break;
                    }
                }
                let now = manager_addrs(&store);
                if now != managers {
                    managers = now;
                    if !send(&out, &ManagerMessage::Managers(managers.clone())).await {
                        break;
                    }
                }
                tokio::select! {
                    _ = s.cancelled() => break,
                    r = arx.changed() => {
                        if r.is_err() { break; }
                        let a = arx.borrow_and_update().clone();
                        if !send(&out, &ManagerMessage::Assignments(Box::new(a))).await { break; }
                    }
                    r = leadership.changed() => {
                        if r.is_err() || !store.is_leader() {
                            tracing::info!("no longer the leader: ending sessions");
                            break;
                        }
                    }
                    _ = tokio::time::sleep(period.min(Duration::from_secs(5))) => {
                        if !store.confirm_leader(Duration::from_secs(2)).await {
                            tracing::info!("leadership not confirmed by a quorum: ending sessions");
                            break;
                        }
                    }
                }
            }
            s.cancel();
        });

        // The node's messages: reports, heartbeats, its description, attachment requests.
        let d = self.clone();
        let s = session.clone();
        let replies = tx.clone();
        tokio::spawn(async move {
            let mut inbound = inbound;
            loop {
                let msg = tokio::select! {
                    _ = s.cancelled() => break,
                    m = inbound.message() => m,
                };
                let m = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(node = %node_id, error = %e, "session stream failed");
                        break;
                    }
                };
                d.liveness.touch(&node_id);
                match serde_json::from_slice::<AgentMessage>(&m.json) {
                    Ok(AgentMessage::Heartbeat) => {}
                    Ok(AgentMessage::Reports(r)) => {
                        if d.reports.send(r).await.is_err() {
                            break;
                        }
                    }
                    Ok(AgentMessage::Hello { description }) => {
                        d.describe(&node, description.map(|b| *b)).await;
                    }
                    Ok(AgentMessage::Attach {
                        task_id,
                        network,
                        aliases,
                    }) => {
                        let (store, out, node) =
                            (d.store.clone(), replies.clone(), node_id.clone());
                        tokio::spawn(async move {
                            let error = crate::attachment::create(
                                &store, &node, &task_id, &network, aliases,
                            )
                            .await
                            .err();
                            if let Some(e) = &error {
                                tracing::info!(node = %node, %network, error = %e, "attachment refused");
                            }
                            send(&out, &ManagerMessage::Attached { task_id, error }).await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(node = %node_id, error = %e, "undecodable session message")
                    }
                }
            }
            d.liveness.disconnected(&node_id);
            tracing::info!(node = %node_id, "session closed");
            s.cancel();
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(stream.boxed())
    }

    /// Refreshes the node's description (hostname, resources) from what it says of itself.
    async fn describe(&self, node: &db::Versioned<Node>, description: Option<NodeDescription>) {
        let Some(desc) = description else { return };
        let Some(mut cur) = db::get::<Node>(&self.store, node.obj.id.as_deref().unwrap_or(""))
        else {
            return;
        };
        if cur.obj.description.as_ref() == Some(&desc) {
            return;
        }
        cur.obj.description = Some(desc);
        if let Ok(op) = db::put(&cur.obj, Expect::Version(cur.version)) {
            if let Err(e) = db::write(&self.store, vec![op]).await {
                tracing::debug!(error = ?e, "updating a node's description");
            }
        }
    }

    /// Marks nodes down when they go silent and ready when they come back; leader only.
    async fn watch_nodes(self) {
        let mut leader_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if !self.store.is_leader() {
                leader_since = None;
                continue;
            }
            let since = *leader_since.get_or_insert_with(|| {
                self.liveness.reset();
                Instant::now()
            });
            let heartbeat = heartbeat_period(&self.store);
            let mut ops = Vec::new();
            for n in db::list::<Node>(&self.store) {
                let Some(id) = n.obj.id.clone() else { continue };
                let alive = self.liveness.alive(&id, heartbeat, since);
                let state = n.obj.status.as_ref().and_then(|s| s.state);
                let (want, message) = match (alive, state) {
                    (false, Some(NodeState::READY)) | (false, None) => {
                        (NodeState::DOWN, "heartbeat failure")
                    }
                    (true, Some(NodeState::DOWN))
                    | (true, Some(NodeState::UNKNOWN))
                    | (true, None)
                        if self
                            .liveness
                            .seen
                            .lock()
                            .get(&id)
                            .is_some_and(|s| s.sessions > 0) =>
                    {
                        (NodeState::READY, "")
                    }
                    _ => continue,
                };
                tracing::info!(node = %id, state = ?want, "node state changed");
                let mut obj = n.obj.clone();
                let addr = obj.status.as_ref().and_then(|s| s.addr.clone());
                obj.status = Some(NodeStatus {
                    state: Some(want),
                    message: (!message.is_empty()).then(|| message.to_string()),
                    addr,
                });
                obj.updated_at = Some(shoal_api::id::now());
                if let Ok(op) = db::put(&obj, Expect::Version(n.version)) {
                    ops.push(op);
                }
            }
            if !ops.is_empty() {
                if let Err(e) = db::write(&self.store, ops).await {
                    tracing::debug!(error = ?e, "writing node states");
                }
            }
        }
    }
}

/// Addresses of the managers, leader first, for nodes to fail over between.
pub fn manager_addrs(store: &Store) -> Vec<String> {
    let m = store.membership();
    let mut out: Vec<String> = Vec::new();
    if let Some((_, a)) = store.leader() {
        out.push(a);
    }
    for a in m.voters.values() {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

async fn send(tx: &mpsc::Sender<Result<pb::ManagerMessage, Status>>, m: &ManagerMessage) -> bool {
    match serde_json::to_vec(m) {
        Ok(json) => tx.send(Ok(pb::ManagerMessage { json })).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "encoding a session message");
            false
        }
    }
}

/// A node's client TLS settings, swappable while it runs (certificate renewal).
pub type ClientTls = Arc<parking_lot::RwLock<Arc<shoal_pki::rustls::ClientConfig>>>;

/// Called with the leader's list of managers when it changes.
pub type OnManagers = Box<dyn Fn(&[String]) + Send + Sync>;
/// Called when the swarm changes this node's role: ("manager" or "worker", raft id).
pub type OnRole = Box<dyn Fn(String, u64) + Send + Sync>;

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
    pub role: parking_lot::Mutex<(String, u64)>,
    /// Called when the assignments carry another role.
    pub on_role: OnRole,
    /// Where the leader's answers to attachment requests go (task ID, refusal).
    pub attached: tokio::sync::broadcast::Sender<(String, Option<String>)>,
}

/// Keeps this node's session with the leader, failing over between managers, until `stop`.
/// Assignments go into `assignments`; reports are taken from `reports`.
pub async fn run_client(
    cfg: ClientConfig,
    assignments: watch::Sender<NodeAssignments>,
    mut reports: mpsc::Receiver<Vec<TaskStatusReport>>,
    mut requests: mpsc::Receiver<AgentMessage>,
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
            let chans = (&mut reports, &mut requests);
            match one_session(&cfg, &addr, &assignments, chans, &stop).await {
                Ok(()) => {
                    failures = 0;
                    if stop.is_cancelled() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(manager = %addr, error = %e, "no session");
                    let hint = e.split("leader is ").nth(1).map(|h| h.trim().to_string());
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

async fn one_session(
    cfg: &ClientConfig,
    addr: &str,
    assignments: &watch::Sender<NodeAssignments>,
    (reports, requests): (
        &mut mpsc::Receiver<Vec<TaskStatusReport>>,
        &mut mpsc::Receiver<AgentMessage>,
    ),
    stop: &CancellationToken,
) -> Result<(), String> {
    let tls = cfg.tls.read().clone();
    let channel = shoal_rpc::connect(addr, tls).map_err(|e| e.to_string())?;
    let mut client = pb::dispatcher_client::DispatcherClient::new(channel)
        .max_decoding_message_size(shoal_rpc::MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    let encode = |m: &AgentMessage| serde_json::to_vec(m).map(|json| pb::AgentMessage { json });
    let hello = encode(&AgentMessage::Hello {
        description: cfg.description.clone().map(Box::new),
    })
    .map_err(|e| e.to_string())?;
    tx.send(hello).await.map_err(|e| e.to_string())?;
    let mut inbound = tokio::time::timeout(
        Duration::from_secs(5),
        client.session(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| "session request timed out".to_string())?
    .map_err(|s| s.message().to_string())?
    .into_inner();
    tracing::info!(manager = %addr, node = %cfg.node_id, "session with the leader");
    let mut heartbeat = tokio::time::interval(DEFAULT_HEARTBEAT / 2);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = inbound.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err("session ended by the manager".into()),
                    Err(s) => return Err(s.message().to_string()),
                };
                match serde_json::from_slice::<ManagerMessage>(&m.json) {
                    Ok(ManagerMessage::Welcome { heartbeat_ms }) => {
                        let period = Duration::from_millis((heartbeat_ms / 2).max(100));
                        heartbeat = tokio::time::interval(period);
                    }
                    Ok(ManagerMessage::Assignments(a)) => {
                        let wanted = (a.role.clone(), a.raft_id);
                        if !wanted.0.is_empty() && *cfg.role.lock() != wanted {
                            *cfg.role.lock() = wanted.clone();
                            (cfg.on_role)(wanted.0, wanted.1);
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
                    Err(e) => tracing::warn!(error = %e, "undecodable session message"),
                }
            }
            r = requests.recv() => {
                let Some(r) = r else { return Ok(()) };
                let m = encode(&r).map_err(|e| e.to_string())?;
                tx.send(m).await.map_err(|_| "session closed".to_string())?;
            }
            r = reports.recv() => {
                let Some(r) = r else { return Ok(()) };
                let m = encode(&AgentMessage::Reports(r)).map_err(|e| e.to_string())?;
                tx.send(m).await.map_err(|_| "session closed".to_string())?;
            }
            _ = heartbeat.tick() => {
                let m = encode(&AgentMessage::Heartbeat).map_err(|e| e.to_string())?;
                tx.send(m).await.map_err(|_| "session closed".to_string())?;
            }
        }
    }
}
