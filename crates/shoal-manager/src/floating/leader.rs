//! The leader's side of the floating addresses' lease (issue 20): the I/O around the pure
//! `shoal_control::vip` functions. While this manager is the raft leader it
//! - confirms its leadership with a quorum every [`CONFIRM_EVERY`] (a heartbeat round,
//!   `Raft::is_leader`) and tells the lease state when the confirmed round was *sent*;
//! - runs `leader_step` on every change of the addresses or nodes, on its timers, and after each
//!   message; writes each new grant to raft as a compare-and-set on the address's previous epoch
//!   and sends it to its node only once committed;
//! - answers renewals from memory (`on_renew`) and takes releases (`on_release`).
//!
//! Nodes reach it through their dispatcher sessions ([`FloatingHub`]); the node is always the
//! session's certificate, never a name in a message. Every wait is on this manager's monotonic
//! clock; nothing here is compared with another node's clock.

use crate::db;
use shoal_api::dispatch::{FloatingDown, FloatingUp, ManagerMessage};
use shoal_api::floating::{StoredFloatingGrant, StoredFloatingIp};
use shoal_api::models::Node;
use shoal_control::vip::{self, Grant, LeaderState, LeaseParams, NodeView, Unheld};
use shoal_rpc::pb;
use shoal_store::{Expect, Store};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The lease state of an address whose holder accepted it and renews.
pub const HELD: &str = "held";

/// How often the leader confirms its leadership with a quorum: renewals are acknowledged only
/// while the last confirmation was sent less than `LeaseParams::quorum_stale` (250 ms) ago.
pub const CONFIRM_EVERY: Duration = Duration::from_millis(80);
/// How long a new leader counts a holder as ready without a session with it: the nodes' sessions
/// move to a new leader within about a second (`SESSION_SILENCE`, then a reconnect).
const SESSION_GRACE: Duration = Duration::from_secs(2);
/// How long one confirmation round may take before it counts as failed.
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(300);

type SessionTx = mpsc::Sender<Result<pb::ManagerMessage, Status>>;

/// Where sessions and the lease loop meet: messages from holders in, messages to nodes out, and
/// what the leader last decided, for `shoal floating-ip ls`.
pub struct FloatingHub {
    inbox: mpsc::Sender<(String, FloatingUp)>,
    /// Per node: its latest session, and when it last said anything on it.
    sessions: parking_lot::Mutex<HashMap<String, (u64, SessionTx, Instant)>>,
    status: parking_lot::Mutex<BTreeMap<String, String>>,
}

impl FloatingHub {
    /// A hub and the receiving end of its inbox, for [`run`].
    pub fn new() -> (Arc<FloatingHub>, mpsc::Receiver<(String, FloatingUp)>) {
        let (tx, rx) = mpsc::channel(1024);
        let hub = FloatingHub {
            inbox: tx,
            sessions: parking_lot::Mutex::default(),
            status: parking_lot::Mutex::default(),
        };
        (Arc::new(hub), rx)
    }

    /// A node's session opened on this leader: lease messages for the node go down `tx`.
    pub fn connected(&self, node: &str, session: u64, tx: SessionTx) {
        self.sessions
            .lock()
            .insert(node.to_string(), (session, tx, Instant::now()));
    }

    /// The node said something on session `session`: it is there.
    pub fn touch(&self, node: &str, session: u64) {
        if let Some(e) = self.sessions.lock().get_mut(node) {
            if e.0 == session {
                e.2 = Instant::now();
            }
        }
    }

    /// The node's session `session` ended.
    pub fn disconnected(&self, node: &str, session: u64) {
        let mut m = self.sessions.lock();
        if m.get(node).is_some_and(|(s, _, _)| *s == session) {
            m.remove(node);
        }
    }

    /// In session with this leader and heard within `SESSION_SILENCE` (the node heartbeats
    /// at least every `NODE_HEARTBEAT_MAX`): a grant sent there is heard.
    fn is_connected(&self, node: &str) -> bool {
        self.sessions
            .lock()
            .get(node)
            .is_some_and(|(_, _, heard)| heard.elapsed() < shoal_api::dispatch::SESSION_SILENCE)
    }

    /// A message from `node`'s session. Dropped when the loop is behind: renewals repeat.
    pub fn receive(&self, node: &str, m: FloatingUp) {
        if self.inbox.try_send((node.to_string(), m)).is_err() {
            tracing::debug!(node = %node, "floating address message dropped (loop busy)");
        }
    }

    /// Sends `m` to `node` if it has a session here; lost messages are repeated by the lease
    /// (grants and revocations every renewal period, renewals by the holder).
    fn send(&self, node: &str, m: FloatingDown) {
        let tx = self.sessions.lock().get(node).map(|(_, tx, _)| tx.clone());
        let Some(tx) = tx else { return };
        match serde_json::to_vec(&ManagerMessage::Floating(m)) {
            Ok(json) => {
                if tx.try_send(Ok(pb::ManagerMessage { json })).is_err() {
                    tracing::debug!(node = %node, "floating address message not sent (session busy)");
                }
            }
            Err(e) => tracing::error!(error = %e, "encoding a floating address message"),
        }
    }

    /// Each address's lease as the leader last saw it ([`HELD`], or why it has no holder);
    /// empty on a follower.
    pub fn status(&self) -> BTreeMap<String, String> {
        self.status.lock().clone()
    }
}

/// A grant write's outcome, back to the loop.
struct Written {
    address: String,
    grant: Grant,
    ok: bool,
}

/// Runs the lease while this manager leads, until `stop`. `self_id` is this manager's node ID
/// (the lease prefers other nodes as holders).
pub async fn run(
    store: Store,
    self_id: String,
    hub: Arc<FloatingHub>,
    mut inbox: mpsc::Receiver<(String, FloatingUp)>,
    stop: CancellationToken,
) {
    let params = LeaseParams::default();
    let origin = Instant::now();
    loop {
        if stop.is_cancelled() {
            return;
        }
        if !store.is_leader() {
            // Not the leader: nobody's renewals are ours to answer.
            hub.status.lock().clear();
            tokio::select! {
                _ = stop.cancelled() => return,
                m = inbox.recv() => if m.is_none() { return },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            continue;
        }
        lead(&params, origin, &store, &self_id, &hub, &mut inbox, &stop).await;
    }
}

/// The grants in the store, address -> grant.
fn records(store: &Store) -> BTreeMap<String, (Grant, u64)> {
    db::list::<StoredFloatingGrant>(store)
        .into_iter()
        .map(|v| {
            let g = Grant {
                node: v.obj.node,
                epoch: v.obj.epoch,
            };
            (v.obj.address, (g, v.version))
        })
        .collect()
}

/// One term as leader: from becoming leader until it is lost (or `stop`).
async fn lead(
    params: &LeaseParams,
    origin: Instant,
    store: &Store,
    self_id: &str,
    hub: &FloatingHub,
    inbox: &mut mpsc::Receiver<(String, FloatingUp)>,
    stop: &CancellationToken,
) {
    let clock = move || origin.elapsed();
    let recorded = records(store)
        .into_iter()
        .map(|(a, (g, _))| (a, g))
        .collect();
    // The voters' silence is not known here (openraft's votes do not carry it): the full wait.
    let mut state = LeaderState::new(self_id, clock(), recorded, Duration::ZERO);
    tracing::info!(
        addresses = state.leases.len(),
        wait_ms = params.new_leader_wait().as_millis() as u64,
        "leading the floating addresses' lease"
    );
    let term = stop.child_token();
    let (qtx, mut qrx) = mpsc::channel::<Duration>(4);
    {
        let (store, term) = (store.clone(), term.clone());
        tokio::spawn(async move {
            loop {
                let sent = origin.elapsed();
                let r = tokio::time::timeout(CONFIRM_TIMEOUT, store.raft().get_read_log_id()).await;
                if matches!(r, Ok(Ok(_))) && qtx.send(sent).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = term.cancelled() => return,
                    _ = tokio::time::sleep(CONFIRM_EVERY) => {}
                }
            }
        });
    }
    let (wtx, mut wrx) = mpsc::channel::<Written>(64);
    let mut changes = store.watch();
    let mut wake = clock();
    let mut step_now = true;
    loop {
        if !store.is_leader() {
            break;
        }
        let now = clock();
        if step_now || now >= wake {
            step_now = false;
            wake = step(params, now, store, hub, &mut state, &wtx);
        }
        let sleep = wake.saturating_sub(clock());
        tokio::select! {
            _ = stop.cancelled() => break,
            q = qrx.recv() => {
                let Some(sent) = q else { break };
                let had = state.quorum_at.is_some_and(|q| now < q + params.quorum_stale);
                state.quorum_confirmed(sent);
                // Regained a fresh quorum: grants may be due.
                step_now = !had;
            }
            m = inbox.recv() => {
                let Some((node, m)) = m else { break };
                // A release frees the address now; a renewal changes nothing a step must act on
                // before its own timer (at most a renewal period away), and steps decode the
                // store: not one per renewal.
                step_now = matches!(m, FloatingUp::Release { .. });
                on_message(params, clock(), hub, &mut state, &node, m);
            }
            w = wrx.recv() => {
                let Some(w) = w else { break };
                if w.ok {
                    let (address, grant) = vip::on_committed(clock(), &mut state, &w.address, w.grant);
                    send_grant(store, hub, &address, &grant);
                    tracing::info!(address = %address, node = %grant.node, epoch = grant.epoch, "floating address granted");
                } else {
                    vip::on_write_failed(&mut state, &w.address);
                }
                step_now = true;
            }
            c = changes.recv() => {
                step_now = match c {
                    Ok(set) => set.changes.iter().any(|c| {
                        c.kind == shoal_api::kind::FLOATING_IP || c.kind == shoal_api::kind::NODE
                    }),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    term.cancel();
    hub.status.lock().clear();
    tracing::info!("no longer leading the floating addresses' lease");
}

/// A holder's renewal or release, from `node`'s session.
fn on_message(
    params: &LeaseParams,
    now: Duration,
    hub: &FloatingHub,
    state: &mut LeaderState,
    node: &str,
    m: FloatingUp,
) {
    match m {
        FloatingUp::Renew {
            address,
            epoch,
            seq,
            holding,
        } => {
            let renew = vip::Renew {
                address,
                node: node.to_string(),
                epoch,
                seq,
                holding,
            };
            if let Some(r) = vip::on_renew(params, now, state, &renew) {
                let m = FloatingDown::Renewed {
                    address: r.address,
                    epoch: r.epoch,
                    seq: r.seq,
                    ok: r.ok,
                };
                hub.send(node, m);
            }
        }
        FloatingUp::Release { address, epoch } => {
            tracing::info!(address = %address, node = %node, epoch, "floating address released");
            vip::on_release(state, node, &address, epoch);
            hub.send(node, FloatingDown::Released { address, epoch });
        }
    }
}

fn send_grant(store: &Store, hub: &FloatingHub, address: &str, grant: &Grant) {
    let interface = db::get::<StoredFloatingIp>(store, address).and_then(|v| v.obj.interface);
    hub.send(
        &grant.node,
        FloatingDown::Grant {
            address: address.to_string(),
            epoch: grant.epoch,
            interface,
        },
    );
}

/// One `leader_step` with the store's addresses and nodes; carries out its plan (writes run in
/// the background and come back through `written`). Returns when to step again.
fn step(
    params: &LeaseParams,
    now: Duration,
    store: &Store,
    hub: &FloatingHub,
    state: &mut LeaderState,
    written: &mpsc::Sender<Written>,
) -> Duration {
    let ips: BTreeMap<String, StoredFloatingIp> = db::list::<StoredFloatingIp>(store)
        .into_iter()
        .map(|v| (v.obj.address.clone(), v.obj))
        .collect();
    let nodes: HashMap<String, Node> = db::list::<Node>(store)
        .into_iter()
        .filter_map(|v| Some((v.obj.id.clone()?, v.obj)))
        .collect();
    let holders: Vec<&str> = state
        .leases
        .values()
        .filter_map(|l| l.record.as_ref().map(|g| g.node.as_str()))
        .collect();
    // Ready: in the swarm, up and active, and in session with this leader (a grant sent there
    // is heard; a holder without a session cannot renew). A new leader gives the holders
    // `SESSION_GRACE` to move their sessions over before it counts them out.
    let young = now < state.became_leader_at + SESSION_GRACE;
    let views: Vec<NodeView> = nodes
        .iter()
        .map(|(id, n)| NodeView {
            id: id.clone(),
            ready: shoal_control::state::node_schedulable(n)
                && (hub.is_connected(id) || (young && holders.contains(&id.as_str()))),
        })
        .collect();
    let addresses: Vec<String> = ips.keys().cloned().collect();
    let eligible = |address: &str, v: &NodeView| {
        let (Some(ip), Some(node)) = (ips.get(address), nodes.get(&v.id)) else {
            return false;
        };
        ip.constraints
            .iter()
            .all(|c| shoal_control::scheduler::constraint_met(c, node))
    };
    let plan = vip::leader_step(params, now, state, &views, &addresses, &eligible);
    for (address, grant) in plan.write {
        let (store, tx) = (store.clone(), written.clone());
        tokio::spawn(async move {
            let ok = match write_grant(&store, &address, &grant).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(address = %address, node = %grant.node, error = %e, "floating address grant not written");
                    false
                }
            };
            let _ = tx.send(Written { address, grant, ok }).await;
        });
    }
    for (address, grant) in &plan.send_grant {
        send_grant(store, hub, address, grant);
    }
    for (address, grant) in &plan.revoke {
        tracing::info!(address = %address, node = %grant.node, epoch = grant.epoch, "floating address revoked");
        hub.send(
            &grant.node,
            FloatingDown::Revoke {
                address: address.clone(),
                epoch: grant.epoch,
            },
        );
    }
    for address in plan.forget {
        let store = store.clone();
        tokio::spawn(async move {
            if let Some(cur) = db::get::<StoredFloatingGrant>(&store, &address) {
                let op = db::delete::<StoredFloatingGrant>(&address, Expect::Version(cur.version));
                if let Err(e) = db::write(&store, vec![op]).await {
                    tracing::debug!(address = %address, error = %e, "forgetting a floating address grant");
                }
            }
        });
    }
    let mut status: BTreeMap<String, String> = plan
        .unheld
        .iter()
        .map(|(a, why)| {
            let s = match why {
                Unheld::NoEligibleNode => "no eligible node".to_string(),
                Unheld::Waiting { until } => format!(
                    "waiting {} ms for the last holder's lease to run out",
                    until.saturating_sub(now).as_millis()
                ),
                Unheld::NoQuorum => "no quorum".to_string(),
                Unheld::Writing => "granting".to_string(),
            };
            (a.clone(), s)
        })
        .collect();
    for a in &addresses {
        if status.contains_key(a) {
            continue;
        }
        let Some(lease) = state.leases.get(a) else {
            continue;
        };
        let s = match &lease.record {
            Some(_) if lease.released => "released".to_string(),
            Some(_) if lease.revoking => "being handed over".to_string(),
            Some(_) if lease.accepted => HELD.to_string(),
            Some(g) => format!("granted to {}, not accepted yet", g.node),
            None => "not held".to_string(),
        };
        status.insert(a.clone(), s);
    }
    *hub.status.lock() = status;
    plan.wake_at.unwrap_or(now + params.renew_every)
}

/// Why a grant was not written.
#[derive(Debug, thiserror::Error)]
enum GrantError {
    /// The record is not the one this grant follows (another write won).
    #[error("the recorded grant moved on (epoch {found:?}, expected {expected:?})")]
    Moved {
        found: Option<u64>,
        expected: Option<u64>,
    },
    /// The store refused or could not commit.
    #[error("{0}")]
    Store(#[from] shoal_api::ApiError),
}

/// Writes `grant` as a compare-and-set on the previous epoch's record.
async fn write_grant(store: &Store, address: &str, grant: &Grant) -> Result<(), GrantError> {
    let cur = db::get::<StoredFloatingGrant>(store, address);
    let expected = grant.epoch.checked_sub(1).filter(|e| *e > 0);
    let found = cur.as_ref().map(|c| c.obj.epoch);
    if found != expected && !(expected.is_none() && found.is_none()) {
        return Err(GrantError::Moved { found, expected });
    }
    let expect = cur.map_or(Expect::Absent, |c| Expect::Version(c.version));
    let rec = StoredFloatingGrant {
        address: address.to_string(),
        node: grant.node.clone(),
        epoch: grant.epoch,
        since: shoal_api::id::now(),
    };
    db::write(store, vec![db::put(&rec, expect)?]).await?;
    Ok(())
}
