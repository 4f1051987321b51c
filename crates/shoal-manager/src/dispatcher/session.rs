//! Sessions: every node, managers included, holds one with the raft leader. The leader streams
//! the node's assignments and takes its task reports, heartbeats, description and attachment
//! requests; what it hears feeds [`super::liveness`].

use super::assignments::AssignmentFeed;
use super::liveness::{self, Liveness};
use super::reports;
use crate::db;
use crate::floating::leader::FloatingHub;
use crate::logbroker::LogBroker;
use crate::state::SharedReader;
use futures::StreamExt;
use shoal_api::dispatch::{AgentMessage, ManagerMessage, NodeAssignments};
use shoal_api::floating::{NodeInterface, StoredNodeInterfaces};
use shoal_api::models::{Node, NodeDescription, Swarm};
use shoal_rpc::{pb, SessionStream};
use shoal_store::{Expect, Store};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

/// Swarm's default `Dispatcher.HeartbeatPeriod`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// A node whose session ended is marked down after this long without a new one; a node that
/// is still connected but silent is marked down after three heartbeat periods.
pub const DISCONNECT_GRACE: Duration = Duration::from_millis(1500);

/// The heartbeat period the swarm's spec asks for, never under the minimum the API enforces
/// (a spec stored before the check cannot make the cluster flap).
pub fn heartbeat_period(store: &Store) -> Duration {
    db::list::<Swarm>(store)
        .into_iter()
        .next()
        .and_then(|c| c.obj.spec?.dispatcher?.heartbeat_period)
        .filter(|ns| *ns > 0)
        .map(|ns| ns.max(shoal_api::validate::MIN_HEARTBEAT_NS).unsigned_abs())
        .map(Duration::from_nanos)
        .unwrap_or(DEFAULT_HEARTBEAT)
}

/// The leader's side of every session.
#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    assignments: AssignmentFeed,
    reports: mpsc::Sender<reports::NodeReports>,
    liveness: Arc<Liveness>,
    open_sessions: Arc<OpenSessions>,
    logs: LogBroker,
    floating: Arc<FloatingHub>,
    usage: UsageMap,
    stop: CancellationToken,
}

/// Each node's last reported CPU and memory in use, on the leader (the dashboard reads it).
pub type UsageMap = Arc<parking_lot::Mutex<HashMap<String, shoal_api::dispatch::NodeUsage>>>;

/// The sessions open now, per node, so removing a node ends its sessions at once.
#[derive(Default)]
struct OpenSessions {
    next: AtomicU64,
    by_node: parking_lot::Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
}

impl OpenSessions {
    fn add(&self, node: &str, token: CancellationToken) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.by_node
            .lock()
            .entry(node.to_string())
            .or_default()
            .push((id, token));
        id
    }

    fn remove(&self, node: &str, id: u64) {
        let mut m = self.by_node.lock();
        if let Some(v) = m.get_mut(node) {
            v.retain(|(i, _)| *i != id);
            if v.is_empty() {
                m.remove(node);
            }
        }
    }

    /// Ends every session of `node`; how many there were.
    fn end(&self, node: &str) -> usize {
        let ended = self.by_node.lock().remove(node).unwrap_or_default();
        for (_, t) in &ended {
            t.cancel();
        }
        ended.len()
    }

    fn nodes(&self) -> Vec<String> {
        self.by_node.lock().keys().cloned().collect()
    }
}

/// Ends the sessions of nodes removed from the swarm (`docker node rm`) as soon as the removal
/// is applied here; runs until `stop`.
async fn end_removed_sessions(store: Store, open: Arc<OpenSessions>, stop: CancellationToken) {
    let mut changes = store.watch();
    loop {
        let removed: Vec<String> = tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.recv() => match r {
                Ok(set) => set
                    .changes
                    .iter()
                    .filter(|c| c.kind == <db::Removed as db::Stored>::KIND)
                    .map(|c| c.id.clone())
                    .collect(),
                // Missed some changes: check every node with a session.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => open
                    .nodes()
                    .into_iter()
                    .filter(|n| db::get::<db::Removed>(&store, n).is_some())
                    .collect(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        };
        for node in removed {
            let n = open.end(&node);
            if n > 0 {
                tracing::info!(node = %node, sessions = n, "node removed from the swarm: its sessions ended");
            }
        }
    }
}

impl Dispatcher {
    /// Starts the report writer and the liveness checker (both act only while this manager
    /// leads) and the assignments feed, which reads `view`: the one decoded view of the store the
    /// control loop shares. Sessions carry `logs`' subscriptions to the nodes and their lines
    /// back, and the floating addresses' lease messages both ways (`floating`).
    pub fn start(
        store: Store,
        view: SharedReader,
        logs: LogBroker,
        floating: Arc<FloatingHub>,
        usage: UsageMap,
        stop: CancellationToken,
    ) -> Dispatcher {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(reports::collect_reports(store.clone(), rx, stop.clone()));
        let d = Dispatcher {
            // One view of the state computes every node's assignments, patched per change.
            assignments: AssignmentFeed::spawn(view, stop.clone()),
            store,
            reports: tx,
            liveness: Arc::new(Liveness::default()),
            open_sessions: Arc::default(),
            logs,
            floating,
            usage,
            stop,
        };
        tokio::spawn(end_removed_sessions(
            d.store.clone(),
            d.open_sessions.clone(),
            d.stop.clone(),
        ));
        tokio::spawn(liveness::watch_nodes(
            d.store.clone(),
            d.liveness.clone(),
            d.stop.clone(),
        ));
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
            let leader = self
                .store
                .leader()
                .filter(|(id, _)| *id != self.store.raft_id())
                .map(|(_, addr)| shoal_rpc::LeaderHint { addr });
            return Err(shoal_rpc::not_leader(leader.as_ref()));
        }
        let Some(node) = db::get::<Node>(&self.store, &node_id) else {
            tracing::warn!(node = %node_id, reason = "unknown node", "refused a session");
            return Err(Status::permission_denied(format!(
                "node {node_id} is not a member of this swarm"
            )));
        };
        let heartbeat = heartbeat_period(&self.store);
        let session = self.stop.child_token();
        let session_id = self.open_sessions.add(&node_id, session.clone());
        // Removed between the caller's check and now: the watcher may have missed it.
        if db::get::<db::Removed>(&self.store, &node_id).is_some() {
            self.open_sessions.remove(&node_id, session_id);
            return Err(Status::permission_denied(format!(
                "node {node_id} was removed from the swarm"
            )));
        }
        let (tx, rx) = mpsc::channel::<Result<pb::ManagerMessage, Status>>(16);
        send(
            &tx,
            &ManagerMessage::Welcome {
                heartbeat_ms: heartbeat.as_millis() as u64,
            },
        )
        .await;
        self.liveness.connected(&node_id);
        self.logs.node_connected(&node_id, session_id, tx.clone());
        self.floating.connected(&node_id, session_id, tx.clone());
        tracing::info!(node = %node_id, "session opened");

        // Assignments, computed from this leader's store, until the session or leadership ends.
        let (atx, mut arx) = watch::channel(NodeAssignments::default());
        if self.assignments.serve(node_id.clone(), atx).is_err() {
            return Err(Status::unavailable("the dispatcher is shutting down"));
        }
        let store = self.store.clone();
        let out = tx.clone();
        let s = session.clone();
        let this_node = node_id.clone();
        tokio::spawn(async move {
            let mut managers = Vec::new();
            let mut period = heartbeat;
            let mut leadership = store.raft().metrics();
            let mut tick = tokio::time::interval(shoal_api::dispatch::SESSION_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    _ = tick.tick() => {
                        if !send(&out, &ManagerMessage::Tick).await { break; }
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
            if db::get::<db::Removed>(&store, &this_node).is_some() {
                // Tell the node why, so it does not mistake this for a leader change.
                let why = format!("node {this_node} was removed from the swarm");
                let _ = out.send(Err(Status::permission_denied(why))).await;
            }
        });

        // The node's messages: reports, heartbeats, its description, attachment requests.
        let d = self.clone();
        let s = session.clone();
        let replies = tx.clone();
        // Reports carry the node of the session's certificate, never one the message names.
        let reporter: Arc<str> = node_id.as_str().into();
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
                d.floating.touch(&node_id, session_id);
                match serde_json::from_slice::<AgentMessage>(&m.json) {
                    Ok(AgentMessage::Heartbeat) => {}
                    Ok(AgentMessage::Reports(r)) => {
                        let batch = reports::NodeReports {
                            node: reporter.clone(),
                            reports: r,
                        };
                        if d.reports.send(batch).await.is_err() {
                            break;
                        }
                    }
                    Ok(AgentMessage::Logs(batch)) => {
                        d.logs.publish(&node_id, session_id, batch);
                    }
                    Ok(AgentMessage::Floating(m)) => d.floating.receive(&node_id, m),
                    Ok(AgentMessage::Images(list)) => {
                        // A raft write: not in the way of this session's lease renewals.
                        let (store, node) = (d.store.clone(), node_id.clone());
                        tokio::spawn(
                            async move { crate::images::record(&store, &node, list).await },
                        );
                    }
                    Ok(AgentMessage::ImageSources { image }) => {
                        // No reference is this long: nothing to look up.
                        let sources = if image.len() > shoal_api::images::MAX_IMAGE_REF {
                            Vec::new()
                        } else {
                            crate::images::sources(&d.store, &node_id, &image)
                        };
                        let answer = ManagerMessage::ImageSources { image, sources };
                        let out = replies.clone();
                        tokio::spawn(async move { send(&out, &answer).await });
                    }
                    Ok(AgentMessage::Registry { seq, request }) => {
                        let (store, out, node) =
                            (d.store.clone(), replies.clone(), node_id.clone());
                        tokio::spawn(async move {
                            let answer = crate::registry::answer(&store, &node, request).await;
                            send(&out, &ManagerMessage::Registry { seq, answer }).await;
                        });
                    }
                    Ok(AgentMessage::Usage(u)) => {
                        d.usage.lock().insert(node_id.clone(), u);
                    }
                    Ok(AgentMessage::Interfaces(interfaces)) => {
                        d.interfaces(&node_id, interfaces).await;
                    }
                    Ok(AgentMessage::Hello {
                        description,
                        interfaces,
                    }) => {
                        d.describe(&node, description.map(|b| *b)).await;
                        d.interfaces(&node_id, interfaces).await;
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
                            .err()
                            .map(|e| e.to_string());
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
            d.open_sessions.remove(&node_id, session_id);
            d.logs.node_disconnected(&node_id, session_id);
            d.floating.disconnected(&node_id, session_id);
            tracing::info!(node = %node_id, "session closed");
            s.cancel();
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(stream.boxed())
    }

    /// Keeps the node's interfaces as it reports them (floating address checks).
    async fn interfaces(&self, node: &str, interfaces: Vec<NodeInterface>) {
        let cur = db::get::<StoredNodeInterfaces>(&self.store, node);
        if cur.as_ref().is_some_and(|c| c.obj.interfaces == interfaces) {
            return;
        }
        let obj = StoredNodeInterfaces {
            node: node.to_string(),
            interfaces,
        };
        let expect = cur.map_or(Expect::Absent, |c| Expect::Version(c.version));
        if let Ok(op) = db::put(&obj, expect) {
            if let Err(e) = db::write(&self.store, vec![op]).await {
                tracing::debug!(error = ?e, "updating a node's interfaces");
            }
        }
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

/// Sends `m` down a session; false once the session is gone.
pub(crate) async fn send(
    tx: &mpsc::Sender<Result<pb::ManagerMessage, Status>>,
    m: &ManagerMessage,
) -> bool {
    match serde_json::to_vec(m) {
        Ok(json) => tx.send(Ok(pb::ManagerMessage { json })).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "encoding a session message");
            false
        }
    }
}
