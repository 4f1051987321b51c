//! Liveness: when each node was last heard from, and the leader's loop that marks a silent node
//! down (so the orchestrator replaces its tasks elsewhere) and a returning one ready.

use super::session::{heartbeat_period, DISCONNECT_GRACE};
use crate::db;
use shoal_api::models::{Node, NodeState, NodeStatus};
use shoal_store::{Expect, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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
    /// The node said something: it is alive now.
    pub(crate) fn touch(&self, node: &str) {
        let mut m = self.seen.lock();
        let e = m.entry(node.to_string()).or_insert(Seen {
            last: Instant::now(),
            sessions: 0,
        });
        e.last = Instant::now();
    }

    /// The node opened a session.
    pub(crate) fn connected(&self, node: &str) {
        let mut m = self.seen.lock();
        let e = m.entry(node.to_string()).or_insert(Seen {
            last: Instant::now(),
            sessions: 0,
        });
        e.sessions += 1;
        e.last = Instant::now();
    }

    /// One of the node's sessions ended; its grace period starts now.
    pub(crate) fn disconnected(&self, node: &str) {
        let mut m = self.seen.lock();
        if let Some(e) = m.get_mut(node) {
            e.sessions = e.sessions.saturating_sub(1);
            e.last = Instant::now();
        }
    }

    /// Gives every node a full grace period, as a new leader must: it has heard from nobody yet.
    pub(crate) fn reset(&self) {
        let mut m = self.seen.lock();
        let now = Instant::now();
        for e in m.values_mut() {
            e.last = now;
        }
    }

    /// Whether the node counts as alive: connected and heard from within three heartbeats,
    /// or disconnected for less than the grace period.
    pub(crate) fn alive(&self, node: &str, heartbeat: Duration, since_leader: Instant) -> bool {
        let m = self.seen.lock();
        match m.get(node) {
            Some(s) if s.sessions > 0 => s.last.elapsed() < heartbeat * 3,
            Some(s) => s.last.elapsed() < DISCONNECT_GRACE,
            None => since_leader.elapsed() < heartbeat * 3,
        }
    }

    /// Whether the node holds a session right now.
    fn connected_now(&self, node: &str) -> bool {
        self.seen.lock().get(node).is_some_and(|s| s.sessions > 0)
    }
}

/// Marks nodes down when they go silent and ready when they come back; leader only. Runs
/// until `stop`.
pub async fn watch_nodes(store: Store, liveness: Arc<Liveness>, stop: CancellationToken) {
    let mut leader_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if !store.is_leader() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(|| {
            liveness.reset();
            Instant::now()
        });
        let heartbeat = heartbeat_period(&store);
        let mut ops = Vec::new();
        for n in db::list::<Node>(&store) {
            let Some(id) = n.obj.id.clone() else { continue };
            let alive = liveness.alive(&id, heartbeat, since);
            let state = n.obj.status.as_ref().and_then(|s| s.state);
            let (want, message) = match (alive, state) {
                (false, Some(NodeState::READY)) | (false, None) => {
                    (NodeState::DOWN, "heartbeat failure")
                }
                (true, Some(NodeState::DOWN)) | (true, Some(NodeState::UNKNOWN)) | (true, None)
                    if liveness.connected_now(&id) =>
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
            if let Err(e) = db::write(&store, ops).await {
                tracing::debug!(error = ?e, "writing node states");
            }
        }
    }
}
